"""The course in JupyterLab, verified in a real browser.

For every notebook in ``notebooks/`` (discovered at collection time, so new ones are picked up):
start JupyterLab on localhost (free port, random token, throw-away HOME/config/runtime dirs;
one server per module), open a copy of the notebook with ``interactive=True, quick=True,
device="cpu"`` in headless Chromium (Debian's ``chromium`` driven by Playwright; no browser is
ever downloaded), run all cells, and check that

* no cell raised, within ``DMLVIZ_BROWSER_TIMEOUT`` seconds (default 420) per notebook;
* the ipywidgets manager is loaded and the explorers render (at least one slider per notebook);
* moving the first slider of every explorer (arrow key on its handle) redraws what the explorer
  draws into: its HTML changes and so does its element screenshot; an explorer without a slider
  gets a warning and, when it has a drop-down, that is changed instead;
* every plotly figure the notebook shows is drawn by plotly.js with its modebar (interactive).

Screenshots go to the test's ``tmp_path`` and, when ``DMLVIZ_SCREENSHOTS`` is set, are copied
there too. The kernel uses the dmlviz cache of the test process (``$DMLVIZ_CACHE_DIR``, else
``~/.cache/dmlviz``), so features and checkpoints the papermill runs cached are reused.
Marked ``browser`` (``--skip-browser`` skips it where Chromium is missing, never in CI) and
``notebook`` (slow: deselect with ``-m "not notebook"``). ``DMLVIZ_CHROMIUM`` picks another
Chromium binary (see ``conftest.chromium``).

How it drives JupyterLab (``tests/jupyterlab_driver.py``): the server runs with
``--LabApp.expose_app_in_browser`` so the page has ``window.jupyterapp``; "run all" is the
command ``notebook:run-all-cells``, whose promise resolves when the last cell has finished
(false when a cell raised or the kernel died); then the kernel's status must be ``idle``.
Errors are read from the cell models (cell index, execution count, traceback tail). A failure
message names the notebook and the step, adds the browser console and the JupyterLab log tail,
and a screenshot of the page. The last four tests check the checker itself on tiny notebooks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
from jupyterlab_driver import (
    CHROMIUM_ARGS,
    JupyterLab,
    LabNotebook,
    prepare_notebook,
    strip_ansi,
)

from dmlviz.cache import cache_dir

pytestmark = [pytest.mark.browser, pytest.mark.notebook]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith((".", "_")))
TIMEOUT_S = float(os.environ.get("DMLVIZ_BROWSER_TIMEOUT", "420"))
REDRAW_TIMEOUT_S = 60
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """A JupyterLab server for this module's tests (after the Chromium check)."""
    base = tmp_path_factory.mktemp("jupyterlab")
    cache = os.environ.get("DMLVIZ_CACHE_DIR") or str(cache_dir())  # what papermill runs use
    with JupyterLab(base, extra_env={"DMLVIZ_CACHE_DIR": cache}) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _differs(a: Path, b: Path) -> bool:
    from PIL import Image, ImageChops

    ia, ib = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    return ia.size != ib.size or ImageChops.difference(ia, ib).getbbox() is not None


class Report:
    """Screenshots and context for failure messages of one notebook."""

    def __init__(self, name: str, lab: JupyterLab, page, tmp_path: Path):
        self.name, self.lab, self.page, self.dir = name, lab, page, tmp_path
        self.shots: list[Path] = []
        self.console: list[str] = []
        self.state: dict | None = None
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        page.on("console", lambda m: self.console.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)

    def shot(self, label: str, selector: str | None = None) -> Path:
        path = self.dir / f"{self.name}-{len(self.shots) + 1:02d}-{label}.png"
        if selector:
            loc = self.page.locator(selector).first
            loc.scroll_into_view_if_needed()
            loc.screenshot(path=str(path), animations="disabled")
        else:
            self.page.screenshot(path=str(path))
        self.shots.append(path)
        return path

    def cell_errors(self) -> str:
        lines = []
        for cell in (self.state or {}).get("cells", []):
            for err in cell["errors"]:
                tb = strip_ansi(err["traceback"]).strip().splitlines()
                lines.append(f"cell {cell['index']} (execution count {cell['count']}) raised "
                             f"{err['ename']}: {err['evalue']}\n  source: "
                             + cell["source"].replace("\n", "\n          ")
                             + "\n  traceback (tail):\n    " + "\n    ".join(tb[-15:]))
        return "\n".join(lines)

    def fail(self, what: str):
        try:
            self.shot("failure")
        except Exception as exc:  # noqa: BLE001 (the failure message matters more)
            self.console.append(f"(no failure screenshot: {exc})")
        parts = [f"{self.name} in JupyterLab: {what}"]
        if errors := self.cell_errors():
            parts.append(errors)
        if self.state:
            pending = [c["index"] for c in self.state["cells"] if c["count"] is None]
            parts.append(f"kernel {self.state['kernel']}; run-all: {self.state['run']}; "
                         f"code cells not executed: {pending}")
        if self.console:
            parts.append("browser console:\n  " + "\n  ".join(self.console[-10:]))
        parts.append(f"screenshots: {', '.join(str(s) for s in self.shots)}")
        parts.append(f"JupyterLab log ({self.lab.log_path}) tail:\n{self.lab.log_tail(30)}")
        pytest.fail("\n".join(parts), pytrace=False)

    def export(self) -> None:
        dest = os.environ.get("DMLVIZ_SCREENSHOTS")
        if dest:
            Path(dest).mkdir(parents=True, exist_ok=True)
            for s in self.shots:
                if s.exists():
                    shutil.copy2(s, Path(dest) / s.name)


def check_redraw(nb: LabNotebook, rep: Report, explorer: dict, control: str,
                 timeout_s: float = REDRAW_TIMEOUT_S) -> str:
    """Change ``control`` ("slider" or "dropdown") of ``explorer``; assert the draw area changes."""
    area = nb.draw_area_selector(explorer)
    label = f"explorer{explorer['index']}"
    before_print = nb.fingerprint(area)
    if before_print is None:
        rep.fail(f"explorer {explorer['index']} (cell {explorer['cell']}) has no draw area")
    before_png = rep.shot(f"{label}-before", area)
    if control == "slider":
        try:
            old, new = nb.move_slider(explorer)
        except Exception as exc:  # noqa: BLE001 (explained)
            rep.fail(f"an arrow key on the first slider of explorer {explorer['index']} (cell "
                     f"{explorer['cell']}) did not change its value: {exc}")
    else:
        select = nb.page.locator(nb.explorer_selector(explorer["index"])).locator(
            ".widget-dropdown select").first
        options = select.locator("option").all_inner_texts()
        old = select.input_value()
        new = next(o for o in options if o != old)
        select.select_option(label=new)
    try:
        nb.wait_changed(area, before_print, timeout_s)
        nb.wait_idle(timeout_s)
        nb.page.wait_for_timeout(500)  # let the new image decode and lay out
    except Exception:  # noqa: BLE001 (explained below)
        rep.fail(f"moving the {control} of explorer {explorer['index']} (cell "
                 f"{explorer['cell']}) from {old} to {new} did not redraw {area} within "
                 f"{timeout_s:.0f} s")
    after_png = rep.shot(f"{label}-after", area)
    rep.shot(f"{label}-after-whole", nb.explorer_selector(explorer["index"]))
    if not _differs(before_png, after_png):
        rep.fail(f"explorer {explorer['index']}: its HTML changed after the {control} moved "
                 f"({old} -> {new}) but the screenshots are identical: {before_png}, {after_png}")
    return f"{control} {old}->{new}"


def exercise(src: Path, name: str, lab: JupyterLab, browser, tmp_path: Path,
             redraw_timeout_s: float = REDRAW_TIMEOUT_S) -> dict:
    """Open a copy of ``src`` in JupyterLab, run it with ``interactive=True``, move the
    explorers' controls and check the plotly figures; ``pytest.fail`` with the story if not."""
    prepare_notebook(src, lab.root / name / f"{name}.ipynb",
                     {"quick": True, "device": "cpu", "interactive": True,
                      "out_dir": str(tmp_path / "out")})
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    rep = Report(name, lab, page, tmp_path)
    nb = LabNotebook(page, lab, f"{name}/{name}.ipynb")
    t0 = time.monotonic()
    try:
        try:
            nb.open()
        except Exception as exc:  # noqa: BLE001
            rep.fail(f"the notebook did not open with a connected idle kernel: {exc}")
        if not nb.widget_manager():
            rep.fail("the ipywidgets manager (@jupyter-widgets/jupyterlab-manager) is not "
                     "loaded: check that jupyterlab_widgets matches ipywidgets 8")
        t_open = time.monotonic() - t0
        try:
            rep.state = nb.run_all(TIMEOUT_S)
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                rep.state = nb.state()
            rep.fail(str(exc))
        t_run = time.monotonic() - t0 - t_open
        if rep.cell_errors():
            rep.fail("a cell raised while running all cells")
        if rep.state["run"]["error"] or not rep.state["run"]["ok"]:
            pending = [c["index"] for c in rep.state["cells"] if c["count"] is None]
            rep.fail(f"running all cells stopped (at cell {pending[:1]}) without an error "
                     f"output: did the kernel die or restart (out of memory?)"
                     + (f"; {rep.state['run']['error']}" if rep.state["run"]["error"] else ""))
        nb.save()  # the executed copy stays in the server's root for inspection
        rep.shot("executed")

        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        with contextlib.suppress(PlaywrightTimeout):  # widgets render after the kernel is idle
            page.wait_for_selector(".jp-OutputArea-output .noUi-handle", timeout=30_000)
        if broken := nb.broken_widgets():
            rep.fail("widgets did not render: " + "; ".join(
                f"cell {b['cell']}: {b['text']!r}" for b in broken))
        explorers = nb.explorers()
        if not explorers:
            rep.fail("no ipywidgets explorer rendered (with interactive=True)")
        if not any(e["sliders"] for e in explorers):
            rep.fail("no explorer has a slider: "
                     + "; ".join(f"cell {e['cell']}: {e['text']!r}" for e in explorers))
        moved, no_slider = [], []
        for e in explorers:
            if e["sliders"]:
                moved.append(check_redraw(nb, rep, e, "slider", redraw_timeout_s))
                continue
            no_slider.append(e["cell"])
            warnings.warn(f"{name}: the explorer in cell {e['cell']} has no slider "
                          f"({e['dropdowns']} drop-down(s))", stacklevel=2)
            if e["dropdowns"]:
                moved.append(check_redraw(nb, rep, e, "dropdown", redraw_timeout_s))

        plotly_cells = [c["index"] for c in rep.state["cells"] if PLOTLY_MIME in c["mimes"]]
        plots = page.locator(".jp-Notebook .js-plotly-plot")  # plotly.js drew these
        n_plots = plots.count()
        for i in range(n_plots):
            plots.nth(i).scroll_into_view_if_needed()
        if n_plots < len(plotly_cells):
            rep.fail(f"cells {plotly_cells} show plotly figures but only {n_plots} were drawn "
                     "(is the jupyterlab-plotly extension loaded?)")
        without = [i for i in range(n_plots) if not plots.nth(i).locator(".modebar").count()]
        if without:
            rep.fail(f"plotly figures {without} (of {n_plots}) have no modebar")
        if n_plots:
            rep.shot("plotly", ".jp-Notebook .js-plotly-plot")
        t_total = time.monotonic() - t0
        summary = {"open_s": round(t_open, 1), "run_all_s": round(t_run, 1),
                   "total_s": round(t_total, 1), "explorers": len(explorers), "moved": moved,
                   "explorers_without_slider_in_cells": no_slider, "plotly_figures": n_plots,
                   "screenshots": str(tmp_path)}
        print(f"{name}: {summary}")
        return summary
    finally:
        rep.export()
        context.close()
        lab.shutdown_kernels()


@pytest.mark.parametrize("name", NAMES)
def test_notebook_explorers_work_in_jupyterlab(name, lab, browser, tmp_path, record_property):
    summary = exercise(NOTEBOOK_DIR / f"{name}.ipynb", name, lab, browser, tmp_path)
    record_property("jupyterlab", summary)


# ------------------------------------------------------------ the checker checks (small notebooks)

EXPLORER = """import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

def explorer(redraws=True):
    out = widgets.Output()
    slider = widgets.IntSlider(value=1, min=1, max=5, description="slope")

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(3, 2))
            ax.plot(range(10), [slider.value * i for i in range(10)])
            ax.set_ylim(0, 45)
            display(fig)
            plt.close(fig)

    if redraws:
        slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])"""
PLOTLY = """import plotly.graph_objects as go
go.Figure(go.Scatter(x=[1, 2, 3, 4], y=[3, 1, 2, 4])).show()"""


def test_checker_passes_a_working_explorer_and_plotly_figure(notebook_factory, lab, browser,
                                                             tmp_path):
    src = notebook_factory(tmp_path / "ok.ipynb", [EXPLORER, PLOTLY,
                                                   "if interactive:\n    display(explorer())"])
    summary = exercise(src, "selftest_ok", lab, browser, tmp_path)
    assert summary["moved"] == ["slider slope=1->slope=2"] and summary["plotly_figures"] == 1


def test_checker_fails_an_explorer_that_does_not_redraw(notebook_factory, lab, browser,
                                                        tmp_path):
    src = notebook_factory(tmp_path / "stuck.ipynb",
                           [EXPLORER, "display(explorer(redraws=False))"])
    with pytest.raises(pytest.fail.Exception, match="did not redraw"):
        exercise(src, "selftest_stuck", lab, browser, tmp_path, redraw_timeout_s=3)


def test_checker_names_the_cell_that_raised(notebook_factory, lab, browser, tmp_path):
    src = notebook_factory(tmp_path / "bad.ipynb", ["x = 1", "x / 0", "x = 2"])
    with pytest.raises(pytest.fail.Exception) as info:
        exercise(src, "selftest_bad", lab, browser, tmp_path)
    msg = str(info.value)
    assert "selftest_bad in JupyterLab: a cell raised" in msg
    assert "cell 3 (execution count 3) raised ZeroDivisionError" in msg
    assert "code cells not executed: [4]" in msg and "JupyterLab log" in msg


def test_checker_reports_a_dead_kernel(notebook_factory, lab, browser, tmp_path):
    src = notebook_factory(tmp_path / "dies.ipynb", ["import os", "os._exit(1)", "x = 2"])
    with pytest.raises(pytest.fail.Exception, match="did the kernel die") as info:
        exercise(src, "selftest_dies", lab, browser, tmp_path)
    assert "code cells not executed: [3, 4]" in str(info.value)
