"""Embedding dynamics of neighbour refinement: every step e⁰ … e^T in one 2-D map (Fig. 4 of
"Attend to context for refining embeddings in deep metric learning"), per-step class geometry,
recall per step (Fig. 3) and the attention a query pays to its neighbours.

Placing the steps in one map. A separate t-SNE per step would give T + 1 unrelated maps
(t-SNE is invariant to rotations and reflections, and its clusters move freely), so a point's
motion between two panels would mean nothing. We offer two consistent placements:

* ``"transform"`` (default) — fit openTSNE once on ``e⁰`` (after a PCA fitted on ``e⁰`` and
  applied unchanged to every step), then place every ``e^t`` into that *fixed* map with
  ``TSNEEmbedding.transform`` (each new point starts at the median of its nearest reference
  points in the e⁰ map and is optimised against the fixed reference points). The axes mean the
  same at every step; a point moves because its neighbours among the e⁰ points changed.
* ``"aligned_umap"`` — umap-learn's ``AlignedUMAP``: one UMAP per step, fitted jointly with a
  penalty that keeps each point near its position in the neighbouring steps. Every step gets
  its own map (clusters may re-form), at the price of a slower fit (numba compilation).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.metrics import embedding_space_density
from dmlviz.viz.arrays import to_numpy
from dmlviz.viz.palette import class_style, scatter_by_class

__all__ = [
    "plot_neighbour_attention",
    "plot_recall_per_step",
    "plot_step_geometry",
    "plot_step_maps",
    "refinement_explorer",
    "step_animation",
    "step_geometry",
    "step_maps_2d",
    "top_movers",
]


def _check_steps(steps) -> np.ndarray:
    steps = to_numpy(steps, np.float32)
    if steps.ndim != 3 or steps.shape[0] < 5 or steps.shape[1] < 1:
        raise ValueError(f"steps must be (N, T+1, D) with N ≥ 5, got shape {steps.shape}")
    return steps


def step_maps_2d(steps, method: str = "transform", *, seed: int = 0, perplexity: float = 30.0,
                 pca_dims: int = 50, n_jobs: int = 1) -> np.ndarray:
    """2-D coordinates of every refinement step in one consistent map.

    Args:
        steps: ``(N, T+1, D)`` embeddings ``e⁰ … e^T`` (from ``return_all=True``).
        method: ``"transform"`` (openTSNE on e⁰, each step placed by ``transform``) or
            ``"aligned_umap"`` (umap-learn's AlignedUMAP over the steps); see the module docstring.
        seed: random state of t-SNE / UMAP.
        perplexity: t-SNE perplexity (capped at (N − 1) / 3).
        pca_dims: PCA dimensions fitted on e⁰ before t-SNE (skipped when D ≤ pca_dims).
        n_jobs: threads for openTSNE (AlignedUMAP takes none).

    Returns:
        ``(T+1, N, 2)`` coordinates; step 0 is the map of e⁰.
    """
    steps = _check_steps(steps)
    n, n_steps, d = steps.shape
    if method == "transform":
        from openTSNE import TSNE
        from sklearn.decomposition import PCA

        flat = steps.reshape(n * n_steps, d)
        if d > pca_dims:
            pca = PCA(pca_dims, random_state=seed).fit(steps[:, 0])  # fitted on e⁰ only
            flat = pca.transform(flat)
        x = flat.reshape(n, n_steps, -1).astype(np.float32)
        perplexity = min(perplexity, (n - 1) / 3)
        reference = TSNE(perplexity=perplexity, random_state=seed, n_jobs=n_jobs,
                         initialization="pca", verbose=False).fit(x[:, 0])
        maps = [np.asarray(reference)]
        maps += [np.asarray(reference.transform(x[:, t])) for t in range(1, n_steps)]
        return np.stack(maps)  # (T+1, N, 2)
    if method == "aligned_umap":
        import umap

        identity = {i: i for i in range(n)}
        # AlignedUMAP (umap-learn 0.5) takes no n_jobs; a random_state makes it single-threaded
        aligned = umap.AlignedUMAP(n_neighbors=min(15, n - 1), random_state=seed)
        aligned.fit([steps[:, t] for t in range(n_steps)], relations=[identity] * (n_steps - 1))
        return np.stack([np.asarray(e) for e in aligned.embeddings_])  # (T+1, N, 2)
    raise ValueError(f"method must be 'transform' or 'aligned_umap', got {method!r}")


def step_geometry(steps, labels) -> dict[str, np.ndarray]:
    """Intra-class spread and inter-class distance at every step, in the embedding space.

    Uses :func:`dmlviz.metrics.embedding_space_density` (cosine distances): ``pi_intra`` is the
    mean distance between two samples of a class, ``pi_inter`` the mean distance between two
    class means, ``pi_ratio`` their ratio (smaller = tighter classes relative to their separation).

    Args:
        steps: ``(N, T+1, D)`` embeddings.
        labels: ``(N,)`` class labels.

    Returns:
        ``{"pi_intra", "pi_inter", "pi_ratio"}``, each an array ``(T+1,)``.
    """
    steps = torch.as_tensor(_check_steps(steps))
    parts = [embedding_space_density(steps[:, t], torch.as_tensor(labels), return_parts=True)
             for t in range(steps.shape[1])]
    return {key: np.array([p[key] for p in parts]) for key in ("pi_intra", "pi_inter", "pi_ratio")}


def top_movers(steps, count: int = 10) -> np.ndarray:
    """Indices of the ``count`` embeddings that moved most between e⁰ and e^T (cosine distance)."""
    steps = _check_steps(steps)
    moved = 1.0 - (steps[:, 0] * steps[:, -1]).sum(-1) / (
        np.linalg.norm(steps[:, 0], axis=-1) * np.linalg.norm(steps[:, -1], axis=-1))
    return np.argsort(-moved)[:count]


def plot_step_maps(maps: np.ndarray, labels, shown=None, movers=None, axes=None,
                   size: float = 6, class_names=None, legend: bool = True) -> plt.Figure:
    """Small multiples: the 2-D map at chosen steps, one colour and marker per class
    (:mod:`dmlviz.viz.palette`, the same as :func:`step_animation`), arrows from the e⁰
    position of each ``movers`` index to its position at that step.

    Args:
        maps: ``(T+1, N, 2)`` from :func:`step_maps_2d`.
        labels: ``(N,)`` class labels.
        shown: steps to draw (default: 0, 1, T/2, T).
        movers: indices that get an arrow (e.g. :func:`top_movers`).
        axes: a sequence of as many axes as ``shown`` (default: a new row of panels).
        size: marker area.
        class_names: optional class id → legend text.
        legend: a legend of the classes beside the last panel.
    """
    maps = np.asarray(maps)
    n_steps = maps.shape[0]
    shown = list(shown) if shown is not None else sorted({0, min(1, n_steps - 1),
                                                         (n_steps - 1) // 2, n_steps - 1})
    if axes is None:
        _, axes = plt.subplots(1, len(shown), figsize=(3.3 * len(shown), 3.5))
    axes = np.atleast_1d(axes)
    if len(axes) != len(shown):
        raise ValueError(f"axes must hold one axis per shown step ({len(shown)}), got {len(axes)}")
    labels = to_numpy(labels).astype(int)
    lo, hi = maps.reshape(-1, 2).min(0), maps.reshape(-1, 2).max(0)
    pad = 0.04 * (hi - lo)
    for ax, t in zip(axes, shown, strict=True):
        scatter_by_class(ax, maps[t], labels, size=size, names=class_names,
                         legend=legend and ax is axes[-1])
        for i in (movers if movers is not None and t > 0 else []):
            ax.annotate("", xy=maps[t, i], xytext=maps[0, i],
                        arrowprops=dict(arrowstyle="->", color="black", lw=0.8))
        ax.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]),
               xticks=[], yticks=[], title=f"step t = {t}" + (" (e⁰)" if t == 0 else ""))
    return axes[0].figure


def step_animation(maps: np.ndarray, labels, movers=None, class_names=None, title: str = ""):
    """A plotly figure with one frame per step and a slider over t (offline-safe HTML via
    ``dmlviz.save_plotly``); it opens at step 0. One trace per class, coloured and marked as
    in :func:`plot_step_maps` (:mod:`dmlviz.viz.palette`), with a legend. Arrows (lines from
    the e⁰ position) mark the ``movers``."""
    import plotly.graph_objects as go

    maps = np.asarray(maps)
    labels = to_numpy(labels).astype(int)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    names = [str(class_names[c]) if class_names is not None else str(c) for c in classes]
    movers = [] if movers is None else list(movers)

    def traces(t: int):
        points = []
        for i, (idx, name) in enumerate(zip(members, names, strict=True)):
            colour, _, symbol = class_style(i)
            points.append(go.Scatter(x=maps[t, idx, 0], y=maps[t, idx, 1], mode="markers",
                                     name=name, marker=dict(color=colour, symbol=symbol, size=6),
                                     hovertemplate=f"{name}<extra></extra>"))
        xs, ys = [], []
        for i in movers:
            xs += [maps[0, i, 0], maps[t, i, 0], None]
            ys += [maps[0, i, 1], maps[t, i, 1], None]
        arrows = go.Scatter(x=xs, y=ys, mode="lines+markers", name="largest moves (e⁰ → e^t)",
                            line=dict(color="black", width=1),
                            marker=dict(symbol="arrow", size=8, angleref="previous", color="black"))
        return [*points, arrows]

    frames = [go.Frame(data=traces(t), name=str(t)) for t in range(len(maps))]
    lo, hi = maps.reshape(-1, 2).min(0), maps.reshape(-1, 2).max(0)
    fig = go.Figure(data=traces(0), frames=frames)
    fig.update_layout(
        title=title, width=820, height=620, showlegend=True,
        legend=dict(title="class", font=dict(size=9)),
        xaxis=dict(range=[lo[0] - 2, hi[0] + 2], visible=False),
        yaxis=dict(range=[lo[1] - 2, hi[1] + 2], visible=False),
        sliders=[dict(active=0, currentvalue=dict(prefix="step t = "), steps=[
            dict(label=str(t), method="animate",
                 args=[[str(t)], dict(mode="immediate", frame=dict(duration=300, redraw=True))])
            for t in range(len(maps))])],
        updatemenus=[dict(type="buttons", x=0.0, y=1.08, direction="left", buttons=[
            dict(label="play", method="animate",
                 args=[None, dict(frame=dict(duration=500, redraw=True), fromcurrent=True)])])],
    )
    return fig


def plot_recall_per_step(curves: dict[str, list[float]], ax=None, ylabel: str = "Recall@1"):
    """Recall (or any metric) at every step e⁰ … e^T, one line per run (Fig. 3).

    A value of ``curves`` is one curve ``(T+1,)``, or one curve per seed ``(S, T+1)``: then
    each seed is a thin line and their mean a thick one, in one colour.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim == 2:
            colour = f"C{i % 10}"
            for row in values:
                ax.plot(range(values.shape[1]), row, color=colour, lw=0.7, alpha=0.45)
            ax.plot(range(values.shape[1]), values.mean(0), color=colour, marker="o", ms=3,
                    lw=2, label=f"{name} (mean of {len(values)} seeds)")
            continue
        ax.plot(range(len(values)), values, marker="o", ms=3, label=name)
    ax.set(xlabel="refinement step t", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


def plot_step_geometry(geometry: dict[str, np.ndarray], ax=None):
    """π_intra and π_inter per step (left axis) and their ratio (right axis)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    t = np.arange(len(geometry["pi_intra"]))
    ax.plot(t, geometry["pi_intra"], marker="o", ms=3, label="intra-class spread π_intra")
    ax.plot(t, geometry["pi_inter"], marker="s", ms=3, label="inter-class distance π_inter")
    ax.set(xlabel="refinement step t", ylabel="mean cosine distance")
    right = ax.twinx()
    right.plot(t, geometry["pi_ratio"], color="C3", ls="--", label="π_intra / π_inter")
    right.set_ylabel("ratio", color="C3")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


def plot_neighbour_attention(weights, neighbour_labels, query_label: int, ax=None,
                             class_names=None):
    """Attention of one query over its K neighbours in every block (mean over heads).

    Args:
        weights: ``(T, H, K)`` attention weights of one query (a row of
            ``RefinerMaps.attention`` from ``NeighborRefiner(..., return_maps=True)``).
        neighbour_labels: ``(K,)`` classes of its neighbours, nearest first.
        query_label: the query's class: same-class neighbours are marked ✓.
    """
    w = to_numpy(weights, np.float32).mean(axis=1)  # (T, K) mean over heads
    nl = to_numpy(neighbour_labels).astype(int)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * w.shape[1] + 2.5, 0.35 * w.shape[0] + 1.6))
    image = ax.imshow(w, cmap="viridis", vmin=0, aspect="auto")
    name = (lambda c: class_names[c]) if class_names is not None else str
    ax.set_xticks(range(len(nl)), [("✓ " if c == query_label else "✗ ") + name(c) for c in nl],
                  rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(w.shape[0]), [f"block {t + 1}" for t in range(w.shape[0])], fontsize=7)
    ax.set_xlabel("neighbours, nearest first (✓ = query's class)")
    ax.figure.colorbar(image, ax=ax, label="attention (mean over heads)")
    return ax.figure


def refinement_explorer(maps: np.ndarray, labels, weights, neighbour_idx, queries,
                        class_names=None, tags=None):
    """ipywidgets explorer: a step slider moves every point to its place at step t in the
    map and a query picker highlights one query, its K neighbours and its attention weights.

    Args:
        maps: ``(T+1, N, 2)`` from :func:`step_maps_2d`.
        labels: ``(N,)`` classes.
        weights: ``(N, T, H, K)`` attention weights.
        neighbour_idx: ``(N, K)`` neighbour indices.
        queries: indices offered in the query picker.
        class_names: optional class id → name.
        tags: optional short word per offered query ("fixed", "broken"), shown in the picker
            with the query's class.
    """
    import ipywidgets as widgets

    labels = to_numpy(labels).astype(int)
    weights, neighbour_idx = to_numpy(weights, np.float32), to_numpy(neighbour_idx).astype(int)
    step = widgets.IntSlider(value=0, min=0, max=len(maps) - 1, description="step t")
    tags = list(tags) if tags is not None else [""] * len(queries)
    name = (lambda c: class_names[c]) if class_names is not None else str
    query = widgets.Dropdown(options=[(f"{int(q)}: {name(labels[int(q)])}" + (f" ({g})" if g else ""),
                                       int(q)) for q, g in zip(queries, tags, strict=True)],
                             description="query")
    out = widgets.Output()

    def draw(*_):
        t, q = step.value, query.value
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(width_ratios=[1.2, 1]))
            plot_step_maps(maps, labels, shown=[t], movers=[q], axes=[axes[0]])
            nb = neighbour_idx[q]
            axes[0].scatter(maps[0, nb, 0], maps[0, nb, 1], s=40, facecolors="none",
                            edgecolors="red", label="its neighbours (e⁰)")
            axes[0].scatter(*maps[t, q], s=80, marker="*", color="black", label="query at step t")
            axes[0].legend(fontsize=7, loc="lower right")
            if t == 0:
                axes[1].axis("off")
                axes[1].text(0.5, 0.5, "step 0 = e⁰: no refinement block has run yet",
                             ha="center", va="center", fontsize=9)
            else:
                plot_neighbour_attention(weights[q, :t], labels[nb], labels[q], ax=axes[1],
                                         class_names=class_names)
                blocks = "block 1" if t == 1 else f"blocks 1…{t}"
                axes[1].set_title(f"attention of query {q} ({blocks})", fontsize=9)
            fig.tight_layout()
            plt.show()
            plt.close(fig)

    step.observe(draw, names="value")
    query.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([step, query]), out])
