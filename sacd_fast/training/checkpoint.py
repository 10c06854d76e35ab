"""Checkpoints: written atomically, read with checks that name what is wrong.

A checkpoint is a dict saved with ``torch.save``:
``format`` ("sacd_fast/1"), ``config`` (the SACD constructor arguments),
``state_dict`` (all weights, the frozen teacher's included, so a checkpoint is
self-contained: the model the run keeps), and for training runs ``optimizer``,
``epoch`` (epochs done), ``settings``, ``history``, ``provenance`` (what the
run trained on) and, when the epoch kept is not the last, ``last_state_dict``
(the last epoch's weights, which a resumed run continues from);
``thresholds`` once calibrated.

Reading never runs code: ``torch.load(weights_only=True)`` unpickles tensors,
numbers, strings and containers only, so a checkpoint from an untrusted source
can at worst hold wrong weights. Non-finite weights or thresholds are refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from sacd_fast.files import atomic_write

FORMAT = "sacd_fast/1"


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`sacd_fast.files.atomic_write`):
    a crash, a kill or a full disk never leaves a truncated checkpoint behind."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a sacd_fast checkpoint; FileNotFoundError or ValueError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a sacd_fast checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path} is missing {key!r}")
    if "last_state_dict" in payload and not isinstance(payload["last_state_dict"], dict):
        raise ValueError(f"{path} has an invalid 'last_state_dict'")
    bad = non_finite_tensors(payload["state_dict"]) + non_finite_tensors(payload.get("last_state_dict", {}))
    if bad:
        raise ValueError(f"{path} holds non-finite weights ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
                         "the training diverged or the file was altered")
    thresholds = payload.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict) or not all(
                isinstance(thresholds.get(k), (int, float)) and math.isfinite(thresholds[k])
                for k in ("image", "normal_level")):
            raise ValueError(f"{path} has an invalid calibrated threshold {thresholds!r}")
    return payload


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
