"""Where a notebook's results go: recorded metrics and exported figures.

A notebook calls :func:`set_output_dir` once with its ``out_dir`` parameter, then
:func:`record` for every number it claims something about. Each call rewrites
``<out_dir>/metrics.json`` at once, so a notebook that fails halfway keeps what it
recorded before the failure (the runner reads that file). :func:`save_figure` and
:func:`save_plotly` write the static and the interactive form of a figure.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from pathlib import Path

METRICS_FILE = "metrics.json"
CLAIMS_FILE = "claims.json"  # written by dmlviz.claims
FIGURES_SUBDIR = "figures"

_state: dict = {"out_dir": None, "figures_dir": None, "metrics": {}}


def set_output_dir(out_dir: str | os.PathLike, figures_dir: str | os.PathLike | None = None) -> Path:
    """Choose where :func:`record` and the figure savers write, and start a fresh record.

    Args:
        out_dir: the notebook's output directory (created if missing). Metrics go to
            ``out_dir/metrics.json``, figures to ``out_dir/figures/``.
        figures_dir: optional second place figures are copied to (the repository's
            ``figures/`` gallery when the main job runs). Defaults to the environment
            variable ``DMLVIZ_FIGURES_DIR``, which the runner sets.

    Returns:
        The output directory as a ``Path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _state["out_dir"] = out
    figures_dir = figures_dir or os.environ.get("DMLVIZ_FIGURES_DIR")
    _state["figures_dir"] = Path(figures_dir) if figures_dir else None
    _state["metrics"] = {}
    existing = out / METRICS_FILE
    if existing.exists():
        existing.unlink()
    return out


def output_dir() -> Path:
    """The current output directory (``DMLVIZ_OUT_DIR`` or ``./outputs`` until set)."""
    if _state["out_dir"] is None:
        set_output_dir(os.environ.get("DMLVIZ_OUT_DIR", "outputs"))
    return _state["out_dir"]


def _as_json_value(name: str, value):
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        value = float(value) if not isinstance(value, int) else value
        if isinstance(value, float) and not math.isfinite(value):
            warnings.warn(f"metric {name!r} is {value}; recorded as null", stacklevel=3)
            return None
        return value
    raise ValueError(f"record({name!r}, ...) takes a number, bool or str, got {type(value).__name__}")


def record(name: str, value, *, show: bool = True):
    """Record one metric of the running notebook and show it.

    Args:
        name: dotted metric name, e.g. ``"quickstart.recall@1.trained"``.
        value: a number (Python, NumPy or 0-d torch), bool or short string.
        show: print ``name = value`` (the notebook's visible trace of the claim).

    Returns:
        The value as stored (so ``r1 = record("x", r1)`` keeps working).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"record() needs a non-empty metric name, got {name!r}")
    stored = _as_json_value(name, value)
    _state["metrics"][name] = stored
    path = output_dir() / METRICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_state["metrics"], indent=2, sort_keys=True))
    tmp.replace(path)
    if show:
        shown = f"{stored:.4f}" if isinstance(stored, float) else stored
        print(f"recorded {name} = {shown}")
    return stored


def recorded() -> dict:
    """All metrics recorded since the last :func:`set_output_dir`."""
    return dict(_state["metrics"])


def _figure_paths(name: str, suffix: str) -> list[Path]:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem like 'shapes_grid', got {name!r}")
    dirs = [output_dir() / FIGURES_SUBDIR]
    if _state["figures_dir"] is not None:
        dirs.append(_state["figures_dir"])
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return [d / f"{name}{suffix}" for d in dirs]


def save_figure(fig, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``<name>.png`` in the output (and gallery) directory."""
    paths = _figure_paths(name, ".png")
    for p in paths:
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return paths[0]


def save_plotly(fig, name: str) -> Path:
    """Save a plotly figure as a standalone ``<name>.html`` that renders offline."""
    paths = _figure_paths(name, ".html")
    for p in paths:
        fig.write_html(p, include_plotlyjs=True, full_html=True)
    return paths[0]
