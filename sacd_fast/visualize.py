"""Heatmap pictures a person reads at a glance: the image, the anomaly map over
it, and the region above the decision threshold outlined, with the score."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RED, GREEN = (255, 40, 40), (40, 230, 80)


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map: values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    x = np.clip(x, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The 2-pixel boundary of a boolean mask (H, W)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    grown = np.asarray(image.filter(ImageFilter.MaxFilter(3))) > 0
    shrunk = np.asarray(image.filter(ImageFilter.MinFilter(3))) > 0
    return grown & ~shrunk


def heatmap_panel(image: np.ndarray, amap: np.ndarray, threshold: float, normal_level: float,
                  score: float, title: str = "", truth: np.ndarray | None = None) -> Image.Image:
    """Three panels side by side with a caption.

    Args:
        image: float (3, H, W) in [0, 1].
        amap: float (H, W) anomaly map.
        threshold: map value above which a pixel is anomalous; it sits at 2/3
            of the colour scale, whose bottom is ``normal_level``.
        score: the image score shown in the caption.
        truth: optional ground-truth mask, outlined in green on the first panel.
    """
    rgb = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    h, w = amap.shape
    top = normal_level + 1.5 * max(threshold - normal_level, 1e-6)
    colours = jet((amap - normal_level) / (top - normal_level))
    overlay = (0.5 * rgb + 0.5 * colours).astype(np.uint8)
    region = rgb.copy()
    region[outline(amap > threshold)] = RED
    first = rgb.copy()
    if truth is not None:
        first[outline(truth > 0.5)] = GREEN
    caption = 24
    canvas = Image.new("RGB", (3 * w, h + caption), (0, 0, 0))
    for i, panel in enumerate((first, overlay, region)):
        canvas.paste(Image.fromarray(panel), (i * w, caption))
    verdict = "ANOMALOUS" if score > threshold else "normal"
    text = f"{title}  score {score:.4f}  threshold {threshold:.4f}  {verdict}".strip()
    ImageDraw.Draw(canvas).text((4, 6), text, fill=RED if score > threshold else (255, 255, 255))
    return canvas
