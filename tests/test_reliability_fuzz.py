"""Every field of a checkpoint and of an exported file's metadata, mutated.

Each field of a ``.pt`` checkpoint (its format, config and thresholds, and
the records around them) and each ``sacd_fast.*`` metadata entry of an
``.onnx`` / OpenVINO ``.xml`` file (and the config and threshold fields
inside them) is set to NaN, infinity, a string, a list, a huge number, or
removed. ``sacd-fast predict`` on the result either works as before (the
value is one the field may hold: its outputs are then standard JSON), or
stops with exit code 1 and one line that names the file and the field,
having written nothing and changed nothing else.
"""

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sacd_fast.cli import main
from sacd_fast.commands import export_model
from sacd_fast.commands import train as train_command
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.deploy.export import METADATA_KEYS
from sacd_fast.evaluation.calibration import THRESHOLD_FIELDS
from sacd_fast.network.config import SACDConfig
from sacd_fast.checkpoint import TRAINING_FIELDS, load_checkpoint
from sacd_fast.settings import ExportSettings, TrainSettings

MISSING = object()
MUTATIONS = {"nan": math.nan, "inf": math.inf, "string": "text", "list": [1, 2], "huge": 10**30,
             "huger than a float": 10**400, "missing": MISSING}
CONFIG_FIELDS = [f"config.{name}" for name in SACDConfig.__dataclass_fields__]
PT_FIELDS = (["format", "config", "state_dict", "thresholds"] + CONFIG_FIELDS
             + [f"thresholds.{name}" for name in THRESHOLD_FIELDS] + list(TRAINING_FIELDS))
EXPORT_FIELDS = ([f"sacd_fast.{key}" for key in METADATA_KEYS] + [f"sacd_fast.{f}" for f in CONFIG_FIELDS]
                 + [f"sacd_fast.thresholds.{name}" for name in THRESHOLD_FIELDS])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_dataset(root / "data", "disc", seed=6, n_train=12, n_test_good=2, n_per_defect=0, progress=False)
    train_command(root / "data", root / "run", SACDConfig("efficientnet_lite0", 32),
                  TrainSettings(epochs=1, batch_size=4, device="cpu"), category="disc", progress=False)
    checkpoint = root / "run" / "model.pt"
    onnx = export_model(checkpoint, root / "onnx", ExportSettings(format="onnx"))
    xml = export_model(checkpoint, root / "openvino", ExportSettings(format="openvino"))
    return SimpleNamespace(root=root, checkpoint=checkpoint, onnx=onnx, xml=xml,
                           images=root / "data" / "disc" / "test" / "good")


def digests(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def mutate(record: dict, dotted: str, value) -> None:
    """Set (or with MISSING remove) ``record``'s field ``a.b`` in place."""
    *parents, name = dotted.split(".")
    for parent in parents:
        record = record[parent]
    if value is MISSING:
        record.pop(name, None)
    else:
        record[name] = value


def refused_by_name_or_working(files, model: Path, field: str, tmp_path: Path, capsys) -> None:
    before = digests(files.root)
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    code = main(["predict", "--checkpoint", str(model), "--out", str(out), "--device", "cpu", str(files.images)])
    err = capsys.readouterr().err
    assert digests(files.root) == before  # nothing else changed or lost
    if code == 0:  # a value the field may hold: standard JSON out
        json.loads((out / "scores.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        return
    assert code == 1, err
    line = err.strip().splitlines()[-1]  # one line, after any progress bars
    assert line.startswith("sacd-fast predict: error: ") and "Traceback" not in err, err
    assert str(model) in line and f"{field.split('.')[-1]}" in line, line
    assert not out.exists()  # refused on reading the file: no output at all


@settings(max_examples=60)
@given(field=st.sampled_from(PT_FIELDS), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_checkpoint_fields(field, mutation, files, tmp_path, capsys):
    payload = torch.load(files.checkpoint, weights_only=True)
    mutate(payload, field, MUTATIONS[mutation])
    path = tmp_path / f"{field}-{mutation}.pt"
    torch.save(payload, path)
    refused_by_name_or_working(files, path, field, tmp_path, capsys)


def mutated_metadata(entries: dict[str, str], field: str, value) -> dict[str, str]:
    """``entries`` with one entry, or one field of the JSON inside an entry, mutated."""
    entries = dict(entries)
    key, _, inner = field.removeprefix("sacd_fast.").partition(".")
    key = f"sacd_fast.{key}"
    if inner:
        record = json.loads(entries[key])
        mutate(record, inner.removeprefix("config."), value)
        entries[key] = json.dumps(record)
    elif value is MISSING:
        entries.pop(key)
    else:
        entries[key] = value if isinstance(value, str) else json.dumps(value)
    return entries


@settings(max_examples=40)
@given(field=st.sampled_from(EXPORT_FIELDS), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_onnx_metadata(field, mutation, files, tmp_path, capsys):
    import onnx

    proto = onnx.load(str(files.onnx))
    entries = mutated_metadata({p.key: p.value for p in proto.metadata_props}, field, MUTATIONS[mutation])
    del proto.metadata_props[:]
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    refused_by_name_or_working(files, path, field, tmp_path, capsys)


@settings(max_examples=12)
@given(field=st.sampled_from(EXPORT_FIELDS), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_openvino_metadata(field, mutation, files, tmp_path, capsys):
    from xml.etree import ElementTree

    tree = ElementTree.parse(files.xml)
    section = tree.getroot().find("rt_info/sacd_fast")
    entries = {f"sacd_fast.{e.tag}": e.get("value") for e in section}
    entries = mutated_metadata(entries, field, MUTATIONS[mutation])
    for element in list(section):
        if f"sacd_fast.{element.tag}" in entries:
            element.set("value", entries[f"sacd_fast.{element.tag}"])
        else:
            section.remove(element)
    folder = tmp_path / f"ov-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    tree.write(folder / "model.xml")
    shutil.copy(files.xml.with_suffix(".bin"), folder / "model.bin")
    refused_by_name_or_working(files, folder / "model.xml", field, tmp_path, capsys)


def test_the_unmutated_files_work(files, tmp_path, capsys):
    for model in (files.checkpoint, files.onnx, files.xml):
        refused_by_name_or_working(files, model, "none", tmp_path, capsys)
    assert load_checkpoint(files.checkpoint)["thresholds"]["image"] > 0


@pytest.mark.parametrize("entry,value,text", [
    ("sacd_fast.batch", "4", "its graph takes 'image' [1, 3, 32, 32]"),
    ("sacd_fast.image_size", "64", "contradict its config"),
    ("sacd_fast.backbone", "resnet18", "contradict its config"),
    ("sacd_fast.config", None, "its graph takes 'image' [1, 3, 32, 32]"),
    ("sacd_fast.normalization", json.dumps({"mean": [0.5] * 3, "std": [0.5] * 3, "range": [0, 1]}), "ImageNet"),
])
def test_onnx_metadata_that_contradicts_the_graph(entry, value, text, files, tmp_path):
    import onnx

    from sacd_fast.deploy.export import Inferencer

    proto = onnx.load(str(files.onnx))
    props = {p.key: p for p in proto.metadata_props}
    if entry == "sacd_fast.config":  # the image_size entry agrees with the edited config, the graph does not
        value = json.dumps({**json.loads(props[entry].value), "image_size": 64})
        props["sacd_fast.image_size"].value = "64"
    props[entry].value = value
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=str(path)) as raised:
        Inferencer(path)
    assert text in str(raised.value)
