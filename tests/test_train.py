"""Training loop, atomic checkpoints and exact resume."""

import gzip
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import random_teacher_model
from torch.utils.data import Dataset

from sacd_fast import SACD, SACDConfig, normalize
from sacd_fast.cpu import native_bf16
from sacd_fast.deploy.inference import load_for_inference
from sacd_fast.training import train as training
from sacd_fast.checkpoint import load_checkpoint, save_checkpoint
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import build_optimizer, fit, held_out_losses, kept_epoch, train_step

DATA = Path(__file__).parent / "data"

SETTINGS = TrainSettings(epochs=2, batch_size=3, seed=3)


class Images(Dataset):
    """Random images; raises KeyboardInterrupt at the ``fail_at``-th read."""

    def __init__(self, n=7, size=64, fail_at=None):
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        self.fail_at, self.reads = fail_at, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.fail_at:
            raise KeyboardInterrupt
        return {"image": self.images[i]}


def fresh_model():
    torch.manual_seed(11)
    return random_teacher_model("resnet18", 64)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    straight = fresh_model()
    history = fit(straight, Images(), SETTINGS, checkpoint=tmp_path / "a.pt", progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["total"] < history[0]["total"]

    interrupted = fresh_model()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, Images(fail_at=10), SETTINGS, checkpoint=tmp_path / "b.pt", progress=False)
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    resumed = fresh_model()
    resumed_history = fit(resumed, Images(), SETTINGS, checkpoint=tmp_path / "b.pt", progress=False)
    assert resumed_history == history
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]  # no temporary files left


def test_resume_refuses_a_different_config(tmp_path):
    fit(fresh_model(), Images(), TrainSettings(epochs=1, batch_size=4), checkpoint=tmp_path / "m.pt",
        progress=False)
    other = random_teacher_model("resnet18", 64, lambda_intra=0.5)
    with pytest.raises(ValueError, match="lambda_intra: checkpoint 0.2 != requested 0.5"):
        fit(other, Images(), TrainSettings(epochs=2, batch_size=4), checkpoint=tmp_path / "m.pt")
    with pytest.raises(ValueError, match="lr: checkpoint 0.005 != requested 0.001"):
        fit(fresh_model(), Images(), TrainSettings(epochs=2, batch_size=4, lr=0.001),
            checkpoint=tmp_path / "m.pt")


def test_resume_refuses_another_precision_and_records_the_one_computed_in(tmp_path, monkeypatch):
    """The checkpoint records what the run computed in: "bf16" only where bf16
    autocast ran (native bf16, here made so); a resume in the other is refused."""
    settings = TrainSettings(epochs=1, batch_size=4, precision="bf16")
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    fit(fresh_model(), Images(), settings, checkpoint=tmp_path / "a.pt", progress=False)
    assert load_checkpoint(tmp_path / "a.pt")["precision"] == "fp32"  # no native bf16: it trained in fp32
    monkeypatch.setattr(training, "native_bf16", lambda: True)
    fit(fresh_model(), Images(), settings, checkpoint=tmp_path / "b.pt", progress=False)
    assert load_checkpoint(tmp_path / "b.pt")["precision"] == "bf16"
    longer = TrainSettings(epochs=2, batch_size=4, precision="bf16")
    with pytest.raises(ValueError, match="trained in fp32 and this run computes in bf16"):
        fit(fresh_model(), Images(), longer, checkpoint=tmp_path / "a.pt", progress=False)
    with pytest.raises(ValueError, match="trained in bf16 and this run computes in fp32"):
        fit(fresh_model(), Images(), replace(longer, precision="fp32"), checkpoint=tmp_path / "b.pt", progress=False)
    assert len(fit(fresh_model(), Images(), longer, checkpoint=tmp_path / "b.pt", progress=False)) == 2


def test_from_checkpoint_restores_predictions(tmp_path):
    model = fresh_model()
    fit(model, Images(), TrainSettings(epochs=1, batch_size=4), checkpoint=tmp_path / "m.pt", progress=False)
    restored = SACD.from_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.predict(x).maps, restored.predict(x).maps)


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        SACD.from_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable checkpoint"):
        SACD.from_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sacd_fast checkpoint"):
        SACD.from_checkpoint(tmp_path / "other.pt")
    model = fresh_model()
    state = model.state_dict()
    state.pop("decoder.layer1.0.bn1.weight")
    save_checkpoint({"config": model.config.to_dict(), "state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing tensors: 1 \(decoder\.layer1\.0\.bn1\.weight\)$"):
        SACD.from_checkpoint(tmp_path / "partial.pt")
    lite0, lite2 = (random_teacher_model(backbone, 64) for backbone in ("efficientnet_lite0", "efficientnet_lite2"))
    save_checkpoint({"config": lite0.config.to_dict(), "state_dict": lite2.state_dict()}, tmp_path / "lite2.pt")
    with pytest.raises(ValueError) as refused:
        SACD.from_checkpoint(tmp_path / "lite2.pt")
    message = str(refused.value)
    assert "lite2.pt does not match SACD(" in message and len(message) < 1000, message
    assert "unexpected tensors: 72 (teacher._blocks.11._expand_conv.weight, " in message
    assert "tensors of another shape: " in message and "where the model has" in message


def scripted_held_out_losses(monkeypatch, totals):
    """Make the held-out loss of epoch e be ``totals[e - 1]``; returns the
    weights the model had when each epoch was scored."""
    weights = []

    def fake(model, *args, **kwargs):
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        total = totals[len(weights) - 1]
        return {"total": total, "kd": total, "intra": 0.0}

    monkeypatch.setattr(training, "held_out_losses", fake)
    return weights


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_epoch_with_the_lowest_held_out_loss_is_kept_and_the_last_one_resumed(tmp_path, monkeypatch):
    """Epoch 2 scores best of 3: the model ends with its weights, the checkpoint
    holds them as the model and epoch 3's as the weights to continue from, and
    extending the run to 4 epochs (epoch 4 scoring best) ends exactly where an
    uninterrupted 4-epoch run does."""
    totals = [0.5, 0.3, 0.4, 0.2]
    settings = TrainSettings(epochs=3, batch_size=3, seed=3)
    scored = scripted_held_out_losses(monkeypatch, totals)
    model = fresh_model()
    history = fit(model, Images(), settings, checkpoint=tmp_path / "m.pt", progress=False, validation=Images(n=4))
    assert [h["held_out_total"] for h in history] == totals[:3] and kept_epoch(history) == 2
    assert not torch.equal(scored[1]["decoder.layer1.0.conv1.weight"], scored[2]["decoder.layer1.0.conv1.weight"])
    assert_same_weights(model.state_dict(), scored[1])
    payload = load_checkpoint(tmp_path / "m.pt")
    assert_same_weights(payload["state_dict"], scored[1])
    assert_same_weights(payload["last_state_dict"], scored[2])
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(SACD.from_checkpoint(tmp_path / "m.pt").predict(x).maps, model.predict(x).maps)

    extended = fresh_model()
    scored_after = scripted_held_out_losses(monkeypatch, totals[3:])
    extended_history = fit(extended, Images(), TrainSettings(epochs=4, batch_size=3, seed=3),
                           checkpoint=tmp_path / "m.pt", progress=False, validation=Images(n=4))
    straight = fresh_model()
    scripted_held_out_losses(monkeypatch, totals)
    straight_history = fit(straight, Images(), TrainSettings(epochs=4, batch_size=3, seed=3), progress=False,
                           validation=Images(n=4))
    assert extended_history == straight_history and kept_epoch(straight_history) == 4
    assert_same_weights(extended.state_dict(), straight.state_dict())
    assert_same_weights(extended.state_dict(), scored_after[0])
    assert "last_state_dict" not in load_checkpoint(tmp_path / "m.pt")


def test_a_time_budget_ends_the_run_at_the_last_epoch_that_fits(tmp_path, monkeypatch):
    """Each epoch takes 10 s of a scripted clock (its held-out scoring advances
    it). With 25 s and 5 epochs asked for, epoch 2 ends at 20 s and a third
    would end at 30 s: the run ends after 2, finalised, with the kept epoch's
    weights. A rerun with a budget finds it finished; one without trains on,
    and ends exactly where a straight 3-epoch run does."""
    now = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: now[0])

    def ten_second_epochs(totals):
        scored = scripted_held_out_losses(monkeypatch, totals)
        scripted = training.held_out_losses

        def held_out(*args, **kwargs):
            now[0] += 10
            return scripted(*args, **kwargs)

        monkeypatch.setattr(training, "held_out_losses", held_out)
        return scored

    scored = ten_second_epochs([0.3, 0.5, 0.4])
    common = dict(checkpoint=tmp_path / "m.pt", progress=False, validation=Images(n=4))
    model = fresh_model()
    history = fit(model, Images(), TrainSettings(epochs=5, batch_size=3, seed=3, time_budget=25), **common)
    assert [h["epoch"] for h in history] == [1, 2] and kept_epoch(history) == 1
    payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == 2 and payload["settings"]["epochs"] == 2 and payload["thresholds"]["image"] > 0
    assert_same_weights(model.state_dict(), scored[0])

    again = fit(fresh_model(), Images(), TrainSettings(epochs=5, batch_size=3, seed=3, time_budget=25), **common)
    assert again == history and len(scored) == 2  # nothing trained or scored

    extended = fresh_model()
    extended_history = fit(extended, Images(), TrainSettings(epochs=3, batch_size=3, seed=3), **common)
    scripted_held_out_losses(monkeypatch, [0.3, 0.5, 0.4])
    straight = fresh_model()
    assert fit(straight, Images(), TrainSettings(epochs=3, batch_size=3, seed=3), progress=False,
               validation=Images(n=4)) == extended_history
    assert_same_weights(extended.state_dict(), straight.state_dict())

    ten_second_epochs([0.3])
    short = fit(fresh_model(), Images(), TrainSettings(epochs=5, batch_size=3, seed=3, time_budget=1),
                progress=False, validation=Images(n=4))
    assert len(short) == 1  # the first epoch always runs
    with pytest.raises(ValueError, match="time_budget must be > 0 seconds, got 0"):
        replace(SETTINGS, time_budget=0)


def test_patience_ends_the_run_once_the_held_out_loss_stops_falling(tmp_path, monkeypatch):
    """Epoch 2 scores best and epochs 3 and 4 do not beat it: with patience 2
    and 6 epochs asked for, the run ends after 4, finalised, with epoch 2's
    weights. A rerun with patience 2 finds it finished; one with patience 3
    trains on (epochs 5 and 6 score lower) and ends exactly where a straight
    run with patience 3 does."""
    totals = [0.5, 0.3, 0.4, 0.35, 0.2, 0.1]
    settings = TrainSettings(epochs=6, batch_size=3, seed=3)
    common = dict(checkpoint=tmp_path / "m.pt", progress=False, validation=Images(n=4))
    scored = scripted_held_out_losses(monkeypatch, totals)
    model = fresh_model()
    history = fit(model, Images(), replace(settings, patience=2), **common)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and kept_epoch(history) == 2
    payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == 4 and payload["settings"]["epochs"] == 4 and payload["thresholds"]["image"] > 0
    assert_same_weights(model.state_dict(), scored[1])

    assert fit(fresh_model(), Images(), replace(settings, patience=2), **common) == history and len(scored) == 4

    extended = fresh_model()
    scripted_held_out_losses(monkeypatch, totals[4:])
    extended_history = fit(extended, Images(), replace(settings, patience=3), **common)
    assert [h["epoch"] for h in extended_history] == [1, 2, 3, 4, 5, 6] and kept_epoch(extended_history) == 6
    scripted_held_out_losses(monkeypatch, totals)
    straight = fresh_model()
    assert fit(straight, Images(), replace(settings, patience=3), progress=False,
               validation=Images(n=4)) == extended_history
    assert_same_weights(extended.state_dict(), straight.state_dict())

    with pytest.raises(ValueError, match="patience needs held-out images"):
        fit(fresh_model(), Images(), replace(SETTINGS, patience=2))
    with pytest.raises(ValueError, match="patience must be >= 1, got 0"):
        replace(SETTINGS, patience=0)


def test_an_interrupted_run_with_held_out_images_resumes_exactly(tmp_path):
    validation = Images(n=4)
    straight = fresh_model()
    history = fit(straight, Images(), SETTINGS, checkpoint=tmp_path / "a.pt", progress=False, validation=validation)
    assert all(h["held_out_total"] == pytest.approx(h["held_out_kd"] + 0.2 * h["held_out_intra"]) for h in history)
    interrupted = fresh_model()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, Images(fail_at=10), SETTINGS, checkpoint=tmp_path / "b.pt", progress=False,
            validation=validation)
    resumed = fresh_model()
    assert fit(resumed, Images(), SETTINGS, checkpoint=tmp_path / "b.pt", progress=False,
               validation=validation) == history
    assert_same_weights(resumed.state_dict(), straight.state_dict())
    with pytest.raises(ValueError, match="trained with held-out images and this run has none"):
        fit(fresh_model(), Images(), TrainSettings(epochs=3, batch_size=3, seed=3), checkpoint=tmp_path / "a.pt")


def test_the_held_out_loss_is_the_eval_mode_loss_on_fixed_synthetic_copies():
    """The same value on every call (seeds fixed), computed with BatchNorm's
    running statistics (eval mode), and the model's mode left as it was."""
    from sacd_fast.data.synthesis import synthesize

    model = fresh_model().train()
    images = Images(n=5)
    settings = TrainSettings(batch_size=2, seed=4)
    first = held_out_losses(model, images, settings, torch.device("cpu"))
    assert model.training and held_out_losses(model, images, settings, torch.device("cpu")) == first
    seeds = torch.randint(-(2**62), 2**62, (5,), generator=training.epoch_generator(settings, 0, 2))
    x01 = images.images
    model.eval()
    with torch.no_grad():
        direct = model.training_losses(normalize(x01), normalize(synthesize(x01, seeds)[0]))
    for key in ("total", "kd", "intra"):
        assert first[key] == pytest.approx(direct[key].item(), rel=1e-5)
    model.train()
    with torch.no_grad():
        batch_statistics = model.training_losses(normalize(x01), normalize(synthesize(x01, seeds)[0]))
    assert batch_statistics["kd"].item() != pytest.approx(first["kd"], rel=1e-3)


def test_non_finite_last_weights_are_refused(tmp_path):
    model = fresh_model()
    last = {k: v.clone() for k, v in model.state_dict().items()}
    last["ocbe.down2.0.weight"].fill_(float("nan"))
    save_checkpoint({"config": model.config.to_dict(), "state_dict": model.state_dict(), "last_state_dict": last},
                    tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"non-finite weights .*ocbe\.down2\.0\.weight"):
        load_checkpoint(tmp_path / "m.pt")


def test_empty_training_set_is_an_error():
    with pytest.raises(ValueError, match="at least 2 images, got 0"):
        fit(fresh_model(), Images(n=0), SETTINGS)


def test_cached_teacher_features_learn_exactly_what_recomputing_does():
    """The normal images' teacher features, cached after the first epoch, give the
    same weights bit for bit as recomputing them every epoch (fp32, CPU)."""
    data = torch.rand(9, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    states, histories = [], []
    for budget_mb in (1024, 0):
        model = fresh_model()
        histories.append(fit(model, data, TrainSettings(epochs=3, batch_size=4), progress=False,
                             teacher_cache_mb=budget_mb))
        states.append(model.state_dict())
    assert histories[0] == histories[1]
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name


def test_the_teacher_cache_stays_within_its_budget():
    from sacd_fast.training.train import TeacherCache

    model = fresh_model()
    per_image = sum(f[0].numel() * 4 for f in model.teacher(torch.zeros(1, 3, 64, 64)))
    cache = TeacherCache(model.teacher, 2.5 * per_image / 2**20)
    x = torch.rand(4, 3, 64, 64)
    first = cache(x, [0, 1, 2, 3])
    assert sorted(cache.store) == [0, 1] and cache.used == 2 * per_image
    again = cache(x[:2], [0, 1])  # all cached: no teacher pass, the same values
    for a, b in zip(first, again):
        assert torch.equal(a[:2], b)


def test_training_loss_falls():
    model = random_teacher_model("resnet18", 64)
    optimizer = build_optimizer(model, TrainSettings())
    x01 = torch.rand(4, 3, 64, 64)
    seeds = torch.arange(4)
    model.train()
    losses = [train_step(model, optimizer, x01, seeds) for _ in range(6)]
    assert losses[-1]["total"] < 0.8 * losses[0]["total"]
    assert losses[-1]["kd"] < losses[0]["kd"] and losses[-1]["intra"] < losses[0]["intra"]
    for record in losses:
        assert record["total"] == pytest.approx(record["kd"] + 0.2 * record["intra"], rel=1e-5)


def test_bf16_training_on_cpu_where_the_cpu_has_it():
    """precision="bf16" on a CPU: bf16 autocast where bf16 is native (a different,
    finite run), and the fp32 run unchanged where it is not."""
    data = torch.rand(4, 3, 64, 64)
    histories = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(5)
        model = random_teacher_model("resnet18", 64)
        histories.append(fit(model, data, TrainSettings(epochs=2, batch_size=2, precision=precision), progress=False))
    if native_bf16():
        assert histories[0] != histories[1]
        assert all(math.isfinite(h["total"]) for h in histories[1])
        assert abs(histories[1][-1]["total"] - histories[0][-1]["total"]) <= 0.1 * histories[0][-1]["total"]
    else:
        assert histories[0] == histories[1]


def test_a_checkpoint_written_by_version_0_1_0_loads(tmp_path):
    """A checkpoint from the first release (config as a plain dict, every key
    of the time), written by its ``sacd-fast train`` and kept gzipped: its
    weights are a fixed pattern, so the file is small. It loads, keeps its
    config and thresholds, and predicts what that version predicted."""
    path = tmp_path / "model.pt"
    path.write_bytes(gzip.decompress((DATA / "checkpoint_1ea1d38.pt.gz").read_bytes()))
    model = SACD.from_checkpoint(path)
    as_then = SACDConfig("efficientnet_lite0", 64, teacher_input="imagenet", feacali_norm_last=True, map_mode="add",
                         map_border=0)
    assert model.config == as_then
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prediction = model.predict(normalize(x))
    torch.testing.assert_close(prediction.scores, torch.tensor([5.128260135650635] * 2), rtol=1e-5, atol=0)
    assert float(prediction.maps.double().sum()) == pytest.approx(27251.32675933838, rel=1e-5)
    _, thresholds = load_for_inference(path, "cpu")
    assert thresholds.image == load_checkpoint(path)["thresholds"]["image"] > 0
    assert load_checkpoint(path)["format"] == "sacd_fast/2"  # read through migrate(), as the current format
