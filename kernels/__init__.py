"""Compute kernels of sacd_fast (installed as ``sacd_fast.kernels``).

The public functions below are what the model calls. Their meaning is fixed by
the pure-PyTorch references in :mod:`sacd_fast.kernels.reference`.
"""

from .reference import conv_in_lrelu, cosine_anomaly_map, simplex_noise3d

__all__ = ["conv_in_lrelu", "cosine_anomaly_map", "simplex_noise3d"]
