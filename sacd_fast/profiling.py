"""Parameter and FLOP counts per part of the model, with fvcore.

fvcore counts one multiply-add as one flop. For WideResNet-50-2 at 256² this
gives teacher 12.0 G, OCBE 7.3 G, decoder 11.2 G, FeaCali 9.1 G per image
(docs/method.md's sizes), and 24.9 M, 58.9 M, 24.9 M, 15.5 M parameters.
"""

from __future__ import annotations

import logging

import torch

from sacd_fast.kernels.anomaly_map.reference import gaussian_radius
from sacd_fast.network.model import SACD

PARTS = ("teacher", "ocbe", "decoder", "feacali")


def _flops(module: torch.nn.Module, inputs: tuple) -> int:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)  # elementwise adds and activations: not multiply-adds
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total())


def anomaly_map_flops(model: SACD, image_size: int) -> int:
    """Multiply-adds of the anomaly map for one image: three per channel and
    feature pixel for the cosine, 4 taps per output pixel and scale for the
    bilinear upsampling, 2 x (2r + 1) taps per output pixel for the Gaussian."""
    device = next(model.parameters()).device
    with torch.no_grad():
        features = model.teacher(torch.zeros(1, 3, image_size, image_size, device=device))
    pixels = image_size * image_size
    radius = gaussian_radius(model.config.sigma)
    return sum(3 * f[0].numel() for f in features) + 4 * len(features) * pixels + 2 * (2 * radius + 1) * pixels


def profile(model: SACD, image_size: int | None = None) -> dict[str, dict[str, int]]:
    """``{part: {"params": int, "flops": int}}`` for teacher, ocbe, decoder,
    feacali and total, for one image of side ``image_size`` (default: the
    model's)."""
    size = image_size or model.config.image_size
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            teacher = model.teacher(x)
            code = model.ocbe(teacher)
            student = model.decoder(code)
        flops = {"teacher": _flops(model.teacher, (x,)), "ocbe": _flops(model.ocbe, (teacher,)),
                 "decoder": _flops(model.decoder, (code,)),
                 "feacali": sum(_flops(f, (s,)) for f, s in zip(model.feacali, student))}
    finally:
        logger.setLevel(level)
        model.train(was_training)
    report = {part: {"params": sum(p.numel() for p in getattr(model, part).parameters()), "flops": flops[part]}
              for part in PARTS}
    report["total"] = {key: sum(report[p][key] for p in PARTS) for key in ("params", "flops")}
    return report
