"""Input checks shared by the package: turn bad input into errors that name the argument,
what was given and what is allowed (instead of a broadcast error deep inside torch)."""

from __future__ import annotations

import numpy as np
import torch


def check_labels(labels, name: str = "labels") -> torch.Tensor:
    """Return ``labels`` as a 1-D int64 tensor, or raise ``ValueError`` naming ``name``."""
    t = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    if len(t) == 0:
        raise ValueError(f"{name} is empty")
    return t.long()
