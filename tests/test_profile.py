"""fvcore parameter and FLOP counts per part."""

import json

import pytest
from conftest import random_teacher_model

import sacd_fast
from sacd_fast.cli import main

pytest.importorskip("fvcore")

# docs/method.md, at 256²: multiply-adds (G) and parameters (M) per part.
SACD_MD = {"teacher": (12.0, 24.9), "ocbe": (7.3, 58.9), "decoder": (11.1, 24.9), "feacali": (9.1, 15.5)}


def test_wide_resnet_profile_agrees_with_the_specification():
    report = sacd_fast.profile(random_teacher_model("wide_resnet50_2", 256))
    assert set(report) == {"teacher", "ocbe", "decoder", "feacali", "total"}
    for part, (gflops, mparams) in SACD_MD.items():
        assert report[part]["flops"] / 1e9 == pytest.approx(gflops, rel=0.01), part
        assert report[part]["params"] / 1e6 == pytest.approx(mparams, abs=0.05), part
    assert report["total"]["flops"] == sum(report[p]["flops"] for p in SACD_MD)
    assert report["total"]["params"] == 124_152_064


def test_profile_scales_with_image_size():
    model = random_teacher_model("resnet18", 64)
    small, large = sacd_fast.profile(model, 64), sacd_fast.profile(model, 128)
    assert large["total"]["flops"] == pytest.approx(4 * small["total"]["flops"], rel=1e-6)
    assert large["total"]["params"] == small["total"]["params"]


def test_profile_command_prints_a_table(capsys):
    assert main(["profile", "--backbone", "resnet18", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "anomaly map" in out and "feacali" in out and "total" in out


def test_profile_command_turns_bench_rates_into_multiply_adds_per_second(tmp_path, capsys):
    """Read from a pytest-benchmark JSON: each case's params pick the model's flops."""
    cases = [("test_inference[fast-4-resnet18-64]", dict(backbone="resnet18", batch=4, size=64), 100.0),
             ("test_part[fast-resnet18-feacali-64]", dict(backbone="resnet18", part="feacali", size=64), 1000.0),
             ("test_part[fast-resnet18-teacher-128]", dict(backbone="resnet18", part="teacher", size=128), 5.0)]
    bench = {"benchmarks": [{"name": name, "params": {"provider": "fast", **params},
                             "extra_info": {"provider": "fast", "items_per_s": rate}} for name, params, rate in cases]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    assert main(["profile", "--backbone", "resnet18", "--image-size", "64",
                 "--bench-json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    report = sacd_fast.profile(random_teacher_model("resnet18", 64))
    feacali = f"{1000.0 * report['feacali']['flops'] / 1e12:.3f} T multiply-adds/s"
    assert f"test_part[fast-resnet18-feacali-64] fast: 1,000 images/s = {feacali}" in out
    assert "test_inference[fast-4-resnet18-64] fast: 100 images/s" in out
    assert "teacher-128" not in out  # another size
