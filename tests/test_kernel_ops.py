"""The Triton paths as custom ops inside torch.compile: fake implementations
that agree with the real ones (opcheck), and a compiled FeaCali + anomaly-map
graph that calls the kernels inside ``triton_in_compiled_graphs()`` and traces
the references outside it, with the same maps either way."""

import copy

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, random_teacher_model

from sacd_fast import kernels
from sacd_fast.kernels.anomaly_map import reference
from sacd_fast.network.feacali import FeaCali

ops = pytest.importorskip("sacd_fast.kernels.ops")
feacali = pytest.importorskip("sacd_fast.kernels.feacali.triton")
anomaly_map = pytest.importorskip("sacd_fast.kernels.anomaly_map.triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_anomaly_map_op_passes_opcheck(dtype):
    teacher = [torch.randn(2, 6, 5, 7, dtype=dtype, device=KERNEL_DEVICE),
               torch.randn(2, 4, 3, 3, dtype=dtype, device=KERNEL_DEVICE)]
    student = [torch.randn_like(t) for t in teacher]
    student[0] = student[0].to(memory_format=torch.channels_last)
    torch.library.opcheck(ops.cosine_anomaly_map, (teacher, student, [9, 11], 1.0, "add", 1))


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 4, 1, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feacali_op_passes_opcheck(shape, dtype):
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, device=KERNEL_DEVICE)
    weights = [torch.randn(a, b, 3, 3, device=KERNEL_DEVICE) / c for a, b in ((c // 2, c), (c, c // 2))]
    torch.library.opcheck(ops.conv_in_lrelu_stack, (x, weights, 1e-5, 0.01, None, True))
    bias = torch.randn(c, device=KERNEL_DEVICE)
    torch.library.opcheck(ops.conv_in_lrelu_stack, (x, weights, 1e-5, 0.01, bias, False))


def test_compiled_graph_calls_the_kernels_only_inside_the_block(monkeypatch):
    monkeypatch.setenv("SACD_DISABLE_TRITON", "0")
    model = random_teacher_model("resnet18", 64).to(KERNEL_DEVICE).eval()
    teacher = [torch.randn(2, c, s, s, device=KERNEL_DEVICE) for c, s in ((64, 16), (128, 8), (256, 4))]
    student = [torch.randn_like(t).to(memory_format=torch.channels_last) for t in teacher]
    with torch.no_grad():
        expected = reference.cosine_anomaly_map(
            [t.double() for t in teacher],
            [f.double()(s.double()) for f, s in zip(model.feacali, student)], (64, 64), model.config.sigma)
    model.float()

    calls = []
    for module, name in ((feacali, "fastest_stack"), (anomaly_map, "cosine_anomaly_map_triton")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))

    def maps(teacher, student):
        # Doubling is invisible to the cosine, and makes inductor read the op's
        # output with the strides its fake implementation promised.
        calibrated = [2 * f(s) for f, s in zip(model.feacali, student)]
        return kernels.cosine_anomaly_map(teacher, calibrated, (64, 64), model.config.sigma)

    compiled = torch.compile(maps, fullgraph=True)
    with torch.no_grad():
        with kernels.triton_in_compiled_graphs():
            with_kernels = compiled(teacher, student)
        assert calls == ["fastest_stack"] * 3 + ["cosine_anomaly_map_triton"]
        calls.clear()
        traced_references = compiled(teacher, student)  # the guard: a second graph, without the ops
        assert calls == []
    assert_close(with_kernels, expected, "compiled_map")
    assert_close(traced_references, expected, "compiled_map")


def test_compiled_graph_with_half_features_and_float_weights(monkeypatch):
    """As in the fast model under autocast: half-precision features meet float32 weights in the ops."""
    monkeypatch.setenv("SACD_DISABLE_TRITON", "0")
    module = FeaCali(32).to(KERNEL_DEVICE).eval()
    teacher = torch.randn(2, 32, 8, 8, device=KERNEL_DEVICE).half()
    student = torch.randn(2, 32, 8, 8, device=KERNEL_DEVICE).half().to(memory_format=torch.channels_last)
    with torch.no_grad():
        calibrated = copy.deepcopy(module).double()(student.double())
        expected = reference.cosine_anomaly_map([teacher.double()], [calibrated], (16, 16), 4.0)
    compiled = torch.compile(lambda t, s: kernels.cosine_anomaly_map([t], [2 * module(s)], (16, 16)), fullgraph=True)
    with torch.no_grad(), kernels.triton_in_compiled_graphs():
        out = compiled(teacher, student)
    assert out.dtype == torch.float32 and out.shape == (2, 16, 16)
    assert_close(out, expected, "compiled_map", torch.float16)  # measured 7e-5: fp16 convolutions
