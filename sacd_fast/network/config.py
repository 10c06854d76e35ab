"""The settings that define a SACD network, checked once, stored in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

Backbone = Literal["wide_resnet50_2", "resnet18", "efficientnet_lite0", "efficientnet_lite2"]
TeacherInput = Literal["imagenet", "native"]
MapMode = Literal["add", "mul"]
BACKBONES: tuple[str, ...] = get_args(Backbone)
TEACHER_INPUTS: tuple[str, ...] = get_args(TeacherInput)
MAP_MODES: tuple[str, ...] = get_args(MapMode)


# The largest image side a model may take: a WideResNet-50-2 teacher's stride-4 features alone take 1 GB
# per image at 4096².
MAX_IMAGE_SIZE = 4096
MAX_FEACALI_LAYERS = 8  # more halvings than any teacher stage has channels for (FeaCali refuses those too)


def is_lite(backbone: str) -> bool:
    """Whether ``backbone`` is an EfficientNet-Lite (signed, narrow stages, TensorFlow padding)."""
    return backbone.startswith("efficientnet_lite")


def default_map_mode(backbone: str) -> str:
    """How the per-scale maps combine unless told: their product for the EfficientNet-Lite teachers (better on
    every set it was measured on, docs/method.md), their sum (the paper's) for the ResNet teachers."""
    return "mul" if is_lite(backbone) else "add"


def default_map_border(backbone: str) -> int:
    """Border cells of each scale's distance map that read as their inner neighbour unless told: one for
    the EfficientNet-Lite teachers (docs/method.md), none (the paper's map) for the ResNet teachers."""
    return 1 if is_lite(backbone) else 0


def finite(value: int | float) -> bool:
    """Whether ``value`` is finite as a float (an int too large for one is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class SACDConfig:
    """What a SACD network is (its weights aside).

    Attributes:
        backbone: the teacher, "wide_resnet50_2" (the paper's), "resnet18", "efficientnet_lite0" or
            "efficientnet_lite2".
        image_size: the training and inference side length, a multiple of 32 up to :data:`MAX_IMAGE_SIZE`.
        feacali_layers: how many times FeaCali halves the channels (L), 1 to :data:`MAX_FEACALI_LAYERS`.
        lambda_intra: weight of L_intra in the loss, > 0.
        sigma: Gaussian sigma of the anomaly map, in [0, image_size] (0: no filter).
        teacher_input: "native" (the scaling the teacher's weights were trained on) or
            "imagenet" (ImageNet mean/std for every teacher); they differ only for EfficientNet-Lite.
        feacali_norm_last: whether FeaCali's last block has InstanceNorm (False: it
            keeps each channel's level; docs/method.md, "FeaCali's last block").
        map_mode: "add" sums the upsampled per-scale maps, "mul" multiplies them;
            None: :func:`default_map_mode` of the backbone.
        map_border: how many rows and columns at each edge of every scale's distance map
            take the distance of the nearest cell inside them, an integer >= 0;
            None: :func:`default_map_border` of the backbone.
    """

    backbone: Backbone = "wide_resnet50_2"
    image_size: int = 256
    feacali_layers: int = 2
    lambda_intra: float = 0.2
    sigma: float = 4.0
    teacher_input: TeacherInput = "native"
    feacali_norm_last: bool = False
    map_mode: MapMode | None = None
    map_border: int | None = None

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if self.map_mode is None:
            object.__setattr__(self, "map_mode", default_map_mode(self.backbone))  # frozen: set once, here
        if self.map_border is None:
            object.__setattr__(self, "map_border", default_map_border(self.backbone))
        if self.map_mode not in MAP_MODES:
            raise ValueError(f"map_mode must be one of {MAP_MODES}, got {self.map_mode!r}")
        if self.teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"teacher_input must be one of {TEACHER_INPUTS}, got {self.teacher_input!r}")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= MAX_IMAGE_SIZE or size % 32:
            raise ValueError(f"image_size must be a multiple of 32 in [32, {MAX_IMAGE_SIZE}], got {size!r}")
        if not isinstance(self.feacali_norm_last, bool):
            raise ValueError(f"feacali_norm_last must be True or False, got {self.feacali_norm_last!r}")
        for name, least, most in (("feacali_layers", 1, MAX_FEACALI_LAYERS), ("map_border", 0, size)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
                raise ValueError(f"{name} must be an integer in [{least}, {most}], got {value!r}")
        for name, positive in (("lambda_intra", True), ("sigma", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        if self.sigma > size:
            raise ValueError(f"sigma must be at most image_size {size} (a wider Gaussian flattens the map), "
                             f"got {self.sigma!r}")


    def to_dict(self) -> dict:
        """Plain values, as checkpoints and exported files store them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: object = "config") -> "SACDConfig":
        """The config a checkpoint stored. Keys added since it was written take
        the value that reproduces how it was trained: ``teacher_input``
        "imagenet" (older checkpoints fed every teacher ImageNet-normalised
        input), ``feacali_norm_last`` True (older FeaCali modules normalised
        their last block), ``map_mode`` "add" (their thresholds were calibrated on
        summed maps), ``map_border`` 0 (their maps used every cell). ``teacher_scale``,
        an experiment that is no more, is dropped where it was "none" and refused where
        it was "channel". An unknown key is refused with ValueError naming ``source``."""
        values = dict(values)
        if values.get("teacher_scale", "none") != "none":
            raise ValueError(f"{source}: teacher_scale {values['teacher_scale']!r}: the model was trained with "
                             "its teacher's channels rescaled, an option this version no longer has (it was not "
                             "the default; docs/results.md keeps its measurements): train it again")
        values.pop("teacher_scale", None)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{source}: unknown config keys {sorted(unknown)}")
        return cls(**{"teacher_input": "imagenet", "feacali_norm_last": True, "map_mode": "add", "map_border": 0,
                      **values})
