"""Every Triton kernel compiles for sm_90 (H100/H200) at the launch
configurations the wrappers use for WideResNet-50-2 at 256², every autotuning
config included, checked on a machine without a GPU (tests/sm90_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from sacd_fast.kernels import anomaly_map, feacali, simplex  # noqa: E402

SHARED_MEMORY_SM90 = 227 * 1024  # the most one block may use on an H100/H200


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    worker = Path(__file__).with_name("sm90_worker.py")
    done = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90(report):
    kernels = {name for module in (anomaly_map, feacali, simplex) for name in vars(module) if name.endswith("_kernel")}
    compiled = {name.split(" ")[0] for name in report}
    assert compiled == kernels
    for name, info in report.items():
        assert 0 <= info["shared"] <= SHARED_MEMORY_SM90, name


def test_convolution_uses_tensor_cores_and_no_kernel_but_noise_uses_fp64(report):
    conv = {name: info for name, info in report.items() if name.startswith("_conv3x3_stats_kernel")}
    for variant in ("[fp32]", "[bf16]", "NORM_INPUT=False", "NORM_INPUT=True", "num_warps=4", "num_warps=8"):
        assert any(variant in name for name in conv), variant  # every autotuning config, both dtypes
    assert all(info["mma"] for info in conv.values())
    fp64 = {name.split(" ")[0] for name, info in report.items() if info["fp64"]}
    assert fp64 == {"_noise_field_kernel", "_synthesize_kernel"}  # opensimplex's float64, on purpose
