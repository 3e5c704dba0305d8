"""The on-disk cache shared by feature extraction and training checkpoints.

Entries are files named by a SHA-256 key of everything that determines their content
(input bytes, weights, configuration). They are written with ``torch.save`` atomically and
read with ``torch.load(..., weights_only=True)``; an entry that cannot be read (corrupt,
truncated, written by an incompatible version) is reported with a warning and rebuilt by
the caller, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch


def cache_dir() -> Path:
    """The cache directory: ``$DMLVIZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/dmlviz``, else
    ``~/.cache/dmlviz`` (created on first use)."""
    root = os.environ.get("DMLVIZ_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "dmlviz"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(*parts) -> str:
    """A SHA-256 hex key over tensors, arrays, state dicts and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        _update(h, part)
    return h.hexdigest()


def _update(h, part) -> None:
    if torch.is_tensor(part):
        t = part.detach().cpu().contiguous()
        h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(part, np.ndarray):
        a = np.ascontiguousarray(part)
        h.update(f"array{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    elif isinstance(part, dict):
        for key in sorted(part, key=str):
            h.update(str(key).encode())
            _update(h, part[key])
    elif isinstance(part, (list, tuple)) and any(torch.is_tensor(p) or isinstance(p, np.ndarray)
                                                 for p in part):
        for p in part:
            _update(h, p)
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def load_entry(path: Path):
    """The cached object at ``path``, or ``None`` when missing or unreadable (with a warning
    for unreadable ones, which the caller then rebuilds)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — any unreadable entry is rebuilt, whatever broke
        warnings.warn(f"cache entry {str(path)!r} is unreadable ({type(err).__name__}: {err}); "
                      "rebuilding it", stacklevel=3)
        return None


def save_entry(path: Path, obj) -> None:
    """Write ``obj`` to ``path`` atomically (a crash never leaves half a file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
