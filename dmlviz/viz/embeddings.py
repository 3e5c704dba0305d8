"""2-D maps of embeddings (PCA, then t-SNE) coloured by class."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from dmlviz.viz.palette import scatter_by_class


def project_2d(embeddings: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0,
               perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
    """Project ``(N, D)`` embeddings to ``(N, 2)``.

    ``"tsne"`` runs scikit-learn's t-SNE (PCA initialisation, seeded) after reducing to at
    most ``pca_dims`` dimensions with PCA; ``"pca"`` is the plain 2-D PCA.
    """
    from sklearn.decomposition import PCA

    x = embeddings.detach().cpu().numpy() if torch.is_tensor(embeddings) else np.asarray(embeddings)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"embeddings must be (N, D) with N ≥ 3, got shape {x.shape}")
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    from sklearn.manifold import TSNE

    if x.shape[1] > pca_dims:
        x = PCA(pca_dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_embedding_2d(points: np.ndarray, labels, ax=None, title: str = "", size: float = 8,
                      legend: bool | None = None):
    """Scatter ``(N, 2)`` points, one colour-blind-safe colour and marker per class
    (:mod:`dmlviz.viz.palette`), with a legend up to 24 classes; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    scatter_by_class(ax, points, labels, size=size, legend=legend)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure
