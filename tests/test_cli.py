"""The sacd-fast command line, end to end on generated data."""

import csv
import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from sacd_fast.cli import main
from sacd_fast.data.synthdata import DEFECTS, write_dataset


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "disc", seed=1, n_train=12, n_test_good=3, n_per_defect=1, progress=False)
    return root


def test_synth_data_layout(small_data):
    folder = small_data / "disc"
    assert len(list((folder / "train" / "good").glob("*.png"))) == 12
    for defect in DEFECTS:
        (image,) = (folder / "test" / defect).glob("*.png")
        mask = Image.open(folder / "ground_truth" / defect / f"{image.stem}_mask.png")
        assert mask.size == Image.open(image).size and mask.getextrema() == (0, 255)


def test_train_eval_predict(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", str(small_data), "--category", "disc", "--device", "cpu", "--batch-size", "4"]
    assert main(["train", *common, "--out", str(out), "--backbone", "efficientnet_lite0",
                 "--epochs", "2", "--image-size", "64", "--false-alarm-rate", "0.05"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    thresholds = torch.load(out / "model.pt", weights_only=True)["thresholds"]
    assert thresholds["false_alarm_rate"] == 0.05 and thresholds["method"] == "log-normal tail"
    assert thresholds["interval"][0] <= thresholds["image"] <= thresholds["interval"][1]

    assert main(["eval", *common, "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "eval"),
                 "--report"]) == 0
    printed = capsys.readouterr().out
    assert "false alarms" in printed and "image AUROC per defect" in printed
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pro", "f1_max"):
        assert 0.0 <= report[key] <= 1.0, key
    at = report["at_threshold"]
    assert at["true_positives"] + at["false_negatives"] == len(DEFECTS)
    assert at["false_positives"] + at["true_negatives"] == 3
    assert set(report["image_auroc_per_defect"]) == set(DEFECTS)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "scores.csv")))
    assert len(rows) == 3 + len(DEFECTS) and {r["defect"] for r in rows} == {"good", *DEFECTS}
    assert all(0 <= float(r["normalized_score"]) <= 1 and r["anomalous"] in "01" for r in rows)
    assert all((float(r["normalized_score"]) > 0.5) == (r["anomalous"] == "1") for r in rows)
    heatmaps = sorted((tmp_path / "eval" / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == len(rows) and (tmp_path / "eval" / "heatmaps" / "crack" / "000.png.png").is_file()
    width, height = Image.open(heatmaps[0]).size
    assert height > 256 and width > 3 * 256  # the images' own 256x256, a caption and a colour bar
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("<figure>") == len(rows) and page.count("<svg") == 2 and "data:image/jpeg;base64" in page
    assert page.count('<a href="heatmaps/') == len(rows)  # each thumbnail links to its full-size heatmap
    assert all(len(points.split()) <= 400 for points in re.findall(r'points="([^"]*)"', page))  # charts, not data
    assert all(len(image) < 60_000 for image in re.findall(r"base64,([A-Za-z0-9+/=]+)", page))  # thumbnails

    images = small_data / "disc" / "test" / "scratch"
    single = small_data / "disc" / "test" / "good" / "000.png"
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "pred"),
                 "--device", "cpu", str(images), str(single)]) == 0
    scores = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert len(scores["images"]) == 2 and all(r["score"] > 0 for r in scores["images"])
    names = sorted(str(p.relative_to(tmp_path / "pred" / "heatmaps"))
                   for p in (tmp_path / "pred" / "heatmaps").rglob("*.png"))
    assert names == ["good/000.png.png", "scratch/000.png.png"]  # two files called 000.png: both kept, apart
    assert sorted(r["heatmap"] for r in scores["images"]) == [f"heatmaps/{n}" for n in names]
    predicted = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    assert list(predicted[0]) == list(rows[0])  # one set of columns for predict and eval


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "/no/such/root", "--out", "x"], "dataset root not found: /no/such/root"),
    (["train", "--data", ".", "--out", "x", "--time-budget", "0"], "--time-budget must be > 0 seconds, got 0.0"),
    (["train", "--data", ".", "--out", "x", "--patience", "5", "--val-fraction", "0"],
     "--patience watches the held-out images' loss: it needs --val-fraction > 0"),
    (["eval", "--checkpoint", "/no/model.pt", "--data", ".", "--out", "x"], "checkpoint not found"),
    (["predict", "--checkpoint", "/no/model.pt", "--out", "x", "a.png"], "checkpoint not found"),
])
def test_errors_exit_non_zero_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("sacd-fast ")


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "sacd_fast", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--teacher-weights" in result.stdout and "held out" in result.stdout
