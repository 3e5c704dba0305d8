"""Input checks shared by the package: turn bad input into errors that name the argument,
what was given and what is allowed (instead of a broadcast error deep inside torch)."""

from __future__ import annotations

import math

import numpy as np
import torch


def _check_label_tensor(labels: torch.Tensor, name: str) -> None:
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def check_labels(labels, name: str = "labels") -> torch.Tensor:
    """Return ``labels`` (tensor, array or list) as a non-empty 1-D int64 tensor, or raise
    ``ValueError`` naming ``name``."""
    t = as_tensor(labels, name)
    _check_label_tensor(t, name)
    if len(t) == 0:
        raise ValueError(f"{name} is empty")
    return t.long()


def check_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    name: str = "embeddings",
    labels_name: str = "labels",
    finite: bool = True,
) -> None:
    """Validate an embedding matrix and (optionally) its labels; raise a clear ValueError.

    Args:
        embeddings: ``(N, D)`` floating-point tensor, N ≥ 1, D ≥ 1, every value finite
            (a NaN row would otherwise rank first in ``topk`` and be everyone's neighbour).
        labels: ``(N,)`` integer tensor (not bool), or None to check embeddings only.
        name: what to call ``embeddings`` in the error message.
        labels_name: what to call ``labels`` in the error message.
        finite: refuse NaN / ±inf values (see :func:`check_finite`).

    Raises:
        ValueError: naming the argument, what was given and what is allowed.
    """
    if not isinstance(embeddings, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D), "
                         f"got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {embeddings.dtype}")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, "
                         f"got shape {tuple(embeddings.shape)}")
    if finite:
        check_finite(embeddings, name)
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{labels_name} must be a torch.Tensor of shape (N,), "
                         f"got {type(labels).__name__}")
    _check_label_tensor(labels, labels_name)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{name} and {labels_name} must have the same length: "
                         f"{name} has shape {tuple(embeddings.shape)}, "
                         f"{labels_name} has shape {tuple(labels.shape)}")


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the rows (first-axis entries) of ``x`` holding a NaN or ±inf."""
    if not x.is_floating_point() and not x.is_complex():
        return torch.zeros(len(x), dtype=torch.bool, device=x.device)
    bad = ~torch.isfinite(x)
    return bad.reshape(len(x), -1).any(dim=1) if x.ndim > 1 else bad


def check_finite(x: torch.Tensor, name: str, what: str = "row") -> None:
    """Raise ``ValueError`` naming ``name`` and how many rows (first-axis entries: samples,
    embeddings, feature maps) hold a NaN or ±inf; one full scan of ``x``."""
    if x.numel() == 0 or not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return
    bad = nonfinite_rows(x)
    count, first = int(bad.sum()), int(torch.nonzero(bad)[0])
    raise ValueError(f"{name} has {count} non-finite {what}(s) (NaN or ±inf) out of {len(x)}, "
                     f"the first at index {first}; only finite values are allowed (drop or "
                     f"fix those {what}s first)")


def as_tensor(x, name: str) -> torch.Tensor:
    """Accept a torch tensor, a NumPy array or a nested list (metrics are often fed NumPy)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from err


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; ``ValueError`` naming ``name`` otherwise
    (floats such as 2.5 or 2.0, bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}"
                         f"{' (a float)' if isinstance(value, float) else ''}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return value


def check_positive(value, name: str) -> float:
    """``value`` as a float when it is a finite number > 0, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(value, name: str, choices: tuple):
    """``value`` when it is one of ``choices``, else a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_feature_map(x, name: str, channels: int | None = None, module=None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a float tensor ``(B, C, H, W)``
    with B, C, H, W ≥ 1 and finite values (with ``C = channels`` when given, the channels a
    module was built for; and, when ``module`` is given, the dtype and device of its
    weights, e.g. no float16 input to a float32 module, except under ``torch.autocast``,
    where torch casts itself)."""
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        got = (f"{type(x).__name__} {tuple(x.shape)} {x.dtype}" if torch.is_tensor(x)
               else type(x).__name__)
        raise ValueError(f"{name} must be a float feature map (B, C, H, W), got {got}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must have B, C, H, W >= 1 (a non-empty batch of non-empty "
                         f"maps), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have C = {channels} channels (what the module was built "
                         f"for), got shape {tuple(x.shape)}")
    if module is not None:
        weight = next((p for p in module.parameters() if p.is_floating_point()), None)
        if weight is not None and weight.dtype != x.dtype and not _autocast(x):
            raise ValueError(f"{name} has dtype {x.dtype} but the module's weights are "
                             f"{weight.dtype}; pass {name}.to({weight.dtype}) (or convert the "
                             f"module with .to({x.dtype}))")
        if weight is not None and weight.device != x.device:
            raise ValueError(f"{name} is on {x.device} but the module's weights are on "
                             f"{weight.device}; move one of them with .to(device)")
    check_finite(x, name, "feature map")


def check_uint8_images(images, name: str = "images") -> list[np.ndarray] | np.ndarray:
    """Validate RGB uint8 images; raise ``ValueError`` naming ``name``.

    Args:
        images: one ``(H, W, 3)`` uint8 array, a ``(B, H, W, 3)`` uint8 array, or a non-empty
            list of ``(H, W, 3)`` uint8 arrays of differing sizes (numpy or torch).

    Returns:
        A ``(B, H, W, 3)`` array (one image gets ``B = 1``), or the list as numpy arrays.
    """
    if torch.is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"{name} must be (H, W, 3), (B, H, W, 3) or a list of (H, W, 3) "
                             f"arrays, got an array of shape {images.shape}")
        arrays = [images]
    elif isinstance(images, (list, tuple)) and images:
        arrays = [np.asarray(a.detach().cpu() if torch.is_tensor(a) else a) for a in images]
        for i, a in enumerate(arrays):
            if a.ndim != 3:
                raise ValueError(f"{name}[{i}] must be (H, W, 3), got shape {a.shape}")
    else:
        raise ValueError(f"{name} must be a uint8 array or a non-empty list of arrays, "
                         f"got {type(images).__name__}")
    for a in arrays:
        if a.shape[-1] != 3:
            raise ValueError(f"{name} must have 3 (RGB) channels last, got shape {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 (0-255), got dtype {a.dtype}")
        if min(a.shape[-3:-1]) < 1:
            raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if isinstance(images, np.ndarray):
        return images if images.ndim == 4 else images[None]
    return arrays


def _autocast(x: torch.Tensor) -> bool:
    """Under ``torch.autocast`` mixed dtypes are cast by torch itself: not an error."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: only the CUDA flag
        return x.is_cuda and torch.is_autocast_enabled()
