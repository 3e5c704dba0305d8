"""Array helpers shared by every figure module: tensors to numpy, images to what ``imshow``
takes, and feature-grid maps upsampled to the image.

* :func:`to_numpy` — a tensor (detached, on the CPU) or an array-like as a numpy array,
  optionally cast.
* :func:`to_hwc` — an image in channels-first or channels-last layout as ``(H, W)`` or
  ``(H, W, 3)``, optionally scaled to float in [0, 1] and/or repeated to three channels.
* :func:`upsample` — an ``(H, W)`` cell map repeated to the image's pixels, each cell drawn
  as the block of pixels it covers (no smoothing), so a heatmap lies over its image.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_hwc", "to_numpy", "upsample"]


def to_numpy(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array.

    Args:
        x: a tensor (detached and copied to the CPU first), an array, a list or a number.
        dtype: the numpy dtype of the result (``np.float32``, ``np.float64`` or ``float``, …);
            a tensor is cast by torch before it leaves (so bfloat16 works). None keeps the
            dtype of ``x``.

    Returns:
        The array (it may share memory with ``x``).
    """
    if torch.is_tensor(x):
        x = x.detach().cpu()
        if dtype is not None:
            x = x.to(torch.from_numpy(np.zeros(0, dtype)).dtype)  # numpy dtype → torch dtype
        return x.numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype)


def to_hwc(image, *, unit: bool = False, rgb: bool = False) -> np.ndarray:
    """An image as something ``imshow`` takes: ``(H, W)`` or ``(H, W, C)`` channels last.

    A ``(C, H, W)`` image with ``C`` in (1, 3) (and a last side that is not 1 or 3) is
    transposed to ``(H, W, C)``; anything else is taken as channels last already.

    Args:
        image: ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``; a tensor or an array.
        unit: return float64 in [0, 1]: uint8 images, and any image whose maximum is above
            1.5 (0–255 values in a float array), are divided by 255; others are kept as they
            are (taken to be in [0, 1] already).
        rgb: return ``(H, W, 3)``: a single channel (``(H, W)`` or ``(H, W, 1)``) is repeated
            three times. Without it a single channel is returned as ``(H, W)``, which
            ``imshow`` draws with its ``cmap``.

    Returns:
        ``(H, W)`` or ``(H, W, C)``; float64 with ``unit=True``, else ``image``'s own dtype.
    """
    a = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if unit:
        a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 or a.max() > 1.5 else a.astype(np.float64)
    if rgb:
        a = a[..., None] if a.ndim == 2 else a
        return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def upsample(cell_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of an ``(H, W)`` cell map to the image's ``shape``
    (each cell shown as the block of pixels it covers, no smoothing).

    Args:
        cell_map: ``(H, W)`` array, one value per feature cell.
        shape: ``(rows, cols)`` of the image in pixels.

    Returns:
        ``(rows, cols)`` array: pixel ``(r, c)`` holds cell ``(⌊r·H/rows⌋, ⌊c·W/cols⌋)``.
    """
    h, w = cell_map.shape
    rows = np.minimum((np.arange(shape[0]) * h) // shape[0], h - 1)
    cols = np.minimum((np.arange(shape[1]) * w) // shape[1], w - 1)
    return cell_map[rows][:, cols]
