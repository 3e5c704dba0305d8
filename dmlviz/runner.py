"""The papermill runner behind ``dmlviz run``: execute notebooks, collect metrics, write a report.

Each selected notebook runs with papermill (kernel ``python3``) as one Dask task
(:mod:`dmlviz.executor`, the execution path ``dmlviz sweep`` shares): on a local cluster of
``jobs`` worker processes, or on an existing cluster (``scheduler``), with the contract
parameters injected: ``quick`` from the profile
(``quick`` → True, ``full`` → False), ``device``, ``interactive=False`` and
``out_dir=DIR/<stem>``, plus any ``-p NAME VALUE`` the notebook declares. The kernel runs in
the notebook's own directory, with ``PLOTLY_RENDERER=plotly_mimetype+notebook`` (so the
executed notebook carries plotly.js once and its HTML export renders offline),
``DMLVIZ_FIGURES_DIR`` when ``figures`` is given, and ``OMP_NUM_THREADS`` = cores / jobs
unless already set (or the workers are on an existing cluster).

A run directory ``DIR`` (default ``reports/<YYYYmmdd-HHMMSS>/``, and ``reports/latest`` then
points to it) holds::

    summary.json  summary.md  index.html
    <stem>/<stem>.ipynb     executed notebook; the partial copy when it failed or timed out
    <stem>/<stem>.html      standalone HTML export (no CDN links; plotly.js embedded)
    <stem>/metrics.json     what the notebook recorded with dmlviz.record (kept on failure)
    <stem>/claims.json      the paper claims it evaluated with dmlviz.claims (kept on failure)
    <stem>/figures/         what it saved with dmlviz.save_figure / save_plotly
    <stem>/run.log          papermill, kernel and cell output log of that notebook

``summary.json`` (schema version 1; paths are relative to ``DIR``)::

    {
      "schema": 1,
      "profile": "quick" | "full",
      "device": "auto" | "cpu" | "cuda",          # as requested
      "device_resolved": "cpu" | "cuda",
      "started": "2026-01-31T12:00:00+00:00",     # ISO 8601, UTC
      "finished": "...", "duration_s": 71.3,
      "ok": true,                                 # every notebook ok and no regression
      "baseline": "tests/baselines/quick.json" | null,
      "jobs": 2, "timeout_s": 600,                # timeout_s: limit for any single cell
      "scheduler": null | "tcp://host:8786",      # null: a local Dask cluster of `jobs` workers
      "parameters": {"NAME": value},              # the -p overrides
      "environment": {"python", "platform", "cpu_count", "dmlviz", "git_commit"},
      "notebooks": {
        "<stem>": {
          "status": "ok" | "failed" | "timeout" | "kernel_died" | "worker_died",
          "duration_s": 42.0,
          "error": null | {"cell": i | null, "exec_count": n | null, "ename": "...",
                           "evalue": "..."},
          "metrics": {"name": value},
          "regressions": [{"metric", "value", "baseline", "tolerance", "reason"}],
          "title": "...", "parameters": {...injected...},
          "executed": "<stem>/<stem>.ipynb", "html": "<stem>/<stem>.html" | null,
          "log": "<stem>/run.log", "figures": ["<stem>/figures/x.png", ...],
          "worker": "tcp://127.0.0.1:40123"        # the Dask worker that ran it
        }
      }
    }

``status`` comes from the exception execution raised, never from notebook metadata:
``PapermillExecutionError`` → ``failed``, nbclient's ``CellTimeoutError`` → ``timeout``,
``DeadKernelError`` → ``kernel_died``; any other error (kernel missing, unreadable
notebook) → ``failed`` with ``cell: null``. ``error.cell`` is the 0-based index of the cell
execution stopped in, counted in the *stored* notebook (``notebooks/<stem>.ipynb``);
``error.exec_count`` is its ``In [n]`` label in the executed copy and its HTML. The executed
copy of a timed-out or dead-kernel run gets a banner cell and the error as the stopped
cell's output (papermill itself saves it without any error flag). ``worker_died``: the Dask
worker process running it died twice (it is retried once on another worker, see
:mod:`dmlviz.executor`).
Baselines and what counts as a regression are in :mod:`dmlviz.baseline`; ``summary.md``
and ``index.html`` in :mod:`dmlviz.report`; the offline HTML export in :mod:`dmlviz.export`.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dmlviz  # dmlviz.get_device imports torch on first use (PEP 562): the CLI stays light
from dmlviz import executor, report
from dmlviz.baseline import baseline_entries, find_regressions, load_baseline
from dmlviz.export import copy_mathjax, export_html
from dmlviz.ledger import ledger
from dmlviz.outputs import CLAIMS_FILE

PROFILES = ("quick", "full")
DEVICES = ("auto", "cpu", "cuda")
STATUSES = ("ok", "failed", "timeout", "kernel_died", "worker_died")
CONTRACT = ("quick", "seed", "device", "interactive", "out_dir")
SET_BY_RUNNER = {"quick": "--profile", "device": "--device", "interactive": "the runner (False)",
                 "out_dir": "--out"}
DEFAULT_TIMEOUT = {"quick": 600, "full": 3600}
KERNEL = "python3"


# --------------------------------------------------------------------------- discovery

@dataclass
class NotebookInfo:
    """A notebook of the sequence: ``name`` is the file stem, e.g. ``00_quickstart``."""

    name: str
    path: Path
    title: str = ""
    parameters: dict[str, dict] = field(default_factory=dict)


def project_root() -> Path:
    """The current directory when it has ``notebooks/``, else the checkout dmlviz lives in."""
    cwd = Path.cwd()
    return cwd if (cwd / "notebooks").is_dir() else Path(__file__).resolve().parent.parent


def default_notebook_dir() -> Path:
    """``notebooks/`` of :func:`project_root`."""
    return project_root() / "notebooks"


def default_baseline(profile: str) -> Path:
    """``tests/baselines/<profile>.json`` of :func:`project_root`."""
    return project_root() / "tests" / "baselines" / f"{profile}.json"


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            return ""
    return ""


def discover(notebook_dir: str | os.PathLike | None = None) -> list[NotebookInfo]:
    """The notebooks of a directory in name order, with title and parameters.

    Args:
        notebook_dir: default :func:`default_notebook_dir`.

    Returns:
        One :class:`NotebookInfo` per ``*.ipynb`` (hidden and ``_``-prefixed files skipped);
        parameters as papermill's ``inspect_notebook`` reads them (name → default, type, help).
    """
    import nbformat
    import papermill

    notebook_dir = Path(notebook_dir or default_notebook_dir()).resolve()
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook directory {str(notebook_dir)!r} does not exist")
    infos = []
    for path in sorted(notebook_dir.glob("*.ipynb")):
        if path.name.startswith((".", "_")):
            continue
        nb = nbformat.read(path, as_version=4)
        params = papermill.inspect_notebook(str(path))
        infos.append(NotebookInfo(path.stem, path, _title(nb), {
            k: {"default": v.get("default"), "type": v.get("inferred_type_name"),
                "help": v.get("help", "")} for k, v in params.items()}))
    return infos


def select(names: list[str] | tuple[str, ...], notebooks: list[NotebookInfo]) -> list[NotebookInfo]:
    """Pick notebooks by name: ``all``, a stem (``00_quickstart``), a file name, its number
    (``00``) or the part after the number (``quickstart``).

    Raises:
        ValueError: a name matches no notebook (the message lists the available ones).
    """
    if not names or list(names) == ["all"]:
        return list(notebooks)
    chosen: list[NotebookInfo] = []
    for raw in names:
        key = Path(raw).stem if raw.endswith(".ipynb") else raw
        hits = [nb for nb in notebooks if key in (nb.name, nb.name.split("_", 1)[0],
                                                  nb.name.split("_", 1)[-1])]
        if len(hits) != 1:
            avail = ", ".join(nb.name for nb in notebooks) or "none"
            what = "matches no notebook" if not hits else "is ambiguous"
            raise ValueError(f"notebook {raw!r} {what}; available: {avail} (or 'all')")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return sorted(chosen, key=lambda nb: nb.name)


def _tuples_as_lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_tuples_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _tuples_as_lists(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal (``8``, ``0.5``, ``True``, ``None``, ``[1, 2]``,
    ``'x'``) or else the text itself as a string. Tuples become lists: papermill injects a
    tuple as its string form, a list as a list."""
    try:
        return _tuples_as_lists(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


def check_overrides(overrides: dict[str, Any], notebooks: list[NotebookInfo]) -> None:
    """Refuse ``-p`` names no selected notebook declares, or that the runner sets itself.

    Raises:
        ValueError: naming the parameter and listing the allowed names.
    """
    declared = sorted({p for nb in notebooks for p in nb.parameters} - set(SET_BY_RUNNER))
    for name in overrides:
        if name in SET_BY_RUNNER:
            raise ValueError(f"-p {name} is set by {SET_BY_RUNNER[name]}; don't pass it with -p")
        if not any(name in nb.parameters for nb in notebooks):
            raise ValueError(f"unknown parameter -p {name}: no selected notebook declares it; "
                             f"allowed: {', '.join(declared) or 'none'}")


# --------------------------------------------------------------------------- one notebook

_NOT_SOURCE = {"injected-parameters", "papermill-error-cell-tag", "dmlviz-stopped"}


def _locate(executed: Path, failed: bool) -> tuple[int | None, int | None, int | None]:
    """Where execution stopped, read from the saved executed copy.

    Returns:
        ``(index in the executed copy, index in the stored notebook, execution count)``; the
        cell is the one papermill marked failed, else the last one it started.
    """
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return None, None, None
    pm = [c.metadata.get("papermill", {}) for c in nb.cells]
    hits = [i for i, m in enumerate(pm) if m.get("status") == "failed" or m.get("exception")] \
        if failed else []
    hits = hits or [i for i, m in enumerate(pm) if m.get("start_time")]
    if not hits:
        return None, None, None
    i = hits[-1]
    source = sum(1 for c in nb.cells[:i] if not _NOT_SOURCE & set(c.metadata.get("tags", [])))
    return i, source, nb.cells[i].get("execution_count")


def _mark_stopped(executed: Path, index: int | None, status: str, error: dict) -> None:
    """Make a timed-out / dead-kernel executed copy say so (papermill leaves no flag)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    if index is not None and nb.cells[index].cell_type == "code":
        nb.cells[index].outputs.append(nbformat.v4.new_output(
            "error", ename=error["ename"], evalue=error["evalue"],
            traceback=[f"{error['ename']}: {error['evalue']} (dmlviz run)"]))
        nb.cells[index].metadata.setdefault("papermill", {})["status"] = "failed"
    label = f"In [{error['exec_count']}]" if error.get("exec_count") else f"cell {error['cell']}"
    banner = nbformat.v4.new_markdown_cell(
        f'<span style="color:#b42318;font-size:1.6em">dmlviz run: {status.replace("_", " ")} '
        f"at {label}: {error['ename']}: {error['evalue']}</span>")
    banner.metadata["tags"] = ["dmlviz-stopped"]
    nb.cells.insert(0, banner)
    nb.metadata["dmlviz"] = {"status": status, "error": error}
    nbformat.write(nb, executed)


def execute_one(job: dict) -> dict:
    """Execute one notebook (runs inside a worker process; its stdout/stderr go to run.log).

    Args:
        job: ``{"name", "path", "out_dir", "parameters", "timeout", "env"}``.

    Returns:
        ``{"status", "duration_s", "error", "metrics", "executed", "html", "log", "figures"}``
        with absolute paths.
    """
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "run.log"
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - open for the worker's whole life
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    logging.basicConfig(stream=log, level=logging.INFO, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.update(job["env"])

    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    executed = out / f"{job['name']}.ipynb"
    status, error, in_cell = "ok", None, True
    t0 = time.monotonic()
    try:
        papermill.execute_notebook(
            job["path"], str(executed), parameters=job["parameters"], kernel_name=KERNEL,
            execution_timeout=job["timeout"], cwd=str(Path(job["path"]).parent),
            progress_bar=False, log_output=True, request_save_on_cell_execute=True)
    except papermill.PapermillExecutionError as e:
        status, ename, evalue = "failed", e.ename, e.evalue
    except CellTimeoutError:
        status, ename = "timeout", "CellTimeoutError"
        evalue = f"the cell ran longer than the {job['timeout']:g} s cell timeout"
    except DeadKernelError as e:
        status, ename = "kernel_died", "DeadKernelError"
        evalue = f"{e or 'the kernel died'} (out of memory, a crash, or os._exit)"
    except Exception as e:  # kernel missing, unreadable notebook, ...
        status, ename, evalue, in_cell = "failed", type(e).__name__, str(e), False
        logging.exception("execution failed outside a cell")
    duration = time.monotonic() - t0
    if status != "ok":
        index, source, count = None, None, None
        if in_cell and executed.exists():
            index, source, count = _locate(executed, failed=status == "failed")
        error = {"cell": source, "exec_count": count, "ename": ename, "evalue": evalue}
        if status in ("timeout", "kernel_died") and executed.exists():
            try:
                _mark_stopped(executed, index, status, error)
            except Exception:
                logging.exception("could not annotate %s", executed)
    html_path = out / f"{job['name']}.html"
    try:
        export_html(executed, html_path, job.get("mathjax"))
    except Exception:
        logging.exception("HTML export of %s failed", executed)
        html_path = None
    metrics: dict = {}
    mpath = out / "metrics.json"
    if mpath.exists():
        try:
            metrics = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            logging.exception("unreadable %s", mpath)
    claims, claims_cell = _read_claims(out, executed)
    figures = sorted(str(p) for p in (out / "figures").glob("*")
                     if p.suffix in (".png", ".svg", ".jpg", ".html"))
    return {"status": status, "duration_s": round(duration, 2), "error": error, "metrics": metrics,
            "executed": str(executed) if executed.exists() else None,
            "html": str(html_path) if html_path else None, "log": str(log_path),
            "figures": figures, "claims": claims, "claims_cell": claims_cell}


def _read_claims(out: Path, executed: Path) -> tuple[list[dict], str | None]:
    """The claims a notebook recorded (``claims.json``, kept on failure) and the id of the
    cell that shows its claims table (the last cell calling ``claims.table``), for links."""
    claims: list[dict] = []
    path = out / CLAIMS_FILE
    if path.exists():
        try:
            claims = json.loads(path.read_text())
        except json.JSONDecodeError:
            logging.exception("unreadable %s", path)
    cell_id = None
    if executed.exists():
        import nbformat

        try:
            nb = nbformat.read(executed, as_version=4)
            ids = [c.get("id") for c in nb.cells if c.cell_type == "code"
                   and "claims.table(" in c.source]
            cell_id = ids[-1] if ids else None
        except (OSError, ValueError):
            logging.exception("unreadable %s", executed)
    return claims, cell_id


# --------------------------------------------------------------------------- a run

@dataclass
class RunResult:
    """What :func:`run` did: the summary dict (as written), where, and the exit code."""

    summary: dict
    out_dir: Path

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def resolve_device(device: str = "auto") -> str:
    """``"cpu"`` or ``"cuda"``: ``device`` (one of :data:`DEVICES`) resolved by
    :func:`dmlviz.utils.get_device` (torch is imported here, on first use, not with the CLI)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return dmlviz.get_device(device).type


def _point_latest(out: Path) -> None:
    """``reports/latest`` → the newest default run directory (a relative symlink, replaced
    atomically), so the README's gallery can link into ``reports/latest/book/``. Where links
    cannot be made (some file systems), the run goes on without one."""
    latest, tmp = out.parent / "latest", out.parent / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(out.name, target_is_directory=True)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)


def _git_commit(root: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _clean(out: Path, name: str) -> None:
    """Remove what an earlier run left for this notebook (only files the runner writes)."""
    for f in (f"{name}.ipynb", f"{name}.html", "metrics.json", "run.log"):
        (out / f).unlink(missing_ok=True)
    for f in (out / "figures").glob("*"):
        if f.is_file():
            f.unlink()


def run(notebooks: list[str] | tuple[str, ...] = ("all",), *, profile: str = "quick",
        device: str = "auto", parameters: dict[str, Any] | None = None,
        out: str | os.PathLike | None = None, jobs: int = 1, timeout: float | None = None,
        baseline: str | os.PathLike | None = "default", figures: str | os.PathLike | None = None,
        notebook_dir: str | os.PathLike | None = None, progress: bool = True,
        scheduler: str | None = None, book: bool = False) -> RunResult:
    """Execute notebooks, compare their metrics with a baseline and write the report.

    Everything is validated before anything runs: profile, device (``cuda`` without CUDA
    is refused), notebook names, ``-p`` names, the baseline file.

    Args:
        notebooks: names for :func:`select`; ``("all",)`` for every notebook.
        profile: ``quick`` (CI) or ``full`` (course).
        device: ``auto``, ``cpu`` or ``cuda`` — injected as the ``device`` parameter.
        parameters: ``-p`` overrides, passed to the notebooks that declare them.
        out: run directory; default ``reports/<YYYYmmdd-HHMMSS>`` under the project root.
        jobs: worker processes of the local Dask cluster (notebooks executed at once).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``) to run the
            notebooks on instead; ``jobs`` is then ignored.
        timeout: seconds any single cell may run; default 600 (quick) / 3600 (full).
        baseline: a baseline file; ``"default"`` = ``tests/baselines/<profile>.json`` when
            it exists; ``None`` = no comparison.
        figures: also copy exported figures here (``DMLVIZ_FIGURES_DIR``).
        notebook_dir: where the notebooks are; default :func:`default_notebook_dir`.
        progress: show a progress bar over notebooks (stderr).
        book: also write the course book (:func:`dmlviz.book.build_book`) into ``out/book``;
            the report's index links to it.

    Returns:
        A :class:`RunResult`; ``exit_code`` is 0 only when all succeeded and nothing regressed.

    Raises:
        ValueError, FileNotFoundError: bad arguments, found before any notebook runs.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    timeout = DEFAULT_TIMEOUT[profile] if timeout is None else timeout
    from dmlviz.run_checks import check_timeout

    check_timeout(timeout, "timeout")  # finite and > 0: NaN, inf, 0 are refused
    timeout = int(-(-timeout // 1))  # nbclient takes whole seconds: 2.5 → 3
    available = discover(notebook_dir)
    chosen = select([notebooks] if isinstance(notebooks, str) else list(notebooks), available)
    if not chosen:
        raise ValueError(f"no notebooks to run in {notebook_dir or default_notebook_dir()}")
    parameters = dict(parameters or {})
    check_overrides(parameters, chosen)
    if baseline == "default":
        default = default_baseline(profile)
        baseline = default if default.exists() else None
    base = load_baseline(baseline, profile) if baseline is not None else None
    resolved = resolve_device(device)

    root = project_root()
    started = _dt.datetime.now(_dt.UTC)
    default_out = out is None
    out = Path(out) if out else root / "reports" / started.astimezone().strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if default_out:
        _point_latest(out)
    env = {"PLOTLY_RENDERER": "plotly_mimetype+notebook", "DMLVIZ_OUT_DIR": "",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "JUPYTER_PLATFORM_DIRS": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "TQDM_MININTERVAL": "5"}
    if figures:
        env["DMLVIZ_FIGURES_DIR"] = str(Path(figures).resolve())
    if "OMP_NUM_THREADS" not in os.environ and scheduler is None:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    mathjax = copy_mathjax(out)
    job_list = []
    for nb in chosen:
        nb_out = out / nb.name
        _clean(nb_out, nb.name)
        injected = {"quick": profile == "quick", "device": device, "interactive": False,
                    "out_dir": str(nb_out)}
        injected.update({k: v for k, v in parameters.items() if k in nb.parameters})
        job_list.append({"key": nb.name, "name": nb.name, "path": str(nb.path),
                         "out_dir": str(nb_out),
                         "parameters": injected, "timeout": timeout,
                         "mathjax": f"../{mathjax}" if mathjax else None,
                         "env": {**env, "DMLVIZ_OUT_DIR": str(nb_out)}})

    results = executor.execute(job_list, scheduler=scheduler, workers=jobs, progress=progress)

    rel = lambda p: Path(p).relative_to(out).as_posix() if p else None  # noqa: E731
    nbs = {}
    for nb, job in zip(chosen, job_list, strict=True):
        r = results[nb.name]
        entries = baseline_entries(base, nb.name)
        nbs[nb.name] = {
            "status": r["status"], "duration_s": r["duration_s"], "error": r["error"],
            "metrics": r["metrics"], "regressions": find_regressions(r["metrics"], entries),
            "title": nb.title, "parameters": job["parameters"],
            "executed": rel(r["executed"]), "html": rel(r["html"]), "log": rel(r["log"]),
            "figures": [rel(f) for f in r["figures"]], "worker": r.get("worker"),
            "claims": r.get("claims", []), "claims_cell": r.get("claims_cell")}
    finished = _dt.datetime.now(_dt.UTC)
    ok = all(v["status"] == "ok" and not v["regressions"] for v in nbs.values())
    try:
        base_name = str(Path(baseline).resolve().relative_to(root)) if baseline else None
    except ValueError:
        base_name = str(baseline)
    from dmlviz import __version__

    summary = {
        "schema": 1, "profile": profile, "device": device, "device_resolved": resolved,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 2), "ok": ok,
        "baseline": base_name, "jobs": jobs, "scheduler": scheduler, "timeout_s": timeout,
        "parameters": parameters,
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpu_count": os.cpu_count(), "dmlviz": __version__,
                        "git_commit": _git_commit(root)},
        "notebooks": nbs}
    write_report(summary, out, base)
    if book:
        from dmlviz.book import build_book  # book reads the summary.json just written

        summary["book"] = build_book(out).relative_to(out).as_posix()
        write_report(summary, out, base)
    return RunResult(summary, out)


def write_report(summary: dict, out: Path, baseline: dict | None = None) -> None:
    """Write ``summary.json``, ``claims.json`` (the run's claims ledger), ``summary.md`` and
    ``index.html`` into ``out``."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out / CLAIMS_FILE).write_text(json.dumps(ledger(summary), indent=2,
                                              ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(report.summary_markdown(summary, baseline))
    (out / "index.html").write_text(report.render_index(summary, baseline), encoding="utf-8")
