import contextlib
import os
import warnings

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Kernel tests run the Triton kernels in the interpreter (it must be set
    # before Triton is imported); everything else uses the fast references.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("SACD_DISABLE_TRITON", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Where the kernel tests put their tensors: CUDA on a GPU machine, else the CPU
# (the Triton interpreter). Never CPU tensors for a CUDA launch.
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Property-based kernel tests: a bounded, reproducible run by default (CI);
# HYPOTHESIS_PROFILE=long for a longer local search.
_common = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=8, derandomize=True, **_common)
settings.register_profile("long", max_examples=200, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# Every parity tolerance, (op, dtype, device type) -> (atol, rtol), against a
# float64 reference computed on the same (rounded) input values: an element
# passes when |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|
# (atol follows the tensor's scale: InstanceNorm gradients reach 1/std). "cpu"
# is the Triton interpreter (exact fp32 products); "cuda" has TF32 and
# bf16/fp16 tensor-core convolutions, whose errors InstanceNorm scales up.
# ("feacali", F32, "cuda") is TF32's bound: operands rounded to 10 mantissa
# bits (a relative 2**-11 each) over 9 * C_in products per output, divided by
# each channel's std by InstanceNorm, stay within 2e-2 of the output's scale
# at the model's shapes; with torch.backends.cudnn.allow_tf32 off the fused
# chain multiplies in IEEE fp32 and meets the "cpu" row.
TOLERANCES = {
    **{("anomaly_map", dtype, "cpu"): (2e-5, 0.0) for dtype in (F16, BF16, F32)},
    **{("anomaly_map", dtype, "cuda"): (1e-4, 0.0) for dtype in (F16, BF16, F32)},
    ("feacali", F32, "cpu"): (2e-5, 0.0),
    ("feacali", F16, "cpu"): (2e-2, 0.0),
    ("feacali", BF16, "cpu"): (1.5e-1, 0.0),
    ("feacali", F32, "cuda"): (2e-2, 0.0),
    ("feacali", F16, "cuda"): (3e-2, 0.0),
    ("feacali", BF16, "cuda"): (1.5e-1, 0.0),
    ("feacali_grad", F32, "cpu"): (1e-4, 1e-4),
    ("feacali_grad", F32, "cuda"): (2e-2, 2e-2),
    ("feacali_grad", BF16, "cpu"): (5e-1, 5e-2),
    ("feacali_grad", BF16, "cuda"): (5e-1, 5e-2),
    # The FeaCali chain and the map compiled into one graph (inductor reorders the eager ops around them).
    ("compiled_map", F32, "cpu"): (2e-4, 0.0),
    ("compiled_map", F16, "cpu"): (1e-3, 0.0),
    ("compiled_map", F32, "cuda"): (2e-3, 0.0),
    ("compiled_map", F16, "cuda"): (2e-3, 0.0),
    **{("noise", F32, device): (1e-5, 0.0) for device in ("cpu", "cuda")},
    **{("synthesis", F32, device): (1e-6, 0.0) for device in ("cpu", "cuda")},
    **{("synthesis", F16, device): (2e-3, 0.0) for device in ("cpu", "cuda")},
    **{("synthesis", BF16, device): (1.6e-2, 0.0) for device in ("cpu", "cuda")},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, op: str, dtype: torch.dtype | None = None) -> None:
    """``actual`` within TOLERANCES[op, dtype, device] of ``expected`` everywhere
    (NaN only where ``expected`` is NaN); the message names the worst element."""
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[(op, dtype, actual.device.type)]
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{op}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    scale = max(1.0, float(e.abs().nan_to_num(0.0).max())) if e.numel() else 1.0
    atol = atol * scale
    excess = (a - e).abs() - (atol + rtol * e.abs())
    excess = torch.where(a.isnan() | e.isnan(), torch.where(a.isnan() & e.isnan(), -1.0, float("inf")), excess)
    if (excess > 0).any():
        worst = np.unravel_index(int(excess.flatten().argmax()), tuple(a.shape))
        raise AssertionError(
            f"{op} ({dtype}, {actual.device.type}): {int((excess > 0).sum())} of {a.numel()} elements outside "
            f"atol {atol} + rtol {rtol}; worst at {tuple(int(i) for i in worst)}: got {a[worst].item():.8g}, "
            f"expected {e[worst].item():.8g} (difference {abs(a[worst] - e[worst]).item():.3g})")


@contextlib.contextmanager
def kernel_path(triton: bool):
    """Make the public kernel functions take the Triton path (``True``) or the reference."""
    saved = os.environ.get("SACD_DISABLE_TRITON")
    os.environ["SACD_DISABLE_TRITON"] = "0" if triton else "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SACD_DISABLE_TRITON"]
        else:
            os.environ["SACD_DISABLE_TRITON"] = saved


@pytest.fixture
def poison_outputs(monkeypatch):
    """Every torch.empty / empty_like made during the test starts as NaN, so an
    element that a kernel forgets to write fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty_like(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_teacher_model(backbone="resnet18", image_size=64, **kwargs):
    """A SACD model with a random teacher (the warning is expected and silenced)."""
    from sacd_fast import SACD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SACD(backbone, teacher_weights=None, image_size=image_size, **kwargs)


# Seeds that exercise opensimplex's 64-bit seeding: zero, negative, beyond 32 bits, both int64 extremes.
SEEDS = [0, -1, -123456789, 2**32 + 17, 2**62 + 12345, 2**63 - 1, -(2**63)]


def opensimplex_field(seed, c, h, w, octaves=6, persistence=0.6, frequency=32.0):
    """The fractal noise field, point by point, from the ``opensimplex`` package itself."""
    from opensimplex import OpenSimplex

    noise = OpenSimplex(seed)
    out = np.zeros((c, h, w))
    for o in range(octaves):
        s = 2.0**o / frequency
        for z in range(c):
            for y in range(h):
                for x in range(w):
                    out[z, y, x] += persistence**o * noise.noise3(x * s, y * s, z * s)
    return out


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (B, C, H, W) in another memory layout:
    contiguous, channels_last, transposed (H and W swapped in memory),
    strided (every other element of a wider buffer), or channel_slice."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    b, c, h, w = t.shape
    if layout == "strided":
        wide = torch.zeros((b, c, h, 2 * w), dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "channel_slice":
        wide = torch.zeros((b, 2 * c, h, w), dtype=t.dtype, device=t.device)
        wide[:, 1::2] = t
        return wide[:, 1::2]
    raise ValueError(layout)


LAYOUTS = ("contiguous", "channels_last", "transposed", "strided", "channel_slice")
