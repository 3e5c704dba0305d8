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


def _show_recorded() -> None:
    """Print the metrics recorded by the cell that just ran, as one compact table."""
    rows, _state["pending"] = _state.get("pending", []), []
    if not rows:
        return
    width = max(len(n) for n, _ in rows)
    print(f"recorded {len(rows)} metric(s):\n" + "\n".join(f"  {n.ljust(width)}  {v}"
                                                        for n, v in rows))


def _queue_shown(name: str, stored) -> None:
    shown = f"{stored:.4f}" if isinstance(stored, float) else str(stored)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:  # a script: show it at once
        print(f"recorded {name} = {shown}")
        return
    if not _state.get("hooked"):
        shell.events.register("post_run_cell", lambda *_: _show_recorded())
        _state["hooked"] = True
    _state.setdefault("pending", []).append((name, shown))


def record(name: str, value, *, show: bool = True) -> None:
    """Record one metric of the running notebook.

    Args:
        name: dotted metric name, e.g. ``"quickstart.recall@1.trained"``.
        value: a number (Python, NumPy or 0-d torch), bool or short string.
        show: list it under the cell (in a notebook, the metrics one cell recorded are shown
            as one compact table after the cell; in a script, one line at once).

    Returns:
        Nothing (a trailing ``record(...)`` adds no ``Out[…]`` to the notebook); read values
        back with :func:`recorded`.
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
        _queue_shown(name, stored)


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


def alt_text(fig) -> str:
    """A figure's alternative text: its suptitle and axes titles (what it shows, in words)."""
    parts = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) else []
    parts += [t for ax in fig.axes if (t := ax.get_title())]
    return "; ".join(parts) or "figure"


def save_figure(fig, name: str, dpi: int = 150, formats: tuple[str, ...] = ("png",),
                alt: str | None = None) -> None:
    """Save a matplotlib figure as ``<name>.<format>`` in the output (and gallery) directory.

    Args:
        fig: the figure.
        name: a plain file stem.
        dpi: resolution of the raster formats.
        formats: any of ``"png"``, ``"svg"``, ``"pdf"``.
        alt: alternative text stored in the file's metadata (``Description``); default
            :func:`alt_text` of the figure.

    Returns:
        Nothing (the files are ``output_dir() / "figures" / f"{name}.{format}"``).
    """
    allowed = ("png", "svg", "pdf")
    if not formats or any(f not in allowed for f in formats):
        raise ValueError(f"formats must be a non-empty tuple of {allowed}, got {formats!r}")
    description = alt if alt is not None else alt_text(fig)
    for fmt in formats:
        meta = {"Subject": description} if fmt == "pdf" else {"Description": description}
        for p in _figure_paths(name, f".{fmt}"):
            fig.savefig(p, dpi=dpi, bbox_inches="tight", metadata=meta)


def save_plotly(fig, name: str, post_script: str | None = None) -> None:
    """Save a plotly figure as a standalone ``<name>.html`` that renders offline
    (``output_dir() / "figures" / f"{name}.html"``); ``post_script`` is JavaScript run after
    the figure is drawn (a kernel-free explorer's, :mod:`dmlviz.viz.html_explorers`). An
    animation opens on its first frame (plotly would play it through on load)."""
    for p in _figure_paths(name, ".html"):
        fig.write_html(p, include_plotlyjs=True, full_html=True, post_script=post_script,
                       auto_play=False)
