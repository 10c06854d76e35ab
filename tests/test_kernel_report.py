"""The static kernel report (sacd_fast.kernels.report): every launch of one
inference and one training step counted, with bytes, FLOPs and floors that
match figures worked out here from the shapes alone. Its sm_90 columns come
from sacd_fast.kernels.sm90, which tests/test_kernel_sm90.py runs."""

import pytest

pytest.importorskip("triton")
from sacd_fast.kernels import report  # noqa: E402
from sacd_fast.kernels.sm90 import blocks_per_sm  # noqa: E402

LITE0 = [(24, 64), (40, 32), (112, 16)]


@pytest.fixture(scope="module")
def lite0():
    data = report.build(compile=False, batches=(1, 32), backbones=("efficientnet_lite0",))
    return {(case["path"], case["batch"]): case for case in data["cases"]}


def rows(case):
    return {row["kernel"]: row for row in case["kernels"]}


@pytest.mark.parametrize("batch", [1, 32])
def test_inference_launches_bytes_and_flops(lite0, batch):
    case = lite0[("inference", batch)]
    kernels = rows(case)
    # 3 chains x 4 convolutions (the last one's bias and LeakyReLU in its epilogue) + 3 cosine + 1 upsample + 2 blur,
    # and one zeroing per chain of its arrival counters (a chain's own: no two chains share them); nothing
    # else: the packed weights are kept between calls
    assert case["launches"] == 18 and case["torch_kernels"] == {"zeros": 3} and case["all_launches"] == 21
    assert kernels["feacali._conv3x3_stats_kernel"]["launches"] == 12
    flops = sum(2 * 9 * batch * s * s * a * b for c, s in LITE0
                for a, b in zip([c, c // 2, c // 4, c // 2], [c // 2, c // 4, c // 2, c]))
    assert kernels["feacali._conv3x3_stats_kernel"]["flops"] == flops
    # cosine distance: teacher and student bf16 features in, one fp32 distance per feature pixel out
    cosine = sum(batch * s * s * (2 * c * 2 + 4) for c, s in LITE0)
    assert kernels["anomaly_map._cosine_distance_kernel"]["bytes"] == cosine
    assert kernels["anomaly_map._cosine_distance_kernel"]["floor_us"] == pytest.approx(cosine / 4.0e12 * 1e6, abs=0.01)
    assert case["floor_us"] == pytest.approx(sum(row["floor_us"] for row in case["kernels"]), abs=0.05)
    assert set(case["host_ms"]) == {"conv_in_lrelu_stack 24x64²", "conv_in_lrelu_stack 40x32²",
                                    "conv_in_lrelu_stack 112x16²", "cosine_anomaly_map", "total"}
    assert all(ms > 0 for ms in case["host_ms"].values())


def test_training_launches(lite0):
    case = lite0[("training", 32)]
    kernels = rows(case)
    assert {name: row["launches"] for name, row in kernels.items()} == {
        "simplex._permutation_kernel": 1, "simplex._copy_mask_kernel": 1, "simplex._patch_noise_kernel": 1,
        "feacali._in_lrelu_forward_kernel": 9, "feacali._in_lrelu_backward_kernel": 9}
    assert case["torch_kernels"]["convolution"] == case["torch_kernels"]["convolution_backward"] == 12  # cuDNN
    # the copy reads and writes 32 fp32 images of 3 x 256² and writes their fp32 masks; the noise reads and
    # writes at most a 31 x 31 patch per image and channel
    assert kernels["simplex._copy_mask_kernel"]["bytes"] >= 32 * 256 * 256 * (2 * 3 * 4 + 4)
    assert kernels["simplex._patch_noise_kernel"]["bytes"] == 32 * 3 * 31 * 31 * 2 * 4


def test_markdown_has_a_row_per_kernel(lite0):
    text = report.markdown({"machine": "m", "target": {"gpu": "H200"}, "cases": list(lite0.values())})
    for case in lite0.values():
        for row in case["kernels"]:
            assert f"| {row['kernel']} | {row['launches']} |" in text


@pytest.mark.parametrize("registers, shared, warps, blocks", [
    (32, 0, 4, 16),          # threads: 2,048 / 128
    (255, 0, 4, 2),          # 8,192 registers a warp (255 x 32, in units of 256) x 4 warps: 2 blocks
    (128, 0, 4, 4),
    (64, 100 * 1024, 4, 2),  # shared memory: 228 KB / (100 + 1) KB
    (32, 0, 1, 32),          # at most 32 blocks an SM
])
def test_blocks_per_sm(registers, shared, warps, blocks):
    assert blocks_per_sm(registers, shared, warps) == blocks


def test_ptx_loops_counts_branches_back_to_a_label():
    from sacd_fast.kernels.sm90 import ptx_loops

    ptx = "\n".join(["$L__BB0_1:", "add.s32 %r1, %r1, 1;", "@%p1 bra $L__BB0_1;", "bra.uni $L__BB0_3;",
                     "$L__BB0_3:", "$L__BB0_4:", "@%p2 bra $L__BB0_4;", "ret;"])
    assert ptx_loops(ptx) == 2
    assert ptx_loops(ptx.replace("@%p1 bra $L__BB0_1;", "")) == 1  # the forward branch is no loop
