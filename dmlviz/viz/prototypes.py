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

__all__ = ["crt_explorer", "plot_metric_panels", "plot_object_share"]


def plot_object_share(shares: Mapping[str, Sequence[float]], chance: float, ax=None):
    """Bars per prototype: the share of its softplus weight that falls on the object.

    Args:
        shares: ``{model name: [share per prototype]}`` (e.g. before / after training), K each.
        chance: the share a prototype spread evenly over the image would get (the mean
            object fraction of the cells), drawn as a dashed line.
        ax: matplotlib axes (default: a new figure).

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
    ax.set_xticks(range(k), [f"c{j}" for j in range(k)])
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
        masks: optional ``(B, S, S)`` object masks (outlined; only for a tensor of maps).
        titles: optional name per image (the picker's labels).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from dmlviz.viz.aia_maps import plot_map_rows

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
        m = corr[i][k:k + 1]  # (1, H, W)
        lim = max(float(c[k].abs().max()) for c in corr)
        with out:
            out.clear_output(wait=True)
            fig = plot_map_rows([images[i]], {f"x·c{k}": m},
                                masks=None if masks is None else masks[i:i + 1],
                                vlims={f"x·c{k}": (-lim, lim)}, size=3.0, cmap="RdBu_r")
            fig.suptitle(f"{names[i]}: correlation with prototype c{k}", fontsize=9)
            display(fig)
            plt.close(fig)

    proto.observe(redraw, names="value")
    pick.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([proto, pick]), out])
