"""Training curves and metric comparisons."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_history(history, metric: str = "recall@1", ax=None, label: str | None = None):
    """Test ``metric`` against epoch for one :class:`dmlviz.train.History`; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    if metric not in history.metrics:
        raise ValueError(f"history has no metric {metric!r}; it has {sorted(history.metrics)}")
    ax.plot(history.eval_epochs, history.metrics[metric], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    return ax.figure


def plot_metric_bars(results: dict[str, dict[str, float]], metrics=("recall@1", "map@r", "nmi"),
                     ax=None):
    """Grouped bars: one group per metric, one bar per named result; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / max(len(results), 1)
    for i, (name, values) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(xs, [values[m] for m in metrics], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure
