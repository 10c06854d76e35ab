"""The settings that define a SACD network, checked once, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from sacd_fast.backbones import BACKBONES, DEFAULT_BACKBONE, backbone_spec
from sacd_fast.options import SettingError, check_choice, check_flag, check_number, choices_of, setting

# The largest image side a model may take: a WideResNet-50-2 teacher's stride-4 features alone take 1 GB
# per image at 4096².
MAX_IMAGE_SIZE = 4096
MAX_FEACALI_LAYERS = 8  # more halvings than any teacher stage has channels for (FeaCali refuses those too)


@dataclass(frozen=True)
class SACDConfig:
    """What a SACD network is (its weights aside). Each field's help says what it is; a value out of
    range is refused with :class:`~sacd_fast.options.SettingError` naming the field."""

    backbone: str = setting(DEFAULT_BACKBONE, "teacher network (sacd_fast.backbones)")
    image_size: int = setting(256, "square input side, a multiple of 32")
    feacali_layers: int = setting(2, "how many times FeaCali halves the channels (L)", option=False)
    lambda_intra: float = setting(0.2, "weight of L_intra in the loss, > 0", option=False)
    sigma: float = setting(4.0, "Gaussian sigma of the anomaly map, at most image_size (0: no filter)",
                           option=False)
    teacher_input: Literal["imagenet", "native"] = setting(
        "native", "how the teacher sees the image: the scaling its weights were trained on, or ImageNet "
                  "mean/std for every backbone (they differ only for the efficientnet_lite ones)")
    feacali_norm_last: bool = setting(False, "whether FeaCali's last block has InstanceNorm (False: it keeps "
                                             "each channel's level; docs/method.md)", option=False)
    map_mode: Literal["add", "mul"] | None = setting(
        None, "how the per-scale anomaly maps combine: add (sum) or mul (product); default mul for the "
              "efficientnet_lite backbones, add (the paper's) for the ResNets")
    map_border: int | None = setting(
        None, "rows and columns at each edge of every scale's anomaly map that take the value of the nearest "
              "cell inside (the teacher's padding makes the edge cells unreliable); default 1 for the "
              "efficientnet_lite backbones, 0 (the paper's) for the ResNets")

    def __post_init__(self):
        spec = backbone_spec(self.backbone)
        if self.map_mode is None:
            object.__setattr__(self, "map_mode", spec.map_mode)  # frozen: set once, here
        if self.map_border is None:
            object.__setattr__(self, "map_border", spec.map_border)
        check_choice("map_mode", self.map_mode, MAP_MODES)
        check_choice("teacher_input", self.teacher_input, TEACHER_INPUTS)
        check_number("image_size", self.image_size, 32, MAX_IMAGE_SIZE, integer=True)
        if self.image_size % 32:
            raise SettingError("image_size", f"must be a multiple of 32, got {self.image_size}")
        check_flag("feacali_norm_last", self.feacali_norm_last)
        check_number("feacali_layers", self.feacali_layers, 1, MAX_FEACALI_LAYERS, integer=True)
        check_number("map_border", self.map_border, 0, self.image_size, integer=True)
        check_number("lambda_intra", self.lambda_intra, 0, above_low=True)
        check_number("sigma", self.sigma, 0, self.image_size)

    def to_dict(self) -> dict:
        """Plain values, as checkpoints and exported files store them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: object = "config") -> "SACDConfig":
        """The config stored as ``values`` (by :meth:`to_dict`, in the current format); an unknown key is
        refused with ValueError naming ``source``."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown config keys {sorted(unknown)}")
        return cls(**values)


TEACHER_INPUTS: tuple[str, ...] = choices_of(SACDConfig, "teacher_input")
MAP_MODES: tuple[str, ...] = choices_of(SACDConfig, "map_mode")
BACKBONE_NAMES: tuple[str, ...] = tuple(sorted(BACKBONES))
