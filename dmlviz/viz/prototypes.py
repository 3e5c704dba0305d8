"""Figures for the coded residual transform (CRT): prototype object shares, metric panels and
an explorer of prototype correlation maps (Kan et al., NeurIPS 2022, Fig. 2, Tables 1–2).

The heatmap grids themselves are :func:`dmlviz.viz.aia_maps.plot_map_rows`; cosine matrices
are :func:`dmlviz.viz.matrices.plot_matrices`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.viz.arrays import to_hwc

__all__ = ["background_prototype", "crt_explorer", "plot_metric_panels", "plot_object_share",
           "plot_prototype_map", "prototype_row_names"]


def plot_prototype_map(image, corr: torch.Tensor, *, lim: float | None = None, mask=None,
                       title: str = "", size: float = 3.0):
    """An image beside one prototype's correlation map ``x_j·c_k`` drawn over it.

    Args:
        image: ``(3, S, S)`` float in [0, 1] or ``(S, S, 3)`` uint8.
        corr: ``(H, W)`` correlation map (each cell drawn as the block of pixels it covers).
        lim: colour limit ±lim (default: the map's largest magnitude).
        mask: optional ``(S, S)`` object mask, outlined.
        title: figure title.
        size: inches per panel.

    Returns:
        The matplotlib figure.
    """
    if not torch.is_tensor(corr) or corr.ndim != 2:
        raise ValueError(f"corr must be a tensor (H, W), got "
                         f"{tuple(corr.shape) if torch.is_tensor(corr) else type(corr).__name__}")
    img = to_hwc(image, unit=True, rgb=True)
    lim = float(corr.abs().max()) if lim is None else float(lim)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 0.8, size + 0.4))
    axes[0].imshow(img, interpolation="nearest")
    h, w = img.shape[:2]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    axes[1].imshow(img.mean(axis=2), cmap="gray", alpha=0.5, interpolation="nearest")
    im = axes[1].imshow(corr.detach().cpu().double().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim,
                        alpha=0.75, extent=extent, interpolation="nearest")
    if mask is not None:
        m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
        for ax in axes:
            ax.contour(m.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    axes[0].set_title("image", fontsize=8)
    axes[1].set_title("correlation (red: weighted by softplus)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def background_prototype(shares: Sequence[float]) -> int:
    """The background prototype: the one with the lowest share of its weight on the object.

    The paper's Fig. 2 marks one prototype as "the background prototype" (a red dot); with
    object masks, the workbench names the prototype whose coding weight falls least on the
    object.

    Args:
        shares: ``(K,)`` object share per prototype (e.g. from ``object_share``).

    Returns:
        Its index k.
    """
    v = np.asarray(shares, dtype=float).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"shares must be a non-empty sequence of finite numbers, got {list(v)}")
    return int(np.argmin(v))


def prototype_row_names(k: int, background: int | None = None) -> list[str]:
    """Row labels ``c0 … c{K-1}`` with the background prototype marked ``● bg`` (Fig. 2)."""
    if background is not None and not 0 <= background < k:
        raise ValueError(f"background must be a prototype index in [0, {k - 1}], got {background}")
    return [f"c{j} ● bg" if j == background else f"c{j}" for j in range(k)]


def plot_object_share(shares: Mapping[str, Sequence[float]], chance: float, ax=None,
                      background: int | None = None):
    """Bars per prototype: the share of its softplus weight that falls on the object.

    Args:
        shares: ``{model name: [share per prototype]}`` (e.g. before / after training), K each.
        chance: the share a prototype spread evenly over the image would get (the mean
            object fraction of the cells), drawn as a dashed line.
        ax: matplotlib axes (default: a new figure).
        background: index of the background prototype (:func:`background_prototype`), marked
            with a red dot above its bars and "● bg" in its tick label, as in the paper's Fig. 2.

    Returns:
        The matplotlib figure.
    """
    if not shares:
        raise ValueError("shares must hold at least one model")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.0))
    k = len(next(iter(shares.values())))
    width = 0.8 / len(shares)
    for i, (name, v) in enumerate(shares.items()):
        v = np.asarray(v, dtype=float)
        if len(v) != k:
            raise ValueError(f"shares[{name!r}] has {len(v)} prototypes, expected {k}")
        ax.bar(np.arange(k) + (i - (len(shares) - 1) / 2) * width, v, width, label=name,
               color=f"C{i}", alpha=0.85)
    ax.axhline(chance, color="black", ls="--", lw=1, label=f"even spread ({chance:.2f})")
    if background is not None:
        top = max(float(np.asarray(v, dtype=float)[background]) for v in shares.values())
        ax.plot([background], [min(top + 0.06, 0.97)], "o", color="red", ms=6,
                label="background prototype")
    ax.set_xticks(range(k), prototype_row_names(k, background))
    ax.set_xlabel("prototype")
    ax.set_ylabel("weight share on the object")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def plot_metric_panels(values: Mapping[str, Mapping[str, float]],
                       higher_is_better: Mapping[str, bool] | None = None, size: float = 2.6):
    """One bar panel per metric, one bar per model.

    Args:
        values: ``{metric: {model: value}}``, models in the order to draw.
        higher_is_better: optional ``{metric: bool}``, written under the panel's title.
        size: inches per panel.

    Returns:
        The matplotlib figure.
    """
    if not values:
        raise ValueError("values must hold at least one metric")
    fig, axes = plt.subplots(1, len(values), figsize=(size * len(values), 2.9), squeeze=False)
    for ax, (metric, row) in zip(axes[0], values.items(), strict=True):
        names = list(row)
        v = np.array([row[n] for n in names], dtype=float)
        ax.bar(range(len(v)), v, color=[f"C{i}" for i in range(len(v))], alpha=0.85)
        for i, x in enumerate(v):
            ax.text(i, x, f"{x:.3f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(v)), names, rotation=30, ha="right", fontsize=7)
        hint = (higher_is_better or {}).get(metric)
        ax.set_title(metric + ("" if hint is None else
                               ("\n(higher = better)" if hint else "\n(lower = flatter spectrum)")),
                     fontsize=8)
        ax.set_ylim(0, v.max() * 1.18 if v.max() > 0 else 1)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def crt_explorer(model, maps: torch.Tensor, images, masks=None, titles=None):
    """ipywidgets: a prototype slider and an image picker → that prototype's correlation map.

    Args:
        model: a trained :class:`dmlviz.attention.crt.CodedResidualTransform`.
        maps: ``(B, C, H, W)`` backbone maps of the images offered, or a list of ``(C, H, W)``
            maps of differing sizes.
        images: the ``B`` images (``(3, S, S)`` floats in [0, 1] or ``(S, S, 3)`` uint8 each).
        masks: optional object masks, outlined: ``(B, S, S)`` or a list of ``(S, S)`` masks
            or ``None`` (images without a mask).
        titles: optional name per image (the picker's labels).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if len(maps) != len(images):
        raise ValueError(f"maps and images must have the same length, got {len(maps)} and "
                         f"{len(images)}")
    with torch.no_grad():
        corr = [model.correlation_maps(m[None])[0] for m in maps]  # B × (K, H, W)
    names = list(titles) if titles is not None else [f"image {i}" for i in range(len(maps))]
    out = widgets.Output()
    proto = widgets.IntSlider(value=0, min=0, max=model.num_prototypes - 1, description="prototype")
    pick = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0,
                            description="image")

    def redraw(change=None):
        i, k = pick.value, proto.value
        lim = max(float(c[k].abs().max()) for c in corr)
        with out:
            out.clear_output(wait=True)
            fig = plot_prototype_map(images[i], corr[i][k], lim=lim,
                                     mask=None if masks is None else masks[i],
                                     title=f"{names[i]}: x·c{k}")
            display(fig)
            plt.close(fig)

    proto.observe(redraw, names="value")
    pick.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([proto, pick]), out])
