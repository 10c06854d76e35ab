"""The files that ``eval`` and ``predict`` write: heatmaps, scores and metrics,
each written whole or not at all (:mod:`sacd_fast.files`).

Both commands write ``scores.csv`` with the same columns and formats: ``path``,
``defect`` and ``label`` (empty for ``predict``), ``score`` (raw),
``normalized_score`` (0..1, 0.5 at the threshold), ``anomalous`` (0 or 1) and
``heatmap``. Heatmaps mirror the inputs' paths under ``heatmaps/`` (relative to
the test split for ``eval``, to the inputs' common folder for ``predict``),
with ``.png`` appended to the full file name, so two inputs never share one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from sacd_fast.data.datasets import read_rgb
from sacd_fast.evaluation.calibration import Thresholds, normalized
from sacd_fast.evaluation.heatmaps import heatmap_panel
from sacd_fast.evaluation.scoring import Predictions
from sacd_fast.files import atomic_write, write_text

SCORE_COLUMNS = ("path", "defect", "label", "score", "normalized_score", "anomalous", "heatmap")


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def write_json(data, path: Path) -> None:
    """Standard JSON: a NaN or infinity in ``data`` is a ValueError, never a bare ``NaN`` in the file."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def csv_cell(value):
    """``value`` as a spreadsheet shows it and never runs it: text that starts like a formula gets a leading
    apostrophe (numbers are written as they are)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_csv(rows: list[dict], path: Path, columns=SCORE_COLUMNS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    write_text(path, buffer.getvalue())


def heatmap_names(paths: list[str], root: str | os.PathLike | None = None) -> list[str]:
    """``heatmaps/``-relative names: each input's path relative to ``root`` (default:
    the inputs' common folder) with ``.png`` appended; distinct inputs, distinct names."""
    paths = [os.path.abspath(p) for p in paths]
    root = os.path.abspath(root) if root is not None else os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, root) + ".png" for p in paths]


def refuse_overwriting_inputs(inputs: list[str], outputs: list[Path]) -> None:
    """ValueError if an output file would replace one of the input images."""
    sources = {os.path.realpath(p) for p in inputs}
    for path in outputs:
        if os.path.realpath(path) in sources:
            raise ValueError(f"writing {path} would overwrite an input image: choose an --out folder that does "
                             "not hold the images")


def write_heatmaps(result: Predictions, thresholds: Thresholds, folder: Path, names: list[str],
                   with_truth: bool) -> None:
    """One heatmap panel per image, at the image's own size, into ``folder``."""
    scores = normalized(result.scores, thresholds.image, thresholds.score_median)
    for i, name in enumerate(names):
        truth = result.mask[i] if with_truth and result.has_mask[i] else None
        panel = heatmap_panel(read_rgb(result.path[i]), result.maps[i], thresholds.image,
                              thresholds.normal_level, float(result.scores[i]), float(scores[i]),
                              name[: -len(".png")], truth)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f, panel=panel: panel.save(f, format="PNG"))


def score_rows(result: Predictions, names: list[str], thresholds: Thresholds) -> list[dict]:
    """One row per image, in :data:`SCORE_COLUMNS` (what scores.csv and scores.json hold)."""
    scores = np.asarray(result.scores, dtype=np.float64)
    norm = normalized(scores, thresholds.image, thresholds.score_median)
    return [{"path": path, "defect": result.defect[i] if result.defect is not None else "",
             "label": int(result.label[i]) if result.label is not None else "", "score": float(scores[i]),
             "normalized_score": round(float(norm[i]), 6), "anomalous": int(scores[i] > thresholds.image),
             "heatmap": f"heatmaps/{names[i]}"} for i, path in enumerate(result.path)]
