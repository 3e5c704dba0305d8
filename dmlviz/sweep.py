"""``dmlviz sweep SPEC.toml``: a notebook over a parameter grid × seeds, on Dask distributed.

A **spec** (TOML; the paper tables are ready in ``sweeps/``) names a notebook, a profile, the
seeds and the grid::

    notebook = "06_neighbor_refinement"   # a name `dmlviz list` shows, or a path to an .ipynb
    profile = "quick"                     # quick | full
    seeds = [0, 10]                       # one execution per grid point and seed
    device = "auto"                       # optional: auto | cpu | cuda (--device overrides)
    timeout = 900                         # optional: limit for any single cell, seconds
    metrics = ["refine.recall@1.*"]       # optional: which recorded metrics the page tabulates
                                          # (fnmatch patterns; default every numeric metric)
    title = "Refinement: K × T"           # optional, for the page

    [parameters]                          # optional: fixed for every point
    refiner_epochs = 4

    [grid]                                # every combination (a product of the lists)
    k = [2, 4, 8]
    num_blocks = [1, 2, 4]

    [zip]                                 # optional: lists of one length taken together,
    per_class = [10, 20]                  # one axis of the grid (i-th value with i-th value)
    epochs = [20, 10]

Each grid point × seed is one papermill execution of the notebook (``seed`` and the point's
values injected as parameters, plus ``quick``/``device``/``interactive``/``out_dir`` as
``dmlviz run`` injects them) and one Dask task (:mod:`dmlviz.executor`; the same path
``dmlviz run`` takes): on a local cluster of ``--workers N`` processes, or on an existing
cluster with ``--scheduler tcp://host:8786``.

The spec is checked before anything runs; a bad one raises :class:`SpecError` (``dmlviz
sweep`` exits 2) naming the field: an unknown notebook, a parameter the notebook does not
declare (or one the sweep sets itself), an empty grid or axis, a value of the wrong type
(compared with the notebook's default: an ``int`` knob takes integers, a ``float`` knob
numbers, a tuple knob lists, …), zipped lists of different lengths, a repeated value.

A sweep directory ``DIR`` (default ``reports/sweeps/<spec>-<YYYYmmdd-HHMMSS>/``) holds::

    sweep.json           every point: grid values, seed, status, metrics, duration, worker, ...
    sweep.html           the sweep page: per swept metric a table and a plot of the mean and
                         95 % interval over seeds against the parameter; the claims the runs
                         recorded (dmlviz.claims), per point and pooled over its seeds
    sweep_figures/       the page's plots (PNG)
    summary.json, summary.md, index.html, claims.json
                         the report index of every execution, as `dmlviz run` writes it
                         (it links the sweep page)
    <point-id>/          one run directory per execution (executed notebook, HTML, metrics.json,
                         claims.json, figures/, run.log); <point-id> is e.g. ``k=4-num_blocks=2-s10``

``sweep.json`` (schema 1) is rewritten as each execution finishes, so an interrupted sweep
(Ctrl-C, a crash of the client) keeps every finished point::

    {"schema": 1, "spec_file", "spec", "notebook", "title", "profile", "device",
     "device_resolved", "seeds", "axes": [["k"], ["num_blocks"]], "commit",
     "workers", "scheduler", "started", "finished", "duration_s", "interrupted",
     "environment": {...}, "counts": {"ok": 8, "failed": 0, ...},
     "points": [{"id", "point": {"k": 4, "num_blocks": 2}, "seed", "parameters": {...injected},
                 "status": "ok" | "failed" | "timeout" | "kernel_died" | "worker_died"
                           | "cancelled",
                 "metrics", "claims", "duration_s", "error", "worker", "attempts",
                 "died_on", "commit", "resumed", "run_dir", "executed", "html", "log",
                 "figures"}]}

``attempts`` counts the tries (2 when the first worker died mid-task and another one ran it
again; ``died_on`` lists the dead workers). A failed notebook is not retried.
``--resume DIR`` continues the sweep in ``DIR``: a point whose earlier result is ``ok`` with
the same injected parameters, notebook, profile and git commit (``git rev-parse --short HEAD``:
uncommitted edits do not count) is kept as it is; every other point runs.

Pooled claims: a notebook's ``claims.json`` holds per-seed values of both sides of each claim
(the notebook's own seeds, ``seed, seed+1, …``); the page pools them over the sweep's seeds
and evaluates them once more with :func:`dmlviz.claims.evaluate` (seed interval only, no query
bootstrap). That treats them as independent, so space the sweep's seeds further apart than
the notebook's own seed count (the ready sweeps use 0, 10, 20, …).
"""

from __future__ import annotations

import ast
import datetime as _dt
import fnmatch
import html
import itertools
import json
import math
import os
import platform
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlviz import executor, report, runner
from dmlviz.export import copy_mathjax

FIELDS = ("notebook", "profile", "seeds", "device", "timeout", "metrics", "title", "description",
          "parameters", "grid", "zip")
STATUSES = (*runner.STATUSES, "cancelled")
SWEEP_FILE = "sweep.json"
PAGE = "sweep.html"
FIGURES = "sweep_figures"


class SpecError(ValueError):
    """A sweep spec that cannot run; the message starts with the spec file and the field."""


# --------------------------------------------------------------------------- the spec

@dataclass
class Axis:
    """One axis of the grid: one parameter (``[grid]``) or several zipped ones (``[zip]``)."""

    names: tuple[str, ...]
    values: list[tuple]

    @property
    def label(self) -> str:
        return " / ".join(self.names)

    def tick(self, value: tuple) -> str:
        return " / ".join(_short(v) for v in value)


@dataclass
class Spec:
    """A checked sweep spec (see the module docstring)."""

    path: Path
    notebook: runner.NotebookInfo
    profile: str
    seeds: list[int]
    axes: list[Axis]
    parameters: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    timeout: float | None = None
    metrics: list[str] = field(default_factory=list)
    title: str = ""
    description: str = ""
    raw: dict = field(default_factory=dict)

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, as ``{parameter: value}``, in grid order."""
        out = []
        for combo in itertools.product(*(a.values for a in self.axes)):
            point: dict[str, Any] = {}
            for axis, value in zip(self.axes, combo, strict=True):
                point.update(zip(axis.names, value, strict=True))
            out.append(point)
        return out

    def tasks(self) -> list[tuple[str, dict, int]]:
        """``(id, point, seed)`` for every execution: points outer, seeds inner."""
        tasks, seen = [], set()
        for point in self.points():
            for seed in self.seeds:
                tid = task_id(point, seed)
                if tid in seen:  # two values that print alike ("1" and 1.0): keep both apart
                    tid = f"{tid}-{len(seen)}"
                seen.add(tid)
                tasks.append((tid, point, seed))
        return tasks


def _short(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "x".join(_short(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def task_id(point: dict[str, Any], seed: int) -> str:
    """The run directory of one execution: ``k=4-num_blocks=2-s10`` (file-name safe)."""
    text = "-".join(f"{k}={_short(v)}" for k, v in point.items()) + f"-s{seed}"
    return re.sub(r"[^A-Za-z0-9_.=@+-]", "_", text)


def _literal(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ...  # not a literal (an expression): any value is accepted


_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
         list: "a list", tuple: "a list", dict: "a table"}


def _type_error(value: Any, default: Any) -> str | None:
    """Why ``value`` does not fit a knob whose default is ``default`` (None when it fits)."""
    if default is None or default is ...:
        return None
    want = type(default)
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif want in (list, tuple):
        ok = isinstance(value, list)
    elif want is dict:
        ok = isinstance(value, dict)
    elif want is str:
        ok = isinstance(value, str)
    else:
        return None
    if ok:
        return None
    return (f"{value!r} is {_KIND.get(type(value), type(value).__name__)}, but the notebook's "
            f"default {default!r} asks for {_KIND.get(want, want.__name__)}")


def load_spec(path: str | os.PathLike, notebook_dir: str | os.PathLike | None = None) -> Spec:
    """Read and check a sweep spec.

    Args:
        path: the TOML file.
        notebook_dir: where to look the notebook up by name (default ``notebooks/``); a
            ``notebook`` that ends in ``.ipynb`` is a path (relative to the spec's folder or
            the current directory).

    Raises:
        SpecError: naming the field and what is allowed; FileNotFoundError: no such spec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from e

    def bad(where: str, why: str) -> SpecError:
        return SpecError(f"{path}: {where}: {why}")

    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field; allowed: {', '.join(FIELDS)}")
    for key in ("notebook", "seeds", "grid"):
        if key not in raw and not (key == "grid" and "zip" in raw):
            raise bad(key, "missing" + (" (or [zip])" if key == "grid" else ""))

    # notebook
    name = raw["notebook"]
    if not isinstance(name, str) or not name:
        raise bad("notebook", f"must be a notebook name or path, got {name!r}")
    if name.endswith(".ipynb") and ((path.parent / name).is_file() or Path(name).is_file()):
        nb_path = (path.parent / name) if (path.parent / name).is_file() else Path(name)
        infos = [i for i in runner.discover(nb_path.resolve().parent)
                 if i.path == nb_path.resolve()]
        if not infos:
            raise bad("notebook", f"{name!r} is not a runnable notebook (hidden or _-prefixed)")
        nb = infos[0]
    else:
        try:
            nb = runner.select([name], runner.discover(notebook_dir))[0]
        except (ValueError, FileNotFoundError) as e:
            raise bad("notebook", str(e)) from e

    profile = raw.get("profile", "quick")
    if profile not in runner.PROFILES:
        raise bad("profile", f"must be one of {runner.PROFILES}, got {profile!r}")
    device = raw.get("device", "auto")
    if device not in runner.DEVICES:
        raise bad("device", f"must be one of {runner.DEVICES}, got {device!r}")
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        raise bad("timeout", f"must be a positive number of seconds, got {timeout!r}")

    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise bad("seeds", f"must be a non-empty list of integers, e.g. [0, 10], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise bad("seeds", f"a seed appears twice in {seeds}")
    if "seed" not in nb.parameters:
        raise bad("notebook", f"{nb.name} declares no 'seed' parameter to sweep seeds over")

    declared = sorted(p for p in nb.parameters if p not in runner.SET_BY_RUNNER and p != "seed")

    def check_name(where: str, pname: str) -> None:
        if pname == "seed":
            raise bad(where, "the seed is swept by 'seeds', not here")
        if pname in runner.SET_BY_RUNNER:
            raise bad(where, f"set by the sweep itself "
                      f"({'profile' if pname == 'quick' else pname}); don't set it here")
        if pname not in nb.parameters:
            raise bad(where, f"{nb.name} declares no parameter {pname!r}; allowed: "
                      f"{', '.join(declared) or 'none'}")

    def check_value(where: str, pname: str, value: Any) -> None:
        why = _type_error(value, _literal(nb.parameters[pname].get("default")))
        if why:
            raise bad(where, why)

    fixed = raw.get("parameters", {})
    if not isinstance(fixed, dict):
        raise bad("parameters", f"must be a table ([parameters]), got {fixed!r}")
    for pname, value in fixed.items():
        check_name(f"parameters.{pname}", pname)
        check_value(f"parameters.{pname}", pname, value)

    axes: list[Axis] = []
    taken = set(fixed)
    for table in ("grid", "zip"):
        entries = raw.get(table, {})
        if not isinstance(entries, dict):
            raise bad(table, f"must be a table ([{table}]) of parameter = [values], got "
                      f"{entries!r}")
        length = None
        for pname, values in entries.items():
            where = f"{table}.{pname}"
            check_name(where, pname)
            if pname in taken:
                raise bad(where, "set twice (in [parameters], [grid] or [zip])")
            taken.add(pname)
            if not isinstance(values, list):
                raise bad(where, f"must be a list of values, got {values!r}")
            if not values:
                raise bad(where, "empty list: an axis needs at least one value")
            for i, v in enumerate(values):
                check_value(f"{where}[{i}]", pname, v)
            reprs = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(reprs)) != len(reprs):
                raise bad(where, f"a value appears twice in {values}")
            if table == "grid":
                axes.append(Axis((pname,), [(v,) for v in values]))
            elif length is not None and len(values) != length:
                first = next(iter(entries))
                raise bad(where, f"{len(values)} value(s), but zip.{first} has {length}: "
                          "zipped lists must have one length")
            length = len(values)
        if table == "zip" and entries:
            axes.append(Axis(tuple(entries), [tuple(v) for v in zip(*entries.values(),
                                                                     strict=True)]))
    if not axes:
        raise bad("grid", "empty: give at least one parameter with a list of values")

    metrics = raw.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
        raise bad("metrics", f"must be a list of metric names or patterns, got {metrics!r}")
    for key in ("title", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise bad(key, f"must be a string, got {raw[key]!r}")
    return Spec(path, nb, profile, list(seeds), axes, dict(fixed), device,
                float(timeout) if timeout is not None else None, metrics,
                raw.get("title", ""), raw.get("description", ""), raw)


# --------------------------------------------------------------------------- running it

@dataclass
class SweepResult:
    """What :func:`run_sweep` did: ``sweep.json`` as written, where, and whether interrupted."""

    sweep: dict
    out_dir: Path
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.sweep["counts"])

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if all(p["status"] == "ok" for p in self.sweep["points"]) else 1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _comparable(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "out_dir"}


def _reusable(old: dict | None, parameters: dict, notebook: str, commit: str | None,
              old_sweep: dict) -> bool:
    return bool(old and old.get("status") == "ok" and old_sweep.get("notebook") == notebook
                and old.get("commit") == commit
                and json.dumps(_comparable(old.get("parameters", {})), sort_keys=True)
                == json.dumps(_comparable(parameters), sort_keys=True))


def run_sweep(spec: Spec | str | os.PathLike, *, out: str | os.PathLike | None = None,
              workers: int = 1, scheduler: str | None = None,
              resume: str | os.PathLike | None = None, device: str | None = None,
              notebook_dir: str | os.PathLike | None = None,
              progress: bool = True) -> SweepResult:
    """Run a sweep and write ``sweep.json``, the sweep page and the report index.

    Args:
        spec: a :class:`Spec` or the path of its TOML file (checked with :func:`load_spec`).
        out: the sweep directory (default ``reports/sweeps/<spec stem>-<timestamp>``); it must
            not already hold a sweep (use ``resume``).
        workers: worker processes of the local Dask cluster.
        scheduler: address of an existing Dask scheduler instead of a local cluster.
        resume: an earlier sweep directory to continue (results go there; ``out`` must then be
            omitted or the same).
        device: overrides the spec's ``device``.
        notebook_dir: where notebook names are looked up (default ``notebooks/``).
        progress: progress bar and one line per finished execution (stderr).

    Returns:
        A :class:`SweepResult`; ``exit_code`` 0 when every execution succeeded, 1 when one
        failed, 130 when interrupted with Ctrl-C (finished points kept).

    Raises:
        SpecError, ValueError, FileNotFoundError: before anything runs.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec, notebook_dir)
    if scheduler is None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    device = device or spec.device
    # on an existing cluster the workers' devices count, not this machine's
    resolved = runner.resolve_device(device) if scheduler is None else device
    root = runner.project_root()
    started = _dt.datetime.now(_dt.UTC)
    old_sweep: dict = {}
    if resume is not None:
        resume = Path(resume).resolve()
        if out is not None and Path(out).resolve() != resume:
            raise ValueError(f"--resume {resume} writes into that directory; drop --out {out}")
        if not (resume / SWEEP_FILE).is_file():
            raise FileNotFoundError(f"--resume {resume}: no {SWEEP_FILE} there")
        try:
            old_sweep = json.loads((resume / SWEEP_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--resume {resume}: {SWEEP_FILE} is not valid JSON: {e}") from e
        out = resume
    else:
        stamp = started.astimezone().strftime("%Y%m%d-%H%M%S")
        out = Path(out) if out else root / "reports" / "sweeps" / f"{spec.path.stem}-{stamp}"
        out = out.resolve()
        if (out / SWEEP_FILE).exists():
            raise ValueError(f"--out {out} already holds a sweep; continue it with --resume "
                             f"{out} or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    commit = runner._git_commit(root)
    old_points = {p["id"]: p for p in old_sweep.get("points", [])}
    timeout = spec.timeout or runner.DEFAULT_TIMEOUT[spec.profile]
    env = {"PLOTLY_RENDERER": "plotly_mimetype+notebook", "DMLVIZ_OUT_DIR": "",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "JUPYTER_PLATFORM_DIRS": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "TQDM_MININTERVAL": "5"}  # as dmlviz run
    if "OMP_NUM_THREADS" not in os.environ and scheduler is None:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    mathjax = copy_mathjax(out)
    nb = spec.notebook
    records, jobs = [], []
    for tid, point, seed in spec.tasks():
        run_dir = out / tid
        params = {"quick": spec.profile == "quick", "seed": seed, "device": device,
                  "interactive": False, "out_dir": str(run_dir), **spec.parameters, **point}
        old = old_points.get(tid)
        if _reusable(old, params, nb.name, commit, old_sweep):
            records.append({**old, "resumed": True})
            continue
        rec = {"id": tid, "point": point, "seed": seed, "parameters": params, "status": "pending",
               "metrics": {}, "claims": [], "duration_s": None, "error": None, "worker": None,
               "attempts": 0, "died_on": [], "commit": commit, "resumed": False,
               "run_dir": tid, "executed": None, "html": None, "log": None, "figures": []}
        records.append(rec)
        runner._clean(run_dir, nb.name)
        (run_dir / "claims.json").unlink(missing_ok=True)
        jobs.append({"key": tid, "name": nb.name, "path": str(nb.path), "out_dir": str(run_dir),
                     "parameters": params, "timeout": timeout,
                     "mathjax": f"../{mathjax}" if mathjax else None,
                     "env": {**env, "DMLVIZ_OUT_DIR": str(run_dir)}})
    by_id = {r["id"]: r for r in records}
    from dmlviz import __version__

    sweep = {
        "schema": 1, "spec_file": _rel(spec.path.resolve(), root), "spec": spec.raw,
        "notebook": nb.name, "title": spec.title or f"{nb.name}: " + " × ".join(
            a.label for a in spec.axes), "description": spec.description,
        "profile": spec.profile, "device": device, "device_resolved": resolved,
        "seeds": spec.seeds, "axes": [list(a.names) for a in spec.axes], "commit": commit,
        "workers": workers if scheduler is None else None, "scheduler": scheduler,
        "started": (old_sweep.get("started") if resume else None)
        or started.isoformat(timespec="seconds"),
        "resumed": started.isoformat(timespec="seconds") if resume else None,
        "finished": None, "duration_s": None, "interrupted": False, "timeout_s": timeout,
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpu_count": os.cpu_count(), "dmlviz": __version__,
                        "git_commit": commit},
        "counts": {}, "points": records}

    def save() -> None:
        sweep["counts"] = {s: n for s in STATUSES + ("pending",)
                           if (n := sum(p["status"] == s for p in records))}
        _atomic_write(out / SWEEP_FILE, json.dumps(sweep, indent=1, ensure_ascii=False) + "\n")

    def rel(p: str | None) -> str | None:
        return Path(p).resolve().relative_to(out).as_posix() if p else None

    def on_result(job: dict, r: dict) -> None:
        rec = by_id[job["key"]]
        rec.update(status=r["status"], metrics=r.get("metrics", {}),
                   claims=r.get("claims", []), claims_cell=r.get("claims_cell"),
                   duration_s=r.get("duration_s"), error=r.get("error"), worker=r.get("worker"),
                   attempts=len(r.get("attempts", [])), died_on=r.get("died_on", []),
                   executed=rel(r.get("executed")), html=rel(r.get("html")),
                   log=rel(r.get("log")), figures=[rel(f) for f in r.get("figures", [])])
        save()

    save()
    if progress:
        skipped = len(records) - len(jobs)
        print(f"sweep {spec.path.name}: {nb.name}, {len(spec.points())} point(s) × "
              f"{len(spec.seeds)} seed(s) = {len(records)} execution(s)"
              + (f", {skipped} kept from {out.name}" if resume else "") + f" → {out}",
              file=sys.stderr)
    interrupted = False
    t0 = _dt.datetime.now(_dt.UTC)
    try:
        executor.execute(jobs, scheduler=scheduler, workers=workers, progress=progress,
                         desc="sweep", on_result=on_result)
    except KeyboardInterrupt:
        interrupted = True
        for rec in records:
            if rec["status"] == "pending":
                rec["status"] = "cancelled"
    finished = _dt.datetime.now(_dt.UTC)
    prev = (old_sweep.get("duration_s") or 0.0) if resume else 0.0
    sweep.update(finished=finished.isoformat(timespec="seconds"),
                 duration_s=round(prev + (finished - t0).total_seconds(), 2),
                 run_duration_s=round((finished - t0).total_seconds(), 2),
                 interrupted=interrupted)
    save()
    write_pages(sweep, out, spec)
    return SweepResult(sweep, out, interrupted)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- statistics

def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95 % Student-t interval over seeds (None for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def swept_metrics(sweep: dict, patterns: list[str] | None = None) -> list[str]:
    """The numeric metrics the page tabulates: those matching ``patterns`` (fnmatch; all
    when empty) that some successful execution recorded, in first-recorded order."""
    names: dict[str, None] = {}
    for p in sweep["points"]:
        if p["status"] != "ok":
            continue
        for k, v in p.get("metrics", {}).items():
            if _is_number(v) and not k.startswith("claim:") and (
                    not patterns or any(fnmatch.fnmatchcase(k, pat) for pat in patterns)):
                names.setdefault(k)
    return list(names)


def _point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def aggregate(sweep: dict, metric: str) -> list[dict]:
    """Per grid point: ``{"point", "values": {seed: v}, "mean", "half", "n"}`` for ``metric``
    over the successful executions (points without any value are left out)."""
    rows: dict[str, dict] = {}
    for p in sweep["points"]:
        row = rows.setdefault(_point_key(p["point"]), {"point": p["point"], "values": {}})
        v = p.get("metrics", {}).get(metric)
        if p["status"] == "ok" and _is_number(v):
            row["values"][p["seed"]] = float(v)
    out = []
    for row in rows.values():
        if row["values"]:
            row["mean"], row["half"] = interval(list(row["values"].values()))
            row["n"] = len(row["values"])
            out.append(row)
    return out


def pooled_claims(sweep: dict) -> dict[str, list[dict]]:
    """Per claim id, per grid point: the verdicts of each execution and the claim evaluated
    again over the per-seed values of every execution at that point (see the module
    docstring)."""
    from dmlviz import claims as ledger

    out: dict[str, dict[str, dict]] = {}
    for p in sweep["points"]:
        for c in p.get("claims", []) or []:
            rows = out.setdefault(c["id"], {})
            row = rows.setdefault(_point_key(p["point"]), {"point": p["point"], "verdicts": {},
                                                           "a": [], "b": []})
            row["verdicts"][p["seed"]] = c.get("verdict")
            if c.get("a"):
                row["a"] += list(c["a"])
                row["b"] += list(c.get("b") or [])
    result: dict[str, list[dict]] = {}
    for cid, rows in out.items():
        for row in rows.values():
            row["pooled"] = None
            if cid in ledger.CLAIMS and row["a"] and len(row["a"]) == len(row["b"]):
                claim = ledger.CLAIMS[cid]
                try:
                    row["pooled"] = ledger.evaluate(claim, row["a"],
                                                    row["b"] if claim.b is not None else None)
                except ValueError:
                    row["pooled"] = None
        result[cid] = list(rows.values())
    return result


# --------------------------------------------------------------------------- the page

def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def plot_metric(sweep: dict, metric: str, rows: list[dict], axes: list[Axis], path: Path) -> None:
    """The mean over seeds ± its 95 % interval against the first axis, one line per
    combination of the other axes; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    first, rest = axes[0], axes[1:]
    ticks = first.values
    numeric = all(len(t) == 1 and _is_number(t[0]) for t in ticks)
    h = lambda value: json.dumps(value, sort_keys=True)  # noqa: E731 - values may be lists
    xs = {h(list(t)): (float(t[0]) if numeric else i) for i, t in enumerate(ticks)}
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    groups: dict[str, list] = {}
    for row in rows:
        x = xs[h([row["point"][n] for n in first.names])]
        key = [[row["point"][n] for n in a.names] for a in rest]
        groups.setdefault(h(key), [key]).append((x, row))
    for key, *items in groups.values():
        items.sort(key=lambda it: it[0])
        err = [it[1]["half"] or 0.0 for it in items]
        label = ", ".join(f"{a.label} = {a.tick(k)}" for a, k in zip(rest, key, strict=True))
        ax.errorbar([it[0] for it in items], [it[1]["mean"] for it in items], yerr=err,
                    marker="o", capsize=3, label=label or None)
    if numeric:
        vals = [float(t[0]) for t in ticks]
        if min(vals) > 0 and max(vals) / min(vals) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(vals, [first.tick(t) for t in ticks])
    else:
        ax.set_xticks(list(range(len(ticks))), [first.tick(t) for t in ticks])
    ax.set_xlabel(first.label)
    ax.set_ylabel(metric)
    n = max((r["n"] for r in rows), default=0)
    ax.set_title(f"{metric}: mean ± 95 % interval over up to {n} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    if rest:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
main{max-width:1100px;margin:0 auto;padding:24px}h1{margin:0 0 6px}h2{margin:4px 0 10px}
.meta span{display:inline-block;margin:0 14px 6px 0;color:#4a5568}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:14px 18px;margin:14px 0}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #edf0f3;padding:3px 9px;
text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b42318}.ok{color:#067647}.warn{color:#b54708}.mut{color:#667085}
img{max-width:100%}blockquote{margin:6px 0;color:#4a5568;border-left:3px solid #d0d5dd;padding-left:10px}
"""
VERDICT_CLASS = {"reproduced": "ok", "reversed": "bad", "not established": "warn",
                 "not testable here": "mut"}


def _point_cells(point: dict, axes: list[Axis]) -> str:
    return "".join(f"<td>{_e(_short(point[n]))}</td>" for a in axes for n in a.names)


def render_page(sweep: dict, spec_axes: list[Axis], figures: dict[str, str],
                metrics: list[str]) -> str:
    """The sweep page (offline HTML: inline CSS, relative links only)."""
    pts = sweep["points"]
    names = [n for a in spec_axes for n in a.names]
    counts = sweep.get("counts", {})
    meta = [f"notebook <b>{_e(sweep['notebook'])}</b>", f"profile <b>{_e(sweep['profile'])}</b>",
            f"device {_e(sweep['device'])} ({_e(sweep.get('device_resolved'))})",
            f"seeds {_e(', '.join(map(str, sweep['seeds'])))}",
            f"{len(pts)} execution(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()),
            f"total {_e(report.fmt_duration(sweep.get('duration_s')))}",
            ("scheduler " + _e(sweep["scheduler"])) if sweep.get("scheduler")
            else f"{_e(sweep.get('workers'))} local worker(s)",
            f"commit <code>{_e(sweep.get('commit'))}</code>",
            f"spec <code>{_e(sweep.get('spec_file'))}</code>",
            '<a href="index.html">every execution (report index)</a>',
            f'<a href="{SWEEP_FILE}">{SWEEP_FILE}</a>']
    parts = [f"<h1>{_e(sweep.get('title'))}</h1>"]
    if sweep.get("description"):
        parts.append(f"<p>{_e(sweep['description'])}</p>")
    parts.append('<div class="meta">' + "".join(f"<span>{m}</span>" for m in meta) + "</div>")
    if sweep.get("interrupted"):
        parts.append('<div class="card bad">Interrupted (Ctrl-C): the cancelled executions did '
                     f'not run; continue with <code>dmlviz sweep {_e(sweep.get("spec_file"))} '
                     '--resume DIR</code>.</div>')
    bad = [p for p in pts if p["status"] != "ok"]
    retried = [p for p in pts if p.get("died_on")]
    if bad or retried:
        items = []
        for p in bad:
            err = p.get("error") or {}
            link = f' (<a href="{_e(p["html"])}">notebook</a>)' if p.get("html") else ""
            items.append(f'<li class="bad">{_e(p["id"])}: {_e(p["status"])} '
                         f'{_e(err.get("ename", ""))}: {_e(err.get("evalue", ""))}{link}</li>')
        for p in retried:
            items.append(f'<li class="warn">{_e(p["id"])}: the worker died '
                         f'({_e(", ".join(p["died_on"]))}); retried on {_e(p.get("worker"))}'
                         "</li>")
        parts.append('<div class="card"><h2>Failures and retries</h2><ul>' + "".join(items)
                     + "</ul></div>")
    heads = "".join(f"<th>{_e(n)}</th>" for n in names)
    for metric in metrics:
        rows = aggregate(sweep, metric)
        if not rows:
            continue
        seed_heads = "".join(f"<th>seed {s}</th>" for s in sweep["seeds"])
        body = ""
        for row in rows:
            seeds = "".join(f'<td class="num">{_fmt(row["values"].get(s))}</td>'
                            for s in sweep["seeds"])
            half = f"± {_fmt(row['half'])}" if row["half"] is not None else "(one seed)"
            body += (f"<tr>{_point_cells(row['point'], spec_axes)}{seeds}"
                     f'<td class="num"><b>{_fmt(row["mean"])}</b></td><td class="num">{half}'
                     f'</td><td class="num">{row["n"]}</td></tr>')
        img = (f'<img src="{_e(figures[metric])}" alt="{_e(metric)} against '
               f'{_e(spec_axes[0].label)}">') if metric in figures else ""
        parts.append(f'<section class="card" id="{_e(_slug(metric))}"><h2><code>{_e(metric)}'
                     f"</code></h2>{img}<table><thead><tr>{heads}{seed_heads}<th>mean</th>"
                     f"<th>95 % interval</th><th>n</th></tr></thead><tbody>{body}</tbody>"
                     "</table></section>")
    if not metrics:
        parts.append('<div class="card mut">No numeric metric recorded by a successful '
                     "execution matches the spec's metrics.</div>")
    claim_rows = pooled_claims(sweep)
    if claim_rows:
        from dmlviz import claims as ledger

        cards = []
        for cid, rows in sorted(claim_rows.items()):
            c = ledger.CLAIMS.get(cid)
            head = (f"<h2><code>{_e(cid)}</code></h2>" + (
                f"<div>{_e(c.compared)} · {_e(c.paper)}, {_e(c.where)}</div>"
                f"<blockquote>{_e(c.quote)}</blockquote>" if c else
                '<div class="mut">(no longer in the claims registry)</div>'))
            body = ""
            for row in rows:
                per = "".join(
                    f'<td class="{VERDICT_CLASS.get(row["verdicts"].get(s), "mut")}">'
                    f'{_e(row["verdicts"].get(s, "–"))}</td>' for s in sweep["seeds"])
                r = row["pooled"]
                pooled = (f'<td class="num">{r.effect:+.3f}</td><td class="num">'
                          f"[{r.low:+.3f}, {r.high:+.3f}]</td><td class=num>{r.seeds}</td>"
                          f'<td class="{VERDICT_CLASS.get(r.verdict, "mut")}">{_e(r.verdict)}'
                          + (f" ({_e(r.reason)})" if r.reason else "") + "</td>"
                          if r is not None and r.low is not None else
                          '<td></td><td></td><td></td><td class="mut">–</td>')
                body += f"<tr>{_point_cells(row['point'], spec_axes)}{per}{pooled}</tr>"
            seed_heads = "".join(f"<th>seed {s}</th>" for s in sweep["seeds"])
            cards.append(f'<section class="card">{head}<table><thead><tr>{heads}{seed_heads}'
                         "<th>pooled effect</th><th>95 % interval</th><th>seeds</th>"
                         f"<th>pooled verdict</th></tr></thead><tbody>{body}</tbody></table>"
                         "</section>")
        parts.append('<div class="card"><h2>Claims</h2><p>Each execution evaluated these '
                     "claims over its own seeds (columns <i>seed s</i>: that execution's "
                     "verdict). <i>Pooled</i>: the per-seed values of every execution at the "
                     "point, evaluated again with <code>dmlviz.claims.evaluate</code> "
                     "(paired differences, Student-t interval over all those seeds; no query "
                     "bootstrap).</p></div>" + "".join(cards))
    rows = "".join(
        f"<tr><td>{_e(p['id'])}</td>{_point_cells(p['point'], spec_axes)}<td>{p['seed']}</td>"
        f'<td class="{"ok" if p["status"] == "ok" else "bad"}">{_e(p["status"])}'
        + (" (kept)" if p.get("resumed") else "") + "</td>"
        f'<td class="num">{_e(report.fmt_duration(p.get("duration_s")))}</td>'
        f"<td>{_e(p.get('worker') or '')}"
        + (f" (attempt {p['attempts']})" if p.get("attempts", 0) > 1 else "") + "</td><td>"
        + " ".join(f'<a href="{_e(p[k])}">{label}</a>' for k, label in
                   (("html", "HTML"), ("executed", ".ipynb"), ("log", "log")) if p.get(k))
        + "</td></tr>" for p in pts)
    parts.append(f'<section class="card"><h2>Executions</h2><table><thead><tr><th>id</th>{heads}'
                 "<th>seed</th><th>status</th><th>duration</th><th>worker</th><th>files</th>"
                 f"</tr></thead><tbody>{rows}</tbody></table></section>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>dmlviz sweep · '
            f"{_e(sweep.get('title'))}</title><style>{CSS}</style></head><body><main>"
            + "".join(parts) + "</main></body></html>\n")


def _axes_of(sweep: dict) -> list[Axis]:
    """The axes, rebuilt from ``sweep.json`` (values in grid order)."""
    axes = []
    for names in sweep["axes"]:
        seen: dict[str, tuple] = {}
        for p in sweep["points"]:
            value = tuple(p["point"][n] for n in names)
            seen.setdefault(json.dumps(value), value)
        axes.append(Axis(tuple(names), list(seen.values())))
    return axes


def write_pages(sweep: dict, out: Path, spec: Spec | None = None) -> None:
    """Write ``sweep.html`` (+ ``sweep_figures/``) and the report index of every execution
    (``summary.json``, ``summary.md``, ``index.html``, linking the sweep page)."""
    axes = spec.axes if spec is not None else _axes_of(sweep)
    patterns = spec.metrics if spec is not None else sweep.get("spec", {}).get("metrics", [])
    metrics = swept_metrics(sweep, patterns)
    figdir = out / FIGURES
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir()
    figures = {}
    for metric in metrics:
        rows = aggregate(sweep, metric)
        if rows:
            name = f"{FIGURES}/{_slug(metric)}.png"
            plot_metric(sweep, metric, rows, axes, out / name)
            figures[metric] = name
    (out / PAGE).write_text(render_page(sweep, axes, figures, metrics), encoding="utf-8")
    title = sweep.get("title", "")
    nbs = {}
    for p in sweep["points"]:
        desc = ", ".join(f"{k} = {_short(v)}" for k, v in p["point"].items())
        nbs[p["id"]] = {
            "status": p["status"] if p["status"] in runner.STATUSES else "failed",
            "duration_s": p.get("duration_s"),
            "error": p.get("error") or ({"cell": None, "exec_count": None, "ename": "Cancelled",
                                         "evalue": "not run (the sweep was interrupted)"}
                                        if p["status"] in ("cancelled", "pending") else None),
            "metrics": p.get("metrics", {}), "regressions": [],
            "title": f"{title} · {desc}, seed {p['seed']}", "parameters": p.get("parameters", {}),
            "executed": p.get("executed"), "html": p.get("html"), "log": p.get("log"),
            "figures": p.get("figures", []), "claims": p.get("claims", []),
            "claims_cell": p.get("claims_cell"), "worker": p.get("worker")}
    summary = {
        "schema": 1, "profile": sweep["profile"], "device": sweep["device"],
        "device_resolved": sweep.get("device_resolved"), "started": sweep["started"],
        "finished": sweep.get("finished"), "duration_s": sweep.get("duration_s"),
        "ok": all(p["status"] == "ok" for p in sweep["points"]), "baseline": None,
        "jobs": sweep.get("workers"), "scheduler": sweep.get("scheduler"),
        "timeout_s": sweep.get("timeout_s"), "parameters": sweep.get("spec", {}).get(
            "parameters", {}), "environment": sweep.get("environment", {}),
        "sweep": PAGE, "notebooks": nbs}
    runner.write_report(summary, out)
