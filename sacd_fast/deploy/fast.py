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

On a CPU the fast model picks, at its first ``predict``, the fastest of the
backends that are installed and agree with the eager fp32 model on that
first batch within their precision's bound (:data:`CPU_BOUNDS`, a share of
the model's decision scale: the calibrated threshold's distance from the
median normal score) and, given the thresholds, decide every image of it
as the eager model does: OpenVINO in
bf16 (on CPUs with native bf16: AVX512-BF16 or AMX) or fp32, OpenVINO in int8
(given held-out normal images to quantise on, and only where its accuracy
guard holds: :mod:`sacd_fast.deploy.quantize`), ONNX Runtime in
fp32, eager PyTorch under bf16 autocast in channels_last (native bf16 only),
and the eager fp32 model itself, which is always a candidate. Each candidate
is run twice on that batch and the faster second run wins; the OpenVINO
candidates share one Core (:func:`sacd_fast.deploy.runtimes.openvino_core`),
and the losers are released before the winner is timed once more
(``seconds_after_search``). ``cpu_report`` records every candidate's time,
error and verdict. OpenVINO, NNCF and ONNX Runtime come with the ``deploy``
extra; the exported graph is the one :func:`sacd_fast.deploy.export` writes.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch
from torch import nn

from sacd_fast import kernels
from sacd_fast.cpu import native_bf16
from sacd_fast.deploy.graph import onnx_bytes
from sacd_fast.deploy.quantize import quantize_guarded
from sacd_fast.deploy.runtimes import ONNXRuntimeRunner, OpenVINORunner, openvino_model
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.network.model import SACD, Prediction

# The largest difference from the eager fp32 maps and scores a CPU backend may show on the first
# batch, per precision, as a share of the model's decision scale (:meth:`FastSACD.decision_scale`):
# the calibrated threshold minus the median normal score, about 0.035 for a Lite0 model whose maps
# span 0.003-0.04 (threshold 0.061). fp32 backends differ from eager only in summation order (7.6e-8
# there: 2e-6 of the scale). bf16 rounds every activation to 8 bits of mantissa: OpenVINO bf16 was
# 0.0022 off (6% of the scale), eager bf16 0.0017, on the development CPU (AMX).
# int8 (OCBE, decoder and FeaCali quantised, bf16 elsewhere) was 0.0019 off on that model (5%).
CPU_BOUNDS = {"fp32": 1e-3, "bf16": 0.15, "int8": 0.15}


def _cpu_candidates(model: SACD, calibration: torch.Tensor | None = None,
                    thresholds: Thresholds | None = None) -> dict:
    """name -> (precision, factory of a function images -> (scores, maps)), in the order tried; with
    ``calibration`` (held-out normal images in [0, 1]) an int8 OpenVINO model too, built only where its
    guard (:func:`sacd_fast.deploy.quantize.quantize_guarded`) holds."""
    exported = {}  # the ONNX graph and its OpenVINO conversion, each made once, when first needed

    def graph():
        if "onnx" not in exported:
            exported["onnx"] = onnx_bytes(model, batch=None)
        return exported["onnx"]

    def converted():
        if "openvino" not in exported:
            exported["openvino"] = openvino_model(graph())
        return exported["openvino"]

    def openvino(precision):
        return numpy_in(OpenVINORunner(converted(), precision))

    def int8():  # NNCF quantises a copy: the fp32 conversion serves the other OpenVINO candidates as it is
        quantized = quantize_guarded(converted(), calibration, None, thresholds)
        if not quantized.guard.passed:
            raise RuntimeError(f"its accuracy guard fails: {quantized.guard.describe()}")
        return numpy_in(OpenVINORunner(quantized.model, "bf16" if native_bf16() else "fp32"))

    def numpy_in(run):
        return lambda x: run(np.ascontiguousarray(x.numpy(), dtype=np.float32))

    def bf16_eager():
        cl = model.to(memory_format=torch.channels_last)

        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = cl.predict(x.contiguous(memory_format=torch.channels_last))
            return out.scores, out.maps
        return run

    def fp32_eager():
        def run(x):
            out = model.predict(x)
            return out.scores, out.maps
        return run

    # eager fp32 first, on the model as given: it reproduces the reference exactly, so one candidate always passes
    candidates = {"eager-fp32": ("fp32", fp32_eager)}
    if native_bf16():
        candidates["openvino-bf16"] = ("bf16", lambda: openvino("bf16"))
    if calibration is not None:
        candidates["openvino-int8"] = ("int8", int8)
    candidates["openvino-fp32"] = ("fp32", lambda: openvino("fp32"))
    candidates["onnxruntime-fp32"] = ("fp32", lambda: numpy_in(ONNXRuntimeRunner(graph())))
    if native_bf16():
        candidates["eager-bf16"] = ("bf16", bf16_eager)  # the last: it turns the model channels_last
    return candidates


def _timed(run, x: torch.Tensor) -> tuple[float, tuple]:
    """Seconds of ``run(x)``'s second call (the first allocates and compiles), and its output."""
    run(x)
    started = time.perf_counter()
    out = run(x)
    return time.perf_counter() - started, out


class FastSACD(nn.Module):
    """Wraps a trained :class:`SACD` with the same ``predict`` API and config."""

    def __init__(self, model: SACD, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
                 cuda_graphs: bool = True, thresholds: Thresholds | None = None,
                 calibration: torch.Tensor | None = None):
        super().__init__()
        self.thresholds, self.calibration = thresholds, calibration
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"fast(): dtype must be bfloat16, float16 or float32, got {dtype}")
        self.model = model.eval()
        self.config = model.config
        self.on_cuda = next(model.parameters()).device.type == "cuda"
        self.autocast_dtype = dtype if self.on_cuda and dtype != torch.float32 else None
        self.fp32_only = dtype == torch.float32  # on a CPU: only the fp32 backends are candidates
        self.compiled = self.on_cuda and compile
        self.cuda_graphs = self.compiled and cuda_graphs
        self._run = self._scores_and_maps
        self._batch_sizes: set[int] = set()  # the batch sizes compiled so far
        self.cpu_backend: str | None = None  # picked at the first CPU predict
        self.cpu_report: dict[str, dict] = {}
        if self.on_cuda:
            model.to(memory_format=torch.channels_last)
            for module in model.feacali:  # before any capture: nothing long-lived may come from a graph's pool
                kernels.prepare_conv_in_lrelu_stack([conv.weight for conv in module.convs],
                                                    self.autocast_dtype or torch.float32)
        if self.compiled:
            mode = "reduce-overhead" if cuda_graphs else "max-autotune-no-cudagraphs"
            self._run = torch.compile(self._scores_and_maps, mode=mode, dynamic=False)

    def _scores_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            teacher, calibrated = self.model.inference_features(x)
        maps = self.model.anomaly_maps(teacher, calibrated, x.shape[-2:])
        return maps.flatten(1).amax(1), maps

    def decision_scale(self, expected: Prediction) -> float:
        """How far apart scores must be to matter: the calibrated threshold's distance from the median
        normal score, or without thresholds, the eager maps' largest value less their median on the
        first batch."""
        if self.thresholds is not None:
            spread = self.thresholds.image - self.thresholds.score_median
            if spread > 0:
                return spread
        return max(float(expected.maps.max() - expected.maps.median()), 1e-12)

    def _pick_cpu_backend(self, x: torch.Tensor) -> None:
        """Time every CPU candidate on ``x`` and keep the fastest that agrees with eager fp32: its error
        within its precision's share of :meth:`decision_scale`, and with thresholds, the same decisions."""
        expected = self.model.predict(x)
        scale = self.decision_scale(expected)
        threshold = None if self.thresholds is None else self.thresholds.image
        best, runs = None, {}
        for name, (precision, build) in _cpu_candidates(self.model, self.calibration, self.thresholds).items():
            if self.fp32_only and precision != "fp32":
                continue
            try:
                run = build()
                seconds, (scores, maps) = _timed(run, x)
            except Exception as e:  # noqa: BLE001 -- an extra not installed, or a runtime refusing the graph
                self.cpu_report[name] = {"precision": precision, "failed": f"{type(e).__name__}: {e}"}
                continue
            runs[name] = run
            scores = torch.as_tensor(scores).float()
            error = max(float((torch.as_tensor(maps).float() - expected.maps).abs().max()),
                        float((scores - expected.scores).abs().max()))
            same = threshold is None or bool(torch.equal(scores > threshold, expected.scores > threshold))
            within = error <= CPU_BOUNDS[precision] * scale and same
            self.cpu_report[name] = {"precision": precision, "seconds": seconds, "max_error": error,
                                     "bound": CPU_BOUNDS[precision] * scale, "same_decisions": same,
                                     "within_bound": within}
            if within and (best is None or seconds < best[1]):
                best = (name, seconds)
        self.cpu_backend = best[0]
        self._run = runs.pop(self.cpu_backend)
        run = None  # noqa: F841 -- the loop's last candidate, a loser perhaps
        runs.clear()  # the losers' compiled models and their memory go before the winner is timed again
        gc.collect()
        if self.cpu_backend != "eager-bf16":
            self.model.to(memory_format=torch.contiguous_format)
        self.cpu_report[self.cpu_backend]["seconds_after_search"] = _timed(self._run, x)[0]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Prediction:
        """Anomaly maps and scores for an ImageNet-normalised batch (B, 3, H, W)."""
        x = self.model.check_input(x)
        if not self.on_cuda:
            if self.cpu_backend is None:
                self._pick_cpu_backend(x)
            scores, maps = self._run(x)
            return Prediction(scores=torch.as_tensor(scores).float(), maps=torch.as_tensor(maps).float())
        batch = x.shape[0]
        if self.compiled:
            # One graph per batch size. A batch smaller than one already compiled
            # (a dataset's last) is padded with zero images instead of compiled
            # anew: each image is scored on its own, so padding changes no result.
            size = min((n for n in self._batch_sizes if n >= batch), default=batch)
            self._batch_sizes.add(size)
            if size > batch:
                x = torch.cat([x, x.new_zeros((size - batch, *x.shape[1:]))])
        x = x.contiguous(memory_format=torch.channels_last)
        with kernels.triton_in_compiled_graphs():
            scores, maps = self._run(x)
        if self.cuda_graphs or x.shape[0] > batch:  # graph outputs live in its pool until the next replay
            maps, scores = maps[:batch].clone(), scores[:batch].clone()
        return Prediction(scores=scores, maps=maps)


def fast(model: SACD, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
         cuda_graphs: bool = True, thresholds: Thresholds | None = None,
         calibration: torch.Tensor | None = None
         ) -> FastSACD:
    """The fast version of a trained model (its weights are shared, not copied).

    Args:
        model: a trained :class:`SACD`, on the device it should run on.
        dtype: autocast dtype on CUDA (bfloat16, float16, or float32 for none); on a
            CPU, float32 keeps the choice to the fp32 backends.
        compile: torch.compile the whole inference on CUDA.
        cuda_graphs: capture one CUDA graph per batch size (needs ``compile``).
        thresholds: the checkpoint's calibrated thresholds (``image``, ``score_median``): on a CPU a
            backend must then stay within its share of their scale and decide as the eager model does.
        calibration: on a CPU, held-out normal images in [0, 1] (N, 3, S, S): an int8 OpenVINO model
            quantised on them is a candidate too, where its accuracy guard holds.
    """
    return FastSACD(model, dtype, compile, cuda_graphs, thresholds, calibration)
