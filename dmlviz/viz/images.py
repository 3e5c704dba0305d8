"""Image grids and photo panels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.viz.arrays import to_hwc


def image_grid(
    images: torch.Tensor | np.ndarray | Sequence,
    titles: Sequence[str] | None = None,
    masks: torch.Tensor | np.ndarray | None = None,
    ncols: int = 8,
    size: float = 1.6,
    cmap: str = "gray",
):
    """A grid of images, optionally with their object masks outlined in white.

    Args:
        images: ``(N, C, S, S)`` or ``(N, S, S, C)`` tensors/arrays, or a list of images.
        titles: one short title per image.
        masks: ``(N, S, S)`` boolean object masks to outline.
        ncols: images per row.
        size: inches per image.
        cmap: colour map for single-channel images.

    Returns:
        The matplotlib figure.
    """
    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.2 * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_hwc(images[i]), cmap=cmap, interpolation="nearest")
        if masks is not None:
            ax.contour(to_hwc(masks[i]).astype(float), levels=[0.5], colors="white",
                       linewidths=0.8)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def photo_predictions(photos: dict[str, np.ndarray], predictions: dict[str, list[tuple[str, float]]],
                      ncols: int = 4, size: float = 3.0):
    """Photos with their top-k ImageNet classes and probabilities written under each.

    Args:
        photos: ``{name: (H, W, 3) uint8}``.
        predictions: ``{name: [(class name, probability), ...]}`` for the same names.

    Returns:
        The matplotlib figure.
    """
    names = list(photos)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        ax.imshow(photos[name])
        ax.set_title(name, fontsize=10, fontweight="bold")
        text = "\n".join(f"{p:5.1%}  {label}" for label, p in predictions[name])
        ax.text(0.0, -0.03, text, transform=ax.transAxes, va="top", fontsize=7, family="monospace")
    fig.tight_layout()
    return fig
