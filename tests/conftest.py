"""Shared fixtures: throwaway notebooks, a small successful run, and the gpu/browser gates.

* ``gpu`` tests are skipped, with the reason, when CUDA is not available.
* ``browser`` tests need headless Chromium (Debian package ``chromium``) and the
  ``playwright`` package. Missing, they FAIL (always in CI, env ``CI=true``); a developer may
  pass ``--skip-browser`` to skip them instead.
* Slow tests carry markers: deselect them with ``-m "not notebook"``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium; pip install playwright"


def pytest_addoption(parser):
    parser.addoption("--skip-browser", action="store_true",
                     help="skip tests marked 'browser' when Chromium/playwright are missing "
                          "(ignored in CI, where they then fail)")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
        for item in gpu_items:
            item.add_marker(skip)


def write_notebook(path: Path, cells: list[str], title: str = "Throwaway notebook",
                   extra_parameters: str = "") -> Path:
    """A contract-following notebook: markdown title, parameters cell, then ``cells`` (code;
    a source starting with ``"md:"`` becomes a markdown cell)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell(
        "quick = True\nseed = 0\ndevice = 'auto'\ninteractive = True\nout_dir = 'outputs'"
        + extra_parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), params]
    nb.cells += [nbformat.v4.new_markdown_cell(src[3:]) if src.startswith("md:")
                 else nbformat.v4.new_code_cell(src) for src in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """Checkpoints and extracted features of one test go to a throwaway cache in ``tmp_path``
    (``DMLVIZ_CACHE_DIR``), never the user's; modules opt in with
    ``pytestmark = pytest.mark.usefixtures("private_cache")``."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DMLVIZ_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def notebook_factory():
    """``write_notebook(path, cells, title, extra_parameters)``."""
    return write_notebook


PLOTS_CELLS = [
    "import dmlviz\ndmlviz.set_output_dir(out_dir)",
    "md:Attention, low rank: $\\tilde S = F A^{+} B$, and\n\n"
    "$$\\operatorname{softmax}\\left(\\frac{QK^\\top}{\\sqrt{d}}\\right) V \\tag{1}$$",
    "dmlviz.record('plots.score', 0.5)\ndmlviz.record('plots.count', 3)\n"
    "dmlviz.record('plots.flag', True)\ndmlviz.record('plots.landmarks', landmarks)",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3))\n"
    "ax.plot([0, 1, 2, 3], [1, 3, 2, 4], marker='o')\nax.set_title('a line')\n"
    "dmlviz.save_figure(fig, 'plots_line')",
    "import plotly.graph_objects as go\n"
    "fig = go.Figure(go.Scatter(x=[1, 2, 3, 4], y=[3, 1, 2, 4], mode='lines+markers'))\n"
    "fig.update_layout(title='an interactive scatter', width=640, height=400)\n"
    "dmlviz.save_plotly(fig, 'plots_scatter')\nfig.show()",
]
PLOTS_BASELINE = {"profile": "quick", "notebooks": {"01_plots": {
    "plots.score": {"value": 0.5, "abs": 0.01, "why": "fixed number in the test notebook"},
    "plots.count": {"value": 3},
    "plots.flag": {"value": True},
    "plots.landmarks": {"at_least": 1}}}}


@pytest.fixture(scope="session")
def plots_notebooks(tmp_path_factory) -> Path:
    """A notebook directory with ``01_plots``: metrics, a matplotlib and a plotly figure."""
    d = tmp_path_factory.mktemp("plots_notebooks")
    write_notebook(d / "01_plots.ipynb", PLOTS_CELLS, "Plots and metrics",
                   "\nlandmarks = 4  # landmarks M")
    return d


@pytest.fixture(scope="session")
def ok_run(plots_notebooks, tmp_path_factory):
    """A successful ``dmlviz run`` of ``01_plots`` on CPU against a baseline it meets."""
    from dmlviz import runner

    base = tmp_path_factory.mktemp("ok_baseline") / "quick.json"
    base.write_text(json.dumps(PLOTS_BASELINE))
    root = tmp_path_factory.mktemp("ok_run")
    return runner.run(["all"], profile="quick", device="cpu", out=root / "run",
                      baseline=base, figures=root / "gallery", notebook_dir=plots_notebooks,
                      progress=False, timeout=120)


@pytest.fixture(scope="session")
def chromium(pytestconfig) -> str:
    """Path of the headless Chromium the browser tests drive (never downloads one)."""
    path = os.environ.get("DMLVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if not Path(path).exists():
        missing.append(f"Chromium ({path})")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        msg = f"{' and '.join(missing)} not installed; install with: {CHROMIUM_INSTALL}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false") or \
                not pytestconfig.getoption("--skip-browser"):
            pytest.fail(msg + " (or pass --skip-browser to skip these tests locally)")
        pytest.skip(msg)
    return path
