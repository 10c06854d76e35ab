"""ONNX and OpenVINO export: the whole pipeline in one file, parity with the
PyTorch model, the metadata a consumer needs, and errors that name the file.
(The demo's trained model is exported and evaluated in tests/test_demo.py.)"""

import builtins
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_teacher_model

from sacd_fast import SACD, normalize
from sacd_fast.cli import main
from sacd_fast.data.datasets import AnomalyDataset
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.deploy.export import Inferencer, export
from sacd_fast.deploy.graph import OPERATORS, OPSET

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

FP32_ATOL = 1e-4  # maps, absolute, float32 exports against the PyTorch model
FP16_ATOL = 5e-2  # maps, absolute, float16 weights and compute (the bound stated in the README)
THRESHOLDS = Thresholds(image=0.5, normal_level=0.1, score_median=0.3, method="test")


@pytest.fixture(scope="module", params=["resnet18", "efficientnet_lite0", "wide_resnet50_2"])
def model(request):
    """Lite0 with its real ImageNet teacher; the ResNets' weights are not to be had offline:
    random ones (a random Lite0's dead ReLU6 channels make InstanceNorm ill-conditioned)."""
    torch.manual_seed(0)
    if request.param == "efficientnet_lite0":
        return SACD("efficientnet_lite0", teacher_weights="imagenet", image_size=64).eval()
    return random_teacher_model(request.param, 64).eval()


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    """Images of the demo's generated product (normal and defective)."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "disc", seed=7, n_train=1, n_test_good=3, n_per_defect=1, progress=False)
    test = AnomalyDataset(root, "disc", "test", 64)
    return normalize(torch.stack([test[i]["image"] for i in range(len(test))]))


def images(demo_images, n, seed=0):
    return demo_images[torch.randperm(len(demo_images), generator=torch.Generator().manual_seed(seed))[:n]]


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_exported_pipeline_matches_pytorch(model, format, demo_images, tmp_path):
    path = export(model, tmp_path / "m", format, batch=None, thresholds=THRESHOLDS)
    inferencer = Inferencer(path)
    assert inferencer.config.image_size == 64 and inferencer.thresholds == THRESHOLDS
    for n in (1, 3):  # a dynamic batch takes any size
        x = images(demo_images, n, seed=n)
        expected = model.predict(x)
        out = inferencer.predict(x)
        assert out.maps.shape == (n, 64, 64) and out.scores.shape == (n,)
        torch.testing.assert_close(out.maps, expected.maps, rtol=0, atol=FP32_ATOL)
        torch.testing.assert_close(out.scores, expected.scores, rtol=0, atol=FP32_ATOL)
        assert torch.equal(out.scores > 0.5, expected.scores > 0.5)


def test_onnx_file_is_checked_named_and_self_describing(model, tmp_path):
    path = export(model, tmp_path / "m", "onnx", batch=2, thresholds=THRESHOLDS)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["scores", "maps"]
    assert proto.opset_import[0].version == OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["sacd_fast.image_size"] == "64" and meta["sacd_fast.batch"] == "2"
    assert json.loads(meta["sacd_fast.thresholds"])["image"] == 0.5
    assert json.loads(meta["sacd_fast.config"])["backbone"] == model.config.backbone
    ops = {node.op_type for node in proto.graph.node}
    assert {"Conv", "InstanceNormalization", "Resize", "Gather", "ReduceMax"} <= ops
    assert ops <= set(OPERATORS), f"operators outside the contract: {sorted(ops - set(OPERATORS))}"


@pytest.mark.parametrize("options", [{"map_mode": "mul", "map_border": 1}, {"feacali_norm_last": False}])
def test_every_export_holds_only_the_listed_operators(options, tmp_path):
    """Other map settings, a dynamic batch and fp16: still only :data:`OPERATORS` (batch norms folded,
    no shape arithmetic), and the README lists exactly those."""
    torch.manual_seed(0)
    model = random_teacher_model("resnet18", 64, **options).eval()
    for batch, precision in ((None, "fp32"), (3, "fp16")):
        proto = onnx.load(str(export(model, tmp_path / "m", "onnx", batch=batch, precision=precision)))
        ops = {node.op_type for node in proto.graph.node}
        assert ops <= set(OPERATORS), f"operators outside the contract: {sorted(ops - set(OPERATORS))}"
        assert ("Cast" in ops) == (precision == "fp16")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    listed = re.search(r"only these operators: ([^.]+)\.", " ".join(readme.split())).group(1)
    assert set(re.findall(r"\b[A-Z][A-Za-z]+\b", listed)) == set(OPERATORS)


def test_fixed_batch_files_take_other_batches_in_slices(model, demo_images, tmp_path):
    inferencer = Inferencer(export(model, tmp_path / "m", "openvino", batch=2, thresholds=THRESHOLDS))
    x = images(demo_images, 5)
    torch.testing.assert_close(inferencer.predict(x).maps, model.predict(x).maps, rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_fp16_export_stays_within_its_bound(format, demo_images, tmp_path):
    model = SACD("efficientnet_lite0", teacher_weights="imagenet", image_size=64).eval()
    x = images(demo_images, 2)
    try:
        inferencer = Inferencer(export(model, tmp_path / "m", format, batch=None, precision="fp16",
                                       thresholds=THRESHOLDS))
        out = inferencer.predict(x)
    except Exception as e:  # a runtime without float16 kernels on this CPU says so
        if format == "onnx" and "NOT_IMPLEMENTED" in str(e):
            pytest.skip(f"ONNX Runtime's CPU provider has no float16 kernel here: {str(e)[:120]}")
        raise
    torch.testing.assert_close(out.maps, model.predict(x).maps, rtol=0, atol=FP16_ATOL)


def test_bad_files_and_shapes_are_named(tmp_path, monkeypatch):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx is not an ONNX model"):
        Inferencer(tmp_path / "junk.onnx")
    (tmp_path / "junk.xml").write_text("<nope/>")
    with pytest.raises(ValueError, match="junk.xml is not an OpenVINO model"):
        Inferencer(tmp_path / "junk.xml")
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["maps"])], "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("maps", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(plain, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="other.onnx was not exported by sacd_fast"):
        Inferencer(tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="expected a .pt checkpoint"):
        (tmp_path / "m.h5").write_bytes(b"")
        Inferencer(tmp_path / "m.h5")
    model = random_teacher_model("efficientnet_lite0", 64).eval()
    inferencer = Inferencer(export(model, tmp_path / "m", "onnx", batch=None, thresholds=THRESHOLDS))
    with pytest.raises(ValueError, match=r"takes \(B, 3, 64, 64\) images, got \(1, 3, 96, 96\)"):
        inferencer.predict(torch.zeros(1, 3, 96, 96))
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "openvino" else real_import(name, *a, **k))
    with pytest.raises(ImportError, match=r"pip install \"sacd_fast\[deploy\]\""):
        export(model, tmp_path / "m2", "openvino")


def test_cli_export_then_predict_with_the_exported_file(tmp_path, capsys):
    write_dataset(tmp_path / "data", "disc", seed=2, n_train=12, n_test_good=2, n_per_defect=1, progress=False)
    common = ["--data", str(tmp_path / "data"), "--category", "disc", "--device", "cpu", "--batch-size", "4"]
    assert main(["train", *common, "--out", str(tmp_path / "run"), "--backbone", "efficientnet_lite0",
                 "--epochs", "1", "--image-size", "64"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "x"), "--dynamic-batch"]) == 0
    folder = tmp_path / "data" / "disc" / "test" / "crack"
    for checkpoint, out in ((tmp_path / "run" / "model.pt", "a"), (tmp_path / "x" / "model.onnx", "b")):
        assert main(["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / out), str(folder)]) == 0
    rows = [json.loads((tmp_path / out / "scores.json").read_text())["images"] for out in "ab"]
    assert [r["anomalous"] for r in rows[0]] == [r["anomalous"] for r in rows[1]]
    assert np.allclose([r["score"] for r in rows[0]], [r["score"] for r in rows[1]], atol=FP32_ATOL)
    reports = []
    for checkpoint, out in ((tmp_path / "run" / "model.pt", "ea"), (tmp_path / "x" / "model.onnx", "eb")):
        assert main(["eval", "--checkpoint", str(checkpoint), *common, "--out", str(tmp_path / out)]) == 0
        reports.append(json.loads((tmp_path / out / "metrics.json").read_text()))
    assert reports[0]["image_auroc"] == reports[1]["image_auroc"]
    assert reports[0]["at_threshold"] == reports[1]["at_threshold"]
    assert abs(reports[0]["pixel_auroc"] - reports[1]["pixel_auroc"]) <= 1e-4
