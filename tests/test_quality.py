"""Smoke test of the quality benchmark (bench/quality.py) on a generated product:
both methods run, their metrics are in range, the table and JSON are written,
SACD's training gets the baseline's time as its budget when asked to, and the
seed given is the one SACD trains with."""

import json
import subprocess
import sys
from pathlib import Path

from sacd_fast.data.synthdata import write_dataset
from sacd_fast.checkpoint import load_checkpoint

QUALITY = Path(__file__).resolve().parent.parent / "bench" / "quality.py"


def test_quality_benchmark_runs_sacd_and_the_knn_baseline(tmp_path):
    write_dataset(tmp_path / "data", "disc", seed=5, n_train=12, n_test_good=4, n_per_defect=1, progress=False)
    done = subprocess.run([sys.executable, str(QUALITY), str(tmp_path / "data"), "--categories", "disc",
                           "--image-size", "64", "--epochs", "2", "--batch-size", "4", "--time-budget", "knn",
                           "--seed", "3", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "q.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "q.json").read_text())
    methods = {row["method"]: row for row in result["rows"]}
    assert set(methods) == {"sacd", "knn"} and 1 <= methods["sacd"]["epochs"] <= 2
    assert methods["sacd"]["time_budget"] == methods["knn"]["seconds"] > 0
    for row in methods.values():
        for key in ("image_auroc", "pixel_auroc", "pro"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
        assert row["seconds"] > 0
    assert load_checkpoint(tmp_path / "work" / "disc" / "model.pt")["settings"]["seed"] == 3
    assert "image AUROC" in done.stdout and "knn" in done.stdout and result["machine"]
