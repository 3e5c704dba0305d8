"""Second-order attention figures: where chosen points attend (Ebrahimpour et al., Fig. 6),
attention mass on the object, convergence curves over seeds (Figs. 1, 7), per-seed bars of a
metric under interventions or ablations, and two ipywidgets explorers (pick an image and a
point; pick a loss)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.viz.arrays import to_hwc, upsample
from dmlviz.viz.palette import POINT_COLOURS


def pick_points(fraction: torch.Tensor, grid: tuple[int, int], n_object: int = 2,
                n_background: int = 2) -> tuple[list[tuple[int, int]], list[str]]:
    """Choose query cells on an ``H × W`` grid: object cells and background cells, far apart.

    Deterministic: the first object point is the cell most covered by the object, the next
    ones the object cells farthest from those already chosen; the first background point is
    the object-free cell farthest from the object's centre, the next ones the object-free
    cells farthest from all points chosen so far.

    Args:
        fraction: ``(N,)`` object fraction per cell (:func:`dmlviz.masks.object_fraction`).
        grid: ``(H, W)`` with ``H·W = N``.
        n_object, n_background: how many points of each kind.

    Returns:
        ``(points, kinds)``: ``[(row, col), …]`` and ``["object", …, "background", …]``.
    """
    h, w = grid
    f = torch.as_tensor(fraction, dtype=torch.float64).reshape(-1)
    if f.numel() != h * w:
        raise ValueError(f"fraction has {f.numel()} cells but grid {h}×{w} has {h * w}")
    rc = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    rc = rc.reshape(-1, 2).double()  # (N, 2)
    chosen: list[int] = []

    def farthest(candidates: torch.Tensor, anchors: torch.Tensor) -> int:
        d = torch.cdist(rc[candidates], anchors).amin(dim=1)
        return int(candidates[int(d.argmax())])

    objects = torch.nonzero(f > 0.5).flatten()
    if len(objects) < n_object:
        objects = torch.argsort(f, descending=True)[:max(n_object, 1)]
    for i in range(n_object):
        chosen.append(int(objects[int(f[objects].argmax())]) if i == 0
                      else farthest(objects, rc[chosen]))
    background = torch.nonzero(f == 0).flatten()
    if len(background) < n_background:
        background = torch.argsort(f)[:max(n_background, 1)]
    centre = (rc * f[:, None]).sum(0, keepdim=True) / f.sum().clamp_min(1e-12)
    for i in range(n_background):
        anchors = centre if i == 0 else rc[chosen[n_object:]]
        chosen.append(farthest(background, anchors))
    points = [(c // w, c % w) for c in chosen]
    return points, ["object"] * n_object + ["background"] * n_background


def plot_attention_points(image, attention: torch.Tensor, grid: tuple[int, int],
                          points: Sequence[tuple[int, int]], kinds: Sequence[str] | None = None,
                          mask=None, axes=None, title: str | None = None, size: float = 2.2):
    """The paper's Fig. 6: an image with chosen points, and where each point attends.

    Panel 0 shows the image with the points numbered; panel ``i`` the attention row of
    point ``i`` (``a_i·``, summing to 1 over the grid), each cell drawn as the pixels it
    covers over a faded copy of the image; the colour scale is per panel (0 to its maximum,
    written in the title).

    Args:
        image: ``(3, S, S)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        attention: ``(N, N)`` attention of this image (row = query cell), ``N = H·W``.
        grid: ``(H, W)`` of the feature map.
        points: ``[(row, col), …]`` query cells.
        kinds: optional label per point, e.g. ``"object"`` / ``"background"``.
        mask: optional ``(S, S)`` object mask, outlined in white.
        axes: ``1 + len(points)`` matplotlib axes to draw into (default: a new row).
        title: title of panel 0.

    Returns:
        The matplotlib figure.
    """
    h, w = grid
    a = torch.as_tensor(attention).detach().cpu().double()
    if a.shape != (h * w, h * w):
        raise ValueError(f"attention must be (N, N) with N = {h}·{w} = {h * w}, got "
                         f"{tuple(a.shape)}")
    if kinds is not None and len(kinds) != len(points):
        raise ValueError(f"kinds has {len(kinds)} entries for {len(points)} points")
    for r, c in points:
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"point {(r, c)} lies outside the {h}×{w} grid")
    img = to_hwc(image, unit=True)
    sh, sw = img.shape[:2]
    if axes is None:
        fig, axes = plt.subplots(1, 1 + len(points), figsize=(size * (1 + len(points)), size * 1.1))
    axes = np.asarray(axes).reshape(-1)
    fig = axes[0].figure
    m = to_hwc(mask).astype(float) if mask is not None else None

    def centre(r: int, c: int) -> tuple[float, float]:
        return (c + 0.5) * sw / w - 0.5, (r + 0.5) * sh / h - 0.5

    axes[0].imshow(img, interpolation="nearest")
    for i, (r, c) in enumerate(points):
        x, y = centre(r, c)
        colour = POINT_COLOURS[i % len(POINT_COLOURS)]
        axes[0].scatter([x], [y], s=70, c=colour, edgecolors="black", linewidths=1, zorder=3)
        inward = (-11 if x > sw / 2 else 5, -11 if y < sh / 2 else 5)  # keep the label inside
        axes[0].annotate(str(i + 1), (x, y), xytext=inward, textcoords="offset points",
                         color="white", fontsize=9, weight="bold")
    if title:
        axes[0].set_title(title, fontsize=8)
    for i, (r, c) in enumerate(points):
        ax = axes[1 + i]
        row = a[r * w + c].reshape(h, w).numpy()
        ax.imshow(img.mean(axis=2), cmap="gray", alpha=0.45, interpolation="nearest")
        ax.imshow(upsample(row, (sh, sw)), cmap="inferno", alpha=0.7, vmin=0, vmax=row.max(),
                  interpolation="nearest")
        x, y = centre(r, c)
        ax.scatter([x], [y], s=70, c=POINT_COLOURS[i % len(POINT_COLOURS)], edgecolors="white",
                   linewidths=1.2, zorder=3)
        kind = f" ({kinds[i]})" if kinds is not None else ""
        ax.set_title(f"point {i + 1}{kind}\nmax {row.max():.2f}", fontsize=8)
    for ax in axes[: 1 + len(points)]:
        if m is not None:
            ax.contour(m, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_convergence(curves: Mapping[str, Sequence], metric: str = "recall@1", ax=None,
                     colours: Mapping[str, str] | None = None):
    """Test ``metric`` against epoch, one line per loss: the mean over seeds, with the band
    between the best and the worst seed (Figs. 1 and 7 of the paper).

    Args:
        curves: ``{name: [History per seed]}`` (:class:`dmlviz.train.History`, same epochs).
        metric: the metric to plot.
        ax: axes to draw into.
        colours: optional ``{name: colour}``.

    Returns:
        The matplotlib figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, histories in curves.items():
        if not histories:
            raise ValueError(f"curves[{name!r}] holds no History")
        epochs = histories[0].eval_epochs
        values = np.array([hist.metrics[metric] for hist in histories])  # (seeds, evals)
        colour = (colours or {}).get(name)
        label = f"{name} ({len(histories)} seed{'s' if len(histories) > 1 else ''})"
        line, = ax.plot(epochs, values.mean(0), marker="o", ms=3, label=label, color=colour)
        if len(histories) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2,
                            color=line.get_color(), linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {metric} (unseen classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


def plot_seed_bars(values: Mapping[str, Sequence[float]], ax=None, ylabel: str = "Recall@1",
                   highlight: str | None = None):
    """One bar per variant (the mean over seeds) with every seed as a dot, the mean printed
    above it — for interventions and ablations compared on the same seeds.

    Args:
        values: ``{variant name: [value per seed]}``.
        ax: axes to draw into.
        ylabel: the y axis label.
        highlight: a variant drawn in another colour (the reference).

    Returns:
        The matplotlib figure.
    """
    if not values:
        raise ValueError("values holds no variant")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.4 * len(values) + 2, 3.4))
    arrays = {name: np.asarray(v, dtype=float) for name, v in values.items()}
    for i, (name, v) in enumerate(arrays.items()):
        if v.size == 0:
            raise ValueError(f"values[{name!r}] holds no seed")
        ax.bar(i, v.mean(), color="C2" if name == highlight else "C0", alpha=0.85)
        ax.scatter(np.full(v.size, i), v, color="black", s=12, zorder=3)
        ax.text(i, v.max() + 0.01, f"{v.mean():.3f}", ha="center", fontsize=8)
    low = min(v.min() for v in arrays.values())
    ax.set_xticks(range(len(arrays)), list(arrays), fontsize=8)
    ax.set_ylim(max(0.0, low - 0.1), min(1.05, max(v.max() for v in arrays.values()) + 0.06))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def plot_object_mass(stats: Mapping[str, Mapping[str, float]], ax=None):
    """Bars: attention mass that background (and object) queries put on the object, per
    model, next to the chance level of uniform attention (the object's area fraction).

    Args:
        stats: ``{model name: object_attention_mass(...) result}``.
        ax: axes to draw into.

    Returns:
        The matplotlib figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    kinds = ("background", "object")
    width = 0.8 / (len(stats) + 1)
    for i, (name, s) in enumerate(stats.items()):
        xs = np.arange(len(kinds)) + i * width
        bars = ax.bar(xs, [s[f"{k}_to_object"] for k in kinds], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    chance = [next(iter(stats.values()))[f"{k}_chance"] for k in kinds]
    xs = np.arange(len(kinds)) + len(stats) * width
    bars = ax.bar(xs, chance, width, color="lightgray", hatch="//", label="chance (uniform)")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(kinds)) + width * len(stats) / 2,
                  [f"{k} queries → object" for k in kinds])
    ax.set_ylabel("attention mass on the object")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return ax.figure


def soa_point_explorer(images, attention: torch.Tensor, grid: tuple[int, int], masks=None):
    """ipywidgets: sliders pick an image and a query cell; the figure shows its attention.

    Args:
        images: ``(B, 3, S, S)`` images (or a list of ``(H, W, 3)`` uint8 photos).
        attention: ``(B, N, N)`` attention maps of those images.
        grid: ``(H, W)`` of the maps.
        masks: optional ``(B, S, S)`` object masks.
    """
    import ipywidgets as widgets
    from IPython.display import display

    h, w = grid
    out = widgets.Output()
    image = widgets.IntSlider(value=0, min=0, max=len(attention) - 1, description="image")
    row = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="row")
    col = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="column")

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fig = plot_attention_points(images[image.value], attention[image.value], grid,
                                        [(row.value, col.value)],
                                        mask=None if masks is None else masks[image.value],
                                        size=3.5)
            display(fig)
            plt.close(fig)

    for slider in (image, row, col):
        slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([image, row, col]), out])


def convergence_explorer(curves: Mapping[str, Sequence], metric: str = "recall@1"):
    """ipywidgets: a drop-down picks one loss (or all) and a slider the last epoch shown (zoom
    on the early epochs, where convergence speeds differ); shows the convergence curves."""
    import ipywidgets as widgets
    from IPython.display import display

    last = max(max(h[0].eval_epochs) for h in curves.values())
    out = widgets.Output()
    choice = widgets.Dropdown(options=["all", *curves], value="all", description="loss")
    upto = widgets.IntSlider(value=last, min=1, max=max(last, 1), description="up to epoch")

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            shown = curves if choice.value == "all" else {choice.value: curves[choice.value]}
            fig = plot_convergence(shown, metric)
            fig.axes[0].set_xlim(-0.3, upto.value + 0.3)
            display(fig)
            plt.close(fig)

    choice.observe(redraw, names="value")
    upto.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([choice, upto]), out])
