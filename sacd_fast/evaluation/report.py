"""``eval --report``: one self-contained HTML file for a reviewer who prefers
looking to reading: the metrics, the decisions at the threshold, the image ROC
and the PRO curves (inline SVG), and every heatmap, highest score first
(embedded PNGs, so the file can be mailed or archived on its own)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from sklearn.metrics import roc_curve

from sacd_fast.evaluation.metrics import pro_curve
from sacd_fast.evaluation.scoring import Predictions
from sacd_fast.files import write_text

CURVE_POINTS = 400  # a chart's polyline, at most: more than its 240 pixels of width resolve
THUMBNAIL_WIDTH = 480  # the page shows JPEG thumbnails of this width; each links to its full-size PNG


def svg_curve(x, y, title: str, xlabel: str, ylabel: str, xmax: float = 1.0) -> str:
    """A small line chart of y against x in [0, xmax] x [0, 1]."""
    w, h, m = 320, 240, 40
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = x <= xmax
    x, y = x[keep], y[keep]
    if len(x) > CURVE_POINTS:  # a pixel-level curve has a point per threshold: more than the chart can show
        grid = np.linspace(0, x[-1], CURVE_POINTS)
        x, y = grid, np.interp(grid, x, y)
    xs = m + x / xmax * (w - 2 * m)
    ys = h - m - y * (h - 2 * m)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    ticks = "".join(
        f'<text x="{m + t * (w - 2 * m):.0f}" y="{h - m + 14}" font-size="10" text-anchor="middle">{t * xmax:g}</text>'
        f'<text x="{m - 6}" y="{h - m - t * (h - 2 * m) + 3:.0f}" font-size="10" text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{title}">'
            f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" stroke="#999"/>'
            f'<polyline points="{points}" fill="none" stroke="#c0392b" stroke-width="2"/>{ticks}'
            f'<text x="{w / 2}" y="{m - 12}" font-size="12" text-anchor="middle">{html.escape(title)}</text>'
            f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">{xlabel}</text>'
            f'<text x="12" y="{h / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {h / 2})">{ylabel}</text></svg>')


def _thumbnail(path: Path) -> str:
    """A heatmap panel as a base64 JPEG at most :data:`THUMBNAIL_WIDTH` wide."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    if image.width > THUMBNAIL_WIDTH:
        image = image.resize((THUMBNAIL_WIDTH, round(image.height * THUMBNAIL_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _value(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))


def write_report(path: Path, metrics: dict, result: Predictions, rows: list[dict], out: Path) -> None:
    """Write the report of one evaluation (``metrics.json``'s content, the
    predictions and the ``scores.csv`` rows, whose heatmaps are in ``out``)."""
    labels = result.label.astype(bool)
    charts = []
    if labels.any() and not labels.all():
        fpr, tpr, _ = roc_curve(labels, result.scores)
        charts.append(svg_curve(fpr, tpr, f"image ROC (AUROC {metrics['image_auroc']:.3f})", "false-positive rate",
                                "true-positive rate"))
    has_mask = result.has_mask.astype(bool)
    if metrics.get("pro") is not None:
        fpr, pro = pro_curve(result.mask[has_mask], result.maps[has_mask])
        charts.append(svg_curve(fpr, pro, f"PRO (area to 0.3: {metrics['pro']:.3f})", "false-positive rate",
                                "per-region overlap", xmax=0.3))
    summary = "".join(f"<tr><th>{k.replace('_', ' ')}</th><td>{_value(metrics[k])}</td></tr>"
                      for k in ("image_auroc", "pixel_auroc", "pro", "f1_max", "images", "anomalous_images"))
    at = metrics["at_threshold"]
    decisions = "".join(f"<tr><th>{k.replace('_', ' ')}</th><td>{_value(v)}</td></tr>" for k, v in at.items())
    per_defect = "".join(f"<tr><th>{html.escape(d)}</th><td>{v:.4f}</td></tr>"
                         for d, v in metrics["image_auroc_per_defect"].items())
    threshold = metrics["threshold"]
    figures = "".join(
        f'<figure><a href="{html.escape(quote(r["heatmap"]))}"><img alt="{html.escape(r["path"])}" '
        f'src="data:image/jpeg;base64,{_thumbnail(out / r["heatmap"])}"></a>'
        f'<figcaption>{html.escape(r["heatmap"][len("heatmaps/"):-len(".png")])}: score {r["score"]:.4f}, '
        f'normalised {r["normalized_score"]:.2f}{", ANOMALOUS" if r["anomalous"] else ""}'
        f'{" (defect: " + html.escape(r["defect"]) + ")" if r["label"] == 1 else ""}</figcaption></figure>'
        for r in sorted(rows, key=lambda r: -r["score"]))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sacd-fast evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:0 2em 1em 0}}
th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
.row{{display:flex;flex-wrap:wrap;align-items:flex-start}}
figure{{margin:0 0 1.5em 0}} img{{max-width:100%;border:1px solid #ccc}}</style></head><body>
<h1>sacd-fast evaluation</h1>
<p>Decision threshold {threshold['image']:.4f} ({html.escape(threshold.get('method', ''))}{
    f", target false-alarm rate {threshold['false_alarm_rate']:.1%}" if 'false_alarm_rate' in threshold else ''}).</p>
<div class="row"><table><caption>threshold-free</caption>{summary}</table>
<table><caption>at the threshold</caption>{decisions}</table>
<table><caption>image AUROC per defect</caption>{per_defect}</table></div>
<div class="row">{''.join(charts)}</div>
<h2>Heatmaps, highest score first</h2>{figures}
</body></html>
"""
    write_text(path, page)
