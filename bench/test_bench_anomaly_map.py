"""Anomaly map: reference vs torch.compile(reference) vs the Triton kernels.

Reports images/s, GB/s (features read once + map written once) and that
rate as a fraction of the device's measured copy bandwidth (4.0 TB/s on an
H200)."""

import pytest
import torch
from table import DEVICE, ON_GPU

from sacd_fast.kernels.anomaly_map import reference
from sacd_fast.kernels.report import SCALES

SHAPES = {backbone: [(c, s, s) for c, s in scales] for backbone, scales in SCALES.items()}
BATCHES = [1, 32] if ON_GPU else [1, 4]
SIZE = 256


def provider_fn(provider):
    if provider == "reference":
        return reference.cosine_anomaly_map
    if provider == "compiled":
        return torch.compile(reference.cosine_anomaly_map)
    if not ON_GPU:
        pytest.skip("the Triton kernels need a GPU (the interpreter is not a speed path)")
    from sacd_fast.kernels.anomaly_map.triton import cosine_anomaly_map_triton

    return cosine_anomaly_map_triton


@pytest.mark.parametrize("provider", ["reference", "compiled", "fast"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backbone", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32])
def test_anomaly_map(timed, copy_bandwidth, provider, batch, backbone, dtype):
    teacher = [torch.randn(batch, *s, device=DEVICE, dtype=dtype) for s in SHAPES[backbone]]
    student = [torch.randn_like(t) for t in teacher]
    fn = provider_fn(provider)
    feature_bytes = sum(2 * t.numel() * t.element_size() for t in teacher)
    timed(lambda: fn(teacher, student, (SIZE, SIZE)), items=batch, bytes=feature_bytes + batch * SIZE * SIZE * 4,
          floor_gb_per_s=copy_bandwidth)
