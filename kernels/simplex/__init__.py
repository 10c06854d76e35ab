"""OpenSimplex noise and the anomaly synthesis: ``reference`` (PyTorch) and ``triton`` (the kernels)."""
