"""What retrieval looks like: queries and their nearest neighbours, static and interactive."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from dmlviz.metrics import knn
from dmlviz.viz.arrays import to_hwc


def plot_retrievals(images, embeddings: torch.Tensor, labels: torch.Tensor, queries: Sequence[int],
                    k: int = 6, size: float = 1.3):
    """One row per query: the query image, then its ``k`` nearest neighbours (cosine) among
    the other images, framed green when they share the query's class and red otherwise.

    Args:
        images: ``(N, C, S, S)`` images matching ``embeddings``.
        embeddings: ``(N, D)``.
        labels: ``(N,)``.
        queries: indices of the query images.
        k: neighbours shown per query.

    Returns:
        The matplotlib figure.
    """
    _, neighbours = knn(embeddings[list(queries)], embeddings, k=k + 1, exclude_self=False)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(size * (k + 1), size * len(queries)),
                             squeeze=False)
    for row, q in enumerate(queries):
        shown = [i for i in neighbours[row].tolist() if i != q][:k]
        for col, idx in enumerate([q, *shown]):
            ax = axes[row, col]
            ax.imshow(to_hwc(images[idx]), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if col == 0 else ("tab:green" if labels[idx] == labels[q] else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if col else 1)
        axes[row, 0].set_ylabel(f"query {q}", fontsize=7)
    axes[0, 0].set_title("query", fontsize=8)
    for col in range(1, k + 1):
        axes[0, col].set_title(f"#{col}", fontsize=8)
    fig.tight_layout()
    return fig


def retrieval_explorer(images, embeddings: torch.Tensor, labels: torch.Tensor, k: int = 6):
    """An ipywidgets explorer: a slider picks the query, the figure shows its neighbours."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    slider = widgets.IntSlider(value=0, min=0, max=len(labels) - 1, description="query")

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fig = plot_retrievals(images, embeddings, labels, [slider.value], k=k)
            display(fig)
            plt.close(fig)

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])
