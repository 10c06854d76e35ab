"""sacd_fast: SACD industrial anomaly detection, standard and fast.

The names below are imported when first used, so that ``sacd-fast --help``
and a mistyped option answer without loading torch.
"""

import importlib

_EXPORTS = {
    "SACD": "sacd_fast.network.model",
    "SACDConfig": "sacd_fast.network.config",
    "Thresholds": "sacd_fast.evaluation.calibration",
    "TrainSettings": "sacd_fast.settings",
    "fit": "sacd_fast.training.train",
    "FastSACD": "sacd_fast.deploy.fast",
    "Inferencer": "sacd_fast.deploy.export",
    "Prediction": "sacd_fast.network.model",
    "export": "sacd_fast.deploy.export",
    "fast": "sacd_fast.deploy.fast",
    "normalize": "sacd_fast.network.model",
    "profile": "sacd_fast.profiling",
    "synthesize": "sacd_fast.data.synthesis",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sacd_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
