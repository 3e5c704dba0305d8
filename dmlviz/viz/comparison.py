"""Figures of the method comparison (notebook 07): metric bars with the seed spread, and
accuracy against cost."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np


def plot_comparison(summary: Mapping[str, Mapping[str, tuple[float, float]]],
                    costs: Mapping[str, object] | None = None, *,
                    metrics: Sequence[str] = ("recall@1", "map@r", "nmi"),
                    labels: Mapping[str, str] | None = None, title: str | None = None):
    """Grouped bars (mean ± std over seeds) of ``metrics`` per row, and — with ``costs`` —
    Recall@1 against forward MFLOPs per image of each head.

    Args:
        summary: ``{row: {metric: (mean, std)}}`` from :func:`dmlviz.compare.summarise`
            (a ``nan`` std, one seed, draws no error bar).
        costs: ``{row: ModuleCost}`` (rows without a cost are left out of the scatter).
        metrics: the bar groups.
        labels: display names per row (default: the row keys).
        title: figure title.

    Returns:
        The matplotlib figure.
    """
    if not summary:
        raise ValueError("summary is empty: nothing to plot")
    rows = list(summary)
    labels = {r: (labels or {}).get(r, r) for r in rows}
    with_costs = bool(costs) and any(r in costs for r in rows)
    fig, axes = plt.subplots(1, 2 if with_costs else 1, figsize=(13 if with_costs else 8, 4.2),
                             gridspec_kw={"width_ratios": [1.6, 1]} if with_costs else None,
                             squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    colors = plt.get_cmap("tab10").colors
    for i, row in enumerate(rows):
        means = [summary[row][m][0] for m in metrics]
        stds = [summary[row][m][1] for m in metrics]
        err = None if all(math.isnan(s) for s in stds) else np.nan_to_num(stds)
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=err, capsize=2,
               label=labels[row], color=colors[i % len(colors)])
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test metric (unseen classes)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(0, -0.1))
    ax.set_title("mean over seeds, bar = ± std")
    if with_costs:
        ax = axes[0, 1]
        for i, row in enumerate(rows):
            if row not in costs:
                continue
            mflops = max(costs[row].flops / 1e6, 1e-3)
            mean, std = summary[row]["recall@1"]
            ax.errorbar(mflops, mean, yerr=None if math.isnan(std) else std, fmt="o",
                        color=colors[i % len(colors)], capsize=3)
            ax.annotate(labels[row], (mflops, mean), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.35, y=0.15)  # room for the labels right of the last point
        ax.set_xlabel("head forward MFLOPs per image (log)")
        ax.set_ylabel("Recall@1")
        ax.grid(alpha=0.3)
        ax.set_title("accuracy vs cost of the head")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def comparison_explorer(per_seed: Mapping[str, Sequence[Mapping[str, float]]],
                        labels: Mapping[str, str] | None = None):
    """Widgets over the per-seed results: a metric picker and a seed slider (slider at 0 =
    the mean over seeds, ``s`` = seed number ``s``) redraw one bar per method.

    Args:
        per_seed: ``{row: [metrics per seed]}`` as returned by
            :func:`dmlviz.compare.run_benchmark`.
        labels: display names per row.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not per_seed:
        raise ValueError("per_seed is empty: nothing to explore")
    rows = list(per_seed)
    n_seeds = min(len(v) for v in per_seed.values())
    metric_names = list(next(iter(per_seed.values()))[0])
    metric = widgets.Dropdown(options=metric_names, value=metric_names[0], description="metric")
    seed = widgets.IntSlider(value=0, min=0, max=n_seeds, description="seed (0 = mean)",
                             style={"description_width": "initial"}, continuous_update=False)
    out = widgets.Output()
    colors = plt.get_cmap("tab10").colors

    def draw(*_):
        values = [np.mean([r[metric.value] for r in per_seed[row]]) if seed.value == 0
                  else per_seed[row][seed.value - 1][metric.value] for row in rows]
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(8, 3.2))
            ax.barh([(labels or {}).get(r, r) for r in rows], values,
                    color=[colors[i % len(colors)] for i in range(len(rows))])
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(metric.value)
            ax.set_title("mean over seeds" if seed.value == 0 else f"seed #{seed.value}")
            fig.tight_layout()
            display(fig)
            plt.close(fig)

    metric.observe(draw, names="value")
    seed.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([metric, seed]), out])
