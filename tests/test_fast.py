"""The drop-in fast model."""


import pytest
import torch
from conftest import random_teacher_model, requires_cuda

import sacd_fast
from sacd_fast import SACD
from sacd_fast.deploy.fast import CPU_BOUNDS
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import fit


def test_fast_model_on_cpu_picks_a_proven_backend_and_keeps_the_api(tmp_path):
    """On a CPU the fast model times every installed backend on its first batch
    and keeps the fastest one that agrees with eager fp32 within its bound;
    later batches, of other sizes too, go through that backend."""
    model = random_teacher_model("resnet18", 64)
    fit(model, torch.rand(4, 3, 64, 64), TrainSettings(epochs=1, batch_size=2), checkpoint=tmp_path / "m.pt",
        progress=False)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    expected = model.predict(x)
    for dtype in (torch.bfloat16, torch.float32):
        fast = sacd_fast.fast(SACD.from_checkpoint(tmp_path / "m.pt"), dtype=dtype)
        out = fast.predict(x)
        assert fast.config == model.config
        report = fast.cpu_report
        assert report["eager-fp32"]["within_bound"] and fast.cpu_backend in report
        chosen = report[fast.cpu_backend]
        assert chosen["within_bound"] and chosen["seconds"] == min(
            r["seconds"] for r in report.values() if r.get("within_bound"))
        if dtype == torch.float32:
            assert all(r["precision"] == "fp32" for r in report.values())
        scale = float(expected.maps.max() - expected.maps.median())  # no thresholds: the maps' own range
        bound = CPU_BOUNDS[chosen["precision"]] * scale
        assert chosen["bound"] == pytest.approx(bound) and float((out.maps - expected.maps).abs().max()) <= bound
        later = fast.predict(x[:1])
        assert later.maps.shape == (1, 64, 64) and float((later.maps - expected.maps[:1]).abs().max()) <= bound
    assert {"onnxruntime-fp32", "openvino-fp32"} <= set(report)  # the deploy extra is installed in CI
    loaded = sacd_fast.fast(SACD.from_checkpoint(tmp_path / "m.pt"))
    assert isinstance(loaded, sacd_fast.FastSACD)
    with pytest.raises(ValueError, match="multiples of 32"):
        loaded.predict(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="dtype"):
        sacd_fast.fast(model, dtype=torch.int8)


@pytest.mark.parametrize("fault", ["maps off by 30% of the decision scale", "one image decided otherwise"])
def test_the_cpu_check_refuses_a_wrong_backend(fault, monkeypatch):
    """A backend whose maps are off by 30% of the model's decision scale (the threshold's distance from
    the median normal score; the old bound, 6% of max(1, the largest map value), let it through), or whose
    scores differ by a hair that moves one image across the threshold, is refused however fast it is."""
    from sacd_fast.deploy import fast as fast_module

    model = random_teacher_model("resnet18", 64).eval()
    x = torch.randn(4, 3, 64, 64)
    expected = model.predict(x)
    ordered = expected.scores.sort().values
    threshold = float(ordered[1] + ordered[2]) / 2  # two images below, two above
    thresholds = Thresholds(image=threshold, normal_level=0.0, score_median=float(expected.maps.median()),
                            method="test")
    scale = thresholds.image - thresholds.score_median
    if fault.startswith("maps"):
        wrong = (expected.scores + 0.3 * scale, expected.maps + 0.3 * scale)
    else:
        nudged = expected.scores.clone()
        nudged[expected.scores.argsort()[2]] = threshold - 1e-6  # within any bound, on the other side
        wrong = (nudged, expected.maps)
    real = fast_module._cpu_candidates
    monkeypatch.setattr(fast_module, "_cpu_candidates", lambda *args: {
        "eager-fp32": real(*args)["eager-fp32"], "wrong-bf16": ("bf16", lambda: lambda images: wrong)})
    fast = sacd_fast.fast(model, thresholds=thresholds)
    out = fast.predict(x)
    report = fast.cpu_report["wrong-bf16"]
    assert not report["within_bound"] and fast.cpu_backend == "eager-fp32"
    if fault.startswith("maps"):
        assert report["max_error"] > report["bound"] == pytest.approx(CPU_BOUNDS["bf16"] * scale)
        assert report["max_error"] < CPU_BOUNDS["bf16"] * max(1.0, float(expected.maps.abs().max()))  # old bound
    else:
        assert report["max_error"] <= report["bound"] and not report["same_decisions"]
    torch.testing.assert_close(out.maps, expected.maps)


def test_compiled_fast_model_pads_small_batches_to_a_compiled_size():
    """The compiled path (CUDA) compiles one graph per batch size; smaller batches
    are padded up to one. Checked here with the graph replaced by the eager function."""
    model = random_teacher_model("resnet18", 64).eval()
    fast = sacd_fast.fast(model)
    fast.on_cuda = fast.compiled = True  # the CUDA path's batching, run on the CPU
    sizes = []
    fast._run = lambda x: sizes.append(x.shape[0]) or fast._scores_and_maps(x)
    for batch in (4, 2, 4, 6, 3, 5):
        x = torch.randn(batch, 3, 64, 64)
        out = fast.predict(x)
        expected = model.predict(x)
        assert out.maps.shape == (batch, 64, 64) and out.scores.shape == (batch,)
        torch.testing.assert_close(out.maps, expected.maps, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.scores, expected.scores, rtol=0, atol=1e-5)
    assert sizes == [4, 4, 4, 6, 4, 6]


@requires_cuda
def test_fast_model_cuda_matches_the_fp32_reference(monkeypatch):
    """Against an independent reference: the eager model in fp32 through the reference ops (no Triton kernel
    on that side), TF32 off. bf16 bound: maps within 1% in relative L2 norm, scores within 2% of the largest."""
    model = random_teacher_model("wide_resnet50_2", 256).cuda().eval()
    x = torch.randn(16, 3, 256, 256, device="cuda")
    monkeypatch.setenv("SACD_DISABLE_TRITON", "1")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = model.predict(x)
    monkeypatch.delenv("SACD_DISABLE_TRITON")
    fast = sacd_fast.fast(model)
    out = fast.predict(x)
    relative = (out.maps - expected.maps).norm() / expected.maps.norm()
    assert relative <= 1e-2
    assert float((out.scores - expected.scores).abs().max()) <= 2e-2 * float(expected.scores.abs().max())
    kept = out.maps.clone()
    for _ in range(3):  # replays of the captured graph leave earlier results alone
        fast.predict(torch.randn_like(x))
    assert torch.equal(out.maps, kept)
    part = fast.predict(x[:5])  # padded to the captured batch of 16
    assert part.maps.shape == (5, 256, 256)
    assert (part.maps - expected.maps[:5]).norm() / expected.maps[:5].norm() <= 1e-2
