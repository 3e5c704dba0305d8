"""CSALR figures: original vs reconstructed attention at chosen points (Chen et al., Fig. 4),
the cost of the attention variants (Table 5), an ipywidgets explorer (photo, point, m, groups)
and the seeded untrained layers notebook 02 draws its maps from (:func:`seeded_layers`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.attention.csalr import CSALR
from dmlviz.viz.arrays import to_hwc, upsample
from dmlviz.viz.palette import POINT_COLOURS


def _check_points(points, grid):
    h, w = grid
    for r, c in points:
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"point {(r, c)} lies outside the {h}×{w} grid")


def plot_reconstruction_points(image, original: torch.Tensor, reconstructed: torch.Tensor,
                               grid: tuple[int, int], points: Sequence[tuple[int, int]],
                               axes=None, title: str | None = None, size: float = 2.0,
                               label: str = "reconstructed W·B"):
    """Fig. 4 of the paper: for each query point, the original attention row, the
    reconstructed row (``W B``) and their difference, over the image.

    Args:
        image: ``(3, S, S)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        original: ``(N, N)`` exact attention (row = query cell), ``N = H·W``.
        reconstructed: ``(N, N)`` the reconstruction ``W B``.
        grid: ``(H, W)`` of the feature map.
        points: ``[(row, col), …]`` query cells, one figure row each.
        axes: ``(len(points), 3)`` axes to draw into (default: a new figure).
        title: figure title.
        label: title of the reconstruction panels (say which variant it is).

    Returns:
        The matplotlib figure. Original and reconstruction share one colour scale per row
        (0 to the original row's maximum); the difference uses a symmetric blue–red scale.
    """
    h, w = grid
    a = torch.as_tensor(original).detach().cpu().double()
    r = torch.as_tensor(reconstructed).detach().cpu().double()
    if a.shape != (h * w, h * w) or r.shape != a.shape:
        raise ValueError(f"original and reconstructed must be (N, N) with N = {h * w}, got "
                         f"{tuple(a.shape)} and {tuple(r.shape)}")
    _check_points(points, grid)
    img = to_hwc(image, unit=True)
    sh, sw = img.shape[:2]
    if axes is None:
        fig, axes = plt.subplots(len(points), 3, figsize=(3 * size, size * len(points) + 0.4),
                                 squeeze=False)
    axes = np.asarray(axes).reshape(len(points), 3)
    fig = axes[0, 0].figure
    grey = img.mean(axis=2)
    for i, (pr, pc) in enumerate(points):
        row_a = a[pr * w + pc].reshape(h, w).numpy()
        row_r = r[pr * w + pc].reshape(h, w).numpy()
        diff = row_r - row_a
        top = max(row_a.max(), 1e-12)
        lim = max(np.abs(diff).max(), 1e-12)
        err = np.linalg.norm(diff) / max(np.linalg.norm(row_a), 1e-300)
        panels = ((row_a, "inferno", 0, top, f"original, max {row_a.max():.3f}"),
                  (row_r, "inferno", 0, top, label),  # the caller's name of the variant
                  (diff, "RdBu_r", -lim, lim, f"difference (row error {err:.2f})"))
        for j, (m, cmap, lo, hi, name) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(grey, cmap="gray", alpha=0.45, interpolation="nearest")
            ax.imshow(upsample(m, (sh, sw)), cmap=cmap, vmin=lo, vmax=hi, alpha=0.75,
                      interpolation="nearest")
            x, y = (pc + 0.5) * sw / w - 0.5, (pr + 0.5) * sh / h - 0.5
            ax.scatter([x], [y], s=50, c=POINT_COLOURS[i % len(POINT_COLOURS)],
                       edgecolors="white", linewidths=1.2, zorder=3)
            ax.set_title(f"point {i + 1}: {name}" if j == 0 else name, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_cost(table: Mapping[str, object], names: Sequence[str] | None = None, axes=None,
              title: str | None = None):
    """Two bar panels of :func:`dmlviz.cost.cost_table`'s result: images per second (log
    scale) and peak memory per image (MiB), one bar per module.

    Args:
        table: ``{name: ModuleCost}``.
        names: bars in order (default: all).
        axes: two matplotlib axes (default: a new figure).
        title: figure title (say the device and input size here).

    Returns:
        The matplotlib figure.
    """
    names = list(names) if names is not None else list(table)
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"names {missing} are not in the table; it holds {list(table)}")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8.5, 3.0))
    ips = [table[n].images_per_second for n in names]
    mem = [table[n].peak_memory_bytes / table[n].batch_size / 2**20 for n in names]
    colours = ["tab:gray" if n == "baseline" else "tab:red" if n == "SA" else "tab:blue"
               for n in names]
    for ax, values, label in ((axes[0], ips, "images / s, log scale (higher is better)"),
                              (axes[1], mem, "peak memory per image, MiB")):
        ax.bar(range(len(names)), values, color=colours)
        if ax is axes[0]:
            ax.set_yscale("log")  # an identity "baseline" runs ~10⁵× faster than any attention
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        for x, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=7)
    fig = axes[0].figure
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def csalr_explorer(images: Sequence, maps_fn: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]],
                   grid: tuple[int, int], landmarks: Sequence[int] = (24, 48, 96, 192),
                   groups: Sequence[int] = (1, 2, 4, 8)):
    """An ipywidgets explorer: pick a photo, a query point, ``m`` and ``groups``; see the
    original and the reconstructed attention row side by side.

    Args:
        images: the photos (``(H, W, 3)`` uint8 or ``(3, S, S)`` float).
        maps_fn: ``maps_fn(photo index, m, groups) → (original (N, N), reconstructed (N, N))``
            (e.g. first group's maps of a seeded CSALR; called on every change, keep it < 1 s).
        grid: ``(H, W)`` of the feature map.
        landmarks, groups: the choices of the two dropdown menus.

    Returns:
        An ``ipywidgets.VBox`` (sliders first, then the figure).
    """
    import ipywidgets as widgets
    from IPython.display import display

    h, w = grid
    photo = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="photo")
    row = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="row")
    col = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="column")
    m = widgets.Dropdown(options=list(landmarks), value=list(landmarks)[len(landmarks) // 2],
                         description="m")
    g = widgets.Dropdown(options=list(groups), value=list(groups)[0], description="groups")
    out = widgets.Output()

    def draw(*_):
        original, recon = maps_fn(photo.value, m.value, g.value)
        with out:
            out.clear_output(wait=True)
            fig = plot_reconstruction_points(images[photo.value], original, recon, grid,
                                             [(row.value, col.value)], size=2.6,
                                             title=f"m = {m.value}, groups = {g.value}")
            display(fig)
            plt.close(fig)

    for wdg in (photo, row, col, m, g):
        wdg.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([photo, row, col]), widgets.HBox([m, g]), out])


def seeded_layers(channels: int, spread: float, configs: Mapping[str, Mapping], *,
                  std: float = 1.0, seed: int = 0, default: str | None = None):
    """A factory of untrained float64 CSALR layers with a chosen logit spread (notebook 02).

    Every layer draws its 1×1 projections right after ``torch.manual_seed(init)``, so layers
    that differ only in ``m``, groups, variant or temperature share their projections. A
    layer's scale is ``std / spread · √G``: ``spread`` is the logit spread of a row at scale 1
    on the features shown, and with ``G`` groups each head sees ``C/G`` channels, which the
    ``√G`` compensates.

    Args:
        channels: ``C`` of the feature map (also the query/key channels ``C'``).
        spread: the measured logit spread per row at scale 1.
        configs: variant name → CSALR keyword arguments (``indicator``, ``inverse``).
        std: the default logit spread per row.
        seed: the default seed of the projections.
        default: the default variant (the first of ``configs`` if not given).

    Returns:
        ``layer(m, groups=1, variant=default, std=std, init=seed)`` → a float64 :class:`CSALR`
        with ``m`` landmarks.
    """
    if not configs:
        raise ValueError("configs must name at least one variant")
    default = next(iter(configs)) if default is None else default
    if default not in configs:
        raise ValueError(f"default must be one of {list(configs)}, got {default!r}")

    def layer(m, groups: int = 1, variant: str = default, std: float = std,
              init: int = seed) -> CSALR:
        torch.manual_seed(init)  # the same projections for every m, variant and temperature
        return CSALR(channels, qk_channels=channels, landmarks=m, groups=groups,
                     scale=std / spread * groups ** 0.5, **configs[variant]).double()

    return layer


def exact_and_reconstructed(layer: Callable[..., CSALR], feature_maps: torch.Tensor):
    """``maps_fn`` of :func:`csalr_explorer`: ``(i, m, G)`` → the exact map ``A`` and its
    reconstruction ``W·B`` (first head, ``(N, N)`` each) of image ``i`` of ``(B, C, H, W)``
    ``feature_maps``, from ``layer(m, groups=G)`` (e.g. :func:`seeded_layers`)."""
    def maps_fn(i: int, m, groups: int):
        with torch.no_grad():
            mod = layer(m, groups=groups)
            xi = feature_maps[i:i + 1].double()
            return mod.full_attention(xi)[0, 0], mod.reconstruction(xi)[0, 0]

    return maps_fn

