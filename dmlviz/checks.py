"""Input checks shared by the package: turn bad input into errors that name the argument,
what was given and what is allowed (instead of a broadcast error deep inside torch)."""

from __future__ import annotations

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
) -> None:
    """Validate an embedding matrix and (optionally) its labels; raise a clear ValueError.

    Args:
        embeddings: ``(N, D)`` floating-point tensor, N ≥ 1, D ≥ 1.
        labels: ``(N,)`` integer tensor (not bool), or None to check embeddings only.
        name: what to call ``embeddings`` in the error message.
        labels_name: what to call ``labels`` in the error message.

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


def as_tensor(x, name: str) -> torch.Tensor:
    """Accept a torch tensor, a NumPy array or a nested list (metrics are often fed NumPy)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from err


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return value


def check_feature_map(x, name: str, channels: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a float tensor ``(B, C, H, W)``
    (with ``C = channels`` when given, the channels a module was built for)."""
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        got = (f"{type(x).__name__} {tuple(x.shape)} {x.dtype}" if torch.is_tensor(x)
               else type(x).__name__)
        raise ValueError(f"{name} must be a float feature map (B, C, H, W), got {got}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have C = {channels} channels (what the module was built "
                         f"for), got shape {tuple(x.shape)}")
