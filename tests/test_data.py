"""Dataset layouts, image modes, masks and the errors that name bad data."""

import numpy as np
import pytest
import torch
from PIL import Image

from sacd_fast.data.datasets import AnomalyDataset, ImageFiles
from sacd_fast.evaluation.scoring import Predictions, evaluate_predictions

rng = np.random.default_rng(0)


def rgb(h=40, w=50):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_mvtec(root, category="bottle", masks=True):
    folder = root / category
    for i in range(3):
        save(rgb(), folder / "train" / "good" / f"{i:03d}.png")
    save(rgb(), folder / "test" / "good" / "000.png")
    save(rgb(), folder / "test" / "crack" / "000.png")
    save(rgb(), folder / "test" / "dent" / "000.png")  # a class without masks
    if masks:
        mask = np.zeros((40, 50), np.uint8)
        mask[5:15, 10:30] = 255
        mask[30:35, 0:5] = 100  # below the > 127 cut: not defect
        save(Image.fromarray(mask), folder / "ground_truth" / "crack" / "000_mask.png")
    return folder


def test_mvtec_layout_items(tmp_path):
    make_mvtec(tmp_path)
    train = AnomalyDataset(tmp_path, "bottle", "train", image_size=32)
    assert len(train) == 3
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1 and item["label"] == 0

    test = AnomalyDataset(tmp_path, "bottle", "test", image_size=40)
    by_defect = {test[i]["defect"]: test[i] for i in range(len(test))}
    assert set(by_defect) == {"good", "crack", "dent"}
    crack = by_defect["crack"]
    assert crack["label"] == 1 and crack["has_mask"]
    assert set(crack["mask"].unique().tolist()) == {0.0, 1.0}
    expected = np.zeros((40, 50), bool)
    expected[5:15, 10:30] = True
    resized = np.asarray(Image.fromarray(expected.astype(np.uint8) * 255).resize((40, 40), Image.NEAREST)) > 0
    assert np.array_equal(crack["mask"][0].numpy() > 0.5, resized)
    assert not by_defect["dent"]["has_mask"] and by_defect["good"]["has_mask"]

    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=3)))
    assert batch["image"].shape == (3, 3, 40, 40) and batch["mask"].shape == (3, 1, 40, 40)


def test_report_names_classes_without_masks(tmp_path):
    make_mvtec(tmp_path)
    test = AnomalyDataset(tmp_path, "bottle", "test", image_size=32)
    items = [test[i] for i in range(len(test))]
    result = Predictions(label=np.array([it["label"] for it in items]), scores=np.array([0.9, 0.8, 0.1]),
                         has_mask=np.array([it["has_mask"] for it in items]),
                         mask=np.stack([it["mask"][0].numpy() for it in items]),
                         maps=np.stack([it["mask"][0].numpy() for it in items]),
                         defect=np.array([it["defect"] for it in items]), path=np.array([it["path"] for it in items]))
    report = evaluate_predictions(result)
    assert report["pixel_metrics_skipped_for"] == ["dent"]
    assert report["pixel_auroc"] == pytest.approx(1.0) and report["image_auroc"] == pytest.approx(1.0)


def test_btad_and_generic_layouts(tmp_path):
    btad = tmp_path / "btad" / "01"
    for i in range(2):
        save(rgb(), btad / "train" / "ok" / f"{i:04d}.bmp")
    save(rgb(), btad / "test" / "ok" / "0000.bmp")
    save(rgb(), btad / "test" / "ko" / "0001.bmp")
    save(Image.fromarray(np.full((40, 50), 255, np.uint8)), btad / "ground_truth" / "ko" / "0001.png")
    test = AnomalyDataset(tmp_path / "btad", "01", "test", image_size=32)
    labels = {test[i]["defect"]: (test[i]["label"], test[i]["has_mask"]) for i in range(2)}
    assert labels == {"ok": (0, True), "ko": (1, True)}
    ko = [test[i] for i in range(2) if test[i]["defect"] == "ko"][0]
    assert float(ko["mask"].mean()) == 1.0

    generic = tmp_path / "mine"
    save(rgb(), generic / "train" / "good" / "a.jpg")
    assert len(AnomalyDataset(generic, None, "train", image_size=32)) == 1


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (30, 20), dtype=np.uint16))
    else:
        image = rgb(30, 20).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    image.save(path)
    item = ImageFiles([path], image_size=32)[0]
    assert item["image"].shape == (3, 32, 32)
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    if mode == "I;16":  # 16-bit data is scaled, not clipped: a mid-grey stays mid-grey
        assert 0.3 < float(item["image"].mean()) < 0.7


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        AnomalyDataset(tmp_path / "nope", "bottle")
    make_mvtec(tmp_path)
    with pytest.raises(FileNotFoundError, match="category 'screw' not found.*the folders there: bottle$"):
        AnomalyDataset(tmp_path, "screw")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in .*empty/train/good"):
        AnomalyDataset(tmp_path, "empty", "train")
    (tmp_path / "bottle" / "train" / "good" / "001.png").write_bytes(b"\x89PNG broken")
    train = AnomalyDataset(tmp_path, "bottle", "train", image_size=32)
    with pytest.raises(ValueError, match="cannot read image .*001.png"):
        train[1]
    save(Image.new("L", (40, 50)), tmp_path / "bottle" / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(ValueError, match="mask .*007_mask.png has no image test/crack/007"):
        AnomalyDataset(tmp_path, "bottle", "test")
    (tmp_path / "bottle" / "ground_truth" / "crack" / "007_mask.png").unlink()
    save(Image.new("L", (10, 10)), tmp_path / "bottle" / "ground_truth" / "crack" / "000_mask.png")
    test = AnomalyDataset(tmp_path, "bottle", "test", image_size=32)
    crack = [i for i, s in enumerate(test.samples) if s.defect == "crack"][0]
    with pytest.raises(ValueError, match="mask .*000_mask.png is 10x10 but its image .*000.png is 50x40"):
        test[crack]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ImageFiles([tmp_path / "missing.png"], 32)
