"""The drop-in fast model: ``sacd_fast.fast(model)``.

On CUDA the whole of inference, teacher to scores, is one torch.compile'd
graph: the teacher, OCBE, decoder and FeaCali in channels_last under bf16 (or
fp16) autocast, then the anomaly map. It is compiled inside
:func:`sacd_fast.kernels.triton_in_compiled_graphs`, so FeaCali's
conv + InstanceNorm + LeakyReLU chain (the fused Triton kernels, or cuDNN for a
shape where that was measured faster) and the Triton anomaly map run as custom
ops (the map reads the low-precision features and reduces them in fp32), and
inductor generates the rest. With ``cuda_graphs`` each batch
size is captured once as a CUDA graph ("reduce-overhead"); the maps and scores
are copied out of the graph's memory, so a later call cannot overwrite them. A
batch smaller than one already compiled is padded up to it, so the last,
partial batch of a dataset costs no new compilation.

On a CPU nothing is changed: the eager fp32 reference ops run, so the fast
model is never slower than eager there. On the 2-core development CPU
(bench/test_bench_model.py, 128²), torch.compile's effect on the whole model
varied from run to run: 0.5x to 1.3x for ResNet-18 at batch 1, and 1.4x to
1.6x for Lite0. So it is not applied on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .model import SACD, Prediction


class FastSACD(nn.Module):
    """Wraps a trained :class:`SACD` with the same ``predict`` API and config."""

    def __init__(self, model: SACD, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
                 cuda_graphs: bool = True):
        super().__init__()
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"fast(): dtype must be bfloat16, float16 or float32, got {dtype}")
        self.model = model.eval()
        self.config = model.config
        self.on_cuda = next(model.parameters()).device.type == "cuda"
        self.autocast_dtype = dtype if self.on_cuda and dtype != torch.float32 else None
        self.compiled = self.on_cuda and compile
        self.cuda_graphs = self.compiled and cuda_graphs
        self._run = self._maps_and_scores
        self._batch_sizes: set[int] = set()  # the batch sizes compiled so far
        if self.on_cuda:
            model.to(memory_format=torch.channels_last)
        if self.compiled:
            mode = "reduce-overhead" if cuda_graphs else "max-autotune-no-cudagraphs"
            self._run = torch.compile(self._maps_and_scores, mode=mode, dynamic=False)

    def _maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            teacher, calibrated = self.model.inference_features(x)
        maps = self.model.anomaly_maps(teacher, calibrated, x.shape[-2:])
        return maps, maps.flatten(1).amax(1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Prediction:
        """Anomaly maps and scores for an ImageNet-normalised batch (B, 3, H, W)."""
        x = self.model.check_input(x)
        batch = x.shape[0]
        if self.compiled:
            # One graph per batch size. A batch smaller than one already compiled
            # (a dataset's last) is padded with zero images instead of compiled
            # anew: each image is scored on its own, so padding changes no result.
            size = min((n for n in self._batch_sizes if n >= batch), default=batch)
            self._batch_sizes.add(size)
            if size > batch:
                x = torch.cat([x, x.new_zeros((size - batch, *x.shape[1:]))])
        if self.on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with kernels.triton_in_compiled_graphs():
            maps, scores = self._run(x)
        if self.cuda_graphs or x.shape[0] > batch:  # graph outputs live in its pool until the next replay
            maps, scores = maps[:batch].clone(), scores[:batch].clone()
        return Prediction(scores=scores, maps=maps)


def fast(model: SACD, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
         cuda_graphs: bool = True) -> FastSACD:
    """The fast version of a trained model (its weights are shared, not copied).

    Args:
        model: a trained :class:`SACD`, on the device it should run on.
        dtype: autocast dtype on CUDA (bfloat16, float16, or float32 for none).
        compile: torch.compile the whole inference on CUDA.
        cuda_graphs: capture one CUDA graph per batch size (needs ``compile``).
    """
    return FastSACD(model, dtype, compile, cuda_graphs)
