"""sacd_fast: SACD industrial anomaly detection, standard and fast."""

from sacd_fast.data.synthesis import synthesize
from sacd_fast.deploy.export import Inferencer, export
from sacd_fast.deploy.fast import FastSACD, fast
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.model import SACD, Prediction, normalize
from sacd_fast.profile import profile

__all__ = ["SACD", "SACDConfig", "FastSACD", "Inferencer", "Prediction", "export", "fast", "normalize", "profile",
           "synthesize"]
__version__ = "0.1.0"
