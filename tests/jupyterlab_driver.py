"""Drive a real JupyterLab in headless Chromium (used by ``tests/test_jupyterlab.py``).

* :class:`JupyterLab` starts ``jupyter lab`` on ``127.0.0.1`` at a free port, with a random
  token and a throw-away HOME, config, data, runtime, settings and workspace directory (no user
  setting, kernel spec, extension or workspace leaks in), ``window.jupyterapp`` exposed.
* :func:`prepare_notebook` copies a course notebook with its parameters overridden (the
  overrides are appended to the cell tagged ``parameters``).
* :class:`LabNotebook` opens the copy in a Playwright page, runs all cells through the
  JupyterLab command ``notebook:run-all-cells`` (its promise resolves when the last cell has
  finished), reads the errors from the cell models, finds the ipywidgets explorers, moves a
  slider with the keyboard and fingerprints the area the explorer draws into.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Requests to the local server never go through a proxy: urllib follows $http_proxy even for
# 127.0.0.1 (it would carry the server token to the proxy), Chromium gets --no-proxy-server.
LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-proxy-server",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# user settings written into the throw-away settings dir: no news / update check pop-ups
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"checkForUpdates": False, "fetchNews": "false"},
}

# env variables that would point JupyterLab or the kernel at a user's own configuration
LEAKY_ENV = ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH", "PYTHONSTARTUP",
             "IPYTHONDIR", "MPLCONFIGDIR", "MPLBACKEND", "PLOTLY_RENDERER", "JUPYTER_TOKEN",
             "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR",
             "DMLVIZ_FIGURES_DIR", "DMLVIZ_OUT_DIR")  # never write into the repo's figures/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_notebook(src: Path, dest: Path, overrides: dict) -> Path:
    """Copy ``src`` to ``dest`` with ``overrides`` appended to its ``parameters`` cell."""
    nb = nbformat.read(src, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{src.name}: expected exactly one cell tagged 'parameters', "
                         f"found {len(cells)}")
    lines = "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    cells[0].source = cells[0].source.rstrip() + "\n# --- set by tests/test_jupyterlab.py\n" + lines
    for cell in nb.cells:  # stored without outputs, but be sure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


class JupyterLab:
    """``jupyter lab`` in a sandbox under ``base``; serves ``base / "root"``."""

    def __init__(self, base: Path, extra_env: dict | None = None, startup_timeout: float = 90):
        self.base = Path(base)
        self.root = self.base / "root"
        self.log_path = self.base / "jupyterlab.log"
        self.token = secrets.token_hex(16)
        self.extra_env = extra_env or {}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def _env(self) -> dict:
        dirs = {name: self.base / name for name in
                ("home", "config", "data", "runtime", "ipython", "cache")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        settings = dirs["config"] / "lab" / "user-settings"
        for rel, value in LAB_SETTINGS.items():
            p = settings / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
        env.update({
            "HOME": str(dirs["home"]),
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["config"] / "lab" / "workspaces"),
            "IPYTHONDIR": str(dirs["ipython"]),
            "XDG_CACHE_HOME": str(dirs["cache"]),
            "JUPYTER_PLATFORM_DIRS": "0",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({k: str(v) for k, v in self.extra_env.items()})
        return env

    def start(self) -> JupyterLab:
        self.root.mkdir(parents=True, exist_ok=True)
        env = self._env()
        last = ""
        for _attempt in range(3):  # a free port may be taken between probe and bind
            self.port = free_port()
            cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", "--port-retries=0",
                   f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}",
                   "--LabApp.expose_app_in_browser=True",
                   "--LabApp.news_url=", "--ServerApp.terminals_enabled=False"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
                cmd.append("--allow-root")
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.api("GET", "status")
                    return self
                except OSError as exc:
                    last = str(exc)
                    time.sleep(0.5)
            self.stop()
        raise RuntimeError(f"JupyterLab did not start ({last}); log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(AttributeError, OSError):
            self._log.close()

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}&reset"

    def api(self, method: str, path: str, timeout: float = 10):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with LOOPBACK_OPENER.open(req, timeout=timeout) as r:  # no proxy for 127.0.0.1
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Delete every session (and its kernel): frees the CPU for the next notebook."""
        with contextlib.suppress(OSError, ValueError):
            for s in self.api("GET", "sessions"):
                with contextlib.suppress(OSError):
                    self.api("DELETE", f"sessions/{s['id']}", timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no JupyterLab log)"
        return "\n".join(text.splitlines()[-lines:]).replace(self.token, "<token>")


# JavaScript run in the page; ``panel(path)`` finds the notebook panel of a document.
JS_PANEL = """
const panel = (path) => {
  const app = window.jupyterapp;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
};
"""

JS_READY = JS_PANEL + """
(path) => {
  const p = panel(path);
  if (!p || !p.context.isReady || !p.sessionContext.isReady) return false;
  const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}
"""

JS_RUN_ALL = JS_PANEL + """
(path) => {
  const app = window.jupyterapp;
  const p = panel(path);
  app.shell.activateById(p.id);
  window.__dmlviz = {done: false, ok: null, error: null, t0: performance.now()};
  app.commands.execute('notebook:run-all-cells').then(
    (ok) => { window.__dmlviz.done = true; window.__dmlviz.ok = ok; },
    (err) => { window.__dmlviz.done = true; window.__dmlviz.error = String(err); });
  return true;
}
"""

JS_STATE = JS_PANEL + """
(path) => {
  const p = panel(path);
  const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
  const cells = [];
  p.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    const outs = cell.model.outputs.toJSON();
    cells.push({index: i, count: cell.model.executionCount,
                source: cell.model.sharedModel.getSource().slice(0, 300),
                errors: outs.filter(o => o.output_type === 'error')
                            .map(o => ({ename: o.ename, evalue: o.evalue,
                                        traceback: (o.traceback || []).join('\\n')})),
                mimes: outs.flatMap(o => Object.keys(o.data || {}))});
  });
  return {kernel: kernel ? kernel.status : 'none', run: window.__dmlviz || null, cells};
}
"""

# widget outputs that did not render (ipywidgets' own placeholder texts)
JS_BROKEN_WIDGETS = """
() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
  .filter(o => /Error displaying widget|Loading widget\\.\\.\\./.test(o.innerText))
  .map(o => {
    const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
    return {cell: cells.indexOf(o.closest('.jp-Cell')), text: o.innerText.slice(0, 200)};
  })
"""

JS_KERNEL_STATUS = JS_PANEL + """
(path) => {
  const p = panel(path);
  const kernel = p && p.sessionContext.session && p.sessionContext.session.kernel;
  return kernel ? kernel.status : 'none';
}
"""

JS_KERNEL_IDLE = JS_PANEL + """
(path) => {
  const p = panel(path);
  const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}
"""

# the explorers: each top-level jupyter-widget view in an output area, with its sliders and
# the area it draws into (an ipywidgets Output, else a plotly figure, else images/canvases)
JS_EXPLORERS = """
() => {
  // top-level outputs holding an interactive widget (tqdm progress bars are not explorers)
  const controls = '.noUi-handle, .widget-dropdown, .widget-output, .js-plotly-plot, ' +
                   '.widget-button, .widget-checkbox, .widget-toggle-buttons, .widget-text';
  const roots = [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(o => !o.parentElement.closest('.jp-OutputArea-output'))
    .filter(o => o.querySelector('.jupyter-widgets') && o.querySelector(controls));
  return roots.map((o, i) => {
    o.setAttribute('data-dmlviz-explorer', String(i));
    const cell = o.closest('.jp-Cell');
    const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
    return {index: i, cell: cells.indexOf(cell),
            sliders: o.querySelectorAll('.noUi-handle').length,
            dropdowns: o.querySelectorAll('.widget-dropdown select').length,
            outputs: o.querySelectorAll('.widget-output').length,
            plotly: o.querySelectorAll('.js-plotly-plot').length,
            text: o.innerText.slice(0, 200)};
  });
}
"""

JS_FP = """
const fingerprint = (sel) => {
  const el = document.querySelector(sel);
  if (!el) return null;
  const s = el.innerHTML;
  let h = 5381;
  for (let i = 0; i < s.length; i++) h = ((h * 33) ^ s.charCodeAt(i)) >>> 0;
  return h + ':' + s.length;
};
"""
JS_FINGERPRINT = JS_FP + "(sel) => fingerprint(sel)"
JS_CHANGED = JS_FP + """
([sel, old]) => { const fp = fingerprint(sel); return fp !== null && fp !== old; }
"""


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class LabNotebook:
    """One notebook opened in JupyterLab in a Playwright ``page``."""

    def __init__(self, page, lab: JupyterLab, path: str):
        self.page, self.lab, self.path = page, lab, path

    def open(self, timeout_s: float = 120) -> None:
        self.page.goto(self.lab.lab_url(self.path), wait_until="domcontentloaded",
                       timeout=timeout_s * 1000)
        self.page.wait_for_function("() => !!window.jupyterapp", timeout=timeout_s * 1000)
        self.page.wait_for_function(JS_READY, arg=self.path, timeout=timeout_s * 1000,
                                    polling=500)

    def widget_manager(self) -> bool:
        """Whether the ipywidgets JupyterLab extension is loaded in this page."""
        return self.page.evaluate(
            "() => window.jupyterapp.hasPlugin('@jupyter-widgets/jupyterlab-manager:plugin')")

    def run_all(self, timeout_s: float) -> dict:
        """Run every cell; returns :data:`JS_STATE` once done (or raises ``TimeoutError``)."""
        self.page.evaluate(JS_RUN_ALL, self.path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.page.evaluate("() => window.__dmlviz.done"):
                self.wait_idle(max(5.0, deadline - time.monotonic()))
                return self.state()
            status = self.page.evaluate(JS_KERNEL_STATUS, self.path)
            if status in ("dead", "autorestarting", "restarting"):
                raise TimeoutError(f"the kernel died while running all cells ({status}): "
                                   "out of memory?")
            self.page.wait_for_timeout(1000)
        raise TimeoutError(f"run-all did not finish in {timeout_s:.0f} s "
                           "(DMLVIZ_BROWSER_TIMEOUT)")

    def wait_idle(self, timeout_s: float = 60) -> None:
        self.page.wait_for_function(JS_KERNEL_IDLE, arg=self.path, timeout=timeout_s * 1000,
                                    polling=250)

    def state(self) -> dict:
        return self.page.evaluate(JS_STATE, self.path)

    def broken_widgets(self, timeout_s: float = 30) -> list[dict]:
        """Widget outputs still showing "Loading widget..." or "Error displaying widget"
        after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            broken = self.page.evaluate(JS_BROKEN_WIDGETS)
            if not broken or time.monotonic() > deadline:
                return broken
            self.page.wait_for_timeout(500)

    def save(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")

    def explorers(self) -> list[dict]:
        return self.page.evaluate(JS_EXPLORERS)

    @staticmethod
    def explorer_selector(index: int) -> str:
        return f'[data-dmlviz-explorer="{index}"]'

    def draw_area_selector(self, explorer: dict) -> str:
        """The element an explorer draws into."""
        root = self.explorer_selector(explorer["index"])
        if explorer["outputs"]:
            return f"{root} .widget-output"
        if explorer["plotly"]:
            return f"{root} .js-plotly-plot"
        return root

    def fingerprint(self, selector: str) -> str | None:
        """A hash of the element's HTML (image data, SVG…); None when it is missing."""
        return self.page.evaluate(JS_FINGERPRINT, selector)

    def wait_changed(self, selector: str, old: str, timeout_s: float) -> None:
        self.page.wait_for_function(JS_CHANGED, arg=[selector, old],
                                    timeout=timeout_s * 1000, polling=250)

    def move_slider(self, explorer: dict, which: int = 0) -> tuple[str, str]:
        """Press an arrow key on a slider handle of ``explorer`` (Right, or Left at its
        maximum); returns the slider's shown value (its readout) before and after."""
        handle = self.page.locator(self.explorer_selector(explorer["index"])) \
            .locator(".noUi-handle").nth(which)
        handle.scroll_into_view_if_needed()
        before = handle.get_attribute("aria-valuenow")
        key = "ArrowLeft" if before == handle.get_attribute("aria-valuemax") else "ArrowRight"
        shown = ("el => { const s = el.closest('.widget-slider, .widget-hslider');"
                 " const r = s && s.querySelector('.widget-readout');"
                 " return (s && s.querySelector('.widget-label') ? "
                 "s.querySelector('.widget-label').innerText + '=' : '') +"
                 " (r ? r.innerText : el.getAttribute('aria-valuenow')); }")
        shown_before = handle.evaluate(shown)
        handle.focus()
        handle.press(key)
        self.page.wait_for_function(
            "([el, v]) => el.getAttribute('aria-valuenow') !== v",
            arg=[handle.element_handle(), before], timeout=10_000)
        return shown_before, handle.evaluate(shown)
