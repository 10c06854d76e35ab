"""sacd_fast: SACD industrial anomaly detection, standard and fast."""

from .fast import FastSACD, fast
from .model import SACD, Prediction, normalize
from .profile import profile
from .synthesis import synthesize

__all__ = ["SACD", "FastSACD", "Prediction", "fast", "normalize", "profile", "synthesize"]
__version__ = "0.1.0"
