"""FeaCali stacks (3 scales, C -> C/2 -> C/4 -> C/2 -> C): the eager cuDNN
chain vs torch.compile of it vs the fused Triton kernels, forward and
forward + backward."""

import pytest
import torch
from table import DEVICE, ON_GPU

from sacd_fast.backbones import BACKBONES
from sacd_fast.kernels.feacali import reference
from sacd_fast.network.feacali import FeaCali

SCALES = BACKBONES["wide_resnet50_2"].feature_shapes(256) if ON_GPU else BACKBONES["resnet18"].feature_shapes(64)
BATCHES = [1, 32] if ON_GPU else [1, 4]
DTYPE = torch.bfloat16 if ON_GPU else torch.float32


def eager_stack(modules, features):
    return [reference.conv_in_lrelu_stack(x, [c.weight for c in m.convs], [c.bias for c in m.convs],
                                          norm_last=m.norm_last) for m, x in zip(modules, features)]


def fused_stack(modules, features):
    """The fused Triton chain without gradients; with them, the Triton training blocks."""
    from sacd_fast import kernels
    from sacd_fast.kernels.feacali.triton import conv_in_lrelu_stack_triton

    if not torch.is_grad_enabled():
        return [conv_in_lrelu_stack_triton(x, [c.weight for c in m.convs], last_bias=m.convs[-1].bias,
                                           norm_last=m.norm_last) for m, x in zip(modules, features)]
    return [kernels.conv_in_lrelu_stack(x, [c.weight for c in m.convs], [c.bias for c in m.convs],
                                        norm_last=m.norm_last) for m, x in zip(modules, features)]


@pytest.mark.parametrize("provider", ["reference", "compiled", "fast"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backward", [False, True])
def test_feacali(timed, provider, batch, backward):
    if provider == "fast" and not ON_GPU:
        pytest.skip("the Triton kernels need a GPU")
    modules = [FeaCali(c).to(DEVICE, DTYPE).to(memory_format=torch.channels_last) for c, _ in SCALES]
    features = [torch.randn(batch, c, s, s, device=DEVICE, dtype=DTYPE).to(memory_format=torch.channels_last)
                for c, s in SCALES]
    fn = {"reference": eager_stack, "compiled": torch.compile(eager_stack), "fast": fused_stack}[provider]

    def run():
        with torch.set_grad_enabled(backward):
            out = fn(modules, [x.requires_grad_(backward) for x in features])
            if backward:
                sum(o.float().square().mean() for o in out).backward()

    timed(run, items=batch)
