"""Checkpoints: written atomically, read with checks that name what is wrong.

A checkpoint is a dict saved with ``torch.save``:
``format`` ("sacd_fast/1"), ``config`` (the SACD constructor arguments),
``state_dict`` (all weights, the frozen teacher's included, so a checkpoint is
self-contained), and for training runs ``optimizer``, ``epoch`` (epochs done),
``settings`` and ``history``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "sacd_fast/1"


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` via a temporary file and a rename, so a
    crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        if key not in payload:
            raise ValueError(f"{path} is missing {key!r}")
    return payload


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two config dicts, e.g. ``["backbone: 'a' != 'b'"]``."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} != requested {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]
