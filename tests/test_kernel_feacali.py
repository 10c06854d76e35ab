"""Parity of the fused FeaCali kernels (conv3x3 -> InstanceNorm -> LeakyReLU)
with float64 references: the inference chain, one block, and the gradients
of the training Function. Interpreter on a CPU (small, odd shapes); the
model's real shapes on CUDA."""

import pytest
import torch
from conftest import random_teacher_model, requires_cuda

from sacd_fast.kernels import reference

feacali = pytest.importorskip("sacd_fast.kernels.feacali")


def chain(channels, batch, h, w, device="cpu"):
    """Input and per-block (weight, bias) of a FeaCali stack C -> C/2 -> ... -> C."""
    x = torch.randn(batch, channels[0], h, w, device=device)
    blocks = [(torch.randn(b, a, 3, 3, device=device) / (3 * a**0.5), torch.randn(b, device=device))
              for a, b in zip(channels, channels[1:])]
    return x, blocks


def reference_chain(x, blocks):
    out = x.double()
    for weight, bias in blocks:
        out = reference.conv_in_lrelu(out, weight.double(), bias.double())
    return out


@pytest.mark.parametrize("channels,batch,h,w", [
    ((4, 2, 4), 1, 5, 3),
    ((12, 6, 3, 6, 12), 2, 7, 9),
    ((20, 10, 5, 10, 20), 1, 11, 6),
    ((40, 20, 40), 2, 4, 4),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_chain_matches_float64(channels, batch, h, w, channels_last, poison_outputs):
    x, blocks = chain(channels, batch, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks])
    assert out.shape == (batch, channels[-1], h, w) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_chain(x, blocks), rtol=0, atol=2e-5)


def test_one_block_and_the_dispatched_stack(monkeypatch):
    x, blocks = chain((12, 6, 3, 6, 12), 2, 6, 5)
    with torch.no_grad():
        one = feacali.conv_in_lrelu_triton(x, *blocks[0])
        torch.testing.assert_close(one.double(), reference_chain(x, blocks[:1]), rtol=0, atol=2e-5)
        from sacd_fast import kernels

        monkeypatch.delenv("SACD_DISABLE_TRITON", raising=False)
        stacked = kernels.conv_in_lrelu_stack(x, [b[0] for b in blocks], [b[1] for b in blocks])
    torch.testing.assert_close(stacked.double(), reference_chain(x, blocks), rtol=0, atol=2e-5)


@pytest.mark.parametrize("cin,cout,batch,h,w", [(6, 3, 2, 5, 7), (5, 10, 1, 9, 4)])
def test_training_function_gradients_match_float64(cin, cout, batch, h, w):
    x = torch.randn(batch, cin, h, w, requires_grad=True)
    weight = (torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)).requires_grad_()
    bias = torch.randn(cout, requires_grad=True)
    out = feacali.conv_in_lrelu_triton(x, weight, bias)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out64 = reference.conv_in_lrelu(x64, w64, b64)
    (out64 * grad.double()).sum().backward()
    torch.testing.assert_close(out.double(), out64, rtol=0, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=0, atol=1e-4)
    torch.testing.assert_close(bias.grad.double(), b64.grad, rtol=0, atol=1e-5)  # zero: IN removes it


def test_feacali_module_trains_and_predicts_through_the_kernels(monkeypatch):
    model = random_teacher_model("resnet18", 64).eval()  # eval: BatchNorm statistics stay fixed
    x = torch.randn(2, 3, 64, 64)
    x_synth = x + 0.1 * torch.randn_like(x)

    def run():
        model.zero_grad()
        losses = model.training_losses(x, x_synth)
        losses["total"].backward()
        return model.predict(x).maps, losses["intra"].detach(), [p.grad.clone() for p in model.feacali.parameters()]

    maps, intra, grads = run()
    monkeypatch.delenv("SACD_DISABLE_TRITON", raising=False)
    maps_triton, intra_triton, grads_triton = run()
    torch.testing.assert_close(maps_triton, maps, rtol=0, atol=1e-4)
    torch.testing.assert_close(intra_triton, intra, rtol=0, atol=1e-5)
    for g_triton, g in zip(grads_triton, grads):
        torch.testing.assert_close(g_triton, g, rtol=1e-3, atol=1e-5)


REAL_SHAPES = [(256, 64), (512, 32), (1024, 16), (128, 64), (256, 32), (512, 16)]


@requires_cuda
@pytest.mark.parametrize("channels,size", REAL_SHAPES)
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-2), (torch.bfloat16, 6e-2)])
def test_fused_chain_cuda_real_shapes(channels, size, dtype, atol, poison_outputs):
    widths = (channels, channels // 2, channels // 4, channels // 2, channels)
    x, blocks = chain(widths, 4, size, size, device="cuda")
    x = x.to(dtype=dtype, memory_format=torch.channels_last)
    out = feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks])
    torch.testing.assert_close(out.double(), reference_chain(x, blocks), rtol=0, atol=atol)


@requires_cuda
@pytest.mark.parametrize("channels,size", REAL_SHAPES[:3])
def test_training_function_cuda(channels, size):
    x = torch.randn(4, channels, size, size, device="cuda", requires_grad=True)
    weight = (torch.randn(channels // 2, channels, 3, 3, device="cuda") / (3 * channels**0.5)).requires_grad_()
    out = feacali.conv_in_lrelu_triton(x, weight)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    (reference.conv_in_lrelu(x64, w64) * grad.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=2e-2)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=2e-2, atol=2e-2)


def test_pick_faster_times_once_per_key_and_keeps_the_winner(monkeypatch):
    import triton.testing

    from sacd_fast.kernels import tuning

    timings = {"fused": 2.0, "cudnn": 1.0}
    calls = []

    def fake_do_bench(fn, **budget):
        name = fn()
        calls.append("timed " + name)
        return timings[name]

    def candidate(name):
        return lambda: calls.append(name) or name

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(tuning, "_FASTER", {})
    candidates = {"fused": candidate("fused"), "cudnn": candidate("cudnn")}
    assert tuning.pick_faster(("a",), candidates) == "cudnn"
    timings["fused"] = 0.5  # remembered: no second measurement for the same key
    assert tuning.pick_faster(("a",), candidates) == "cudnn"
    assert tuning.pick_faster(("b",), candidates) == "fused"
    once = ["fused", "cudnn", "fused", "timed fused", "cudnn", "timed cudnn"]  # warm-up calls, then the timings
    assert calls == once + once
