"""The ``dmlviz`` command: ``list``, ``run``, ``sweep``, ``report``, ``baseline``, ``book``.

    dmlviz list                                  notebooks, titles, parameters
    dmlviz run [NOTEBOOK ...|all] [--profile quick|full] [--device auto|cpu|cuda]
               [-p NAME VALUE ...] [--out DIR] [--workers N | --scheduler ADDRESS]
               [--timeout SECONDS]
               [--baseline FILE|none] [--figures DIR]
    dmlviz sweep SPEC.toml [--workers N | --scheduler ADDRESS] [--out DIR | --resume DIR]
                 [--device auto|cpu|cuda]
    dmlviz report OLD_DIR NEW_DIR [--out FILE.md|FILE.html]
    dmlviz baseline RUN_DIR [RUN_DIR ...] [--out FILE] [--fresh]
    dmlviz book RUN_DIR [--out DIR]              the course book of a run (also: run --book)

Exit status: 0 success; 1 a notebook failed or a metric regressed (``run``), or an execution
of a sweep failed (``sweep``); 2 a usage error (unknown notebook, parameter, profile or device;
a bad sweep spec; missing or corrupt file); 130 a sweep interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmlviz import report, run_checks, runner
from dmlviz.baseline import make_baseline


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmlviz", description="Run the dmlviz notebooks with "
                                "papermill and write regression reports.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{list,run,sweep,report,baseline,book}")

    ls = sub.add_parser("list", help="the notebooks in order, with title and parameters")
    ls.add_argument("--notebooks", metavar="DIR", help="notebook directory (default notebooks/)")

    r = sub.add_parser("run", help="execute notebooks and write a report",
                       description="Execute notebooks with papermill (one process each) and "
                       "write DIR/summary.json, summary.md, index.html and per-notebook "
                       "executed copies, HTML and metrics. Exit 0 only when every notebook "
                       "succeeded and no metric regressed.")
    r.add_argument("names", nargs="*", default=["all"], metavar="NOTEBOOK",
                   help="notebook names (00_quickstart, 00, quickstart) or 'all' (default)")
    r.add_argument("--profile", choices=runner.PROFILES, default="quick",
                   help="quick (CI, ~1 min per notebook on 2 CPU cores) or full (course)")
    r.add_argument("--device", choices=runner.DEVICES, default="auto")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="override a notebook parameter "
                   "(VALUE read as a Python literal, else a string); repeatable")
    r.add_argument("--out", metavar="DIR", help="run directory (default reports/<timestamp>/)")
    r.add_argument("--workers", "--jobs", dest="jobs", type=int, default=1, metavar="N",
                   help="worker processes of the local Dask cluster: notebooks at once (1)")
    r.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster "
                   "(tcp://host:8786) instead of a local one; see the README")
    r.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="limit for any single cell (default 600 quick, 3600 full)")
    r.add_argument("--baseline", metavar="FILE", default="default",
                   help="expected metrics (default tests/baselines/<profile>.json when it "
                   "exists); 'none' to skip the comparison")
    r.add_argument("--figures", metavar="DIR", help="also copy exported figures here")
    r.add_argument("--notebooks", metavar="DIR", help="notebook directory (default notebooks/)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--book", action="store_true", help="also write the course book "
                   "(RUN_DIR/book/index.html: the executed notebooks as one static site)")

    w = sub.add_parser("sweep", help="run a notebook over a parameter grid × seeds on Dask",
                       description="Run every grid point × seed of SPEC.toml (see sweeps/) as "
                       "one papermill execution and one Dask task; write DIR/sweep.json, the "
                       "sweep page DIR/sweep.html and the report index DIR/index.html. Exit 0 "
                       "when every execution succeeded, 1 when one failed, 2 for a bad spec, "
                       "130 when interrupted (finished points are kept: --resume DIR).")
    w.add_argument("spec", metavar="SPEC.toml")
    w.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes of the local Dask cluster (1)")
    w.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster "
                   "(tcp://host:8786) instead; --out must be on a file system the workers share")
    w.add_argument("--out", metavar="DIR", help="sweep directory (default "
                   "reports/sweeps/<spec>-<timestamp>/)")
    w.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR: points finished "
                   "there with the same parameters and commit are kept, the others run")
    w.add_argument("--device", choices=runner.DEVICES, help="override the spec's device")
    w.add_argument("--notebooks", metavar="DIR", help="notebook directory (default notebooks/)")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("report", help="compare two runs side by side")
    c.add_argument("old", metavar="OLD_DIR")
    c.add_argument("new", metavar="NEW_DIR")
    c.add_argument("--out", metavar="FILE", help="also write the comparison here "
                   "(.md or .html; default NEW_DIR/compare-<OLD>.html)")

    b = sub.add_parser("baseline", help="write tests/baselines/<profile>.json from a run")
    b.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                   help="a run directory; several runs of the same notebooks with independent "
                   "seeds (-p seed 0, 1, 2) re-derive every tolerance from their spread")
    b.add_argument("--out", metavar="FILE", help="baseline file (default "
                   "tests/baselines/<profile>.json)")
    b.add_argument("--fresh", action="store_true", help="ignore tolerances already in the file")

    k = sub.add_parser("book", help="write the course book (a static site) of a run")
    k.add_argument("run_dir", metavar="RUN_DIR")
    k.add_argument("--out", metavar="DIR", help="where to write it (default RUN_DIR/book)")
    return p


def _list(args) -> int:
    nbs = runner.discover(args.notebooks)
    if not nbs:
        print(f"no notebooks in {args.notebooks or runner.default_notebook_dir()}")
    for nb in nbs:
        print(f"{nb.name}  {nb.title}")
        for name, p in nb.parameters.items():
            typ = f" ({p['type']})" if p.get("type") not in (None, "None") else ""
            helptext = f"  # {p['help']}" if p.get("help") else ""
            print(f"    {name} = {p['default']}{typ}{helptext}")
    return 0


def _run(args) -> int:
    params = {name: runner.parse_value(value) for name, value in args.parameter}
    params = run_checks.check_run_arguments(args, params)  # exit 2 before any notebook starts
    baseline = None if args.baseline.lower() == "none" else args.baseline
    result = runner.run(args.names, profile=args.profile, device=args.device,
                        parameters=params, out=args.out, jobs=args.jobs, timeout=args.timeout,
                        baseline=baseline, figures=args.figures, notebook_dir=args.notebooks,
                        progress=not args.no_progress, scheduler=args.scheduler,
                        book=args.book)
    s = result.summary
    probs = report.problems(s)
    print(f"{len(s['notebooks'])} notebook(s), profile {s['profile']}, device "
          f"{s['device_resolved']}, {report.fmt_duration(s['duration_s'])}, baseline "
          f"{s['baseline'] or 'none'}")
    print("OK: every notebook succeeded, no metric regressed" if not probs
          else f"NOT OK: {len(probs)} problem(s)")
    for line in probs:
        print(f"  - {line}")
    print(f"report: {result.out_dir / 'index.html'}")
    if s.get("book"):
        print(f"course book: {result.out_dir / s['book']}")
    return result.exit_code


def _sweep(args) -> int:
    from dmlviz import sweep

    result = sweep.run_sweep(args.spec, out=args.out, workers=args.workers,
                             scheduler=args.scheduler, resume=args.resume, device=args.device,
                             notebook_dir=args.notebooks, progress=not args.no_progress)
    s = result.sweep
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items())
    print(f"sweep {s['notebook']}: {len(s['points'])} execution(s) ({counts}), "
          f"{report.fmt_duration(s.get('run_duration_s'))}")
    for p in s["points"]:
        if p["status"] not in ("ok", "cancelled"):
            err = p.get("error") or {}
            print(f"  - {p['id']}: {p['status']}: {err.get('ename', '')}: "
                  f"{err.get('evalue', '')}"[:300])
    if result.interrupted:
        print(f"interrupted: the finished points are kept; continue with --resume "
              f"{result.out_dir}")
    print(f"sweep page: {result.out_dir / sweep.PAGE}")
    return result.exit_code


def _report(args) -> int:
    run_checks.check_output_file("--out", args.out)
    md, page = report.compare_runs(args.old, args.new)
    print(md)
    out = Path(args.out) if args.out else Path(args.new) / f"compare-{Path(args.old).name}.html"
    out.write_text(md if out.suffix == ".md" else page, encoding="utf-8")
    print(f"written: {out}")
    return 0


def _book(args) -> int:
    from dmlviz.book import build_book

    print(f"course book: {build_book(args.run_dir, args.out)}")
    return 0


def _baseline(args) -> int:
    run_checks.check_output_file("--out", args.out)
    path, changes = make_baseline(args.run_dir, args.out, fresh=args.fresh,
                                  root=runner.project_root())
    for line in changes:
        print(f"  {line}")
    print(f"written: {path} ({len(changes)} change(s)); review every 'why' that starts "
          "with DEFAULT before committing it")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dmlviz`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return {"list": _list, "run": _run, "sweep": _sweep, "report": _report,
                "baseline": _baseline, "book": _book}[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"dmlviz {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
