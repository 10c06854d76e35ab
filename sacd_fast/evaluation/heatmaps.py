"""Heatmap pictures a person reads at a glance, at the image's own size: the
image (with its ground truth outlined in green when known), the anomaly map
over it, the region above the decision threshold outlined in red, a colour
bar with the score scale, and a caption with the raw and normalised scores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RED, GREEN, WHITE, GREY = (255, 40, 40), (40, 230, 80), (255, 255, 255), (160, 160, 160)
MAX_SIDE = 2048  # larger images are drawn scaled down to this side


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map: values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    x = np.clip(x, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary of a boolean mask (H, W), about ``2 * width`` pixels wide."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    size = 2 * width + 1
    grown = np.asarray(image.filter(ImageFilter.MaxFilter(size))) > 0
    shrunk = np.asarray(image.filter(ImageFilter.MinFilter(size))) > 0
    return grown & ~shrunk


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model-resolution map (h, w) bilinearly upsampled to (height, width), as the model upsamples."""
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=True)[0, 0].numpy()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def heatmap_panel(image: Image.Image, amap: np.ndarray, threshold: float, normal_level: float, score: float,
                  normalized_score: float, title: str = "", truth: np.ndarray | None = None) -> Image.Image:
    """Three panels at the image's size, a colour bar and a caption.

    Args:
        image: the original RGB image (drawn scaled down beyond :data:`MAX_SIDE`).
        amap: float (h, w) anomaly map at the model's resolution (upsampled here).
        threshold: map value above which a pixel is anomalous; it sits at 2/3
            of the colour scale, whose bottom is ``normal_level``.
        score, normalized_score: the image's raw and normalised (0..1) scores.
        truth: optional ground-truth mask (any size), outlined in green.
    """
    scale = min(1.0, MAX_SIDE / max(image.size))
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    w, h = image.size
    rgb = np.asarray(image.convert("RGB"))
    amap = resize_map(amap, h, w)
    span = 1.5 * max(threshold - normal_level, 1e-6)  # the colour scale's height (never 0, whatever the levels)
    top = normal_level + span
    colours = jet((amap - normal_level) / span)
    overlay = (0.5 * rgb + 0.5 * colours).astype(np.uint8)
    line = max(1, round(max(h, w) / 300))
    region = rgb.copy()
    region[outline(amap > threshold, line)] = RED
    first = rgb.copy()
    if truth is not None:
        mask = np.asarray(Image.fromarray((np.asarray(truth) > 0.5).astype(np.uint8) * 255).resize((w, h),
                                                                                                   Image.NEAREST))
        first[outline(mask > 0, line)] = GREEN
    text = max(12, round(min(h, 3 * w) / 28))
    font = _font(text)
    caption, bar = 2 * text + 10, 3 * text + 24
    canvas = Image.new("RGB", (3 * w + bar, h + caption), (0, 0, 0))
    for i, panel in enumerate((first, overlay, region)):
        canvas.paste(Image.fromarray(panel), (i * w, caption))
    draw = ImageDraw.Draw(canvas)
    anomalous = score > threshold
    verdict = "ANOMALOUS" if anomalous else "normal"
    name = title.encode("utf-8", "backslashreplace").decode("utf-8")  # file names that are not valid UTF-8
    draw.text((4, 4), name, fill=WHITE, font=font)
    draw.text((4, text + 8), f"score {score:.4f} (normalised {normalized_score:.2f}), threshold {threshold:.4f}: "
                             f"{verdict}", fill=RED if anomalous else WHITE, font=font)
    # The colour bar: bottom normal_level, the threshold at 2/3, top 1.5x as far.
    x0, y0, y1 = 3 * w + 6, caption + text // 2, caption + h - text // 2
    ramp = jet(np.linspace(1, 0, max(y1 - y0, 2))[:, None].repeat(10, 1))
    canvas.paste(Image.fromarray(ramp), (x0, y0))
    for value, height, colour in ((top, 1.0, GREY), (threshold, 2 / 3, RED), (normal_level, 0.0, GREY)):
        y = y0 + round((1 - height) * (y1 - y0 - 1))
        draw.line([(x0, y), (x0 + 14, y)], fill=colour, width=max(1, line))
        draw.text((x0 + 16, y - text // 2), f"{value:.3g}", fill=colour, font=_font(max(10, text * 2 // 3)))
    return canvas
