"""The multi-scale cosine anomaly map: ``reference`` (PyTorch) and ``triton`` (the kernels)."""
