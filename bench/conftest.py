"""Shared pieces of the pytest-benchmark suites (`pytest bench/`).

Each suite times the providers on the same inputs in one run:
``reference`` (eager PyTorch), ``compiled`` (torch.compile of the reference)
and ``fast`` (this library's Triton kernels, on CUDA only). On a CPU the
sizes are small so that the whole run takes minutes.
"""

import platform

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"


def machine_line() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    device = torch.cuda.get_device_name() if ON_GPU else f"CPU {platform.processor() or platform.machine()}, " \
                                                          f"{torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}; triton {triton_version}"


def pytest_report_header(config):
    return f"sacd_fast bench on {machine_line()}"


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


@pytest.fixture
def timed(benchmark):
    """``timed(fn, items=..., bytes=...)``: benchmark ``fn`` (CUDA-synchronised)
    and record items/s and GB/s in the JSON's extra_info."""

    def run(fn, items: int, bytes: int = 0, rounds: int = 10):
        fn()
        sync()

        def call():
            fn()
            sync()

        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=2)
        seconds = benchmark.stats.stats.median
        benchmark.extra_info.update(machine=machine_line(), items_per_s=items / seconds,
                                    gb_per_s=bytes / seconds / 1e9 if bytes else None)

    return run
