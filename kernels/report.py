"""A static report of every Triton kernel at the model's real shapes, without a GPU.

For the WideResNet-50-2 and EfficientNet-Lite0 feature shapes at 256², batch 1
and 32, it runs the public kernel functions the way a CUDA model calls them,
on ``meta`` tensors (no memory, nothing computed) with every Triton launch
recorded instead of run (:mod:`.recorder`):

* inference (``predict``): the three FeaCali chains (their last block without
  InstanceNorm, as the model's) and the anomaly map, bf16 features in
  channels_last (what ``sacd_fast.fast`` runs);
* training (one step): the synthesis and FeaCali's blocks forward and backward
  on the synthetic-anomaly branch, fp32.

It counts the PyTorch operators that launch a device kernel too (copies,
fills, cuDNN convolutions), by name. Per kernel it gives the launches, the
bytes that the launch's tensors hold (each read or written once: the least
any implementation moves), the FLOPs of
the convolutions, and the H200 floor time, the larger of bytes / 4.0 TB/s and
FLOPs / 754 TFLOP/s (bf16, fp16) or / 377 TFLOP/s (fp32 inputs, TF32 tensor
cores at half the bf16 rate). From the sm_90 compilation of every autotuning
config (:mod:`.sm90`): registers per thread, spill bytes, shared memory, warps,
resident blocks and warps per SM (of 64), whether the PTX copies asynchronously
(``cp.async``: a software-pipelined loop), and how many loops the PTX has (the
FeaCali convolution: its K-loop over 9 taps x C_in, and the statistics'
two combining passes). Finally the host time of each
public call with its launches stubbed, measured on the machine running the
report (the best of six rounds, see :func:`host_milliseconds`): the launchers'
own Python work. Triton's own launch path is stubbed with the kernels, so its
argument binding and the driver's launch call (microseconds per launch on a
GPU machine) are not in it: a lower bound of what a batch-1 GPU inference
waits on, not the whole.
Where a call runs PyTorch operators too (the training step's cuDNN
convolutions), their meta-tensor implementations (Python shape functions,
slower than the CUDA dispatch) are in that time: an upper bound.
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from contextlib import contextmanager
from unittest import mock

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

from sacd_fast import kernels
from sacd_fast.backbones import BACKBONES

from .recorder import Launch, recording
from .sm90 import compile_variants, variant_name

SIZE = 256
# (channels, side) of the teacher features the report covers: the paper's teacher and the narrow,
# unaligned widths of the default offline one
SCALES = {name: BACKBONES[name].feature_shapes(SIZE) for name in ("wide_resnet50_2", "efficientnet_lite0")}
BATCHES = (1, 32)
H200 = {"copy_bytes_per_s": 4.0e12, "flops_per_s": {"16-bit": 754e12, "fp32": 377e12}}


def _meta(*shape, dtype=torch.bfloat16, channels_last=True, grad=False) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    t = t.to(memory_format=torch.channels_last) if channels_last else t
    return t.requires_grad_(grad)


def _feacali_weights(c: int, dtype, grad: bool = False) -> tuple[list, list]:
    widths = [c, c // 2, c // 4, c // 2, c]
    weights = [_meta(b, a, 3, 3, dtype=dtype, channels_last=False, grad=grad) for a, b in zip(widths, widths[1:])]
    return weights, [_meta(b, dtype=dtype, channels_last=False, grad=grad) for b in widths[1:]]


def public_calls(path: str, backbone: str, batch: int) -> list[tuple[str, object]]:
    """``[(name, call)]``: the public kernel calls of one inference or training step."""
    scales = SCALES[backbone]
    calls = []
    if path == "inference":
        teacher = [_meta(batch, c, s, s) for c, s in scales]
        student = [_meta(batch, c, s, s) for c, s in scales]
        for (c, s), x in zip(scales, student):
            weights, biases = _feacali_weights(c, torch.bfloat16)
            calls.append((f"conv_in_lrelu_stack {c}x{s}²", lambda x=x, w=weights, b=biases:
                          kernels.conv_in_lrelu_stack(x, w, b, norm_last=False)))  # as the model's FeaCali
        calls.append(("cosine_anomaly_map", lambda: kernels.cosine_anomaly_map(teacher, student, (SIZE, SIZE))))
        return calls
    images = _meta(batch, 3, SIZE, SIZE, dtype=torch.float32, channels_last=False)
    seeds = torch.empty(batch, dtype=torch.int64, device="meta")
    calls.append(("synthesize_patches", lambda: kernels.synthesize_patches(images, seeds, 0.2, (10, 32), (10, 32))))
    for c, s in scales:
        weights, biases = _feacali_weights(c, torch.float32, grad=True)
        x = _meta(batch, c, s, s, dtype=torch.float32, channels_last=True)
        grad = _meta(batch, c, s, s, dtype=torch.float32, channels_last=True)

        def step(x=x, parameters=weights + biases, grad=grad):
            for p in parameters:
                p.grad = None  # as the optimiser's zero_grad(set_to_none=True) leaves them
            kernels.conv_in_lrelu_stack(x, parameters[:4], parameters[4:], norm_last=False).backward(grad)
        calls.append((f"conv_in_lrelu_stack forward + backward {c}x{s}²", step))
    return calls


@contextmanager
def _stubbed():
    """Public calls take the Triton path on meta tensors, and every launch is recorded."""
    with mock.patch.object(kernels, "use_triton", lambda *tensors, has_op=False: True), recording() as launches:
        yield launches


def _unique_tensors(launch: Launch) -> list[torch.Tensor]:
    seen, tensors = set(), []
    for value in list(launch.args) + list(launch.kwargs.values()):
        if isinstance(value, torch.Tensor) and id(value) not in seen:
            seen.add(id(value))
            tensors.append(value)
    return tensors


def launch_bytes(launch: Launch) -> int:
    """Bytes held by the launch's distinct tensors: what it must read or write
    at least once. The synthesis' noise kernel touches only the patches: its
    images count as the largest patch, read and written, per image and channel."""
    if launch.name == "simplex._patch_noise_kernel":
        values = dict(zip(launch.kernel.arg_names, launch.args))
        x = values["x_ptr"]
        return 2 * x.shape[0] * x.shape[1] * (values["hi_h"] - 1) * (values["hi_w"] - 1) * x.element_size()
    return sum(t.numel() * t.element_size() for t in _unique_tensors(launch))


def launch_flops(launch: Launch) -> int:
    """Multiply-adds x 2 of a convolution launch (0 for the bandwidth-bound kernels)."""
    if launch.name != "feacali._conv3x3_stats_kernel":
        return 0
    values = dict(zip(launch.kernel.arg_names, launch.args))
    return 2 * 9 * values["N"] * values["H"] * values["W"] * values["C_in"] * values["C_out"]


def floor_seconds(launch: Launch) -> float:
    flops = launch_flops(launch)
    sixteen = any(t.dtype in (torch.float16, torch.bfloat16) for t in _unique_tensors(launch))
    rate = H200["flops_per_s"]["16-bit" if sixteen else "fp32"]
    return max(launch_bytes(launch) / H200["copy_bytes_per_s"], flops / rate)


def host_seconds(call, repeats: int = 5, number: int = 20) -> float:
    """Seconds per call with the launches stubbed: the best of ``repeats`` means over ``number`` calls."""
    with _stubbed():
        call()  # first-call work (imports, caches) is not the steady state
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                call()
            best = min(best, (time.perf_counter() - start) / number)
    return best


def host_milliseconds(cases, rounds: int = 6) -> dict[tuple, dict[str, float]]:
    """``{case: {public call: ms}}``, each the best of ``rounds`` rounds that measure every case in turn: a
    shared machine's busy spells, which last seconds, fall on some rounds of every case, not on all of one."""
    best: dict[tuple, dict[str, float]] = {case: {} for case in cases}
    for _ in range(rounds):
        for case in cases:
            for name, call in public_calls(*case):
                best[case][name] = min(best[case].get(name, float("inf")), host_seconds(call) * 1e3)
    return {case: {name: round(ms, 4) for name, ms in calls.items()} for case, calls in best.items()}


class _TorchKernels(TorchDispatchMode):
    """Counts the PyTorch operators that launch a device kernel (not views or allocations)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or name.startswith(("empty", "new_empty"))):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def record(path: str, backbone: str, batch: int) -> tuple[list[Launch], dict[str, int]]:
    """The Triton launches and the PyTorch kernels (by operator) of one inference
    or training step, in the steady state (after a first call has filled the caches)."""
    calls = public_calls(path, backbone, batch)
    with _stubbed() as launches:
        for _, call in calls:
            call()
        launches.clear()
        with _TorchKernels() as torch_kernels:
            for _, call in calls:
                call()
    return list(launches), dict(torch_kernels.ops)


def _span(values) -> str | int:
    low, high = min(values), max(values)
    return low if low == high else f"{low}-{high}"


def kernel_rows(launches: list[Launch], compiled: dict[str, dict] | None) -> list[dict]:
    """One row per kernel: launches, bytes, FLOPs, floor, and the compile figures over its configs."""
    rows: dict[str, dict] = {}
    for launch in launches:
        row = rows.setdefault(launch.name, {"kernel": launch.name, "launches": 0, "bytes": 0, "flops": 0,
                                            "floor_us": 0.0, "variants": []})
        row["launches"] += 1
        row["bytes"] += launch_bytes(launch)
        row["flops"] += launch_flops(launch)
        row["floor_us"] += floor_seconds(launch) * 1e6
        if compiled is not None:
            row["variants"] += [compiled[variant_name(launch, config)] for config in launch.configs()]
    for row in rows.values():
        variants = row.pop("variants")
        if variants:
            row.update(registers=_span([v["registers"] for v in variants]),
                       spill_bytes=max(v["spill_bytes"] for v in variants),
                       shared_kb=_span([round(v["shared"] / 1024, 1) for v in variants]),
                       num_warps=_span([v["num_warps"] for v in variants]),
                       blocks_per_sm=_span([v["blocks_per_sm"] for v in variants]),
                       warps_per_sm=_span([v["blocks_per_sm"] * v["num_warps"] for v in variants]),
                       async_copy=any("cp.async" in v["ptx"] for v in variants),
                       loops=_span([v["loops"] for v in variants]), configs=len(variants))
        row["floor_us"] = round(row["floor_us"], 2)
    return list(rows.values())


def machine() -> str:
    """The CPU that measured the host times (its model name where Linux gives it), torch and triton."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores; torch {torch.__version__}; triton {triton.__version__}"


def build(compile: bool = True, batches=BATCHES, backbones=tuple(SCALES)) -> dict:
    """The report as a dict (what ``bench/kernel_report.py`` writes as JSON)."""
    cases = [(path, backbone, batch) for backbone in backbones for batch in batches
             for path in ("inference", "training")]
    recorded = {case: record(*case) for case in cases}
    compiled = None
    if compile:
        compiled = compile_variants([launch for launches, _ in recorded.values() for launch in launches])
    report = {"machine": machine(),
              "target": {"gpu": "H200 (sm_90, 132 SMs)", **H200}, "cases": []}
    hosts = host_milliseconds(cases)
    for (path, backbone, batch), (launches, torch_kernels) in recorded.items():
        host = hosts[path, backbone, batch]
        report["cases"].append({
            "path": path, "backbone": backbone, "batch": batch, "launches": len(launches),
            "torch_kernels": torch_kernels, "all_launches": len(launches) + sum(torch_kernels.values()),
            "floor_us": round(sum(floor_seconds(launch) for launch in launches) * 1e6, 2),
            "host_ms": {**host, "total": round(sum(host.values()), 4)},
            "kernels": kernel_rows(launches, compiled)})
    return report


COLUMNS = (("kernel", "kernel"), ("launches", "launches"), ("bytes", "MB"), ("flops", "GFLOP"),
           ("floor_us", "H200 floor µs"), ("registers", "registers"), ("spill_bytes", "spills (B)"),
           ("shared_kb", "shared KB"), ("num_warps", "warps"), ("blocks_per_sm", "blocks/SM"),
           ("warps_per_sm", "warps/SM"), ("async_copy", "cp.async"), ("loops", "PTX loops"))


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "bytes":
        return f"{value / 1e6:.2f}"
    if key == "flops":
        return f"{value / 1e9:.1f}" if value else ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def markdown(report: dict) -> str:
    lines = [f"Kernel report: {report['target']['gpu']} floors (4.0 TB/s copy, 754 bf16 / 377 TF32 TFLOP/s); "
             f"host times on {report['machine']}.", ""]
    for case in report["cases"]:
        torch_kernels = ", ".join(f"{n} {op}" for op, n in sorted(case["torch_kernels"].items())) or "none"
        host = f"host {case['host_ms']['total']:.3f} ms (launchers only: Triton's launch path stubbed)"
        if case["torch_kernels"]:
            host += " (an upper bound: PyTorch's own operators run their Python shape functions on meta tensors)"
        lines += [f"### {case['backbone']}, batch {case['batch']}, {case['path']}: {case['all_launches']} launches "
                  f"({case['launches']} Triton; PyTorch: {torch_kernels}), floor {case['floor_us']:.1f} µs, {host}", ""]
        lines += ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        for row in case["kernels"]:
            lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
        lines += ["", "| public call | host ms |", "| --- | --- |"]
        lines += [f"| {name} | {ms:.4f} |" for name, ms in case["host_ms"].items()]
        lines.append("")
    return "\n".join(lines)
