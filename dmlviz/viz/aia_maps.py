"""Attention-in-attention figures (Fang et al., TPAMI 2022): kernel approximations checked
(eqs. 11, 16), input vs masked feature maps (Fig. 9), the Table 3 comparison over seeds, and an
ipywidgets explorer (kernel, inner attention, σ and c' → masked maps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.attention.aia import with_rff
from dmlviz.masks import channel_energy
from dmlviz.utils import on_device
from dmlviz.viz.arrays import to_hwc, upsample

__all__ = ["aia_explorer", "plot_kernel_error", "plot_map_rows",
           "plot_sop_check", "plot_variant_bars"]


def plot_kernel_error(errors: Mapping[str, Mapping[int, float]], ax=None):
    """Mean |⟨κ(x), κ(y)⟩ − K(x, y)| against the number of random frequencies ``c'`` (log–log).

    ``κ`` is the random Fourier embedding of the paper's eq. (14), ``K`` the exact Gaussian
    kernel of eq. (13).

    Each curve gets its fitted log–log slope in the legend; a dashed ``∝ 1/√c'`` line through
    the first point of the first curve is the rate of Remark 3 / eq. (16).

    Args:
        errors: ``{label: {c': mean absolute error}}`` (:func:`~dmlviz.attention.kernels.rff_kernel_error`).
        ax: matplotlib axes (default: a new figure).

    Returns:
        The matplotlib figure.
    """
    if not errors:
        raise ValueError("errors must hold at least one curve {label: {c': error}}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, (label, curve) in enumerate(errors.items()):
        d = np.array(sorted(curve), dtype=float)
        e = np.array([curve[int(k)] for k in d])
        slope = np.polyfit(np.log(d), np.log(e), 1)[0] if len(d) > 1 else float("nan")
        ax.loglog(d, e, "o-", color=f"C{i}", label=f"{label} (slope {slope:.2f})")
        if i == 0:
            ax.loglog(d, e[0] * np.sqrt(d[0] / d), "k--", lw=1, label="∝ 1/√c′ (eq. 16)")
    ax.set_xlabel("c′ (random frequencies)")
    ax.set_ylabel("mean |⟨κ(x),κ(y)⟩ − K(x,y)|")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return ax.figure


def plot_sop_check(dot: torch.Tensor, triangle: torch.Tensor, exact: torch.Tensor, ax=None):
    """SoP inner products against ``(xᵀy)²``: the paper's upper triangle vs the √2-scaled one.

    Args:
        dot: ``(P,)`` values ``xᵀy`` of P pairs.
        triangle: ``(P,)`` ``⟨SoP(x), SoP(y)⟩`` with the plain upper triangle (eqs. 8–9).
        exact: ``(P,)`` the same with √2 on the off-diagonal terms.
        ax: matplotlib axes (default: a new figure).

    Returns:
        The matplotlib figure.
    """
    target = torch.as_tensor(dot).double().pow(2).numpy()
    tri, ex = torch.as_tensor(triangle).double().numpy(), torch.as_tensor(exact).double().numpy()
    if not (target.shape == tri.shape == ex.shape) or target.ndim != 1:
        raise ValueError(f"dot, triangle and exact must be three (P,) tensors, got shapes "
                         f"{target.shape}, {tri.shape}, {ex.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    hi = max(target.max(), tri.max(), ex.max()) * 1.05
    ax.plot([0, hi], [0, hi], color="gray", lw=1, label="y = (xᵀy)² (eq. 11)")
    ax.scatter(target, ex, s=10, color="C2", label="upper triangle, √2 off-diagonal")
    ax.scatter(target, tri, s=10, color="C3", marker="x", label="upper triangle (paper, code)")
    ax.set_xlabel("(xᵀy)²")
    ax.set_ylabel("⟨SoP(x), SoP(y)⟩")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax.figure


def plot_map_rows(images, rows: Mapping[str, torch.Tensor], *, masks=None,
                  vlims: Mapping[str, tuple[float, float]] | None = None,
                  titles: Sequence[str] | None = None, size: float = 1.6, cmap: str = "inferno"):
    """A grid of cell maps over images: row 0 the images, then one row per named map.

    Each ``(H, W)`` map is drawn over a faded grey copy of its image, each cell as the block of
    pixels it covers. A row's colour scale is shared by its images: ``vlims[row]`` if given,
    else 0 to the row's maximum; the scale is written next to the row's name.

    Args:
        images: ``(B, 3, S, S)`` float images in [0, 1], or a list of ``(H, W, 3)`` uint8 arrays.
        rows: ``{name: (B, H, W) map}`` (e.g. :func:`dmlviz.masks.channel_energy` of ``x`` and of ``x^z``,
            or the channel mean of the mask ``z``).
        masks: optional ``(B, S, S)`` object masks, outlined in white on row 0.
        vlims: optional ``{name: (vmin, vmax)}`` colour limits.
        titles: optional title per image.
        size: inches per panel.
        cmap: colour map of the cell maps.

    Returns:
        The matplotlib figure.
    """
    n = len(images)
    if n == 0 or not rows:
        raise ValueError("images and rows must not be empty")
    for name, m in rows.items():
        if not torch.is_tensor(m) or m.ndim != 3 or len(m) != n:
            raise ValueError(f"rows[{name!r}] must be a tensor (B={n}, H, W), got "
                             f"{tuple(m.shape) if torch.is_tensor(m) else type(m).__name__}")
    vlims = dict(vlims or {})
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(size * n + 1.2, size * (1 + len(rows))),
                             squeeze=False)
    for j in range(n):
        img = to_hwc(images[j], unit=True)
        axes[0, j].imshow(img, interpolation="nearest")
        if masks is not None:
            axes[0, j].contour(to_hwc(masks[j]).astype(float), levels=[0.5], colors="white",
                               linewidths=0.8)
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
        for i, (name, m) in enumerate(rows.items(), start=1):
            vmin, vmax = vlims.get(name, (0.0, float(m.max())))
            ax = axes[i, j]
            ax.imshow(img.mean(axis=2), cmap="gray", alpha=0.45, interpolation="nearest")
            ax.imshow(upsample(m[j].double().numpy(), img.shape[:2]), cmap=cmap, alpha=0.75,
                      vmin=vmin, vmax=vmax, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(f"{name}\n[{vmin:.2g}, {vmax:.2g}]", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_variant_bars(values: Mapping[str, Sequence[float]], ax=None, ylabel: str = "Recall@1",
                      reference: str | None = "baseline", colors: Mapping[str, str] | None = None):
    """One bar per variant: mean over seeds, with each seed as a dot.

    Args:
        values: ``{variant: [value per seed]}``, in the order to draw.
        ax: matplotlib axes (default: a new figure).
        ylabel: what the values are.
        reference: a variant whose mean is drawn as a dotted line across (or ``None``).
        colors: optional ``{variant: colour}``.

    Returns:
        The matplotlib figure.
    """
    if not values:
        raise ValueError("values must hold at least one variant")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        ax.bar(i, v.mean(), color=(colors or {}).get(name, f"C{i % 10}"), alpha=0.8)
        ax.scatter(np.full(len(v), i), v, color="black", s=10, zorder=3)
        ax.text(i, v.mean() + 0.01, f"{v.mean():.2f}", ha="center", va="bottom", fontsize=7)
    if reference in values:
        ax.axhline(np.mean(values[reference]), color="gray", ls=":", lw=1)
    ax.set_xticks(range(len(values)), list(values), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def aia_explorer(blocks: Mapping[tuple[str, bool], torch.nn.Module], maps: torch.Tensor,
                 images, masks=None, sigma: float = 1.0, rff_dim: int = 480):
    """ipywidgets: σ and c' sliders, a kernel drop-down and an inner-attention switch → the
    masked maps of a few images.

    Args:
        blocks: ``{(kind, inner): trained KernelAttention}`` for kinds ``"linear"``, ``"sop"``,
            ``"gaussian"`` and ``inner`` True / False.
        maps: ``(B, C, H, W)`` backbone maps of the images shown (a handful).
        images: the ``B`` images (as for :func:`plot_map_rows`).
        masks: optional ``(B, S, S)`` object masks.
        sigma, rff_dim: the trained Gaussian blocks' σ and ``c'`` (the sliders' start values).

    The σ and ``c'`` sliders act on the Gaussian kernel only: the trained block is copied with
    rescaled frequencies / fewer of them (:func:`~dmlviz.attention.aia.with_rff`), not retrained.
    """
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    sig = widgets.FloatLogSlider(value=sigma, base=2, min=np.log2(sigma) - 3,
                                 max=np.log2(sigma) + 3, step=0.25, description="σ")
    dim = widgets.IntSlider(value=rff_dim, min=1, max=rff_dim, description="c′")
    kind = widgets.Dropdown(options=["gaussian", "sop", "linear"], value="gaussian",
                            description="kernel")
    inner = widgets.Checkbox(value=True, description="inner attention (AiA)")

    def redraw(change=None):
        block = blocks[kind.value, inner.value]
        if kind.value == "gaussian":
            block = with_rff(block, sigma=sig.value, rff_dim=dim.value)
        with torch.no_grad(), on_device(block, maps.device) as used:  # its mode is restored
            y, m = used(maps, return_maps=True)  # (B, C, H, W), AiAMaps
        rows = {"input ‖x‖": channel_energy(maps), "masked ‖x^z‖": channel_energy(y),
                "mask z (channel mean)": m.z.mean(1)}
        with out:
            out.clear_output(wait=True)
            zm = rows["mask z (channel mean)"]  # its own range: on [0.5, 1] it looks uniform
            fig = plot_map_rows(images, rows, masks=masks, size=2.0,
                                vlims={"mask z (channel mean)": (float(zm.min()), float(zm.max()))})
            shown = (f", σ = {sig.value:.3g}, c′ = {dim.value}" if kind.value == "gaussian"
                     else " (σ and c′ act on the Gaussian kernel only)")
            fig.suptitle(f"{kind.value} kernel, inner attention {'on' if inner.value else 'off'}"
                         f"{shown}; mask z: mean {float(m.z.mean()):.3f}", fontsize=9, y=1.0)
            display(fig)
            plt.close(fig)

    for w in (sig, dim, kind, inner):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([sig, dim]), widgets.HBox([kind, inner]), out])
