"""Every Triton kernel compiles for sm_90 (H100/H200) at the launch
configurations the launchers use for WideResNet-50-2 at 256² (NCHW and
channels_last; fp32, fp16 and bf16; batches 1, 2 and 32; every autotuning
config the autotuner would try; every upsampling mode; blur radii 1, 8 and
16), each variant named with its arguments' types and 16-divisibility as the
JIT specialises them, checked on a machine without a GPU (tests/sm90_worker.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SHARED_MEMORY_SM90 = 227 * 1024  # the most one block may use on an H100/H200


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    worker = Path(__file__).with_name("sm90_worker.py")
    done = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def variants(report, kernel):
    return {name: info for name, info in report["launched"].items() if name.split(" ")[0] == kernel}


def test_every_jit_function_is_compiled_or_inlined_into_one_that_is(report):
    """Kernels are found by what they are (every @triton.jit object in the
    package), not by name: each one is launched, or is a helper that a kernel calls."""
    from sacd_fast.kernels.recorder import jit_functions, source

    functions = jit_functions()
    launched = {name.split(" ")[0] for name in report["launched"]}
    assert set(report["jit"]) == set(functions)
    sources = {name: source(fn) for name, fn in functions.items()}
    helpers = {name for name in functions
               if any(re.search(rf"\b{name.split('.')[1]}\(", src) for other, src in sources.items() if other != name)}
    assert launched | helpers == set(functions), set(functions) - launched - helpers
    assert not launched & helpers


def test_shared_memory_and_spills(report):
    """Every configuration, inference and training, bf16 included: no register spills."""
    for name, info in report["launched"].items():
        assert 0 <= info["shared"] <= SHARED_MEMORY_SM90, name
        assert info["spill_bytes"] == 0, (name, info)


def test_bandwidth_bound_inference_kernels_keep_16_warps_resident_per_sm(report):
    """Every config of every inference kernel but the tensor-core convolution
    (compute-bound, with large tiles) leaves room for at least 16 warps per SM
    to hide memory latency: 4 blocks of a 4-warp config, 2 of an 8-warp one
    (the cosine distance's 8-warp configs hold 2 to 3 blocks, not 4)."""
    for name, info in report["launched"].items():
        if info["inference"] and not name.startswith("feacali._conv3x3_stats_kernel"):
            assert info["blocks_per_sm"] * info["num_warps"] >= 16, (name, info)


def test_convolution_variants_use_tensor_cores_and_ordered_statistics(report):
    conv = variants(report, "feacali._conv3x3_stats_kernel")
    for variant in ("*fp32", "*fp16", "*bf16", "NORM_INPUT=False", "NORM_INPUT=True", "NORM_OUTPUT=False",
                    "NORM_OUTPUT=True", "num_warps=4", "num_warps=8"):
        assert any(variant in name for name in conv), variant
    # The first convolution reads NCHW (pixel stride 1) and channels_last (channel stride 1) inputs.
    first = [name for name in conv if "NORM_INPUT=False" in name]
    assert len({name.rsplit(" ", 1)[1] for name in first}) >= 6  # 3 dtypes x 2 layouts specialise differently
    assert all(info["mma"] for info in conv.values())
    # one software-pipelined K-loop across the 9 taps (a loop per tap restarted the pipeline), plus the
    # statistics' two combining passes when there are statistics
    assert all(info["loops"] == (3 if "NORM_OUTPUT=True" in name else 1) for name, info in conv.items()), \
        {name: info["loops"] for name, info in conv.items()}
    # with statistics, the last program reads the other tiles' partials
    assert all(info["acq_rel"] for name, info in conv.items() if "NORM_OUTPUT=True" in name)


def test_every_upsampling_mode_and_blur_radius(report):
    combine = variants(report, "anomaly_map._upsample_combine_kernel")
    modes = {tuple(re.search(rf"{key}=(\w+)", name).group(1) for key in ("SCALES", "ACCUMULATE", "MUL"))
             for name in combine}
    expected = {(str(n), acc, mul) for n in (1, 2, 3) for acc in ("False", "True") for mul in ("False", "True")}
    assert expected <= modes
    gaussian = variants(report, "anomaly_map._gaussian_columns_kernel")
    assert {re.search(r"ONE_FOLD=(\w+)", name).group(1) for name in gaussian} == {"False", "True"}
    # a single fold at the borders needs no remainder; rows of 16-divisible width load as vectors
    assert not any(info["rem"] for name, info in gaussian.items() if "ONE_FOLD=True" in name)
    assert any(info["vector_loads"] for name, info in gaussian.items() if "ONE_FOLD=True" in name)
    # The radius is a runtime argument: 1 is specialised to a constant, any other radius shares one binary.
    assert any("constexpr" in name.rsplit(" ", 1)[1] for name in gaussian)


def test_the_normalisation_pass_reads_channels_last_rows_as_vectors(report):
    """The pass that normalises a last block with InstanceNorm (checkpoints from before FeaCali's last
    block lost it) reads [pixels x channels] tiles with the contiguous channels innermost."""
    apply = variants(report, "feacali._in_lrelu_apply_kernel")
    assert apply and all(info["vector_loads"] for info in apply.values())


def test_the_permutation_shuffle_needs_no_reduction_and_no_64_bit_remainder(report):
    (info,) = variants(report, "simplex._permutation_kernel").values()
    assert not info["cross_lane"] and info["rem"] and not any(kind.endswith("64") for kind in info["rem"])


def test_only_the_noise_kernels_use_fp64(report):
    fp64 = {name.split(" ")[0] for name, info in report["launched"].items() if info["fp64"]}
    assert fp64 == {"simplex._noise_field_kernel", "simplex._patch_noise_kernel"}  # opensimplex's float64
