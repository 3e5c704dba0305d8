"""Figures for the notebooks: matplotlib helpers (``ax=None``, return the figure, never
``plt.show()``), plotly interactive figures and ipywidgets explorers."""

from dmlviz.viz.embeddings import plot_embedding_2d, project_2d
from dmlviz.viz.images import image_grid, photo_predictions
from dmlviz.viz.retrieval import plot_retrievals, retrieval_explorer
from dmlviz.viz.training import plot_history, plot_metric_bars

__all__ = [
    "image_grid",
    "photo_predictions",
    "plot_embedding_2d",
    "plot_history",
    "plot_metric_bars",
    "plot_retrievals",
    "project_2d",
    "retrieval_explorer",
]
