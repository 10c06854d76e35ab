"""Argument checks of the public kernel functions.

Each public function in :mod:`sacd_fast.kernels` calls its check here before
it dispatches, so the reference and the Triton path accept and refuse exactly
the same inputs, with the same ``ValueError`` naming the function and the
argument. A launcher only ever sees arguments that passed these checks: the
shapes, lengths, dtypes and devices it reads from are proven here.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch

from sacd_fast.network.config import MAP_MODES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(op: str, message: str):
    raise ValueError(f"{op}: {message}")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def check_int(op: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (bools and floats are refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        _fail(op, f"{name} must be an integer, got {_describe(value)}")
    if number < minimum:
        _fail(op, f"{name} must be >= {minimum}, got {number}")
    return number


def check_real(op: str, name: str, value, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite Python float (>= ``minimum``; > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(op, f"{name} must be a real number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        _fail(op, f"{name} must be finite, got {number}")
    if minimum is not None and number < minimum:
        _fail(op, f"{name} must be >= {minimum}, got {number}")
    if positive and number <= 0:
        _fail(op, f"{name} must be > 0, got {number}")
    return number


def _sequence(op: str, name: str, value) -> list:
    if not isinstance(value, (list, tuple)):
        _fail(op, f"{name} must be a list or tuple, got {_describe(value)}")
    return list(value)


def check_tensor(op: str, name: str, t, dim: int | None = None, floating: bool = True) -> torch.Tensor:
    """A tensor with ``dim`` dimensions, every size >= 1, of a float dtype."""
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a tensor, got {_describe(t)}")
    if dim is not None and t.dim() != dim:
        _fail(op, f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        _fail(op, f"{name} is empty (shape {tuple(t.shape)})")
    if floating and t.dtype not in FLOAT_DTYPES:
        _fail(op, f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def _same_device(op: str, name: str, t: torch.Tensor, device: torch.device, first: str) -> None:
    if t.device != device:
        _fail(op, f"{name} is on {t.device} but {first} is on {device}")


def check_anomaly_map(teacher, student, size, sigma, mode, border=0
                      ) -> tuple[list, list, tuple[int, int], float, str, int]:
    op = "cosine_anomaly_map"
    teacher, student = _sequence(op, "teacher", teacher), _sequence(op, "student", student)
    if not teacher or len(teacher) != len(student):
        _fail(op, f"{len(teacher)} teacher and {len(student)} student feature maps; expected the same number, "
                  "at least one")
    size = _sequence(op, "size", list(size) if isinstance(size, torch.Size) else size)
    if len(size) != 2:
        _fail(op, f"size must be (H, W), got {size}")
    size = (check_int(op, "size[0]", size[0]), check_int(op, "size[1]", size[1]))
    sigma = check_real(op, "sigma", sigma, minimum=0.0)
    if mode not in MAP_MODES:
        _fail(op, f"mode must be one of {', '.join(map(repr, MAP_MODES))}, got {mode!r}")
    border = check_int(op, "border", border, minimum=0)
    t0 = check_tensor(op, "teacher[0]", teacher[0], dim=4)
    batch, device = t0.shape[0], t0.device
    for k, (t, s) in enumerate(zip(teacher, student)):
        if not _feature_pair_ok(t, s, batch, device):
            _check_feature_pair(op, k, t, s, batch, device)
    return teacher, student, size, sigma, mode, border


def check_conv_stack(x, weights, biases, eps, negative_slope) -> tuple[list, list, float, float]:
    op = "conv_in_lrelu_stack"
    check_tensor(op, "x", x, dim=4)
    weights, biases = _sequence(op, "weights", weights), _sequence(op, "biases", biases)
    if not weights or len(weights) != len(biases):
        _fail(op, f"{len(weights)} weights and {len(biases)} biases; expected the same number, at least one")
    if x.shape[2] * x.shape[3] < 2:
        _fail(op, f"InstanceNorm needs more than one pixel per channel, got a {x.shape[2]}x{x.shape[3]} map")
    channels, device = x.shape[1], x.device
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        if not _conv_weight_ok(weight, channels, device):
            _check_conv_weight(op, k, weight, channels, device)
        if bias is not None and not _bias_ok(bias, weight.shape[0], device):
            _check_bias(op, k, bias, weight.shape[0], device)
        channels = weight.shape[0]
    return weights, biases, check_real(op, "eps", eps, minimum=0.0), check_real(op, "negative_slope", negative_slope)


# The model's calls check about thirty tensors per inference. Each is first put to a one-expression test
# that accepts only what the full check accepts (a property test holds them to that), in a fraction of the
# host time; the full check runs when the quick one fails, and names the problem.
def _feature_pair_ok(t, s, batch: int, device: torch.device) -> bool:
    return (isinstance(t, torch.Tensor) and isinstance(s, torch.Tensor) and t.dim() == 4 and t.shape == s.shape
            and t.shape[0] == batch and t.numel() > 0 and t.dtype in FLOAT_DTYPES and s.dtype in FLOAT_DTYPES
            and t.device == device and s.device == device)


def _check_feature_pair(op: str, k: int, t, s, batch: int, device: torch.device) -> None:
    check_tensor(op, f"teacher[{k}]", t, dim=4)
    check_tensor(op, f"student[{k}]", s, dim=4)
    if t.shape != s.shape:
        _fail(op, f"scale {k}: teacher {tuple(t.shape)} and student {tuple(s.shape)} must have equal "
                  "(B, C, h, w) shapes")
    if t.shape[0] != batch:
        _fail(op, f"scale {k} has batch {t.shape[0]}, scale 0 has {batch}")
    _same_device(op, f"teacher[{k}]", t, device, "teacher[0]")
    _same_device(op, f"student[{k}]", s, device, "teacher[0]")


def _conv_weight_ok(weight, channels: int, device: torch.device) -> bool:
    return (isinstance(weight, torch.Tensor) and weight.shape[1:] == (channels, 3, 3) and weight.shape[0] > 0
            and weight.dtype in FLOAT_DTYPES and weight.device == device)


def _check_conv_weight(op: str, k: int, weight, channels: int, device: torch.device) -> None:
    check_tensor(op, f"weights[{k}]", weight, dim=4)
    if weight.shape[1:] != (channels, 3, 3):
        _fail(op, f"weights[{k}] must be (C_out, {channels}, 3, 3), got {tuple(weight.shape)}")
    _same_device(op, f"weights[{k}]", weight, device, "x")


def _bias_ok(bias, channels: int, device: torch.device) -> bool:
    return (isinstance(bias, torch.Tensor) and bias.shape == (channels,) and bias.dtype in FLOAT_DTYPES
            and bias.device == device)


def _check_bias(op: str, k: int, bias, channels: int, device: torch.device) -> None:
    check_tensor(op, f"biases[{k}]", bias, dim=1)
    if bias.shape[0] != channels:
        _fail(op, f"biases[{k}] has {bias.shape[0]} values for {channels} output channels")
    _same_device(op, f"biases[{k}]", bias, device, "x")


def check_seeds(op: str, seeds, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """int64 (B,) seeds, one per image (on ``device`` when given)."""
    if not isinstance(seeds, torch.Tensor) or seeds.dtype != torch.int64 or seeds.dim() != 1:
        _fail(op, f"seeds must be an int64 tensor of shape ({batch},), got {_describe(seeds)}")
    if seeds.numel() != batch:
        _fail(op, f"{seeds.numel()} seeds for a batch of {batch}")
    if device is not None:
        _same_device(op, "seeds", seeds, device, "the images")
    return seeds


def check_noise(shape, seeds, octaves, persistence, frequency) -> tuple[tuple[int, ...], int, float, float]:
    op = "simplex_noise3d"
    shape = _sequence(op, "shape", list(shape) if isinstance(shape, torch.Size) else shape)
    if len(shape) != 4:
        _fail(op, f"shape must be (B, C, H, W), got {shape}")
    shape = tuple(check_int(op, f"shape[{i}]", v) for i, v in enumerate(shape))
    check_seeds(op, seeds, shape[0])
    return (shape, check_int(op, "octaves", octaves), check_real(op, "persistence", persistence),
            check_real(op, "frequency", frequency, positive=True))


def check_bounds(op: str, name: str, bounds, side: int) -> tuple[int, int]:
    """[low, high) of a patch side: 1 <= low < high and high - 1 <= side (every patch fits)."""
    bounds = _sequence(op, name, bounds)
    if len(bounds) != 2:
        _fail(op, f"{name} must be (low, high), got {bounds}")
    low, high = check_int(op, f"{name}[0]", bounds[0]), check_int(op, f"{name}[1]", bounds[1])
    if not low < high <= side + 1:
        _fail(op, f"{name} = ({low}, {high}) must satisfy 1 <= low < high <= {side + 1} (the image side + 1)")
    return low, high


def check_synthesis(x01, seeds, strength, bounds_h, bounds_w) -> tuple[float, tuple[int, int], tuple[int, int]]:
    op = "synthesize_patches"
    check_tensor(op, "x01", x01, dim=4)
    check_seeds(op, seeds, x01.shape[0], x01.device)
    strength = check_real(op, "strength", strength)
    bounds_h = check_bounds(op, "bounds_h", bounds_h, x01.shape[2])
    return strength, bounds_h, check_bounds(op, "bounds_w", bounds_w, x01.shape[3])
