"""Cached feature extraction: run a backbone (or any ``nn.Module``) over images once, keep the
result on disk.

:func:`extract_features` taps a model (:mod:`dmlviz.backbones`) at a chosen stride and caches
the features under ``cache_dir()/features/`` (:mod:`dmlviz.cache`), keyed by a SHA-256 of
everything that determines them; :func:`local_global_maps` builds on it the stride-16 and
stride-32 EfficientNet-Lite0 maps that the global + local, CRT, AiA and comparison heads
read (``dmlviz.attention.second_order``, notebooks 03–05 and 07).

**The cache key** is a digest of: the format (:data:`CACHE_FORMAT`), the model's class
(``module.qualname`` of the *model's* class, e.g. ``dmlviz.backbones.EfficientNetLite0``; it
does not name this module, so moving the extraction code here kept every key), its ``repr``,
its weights (state-dict bytes), the input bytes and count, the tap (``stride``, ``head``)
and, for uint8 images, the preparation constants. The device is not in the key (CPU and
GPU results agree to float tolerance).

**Device contract** (the package's, :mod:`dmlviz`): ``device`` defaults to ``"auto"`` and
is resolved by :func:`dmlviz.utils.get_device`; the model runs there in eval mode under
``torch.no_grad`` and is then put back on the device and in the train/eval mode (of every
submodule) it had (:func:`dmlviz.utils.on_device`); features come back as float32 CPU
tensors.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dmlviz.backbones import EfficientNetLite0, SmallCNN
from dmlviz.cache import cache_dir, digest, load_entry, save_entry
from dmlviz.checks import check_uint8_images
from dmlviz.utils import get_device, on_device

__all__ = ["CACHE_FORMAT", "extract_features", "local_global_maps"]

#: version of the cache entries' layout; part of every key
CACHE_FORMAT = 1
_weight_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_digest(model: nn.Module) -> str:
    """:func:`dmlviz.cache.digest` of the state dict, memoised per model until a tensor is
    replaced or changed in place (tracked by ``data_ptr`` and autograd's ``_version``)."""
    state = model.state_dict(keep_vars=True)
    signature = tuple((k, t.data_ptr(), t._version, str(t.device)) for k, t in state.items())
    hit = _weight_digests.get(model)
    if hit is not None and hit[0] == signature:
        return hit[1]
    key = digest(model.state_dict())
    _weight_digests[model] = (signature, key)
    return key


def _inputs(model, images, batch_size: int):
    """``(n, hash, chunks, prep)``: chunks are callables producing prepared (b, C, H, W)
    tensors; ``prep`` holds the preparation constants of uint8 images (None for tensors)."""
    if torch.is_tensor(images) or (isinstance(images, np.ndarray) and images.dtype.kind == "f"):
        x = torch.as_tensor(images)
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"images given as a float tensor must be (B, C, H, W), got "
                             f"{tuple(x.shape)} {x.dtype} (uint8 images go as (B, H, W, 3) arrays)")
        chunks = [lambda s=s: x[s:s + batch_size] for s in range(0, len(x), batch_size)]
        return len(x), digest(x), chunks, None
    prepare = getattr(model, "prepare", None)
    if prepare is None:
        raise ValueError(f"images: uint8 images need a model with a prepare() method "
                         f"(EfficientNetLite0); give {type(model).__name__} a float tensor (B, C, H, W)")
    images = check_uint8_images(images)
    seq = list(images)
    chunks = [lambda s=s: prepare(seq[s:s + batch_size] if isinstance(images, list)
                                  else images[s:s + batch_size])
              for s in range(0, len(seq), batch_size)]
    prep = {"size": getattr(model, "input_size", None), "mode": "crop", "crop_pct": 0.875,
            "mean": _as_list(getattr(model, "mean", None)), "std": _as_list(getattr(model, "std", None))}
    return len(seq), digest(seq), chunks, prep


def _as_list(t):
    return t.flatten().tolist() if torch.is_tensor(t) else t


def _tap(model, x: torch.Tensor, stride: int | None, head: bool) -> torch.Tensor:
    if stride is None:
        return model(x)
    if isinstance(model, SmallCNN):
        return model.feature_maps(x)  # its one tap, stride 4
    if isinstance(model, EfficientNetLite0):
        return model.feature_maps(x, (stride,), head=head)[stride]
    return model.feature_maps(x, (stride,))[stride]


def extract_features(model: nn.Module, images, *, stride: int | None = None, head: bool = False,
                     batch_size: int = 64, device: str | torch.device = "auto",
                     cache: bool = True, progress: bool = True) -> torch.Tensor:
    """Run ``model`` over ``images`` in batches under ``torch.no_grad``, with a disk cache.

    The cache key is a SHA-256 of the input bytes, the model's weights (state dict bytes),
    its class and structure (``repr``), the tap (``stride``, ``head``) and the preparation
    constants (module docstring). Entries are written atomically with ``torch.save`` under
    ``cache_dir()/features/`` and read with ``torch.load(..., weights_only=True)``; an
    unreadable, corrupt or mismatched entry is rebuilt with a warning. The directory is
    :func:`dmlviz.cache.cache_dir` (``$DMLVIZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/dmlviz``,
    else ``~/.cache/dmlviz``), shared with the training checkpoints.

    Args:
        model: an :class:`dmlviz.backbones.EfficientNetLite0`, a
            :class:`dmlviz.backbones.SmallCNN` or any ``nn.Module``. It runs on ``device`` in
            eval mode and is left where, and in the modes, it was.
        images: ``(B, C, H, W)`` float tensor/array, already prepared; or uint8 RGB images
            (``(B, H, W, 3)`` array or list of ``(H, W, 3)`` arrays) that go through
            ``model.prepare``.
        stride: None for ``model(x)`` (logits of EfficientNet, embedding of SmallCNN); an int
            for the feature map at that stride (EfficientNet: 2, 4, 8, 16, 32; SmallCNN: 4).
        head: with ``stride=32`` on EfficientNet, tap the 1280-channel conv head instead.
        batch_size: images per forward pass.
        device: ``"auto"`` (default: CUDA when available), ``"cpu"``, ``"cuda"`` or a
            ``torch.device`` (:func:`dmlviz.utils.get_device`).
        cache: read and write the disk cache.
        progress: show a tqdm progress bar.

    Returns:
        float32 CPU tensor: ``(B, 1000)`` / ``(B, D)`` for ``stride=None``, else
        ``(B, C, H/stride, W/stride)``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    allowed = ((SmallCNN.stride,) if isinstance(model, SmallCNN)
               else getattr(model, "strides", None))
    if stride is not None and allowed is not None and stride not in allowed:
        raise ValueError(f"stride must be None or one of {tuple(allowed)} for "
                         f"{type(model).__name__}, got {stride!r}")
    if head and (stride != 32 or not isinstance(model, EfficientNetLite0)):
        raise ValueError(f"head=True needs an EfficientNetLite0 and stride=32, got stride={stride!r}")
    device = get_device(device)
    n, input_hash, chunks, prep = _inputs(model, images, batch_size)
    path = None
    if cache:
        meta = {"format": CACHE_FORMAT, "model": f"{type(model).__module__}.{type(model).__qualname__}",
                "repr": repr(model), "weights": _weights_digest(model), "inputs": input_hash,
                "n": n, "stride": stride, "head": head, "prepare": prep}
        key = digest(meta)
        path = cache_dir() / "features" / f"{key}.pt"
        cached = _cached_features(path, key, n)
        if cached is not None:
            return cached
    outs = []
    with on_device(model, device), torch.no_grad(), tqdm(
            total=n, unit="img", disable=not progress, desc=f"features {type(model).__name__}") as bar:
        for chunk in chunks:
            x = chunk().to(device=device, dtype=torch.float32)
            outs.append(_tap(model, x, stride, head).float().cpu())
            bar.update(len(x))
    features = torch.cat(outs)
    if path is not None:
        try:
            save_entry(path, {"key": key, "features": features})
        except OSError as err:  # a cache that cannot be written only costs a warning
            warnings.warn(f"could not write feature cache entry {str(path)!r}: {err}", stacklevel=2)
    return features


def _cached_features(path: Path, key: str, n: int) -> torch.Tensor | None:
    """The cached features, or None: missing, or unreadable/mismatched (warned, rebuilt)."""
    entry = load_entry(path)  # warns itself about an unreadable file
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        reason = "its key does not match"
    elif not torch.is_tensor(feats := entry.get("features")) or feats.ndim < 1 or len(feats) != n:
        reason = f"it does not hold {n} feature rows"
    else:
        return feats
    warnings.warn(f"feature cache entry {str(path)!r} is stale ({reason}); rebuilding it",
                  stacklevel=3)
    return None


def local_global_maps(backbone: EfficientNetLite0, images: torch.Tensor, *,
                      device: str | torch.device = "auto", cache: bool = True,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The local (stride-16) and global (stride-32) EfficientNet-Lite0 maps, disk-cached.

    The backbone runs once up to stride 16 (:func:`extract_features`); the global map is
    then computed from the cached local map by the remaining blocks (stride 16 → 32), also
    cached — half the cost of two full passes, same numbers.

    Args:
        backbone: an :class:`dmlviz.backbones.EfficientNetLite0` (frozen). It runs in eval
            mode on ``device`` and is left where, and in the modes, it was.
        images: ``(B, 3, S, S)`` prepared images (``backbone.prepare(...)``).
        device, cache, progress: as for :func:`extract_features` (``device`` default
            ``"auto"``).

    Returns:
        ``(local (B, 112, ⌈S/16⌉, ⌈S/16⌉), global (B, 320, ⌈S/32⌉, ⌈S/32⌉))`` on the CPU.
    """
    if not isinstance(backbone, EfficientNetLite0):
        raise ValueError(f"backbone must be an EfficientNetLite0, got {type(backbone).__name__}")
    local = extract_features(backbone, images, stride=16, device=device, cache=cache,
                             progress=progress)  # (B, 112, S/16, S/16)
    taps = backbone._taps  # {stride: index of the last block at that stride}
    tail = nn.Sequential(*backbone._blocks[taps[16] + 1: taps[32] + 1])  # stride 16 → 32
    glob = extract_features(tail, local, device=device, cache=cache,
                            progress=progress)  # (B, 320, S/32, S/32)
    return local, glob
