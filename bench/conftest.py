"""Shared pieces of the pytest-benchmark suites (`pytest bench/`).

Each suite times the providers on the same inputs in one run:
``reference`` (eager PyTorch), ``compiled`` (torch.compile of the reference)
and ``fast`` (this library's Triton kernels, on CUDA only). On a CPU the
sizes are small so that the whole run takes minutes.
"""

import json
import os
import time

import pytest
import torch
from table import DEVICE, ON_GPU, format_table, machine_line, summary_rows


def pytest_report_header(config):
    return f"sacd_fast bench on {machine_line()}"


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


RESULTS: list[dict] = []  # one row per timed benchmark, for the summary table


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """The device's copy bandwidth in GB/s (read + write of a 1 GiB clone on a
    GPU, 256 MiB on a CPU): the floor that memory-bound kernels are held to."""
    x = torch.empty(2**28 if ON_GPU else 2**26, dtype=torch.float32, device=DEVICE)
    x.clone()
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.clone()
        sync()
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * 4 / sorted(times)[2] / 1e9


@pytest.fixture(autouse=True)
def _reference_providers_use_no_kernels(request, monkeypatch):
    """``reference`` and ``compiled`` stand for what users of plain PyTorch run:
    on CUDA the model's dispatcher must not reach this library's kernels there."""
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("provider") in ("reference", "compiled"):
        monkeypatch.setenv("SACD_DISABLE_TRITON", "1")


@pytest.fixture
def timed(benchmark, request):
    """``timed(fn, items=..., bytes=...)``: benchmark ``fn`` (CUDA-synchronised)
    and record items/s and GB/s in the JSON's extra_info and the summary table."""
    params = dict(getattr(request.node, "callspec", None).params) if hasattr(request.node, "callspec") else {}
    provider = params.pop("provider", "-")
    case = request.node.originalname + "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"

    def run(fn, items: int, bytes: int = 0, rounds: int = 10, floor_gb_per_s: float | None = None):
        fn()
        sync()

        def call():
            fn()
            sync()

        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=2)
        stats = benchmark.stats.stats
        seconds = stats.median
        spread = (stats.q3 - stats.q1) / seconds  # interquartile range, relative to the median
        gb_per_s = bytes / seconds / 1e9 if bytes else None
        of_floor = gb_per_s / floor_gb_per_s if gb_per_s and floor_gb_per_s else None
        benchmark.extra_info.update(machine=machine_line(), items_per_s=items / seconds, gb_per_s=gb_per_s,
                                    copy_gb_per_s=floor_gb_per_s, of_copy_floor=of_floor, case=case,
                                    provider=provider)
        row = {"case": case, "provider": provider, "ms": seconds * 1e3, "items_per_s": items / seconds,
               "gb_per_s": gb_per_s, "of_copy_floor": of_floor, "spread": spread}
        RESULTS.append(row)
        if os.environ.get("SACD_BENCH_ROWS"):  # appended as measured: survives a run cut short
            with open(os.environ["SACD_BENCH_ROWS"], "a") as f:
                f.write(json.dumps(row) + "\n")

    return run


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    # One table: ours (ratios to the reference provider, spread marks) replaces
    # pytest-benchmark's own; --benchmark-json still writes its full statistics.
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    if session is not None:
        session.display = lambda reporter: None
    if RESULTS:
        terminalreporter.write_sep("=", f"sacd_fast providers on {machine_line()}")
        terminalreporter.write_line(format_table(summary_rows(RESULTS)))
