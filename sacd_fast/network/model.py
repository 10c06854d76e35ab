"""The SACD model: teacher, OCBE, student decoder, FeaCali, loss and inference.

    normal branch:   x  -> T -> OCBE -> S            gives t_k and s_k
    abnormal branch: x' -> T -> OCBE -> S -> FeaCali gives s'_k calibrated
    t_k: the teacher's stage outputs
    inference:       a_k = 1 - cos(t_k, FeaCali_k(s_k)) (border cells: their inner neighbour's),
                     upsampled, summed (or multiplied),
                     Gaussian sigma 4; score = max of the map

Inputs are ImageNet-normalised (B, 3, H, W) with H and W multiples of 32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from sacd_fast import kernels
from sacd_fast.backbones import DEFAULT_BACKBONE, backbone_spec
from sacd_fast.network.blocks import BLOCKS
from sacd_fast.network.bottleneck import OCBE
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.decoder import Decoder
from sacd_fast.network.feacali import FeaCali
from sacd_fast.network.loss import sacd_loss
from sacd_fast.network.teacher import build_teacher
from sacd_fast.checkpoint import load_checkpoint, state_mismatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (B, 3, H, W) images: float values in [0, 1],
    or uint8 values in [0, 255] (returned as float32)."""
    if not isinstance(x01, torch.Tensor):
        raise ValueError(f"normalize expects a tensor, got {type(x01).__name__}")
    if x01.dtype == torch.uint8:
        x01 = x01.float() / 255.0
    elif not x01.is_floating_point():
        raise ValueError(f"normalize expects float images in [0, 1] or uint8 images, got {x01.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


@dataclass
class Prediction:
    """``scores``: float32 (B,) image anomaly scores; ``maps``: float32 (B, H, W)."""

    scores: torch.Tensor
    maps: torch.Tensor


class SACD(nn.Module):
    """Synthetic-Anomaly Contrastive Distillation.

    Args:
        backbone: a teacher of :data:`sacd_fast.backbones.BACKBONES`: "wide_resnet50_2" (the paper's),
            "resnet18", "efficientnet_lite0" or "efficientnet_lite2".
        teacher_weights: None (random: warns), a local state-dict file, or "imagenet".
        settings: the other fields of :class:`SACDConfig` (image_size, map_mode, ...), which the model
            keeps as ``config``.

    Example:
        >>> model = SACD("resnet18", teacher_weights=None, image_size=64)  # doctest: +SKIP
        >>> out = model.predict(torch.randn(2, 3, 64, 64))                  # doctest: +SKIP
        >>> out.scores.shape, out.maps.shape
        (torch.Size([2]), torch.Size([2, 64, 64]))
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, teacher_weights=None, **settings):
        super().__init__()
        self.config = config = SACDConfig(backbone=backbone, **settings)
        self.teacher = build_teacher(config.backbone, teacher_weights, config.teacher_input)
        block, ocbe_blocks, decoder_layers, width_per_group = backbone_spec(config.backbone).student
        channels = self.teacher.channels
        self.ocbe = OCBE(channels, BLOCKS[block], ocbe_blocks, width_per_group)
        self.decoder = Decoder(channels, BLOCKS[block], decoder_layers, width_per_group)
        self.feacali = nn.ModuleList(FeaCali(c, config.feacali_layers, norm_last=config.feacali_norm_last)
                                     for c in channels)

    @classmethod
    def from_config(cls, config: SACDConfig, teacher_weights=None) -> "SACD":
        """A model with untrained student weights for ``config``; ``teacher_weights`` as in the constructor."""
        return cls(teacher_weights=teacher_weights, **config.to_dict())

    def train(self, mode: bool = True) -> "SACD":
        super().train(mode)
        self.teacher.train(False)
        return self

    def student_parameters(self) -> list[nn.Parameter]:
        """OCBE + decoder parameters (trained by L_kd)."""
        return list(self.ocbe.parameters()) + list(self.decoder.parameters())

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """``x`` in the model's dtype; ValueError unless it is a finite float
        (B, 3, H, W) batch on the model's device, H and W positive multiples of 32."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected an ImageNet-normalised (B, 3, H, W) float tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got {x.dtype} (sacd_fast.normalize converts images)")
        if x.shape[2] < 32 or x.shape[3] < 32 or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"{name}: H and W must be positive multiples of 32, got {x.shape[2]}x{x.shape[3]}")
        weight = next(self.parameters())
        if x.device != weight.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {weight.device}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        return x.to(weight.dtype)

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features t_k: the teacher's stage outputs."""
        return self.teacher(x)

    def encode_decode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features t_k (no grad) and raw student features s_k."""
        t = self.teacher_features(x)
        return t, self.decoder(self.ocbe(t))

    def training_losses(self, x: torch.Tensor, x_synth: torch.Tensor,
                        teacher: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Loss terms for a normal batch ``x`` and its corrupted copy ``x_synth``
        (both ImageNet-normalised). L_intra trains FeaCali only: the abnormal
        branch's shared teacher/OCBE/decoder run without gradient. ``teacher``:
        the teacher's features of ``x`` when already known (they never change)."""
        x, x_synth = self.check_input(x, "x"), self.check_input(x_synth, "x_synth")
        if x.shape != x_synth.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_synth {tuple(x_synth.shape)} differ in shape")
        if teacher is None:
            t, s = self.encode_decode(x)
        else:
            t, s = teacher, self.decoder(self.ocbe(teacher))
        with torch.no_grad():
            _, s_abnormal = self.encode_decode(x_synth)
        calibrated = [f(sa) for f, sa in zip(self.feacali, s_abnormal)]
        return sacd_loss(t, s, calibrated, self.config.lambda_intra)

    def inference_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features t_k and calibrated student features FeaCali_k(s_k)."""
        t, s = self.encode_decode(x)
        return t, [f(si) for f, si in zip(self.feacali, s)]

    def anomaly_maps(self, teacher: list[torch.Tensor], calibrated: list[torch.Tensor], size) -> torch.Tensor:
        """float32 (B, H, W) maps from :meth:`inference_features`' output."""
        return kernels.cosine_anomaly_map(teacher, calibrated, size=size, sigma=self.config.sigma,
                                          mode=self.config.map_mode, border=self.config.map_border)

    def forward(self, x: torch.Tensor, x_synth: torch.Tensor,
                teacher: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The training forward pass, :meth:`training_losses` (what DistributedDataParallel calls)."""
        return self.training_losses(x, x_synth, teacher)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Prediction:
        """Anomaly maps and scores for an ImageNet-normalised batch (B, 3, H, W)."""
        x = self.check_input(x)
        was_training = self.training
        self.eval()
        try:
            maps = self.anomaly_maps(*self.inference_features(x), size=x.shape[-2:])
        finally:
            self.train(was_training)
        return Prediction(scores=maps.flatten(1).amax(1), maps=maps)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "SACD":
        """Rebuild a model (in eval mode) from a checkpoint written by :mod:`sacd_fast.training.train`.
        For the fast model, wrap it: ``sacd_fast.fast(SACD.from_checkpoint(path))``."""
        return cls.from_payload(load_checkpoint(path, map_location), path)

    @classmethod
    def from_payload(cls, payload: dict, source) -> "SACD":
        """The model (in eval mode) held by a checkpoint already read with
        :func:`sacd_fast.checkpoint.load_checkpoint` from ``source``."""
        config = SACDConfig.from_dict(payload["config"], f"checkpoint {source}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the teacher's weights come from the checkpoint
            model = cls.from_config(config)
        mismatch = state_mismatch(model.state_dict(), payload["state_dict"])
        if mismatch:
            raise ValueError(f"checkpoint {source} does not match SACD({config}): {mismatch}")
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint {source} does not match SACD({config}): {e}") from e
        return model.eval()
