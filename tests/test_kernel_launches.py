"""Launch geometry: every launch the kernel launchers make fits CUDA's grid
limits (axis 0 below 2**31, axes 1 and 2 at most 65,535 programs) for
batches of 1 to 4,096 at the WideResNet-50-2 and Lite0 shapes (256²), on the
inference and training paths. The launchers run on meta tensors (no memory)
with every kernel recorded instead of launched (sacd_fast.kernels.recorder),
and every autotuning config's grid is checked."""

import pytest
import torch

pytest.importorskip("triton")
from sacd_fast.kernels.anomaly_map import triton as anomaly_map  # noqa: E402
from sacd_fast.kernels.feacali import triton as feacali  # noqa: E402
from sacd_fast.kernels.launch import MAX_GRID  # noqa: E402
from sacd_fast.kernels.recorder import recording  # noqa: E402
from sacd_fast.kernels.report import SCALES, SIZE  # noqa: E402  (feature shapes per backbone at 256²)
from sacd_fast.kernels.simplex import triton as simplex  # noqa: E402

CUDA_LIMITS = (2**31 - 1, 65535, 65535)


def meta(*shape, dtype=torch.bfloat16, channels_last=True, grad=False):
    t = torch.empty(shape, dtype=dtype, device="meta")
    t = t.to(memory_format=torch.channels_last) if channels_last else t
    return t.requires_grad_(grad)


def feacali_widths(c):
    widths = [c, c // 2, c // 4, c // 2, c]
    return list(zip(widths, widths[1:]))


def inference_launches(batch, scales):
    teacher = [meta(batch, c, s, s) for c, s in scales]
    anomaly_map.cosine_anomaly_map_triton(teacher, teacher, (SIZE, SIZE), 4.0, "add")
    for c, s in scales:
        feacali.conv_in_lrelu_stack_triton(meta(batch, c, s, s), [meta(b, a, 3, 3) for a, b in feacali_widths(c)])


def training_launches(batch, scales):
    for c, s in scales:
        for a, b in feacali_widths(c):
            x = meta(batch, a, s, s, dtype=torch.float32, grad=True)
            weight = meta(b, a, 3, 3, dtype=torch.float32, channels_last=False, grad=True)
            feacali.conv_in_lrelu_train(x, weight).sum().backward()
    seeds = torch.empty(batch, dtype=torch.int64, device="meta")
    simplex.synthesize_triton(meta(batch, 3, SIZE, SIZE, dtype=torch.float32, channels_last=False), seeds, 0.2,
                              (10, 32), (10, 32))
    simplex.simplex_noise3d_triton((batch, 3, 31, 31), seeds)


@pytest.mark.parametrize("batch", [1, 64, 512, 4096])
@pytest.mark.parametrize("backbone", list(SCALES))
@pytest.mark.parametrize("path", ["inference", "training"])
def test_every_launch_fits_the_cuda_grid_limits(path, backbone, batch):
    with recording() as launches:
        (inference_launches if path == "inference" else training_launches)(batch, SCALES[backbone])
    expected = {"inference": {"anomaly_map._cosine_distance_kernel", "anomaly_map._upsample_combine_kernel",
                              "anomaly_map._gaussian_columns_kernel", "feacali._conv3x3_stats_kernel",
                              "feacali._in_lrelu_apply_kernel"},
                "training": {"feacali._in_lrelu_forward_kernel", "feacali._in_lrelu_backward_kernel",
                             "simplex._permutation_kernel", "simplex._copy_mask_kernel", "simplex._patch_noise_kernel",
                             "simplex._noise_field_kernel"}}[path]
    assert {launch.name for launch in launches} == expected
    for launch in launches:
        for grid in launch.grids():
            assert all(1 <= size <= limit for size, limit in zip(grid, CUDA_LIMITS)), (launch.name, grid)


def test_the_launchers_refuse_a_grid_beyond_the_limits():
    from sacd_fast.kernels.launch import check_grid

    assert MAX_GRID == CUDA_LIMITS
    assert check_grid((2**31 - 1, 65535, 65535)) == (2**31 - 1, 65535, 65535)
    with pytest.raises(ValueError, match="axis 1 has 65536 programs"):
        check_grid((1, 65536))
    with recording(), pytest.raises(ValueError, match="has 70000 programs, CUDA allows"):
        inference_launches(70000, SCALES["efficientnet_lite0"])  # a clear error, not a failed launch


@pytest.mark.parametrize("batch, bucket", [(1, 1), (3, 4), (32, 32), (100, 32)])
def test_the_convolution_tunes_per_batch_bucket(batch, bucket):
    """The batch sizes the grid, so it is in the autotuner's key, bucketed: a smaller last batch re-tunes
    only when it falls into another bucket."""
    assert "n_bucket" in feacali._conv3x3_stats_kernel.keys
    with recording() as launches:
        feacali.conv_in_lrelu_stack_triton(meta(batch, 64, 16, 16), [meta(b, a, 3, 3) for a, b in feacali_widths(64)])
    buckets = [dict(zip(launch.kernel.arg_names, launch.args))["n_bucket"] for launch in launches
               if launch.name == "feacali._conv3x3_stats_kernel"]
    assert len(buckets) == 4 and set(buckets) == {bucket}


def test_one_binary_serves_every_batch_size():
    """The batch size is not specialised (``do_not_specialize``): batch 1, an odd batch and the
    16-divisible ones compile to the same binaries, so no batch class recompiles the convolution.
    The variants are named as the JIT specialises their arguments (types, 16-divisibility)."""
    from sacd_fast.kernels.sm90 import variant_name

    names = {}
    for batch in (1, 3, 16, 32):
        with recording() as launches:
            for c, s in SCALES["wide_resnet50_2"]:
                weights = [torch.empty(b, a, 3, 3) for a, b in feacali_widths(c)]
                feacali.conv_in_lrelu_stack_triton(torch.empty(batch, c, s, s, dtype=torch.bfloat16).to(
                    memory_format=torch.channels_last), weights, last_bias=torch.empty(c), norm_last=False)
        names[batch] = {variant_name(launch, config) for launch in launches for config in launch.configs()}
    assert names[1] == names[3] == names[16] == names[32]
    assert all(",i32," in name for name in names[1])  # N: a plain i32, neither the constant 1 nor /16
