"""Property-based tests of every public kernel function (hypothesis).

For random batches, channels, odd and tiny sizes (1x1, 1xN, Nx1), memory
layouts (contiguous, channels_last, transposed, strided and channel-sliced
views), dtypes, sigmas and modes, the Triton path (KERNEL_DEVICE: the
interpreter on a CPU) matches a float64 reference. For random bad arguments,
the reference and the Triton path raise the same ValueError.

The default profile runs a bounded, reproducible number of examples;
HYPOTHESIS_PROFILE=long searches longer.
"""

import itertools

import pytest
import torch
from conftest import KERNEL_DEVICE, LAYOUTS, assert_close, kernel_path, with_layout
from hypothesis import assume, given
from hypothesis import strategies as st

from sacd_fast import kernels
from sacd_fast.kernels import validation
from sacd_fast.kernels.anomaly_map import reference as map_reference
from sacd_fast.kernels.feacali import reference as feacali_reference
from sacd_fast.kernels.simplex import reference as simplex_reference

pytest.importorskip("sacd_fast.kernels.anomaly_map.triton")

DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
SEEDS = st.integers(-(2**63), 2**63 - 1)


def tensor(seed: int, shape, dtype, layout: str, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Fresh random values (from ``seed``) in ``dtype`` and ``layout`` on KERNEL_DEVICE."""
    g = torch.Generator().manual_seed(seed)
    values = (offset + scale * torch.randn(shape, generator=g)).to(dtype)
    return with_layout(values.to(KERNEL_DEVICE), layout)


@st.composite
def anomaly_map_case(draw):
    batch = draw(st.integers(1, 3))
    scales = []
    for k in range(draw(st.integers(1, 4))):
        c, h, w = draw(st.integers(1, 40)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
        dtype = draw(DTYPES)
        t = tensor(draw(st.integers(0, 2**31)), (batch, c, h, w), dtype, draw(st.sampled_from(LAYOUTS)))
        s = tensor(draw(st.integers(0, 2**31)), (batch, c, h, w), draw(DTYPES), draw(st.sampled_from(LAYOUTS)))
        scales.append((t, s))
    size = (draw(st.integers(1, 20)), draw(st.integers(1, 20)))
    sigma = draw(st.sampled_from([0.0, 0.3, 1.0, 2.5, 4.0]))
    return [t for t, _ in scales], [s for _, s in scales], size, sigma, draw(st.sampled_from(["add", "mul"]))


@given(anomaly_map_case())
def test_anomaly_map_matches_float64(case):
    teacher, student, size, sigma, mode = case
    with kernel_path(triton=True):
        out = kernels.cosine_anomaly_map(teacher, student, size, sigma, mode)
    expected = map_reference.cosine_anomaly_map([t.double() for t in teacher], [s.double() for s in student], size,
                                                sigma, mode)
    assert out.dtype == torch.float32 and out.shape == (teacher[0].shape[0], *size)
    half = [t.dtype for t in teacher + student if t.dtype != torch.float32]
    assert_close(out, expected, "anomaly_map", half[0] if half else torch.float32)


def stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` rounded to ``dtype`` as the kernel's store rounds it: to nearest on a
    GPU; the Triton interpreter truncates fp32 -> bf16 (drops the low 16 bits)."""
    if dtype == torch.bfloat16 and KERNEL_DEVICE.type == "cpu":
        bits = t.float().view(torch.int32) & -65536
        return bits.view(torch.float32).double()
    return t.to(dtype).double()


def rounded_reference_chain(x, weights, eps, slope, dtype):
    """The chain in float64 with each block's conv output rounded to ``dtype``
    first, as the kernel stores it (and takes its statistics of the stored values)."""
    out = x.double()
    for w in weights:
        y = stored(torch.nn.functional.conv2d(out, w.to(dtype).double(), padding=1), dtype)
        out = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(y, eps=eps), slope)
    return out


@st.composite
def conv_stack_case(draw):
    batch, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if h * w < 2:
        w = 2
    widths = [draw(st.integers(1, 24)) for _ in range(draw(st.integers(2, 4)))]
    dtype = draw(DTYPES)
    x = tensor(draw(st.integers(0, 2**31)), (batch, widths[0], h, w), dtype, draw(st.sampled_from(LAYOUTS)),
               offset=draw(st.sampled_from([0.0, 3.0])))
    weights = [tensor(draw(st.integers(0, 2**31)), (b, a, 3, 3), torch.float32, "contiguous", 1 / (3 * a**0.5))
               for a, b in zip(widths, widths[1:])]
    return x, weights, draw(st.sampled_from([1e-5, 1e-3, 0.1])), draw(st.sampled_from([0.01, 0.2, -0.5]))


@given(conv_stack_case())
def test_conv_stack_matches_float64(poison_outputs, case):
    x, weights, eps, slope = case
    with torch.no_grad(), kernel_path(triton=True):
        out = kernels.conv_in_lrelu_stack(x, weights, [None] * len(weights), eps, slope)
    assert out.shape == (x.shape[0], weights[-1].shape[0], *x.shape[2:]) and out.dtype == x.dtype
    assert_close(out, rounded_reference_chain(x, weights, eps, slope, x.dtype), "feacali", x.dtype)


@given(st.integers(1, 2), st.integers(1, 8), st.integers(1, 8), st.integers(1, 6), st.integers(1, 7),
       st.sampled_from(LAYOUTS), st.integers(0, 2**31))
def test_conv_block_gradients_match_float64(batch, cin, cout, h, w, layout, seed):
    if h * w < 2:
        h = 2
    x = tensor(seed, (batch, cin, h, w), torch.float32, layout).requires_grad_()
    weight = tensor(seed + 1, (cout, cin, 3, 3), torch.float32, "contiguous", 1 / (3 * cin**0.5)).requires_grad_()
    y = torch.nn.functional.conv2d(x.detach().double(), weight.detach().double(), padding=1)
    # A channel whose variance is far below eps is ill-conditioned in fp32 for any implementation
    # (tests/test_kernel_feacali.py holds those to PyTorch's own accuracy).
    assume(float(y.flatten(2).var(2, unbiased=False).min()) > 1e-3)
    bias = tensor(seed + 2, (cout,), torch.float32, "contiguous").requires_grad_()
    grad = tensor(seed + 3, (batch, cout, h, w), torch.float32, layout)
    with kernel_path(triton=True):
        out = kernels.conv_in_lrelu(x, weight, bias)
    (out * grad).sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out64 = feacali_reference.conv_in_lrelu(x64, w64, b64)
    (out64 * grad.double()).sum().backward()
    assert_close(out, out64, "feacali")
    for got, expected in ((x.grad, x64.grad), (weight.grad, w64.grad), (bias.grad, b64.grad)):
        assert_close(got, expected, "feacali_grad")


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.lists(SEEDS, min_size=3,
       max_size=3), st.integers(1, 6), st.sampled_from([0.3, 0.6, 1.0]), st.sampled_from([2.0, 7.5, 32.0]))
def test_noise_matches_the_reference(batch, c, h, w, seeds, octaves, persistence, frequency):
    seeds = torch.tensor(seeds[:batch], dtype=torch.int64)
    with kernel_path(triton=True):
        out = kernels.simplex_noise3d((batch, c, h, w), seeds.to(KERNEL_DEVICE), octaves, persistence, frequency)
    expected = simplex_reference.simplex_noise3d((batch, c, h, w), seeds, octaves, persistence, frequency)
    assert_close(out, expected, "noise")


@st.composite
def synthesis_case(draw):
    batch, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    bounds = []
    for side in (h, w):
        low = draw(st.integers(1, side))
        bounds.append((low, draw(st.integers(low + 1, side + 1))))
    dtype = draw(DTYPES)
    x = tensor(draw(st.integers(0, 2**31)), (batch, c, h, w), dtype, draw(st.sampled_from(LAYOUTS)))
    seeds = torch.tensor(draw(st.lists(SEEDS, min_size=batch, max_size=batch)), dtype=torch.int64)
    return x, seeds, draw(st.sampled_from([0.2, -1.0, 3.0])), bounds[0], bounds[1]


@given(synthesis_case())
def test_synthesis_matches_the_reference(poison_outputs, case):
    x, seeds, strength, bounds_h, bounds_w = case
    with kernel_path(triton=True):
        out, masks = kernels.synthesize_patches(x, seeds.to(x.device), strength, bounds_h, bounds_w)
    expected, expected_masks = simplex_reference.synthesize_patches(x.cpu().double(), seeds, strength, bounds_h,
                                                                    bounds_w)
    assert out.dtype == masks.dtype == x.dtype and masks.shape == (x.shape[0], 1, *x.shape[2:])
    assert torch.equal(masks.cpu().double(), expected_masks)
    assert_close(out, expected, "synthesis", x.dtype)


# --------------------------------------------------------------------------- #
# Validation: both paths refuse the same bad arguments with the same ValueError
# --------------------------------------------------------------------------- #


def _features(c=4, h=3, w=3, batch=2, dtype=torch.float32):
    return torch.randn(batch, c, h, w, dtype=dtype, device=KERNEL_DEVICE)


def anomaly_map_call(bad: str):
    t, s = [_features(), _features(8, 2, 2)], [_features(), _features(8, 2, 2)]
    args = dict(teacher=t, student=s, size=(5, 6), sigma=1.0, mode="add")
    change = {
        "no scales": dict(teacher=[], student=[]),
        "fewer student maps": dict(student=s[:1]),
        "teacher not a list": dict(teacher=t[0]),
        "student shape": dict(student=[s[0], _features(8, 2, 3)]),
        "batch differs": dict(teacher=[t[0], _features(8, 2, 2, batch=3)], student=[s[0], _features(8, 2, 2, batch=3)]),
        "3-D features": dict(teacher=[t[0][0]], student=[s[0][0]]),
        "integer features": dict(teacher=[t[0].long()], student=[s[0].long()]),
        "empty features": dict(teacher=[t[0][:0]], student=[s[0][:0]]),
        "other device": dict(student=[s[0].to("meta"), s[1]]),
        "size of one": dict(size=(5,)),
        "size zero": dict(size=(0, 6)),
        "fractional size": dict(size=(32.5, 6)),
        "boolean size": dict(size=(True, 6)),
        "string sigma": dict(sigma="4"),
        "nan sigma": dict(sigma=float("nan")),
        "negative sigma": dict(sigma=-1.0),
        "infinite sigma": dict(sigma=float("inf")),
        "mode": dict(mode="max"),
    }[bad]
    args.update(change)
    return lambda: kernels.cosine_anomaly_map(**args)


def conv_call(bad: str):
    x = _features(4, 3, 3)
    w1, w2 = torch.randn(2, 4, 3, 3, device=KERNEL_DEVICE), torch.randn(4, 2, 3, 3, device=KERNEL_DEVICE)
    args = dict(x=x, weights=[w1, w2], biases=[None, torch.zeros(4, device=KERNEL_DEVICE)], eps=1e-5,
                negative_slope=0.01)
    change = {
        "two weights one bias": dict(biases=[None]),
        "no weights": dict(weights=[], biases=[]),
        "weights not a list": dict(weights=w1, biases=None),
        "1x1 map": dict(x=_features(4, 1, 1)),
        "wrong input channels": dict(weights=[w2, w1]),
        "5x5 kernel": dict(weights=[torch.randn(2, 4, 5, 5, device=KERNEL_DEVICE), w2]),
        "bias length": dict(biases=[torch.zeros(3, device=KERNEL_DEVICE), None]),
        "integer input": dict(x=x.long()),
        "3-D input": dict(x=x[0]),
        "weight on another device": dict(weights=[w1.to("meta"), w2]),
        "nan eps": dict(eps=float("nan")),
        "negative eps": dict(eps=-1.0),
        "string slope": dict(negative_slope="0.01"),
    }[bad]
    args.update(change)
    return lambda: kernels.conv_in_lrelu_stack(**args)


def noise_call(bad: str):
    args = dict(shape=(2, 1, 3, 3), seeds=torch.tensor([1, 2], device=KERNEL_DEVICE), octaves=2, persistence=0.5,
                frequency=4.0)
    change = {
        "seed count": dict(seeds=torch.tensor([1], device=KERNEL_DEVICE)),
        "int32 seeds": dict(seeds=torch.tensor([1, 2], dtype=torch.int32, device=KERNEL_DEVICE)),
        "float seeds": dict(seeds=torch.tensor([1.0, 2.0], device=KERNEL_DEVICE)),
        "2-D seeds": dict(seeds=torch.tensor([[1, 2]], device=KERNEL_DEVICE)),
        "3-D shape": dict(shape=(2, 3, 3)),
        "zero size": dict(shape=(2, 1, 0, 3)),
        "float size": dict(shape=(2, 1, 3.0, 3)),
        "no octaves": dict(octaves=0),
        "zero frequency": dict(frequency=0.0),
        "nan persistence": dict(persistence=float("nan")),
    }[bad]
    args.update(change)
    return lambda: kernels.simplex_noise3d(**args)


def synthesis_call(bad: str):
    x = torch.rand(2, 3, 32, 32, device=KERNEL_DEVICE)
    args = dict(x01=x, seeds=torch.tensor([1, 2], device=KERNEL_DEVICE), strength=0.2, bounds_h=(4, 16),
                bounds_w=(4, 16))
    change = {
        "one seed for two images": dict(seeds=torch.tensor([1], device=KERNEL_DEVICE)),
        "int32 seeds": dict(seeds=torch.tensor([1, 2], dtype=torch.int32, device=KERNEL_DEVICE)),
        "seeds elsewhere": dict(seeds=torch.tensor([1, 2], device="meta")),
        "bounds (0, 0)": dict(bounds_h=(0, 0)),
        "bounds reversed": dict(bounds_w=(9, 5)),
        "patch larger than the image": dict(bounds_h=(4, 34)),
        "three bounds": dict(bounds_w=(1, 2, 3)),
        "fractional bound": dict(bounds_w=(4.5, 16)),
        "uint8 images": dict(x01=(x * 255).to(torch.uint8)),
        "3-D images": dict(x01=x[0]),
        "nan strength": dict(strength=float("nan")),
    }[bad]
    args.update(change)
    return lambda: kernels.synthesize_patches(**args)


BAD_CALLS = [(anomaly_map_call, name) for name in (
    "no scales", "fewer student maps", "teacher not a list", "student shape", "batch differs", "3-D features",
    "integer features", "empty features", "other device", "size of one", "size zero", "fractional size",
    "boolean size", "string sigma", "nan sigma", "negative sigma", "infinite sigma", "mode")]
BAD_CALLS += [(conv_call, name) for name in (
    "two weights one bias", "no weights", "weights not a list", "1x1 map", "wrong input channels", "5x5 kernel",
    "bias length", "integer input", "3-D input", "weight on another device", "nan eps", "negative eps",
    "string slope")]
BAD_CALLS += [(noise_call, name) for name in (
    "seed count", "int32 seeds", "float seeds", "2-D seeds", "3-D shape", "zero size", "float size", "no octaves",
    "zero frequency", "nan persistence")]
BAD_CALLS += [(synthesis_call, name) for name in (
    "one seed for two images", "int32 seeds", "seeds elsewhere", "bounds (0, 0)", "bounds reversed",
    "patch larger than the image", "three bounds", "fractional bound", "uint8 images", "3-D images",
    "nan strength")]


def refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@given(st.sampled_from(BAD_CALLS))
def test_both_paths_refuse_bad_arguments_alike(bad):
    make, name = bad
    with kernel_path(triton=False):
        on_reference = refusal(make(name))
    with kernel_path(triton=True):
        on_triton = refusal(make(name))
    assert on_reference == on_triton
    assert on_reference.split(":")[0] in {"cosine_anomaly_map", "conv_in_lrelu_stack", "simplex_noise3d",
                                          "synthesize_patches"}


@pytest.mark.parametrize("bad", BAD_CALLS, ids=[f"{make.__name__}-{name}" for make, name in BAD_CALLS])
def test_every_bad_argument_is_refused_with_a_named_error(bad):
    make, name = bad
    message = refusal(make(name))
    assert len(message) > 20 and "\n" not in message


def near_tensor(shape: tuple[int, ...], device: str, dtype: torch.dtype, change: str, axis: int):
    """A tensor of ``shape``, ``dtype`` and ``device`` with ``change`` made: a size (``axis``'s) set to 0 or
    to another, a dimension fewer or more, an integer dtype, the other device; or a value that is no tensor."""
    shape, axis = list(shape), axis % len(shape)
    if change == "zero size":
        shape[axis] = 0
    elif change == "other size":
        shape[axis] += 1
    elif change == "fewer dims":
        shape.pop(axis)
    elif change == "more dims":
        shape.insert(axis, 2)
    elif change == "integer dtype":
        dtype = torch.int64
    elif change == "other device":
        device = "meta" if device == "cpu" else "cpu"
    elif change == "no tensor":
        return [1.0]
    return torch.empty(shape, dtype=dtype, device=device)


def accepted(check, *args) -> bool:
    try:
        check(*args)
    except ValueError:
        return False
    return True


CHANGES = ("none", "zero size", "other size", "fewer dims", "more dims", "integer dtype", "other device",
           "no tensor")


@given(st.integers(1, 3), st.integers(1, 3), st.lists(DTYPES | st.just(torch.float64), min_size=4, max_size=4))
def test_quick_argument_checks_accept_only_what_the_full_checks_accept(c_in, c_out, dtypes):
    """The validation's one-expression fast paths never let through what its named checks refuse: every
    change, to every argument (both feature maps at once too), on every axis, on either device."""
    for change, target, axis, device in itertools.product(
            CHANGES, ("weight", "bias", "teacher", "student", "both maps"), range(4), ("cpu", "meta")):
        def make(k, name, shape):
            return near_tensor(shape, device, dtypes[k], change if target in (name, "both maps") else "none", axis)

        on, case = torch.device(device), (change, target, axis, device)
        weight, bias = make(0, "weight", (c_out, c_in, 3, 3)), make(1, "bias", (c_out,))
        if validation._conv_weight_ok(weight, c_in, on):
            assert accepted(validation._check_conv_weight, "op", 0, weight, c_in, on), case
        if validation._bias_ok(bias, c_out, on):
            assert accepted(validation._check_bias, "op", 0, bias, c_out, on), case
        t, s = make(2, "teacher", (2, c_in, 3, 2)), make(3, "student", (2, c_in, 3, 2))
        if validation._feature_pair_ok(t, s, 2, on):
            assert accepted(validation._check_feature_pair, "op", 0, t, s, 2, on), case
