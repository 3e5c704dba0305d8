import warnings

import numpy as np
import pytest
import torch

from dmlviz.data import (
    MAX_SHAPE_CLASSES,
    PHOTO_NAMES,
    ImageFolder,
    PKSampler,
    class_disjoint_split,
    load_digits,
    load_embeddings,
    load_photos,
    make_shapes,
    shape_classes,
)


def test_digits_shapes_and_range():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,)
    assert d.images.min() >= 0 and d.images.max() == 1.0
    assert set(d.labels.tolist()) == set(range(10))


def test_shapes_contents():
    s = make_shapes(num_classes=6, per_class=5, size=32, seed=3)
    assert s.images.shape == (30, 3, 32, 32) and s.images.dtype == torch.float32
    assert s.masks.shape == (30, 32, 32) and s.masks.dtype == torch.bool
    assert s.images.min() >= 0 and s.images.max() <= 1
    assert s.labels.tolist() == [c for c in range(6) for _ in range(5)]
    # every object is visible and smaller than the image
    frac = s.masks.float().mean(dim=(1, 2))
    assert (frac > 0.02).all() and (frac < 0.6).all()
    assert len(s.class_names) == 6 and len(set(s.class_names)) == 6


def test_shapes_deterministic_and_seed_dependent():
    a, b = make_shapes(4, 3, seed=1), make_shapes(4, 3, seed=1)
    c = make_shapes(4, 3, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_shapes_objects_have_class_colour():
    """Inside the mask a class's pixels share a hue; the background differs from it."""
    s = make_shapes(num_classes=2, per_class=8, size=48, seed=0)
    for i in range(len(s)):
        obj = s.images[i][:, s.masks[i]]  # (3, n_object_pixels)
        assert obj.std(dim=1).max() < 0.35
    classes = shape_classes()
    assert len(classes) == MAX_SHAPE_CLASSES == len(set(classes))
    assert all(t == "solid" for _, _, t in classes[:48])


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes"), ({"num_classes": 97}, "num_classes"),
    ({"per_class": 0}, "per_class"), ({"size": 8}, "size"), ({"distractors": -1}, "distractors"),
])
def test_shapes_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)


def test_photos_offline():
    photos = load_photos()
    assert list(photos) == list(PHOTO_NAMES)
    for img in photos.values():
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    with pytest.raises(ValueError, match="available"):
        load_photos(["lena"])


def _write_folder(root, classes=("a", "b"), per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_image_folder_reads_and_skips_unreadable(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "b" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        folder = ImageFolder(tmp_path)
    assert folder.classes == ["a", "b"] and len(folder) == 6
    img, label = folder[4]
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8 and label == 1
    data = folder.load(size=16)
    assert data.images.shape == (6, 3, 16, 16) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_clean_folder_does_not_warn(tmp_path):
    _write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolder(tmp_path)


def test_image_folder_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path)


def test_load_embeddings_roundtrip_and_errors(tmp_path):
    e = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float64)
    y = np.arange(10) % 3
    np.savez(tmp_path / "ok.npz", embeddings=e, labels=y)
    emb, lab = load_embeddings(tmp_path / "ok.npz")
    assert emb.dtype == torch.float32 and emb.shape == (10, 4) and lab.tolist() == y.tolist()

    np.savez(tmp_path / "keys.npz", feats=e, labels=y)
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['embeddings'\].*feats"):
        load_embeddings(tmp_path / "keys.npz")
    assert load_embeddings(tmp_path / "keys.npz", embeddings_key="feats")[0].shape == (10, 4)
    np.savez(tmp_path / "len.npz", embeddings=e, labels=y[:5])
    with pytest.raises(ValueError, match="must match"):
        load_embeddings(tmp_path / "len.npz")
    np.savez(tmp_path / "rank.npz", embeddings=e.ravel(), labels=y)
    with pytest.raises(ValueError, match="2-D float"):
        load_embeddings(tmp_path / "rank.npz")
    with pytest.raises(FileNotFoundError):
        load_embeddings(tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        load_embeddings(tmp_path / "corrupt.npz")


def test_class_disjoint_split():
    labels = torch.tensor([3, 0, 1, 2, 3, 0, 1, 2])
    train, test = class_disjoint_split(labels)
    assert set(labels[train].tolist()) == {0, 1} and set(labels[test].tolist()) == {2, 3}
    assert sorted(train.tolist() + test.tolist()) == list(range(8))
    train, test = class_disjoint_split(labels, train_fraction=0.99)  # keeps one test class
    assert set(labels[test].tolist()) == {3}
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_disjoint_split(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="train_fraction"):
        class_disjoint_split(labels, train_fraction=1.0)
    with pytest.raises(ValueError, match="integer tensor"):
        class_disjoint_split(torch.rand(5))


def test_pk_sampler():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2 + [3] * 6)
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    assert len(sampler) == 28 // 12
    epoch1 = list(sampler)
    for batch in epoch1:
        assert batch.shape == (12,)
        counts = torch.bincount(labels[batch], minlength=4)
        assert sorted(counts.tolist()) == [0, 4, 4, 4]  # P classes × K images
    epoch2 = list(sampler)
    assert any(not torch.equal(a, b) for a, b in zip(epoch1, epoch2, strict=True))
    again = list(PKSampler(labels, p=3, k=4, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(epoch1, again, strict=True))
    with pytest.raises(ValueError, match="p must be in 1..4"):
        PKSampler(labels, p=5, k=2)
    with pytest.raises(ValueError, match="k must be"):
        PKSampler(labels, p=2, k=0)
