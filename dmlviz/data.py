"""Datasets for the workbench, all offline.

* :func:`load_digits` — scikit-learn's 8×8 handwritten digits (1797 images, 10 classes).
* :func:`make_shapes` — a procedural DML dataset written for this project: every class is a
  (shape, colour, texture) combination; within a class position, scale, rotation and
  brightness vary, on a cluttered textured background with small distractor shapes. Object
  masks come with it, so notebooks can measure how much attention falls on the object.
* :func:`load_photos` — the real photos that ship with scikit-image and scikit-learn.
* :class:`ImageFolder` — a user's dataset with one folder per class (CUB-200, Cars-196, SOP…).
* :func:`load_embeddings` — a user's precomputed embeddings and labels from ``.npz``.
* :func:`class_disjoint_split` and :class:`PKSampler` — the DML protocol: train on the first
  half of the classes, test on the unseen rest; batches of P classes × K images.
"""

from __future__ import annotations

import colorsys
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmlviz.checks import check_finite, check_int, check_labels, nonfinite_rows
from dmlviz.utils import derive_seed

# ----------------------------------------------------------------------------------------
# A labelled image set (what every loader returns)


@dataclass
class LabelledImages:
    """Images with class labels (and, for shapes, object masks).

    Attributes:
        images: ``(N, C, S, S)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class ids.
        masks: ``(N, S, S)`` bool object masks, or ``None`` when the data has none.
        class_names: one name per class id.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> LabelledImages:
        """The images at ``indices`` (labels keep their original class ids)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        masks = None if self.masks is None else self.masks[idx]
        return LabelledImages(self.images[idx], self.labels[idx], masks, self.class_names)

    def as_uint8(self) -> np.ndarray:
        """Images as ``(N, S, S, 3)`` uint8 RGB arrays (grey images are repeated to RGB)."""
        x = self.images
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def load_digits() -> LabelledImages:
    """scikit-learn's handwritten digits as ``images (N, 1, 8, 8)`` in [0, 1] and ``labels (N,)``."""
    from sklearn.datasets import load_digits as _sk_load_digits

    digits = _sk_load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    return LabelledImages(images, labels, None, [str(d) for d in range(10)])


# ----------------------------------------------------------------------------------------
# Procedural shapes

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
COLOURS = {  # hue in [0, 1), chosen to be told apart by eye
    "red": 0.0, "orange": 0.08, "yellow": 0.15, "green": 0.33, "cyan": 0.5, "blue": 0.62,
}
TEXTURES = ("solid", "striped")
MAX_SHAPE_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)


def shape_classes() -> list[tuple[str, str, str]]:
    """All (shape, colour, texture) classes in the fixed order class ids follow.

    The order is a fixed shuffle (independent of any dataset seed), so the first half of
    the classes — the training classes of :func:`class_disjoint_split` — mixes all shapes
    and colours, and class ``c`` means the same thing in every dataset.
    """
    combos = [(s, c, t) for t in TEXTURES for s in SHAPES for c in COLOURS]
    solid, striped = combos[: len(combos) // 2], combos[len(combos) // 2 :]
    rng = np.random.default_rng(20200101)
    # all solid classes come first so 48 classes = every (shape, colour) pair once
    return [solid[i] for i in rng.permutation(len(solid))] + [
        striped[i] for i in rng.permutation(len(striped))
    ]


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of local coordinates ``(u, v)`` (unit radius) in a shape; shapes ``(n, S, S)``."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)

    def polygon(sides: int, apothem: float) -> np.ndarray:
        sector = 2 * math.pi / sides
        return r * np.cos(np.mod(theta, sector) - sector / 2) <= apothem

    if shape == "circle":
        return r <= 1.0
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "square":
        return polygon(4, 0.75)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":
        return polygon(3, 0.55)
    if shape == "hexagon":
        return polygon(6, 0.88)
    if shape == "star":
        return r <= 0.45 + 0.55 * ((np.cos(5 * theta) + 1) / 2) ** 3
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def _place(rng: np.random.Generator, n: int, size: int, radius: np.ndarray, grid: np.ndarray):
    """Local coordinates ``(u, v)``, each ``(n, S, S)``, of every pixel for n randomly placed,
    rotated and scaled shapes of the given radii (so a unit shape has that radius)."""
    radius = radius.astype(np.float32)
    cx = rng.uniform(radius, size - radius).astype(np.float32)  # (n,)
    cy = rng.uniform(radius, size - radius).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi, n)
    cos = (np.cos(angle) / radius).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / radius).astype(np.float32)[:, None, None]
    dx = grid[None, :] - cx[:, None]  # (n, S): x offsets per column
    dy = grid[None, :] - cy[:, None]  # (n, S): y offsets per row
    u = cos * dx[:, None, :] + sin * dy[:, :, None]
    v = cos * dy[:, :, None] - sin * dx[:, None, :]
    return u, v


def _backgrounds(rng: np.random.Generator, n: int, size: int, grid: np.ndarray) -> np.ndarray:
    """Low-frequency textured backgrounds ``(n, S, S, 3)``: a grey tint, three random plane
    waves (separable: sin(a + b) = sin a cos b + cos a sin b) and pixel noise."""
    base = rng.uniform(0.25, 0.6, (n, 1, 1, 1)) + rng.uniform(-0.08, 0.08, (n, 1, 1, 3))
    texture = np.zeros((n, size, size), np.float32)
    for _ in range(3):
        freq = rng.uniform(1.0, 4.0, (n, 1)) * 2 * math.pi / size
        direction = rng.uniform(0, 2 * math.pi, (n, 1))
        a = (freq * np.cos(direction) * grid[None, :]).astype(np.float32)  # (n, S) along x
        b = (freq * np.sin(direction) * grid[None, :] + rng.uniform(0, 2 * math.pi, (n, 1)))
        b = b.astype(np.float32)  # (n, S) along y, with the phase
        texture += 0.06 * (np.sin(a)[:, None, :] * np.cos(b)[:, :, None]
                           + np.cos(a)[:, None, :] * np.sin(b)[:, :, None])
    noise = rng.standard_normal((n, size, size, 1), dtype=np.float32) * 0.03
    return base.astype(np.float32) + texture[..., None] + noise


def make_shapes(
    num_classes: int = 48,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    distractors: int = 3,
) -> LabelledImages:
    """A procedural image dataset for deep metric learning, with object masks.

    Each class is one (shape, colour, texture) combination from :func:`shape_classes`
    (8 shapes × 6 colours × solid/striped = 96 classes at most; the first 48 are all solid).
    Within a class the object's position, scale (radius 22–34 % of the side), rotation and
    brightness (×0.7–1.1) vary; the background is a tinted low-frequency texture with noise
    and ``distractors`` small shapes of random colours behind the object.

    Args:
        num_classes: number of classes, 2 … 96.
        per_class: images per class, ≥ 1.
        size: image side S in pixels, ≥ 16.
        seed: the dataset is a deterministic function of all arguments.
        distractors: small clutter shapes per image, ≥ 0.

    Returns:
        ``LabelledImages`` with images ``(N, 3, S, S)``, labels ``(N,)`` (class-major order),
        masks ``(N, S, S)`` and class names such as ``"red striped star"``.
    """
    num_classes = check_int(num_classes, "num_classes", 2, MAX_SHAPE_CLASSES)
    per_class = check_int(per_class, "per_class", 1)
    size = check_int(size, "size (pixels)", 16)
    distractors = check_int(distractors, "distractors", 0)
    seed = check_int(seed, "seed", 0)

    rng = np.random.default_rng(seed)
    classes = shape_classes()[:num_classes]
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes), per_class)
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    images = _backgrounds(rng, n, size, grid)  # (N, S, S, 3)

    for _ in range(distractors):  # clutter first, so the object occludes it
        u, v = _place(rng, n, size, rng.uniform(0.06, 0.11, n) * size, grid)
        is_disc = (rng.integers(0, 2, n) == 0)[:, None, None]
        inside = np.where(is_disc, u * u + v * v <= 1, np.maximum(np.abs(u), np.abs(v)) <= 0.8)
        colour = rng.uniform(0.05, 0.95, (n, 1, 1, 3)).astype(np.float32)
        np.copyto(images, np.broadcast_to(colour, images.shape), where=inside[..., None])

    u, v = _place(rng, n, size, rng.uniform(0.22, 0.34, n) * size, grid)
    brightness = rng.uniform(0.7, 1.1, n).astype(np.float32)
    shape_of = np.array([SHAPES.index(shape) for shape, _, _ in classes])[labels]  # (N,)
    masks = np.zeros((n, size, size), bool)
    for s_id, shape in enumerate(SHAPES):
        rows = np.nonzero(shape_of == s_id)[0]
        if len(rows):
            masks[rows] = _shape_inside(shape, u[rows], v[rows])
    rgb = np.array([colorsys.hsv_to_rgb(COLOURS[c], 0.85, 0.95) for _, c, _ in classes], np.float32)
    fill = (rgb[labels] * brightness[:, None])[:, None, None, :]  # (N, 1, 1, 3)
    striped = np.array([t == "striped" for _, _, t in classes])[labels][:, None, None]
    # stripes in the object's own frame, so they rotate with it
    shade = np.where(striped, 0.45 + 0.55 * (np.sin(u * 3 * math.pi) > 0), 1.0).astype(np.float32)
    np.copyto(images, fill * shade[..., None], where=masks[..., None])

    images = np.clip(images, 0.0, 1.0).transpose(0, 3, 1, 2)
    names = [f"{colour} {texture} {shape}" for shape, colour, texture in classes]
    return LabelledImages(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels).long(),
        torch.from_numpy(masks),
        names,
    )


# ----------------------------------------------------------------------------------------
# Photos that ship with scikit-image / scikit-learn

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower")


def load_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Real RGB photos bundled with scikit-image and scikit-learn (no download).

    Args:
        names: a subset of :data:`PHOTO_NAMES` (``chelsea`` is the cat, ``coffee`` a cup,
            ``motorcycle`` the left stereo view); all of them when ``None``.

    Returns:
        ``{name: (H, W, 3) uint8 array}`` in the order asked for.
    """
    names = list(PHOTO_NAMES if names is None else [names] if isinstance(names, str) else names)
    unknown = [n for n in names if n not in PHOTO_NAMES]
    if unknown:
        raise ValueError(f"unknown photo(s) {unknown}; available: {list(PHOTO_NAMES)}")
    import skimage.data as skdata

    photos = {}
    for name in names:
        if name == "motorcycle":
            photos[name] = skdata.stereo_motorcycle()[0]
        elif name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            photos[name] = load_sample_image(f"{name}.jpg")
        else:
            photos[name] = getattr(skdata, name)()
    return photos


# ----------------------------------------------------------------------------------------
# A user's data: an ImageFolder tree, or precomputed embeddings

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class ImageFolder:
    """A user's dataset laid out one folder per class: ``root/<class>/<image>``.

    Files are checked when the folder is indexed: unreadable images are skipped with one
    warning that counts them. Images are read lazily with PIL.

    Args:
        root: the dataset folder.
        extensions: file name endings treated as images (case-insensitive).

    Attributes:
        classes: class folder names, sorted; class id = position in this list.
        samples: ``(path, class id)`` for every readable image.
        labels: ``(N,)`` int64 tensor of class ids.
    """

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        from PIL import Image

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder root {str(self.root.absolute())!r} does not "
                                    "exist or is not a folder; expected "
                                    "root/<class name>/<image files>")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"ImageFolder root {str(self.root)!r} has no class sub-folders; "
                             "expected root/<class name>/<image files>")
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = []
        unreadable: list[Path] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).iterdir()):
                if not path.is_file() or path.suffix.lower() not in exts:
                    continue
                try:
                    with Image.open(path) as img:
                        img.verify()
                except (OSError, SyntaxError, ValueError):  # PIL: unidentified or truncated
                    unreadable.append(path)
                    continue
                self.samples.append((path, label))
        if unreadable:
            warnings.warn(f"ImageFolder skipped {len(unreadable)} unreadable image file(s) under "
                          f"{str(self.root)!r}, e.g. {str(unreadable[0])!r}", stacklevel=2)
        if not self.samples:
            raise ValueError(f"ImageFolder root {str(self.root)!r} has class folders but no "
                             f"readable images with extensions {exts}")
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """The image as an ``(H, W, 3)`` uint8 RGB array, and its class id."""
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")), label

    def load(self, size: int = 64) -> LabelledImages:
        """All images resized to ``size × size`` as :class:`LabelledImages` (fits in memory?
        N·3·S² floats: CUB-200 at 64 px is about 0.6 GB)."""
        from PIL import Image

        size = check_int(size, "size (pixels)", 8)
        arrays = []
        for path, _ in self.samples:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return LabelledImages(images, self.labels.clone(), None, list(self.classes))


def load_embeddings(
    path: str | os.PathLike, embeddings_key: str = "embeddings", labels_key: str = "labels",
    *, drop_nonfinite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's precomputed embeddings and labels from an ``.npz`` file.

    Only numeric arrays are read (never pickled Python objects): a file that is not an
    ``.npz`` archive, or one holding an object array, is refused with a message saying how
    to write a plain one.

    Args:
        path: an ``.npz`` written e.g. by ``np.savez(path, embeddings=E, labels=y)``.
        embeddings_key: name of the ``(N, D)`` float array.
        labels_key: name of the ``(N,)`` integer array.
        drop_nonfinite: rows of the embeddings holding a NaN or ±inf are refused with a
            ``ValueError`` that counts them (default); with True they are dropped (with
            their labels) and a warning says how many.

    Returns:
        ``embeddings (N, D)`` float32 and ``labels (N,)`` int64 tensors.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the absolute path tried).
        ValueError: not an ``.npz`` archive, missing keys, object arrays, wrong shapes or
            dtypes, mismatched lengths, non-finite rows (unless dropped), no row left.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"embeddings file {str(path.absolute())!r} is a folder; allowed is an "
                         ".npz file")
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {str(path.absolute())!r} does not exist"
                                + ("" if path.is_absolute() else
                                   f" (the relative path {str(path)!r} was resolved against "
                                   f"the working directory {os.getcwd()!r})"))
    how = ("write one with np.savez(path, embeddings=E.astype(np.float32), "
           "labels=y.astype(np.int64))")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # an .npz is a zip of .npy files
        kind = "a single .npy array" if magic == b"\x93NUM" else "not a zip archive"
        raise ValueError(f"{str(path)!r} is not a readable .npz archive ({kind}; first bytes "
                         f"{magic!r}); {how}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive "
                         f"({type(err).__name__}); {how}") from err
    with archive:
        missing = [k for k in (embeddings_key, labels_key) if k not in archive.files]
        if missing:
            raise ValueError(f"{str(path)!r} lacks array(s) {missing}; it holds {archive.files}. "
                             "Pass embeddings_key=/labels_key= to name yours.")
        arrays = {}
        for key in (embeddings_key, labels_key):
            try:
                arrays[key] = np.asarray(archive[key])
            except ValueError as err:  # object arrays need pickle, which is never used here
                raise ValueError(f"{key!r} in {str(path)!r} is an object array (pickled Python "
                                 f"objects), which dmlviz does not load; save numeric arrays: "
                                 f"{how}") from err
            except Exception as err:  # a damaged member of the zip
                raise ValueError(f"{key!r} in {str(path)!r} is unreadable "
                                 f"({type(err).__name__}: {err}); {how}") from err
    embeddings, labels = arrays[embeddings_key], arrays[labels_key]
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{embeddings_key!r} must be a 2-D float array (N, D), got shape "
                         f"{embeddings.shape} of {embeddings.dtype}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_key!r} must be a 1-D integer array (N,), got shape "
                         f"{labels.shape} of {labels.dtype}")
    if len(labels) != len(embeddings):
        raise ValueError(f"{embeddings_key!r} has {len(embeddings)} rows but {labels_key!r} has "
                         f"{len(labels)} entries; they must match")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"{embeddings_key!r} in {str(path)!r} is empty, shape {embeddings.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf: counted below
        embeddings = torch.from_numpy(embeddings.astype(np.float32))
    labels = torch.from_numpy(labels.astype(np.int64))
    bad = nonfinite_rows(embeddings)
    if bool(bad.any()):
        if not drop_nonfinite:
            check_finite(embeddings, f"{embeddings_key!r} in {str(path)!r}")
        n_bad = int(bad.sum())
        if n_bad == len(bad):
            raise ValueError(f"every row of {embeddings_key!r} in {str(path)!r} is non-finite "
                             "(NaN or ±inf); nothing is left to load")
        warnings.warn(f"load_embeddings dropped {n_bad} of {len(bad)} rows of {embeddings_key!r} "
                      f"holding NaN or ±inf (drop_nonfinite=True)", stacklevel=2)
        embeddings, labels = embeddings[~bad], labels[~bad]
    return embeddings, labels


# ----------------------------------------------------------------------------------------
# The DML protocol: class-disjoint split and P×K batches


def class_disjoint_split(
    labels: torch.Tensor | np.ndarray | Sequence[int], train_fraction: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split by class: the first classes (sorted ids) train, the rest are unseen at test time.

    Args:
        labels: ``(N,)`` class ids.
        train_fraction: fraction of the classes used for training, in (0, 1); rounded to a
            whole number of classes with at least one class on each side.

    Returns:
        ``(train_indices, test_indices)``, int64 tensors of positions into ``labels``.
    """
    labels = check_labels(labels, "labels")
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
            or not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}")
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"class_disjoint_split needs at least 2 classes, labels hold {len(classes)}")
    n_train = min(max(round(len(classes) * train_fraction), 1), len(classes) - 1)
    is_train = torch.isin(labels, classes[:n_train])
    return torch.nonzero(is_train).flatten(), torch.nonzero(~is_train).flatten()


class PKSampler:
    """Batches of P classes × K images each — the usual sampler for pair-based DML losses.

    Each epoch yields ``len(self)`` batches; every batch draws P distinct classes, then K
    images of each (without replacement when the class has at least K images, with
    replacement otherwise). Deterministic for a seed: epoch e draws from
    ``utils.derive_seed(seed, e)``, so no two (seed, epoch) pairs share a batch order.

    Args:
        labels: ``(N,)`` class ids of the training set.
        p: classes per batch, 1 … number of classes.
        k: images per class, ≥ 1.
        seed: random seed.
        batches_per_epoch: defaults to N // (P·K) (at least 1).
    """

    def __init__(self, labels, p: int, k: int, seed: int = 0, batches_per_epoch: int | None = None):
        self.labels = check_labels(labels, "labels")
        self.classes = torch.unique(self.labels)
        if isinstance(p, (int, np.integer)) and not isinstance(p, bool) \
                and not 1 <= p <= len(self.classes):
            raise ValueError(f"p must be in 1..{len(self.classes)} (the number of classes), got {p}")
        p = check_int(p, "p", 1, len(self.classes))
        k = check_int(k, "k", 1)
        if batches_per_epoch is not None:
            batches_per_epoch = check_int(batches_per_epoch, "batches_per_epoch", 1)
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in self.classes]
        self.batches_per_epoch = batches_per_epoch or max(len(self.labels) // (p * k), 1)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        self.epoch += 1
        for _ in range(self.batches_per_epoch):
            chosen = torch.randperm(len(self.classes), generator=g)[: self.p]
            batch = []
            for c in chosen.tolist():
                pool = self.by_class[c]
                if len(pool) >= self.k:
                    pick = torch.randperm(len(pool), generator=g)[: self.k]
                else:
                    pick = torch.randint(len(pool), (self.k,), generator=g)
                batch.append(pool[pick])
            yield torch.cat(batch)  # (P·K,)
