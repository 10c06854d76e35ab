"""Training (docs/method.md, Training): both branches, two Adam groups, atomic
checkpoints, exact resume.

Every epoch is a pure function of (weights, optimiser state, seed, epoch):
the shuffle order and the synthesis seeds come from generators seeded by
``(seed, epoch)``. A run resumed from the checkpoint of epoch e therefore ends
with the same weights as a run that was never interrupted, whether it was
stopped by Ctrl-C, SIGTERM, SIGKILL or a full disk: the checkpoint is written
atomically after every epoch, and an interrupted epoch is simply run again.
A resume is refused when the model, the settings, the training data, the
teacher weights or the precision computed in differ from the checkpoint's.

With held-out normal images (``fit(validation=...)``; ``sacd-fast train``
holds out ``--val-fraction`` of them), every epoch ends with the training loss
on them and their synthetic copies, in eval mode, with the same synthesis
seeds every epoch; the weights kept are those of the first epoch with the
lowest held-out loss (:func:`kept_epoch`). Without them the last epoch is
kept. No checkpoint is ever selected on test data. Training ends after
``epochs``, or earlier on a time budget or, with held-out images, once the
held-out loss has stopped falling (``patience``). A checkpoint's
``state_dict`` is the model kept so far; when the last epoch's weights differ
from it they travel as ``last_state_dict``, from which a resumed run goes on.

Several GPUs: launch with torchrun and initialise the process group (the CLI
does it); ``fit`` then wraps the model in DistributedDataParallel, gives each
process its share of every epoch (``batch_size`` is per process), averages
the logged losses over processes, and lets rank 0 alone write checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from sacd_fast.cpu import native_bf16
from sacd_fast.data.synthesis import synthesize
from sacd_fast.files import remove_stale_temporaries
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.model import SACD, normalize
from sacd_fast.checkpoint import config_mismatch, load_checkpoint, non_finite_tensors, save_checkpoint
from sacd_fast.evaluation.calibration import check_false_alarm_rate
from sacd_fast.evaluation.scoring import calibrate
from sacd_fast.settings import TrainSettings


def epoch_generator(settings: TrainSettings, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """The generator of one epoch's shuffle (stream 0), synthesis seeds (stream 1) or held-out synthesis
    seeds (stream 2)."""
    entropy = np.random.SeedSequence([settings.seed, epoch, stream, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy) & (2**63 - 1))


def resolve_device(name: str) -> torch.device:
    """The device ``name`` says ("auto": CUDA when available); ValueError or RuntimeError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:1', ...)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only 'cpu' and 'cuda' devices are supported")
    return device


def computed_precision(precision: str, device: torch.device) -> str:
    """What a run asked for ``precision`` computes in on ``device``: "bf16" on
    CUDA and on CPUs with native bf16, else "fp32" (as checkpoints record it)."""
    return "bf16" if precision == "bf16" and (device.type == "cuda" or native_bf16()) else "fp32"


def autocast(device_type: str, autocast_dtype: torch.dtype | None):
    """Autocast to ``autocast_dtype`` on ``device_type``; None: off (fp32)."""
    return torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)


def in_process_group() -> bool:
    """Whether this process trains as one of several in a torch.distributed group
    (torchrun; ``sacd-fast train`` joins the group when torchrun started it)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_rank() -> int:
    """This process's rank in its group; 0 when it trains alone."""
    return dist.get_rank() if in_process_group() else 0


def build_optimizer(model: SACD, settings: TrainSettings) -> torch.optim.Adam:
    """Adam with two parameter groups: OCBE + decoder (lr) and FeaCali (lr_feacali)."""
    return torch.optim.Adam(
        [{"params": model.student_parameters(), "lr": settings.lr},
         {"params": model.feacali.parameters(), "lr": settings.lr_feacali}],
        betas=tuple(settings.betas),
    )


class TeacherCache:
    """The frozen teacher's stage outputs (``teacher``: :attr:`SACD.teacher`)
    of the normal training images, by dataset index: computed once, reused
    after (they never change), kept while they fit in ``budget_mb``. The
    teacher's output for an image does not depend on the rest of its batch on
    a CPU (tested bit for bit), so a cached run learns exactly what a
    recomputing one does; beyond the budget, features are recomputed. Per
    image at 256², fp32: 0.64 MiB for efficientnet_lite0, 1.75 MiB for
    resnet18, 7.0 MiB for wide_resnet50_2 (a quarter at 128²; half in bf16)."""

    def __init__(self, teacher: Callable[[torch.Tensor], list[torch.Tensor]], budget_mb: float):
        self.teacher, self.budget, self.used = teacher, int(max(budget_mb, 0) * 2**20), 0
        self.store: dict[int, list[torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """The teacher's outputs for the normalised batch ``x`` of dataset items ``indices``."""
        if all(i in self.store for i in indices):
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            return [torch.stack([self.store[i][k] for i in indices]).contiguous(memory_format=layout)
                    for k in range(len(self.store[indices[0]]))]
        with torch.no_grad():
            features = self.teacher(x)
        for j, i in enumerate(indices):
            size = sum(f[j].numel() * f[j].element_size() for f in features)
            if i not in self.store and self.used + size <= self.budget:
                self.store[i] = [f[j].clone() for f in features]
                self.used += size
        return features


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x01: torch.Tensor, seeds: torch.Tensor,
               autocast_dtype: torch.dtype | None = None, teacher=None) -> dict[str, float]:
    """One optimisation step on a batch of [0, 1] images; returns the loss terms.
    ``model`` is a SACD model or its DistributedDataParallel wrapper (its
    forward is ``training_losses``); ``autocast_dtype`` runs the forward passes
    under autocast (bf16 training); ``teacher``, when given, maps the
    normalised batch to its teacher features (a :class:`TeacherCache`)."""
    x_synth, _ = synthesize(x01, seeds)
    with autocast(x01.device.type, autocast_dtype):
        x = normalize(x01)
        losses = model(x, normalize(x_synth), None if teacher is None else teacher(x))
    if not torch.isfinite(losses["total"]):
        raise FloatingPointError(f"training loss is {losses['total'].item()} (kd {losses['kd'].item()}, "
                                 f"intra {losses['intra'].item()}): lower the learning rate or check the data")
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


LOSS_TERMS = ("total", "kd", "intra")


def loss_sums(losses: dict, images: int) -> torch.Tensor:
    """A batch's mean loss terms and a count of 1, times its ``images``: summed
    over batches, :func:`loss_means` turns them into means over images."""
    return torch.tensor([float(losses[k]) for k in LOSS_TERMS] + [1.0], dtype=torch.float64) * images


def loss_means(sums: torch.Tensor) -> dict[str, float]:
    return {k: float(v / sums[3]) for k, v in zip(LOSS_TERMS, sums)}


@torch.no_grad()
def held_out_losses(model: SACD, dataset: Dataset, settings: TrainSettings, device: torch.device,
                    autocast_dtype: torch.dtype | None = None, num_workers: int = 0) -> dict[str, float]:
    """Mean loss terms of ``model`` in eval mode (as it scores) on held-out normal
    images and their synthetic copies. The synthesis seeds come from stream 2 of
    epoch 0, the same every epoch, so that epochs compare."""
    indices = list(range(len(dataset)))
    seeds = torch.randint(-(2**62), 2**62, (len(indices),), generator=epoch_generator(settings, 0, 2))
    batches = epoch_batches(indices, settings.batch_size, None)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    try:
        for batch_indices, batch in zip(batches, loader):
            x01 = images_of(batch).to(device, non_blocking=True)
            x_synth, _ = synthesize(x01, seeds[batch_indices])
            with autocast(device.type, autocast_dtype):
                losses = model.training_losses(normalize(x01), normalize(x_synth))
            sums += loss_sums(losses, x01.shape[0])
    finally:
        model.train(was_training)
    return loss_means(sums)


def kept_epoch(history: list[dict]) -> int | None:
    """The epoch whose weights a run keeps: the first with the lowest held-out
    loss, or None when the run has no held-out images (it keeps its last)."""
    scored = [h for h in history if "held_out_total" in h]
    return min(scored, key=lambda h: h["held_out_total"])["epoch"] if scored else None


def converged(history: list[dict], patience: int | None) -> bool:
    """Whether none of the last ``patience`` epochs of ``history`` lowered the
    held-out loss (the kept epoch lies ``patience`` or more epochs back); False
    without ``patience`` or held-out losses."""
    kept = kept_epoch(history)
    return patience is not None and kept is not None and history[-1]["epoch"] - kept >= patience


def images_of(batch) -> torch.Tensor:
    """The (B, 3, H, W) image tensor of a batch from a sacd_fast dataset (dict) or a plain tensor."""
    return batch["image"] if isinstance(batch, dict) else batch


def epoch_batches(indices: list[int], batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    """``indices`` (shuffled by ``generator`` when given) cut into batches; a last
    batch of one image joins the one before it (BatchNorm needs two values)."""
    if generator is not None:
        indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def _resume_problems(state: dict, model: SACD, settings: TrainSettings, provenance: dict) -> list[str]:
    """Why the checkpoint ``state`` cannot be continued with this model, settings and data."""
    saved = {k: v for k, v in state.get("settings", {}).items() if k != "epochs"}
    current = {k: v for k, v in settings.stored().items() if k != "epochs"}
    saved["betas"] = tuple(saved.get("betas", ()))
    saved_config = SACDConfig.from_dict(state["config"], "checkpoint").to_dict()  # keys it predates: as trained
    problems = config_mismatch(saved_config, model.config.to_dict()) + config_mismatch(saved, current)
    problems += config_mismatch(state.get("provenance", {}), provenance)
    if state["epoch"] > settings.epochs:
        problems.append(f"it holds {state['epoch']} epochs, more than the {settings.epochs} requested")
    teacher = {k[len("teacher."):]: v for k, v in state["state_dict"].items() if k.startswith("teacher.")}
    if any(not torch.equal(v.cpu(), teacher[k].cpu()) for k, v in model.teacher.state_dict().items() if k in teacher):
        problems.append("the teacher weights differ from those the checkpoint was trained with")
    return problems


def fit(model: SACD, dataset: Dataset, settings: TrainSettings | None = None,
        checkpoint: str | os.PathLike | None = None, *, validation: Dataset | None = None,
        progress: bool = True, log=None, provenance: dict | None = None, resume: bool = True,
        teacher_cache_mb: float = 4096) -> list[dict[str, float]]:
    """Train ``model`` on the normal images of ``dataset`` and calibrate its threshold: what ``sacd-fast
    train`` does once it has read and split the data.

    Args:
        model: a SACD model (its weights are trained in place).
        dataset: items are [0, 1] float images (3, H, W), or dicts with key "image".
        settings: the run's :class:`~sacd_fast.settings.TrainSettings`: epochs, batch size, seed, device,
            ``precision`` ("bf16": bf16 autocast on CUDA and on CPUs with native bf16, AVX512-BF16 or
            AMX, fp32 elsewhere; "fp32"), ``false_alarm_rate``, ``time_budget``, ``patience``, ``workers``.
            Synthesis and FeaCali run in their Triton kernels on CUDA either way; training runs in
            channels_last on every device (measured faster). ``time_budget``: seconds this call may
            train for (held-out scoring included, calibration not): after each epoch, training ends
            there when another epoch as long as the last one would end past the budget; the first epoch
            always runs. The checkpoint then records the epochs run as the run's ``epochs``, and a later
            call with a budget finds it finished (one without continues up to ``epochs``). ``patience``
            (needs ``validation``): training ends after the first epoch that leaves ``patience`` epochs
            without a lower held-out loss (:func:`converged`), recorded as with ``time_budget``; the
            decision depends only on the held-out losses, so an interrupted run ends where an
            uninterrupted one does.
        checkpoint: path written atomically after every epoch; if it exists and
            ``resume`` is True, training continues from it (config, stored settings,
            provenance and teacher weights must match, except ``epochs``, which may grow).
        validation: held-out normal images (same item format as ``dataset``):
            their loss is logged every epoch (:func:`held_out_losses`) and the
            weights of the epoch with the lowest one are kept (:func:`kept_epoch`);
            ``model`` ends with them. Without it the last epoch is kept.
        progress: show tqdm bars.
        log: optional callable receiving the history (every epoch's record so far)
            after each epoch, once its checkpoint is written.
        provenance: what the run trains on (e.g. the data folder and its files),
            stored in the checkpoint; a resume with other provenance is refused.
        teacher_cache_mb: memory for the normal images' teacher features
            (:class:`TeacherCache`); 0 recomputes them every epoch.

    After the last epoch the trained model is calibrated (:func:`calibrate_held_out`): its threshold for
    ``settings.false_alarm_rate`` on ``validation`` (or, without it, on ``dataset``) goes into the final
    checkpoint as ``thresholds``, with the held-out images' files where ``validation`` is a subset of a
    sacd_fast dataset. A finished checkpoint that lacks them gets them on the next call.

    Returns:
        The per-epoch history: mean ``total``, ``kd`` and ``intra`` losses, and
        with ``validation`` the held-out ones (``held_out_total``, ...).
    """
    settings = settings or TrainSettings()
    provenance = dict(provenance or {})
    _check_fit(model, dataset, settings, validation)
    time_budget, patience, num_workers = settings.time_budget, settings.patience, settings.workers
    started = time.monotonic()
    device = resolve_device(settings.device)
    on_cuda = device.type == "cuda"
    model.to(device, memory_format=torch.channels_last)
    computed = computed_precision(settings.precision, device)
    autocast_dtype = torch.bfloat16 if computed == "bf16" else None
    optimizer = build_optimizer(model, settings)
    finished, start, history, kept = None, 0, [], None
    resuming = checkpoint is not None and resume and os.path.exists(checkpoint)
    if checkpoint is not None:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(Path(checkpoint).parent, of=Path(checkpoint).name)
        if resuming:
            finished, start, history, kept = _resume(checkpoint, model, optimizer, settings, provenance, device,
                                                     validation is not None, computed, time_budget is not None,
                                                     patience)
            if finished is not None:
                settings = replace(settings, epochs=start)  # nothing left to train

    def finalize(trained: SACD) -> dict:
        return calibrate_held_out(trained, dataset if validation is None else validation, settings, device,
                                  progress, held_out=validation is not None)

    distributed = in_process_group()
    rank = process_rank()
    cache = TeacherCache(model.teacher, teacher_cache_mb)
    step_model = model
    if distributed:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if on_cuda else None)
    model.train()
    for epoch in range(start, settings.epochs):
        epoch_started = time.monotonic()
        if distributed:
            sampler = DistributedSampler(dataset, shuffle=True, seed=settings.seed)
            sampler.set_epoch(epoch)
            batches = epoch_batches(list(sampler), settings.batch_size, None)
        else:
            batches = epoch_batches(list(range(len(dataset))), settings.batch_size,
                                    epoch_generator(settings, epoch, 0))
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=on_cuda)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress or rank != 0,
                   leave=False)
        sums = torch.zeros(4, dtype=torch.float64)  # total, kd, intra, images
        seed_source = epoch_generator(settings, epoch, 1, rank)
        for indices, batch in zip(batches, bar):
            x01 = images_of(batch).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            seeds = torch.randint(-(2**62), 2**62, (x01.shape[0],), generator=seed_source)
            losses = train_step(step_model, optimizer, x01, seeds, autocast_dtype,
                                teacher=lambda x, indices=indices: cache(x, indices))
            sums += loss_sums(losses, x01.shape[0])
            bar.set_postfix(loss=f"{losses['total']:.4f}")
        if distributed:
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
            for buffer in model.buffers():  # BatchNorm statistics: every replica ends the epoch as rank 0
                dist.broadcast(buffer, 0)
        history.append({"epoch": epoch + 1, **loss_means(sums)})
        if validation is not None and rank == 0:
            held_out = held_out_losses(model, validation, settings, device, autocast_dtype, num_workers)
            history[-1].update({f"held_out_{k}": v for k, v in held_out.items()})
            if kept_epoch(history) == epoch + 1:
                kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if (time_budget is not None or patience is not None) and epoch + 1 < settings.epochs:
            now = time.monotonic()
            over_budget = time_budget is not None and now + (now - epoch_started) > started + time_budget
            if _agreed(over_budget or converged(history, patience), device, distributed):  # rank 0's history
                settings = replace(settings, epochs=epoch + 1)  # this epoch is the run's last
        _end_epoch(model, optimizer, settings, history, provenance, checkpoint, log, finalize, rank, kept, computed)
        if distributed:
            dist.barrier()
        if epoch + 1 == settings.epochs:
            break
    if finished is not None and rank == 0:
        extras = _finalized(model, finalize)  # a finished run whose final step was cut short
        if any(finished.get(k) != v for k, v in extras.items()):
            save_checkpoint({**finished, **extras}, checkpoint)
    model.to(memory_format=torch.contiguous_format).eval()  # as it came: channels_last was for training
    return history


def _agreed(decision: bool, device: torch.device, distributed: bool) -> bool:
    """Rank 0's ``decision``, on every rank of a process group."""
    if not distributed:
        return decision
    flag = torch.tensor([decision], dtype=torch.int32, device=device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def _check_fit(model: SACD, dataset: Dataset, settings: TrainSettings, validation: Dataset | None) -> None:
    """ValueError, before any work, for a run ``fit`` cannot train or calibrate."""
    if settings.patience is not None and validation is None:
        raise ValueError("patience needs held-out images (validation): it watches their loss")
    if len(dataset) < 2:
        raise ValueError(f"training needs at least 2 images, got {len(dataset)}")
    check_false_alarm_rate(settings.false_alarm_rate, len(dataset if validation is None else validation),
                           "false_alarm_rate")
    side = model.config.image_size // 32
    if settings.batch_size * side * side < 2:
        raise ValueError(f"batch size {settings.batch_size} at image size {model.config.image_size} leaves "
                         "BatchNorm one value per channel: use a batch size of 2 or more")


def calibrate_held_out(model: SACD, normal: Dataset, settings: TrainSettings, device: torch.device,
                       progress: bool, held_out: bool) -> dict:
    """The checkpoint entries of a trained model's calibration on the ``normal`` images (``held_out``:
    images it did not train on): ``thresholds`` for ``settings.false_alarm_rate``, and
    ``calibration_images`` (their folder and files) where they are a subset of a sacd_fast dataset."""
    source = "held-out normal training images" if held_out else "training images"
    thresholds = calibrate(model, normal, settings.batch_size, device, progress, settings.false_alarm_rate, source)
    entries = {"thresholds": thresholds.to_dict()}
    parent = getattr(normal, "dataset", None)
    if held_out and isinstance(normal, Subset) and hasattr(parent, "samples") and hasattr(parent, "folder"):
        entries["calibration_images"] = {
            "folder": str(parent.folder.resolve()),
            "files": [str(parent.samples[i].path.relative_to(parent.folder)) for i in normal.indices]}
    return entries


def _resume(checkpoint, model: SACD, optimizer, settings: TrainSettings, provenance: dict, device,
            held_out: bool, computed: str, budgeted: bool,
            patience: int | None) -> tuple[dict | None, int, list[dict], dict | None]:
    """Load the checkpoint's weights and optimiser state (ValueError if it
    cannot be continued); returns its payload if it holds a finished run (else
    None), its epoch, its history and the weights kept so far (None before
    any epoch was scored on held-out images: a run that predates them scores
    the epochs it adds). A finished run's model holds the kept weights, an
    unfinished one's the last epoch's. ``computed``: "fp32" or "bf16", what
    this run computes in; a checkpoint that records another is refused (one
    written before checkpoints recorded it is not checked). ``budgeted``: this
    run has a time budget, so a checkpoint that ran all the epochs it recorded
    (its own budget or patience may have cut them) counts as finished; with
    ``patience``, so does one that ran them all and whose history is
    :func:`converged` for it."""
    state = load_checkpoint(checkpoint, map_location=device)
    problems = _resume_problems(state, model, settings, provenance)
    history = list(state["history"])
    if not held_out and kept_epoch(history) is not None:
        problems.append("it was trained with held-out images and this run has none")
    if state.get("precision", computed) != computed:
        problems.append(f"it was trained in {state['precision']} and this run computes in {computed} (precision)")
    if problems:
        raise ValueError(f"cannot resume from {checkpoint}: " + "; ".join(problems))
    ran_all = state["epoch"] >= state.get("settings", {}).get("epochs", math.inf)
    finished = state["epoch"] >= settings.epochs or (ran_all and (budgeted or converged(history, patience)))
    model.load_state_dict(state["state_dict"] if finished else state.get("last_state_dict", state["state_dict"]))
    optimizer.load_state_dict(state["optimizer"])
    kept = state["state_dict"] if kept_epoch(history) is not None else None
    return (state if finished else None), state["epoch"], history, kept


def _end_epoch(model: SACD, optimizer, settings: TrainSettings, history: list[dict], provenance: dict,
               checkpoint, log, finalize, rank: int, kept: dict | None, computed: str) -> None:
    """After each epoch: refuse diverged weights (every rank: their weights are
    the same); rank 0 loads the kept weights (``kept``, or the last) into the
    model after the last epoch and finalises it, writes the checkpoint, then
    calls ``log``."""
    epoch = history[-1]["epoch"]
    state_dict = model.state_dict()
    diverged = non_finite_tensors(state_dict)
    if diverged:
        raise FloatingPointError(f"training diverged in epoch {epoch}: {len(diverged)} weight tensors hold "
                                 f"NaN or infinity (e.g. {diverged[0]}); lower the learning rate. "
                                 "The last good checkpoint is kept")
    if rank != 0:
        return
    weights = {"state_dict": state_dict}
    if kept is not None and kept_epoch(history) != epoch:
        weights = {"state_dict": kept, "last_state_dict": state_dict}
        if epoch == settings.epochs:  # the model ends with the kept weights, the checkpoint keeps the last too
            weights["last_state_dict"] = {k: v.detach().clone() for k, v in state_dict.items()}
            model.load_state_dict(kept)
    payload = {"config": model.config.to_dict(), **weights, "optimizer": optimizer.state_dict(), "epoch": epoch,
               "settings": settings.stored(), "precision": computed, "history": history, "provenance": provenance}
    try:
        extras = _finalized(model, finalize) if epoch == settings.epochs else {}
    except Exception:
        if checkpoint is not None:  # the trained weights survive; the next call finalises them
            save_checkpoint(payload, checkpoint)
        raise
    if checkpoint is not None:
        save_checkpoint({**payload, **extras}, checkpoint)
    if log is not None:
        log(history)


def _finalized(model: SACD, finalize) -> dict:
    """``finalize(model)`` on the model in eval mode."""
    model.eval()
    try:
        return finalize(model)
    finally:
        model.train()
