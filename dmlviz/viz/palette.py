"""One colour-blind-safe categorical palette for every class-coloured figure, matplotlib and
plotly alike, so a class has the same colour (and marker) in every figure of a notebook.

Colours are Okabe & Ito's eight (distinguishable under the common colour-vision deficiencies);
beyond eight classes the marker changes too, so class c is colour ``c % 8`` with marker
``c // 8`` — 24 classes stay apart without relying on hue alone.
"""

from __future__ import annotations

import numpy as np
import torch

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
             "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # matplotlib
PLOTLY_MARKERS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross",
                  "x", "star")
#: the numbered query points of the attention figures (SOA's Fig. 6, CSALR's Fig. 4), point i
#: in colour ``i % 6``
POINT_COLOURS = ("tab:cyan", "tab:orange", "tab:green", "tab:pink", "tab:olive", "tab:purple")


def _classes(labels) -> np.ndarray:
    labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    return np.unique(labels)


def class_style(index: int) -> tuple[str, str, str]:
    """``(colour, matplotlib marker, plotly marker)`` of the class at position ``index`` of the
    sorted class ids."""
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    m = (index // len(OKABE_ITO)) % len(MARKERS)
    return OKABE_ITO[index % len(OKABE_ITO)], MARKERS[m], PLOTLY_MARKERS[m]


def point_styles(labels) -> tuple[list[str], list[str]]:
    """Per point ``(colours, plotly markers)`` for ``(N,)`` labels (same mapping as
    :func:`class_style`), for plotly traces: ``marker=dict(color=c, symbol=s)``."""
    arr = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    position = {c: i for i, c in enumerate(_classes(arr))}
    styles = [class_style(position[c]) for c in arr.tolist()]
    return [s[0] for s in styles], [s[2] for s in styles]


def scatter_by_class(ax, points: np.ndarray, labels, *, size: float = 8,
                     legend: bool | None = None, names=None) -> None:
    """Scatter ``(N, 2)`` points on ``ax``, one colour-and-marker per class, with a legend
    (default: when there are at most 24 classes). ``names`` maps class id → legend text."""
    arr = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    classes = _classes(arr)
    for i, c in enumerate(classes):
        colour, marker, _ = class_style(i)
        keep = arr == c
        label = names[c] if names is not None else str(c)
        ax.scatter(points[keep, 0], points[keep, 1], color=colour, marker=marker, s=size,
                   linewidths=0, label=label)
    if legend if legend is not None else len(classes) <= 24:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False,
                  markerscale=1.5, ncols=1 if len(classes) <= 12 else 2, title="class")
