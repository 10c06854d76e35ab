"""The two-part SACD loss (docs/method.md, Training).

    L_kd    = sum_k mean_b (1 - cos(t_k, s_k))                 trains OCBE + decoder
    L_intra = sum_k mean_b (1 - cos(sg(s_k), FeaCali_k(s'_k)))  trains FeaCali
    L       = L_kd + lambda * L_intra

``cos`` is taken over each sample's flattened (C*H*W) vector, as the RD4AD code
does.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sacd_fast.kernels.anomaly_map.reference import cosine_distance


def cosine_loss(targets: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_k mean_b (1 - cos(targets_k, outputs_k))``, a scalar."""
    total = 0.0
    for t, s in zip(targets, outputs):
        total = total + cosine_distance(t.flatten(1), s.flatten(1), dim=1).mean()
    return total


def sacd_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
              calibrated: Sequence[torch.Tensor], lambda_intra: float) -> dict[str, torch.Tensor]:
    """The loss terms. ``student`` (normal branch) is detached as FeaCali's target.

    Returns a dict with scalar tensors ``total``, ``kd`` and ``intra``.
    """
    kd = cosine_loss(teacher, student)
    intra = cosine_loss([s.detach() for s in student], calibrated)
    return {"total": kd + lambda_intra * intra, "kd": kd, "intra": intra}
