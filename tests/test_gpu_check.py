"""bench/gpu_check.py runs end to end in its dry run (a CPU, the Triton
interpreter, tiny shapes, nothing timed): every step's code path, so that on a
GPU the script itself is not what fails."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def test_the_dry_run_passes_every_step_and_records_as_it_goes(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--budget", "500"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    steps = {r["step"]: r["outcome"] for r in records if r["kind"] == "step"}
    assert steps == {name: "passed" for name in ("preflight", "smoke", "kernel_tests", "sanitizer", "stress", "tf32",
                                                 "fast", "timings")}
    kinds = {(r["step"], r["kind"]) for r in records}
    for expected in [("preflight", "versions"), ("preflight", "cuda"), ("kernel_tests", "pytest"),
                     ("sanitizer", "sanitizer"), ("stress", "two_streams"), ("tf32", "tf32"), ("fast", "fast"),
                     ("timings", "timing")]:
        assert expected in kinds, expected
    parity = [r for r in records if r["kind"] == "parity"]
    assert len(parity) >= 10 and all(r["passed"] for r in parity)
    assert all(r["all_zero"] for r in records if r["kind"] == "arrival_counters")
    assert not [r for r in records if r["kind"] == "timing" and r["ms"] is not None]  # nothing timed in a dry run
    assert (tmp_path / "kernel_tests.xml").is_file()
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| timings | passed |" in table and "fast, resnet18, batch 2" in table


def test_without_cuda_a_real_run_stops_at_preflight(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--steps", "preflight,smoke"],
                          capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "",
                                                                            "PATH": "/usr/bin:/bin",
                                                                            "HOME": str(tmp_path)})
    assert done.returncode == 1 and "preflight failed" in done.stdout, done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == ["preflight"]
    assert any(r["kind"] == "cuda" and r["available"] is False for r in records)
