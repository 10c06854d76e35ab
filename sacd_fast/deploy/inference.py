"""Loading a trained checkpoint for inference, and reading image files as `sacd-fast predict` does."""

from __future__ import annotations

import numpy as np
import torch

from sacd_fast.checkpoint import calibration_files, load_checkpoint
from sacd_fast.data.datasets import ImageFiles
from sacd_fast.deploy.fast import fast as make_fast
from sacd_fast.deploy.quantize import MAX_CALIBRATION_IMAGES
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.network.model import SACD


def load_for_inference(path, device, fast: bool = False) -> tuple[SACD, Thresholds]:
    """The model of a checkpoint written by ``sacd-fast train`` (read once), on
    ``device`` (wrapped by :func:`sacd_fast.fast` with ``fast``, given on a CPU the
    held-out normal images the checkpoint records, where they are still there), and its thresholds."""
    payload = load_checkpoint(path)
    if "thresholds" not in payload:
        raise ValueError(f"{path} has no calibrated threshold: it was not written by `sacd-fast train`, or its "
                         "training has not finished (run the same train command again to finish it)")
    thresholds = Thresholds.from_dict(payload["thresholds"], path)
    model = SACD.from_payload(payload, path).to(device)
    if not fast:
        return model, thresholds
    calibration = None
    if torch.device(device).type == "cpu" and payload.get("calibration_images"):
        try:
            calibration = read_images(calibration_files(payload, path), model.config.image_size,
                                      MAX_CALIBRATION_IMAGES)
        except (OSError, ValueError):  # moved or altered since training: no int8 candidate
            calibration = None
    return make_fast(model, thresholds=thresholds, calibration=calibration), thresholds


def read_images(paths, image_size: int, most: int | None = None) -> torch.Tensor:
    """Image files or folders (checked, as ``sacd-fast predict`` reads them) as one (N, 3, S, S) batch in
    [0, 1]; with ``most``, at most that many, spread evenly over them."""
    found = ImageFiles(paths, image_size)
    found.check(progress=False)
    chosen = range(len(found)) if most is None else \
        np.unique(np.linspace(0, len(found) - 1, min(len(found), most)).round().astype(int))
    return torch.stack([found[int(i)]["image"] for i in chosen])
