"""The files that ``eval`` and ``predict`` write: heatmaps, scores and metrics,
each written whole or not at all (:mod:`sacd_fast.files`)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from .files import atomic_write, write_text
from .visualize import heatmap_panel


def write_json(data, path: Path) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def heatmap_names(result: dict) -> list[str]:
    """One distinct PNG name per image: ``<defect>_<stem>`` or ``<stem>``, suffixed on a clash."""
    names, seen = [], set()
    for i, path in enumerate(result["path"]):
        base = Path(path).stem if "defect" not in result else f"{result['defect'][i]}_{Path(path).stem}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(f"{name}.png")
    return names


def refuse_overwriting_inputs(inputs: list[str], outputs: list[Path]) -> None:
    """ValueError if an output file would replace one of the input images."""
    sources = {os.path.realpath(p) for p in inputs}
    for path in outputs:
        if os.path.realpath(path) in sources:
            raise ValueError(f"writing {path} would overwrite an input image: choose an --out folder that does "
                             "not hold the images")


def write_heatmaps(result: dict, thresholds: dict, folder: Path, names: list[str], with_truth: bool) -> None:
    """One heatmap panel per image into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        truth = result["mask"][i] if with_truth and result["has_mask"][i] else None
        panel = heatmap_panel(result["images"][i], result["maps"][i], thresholds["image"], thresholds["normal_level"],
                              float(result["scores"][i]), name[:-4], truth)
        atomic_write(folder / name, lambda f, panel=panel: panel.save(f, format="PNG"))


def score_rows(result: dict, names: list[str], threshold: float) -> list[dict]:
    scores = np.asarray(result["scores"], dtype=np.float64)
    rows = []
    for i, path in enumerate(result["path"]):
        row = {"path": path}
        if "defect" in result:
            row.update(defect=result["defect"][i], label=int(result["label"][i]))
        row.update(score=float(scores[i]), anomalous=int(scores[i] > threshold), heatmap=f"heatmaps/{names[i]}")
        rows.append(row)
    return rows
