"""The bench's machine line and summary table, shared by ``pytest bench/``
(conftest.py)."""

import platform

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"


def machine_line() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    cpu = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if ON_GPU else cpu
    return f"{device}; torch {torch.__version__}; triton {triton_version}"


def summary_rows(results: list[dict]) -> list[dict]:
    """Each result with its speed-up over the ``reference`` provider of the same case."""
    reference = {r["case"]: r["items_per_s"] for r in results if r["provider"] == "reference"}
    return [{**r, "vs_reference": r["items_per_s"] / reference[r["case"]] if r["case"] in reference else None}
            for r in results]


NOISY = 0.10  # an interquartile range above 10% of the median marks a row as noisy


def format_table(rows: list[dict]) -> str:
    lines = [f"{'case':<76} {'provider':<12} {'ms':>10} {'spread':>7} {'items/s':>11} {'GB/s':>8} {'of copy':>8} "
             f"{'x ref':>7}"]
    for r in rows:
        gbs = f"{r['gb_per_s']:.1f}" if r["gb_per_s"] else "-"
        floor = f"{r['of_copy_floor']:.0%}" if r.get("of_copy_floor") else "-"
        ratio = f"{r['vs_reference']:.2f}" if r["vs_reference"] else "-"
        spread = r.get("spread")
        spread = "-" if spread is None else f"{spread:.0%}" + ("*" if spread > NOISY else " ")
        lines.append(f"{r['case']:<76} {r['provider']:<12} {r['ms']:>10.3f} {spread:>7} {r['items_per_s']:>11.1f} "
                     f"{gbs:>8} {floor:>8} {ratio:>7}")
    if any((r.get("spread") or 0) > NOISY for r in rows):
        lines.append(f"* noisy: the interquartile range of the timings exceeds {NOISY:.0%} of the median")
    return "\n".join(lines)
