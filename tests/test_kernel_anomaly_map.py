"""Parity of the Triton anomaly-map kernels with a float64 reference.

Small and odd shapes run on KERNEL_DEVICE (the interpreter on a CPU); the
CUDA cases add the model's real feature shapes."""

import numpy as np
import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, kernel_path, requires_cuda

from sacd_fast import kernels
from sacd_fast.kernels.anomaly_map import reference

anomaly_map = pytest.importorskip("sacd_fast.kernels.anomaly_map.triton")

SMALL_SHAPES = [  # (batch, [(C, h, w) per scale], output size)
    (1, [(8, 4, 4)], (7, 9)),
    (2, [(20, 6, 5), (33, 3, 3), (65, 2, 1)], (13, 11)),
    (3, [(16, 8, 8), (32, 4, 4), (64, 2, 2)], (32, 32)),
]
WRN_SHAPES = [(256, 64, 64), (512, 32, 32), (1024, 16, 16)]
LITE0_SHAPES = [(24, 64, 64), (40, 32, 32), (112, 16, 16)]


def features(batch, shapes, dtype, channels_last, device=KERNEL_DEVICE):
    out = []
    for c, h, w in shapes:
        t = torch.randn(batch, c, h, w, device=device).to(dtype)
        s = (t.float() + 0.7 * torch.randn_like(t.float())).to(dtype)
        if channels_last:
            t, s = t.to(memory_format=torch.channels_last), s.to(memory_format=torch.channels_last)
        out.append((t, s))
    return [t for t, _ in out], [s for _, s in out]


def float64_reference(teacher, student, size, mode="add", sigma=4.0, border=0):
    return reference.cosine_anomaly_map([t.double() for t in teacher], [s.double() for s in student],
                                        size, sigma, mode, border)


@pytest.mark.parametrize("batch,shapes,size", SMALL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["add", "mul"])
def test_anomaly_map_parity(batch, shapes, size, dtype, channels_last, mode, poison_outputs):
    teacher, student = features(batch, shapes, dtype, channels_last)
    out = anomaly_map.cosine_anomaly_map_triton(teacher, student, size, 4.0, mode)
    assert out.dtype == torch.float32 and out.shape == (batch, *size)
    assert_close(out, float64_reference(teacher, student, size, mode), "anomaly_map", dtype)


@pytest.mark.parametrize("border", [1, 2])
@pytest.mark.parametrize("mode", ["add", "mul"])
def test_anomaly_map_border_parity(border, mode, poison_outputs):
    """Border cells read from inside; maps with no inner cell on a side (3x3 at border 2, 2x1) keep that side."""
    teacher, student = features(2, SMALL_SHAPES[1][1], torch.float32, False)
    out = anomaly_map.cosine_anomaly_map_triton(teacher, student, (13, 11), 2.0, mode, border)
    assert_close(out, float64_reference(teacher, student, (13, 11), mode, 2.0, border), "anomaly_map")


@pytest.mark.parametrize("border", [1, 2])
def test_reference_border_replicates_the_inner_cells(border):
    """The reference's border equals upsampling the inner cells padded by replication."""
    teacher, student = features(2, [(5, 7, 6), (4, 4, 5)], torch.float64, False, device="cpu")
    expected = 0
    for t, s in zip(teacher, student):
        d = reference.cosine_distance(t, s)[:, None]
        h, w = d.shape[-2:]
        bh, bw = (border if h > 2 * border else 0), (border if w > 2 * border else 0)
        inner = d[:, :, bh:h - bh, bw:w - bw]
        padded = torch.nn.functional.pad(inner, (bw, bw, bh, bh), mode="replicate")
        expected = expected + torch.nn.functional.interpolate(padded, size=(12, 10), mode="bilinear",
                                                              align_corners=True)[:, 0]
    out = reference.cosine_anomaly_map(teacher, student, (12, 10), 0.0, "add", border)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not torch.equal(out, reference.cosine_anomaly_map(teacher, student, (12, 10), 0.0, "add"))


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_more_than_three_scales(mode, poison_outputs):
    """The upsampling takes three scales a launch; the next ones are combined into the map, in order."""
    teacher, student = features(2, [(8, 4, 4), (6, 3, 5), (5, 2, 2), (9, 5, 3), (4, 1, 1)], torch.float32, False)
    out = anomaly_map.cosine_anomaly_map_triton(teacher, student, (9, 10), 1.0, mode)
    assert_close(out, float64_reference(teacher, student, (9, 10), mode, sigma=1.0), "anomaly_map")


@pytest.mark.parametrize("shape,view", [((1, 2, 1, 6), "transpose"), ((2, 3, 6, 1), "transpose"),
                                        ((1, 2, 1, 7), "none"), ((3, 4, 5, 1), "channels_last")])
def test_one_pixel_wide_or_high_maps_read_their_real_strides(shape, view, poison_outputs):
    """A (B, C, H, 1) view keeps its odd stride on the size-1 axis (``.contiguous()``
    leaves it): the pixel stride must come from the other axis."""
    def make():
        t = torch.randn(shape, device=KERNEL_DEVICE)
        if view == "transpose":
            return t.transpose(2, 3)
        return t.to(memory_format=torch.channels_last) if view == "channels_last" else t

    teacher, student = make(), make()
    size = teacher.shape[2:]
    with kernel_path(triton=True):
        out = kernels.cosine_anomaly_map([teacher], [student], size, sigma=0)
    assert_close(out, float64_reference([teacher], [student], size, sigma=0), "anomaly_map")


# (2, 9, 23): smaller than the 33 taps, reflection repeats; (1, 100, 90): tiles away from the border too
@pytest.mark.parametrize("shape", [(2, 9, 23), (1, 100, 90)])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5, 4.0])
def test_gaussian_filter_equals_scipy(sigma, shape, poison_outputs):
    ndimage = pytest.importorskip("scipy.ndimage")
    maps = torch.rand(*shape)
    expected = np.stack([ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=4.0) if sigma else m
                         for m in maps.double().numpy()])
    np.testing.assert_allclose(reference.gaussian_blur(maps.double(), sigma).numpy(), expected, atol=1e-12)
    if sigma:
        blurred = anomaly_map.gaussian_blur_triton(maps.to(KERNEL_DEVICE), sigma)
        assert_close(blurred, torch.from_numpy(expected), "anomaly_map")


def test_dispatch_rule(monkeypatch):
    teacher, student = features(2, [(8, 4, 4), (16, 2, 2)], torch.float32, False, device="cpu")
    calls = []
    monkeypatch.setattr(anomaly_map, "cosine_anomaly_map_triton",
                        lambda *a: calls.append(a) or torch.zeros(2, 8, 8))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SACD_DISABLE_TRITON", raising=False)
    kernels.cosine_anomaly_map(teacher, student, (8, 8))
    assert len(calls) == 1
    monkeypatch.setenv("SACD_DISABLE_TRITON", "1")
    kernels.cosine_anomaly_map(teacher, student, (8, 8))
    monkeypatch.delenv("SACD_DISABLE_TRITON")
    monkeypatch.delenv("TRITON_INTERPRET")
    kernels.cosine_anomaly_map(teacher, student, (8, 8))  # CPU tensors, no interpreter: reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernels.cosine_anomaly_map([t.to("meta") for t in teacher], [s.to("meta") for s in student], (8, 8))
    kernels.cosine_anomaly_map([t.double() for t in teacher], [s.double() for s in student], (8, 8))
    assert len(calls) == 1  # meta tensors and float64 stay on the reference


def test_model_predict_through_the_kernel():
    from conftest import random_teacher_model

    model = random_teacher_model("resnet18", 32).to(KERNEL_DEVICE)
    x = torch.randn(1, 3, 32, 32, device=KERNEL_DEVICE)
    with kernel_path(triton=False):
        expected = model.predict(x).maps
    with kernel_path(triton=True):
        torch.testing.assert_close(model.predict(x).maps, expected, rtol=0, atol=2e-5)


@requires_cuda
@pytest.mark.parametrize("shapes", [WRN_SHAPES, LITE0_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 32])
def test_anomaly_map_parity_cuda(shapes, dtype, batch, poison_outputs):
    teacher, student = features(batch, shapes, dtype, dtype == torch.bfloat16, device="cuda")
    out = kernels.cosine_anomaly_map(teacher, student, (256, 256))
    assert_close(out, float64_reference(teacher, student, (256, 256)), "anomaly_map", dtype)
