"""Whole-model inference: batch-1 latency and batch throughput, images/s,
for the providers reference (eager fp32), compiled (torch.compile of the
same, fp32) and fast (sacd_fast.fast). On a GPU: WideResNet-50-2 at 256²,
batches 1 and 32. On a CPU: ResNet-18 and Lite0 at 128², batches 1 and 4."""

import warnings

import pytest
import torch
from conftest import DEVICE, ON_GPU

import sacd_fast
from sacd_fast import SACD

CASES = [("wide_resnet50_2", 256)] if ON_GPU else [("resnet18", 128), ("efficientnet_lite0", 128)]
BATCHES = [1, 32] if ON_GPU else [1, 4]


def build(backbone, size):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SACD(backbone, teacher_weights=None, image_size=size).to(DEVICE).eval()


def compiled_predict(model):
    """torch.compile of the whole reference inference (outside
    kernels.triton_in_compiled_graphs, so inductor traces the reference ops)."""
    maps = torch.compile(lambda x: model.anomaly_maps(*model.inference_features(x), x.shape[-2:]))

    @torch.no_grad()
    def predict(x):
        return maps(x)

    return predict


@pytest.mark.parametrize("provider", ["reference", "compiled", "fast"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backbone,size", CASES)
def test_inference(timed, provider, batch, backbone, size):
    model = build(backbone, size)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    predict = {"reference": model.predict, "compiled": compiled_predict(model),
               "fast": sacd_fast.fast(model).predict}[provider]
    timed(lambda: predict(x), items=batch)
