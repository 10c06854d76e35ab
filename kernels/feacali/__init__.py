"""FeaCali's conv3x3 + InstanceNorm + LeakyReLU chain: ``reference`` (PyTorch) and ``triton`` (the kernels)."""
