"""Tests for dmlviz.features: cached feature extraction (keys, corrupt entries, taps), the
local + global maps, and the device contract (default "auto", CPU results, the model left where
and in the modes it was)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn as nn
from sklearn.datasets import load_sample_images

from dmlviz.backbones import EfficientNetLite0, SmallCNN, efficientnet_lite0
from dmlviz.cache import cache_dir
from dmlviz.features import extract_features, local_global_maps

EXPECTED = {"chelsea": {281, 282, 283, 284, 285}}  # tabby … Egyptian cat (see test_backbones)


pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
            "rocket": skimage.data.rocket(), "flower": load_sample_images().images[1]}


# ------------------------------------------------------------------ extract_features and the cache


def _counting(net: nn.Module) -> list[int]:
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    return calls


def _entries():
    return sorted((cache_dir() / "features").glob("*.pt"))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache" and cache_dir().is_dir()
    monkeypatch.delenv("DMLVIZ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dmlviz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dmlviz"


def test_cache_hit_returns_identical_tensor_without_recomputing():
    torch.manual_seed(0)
    net = SmallCNN(1, embedding_dim=8, width=4).train()
    calls = _counting(net)
    x = torch.randn(10, 1, 8, 8)
    first = extract_features(net, x, batch_size=4, device="cpu", progress=False)
    assert calls == [4, 4, 2] and first.shape == (10, 8) and len(_entries()) == 1
    assert net.training  # the model's mode is restored
    second = extract_features(net, x, batch_size=4, device="cpu", progress=False)
    assert calls == [4, 4, 2] and torch.equal(first, second)
    with torch.no_grad():
        torch.testing.assert_close(first, net.eval()(x))


def test_changed_inputs_or_weights_get_a_new_key():
    torch.manual_seed(0)
    net = SmallCNN(1, embedding_dim=8, width=4)
    calls = _counting(net)
    x = torch.randn(3, 1, 8, 8)
    base = extract_features(net, x, progress=False)
    extract_features(net, x + 1, progress=False)
    with torch.no_grad():
        net.embed.bias.add_(1.0)  # in-place change of the weights
    changed = extract_features(net, x, progress=False)
    assert len(calls) == 3 and len(_entries()) == 3
    torch.testing.assert_close(changed, base + 1.0)


def test_different_taps_get_different_keys(model):
    x = torch.randn(2, 3, 64, 64)
    s8 = extract_features(model, x, stride=8, progress=False)
    s16 = extract_features(model, x, stride=16, progress=False)
    head = extract_features(model, x, stride=32, head=True, progress=False)
    logits = extract_features(model, x, progress=False)
    assert s8.shape == (2, 40, 8, 8) and s16.shape == (2, 112, 4, 4)
    assert head.shape == (2, 1280, 2, 2) and logits.shape == (2, 1000)
    assert len(_entries()) == 4
    net = SmallCNN(3, embedding_dim=8, width=4)
    assert extract_features(net, x, stride=4, progress=False).shape == (2, 8, 16, 16)
    assert extract_features(net, x, progress=False).shape == (2, 8)
    assert len(_entries()) == 6


def test_corrupt_cache_entry_is_rebuilt_with_a_warning():
    torch.manual_seed(0)
    net = SmallCNN(1, embedding_dim=8, width=4)
    calls = _counting(net)
    x = torch.randn(5, 1, 8, 8)
    good = extract_features(net, x, progress=False)
    (entry,) = _entries()
    entry.write_bytes(b"\x00garbage, not a torch file")
    with pytest.warns(UserWarning, match=r"(?s)unreadable.*rebuilding"):
        rebuilt = extract_features(net, x, progress=False)
    assert torch.equal(rebuilt, good) and len(calls) == 2
    assert torch.load(entry, weights_only=True)["features"].shape == (5, 8)  # rewritten
    torch.save({"key": "someone else's", "features": torch.zeros(5, 8)}, entry)
    with pytest.warns(UserWarning, match="stale.*key does not match"):
        assert torch.equal(extract_features(net, x, progress=False), good)
    torch.save([1, 2, 3], entry)  # readable, but not an entry at all
    with pytest.warns(UserWarning, match="stale"):
        assert torch.equal(extract_features(net, x, progress=False), good)
    assert len(calls) == 4


def test_uint8_images_go_through_prepare(model, photos):
    images = [photos["chelsea"], photos["coffee"], photos["rocket"]]
    feats = extract_features(model, images, stride=16, batch_size=2, device="cpu", progress=False)
    with torch.no_grad():
        expected = model.feature_maps(model.prepare(images), (16,))[16]
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)
    assert feats.shape == (3, 112, 14, 14) and feats.device.type == "cpu"
    assert extract_features(model, photos["flower"], cache=False, progress=False).shape == (1, 1000)
    assert len(_entries()) == 1  # cache=False wrote nothing


def test_extract_features_errors_name_the_argument(model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"stride must be None or one of \(2, 4, 8, 16, 32\).*got 3"):
        extract_features(model, x, stride=3)
    with pytest.raises(ValueError, match=r"stride must be None or one of \(4,\) for SmallCNN, got 8"):
        extract_features(SmallCNN(), x, stride=8)
    with pytest.raises(ValueError, match="uint8 images need a model with a prepare"):
        extract_features(SmallCNN(), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        extract_features(model, x, batch_size=0)
    with pytest.raises(ValueError, match="head=True needs"):
        extract_features(model, x, stride=16, head=True)
    with pytest.raises(ValueError, match=r"must be \(B, C, H, W\), got \(3, 32, 32\)"):
        extract_features(model, x[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_features_match_cpu(photos):
    model = efficientnet_lite0()
    images = [photos["chelsea"], photos["coffee"]]
    cpu = extract_features(model, images, stride=16, cache=False, progress=False)
    gpu = extract_features(model, images, stride=16, device="cuda", cache=False, progress=False)
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
    assert gpu.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())  # left where it was
    assert model.top_k(images[0])[0][0][0] in EXPECTED["chelsea"]
    local, glob = local_global_maps(model, model.prepare(images), device="cuda", cache=False,
                                    progress=False)
    assert local.device.type == glob.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())


# ------------------------------------------------------------------ local + global maps


def test_local_global_maps_equal_the_backbone_taps():
    torch.manual_seed(0)
    backbone = efficientnet_lite0(pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    local, glob = local_global_maps(backbone, x, device="cpu", progress=False)
    with torch.no_grad():
        ref = backbone.feature_maps(x, (16, 32))
    assert torch.allclose(local, ref[16], atol=1e-5) and torch.allclose(glob, ref[32], atol=1e-4)
    assert not any(m.training for m in backbone.modules())  # modes left as they were
    again = local_global_maps(backbone, x, device="cpu", progress=False)  # from the cache
    assert torch.equal(again[1], glob)
    with pytest.raises(ValueError, match="EfficientNetLite0"):
        local_global_maps(torch.nn.Identity(), x)


# ------------------------------------------------------------------ device contract


@pytest.mark.parametrize("fn", [extract_features, local_global_maps])
def test_device_defaults_to_auto(fn):
    assert inspect.signature(fn).parameters["device"].default == "auto"


def _modes(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def test_model_is_left_where_and_in_the_modes_it_was():
    torch.manual_seed(0)
    backbone = efficientnet_lite0(pretrained=False).train()
    backbone._blocks[3].eval()  # mixed modes: each submodule gets its own back
    modes = _modes(backbone)
    x = torch.randn(2, 3, 32, 32)
    for out in (extract_features(backbone, x, stride=8, progress=False),
                *local_global_maps(backbone, x, progress=False)):
        assert out.device.type == "cpu" and out.dtype == torch.float32
        assert _modes(backbone) == modes
    with torch.no_grad():
        ref = backbone.eval().feature_maps(x, (8,))[8]
    backbone.train()
    backbone._blocks[3].eval()
    torch.testing.assert_close(extract_features(backbone, x, stride=8, device="cpu", cache=False,
                                                progress=False), ref)  # computed in eval mode
    net = SmallCNN(3, embedding_dim=8, width=4).train()
    with pytest.raises(ValueError, match="x must be a float tensor"):
        extract_features(net, torch.randn(2, 1, 16, 16), progress=False)  # raises mid-run
    assert all(_modes(net)) and all(p.device.type == "cpu" for p in net.parameters())
