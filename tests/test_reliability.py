"""Bad input and faults, as a hostile or careless user would bring them.

A catalogue of bad data, settings, checkpoints, weights files, Python API
calls and kernel arguments: each is refused with the expected exit code or
exception and a message that names the file or setting at fault, no traceback
reaches a CLI user, and no file outside the run's own outputs changes. Then
fault injection: SIGKILL and SIGTERM at seeded random points of training (a
checkpoint write included) followed by a resume that ends bit for bit where an
uninterrupted run ends; a full disk; two runs on one output folder; the umask.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import random_teacher_model
from PIL import Image

from sacd_fast import SACD, kernels, normalize, synthesize
from sacd_fast.cli import main
from sacd_fast.commands import train as train_command
from sacd_fast.data.datasets import AnomalyDataset, ImageFiles
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.checkpoint import load_checkpoint, save_checkpoint
from sacd_fast.network.config import SACDConfig
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import fit

SIZE = 32
TRAIN = ["--backbone", "efficientnet_lite0", "--image-size", str(SIZE), "--batch-size", "4", "--device", "cpu"]
WORKER = str(Path(__file__).with_name("fault_worker.py"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared, read-only material: a small product and a model trained on it."""
    root = tmp_path_factory.mktemp("world")
    write_dataset(root / "data", "disc", seed=3, n_train=12, n_test_good=3, n_per_defect=1, progress=False)
    train_command(root / "data", root / "run", SACDConfig("efficientnet_lite0", SIZE),
                  TrainSettings(epochs=1, batch_size=4, device="cpu"), category="disc", progress=False)
    return SimpleNamespace(root=root, data=root / "data", checkpoint=root / "run" / "model.pt",
                           images=root / "data" / "disc" / "test" / "good")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes' digest and permission bits."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run_main(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals: exit 2 with a usage line
        return e.code


def copy_data(world, tmp: Path) -> Path:
    shutil.copytree(world.data, tmp / "data")
    return tmp / "data"


def save_image(array, path: Path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def edited_checkpoint(world, tmp: Path, edit) -> Path:
    payload = load_checkpoint(world.checkpoint)
    edit(payload)
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp / "edited.pt")
    return tmp / "edited.pt"


def evil_pickle(path: Path, marker: Path) -> Path:
    """A pickle whose loading, if it ran code, would create ``marker``."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": Payload()}, path)
    return path


# --------------------------------------------------------------------------- #
# The CLI catalogue: (argv builder, exit code, text the message must contain)
# --------------------------------------------------------------------------- #

CLI = []


def cli_case(name: str, code: int = 1):
    def register(build):
        CLI.append(pytest.param(build, code, id=name))
        return build

    return register


def train_args(data, out, *extra):
    return ["train", "--data", data, "--category", "disc", "--out", out, "--epochs", "1", *TRAIN, *extra]


@cli_case("data root missing")
def _(w, t):
    return train_args(t / "nowhere", t / "out"), str(t / "nowhere")


@cli_case("category missing")
def _(w, t):
    return ["train", "--data", w.data, "--category", "bottle", "--out", t / "out", *TRAIN], "category 'bottle'"


@cli_case("no train folder")
def _(w, t):
    (t / "data" / "disc" / "test").mkdir(parents=True)
    return train_args(t / "data", t / "out"), "no train/ folder"


@cli_case("no good folder")
def _(w, t):
    (t / "data" / "disc" / "train" / "bad").mkdir(parents=True)
    return train_args(t / "data", t / "out"), "no good or ok folder"


@cli_case("empty good folder")
def _(w, t):
    (t / "data" / "disc" / "train" / "good").mkdir(parents=True)
    return train_args(t / "data", t / "out"), "no images in"


@cli_case("truncated training image")
def _(w, t):
    data = copy_data(w, t)
    path = data / "disc" / "train" / "good" / "007.png"
    path.write_bytes(path.read_bytes()[:200])
    return train_args(data, t / "out"), "007.png"


@cli_case("text file named .png")
def _(w, t):
    data = copy_data(w, t)
    (data / "disc" / "train" / "good" / "notes.png").write_text("not an image")
    return train_args(data, t / "out"), "notes.png"


@cli_case("empty image file")
def _(w, t):
    data = copy_data(w, t)
    (data / "disc" / "train" / "good" / "empty.jpg").write_bytes(b"")
    return train_args(data, t / "out"), "empty.jpg"


@cli_case("float image beyond [0, 1]")
def _(w, t):
    data = copy_data(w, t)
    save_image(np.full((20, 20), 200.0, np.float32), data / "disc" / "train" / "good" / "f.tif", "F")
    return train_args(data, t / "out"), "f.tif"


@cli_case("mask without its image")
def _(w, t):
    data = copy_data(w, t)
    save_image(np.zeros((256, 256), np.uint8), data / "disc" / "ground_truth" / "crack" / "099_mask.png")
    return ["eval", "--checkpoint", w.checkpoint, "--data", data, "--category", "disc", "--out", t / "ev",
            "--device", "cpu"], "099_mask.png"


@cli_case("mask of another size")
def _(w, t):
    data = copy_data(w, t)
    save_image(np.zeros((10, 10), np.uint8), data / "disc" / "ground_truth" / "crack" / "000_mask.png")
    return ["eval", "--checkpoint", w.checkpoint, "--data", data, "--category", "disc", "--out", t / "ev",
            "--device", "cpu"], "000_mask.png is 10x10"


@cli_case("truncated mask")
def _(w, t):
    data = copy_data(w, t)
    path = data / "disc" / "ground_truth" / "hole" / "000_mask.png"
    path.write_bytes(path.read_bytes()[:60])
    return ["eval", "--checkpoint", w.checkpoint, "--data", data, "--category", "disc", "--out", t / "ev",
            "--device", "cpu"], "000_mask.png"


@cli_case("no test folder")
def _(w, t):
    shutil.copytree(w.data / "disc" / "train", t / "data" / "disc" / "train")
    return ["eval", "--checkpoint", w.checkpoint, "--data", t / "data", "--category", "disc", "--out", t / "ev",
            "--device", "cpu"], "no test/ folder"


@cli_case("predict path missing")
def _(w, t):
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", t / "missing.png"], "missing.png"


@cli_case("predict folder without images")
def _(w, t):
    (t / "empty").mkdir()
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", t / "empty"], "no images found"


@cli_case("predict with a corrupt image among good ones")
def _(w, t):
    shutil.copytree(w.images, t / "in")
    (t / "in" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", t / "in"], "zz.png"


@cli_case("predict writing over its inputs")
def _(w, t):
    shutil.copytree(w.images, t / "o" / "heatmaps")  # 000.png's heatmap, heatmaps/000.png.png, is an input
    shutil.copy(w.images / "000.png", t / "o" / "heatmaps" / "000.png.png")
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "o", t / "o" / "heatmaps"], "overwrite an input"


@cli_case("epochs 0")
def _(w, t):
    return train_args(w.data, t / "out", "--epochs", "0"), "--epochs"


@cli_case("negative epochs")
def _(w, t):
    return train_args(w.data, t / "out", "--epochs", "-3"), "--epochs"


@cli_case("image size 0")
def _(w, t):
    return train_args(w.data, t / "out", "--image-size", "0"), "--image-size"


@cli_case("negative image size")
def _(w, t):
    return train_args(w.data, t / "out", "--image-size", "-32"), "--image-size"


@cli_case("image size not a multiple of 32")
def _(w, t):
    return train_args(w.data, t / "out", "--image-size", "48"), "--image-size must be a multiple of 32"


@cli_case("batch size 0")
def _(w, t):
    return train_args(w.data, t / "out", "--batch-size", "0"), "--batch-size"


@cli_case("batch of one image at 32 pixels")
def _(w, t):
    return train_args(w.data, t / "out", "--batch-size", "1"), "batch size 1"


@cli_case("negative validation fraction")
def _(w, t):
    return train_args(w.data, t / "out", "--val-fraction", "-0.5"), "--val-fraction"


@cli_case("validation fraction 1")
def _(w, t):
    return train_args(w.data, t / "out", "--val-fraction", "1"), "--val-fraction"


@cli_case("validation fraction nan")
def _(w, t):
    return train_args(w.data, t / "out", "--val-fraction", "nan"), "--val-fraction"


@cli_case("negative seed")
def _(w, t):
    return train_args(w.data, t / "out", "--seed", "-1"), "--seed"


@cli_case("negative workers")
def _(w, t):
    return train_args(w.data, t / "out", "--workers", "-1"), "--workers"


@cli_case("threshold nan")
def _(w, t):
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--threshold", "nan", w.images], "--threshold"


@cli_case("threshold infinite")
def _(w, t):
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--threshold", "inf", w.images], "--threshold"


@cli_case("unknown device")
def _(w, t):
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--device", "tpu", w.images], "tpu"


@cli_case("CUDA asked on a machine without it")
def _(w, t):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--device", "cuda", w.images], "CUDA"


@cli_case("unknown backbone", code=2)
def _(w, t):
    return ["train", "--data", w.data, "--out", t / "o", "--backbone", "vgg16"], "--backbone"


@cli_case("epochs not a number", code=2)
def _(w, t):
    return ["train", "--data", w.data, "--out", t / "o", "--epochs", "ten"], "--epochs"


@cli_case("out is a file")
def _(w, t):
    (t / "out").write_text("I am a file")
    return train_args(w.data, t / "out"), str(t / "out")


@cli_case("checkpoint missing")
def _(w, t):
    return ["eval", "--checkpoint", t / "no.pt", "--data", w.data, "--category", "disc", "--out", t / "e"], "no.pt"


@cli_case("checkpoint of junk bytes")
def _(w, t):
    (t / "junk.pt").write_bytes(os.urandom(300))
    return ["predict", "--checkpoint", t / "junk.pt", "--out", t / "p", w.images], "junk.pt"


@cli_case("checkpoint of another program")
def _(w, t):
    torch.save({"model": torch.zeros(3)}, t / "other.pt")
    return ["predict", "--checkpoint", t / "other.pt", "--out", t / "p", w.images], "not a sacd_fast checkpoint"


@cli_case("truncated checkpoint")
def _(w, t):
    data = w.checkpoint.read_bytes()
    (t / "cut.pt").write_bytes(data[: len(data) // 2])
    return ["predict", "--checkpoint", t / "cut.pt", "--out", t / "p", w.images], "cut.pt"


@cli_case("checkpoint with NaN weights")
def _(w, t):
    path = edited_checkpoint(w, t, lambda p: p["state_dict"]["feacali.0.convs.0.weight"].fill_(float("nan")))
    return ["predict", "--checkpoint", path, "--out", t / "p", w.images], "non-finite weights"


@cli_case("checkpoint with a NaN threshold")
def _(w, t):
    path = edited_checkpoint(w, t, lambda p: p["thresholds"].update(image=float("nan")))
    return ["predict", "--checkpoint", path, "--out", t / "p", w.images], "threshold"


@cli_case("checkpoint whose training did not finish")
def _(w, t):
    path = edited_checkpoint(w, t, lambda p: p.pop("thresholds"))
    return ["predict", "--checkpoint", path, "--out", t / "p", w.images], "no calibrated threshold"


@cli_case("checkpoint missing a weight")
def _(w, t):
    path = edited_checkpoint(w, t, lambda p: p["state_dict"].pop("ocbe.down2.0.weight"))
    return ["predict", "--checkpoint", path, "--out", t / "p", w.images], "ocbe.down2.0.weight"


@cli_case("checkpoint with an unknown setting")
def _(w, t):
    path = edited_checkpoint(w, t, lambda p: p["config"].update(colour="blue"))
    return ["predict", "--checkpoint", path, "--out", t / "p", w.images], "colour"


@cli_case("checkpoint that would run code")
def _(w, t):
    return (["predict", "--checkpoint", evil_pickle(t / "evil.pt", t / "pwned"), "--out", t / "p", w.images],
            "evil.pt")


@cli_case("teacher weights file missing")
def _(w, t):
    return train_args(w.data, t / "out", "--teacher-weights", t / "no.pth"), "no.pth"


@cli_case("teacher weights of junk bytes")
def _(w, t):
    (t / "junk.pth").write_bytes(os.urandom(500))
    return train_args(w.data, t / "out", "--teacher-weights", t / "junk.pth"), "junk.pth"


@cli_case("truncated teacher weights")
def _(w, t):
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, t / "cut.pth")
    (t / "cut.pth").write_bytes((t / "cut.pth").read_bytes()[:300])
    return train_args(w.data, t / "out", "--teacher-weights", t / "cut.pth"), "cut.pth"


@cli_case("teacher weights that are not a dict")
def _(w, t):
    torch.save([torch.zeros(3)], t / "list.pth")
    return train_args(w.data, t / "out", "--teacher-weights", t / "list.pth"), "list.pth"


@cli_case("teacher weights of another network")
def _(w, t):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, t / "resnet.pth")
    return train_args(w.data, t / "out", "--teacher-weights", t / "resnet.pth"), "resnet.pth"


@cli_case("teacher weights that would run code")
def _(w, t):
    return train_args(w.data, t / "out", "--teacher-weights", evil_pickle(t / "evil.pth", t / "pwned")), "evil.pth"


@cli_case("false-alarm rate no held-out set can calibrate")
def _(w, t):
    return train_args(w.data, t / "out", "--false-alarm-rate", "1e-20"), "below what 2 held-out normal images"


@cli_case("threshold and false-alarm rate together", code=2)
def _(w, t):
    return (["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--threshold", "0.5", "--false-alarm-rate",
             "0.1", w.images], "not allowed with")


@cli_case("image size beyond any machine")
def _(w, t):
    return train_args(w.data, t / "out", "--image-size", str(2**40)), "--image-size must be in [32, 4096]"


@cli_case("batch beyond the machine's memory")
def _(w, t):
    return train_args(w.data, t / "out", "--batch-size", str(10**9)), "--batch-size: 1000000000 images"


@cli_case("predict batch beyond the machine's memory")
def _(w, t):
    return (["predict", "--checkpoint", w.checkpoint, "--out", t / "p", "--batch-size", str(10**12), w.images],
            "--batch-size: 1000000000000 images")


@cli_case("export batch beyond the machine's memory")
def _(w, t):
    return ["export", "--checkpoint", w.checkpoint, "--out", t / "x", "--batch", str(10**12)], "--batch: "


@cli_case("checkpoint that is a folder")
def _(w, t):
    (t / "dir.pt").mkdir()
    return ["predict", "--checkpoint", t / "dir.pt", "--out", t / "p", w.images], "dir.pt is a folder, not a file"


@cli_case("checkpoint that is a FIFO")
def _(w, t):
    os.mkfifo(t / "fifo.pt")
    return ["predict", "--checkpoint", t / "fifo.pt", "--out", t / "p", w.images], "fifo.pt is a FIFO, not a file"


@cli_case("exported model that is a folder")
def _(w, t):
    (t / "model.onnx").mkdir()
    return ["predict", "--checkpoint", t / "model.onnx", "--out", t / "p", w.images], "is a folder, not a file"


@cli_case("predict input that is a FIFO")
def _(w, t):
    os.mkfifo(t / "fifo.png")
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", t / "fifo.png"], "fifo.png is a FIFO"


@cli_case("teacher weights file that is a FIFO")
def _(w, t):
    os.mkfifo(t / "fifo.pth")
    return train_args(w.data, t / "out", "--teacher-weights", t / "fifo.pth"), "fifo.pth is a FIFO, not a file"


@cli_case("teacher weights holding NaN")
def _(w, t):
    teacher = {k[len("teacher."):]: v.clone() for k, v in load_checkpoint(w.checkpoint)["state_dict"].items()
               if k.startswith("teacher.")}
    next(v for v in teacher.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(teacher, t / "nan.pth")
    return train_args(w.data, t / "out", "--teacher-weights", t / "nan.pth"), "nan.pth hold NaN or infinite values"


@cli_case("out that is a file, for predict")
def _(w, t):
    (t / "p").write_text("I am a file")
    return ["predict", "--checkpoint", w.checkpoint, "--out", t / "p", w.images], "is a file, not a folder"


@cli_case("bench JSON that is not JSON")
def _(w, t):
    (t / "b.json").write_text("{not json")
    return ["profile", "--backbone", "resnet18", "--image-size", "64", "--bench-json", t / "b.json"], "not JSON"


@cli_case("bench JSON of another program")
def _(w, t):
    (t / "b.json").write_text('{"benchmarks": 3}')
    return (["profile", "--backbone", "resnet18", "--image-size", "64", "--bench-json", t / "b.json"],
            "not a pytest-benchmark file")


@cli_case("bench JSON with a broken record")
def _(w, t):
    (t / "b.json").write_text(json.dumps({"benchmarks": [{"name": "test_inference", "extra_info": [1]}]}))
    return (["profile", "--backbone", "resnet18", "--image-size", "64", "--bench-json", t / "b.json"],
            "benchmark 'test_inference'")


@cli_case("bench JSON that is missing")
def _(w, t):
    return (["profile", "--backbone", "resnet18", "--image-size", "64", "--bench-json", t / "none.json"],
            "--bench-json file not found")


@cli_case("demo with 0 epochs")
def _(w, t):
    return ["demo", "--out", t / "out", "--epochs", "0", "--device", "cpu"], "--epochs"


@cli_case("demo with an image size of 7")
def _(w, t):
    return ["demo", "--out", t / "out", "--image-size", "7", "--device", "cpu"], "--image-size"


@cli_case("synth-data category outside --out")
def _(w, t):
    return ["synth-data", "--out", t / "out", "--category", "../escaped"], "--category must be a plain folder name"


@cli_case("synth-data category that is an absolute path")
def _(w, t):
    return ["synth-data", "--out", t / "out", "--category", str(t / "abs")], "--category must be a plain folder name"


@pytest.mark.parametrize("build,code", CLI)
def test_cli_refuses_bad_input_by_name(build, code, world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a careless setting must not open the door
    argv, text = build(world, tmp_path)
    before = snapshot(world.root)
    assert run_main(argv) == code
    err = capsys.readouterr().err
    assert text in err, err
    assert "Traceback" not in err
    if code == 1:  # one line, after any progress bars
        assert err.strip().splitlines()[-1].startswith(f"sacd-fast {argv[0]}: error: ") and text in err, err
    assert not (tmp_path / "pwned").exists()
    assert snapshot(world.root) == before  # the shared data and model are untouched
    # refused before any epoch or any output (the demo and synth-data: before any data are written)
    assert not (tmp_path / "out" / "model.pt").exists() and not (tmp_path / "p" / "scores.csv").exists()
    assert not (tmp_path / "out" / "data").exists() and not (tmp_path / "escaped").exists()
    assert not (tmp_path / "abs").exists() and not (tmp_path / "x" / "model.onnx").exists()


# --------------------------------------------------------------------------- #
# Resuming with something else
# --------------------------------------------------------------------------- #


def with_option(argv: list, option: str, value) -> list:
    argv = list(argv)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    return argv


@pytest.mark.parametrize("change,text", [
    ({"--batch-size": "6"}, "batch_size: checkpoint 4 != requested 6"),
    ({"--seed": "5"}, "seed"),
    ({"--data": "OTHER"}, "data"),
    ({"--teacher-weights": "TEACHER"}, "teacher weights differ"),
    ({"--image-size": "64"}, "image_size"),
    ({"--map-border": "0"}, "map_border: checkpoint 1 != requested 0"),
    ({"--backbone": "resnet18", "--teacher-weights": "RESNET"}, "backbone"),
])
def test_resume_refuses_other_data_weights_or_settings(change, text, world, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(world.checkpoint.parent, out)
    other = copy_data(world, tmp_path)
    (other / "disc" / "train" / "good" / "000.png").unlink()
    teacher = {k[len("teacher."):]: v + 0.01 for k, v in load_checkpoint(world.checkpoint)["state_dict"].items()
               if k.startswith("teacher.")}
    torch.save(teacher, tmp_path / "teacher.pth")
    torch.save(random_teacher_model("resnet18", SIZE).teacher.state_dict(), tmp_path / "resnet.pth")
    names = {"OTHER": other, "TEACHER": tmp_path / "teacher.pth", "RESNET": tmp_path / "resnet.pth"}
    argv = train_args(world.data, out, "--epochs", "2")
    for option, value in change.items():
        argv = with_option(argv, option, names.get(value, value))
    before = snapshot(out)
    assert run_main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and text in err and "Traceback" not in err, err
    assert snapshot(out) == before


# --------------------------------------------------------------------------- #
# Data that used to give silently wrong results
# --------------------------------------------------------------------------- #


def test_sixteen_bit_images_are_scaled_by_their_bit_depth(tmp_path):
    a, b = np.full((8, 8), 255, np.uint16), np.full((8, 8), 255, np.uint16)
    b[0, 0] = 256  # one pixel more no longer rescales the whole image
    save_image(a, tmp_path / "a.png")
    save_image(b, tmp_path / "b.png")
    images = ImageFiles([tmp_path / "a.png", tmp_path / "b.png"], 32)
    means = [float(images[i]["image"].mean()) for i in range(2)]
    assert means[0] == pytest.approx(1 / 255, abs=1e-3) and abs(means[0] - means[1]) < 1e-3


def test_zero_one_masks_mark_their_defects(tmp_path):
    mask01 = np.zeros((40, 40), np.uint8)
    mask01[10:20, 5:30] = 1
    for name, mask in (("a", mask01), ("b", mask01 * 255)):
        folder = tmp_path / name / "p"
        for split in ("train/good", "test/good", "test/crack"):
            save_image(np.zeros((40, 40, 3), np.uint8), folder / split / "0.png")
        save_image(mask, folder / "ground_truth" / "crack" / "0_mask.png")
    masks = [AnomalyDataset(tmp_path / n, "p", "test", 32)[0]["mask"] for n in ("a", "b")]
    assert masks[0].sum() > 0 and torch.equal(masks[0], masks[1])


def test_large_images_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    save_image(np.zeros((100, 100, 3), np.uint8), tmp_path / "huge.png")
    with pytest.raises(ValueError, match="huge.png.*safety limit"):
        ImageFiles([tmp_path / "huge.png"], 32).check(progress=False)


def test_non_utf8_file_names_are_scored_and_written(world, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(world.images / "000.png", folder / odd)
    shutil.copy(world.images / "001.png", folder / "plain.png")
    assert run_main(["predict", "--checkpoint", world.checkpoint, "--out", tmp_path / "p", folder]) == 0
    rows = (tmp_path / "p" / "scores.csv").read_bytes().splitlines()
    assert len(rows) == 3 and b"caf\xe9.png" in rows[1] + rows[2]
    assert len(json.loads((tmp_path / "p" / "scores.json").read_text())["images"]) == 2


def test_a_last_batch_of_one_image_joins_the_one_before(world, tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "disc", seed=4, n_train=18, n_test_good=1, n_per_defect=1, progress=False)
    assert run_main(train_args(data, tmp_path / "out", "--batch-size", "17", "--val-fraction", "0")) == 0


# --------------------------------------------------------------------------- #
# The Python API and the kernels' public functions
# --------------------------------------------------------------------------- #

API = [
    ("image size 0", lambda: random_teacher_model("resnet18", 0), ValueError, "image_size"),
    ("image size 48", lambda: random_teacher_model("resnet18", 48), ValueError, "image_size"),
    ("image size as text", lambda: random_teacher_model("resnet18", "64"), ValueError, "image_size"),
    ("unknown backbone", lambda: random_teacher_model("vgg16", 64), ValueError, "vgg16"),
    ("sigma nan", lambda: random_teacher_model("resnet18", 64, sigma=float("nan")), ValueError, "sigma"),
    ("lambda 0", lambda: random_teacher_model("resnet18", 64, lambda_intra=0), ValueError, "lambda_intra"),
    ("feacali layers 0", lambda: random_teacher_model("resnet18", 64, feacali_layers=0), ValueError,
     "feacali_layers"),
    ("uint8 input", lambda: random_teacher_model().predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)),
     ValueError, "normalize"),
    ("meta input", lambda: random_teacher_model().predict(torch.zeros(1, 3, 64, 64, device="meta")), ValueError,
     "meta"),
    ("NaN input", lambda: random_teacher_model().predict(torch.full((1, 3, 64, 64), float("nan"))), ValueError,
     "NaN"),
    ("3-D input", lambda: random_teacher_model().predict(torch.zeros(3, 64, 64)), ValueError, "(B, 3, H, W)"),
    ("integer normalize", lambda: normalize(torch.zeros(1, 3, 8, 8, dtype=torch.int64)), ValueError, "int64"),
    ("lr nan", lambda: TrainSettings(lr=float("nan")), ValueError, "lr"),
    ("epochs 0", lambda: TrainSettings(epochs=0), ValueError, "epochs"),
    ("betas out of range", lambda: TrainSettings(betas=(0.5, 1.5)), ValueError, "betas"),
    ("one training image", lambda: fit(random_teacher_model(), torch.rand(1, 3, 64, 64)), ValueError,
     "at least 2 images"),
    ("synthesis seed count", lambda: synthesize(torch.rand(2, 3, 64, 64), torch.tensor([1])), ValueError,
     "1 seeds for a batch of 2"),
    ("synthesis of 3-D images", lambda: synthesize(torch.rand(3, 64, 64)), ValueError, "(B, C, H, W)"),
    ("kernel: one seed for two images", lambda: kernels.synthesize_patches(
        torch.rand(2, 3, 32, 32), torch.tensor([1]), 0.2, (4, 16), (4, 16)), ValueError, "1 seeds"),
    ("kernel: two weights, one bias", lambda: kernels.conv_in_lrelu_stack(
        torch.rand(1, 4, 5, 5), [torch.rand(2, 4, 3, 3), torch.rand(4, 2, 3, 3)], [None]), ValueError,
     "2 weights and 1 biases"),
    ("kernel: 1x1 map", lambda: kernels.conv_in_lrelu(torch.rand(1, 4, 1, 1), torch.rand(2, 4, 3, 3)), ValueError,
     "more than one pixel"),
    ("kernel: sigma nan", lambda: kernels.cosine_anomaly_map([torch.rand(1, 4, 2, 2)], [torch.rand(1, 4, 2, 2)],
                                                             (8, 8), sigma=float("nan")), ValueError, "sigma"),
    ("kernel: fractional size", lambda: kernels.cosine_anomaly_map([torch.rand(1, 4, 2, 2)],
                                                                   [torch.rand(1, 4, 2, 2)], (32.5, 8)),
     ValueError, "size[0]"),
    ("kernel: negative border", lambda: kernels.cosine_anomaly_map([torch.rand(1, 4, 2, 2)], [torch.rand(1, 4, 2, 2)],
                                                                   (8, 8), border=-1), ValueError, "border"),
    ("kernel: uint8 images", lambda: kernels.synthesize_patches(
        torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([1]), 0.2, (4, 16), (4, 16)), ValueError,
     "x01 must be float16"),
]


@pytest.mark.parametrize("call,error,text", [pytest.param(c, e, t, id=n) for n, c, e, t in API])
def test_api_refuses_bad_input_by_name(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


def test_predict_converts_other_float_types_and_normalize_takes_uint8():
    model = random_teacher_model()
    x = torch.rand(2, 3, 64, 64)
    expected = model.predict(normalize(x)).maps
    for dtype in (torch.float64, torch.float16):
        assert torch.allclose(model.predict(normalize(x).to(dtype)).maps, expected, atol=5e-2)
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.allclose(normalize(pixels), normalize(pixels.float() / 255))


def test_a_planted_hub_cache_file_is_refused_unread(tmp_path, monkeypatch):
    """ImageNet weights are only read when the file matches its published hash."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    evil_pickle(checkpoints / "resnet18-f37072fd.pth", tmp_path / "pwned")
    with pytest.raises(ValueError, match="published SHA-256"):
        SACD("resnet18", teacher_weights="imagenet", image_size=64)
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- #
# Fault injection: kills, a full disk, two runs on one folder, the umask
# --------------------------------------------------------------------------- #


def cli_process(args, slow_write: float | None = None, umask: int | None = None) -> subprocess.Popen:
    """The CLI in a child process: stdout piped (the write markers), stderr into
    a file (progress bars must never block it), read with :func:`stderr_of`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if slow_write:
        env["SACD_TEST_SLOW_WRITE"] = str(slow_write)
    err = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, stdout=subprocess.PIPE,
                               stderr=err, text=True, preexec_fn=(lambda: os.umask(umask)) if umask else None)
    process.err_file = err
    return process


def stderr_of(process: subprocess.Popen) -> str:
    process.err_file.seek(0)
    return process.err_file.read()


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    process = cli_process(args, **kwargs)
    out, _ = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, stderr_of(process))


def weights_and_history(path: Path):
    payload = load_checkpoint(path)
    return payload["state_dict"], payload["history"], payload["thresholds"]


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(train_args(world.data, out, "--epochs", "3"))
    assert done.returncode == 0, done.stderr
    return weights_and_history(out / "model.pt")


def wait_for(process: subprocess.Popen, marker: str, count: int = 1):
    seen = 0
    for line in process.stdout:
        if marker in line:
            seen += 1
            if seen == count:
                return
    raise AssertionError(f"{marker!r} seen {seen} times before the process ended: {stderr_of(process)[-2000:]}")


KILLS = [  # (signal, the checkpoint write it interrupts or follows, extra delay)
    (signal.SIGKILL, 2, None),  # while the epoch-2 checkpoint is half-way to disk
    (signal.SIGKILL, 1, random.Random(1).uniform(0.0, 0.6)),  # in the first write's pause, or in epoch 2
    (signal.SIGTERM, 2, None),
    (signal.SIGTERM, 1, random.Random(2).uniform(0.0, 0.6)),
    (signal.SIGKILL, 3, None),  # while the final checkpoint (with the threshold) is written
]


@pytest.mark.parametrize("sig,write,delay", KILLS, ids=["kill-in-write", "kill-in-epoch", "term-in-write",
                                                        "term-in-epoch", "kill-in-final-write"])
def test_interrupted_training_resumes_bit_for_bit(sig, write, delay, world, uninterrupted, tmp_path):
    out = tmp_path / "run"
    args = train_args(world.data, out, "--epochs", "3")
    process = cli_process(args, slow_write=0.3)  # each checkpoint write pauses 0.3 s before its rename
    wait_for(process, "WRITING model.pt", write)
    if delay:
        time.sleep(delay)
    process.send_signal(sig)
    process.wait(timeout=120)
    if sig == signal.SIGTERM:
        err = stderr_of(process)
        assert process.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    else:
        assert process.returncode == -signal.SIGKILL
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    weights, history, thresholds = weights_and_history(out / "model.pt")
    expected_weights, expected_history, expected_thresholds = uninterrupted
    assert history == expected_history and thresholds == expected_thresholds
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name
    log = [json.loads(line)["epoch"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    assert not list(out.glob(".*.tmp"))


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


class InterruptedFile:
    """A binary file whose third write raises ``error`` (the interrupt, or a full disk)."""

    def __init__(self, file, error: BaseException):
        self.file, self.error, self.writes = file, error, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise self.error
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


@pytest.mark.parametrize("where", ["in-the-file", "between-torch-and-the-file"])
@pytest.mark.parametrize("what", ["interrupt", "full-disk"])
def test_an_error_inside_a_checkpoint_write_stays_what_it_was(where, what, tmp_path, monkeypatch):
    """SIGTERM's handler (or Ctrl-C) raising, or a full disk, inside one of torch.save's writes: torch
    turns that into a RuntimeError about the stream position. Wherever it lands, in the file's own
    write or in the layers above it, the write must end as the interrupt (or the named full disk) it
    was, with no file and no temporary left."""
    from sacd_fast import files

    error = KeyboardInterrupt() if what == "interrupt" else OSError(errno.ENOSPC, "No space left on device")
    real_fdopen = os.fdopen
    wrap = (lambda f: InterruptedFile(f, error)) if where == "between-torch-and-the-file" else (lambda f: f)
    if where == "in-the-file":
        monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: InterruptedFile(real_fdopen(fd, mode), error))
    path = tmp_path / "model.pt"
    with pytest.raises(type(error)) as raised:
        files.atomic_write(path, lambda f: torch.save({"a": torch.zeros(1000), "b": torch.ones(1000)}, wrap(f)))
    if what == "full-disk":
        assert isinstance(raised.value, files.OutputError) and f"no space left on {tmp_path}" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_writer_an_interrupt_left_unfinished_cannot_abort_the_exit(tmp_path):
    """An interrupt can leave torch.save's zip writer unfinished; freed later
    (at exit, after the temporary file was closed and deleted), it still
    writes the zip's end. That write must be ignored: raised inside the C++
    destructor it aborts the interpreter (SIGABRT instead of a clean exit)."""
    script = textwrap.dedent(f"""
        import gc, torch
        from sacd_fast import files
        unfinished = []
        def write(f):
            unfinished.append(torch.serialization._open_zipfile_writer(f))
            raise KeyboardInterrupt
        try:
            files.atomic_write({str(tmp_path / "model.pt")!r}, write)
        except KeyboardInterrupt:
            pass
        unfinished.clear()
        gc.collect()
        print("exited cleanly")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "exited cleanly" in done.stdout, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_names_the_folder(world, tmp_path):
    with small_filesystem(tmp_path / "small", "8m") as out:
        done = run_cli(train_args(world.data, out))
        assert done.returncode == 1 and f"no space left on {out}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (out / "model.pt").exists()
        assert not list(out.glob(".*.tmp"))


def test_full_disk_during_eval_leaves_only_whole_files(world, tmp_path):
    with small_filesystem(tmp_path / "small", "12k") as out:
        done = run_cli(["eval", "--checkpoint", world.checkpoint, "--data", world.data, "--category", "disc",
                        "--out", out, "--device", "cpu"])
        assert done.returncode == 1 and "no space left on" in done.stderr, done.stderr
        assert not (out / "metrics.json").exists()  # written last: its presence means a whole evaluation
        for png in (out / "heatmaps").glob("*.png"):
            Image.open(png).load()  # every file there is whole
        assert not list(out.rglob(".*.tmp"))


def test_read_only_output_folder_is_refused_at_once(world, tmp_path):
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as out:
        started = time.monotonic()
        done = run_cli(train_args(world.data, out))
        assert done.returncode == 1 and f"cannot write to {out}" in done.stderr, done.stderr
        assert time.monotonic() - started < 60


def test_a_second_run_on_the_same_folder_is_refused_at_once(world, tmp_path):
    out = tmp_path / "run"
    # The first run pauses inside its first checkpoint write, holding the folder, until it is killed.
    first = cli_process(train_args(world.data, out, "--epochs", "3"), slow_write=120)
    wait_for(first, "WRITING model.pt")
    second = run_cli(train_args(world.data, out, "--epochs", "3", "--seed", "7"))
    assert second.returncode == 1 and f"{out} is in use by sacd-fast train (pid {first.pid})" in second.stderr
    first.kill()
    first.wait()
    third = run_cli(train_args(world.data, out, "--epochs", "3"))  # the killed holder left no stale lock
    assert third.returncode == 0, third.stderr


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_keep_the_users_umask(umask, mode, world, tmp_path):
    out = tmp_path / "p"
    done = run_cli(["predict", "--checkpoint", world.checkpoint, "--out", out, world.images / "000.png"],
                   umask=umask)
    assert done.returncode == 0, done.stderr
    for path in (out / "scores.csv", out / "scores.json", out / "heatmaps" / "000.png.png"):
        assert path.stat().st_mode & 0o777 == mode, path
    assert math.isfinite(json.loads((out / "scores.json").read_text())["threshold"]["image"])
    done = run_cli(train_args(world.data, tmp_path / "run"), umask=umask)
    assert done.returncode == 0, done.stderr
    for name in ("model.pt", "train_log.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == mode, name


# --------------------------------------------------------------------------- #
# Output folders: the lock, temporaries left by killed runs, synth-data
# --------------------------------------------------------------------------- #


def predict_args(world, out, *paths):
    return ["predict", "--checkpoint", world.checkpoint, "--out", out, *(paths or [world.images])]


LOCKING_COMMANDS = {
    "train": lambda w, out: train_args(w.data, out),
    "predict": lambda w, out: predict_args(w, out),
    "synth-data": lambda w, out: ["synth-data", "--out", out],
}


@pytest.mark.parametrize("command", sorted(LOCKING_COMMANDS))
@pytest.mark.parametrize("target", ["existing file", "absent file"])
def test_a_symlinked_lock_is_refused_and_never_written_through(command, target, world, tmp_path, capsys):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    if target == "existing file":
        victim.write_text("precious")
    (out / ".sacd-fast.lock").symlink_to(victim)
    assert run_main(LOCKING_COMMANDS[command](world, out)) == 1
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and ".sacd-fast.lock" in err, err
    assert (victim.read_text() == "precious") if target == "existing file" else not victim.exists()
    assert sorted(p.name for p in out.iterdir()) == [".sacd-fast.lock"]


def test_a_lock_file_of_another_user_is_refused(world, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sacd-fast.lock").write_text("")
    os.chown(out / ".sacd-fast.lock", 12345, 12345)
    assert run_main(predict_args(world, out)) == 1
    assert "owned by user 12345, not by you" in capsys.readouterr().err
    assert not (out / "scores.csv").exists()


def test_a_held_folder_names_the_command_that_holds_it(world, tmp_path, capsys):
    from sacd_fast.files import exclusive_folder

    with exclusive_folder(tmp_path / "out", "sacd-fast train"):
        assert run_main(predict_args(world, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"in use by sacd-fast train (pid {os.getpid()})" in err, err


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def plant_temporaries(folder: Path, names: list[str], pid: int) -> list[Path]:
    planted = []
    for name in names:
        path = folder / name
        path = path.parent / f".{path.name}.{pid}.0123abcd.tmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
        planted.append(path)
    return planted


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "synth-data"])
def test_every_command_removes_the_temporaries_of_killed_runs(command, world, tmp_path):
    out = tmp_path / "out"
    names = {"train": ["model.pt", "train_log.jsonl"], "eval": ["metrics.json", "heatmaps/crack/000.png.png"],
             "predict": ["scores.csv", "heatmaps/000.png.png"], "export": ["model.onnx", "model.bin"],
             "synth-data": ["disc"]}[command]
    if command == "train":
        shutil.copytree(world.checkpoint.parent, out)  # a finished run: the rerun only calibrates
    stale = plant_temporaries(out, names, dead_pid())
    alive = plant_temporaries(out, ["other.txt"], os.getpid())  # a live writer's temporary stays
    argv = {"train": train_args(world.data, out), "predict": predict_args(world, out),
            "eval": ["eval", "--checkpoint", world.checkpoint, "--data", world.data, "--category", "disc", "--out",
                     out, "--device", "cpu"],
            "export": ["export", "--checkpoint", world.checkpoint, "--out", out],
            "synth-data": ["synth-data", "--out", out]}[command]
    assert run_main(argv) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in alive)


def test_synth_data_refuses_a_folder_holding_other_files_unless_told(tmp_path, capsys):
    mine = tmp_path / "out" / "disc" / "train" / "good" / "000.png"
    save_image(np.zeros((8, 8, 3), np.uint8), mine)
    keep = tmp_path / "out" / "disc" / "notes.txt"
    keep.write_text("mine")
    before = snapshot(tmp_path / "out" / "disc")
    assert run_main(["synth-data", "--out", tmp_path / "out"]) == 1
    assert "already holds files" in capsys.readouterr().err
    assert snapshot(tmp_path / "out" / "disc") == before
    assert run_main(["synth-data", "--out", tmp_path / "out", "--overwrite"]) == 0
    assert Image.open(mine).size == (256, 256) and keep.read_text() == "mine"
    assert len(list((tmp_path / "out" / "disc").rglob("*.png"))) == 220 + 40


def test_synth_data_takes_the_folder_lock(tmp_path, capsys):
    from sacd_fast.files import exclusive_folder

    with exclusive_folder(tmp_path / "out", "sacd-fast synth-data"):
        assert run_main(["synth-data", "--out", tmp_path / "out"]) == 1
    assert "in use by sacd-fast synth-data" in capsys.readouterr().err
    assert not (tmp_path / "out" / "disc").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_interrupted_synth_data_leaves_no_dataset_and_the_rerun_completes(sig, tmp_path):
    out = tmp_path / "out"
    process = cli_process(["synth-data", "--out", out], slow_write=0.2)
    wait_for(process, "WRITING", 5)
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), stderr_of(process)
    assert not (out / "disc").exists()  # nothing half-written where the data set belongs
    done = run_cli(["synth-data", "--out", out])
    assert done.returncode == 0, done.stderr
    pngs = list((out / "disc").rglob("*.png"))
    assert len(pngs) == 260 and all(Image.open(p).size == (256, 256) for p in pngs)
    assert sorted(p.name for p in out.iterdir()) == [".sacd-fast.lock", "disc"]


# --------------------------------------------------------------------------- #
# Outputs a spreadsheet or a parser reads
# --------------------------------------------------------------------------- #


def test_formula_cells_are_escaped_in_every_csv(world, tmp_path, monkeypatch):
    import csv

    inputs = tmp_path / "=cmd"
    inputs.mkdir()
    for i, name in enumerate(["=1+1.png", "+2.png", "-3.png", "@SUM(A1).png"]):
        shutil.copy(world.images / f"00{i % 3}.png", inputs / name)
    monkeypatch.chdir(tmp_path)
    assert run_main(["predict", "--checkpoint", world.checkpoint, "--out", "p", "=cmd/=1+1.png", "=cmd/+2.png",
                     "=cmd/-3.png", "=cmd/@SUM(A1).png"]) == 0
    data = copy_data(world, tmp_path / "src")
    (data / "disc" / "test" / "crack").rename(data / "disc" / "test" / "=HYPERLINK(x)")
    (data / "disc" / "ground_truth" / "crack").rename(data / "disc" / "ground_truth" / "=HYPERLINK(x)")
    assert run_main(["eval", "--checkpoint", world.checkpoint, "--data", data, "--category", "disc", "--out", "e",
                     "--device", "cpu"]) == 0
    for table in (tmp_path / "p" / "scores.csv", tmp_path / "e" / "scores.csv"):
        rows = list(csv.DictReader(table.open()))
        cells = [c for row in rows for c in row.values()]
        assert not [c for c in cells if c and (c[0] in "=+@" or (c[0] == "-" and not c[1:2].isdigit()))], table
    assert {r["path"] for r in csv.DictReader((tmp_path / "p" / "scores.csv").open())} == {
        "'=cmd/=1+1.png", "'=cmd/+2.png", "'=cmd/-3.png", "'=cmd/@SUM(A1).png"}
    assert "'=HYPERLINK(x)" in {r["defect"] for r in csv.DictReader((tmp_path / "e" / "scores.csv").open())}


def test_non_finite_values_never_reach_json(tmp_path):
    from sacd_fast.evaluation.outputs import write_json

    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            write_json({"score": value}, tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


def test_a_model_that_gives_nan_maps_is_named_before_anything_is_written(world, tmp_path, monkeypatch, capsys):
    from sacd_fast.network.model import SACD as Model

    real = Model.anomaly_maps
    monkeypatch.setattr(Model, "anomaly_maps", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    assert run_main(predict_args(world, tmp_path / "p")) == 1
    assert "NaN or infinite anomaly maps for 3 of 3 images" in capsys.readouterr().err
    assert not (tmp_path / "p" / "scores.json").exists() and not (tmp_path / "p" / "heatmaps").exists()


# --------------------------------------------------------------------------- #
# Masks, images and folders as users bring them
# --------------------------------------------------------------------------- #


def mask_dataset(tmp_path: Path, name: str, mask: Image.Image) -> Path:
    folder = tmp_path / name / "p"
    for split in ("train/good", "test/good", "test/crack"):
        save_image(np.zeros((40, 40, 3), np.uint8), folder / split / "0.png")
    (folder / "ground_truth" / "crack").mkdir(parents=True)
    mask.save(folder / "ground_truth" / "crack" / "0_mask.png")
    return tmp_path / name


def test_colour_and_palette_masks_mark_their_defects(tmp_path):
    marked = np.zeros((40, 40), bool)
    marked[10:20, 5:30] = True
    red = np.zeros((40, 40, 3), np.uint8)
    red[marked] = (255, 0, 0)
    palette = Image.new("P", (40, 40))
    palette.putdata(marked.astype(np.uint8).ravel().tolist())
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1, the defect, is dark red
    grey = Image.fromarray(marked.astype(np.uint8) * 100)  # a grey that is below 127
    expected = AnomalyDataset(mask_dataset(tmp_path, "white", Image.fromarray(marked.astype(np.uint8) * 255)), "p",
                              "test", 32)[0]["mask"]
    assert expected.sum() > 0
    for name, mask in (("red", Image.fromarray(red)), ("palette", palette), ("grey", grey)):
        assert torch.equal(AnomalyDataset(mask_dataset(tmp_path, name, mask), "p", "test", 32)[0]["mask"],
                           expected), name


def test_empty_masks_are_reported_and_null_pixel_metrics_say_why(world, tmp_path, capsys):
    data = copy_data(world, tmp_path)
    for mask in (data / "disc" / "ground_truth").rglob("*.png"):
        save_image(np.zeros((256, 256), np.uint8), mask)
    assert run_main(["eval", "--checkpoint", world.checkpoint, "--data", data, "--category", "disc", "--out",
                     tmp_path / "e", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is None and len(metrics["empty_masks"]) == 5
    assert metrics["pixel_metrics_missing_because"] == "the masks of all 5 defect images mark no pixel"
    assert "no pixel metrics: the masks of all 5 defect images mark no pixel" in out


def test_images_between_pillows_limit_and_twice_it_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    save_image(np.zeros((30, 50, 3), np.uint8), tmp_path / "big.png")  # 1,500 pixels: Pillow only warns
    with pytest.raises(ValueError, match="big.png.*safety limit"):
        ImageFiles([tmp_path / "big.png"], 32).check(progress=False)


def test_predict_scores_the_images_of_subfolders_and_mirrors_them(world, tmp_path):
    for sub in ("line1", "line2/cam"):
        shutil.copytree(world.images, tmp_path / "in" / sub)
    out = tmp_path / "in" / "results"  # an output folder inside the inputs is not scored
    assert run_main(predict_args(world, out, tmp_path / "in")) == 0
    assert run_main(predict_args(world, out, tmp_path / "in")) == 0
    rows = json.loads((out / "scores.json").read_text())["images"]
    assert len(rows) == 6
    assert (out / "heatmaps" / "line1" / "000.png.png").is_file()
    assert (out / "heatmaps" / "line2" / "cam" / "002.png.png").is_file()


def test_a_missing_category_names_what_is_there_not_every_known_dataset(world, tmp_path, capsys):
    assert run_main(["train", "--data", world.data, "--category", "bottle", "--out", tmp_path / "out", *TRAIN]) == 1
    err = capsys.readouterr().err
    assert "category 'bottle' not found" in err and "the folders there: disc" in err and "carpet" not in err, err


# --------------------------------------------------------------------------- #
# Settings found wrong before work starts, and a calibration that cannot lose the run
# --------------------------------------------------------------------------- #


def test_an_offline_resnet_teacher_is_refused_before_the_images_are_read(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    checked = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(AnomalyDataset, "check", lambda self, progress=True: checked.append(1))
    argv = ["train", "--data", world.data, "--category", "disc", "--out", tmp_path / "out", "--image-size", "32",
            "--device", "cpu"]
    assert run_main(argv) == 1
    err = capsys.readouterr().err
    assert "could not download the wide_resnet50_2 ImageNet weights" in err and "efficientnet_lite0" in err, err
    assert not checked


def test_a_failed_calibration_keeps_the_trained_weights_and_the_rerun_calibrates(world, tmp_path, monkeypatch):
    from sacd_fast.training import train as training

    config, settings = SACDConfig("efficientnet_lite0", SIZE), TrainSettings(epochs=1, batch_size=4, device="cpu")
    real = training.calibrate
    monkeypatch.setattr(training, "calibrate", lambda *a, **k: (_ for _ in ()).throw(ValueError("scores lost")))
    with pytest.raises(ValueError, match="scores lost"):
        train_command(world.data, tmp_path / "run", config, settings, category="disc", progress=False)
    payload = load_checkpoint(tmp_path / "run" / "model.pt")
    assert payload["epoch"] == 1 and "thresholds" not in payload
    monkeypatch.setattr(training, "calibrate", real)
    train_command(world.data, tmp_path / "run", config, replace(settings, false_alarm_rate=0.2), category="disc",
                  progress=False)
    resumed = load_checkpoint(tmp_path / "run" / "model.pt")
    assert resumed["thresholds"]["false_alarm_rate"] == 0.2 and math.isfinite(resumed["thresholds"]["image"])
    for name, tensor in payload["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name


def test_the_command_line_answers_without_loading_torch():
    script = ("import sys\nfrom sacd_fast.cli import build_parser\n"
              "try:\n    build_parser().parse_args(['train', '--bogus'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert "unrecognized arguments: --bogus" in done.stderr or "required" in done.stderr
