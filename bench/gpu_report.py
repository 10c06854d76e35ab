"""One script for a lent GPU: CUDA parity tests, then the benchmark table.

    python bench/gpu_report.py [OUTPUT_DIR]     (default: $OUT, else bench/results)

Writes OUTPUT_DIR/gpu_report.json (machine line, parity summary, every
benchmark with its images/s and ratio to the reference provider) and
OUTPUT_DIR/bench.json (pytest-benchmark's own file), and prints the table
last. Budget: under five minutes on an H200. torch.compile dominates that
time, so the compiled training step is left out (run `pytest bench/` for it).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from conftest import format_table, machine_line, summary_rows  # noqa: E402


def run(args: list[str], timeout: int) -> tuple[int, str]:
    started = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        code = 124
    print(f"pytest {' '.join(args)}: exit {code} in {time.time() - started:.0f} s", flush=True)
    return code, output


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    env_note = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "SACD_DISABLE_TRITON")}
    code, parity_log = run(["tests", "-q", "-k", "cuda", "-p", "no:cacheprovider"], timeout=150)
    parity_tail = parity_log.strip().splitlines()[-1] if parity_log.strip() else ""
    (out / "parity.log").write_text(parity_log)
    bench_json = out / "bench.json"
    # torch.compile of a whole training step (about a minute per case) does not fit the budget: left out here.
    bench_code, bench_log = run(["bench", "-q", "-p", "no:cacheprovider", "-k", "not (test_training_step and compiled)",
                                 f"--benchmark-json={bench_json}"], timeout=420)
    (out / "bench.log").write_text(bench_log)
    rows = []
    if bench_json.exists():
        for b in json.loads(bench_json.read_text())["benchmarks"]:
            info = b.get("extra_info") or {}
            if "case" in info:
                rows.append({"case": info["case"], "provider": info["provider"], "ms": b["stats"]["median"] * 1e3,
                             "items_per_s": info["items_per_s"], "gb_per_s": info.get("gb_per_s"),
                             "of_copy_floor": info.get("of_copy_floor")})
    rows = summary_rows(rows)
    report = {"machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": env_note,
              "parity": {"exit_code": code, "summary": parity_tail},
              "bench": {"exit_code": bench_code, "rows": rows}}
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}")
    print(f"CUDA parity: {parity_tail} (exit {code})")
    print(format_table(rows))
    return 0 if code == 0 and bench_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
