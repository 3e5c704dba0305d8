"""Reproducibility and device helpers shared by every notebook and module."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) so a notebook run is repeatable.

    Args:
        seed: any non-negative integer.

    Returns:
        The seed, so a notebook can write ``seed = seed_everything(seed)``.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a notebook's ``device`` parameter.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``
            (or ``"cuda:N"``).

    Returns:
        The torch device. Asking for CUDA on a machine without it raises instead of
        silently falling back, so a GPU run can never quietly become a CPU run.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or device.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES} (or 'cuda:N'), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here; "
                         "use device='cpu' or 'auto'")
    return torch.device(device)
