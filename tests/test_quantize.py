"""int8 deployment: quantised OpenVINO files with an accuracy guard, and int8 as a fast() candidate on a CPU."""

import argparse
import gc
import inspect
import json
import os
import weakref

import numpy as np
import pytest
import torch

import sacd_fast
from sacd_fast.cli import main
from sacd_fast.data.datasets import AnomalyDataset
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.deploy import fast as fast_module
from sacd_fast.deploy import runtimes
from sacd_fast.deploy.export import GuardFailed, Inferencer, export
from sacd_fast.deploy.inference import load_for_inference, read_images
from sacd_fast.deploy.quantize import GUARD_AUROC, GUARD_SAME_DECISIONS, SCOPES, guard
from sacd_fast.evaluation.calibration import calibrate_threshold
from sacd_fast.checkpoint import calibration_files, load_checkpoint, save_checkpoint

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Lite0 model trained by `sacd-fast train` on generated discs (3 of 30 images held out)."""
    root = tmp_path_factory.mktemp("int8")
    write_dataset(root / "data", "disc", seed=3, n_train=30, n_test_good=4, n_per_defect=2, progress=False)
    assert main(["train", "--data", str(root / "data"), "--category", "disc", "--out", str(root / "run"),
                 "--backbone", "efficientnet_lite0", "--epochs", "2", "--image-size", "64", "--batch-size", "8",
                 "--device", "cpu", "--false-alarm-rate", "0.05"]) == 0
    return root


def test_the_checkpoint_records_its_held_out_images(trained):
    checkpoint = trained / "run" / "model.pt"
    files = calibration_files(load_checkpoint(checkpoint), checkpoint)
    train = trained / "data" / "disc" / "train" / "good"
    assert len(files) == 3 and all(f.parent.resolve() == train.resolve() and f.is_file() for f in files)
    payload = load_checkpoint(checkpoint)
    payload["calibration_images"] = {"folder": str(train), "files": "000.png"}
    save_checkpoint(payload, trained / "odd.pt")
    with pytest.raises(ValueError, match="odd.pt: field 'calibration_images' must be a record"):
        load_checkpoint(trained / "odd.pt")
    payload["calibration_images"] = {"folder": str(train), "files": ["gone.png"]}
    save_checkpoint(payload, trained / "gone.pt")
    with pytest.raises(FileNotFoundError, match="1 of its 1 held-out normal images are gone"):
        calibration_files(load_checkpoint(trained / "gone.pt"), trained / "gone.pt")


def test_int8_export_round_trip(trained, capsys):
    """`sacd-fast export --precision int8` on the checkpoint's held-out images: the file says which parts run
    in int8, keeps the map in float32, carries thresholds recalibrated on its own scores of those images and
    the guard's figures; the Inferencer runs it. (--force: at this size the guard may go either way.)"""
    checkpoint, out = trained / "run" / "model.pt", trained / "x8"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--precision", "int8",
                 "--dynamic-batch", "--out", str(out), "--force"]) == 0
    printed = capsys.readouterr().err
    assert "quantising to int8 on 3 normal images" in printed and "the guard" in printed
    inferencer = Inferencer(out / "model.xml")
    record = inferencer.quantization
    assert record["precision"] == "int8" and record["int8"] in SCOPES and record["calibration_images"] == 3
    assert "Convolution" in record["int8_operations"] and record["forced"] is True
    scopes = list(SCOPES)  # the scopes before the one kept were tried, and failed the guard
    assert [t["int8"] for t in record["tried_before"]] == scopes[:scopes.index(record["int8"])]
    assert not any(t["guard"]["passed"] for t in record["tried_before"])
    figures = record["guard"]
    assert figures["images"] == 15 and figures["anomalous"] == 12  # the held-out images, 4 synthetic anomalies each
    assert figures["passed"] == (abs(figures["auroc_int8"] - figures["auroc_fp32"]) <= GUARD_AUROC
                                 and figures["same_decisions"] >= GUARD_SAME_DECISIONS)
    quantized = ov.Core().read_model(str(out / "model.xml"))
    fed = {t.get_node().get_friendly_name() for op in quantized.get_ordered_ops()
           if op.get_type_name() == "FakeQuantize" for t in op.output(0).get_target_inputs()}
    assert fed and not [name for name in fed if name.startswith("/map/")]  # the anomaly map stays float32
    if record["int8"] == "OCBE, decoder and FeaCali":
        assert not [name for name in fed if name.startswith("/teacher/")]
    held_out = read_images(calibration_files(load_checkpoint(checkpoint), checkpoint), 64)
    scores = inferencer.predict(sacd_fast.normalize(held_out)).scores.numpy()
    thresholds = inferencer.thresholds
    assert thresholds.source == "int8 scores of the calibration normal images"
    assert thresholds.image == pytest.approx(calibrate_threshold(scores, 0.05)["image"], rel=1e-5)
    assert thresholds.image != load_checkpoint(checkpoint)["thresholds"]["image"]


def test_the_guard_refuses_a_broken_calibration_set(trained):
    """Near-black calibration images set the int8 ranges far below real activations: on the product's test
    images the int8 model's AUROC moves beyond the guard's allowance, and nothing is written."""
    model, thresholds = load_for_inference(trained / "run" / "model.pt", "cpu")
    test = AnomalyDataset(trained / "data", "disc", "test", 64)
    guard_set = (torch.stack([test[i]["image"] for i in range(len(test))]), np.array([s.label for s in test.samples]))
    black = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    with pytest.raises(GuardFailed, match="fails the accuracy guard: image AUROC") as refused:
        export(model, trained / "broken" / "model", "openvino", None, "int8", thresholds, black, guard_set)
    assert not refused.value.quantized.guard.passed and not (trained / "broken" / "model.xml").exists()


def test_guard_figures():
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    fp32 = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 50)]
    assert guard(fp32, fp32 + 0.01, labels, 1.5, 1.51).passed
    int8 = fp32.copy()
    int8[0] = 1.6  # one normal image of 100 over the threshold: 99% alike, the AUROC unchanged
    result = guard(fp32, int8, labels, 1.5, 1.5)
    assert result.same_decisions == 0.99 and result.auroc_int8 == 1.0 and result.passed
    int8[1] = 1.6  # two: 98%
    assert guard(fp32, int8, labels, 1.5, 1.5).same_decisions == 0.98 and not guard(fp32, int8, labels, 1.5, 1.5).passed
    int8[:2] = fp32[:2]
    int8[0] = 2.5  # above half the anomalies: AUROC 0.99, 0.01 from fp32's
    result = guard(fp32, int8, labels, 1.5, 1.5)
    assert result.auroc_int8 == pytest.approx(0.99) and result.same_decisions == 0.99 and not result.passed
    assert "0.9900 against fp32's 1.0000" in result.describe()


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--precision", "int8"], "int8 writes an OpenVINO file"),
    (["--format", "openvino", "--calibration", "x"], "belong to --precision int8"),
])
def test_int8_options_are_checked(trained, argv, message, capsys):
    assert main(["export", "--checkpoint", str(trained / "run" / "model.pt"), "--out", str(trained / "no"),
                 *argv]) == 1
    assert message in capsys.readouterr().err and not (trained / "no").exists()


def test_cpu_search_shares_one_core_and_releases_the_losers(trained, monkeypatch):
    """Every OpenVINO candidate is compiled by the process's one Core (none but NNCF's makes another); int8 is a
    candidate given held-out images; every losing candidate is gone before the winner is timed again."""
    model, thresholds = load_for_inference(trained / "run" / "model.pt", "cpu")
    runtimes.openvino_core()
    real_core = ov.Core

    def core(*args, **kwargs):  # NNCF's own, for its statistics while it quantises, is the one allowed
        caller = inspect.stack()[1].filename
        assert f"{os.sep}nncf{os.sep}" in caller, f"a second OpenVINO Core was made by {caller}"
        return real_core(*args, **kwargs)

    monkeypatch.setattr(ov, "Core", core)
    built = {}
    real = fast_module._cpu_candidates

    def recorded(*args):
        def keep(name, build):
            def wrapped():
                run = build()
                built[name] = weakref.ref(run)
                return run
            return wrapped
        return {name: (precision, keep(name, build)) for name, (precision, build) in real(*args).items()}

    monkeypatch.setattr(fast_module, "_cpu_candidates", recorded)
    held_out = read_images(calibration_files(load_checkpoint(trained / "run" / "model.pt"), "m"), 64)
    fast = sacd_fast.fast(model, thresholds=thresholds, calibration=held_out)
    x = sacd_fast.normalize(held_out)
    fast.predict(x)
    gc.collect()
    report = fast.cpu_report
    assert "openvino-int8" in report and {"openvino-fp32", "eager-fp32"} <= set(built)
    alive = {name for name, ref in built.items() if ref() is not None}
    assert alive == {fast.cpu_backend}
    assert report[fast.cpu_backend]["seconds_after_search"] > 0
    json.dumps(report)  # a plain record


def test_the_cli_offers_every_file_precision():
    """cli.py loads no torch before parsing, so it spells the export precisions out: they must be the API's."""
    from sacd_fast.cli import build_parser
    from sacd_fast.deploy.export import FILE_PRECISIONS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert tuple(next(a.choices for a in commands["export"]._actions if a.dest == "precision")) == FILE_PRECISIONS
