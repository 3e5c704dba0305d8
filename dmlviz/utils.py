"""Reproducibility and device helpers shared by every notebook and module."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

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


def derive_seed(seed: int, *counters: int) -> int:
    """An independent seed for ``(seed, *counters)``, e.g. one per (run seed, epoch).

    ``seed + epoch`` makes seed 1's epoch e the same stream as seed 0's epoch e + 1, so runs
    over "seeds 0, 1, 2" share most of their batches. Hashing the tuple through
    ``numpy.random.SeedSequence`` gives streams that do not overlap for any two tuples.

    Args:
        seed: the run's seed, a non-negative integer.
        *counters: non-negative integers (epoch, repeat, fold, …).

    Returns:
        A 63-bit non-negative integer seed (fits ``torch.Generator.manual_seed``).
    """
    values = (seed, *counters)
    for i, v in enumerate(values):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            what = "seed" if i == 0 else f"counter {i}"
            raise ValueError(f"derive_seed: {what} must be a non-negative integer, got {v!r}")
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


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


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` lives: the device of its first parameter or buffer (CPU when it has
    neither)."""
    tensors = (*module.parameters(), *module.buffers())
    return tensors[0].device if tensors else torch.device("cpu")


@contextlib.contextmanager
def on_device(module: torch.nn.Module,
              device: str | torch.device = "auto") -> Iterator[torch.nn.Module]:
    """Use ``module`` on ``device`` in eval mode inside a ``with`` block, then put it back.

    The package's device contract (:mod:`dmlviz`) for functions that only *use* a model:
    on leaving the block — also by an exception — the module returns to the device it was
    on (:func:`module_device`) and every submodule to the train/eval mode it had.

    Args:
        module: any ``nn.Module``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device`` (:func:`get_device`).

    Yields:
        ``module``, on ``device`` and in eval mode.
    """
    device = get_device(device)
    home = module_device(module)
    modes = [(m, m.training) for m in module.modules()]
    module.to(device).eval()
    try:
        yield module
    finally:
        module.to(home)
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Treat denormal floats as zero on the CPU inside the block, then restore the setting.

    Behind a zero-initialised ``W_O`` the first updates and their gradients are tiny, and
    arithmetic on denormal numbers is many times slower on x86 CPUs. torch has a setter
    (:func:`torch.set_flush_denormal`) but no getter, so the previous state is read from
    the arithmetic itself: with flushing on, a denormal times one is zero.
    """
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    previous = bool((tiny * 1.0).item() == 0.0)
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)

