"""Checkpoints: written atomically, read with checks that name what is wrong.

A checkpoint is a dict saved with ``torch.save``:
``format`` (:data:`FORMAT`, "sacd_fast/2"), ``config`` (:class:`SACDConfig`'s fields),
``state_dict`` (all weights, the frozen teacher's included, so a checkpoint is
self-contained: the model the run keeps), and for training runs ``optimizer``,
``epoch`` (epochs done), ``settings``, ``history``, ``provenance`` (what the
run trained on) and, when the epoch kept is not the last, ``last_state_dict``
(the last epoch's weights, which a resumed run continues from);
``thresholds`` once calibrated, and ``calibration_images`` (the held-out
normal images they were calibrated on: ``folder`` and ``files`` in it).

Reading never runs code: ``torch.load(weights_only=True)`` unpickles tensors,
numbers, strings and containers only, so a checkpoint from an untrusted source
can at worst hold wrong weights. Non-finite weights or thresholds are refused.
A checkpoint of an earlier format is read through :func:`migrate`, the one
place that knows how earlier versions differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.files import atomic_write, require_file
from sacd_fast.network.config import SACDConfig
from sacd_fast.settings import PRECISIONS

FORMAT = "sacd_fast/2"
READABLE = ("sacd_fast/1", FORMAT)  # every format this version reads, oldest first

# The config keys added while format 1 was written, and the value that reproduces how a checkpoint
# or exported file without them was trained: every teacher was fed ImageNet-normalised input,
# FeaCali normalised its last block, the maps were summed over every cell.
FORMAT_1_CONFIG = {"teacher_input": "imagenet", "feacali_norm_last": True, "map_mode": "add", "map_border": 0}


def migrate_config(values: dict, source: object = "config") -> dict:
    """A format-1 config record as format 2 writes it: the keys it predates take the values it was trained
    with (:data:`FORMAT_1_CONFIG`); ``teacher_scale``, an experiment that is no more, is dropped where it
    was "none" and refused where it was "channel" (ValueError naming ``source``)."""
    values = dict(values)
    if values.get("teacher_scale", "none") != "none":
        raise ValueError(f"{source}: teacher_scale {values['teacher_scale']!r}: the model was trained with "
                         "its teacher's channels rescaled, an option this version no longer has (it was not "
                         "the default; docs/results.md keeps its measurements): train it again")
    values.pop("teacher_scale", None)
    return {**FORMAT_1_CONFIG, **values}


def migrate_thresholds(values):
    """A format-1 threshold record as format 2 writes it: one written before false-alarm calibration (the
    highest held-out score, no median) gets the two fields it predates."""
    if isinstance(values, dict) and values and "score_median" not in values:
        return {"score_median": values.get("normal_level"), "method": "maximum of the held-out scores", **values}
    return values


def migrate(payload: dict, source: object = "checkpoint") -> dict:
    """``payload`` (a checkpoint of any format in :data:`READABLE`) as the current format holds it."""
    if payload.get("format") == "sacd_fast/1":
        payload = {**payload, "format": FORMAT}
        if isinstance(payload.get("config"), dict):
            payload["config"] = migrate_config(payload["config"], f"{source}: config")
        if "thresholds" in payload:
            payload["thresholds"] = migrate_thresholds(payload["thresholds"])
    return payload


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`sacd_fast.files.atomic_write`):
    a crash, a kill or a full disk never leaves a truncated checkpoint behind."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


# The fields a checkpoint may hold beside format, config, state_dict and thresholds, and what each must be.
TRAINING_FIELDS = {
    "last_state_dict": (dict, "a state dict"),
    "optimizer": (dict, "an optimiser state"),
    "epoch": (int, "an integer >= 0"),
    "settings": (dict, "a record of settings"),
    "precision": (str, "'fp32' or 'bf16'"),
    "history": (list, "a list of epoch records"),
    "provenance": (dict, "a record"),
    "calibration_images": (dict, "a record of the held-out normal images: folder and files"),
}


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a sacd_fast checkpoint of any format this version reads (:func:`migrate`), every field checked
    (its config by :class:`SACDConfig`, its thresholds by :meth:`Thresholds.from_dict`); FileNotFoundError or
    ValueError naming the file and the field."""
    path = require_file(path, "checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") not in READABLE:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a sacd_fast checkpoint (format {found!r}, expected one of "
                         f"{', '.join(map(repr, READABLE))})")
    payload = migrate(payload, path)
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path}: field {key!r} is {'missing' if key not in payload else 'not a record'}")
    try:
        SACDConfig.from_dict(payload["config"], "config")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e if str(e).startswith('config') else f'config: {e}'}") from None
    for key, (kind, what) in TRAINING_FIELDS.items():
        value = payload.get(key)
        if key in payload and (not isinstance(value, kind) or isinstance(value, bool)
                               or (key == "epoch" and value < 0) or (key == "precision" and value not in PRECISIONS)
                               or (key == "history" and not all(isinstance(h, dict) for h in value))):
            raise ValueError(f"{path}: field {key!r} must be {what}, got {str(value)[:60]!r}")
    for key in ("state_dict", "last_state_dict"):
        tensors = payload.get(key, {})
        odd = [str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if odd:
            raise ValueError(f"{path}: field {key!r} holds entries that are not named tensors ({', '.join(odd[:3])})")
        bad = non_finite_tensors(tensors)
        if bad:
            raise ValueError(f"{path} holds non-finite weights ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
                             "the training diverged or the file was altered")
    if "thresholds" in payload:
        Thresholds.from_dict(payload["thresholds"], path)
    held_out = payload.get("calibration_images")
    if held_out is not None and (not isinstance(held_out.get("folder"), str) or not isinstance(
            held_out.get("files"), list) or not all(isinstance(f, str) for f in held_out["files"])):
        raise ValueError(f"{path}: field 'calibration_images' must be {TRAINING_FIELDS['calibration_images'][1]}, "
                         f"got {str(held_out)[:60]!r}")
    return payload


def calibration_files(payload: dict, path) -> list[Path]:
    """The held-out normal images a checkpoint's threshold was calibrated on (``calibration_images``):
    ValueError where it records none, FileNotFoundError naming the first that is gone."""
    held_out = payload.get("calibration_images")
    if not held_out or not held_out["files"]:
        raise ValueError(f"{path} records no held-out normal images (trained without them, or before they were "
                         "recorded): name a folder of normal images the model did not train on")
    files = [Path(held_out["folder"]) / f for f in held_out["files"]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} of its {len(files)} held-out normal images are gone "
                                f"(e.g. {missing[0]}): name a folder of normal images the model did not train on")
    return files


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two config dicts, e.g. ``["backbone: 'a' != 'b'"]``."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} != requested {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]


def state_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """How ``given`` (a state dict read from a file) differs from a module's
    ``expected`` one in names and shapes: each kind counted, its first ``shown``
    named; "" if they match."""
    shape = lambda v: tuple(getattr(v, "shape", ()))  # noqa: E731
    kinds = {
        "missing tensors": [k for k in expected if k not in given],
        "unexpected tensors": [k for k in given if k not in expected],
        "tensors of another shape": [f"{k} {shape(given[k])} where the model has {shape(v)}"
                                     for k, v in expected.items() if k in given and shape(given[k]) != shape(v)],
    }
    return "; ".join(f"{kind}: {len(names)} ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"
                     for kind, names in kinds.items() if names)
