"""Matrices side by side, error-vs-landmarks curves, singular-value spectra and the Nyström
explorer (notebook 01). Matplotlib helpers take ``ax=None``/return the figure and never call
``plt.show()``; the explorer builds ipywidgets only when called."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from dmlviz.attention.landmarks import STRATEGIES, landmarks
from dmlviz.attention.nystrom import (
    INVERSES,
    nystrom,
    nystrom_softmax_attention,
    relative_error,
    softmax_attention,
    svd_bound,
)
from dmlviz.viz.arrays import to_numpy


def plot_matrices(matrices: Mapping[str, torch.Tensor], *, signed: bool | None = None,
                  shared: bool = True, size: float = 2.7, ncols: int | None = None,
                  quantile: float = 1.0, axes=None):
    """Heatmaps of several matrices side by side, each with a colour bar.

    Args:
        matrices: ``{title: (N, N') matrix}``.
        signed: diverging colours centred on 0 (``RdBu_r``) for every panel; default: for
            each panel that has a negative entry (the others use ``viridis`` from 0).
        shared: one colour scale for all panels (else one per panel).
        size: inches per panel.
        ncols: panels per row (default: all in one row).
        quantile: clip the colour scale at this quantile of ``|entries|`` (1 = the maximum);
            below 1 the few large entries (e.g. a dominant diagonal) stop hiding the rest.
        axes: existing axes, one per matrix.

    Returns:
        The matplotlib figure.
    """
    if not matrices:
        raise ValueError("plot_matrices needs at least one matrix")
    arrays = {k: to_numpy(v, np.float64) for k, v in matrices.items()}
    for k, a in arrays.items():
        if a.ndim != 2:
            raise ValueError(f"matrix {k!r} must be 2-D, got shape {a.shape}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    n = len(arrays)
    own = axes is None
    if own:
        ncols = ncols or n
        nrows = -(-n // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols * 1.15, size * nrows),
                                 squeeze=False)
        axes = axes.flatten()
        for ax in axes[n:]:
            ax.axis("off")
    axes = list(np.ravel(axes))[:n]

    def limit(a):
        return float(np.quantile(np.abs(a), quantile)) or 1.0

    common = max(limit(a) for a in arrays.values())
    for ax, (title, a) in zip(axes, arrays.items(), strict=True):
        vmax = common if shared else limit(a)
        diverging = bool((a < 0).any()) if signed is None else signed
        vmin = -vmax if diverging else (0.0 if (a >= 0).all() else float(a.min()))
        im = ax.imshow(a, cmap="RdBu_r" if diverging else "viridis", vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig = axes[0].figure
    if own:
        fig.tight_layout()
    return fig


def plot_error_curves(ms: Sequence[int], curves: Mapping[str, object], *, bound=None, ax=None,
                      logy: bool = True, title: str | None = None,
                      ylabel: str = "relative error ‖A − Â‖_F / ‖A‖_F"):
    """Approximation error against the number of landmarks, with the SVD lower bound.

    Args:
        ms: landmark counts (x axis).
        curves: ``{label: errors}``, errors of shape ``(len(ms),)`` or ``(R, len(ms))`` for R
            repeats (drawn as the mean with a min–max band). NaN marks a failed point.
        bound: ``(len(ms),)`` errors of the best rank-m approximation (black dashes).
        ax: axes to draw on.
        logy: logarithmic error axis.
        title: axes title.
        ylabel: y-axis label.

    Returns:
        The matplotlib figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.4, 3.6))
    ms = np.asarray(ms)
    for label, errs in curves.items():
        e = np.atleast_2d(to_numpy(errs, np.float64))
        if e.shape[1] != len(ms):
            raise ValueError(f"curve {label!r} has {e.shape[1]} points for {len(ms)} values of m")
        mean = np.nanmean(e, 0) if np.isfinite(e).any() else e[0]
        (line,) = ax.plot(ms, mean, marker="o", ms=3, label=label)
        if e.shape[0] > 1:
            ax.fill_between(ms, np.nanmin(e, 0), np.nanmax(e, 0), color=line.get_color(), alpha=0.2)
    if bound is not None:
        ax.plot(ms, to_numpy(bound, np.float64), "k--", lw=1.5, label="SVD optimum (Eckart–Young)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("landmarks m")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return ax.figure


def plot_spectra(spectra: Mapping[str, torch.Tensor], *, ax=None, normalize: bool = True,
                 max_index: int | None = None, title: str | None = None,
                 floor: float | None = 1e-6):
    """Singular values ``σᵢ`` (divided by ``σ₁`` when ``normalize``) on a log scale.

    Args:
        spectra: ``{label: (K,) singular values, descending}``.
        ax: axes to draw on.
        normalize: divide each spectrum by its largest value.
        max_index: show only the first values.
        title: axes title.
        floor: lower end of the y axis (values below it, e.g. rounding noise past the
            rank, are cut off); None to show everything.

    Returns:
        The matplotlib figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.4, 3.6))
    for label, s in spectra.items():
        s = to_numpy(s, np.float64)[:max_index]
        if normalize:
            s = s / s[0]
        ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s, 1e-18), label=label)
    ax.set_xlabel("index i")
    ax.set_ylabel("σᵢ / σ₁" if normalize else "σᵢ")
    if floor is not None:
        ax.set_ylim(bottom=floor)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return ax.figure


def _explorer_matrices(feature_map: torch.Tensor, side: int, grid: int, strategy: str,
                       inverse: str, indicator: bool, temperature: float, seed: int):
    """Exact map, its approximation and the error curve for one explorer setting."""
    c, h, w = feature_map.shape
    size = (side, max(1, round(side * w / h)))
    x = F.adaptive_avg_pool2d(feature_map[None].double(), size)[0]  # (C, s, s')
    x = F.normalize(x.flatten(1).T, dim=1)  # (N, C)
    n = x.shape[0]
    exact = softmax_attention(x, x, scale=1 / temperature)  # (N, N)

    def approx(g):
        m = min(g * g, n)
        if strategy == "pooled (CSALR)":
            return nystrom_softmax_attention(x, x, (min(g, size[0]), min(g, size[1])), size=size,
                                             scale=1 / temperature, indicator=indicator,
                                             inverse=inverse, return_reconstruction=True
                                             ).reconstruction
        idx = landmarks(n, m, strategy, features=x, size=size, seed=seed)
        return nystrom(exact, idx, inverse=inverse)

    grids = list(range(1, min(side, 10) + 1))
    errors, message = [], ""
    for g in grids:
        try:
            errors.append(relative_error(exact, approx(g)))
        except ValueError as err:
            errors.append(float("nan"))
            message = message or f"m={g * g}: {err}"
    try:
        current = approx(grid)
    except ValueError as err:
        current, message = torch.full_like(exact, float("nan")), str(err)
    ms = [min(g, size[0]) * min(g, size[1]) if strategy == "pooled (CSALR)" else min(g * g, n)
          for g in grids]
    return exact, current, ms, errors, svd_bound(exact, ms), message


def explorer_figure(feature_map: torch.Tensor, *, side: int = 14, grid: int = 4,
                    strategy: str = "pooled (CSALR)", inverse: str = "solve",
                    indicator: bool = False, temperature: float = 0.5, seed: int = 0):
    """The static figure of :func:`nystrom_explorer`: exact map, reconstruction, error, and
    the error against ``m`` for the chosen setting.

    Args:
        feature_map: ``(C, H, W)`` features; rows are L2-normalised, ``A = softmax(x xᵀ / τ)``.
        side: the map is average-pooled to ``side`` rows (``N ≈ side²`` positions).
        grid: landmarks ``m = grid²`` (a ``grid × grid`` pooling grid, or ``grid²`` rows).
        strategy: ``"pooled (CSALR)"`` or a :func:`dmlviz.attention.landmarks.landmarks` strategy.
        inverse: ``"solve"``, ``"pinv"`` or ``"iterative"``.
        indicator: CSALR's indicator term (pooled landmarks only; the map it approximates is
            then ``A + 1(same patch)``, so the error against ``A`` grows).
        temperature: softmax temperature τ.
        seed: seed of the random strategies.

    Returns:
        The matplotlib figure.
    """
    if not torch.is_tensor(feature_map) or feature_map.ndim != 3:
        raise ValueError(f"feature_map must be a (C, H, W) tensor, got "
                         f"{getattr(feature_map, 'shape', type(feature_map).__name__)}")
    exact, current, ms, errors, bound, message = _explorer_matrices(
        feature_map, side, grid, strategy, inverse, indicator, temperature, seed)
    fig = plt.figure(figsize=(13, 3.3), layout="constrained")
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 1.3])
    axes = [fig.add_subplot(gs[0, i]) for i in range(3)]
    plot_matrices({f"exact A (N={exact.shape[0]})": exact,
                   f"approximation, m={grid * grid}": current,
                   "A − approximation": exact - current}, axes=axes, shared=False, quantile=0.99)
    ax = fig.add_subplot(gs[0, 3])
    label = f"{strategy}, {inverse}" + (", indicator" if indicator else "")
    plot_error_curves(ms, {label: errors}, bound=bound, ax=ax)
    if message:
        fig.suptitle(message[:150], fontsize=8, color="tab:red")
    return fig


def nystrom_explorer(feature_map: torch.Tensor, *, temperature: float = 0.5, seed: int = 0):
    """ipywidgets explorer: sliders for ``m`` and ``N``, landmark strategy, inverse method and
    indicator toggle; redraws :func:`explorer_figure`.

    Args:
        feature_map: ``(C, H, W)`` features of one image.
        temperature: softmax temperature τ of ``A = softmax(x xᵀ / τ)`` (a slider too).
        seed: seed of the random strategies.
    """
    import ipywidgets as widgets
    from IPython.display import display

    h = feature_map.shape[1]
    out = widgets.Output()
    side = widgets.IntSlider(value=min(h, 14), min=2, max=h, description="N side")
    grid = widgets.IntSlider(value=min(4, h), min=1, max=h, description="m side")
    strategy = widgets.Dropdown(options=["pooled (CSALR)", *STRATEGIES], description="landmarks")
    inverse = widgets.Dropdown(options=list(INVERSES), description="inverse")
    indicator = widgets.Checkbox(value=False, description="indicator (pooled)")
    tau = widgets.FloatLogSlider(value=temperature, base=10, min=-1.5, max=0.5, description="τ")

    def redraw(change=None):
        grid.max = side.value
        with out:
            out.clear_output(wait=True)
            fig = explorer_figure(feature_map, side=side.value, grid=min(grid.value, side.value),
                                  strategy=strategy.value, inverse=inverse.value,
                                  indicator=indicator.value, temperature=tau.value, seed=seed)
            display(fig)
            plt.close(fig)

    for wdg in (side, grid, strategy, inverse, indicator, tau):
        wdg.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([side, grid, tau]),
                         widgets.HBox([strategy, inverse, indicator]), out])
