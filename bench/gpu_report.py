"""One script for a GPU machine with a time limit: CUDA parity tests, then the benchmark table.

    python bench/gpu_report.py [OUTPUT_DIR] [--budget SECONDS] [--steps a,b,...]

OUTPUT_DIR defaults to $OUT, else bench/results. The steps run one after the
other, most important first, each as its own pytest with its own time limit,
within the whole budget (default 290 s, so that the run ends inside five minutes):

    parity       the CUDA tests (kernels at the model's shapes, the fast model)
    model        whole-model inference, reference vs fast (batch 1 and 32)
    anomaly_map  the anomaly-map kernel, all providers
    feacali      the FeaCali stack, all providers, forward and backward
    synthesis    simplex noise, and a training step with and without synthesis

torch.compile of the whole model and of a whole training step takes about a
minute per case: the report leaves those two ``compiled`` providers out
(``pytest bench/`` runs them). Every benchmark
row is saved as it is measured, and OUTPUT_DIR/gpu_report.json is rewritten
after each step, so a run cut short keeps what it measured. Beside it:
steps.log (every step's pytest output) and bench_<step>.json
(pytest-benchmark's own files), six files at most. A step that did not fit says so; rerun it with
``--steps``. The table is printed last.

The package must be installed (the kernels in ``kernels/`` install as
``sacd_fast.kernels``); offline, ``pip install --no-deps --no-build-isolation
-e .`` does it. The ``opensimplex`` provider of the noise benchmark needs the
``opensimplex`` package.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table import format_table, machine_line, summary_rows

ROOT = Path(__file__).resolve().parent.parent

STEPS = {  # name: (pytest arguments, most seconds it may take)
    "parity": (["tests", "-k", "cuda"], 150),
    "model": (["bench/test_bench_model.py", "-k", "not compiled"], 120),
    "anomaly_map": (["bench/test_bench_anomaly_map.py"], 60),
    "feacali": (["bench/test_bench_feacali.py"], 90),
    "synthesis": (["bench/test_bench_synthesis.py", "-k", "not (test_training_step and compiled)"], 60),
}
MIN_STEP_S = 20


def run_step(args: list[str], timeout: float, env: dict, log: Path) -> tuple[int, str]:
    """Run one pytest, its output appended to ``log``: exit code (124 on timeout) and the outcome line."""
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        code = 124
    with log.open("a") as f:
        f.write(f"===== pytest {' '.join(args)}: exit {code}\n{output}\n")
    outcomes = [line for line in output.splitlines()
                if any(word in line for word in ("passed", "failed", "error", "skipped"))]
    return code, (outcomes[-1].strip("= ") if outcomes else "no outcome line (see the log)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    parser.add_argument("--budget", type=float, default=290.0, help="seconds for all the steps together")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    args = parser.parse_args()
    try:
        import sacd_fast.kernels  # noqa: F401
    except ImportError as e:
        parser.error(f"sacd_fast is not installed ({e}): run pip install --no-deps --no-build-isolation -e . first")
    steps = args.steps.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = Path(tempfile.mkdtemp()) / "rows.jsonl"  # outside OUT: keeps OUT to the few files a report needs
    (out / "steps.log").unlink(missing_ok=True)
    env = {**os.environ, "SACD_BENCH_ROWS": str(rows_file)}
    report = {"machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "environment": {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "SACD_DISABLE_TRITON")},
              "steps": {}, "rows": []}
    deadline = time.monotonic() + args.budget
    for name in steps:
        pytest_args, limit = STEPS[name]
        left = deadline - time.monotonic()
        if left < MIN_STEP_S:
            report["steps"][name] = {"exit_code": None, "summary": "not run: out of time (rerun with --steps)"}
        else:
            if name != "parity":
                pytest_args = [*pytest_args, f"--benchmark-json={out / f'bench_{name}.json'}"]
            started = time.monotonic()
            code, summary = run_step(pytest_args, min(limit, left), env, out / "steps.log")
            report["steps"][name] = {"exit_code": code, "summary": summary,
                                     "seconds": round(time.monotonic() - started, 1)}
            print(f"{name}: exit {code} in {report['steps'][name]['seconds']:.0f} s: {summary}", flush=True)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        report["rows"] = summary_rows(rows)
        (out / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}")
    print(format_table(report["rows"]))
    return 0 if all(step["exit_code"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
