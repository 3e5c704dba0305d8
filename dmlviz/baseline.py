"""The baseline file: the metrics each notebook must record, their tolerances, the check.

A **baseline file** (``tests/baselines/<profile>.json``) holds the metrics each notebook is
expected to record in one run profile, each with a tolerance and the reason for it::

    {
      "_doc": "free text: how the tolerances were chosen (ignored by the checker)",
      "profile": "quick",
      "notebooks": {
        "00_quickstart": {
          "quickstart.recall@1.trained": {"value": 0.62, "abs": 0.08,
                                          "why": "seeds 0-2 on CPU spread ±0.03, doubled"},
          "quickstart.recall@1.gain":    {"at_least": 0.05, "why": "training must help"},
          "quickstart.loss.final":       {"value": 0.9, "rel": 0.25, "why": "..."},
          "quickstart.dataset":          {"value": "digits"}
        }
      }
    }

One metric's spec may combine these keys (keys starting with ``_`` are comments):

``value`` + ``abs`` and/or ``rel``
    ``|x - value| <= max(abs, rel * |value|)`` (a missing one counts as 0).
``value`` alone
    exact match (meant for bools, strings and counts).
``at_least`` / ``at_most``
    inclusive bounds, a direction ("must not get worse than").
``why``
    how the tolerance was chosen; shown in the report.
``key``
    ``true`` to show the metric in the overview table of ``index.html`` (else the first few).

A metric named in the baseline but missing from the run (or recorded as null, i.e. NaN),
or outside its tolerance, is a **regression**. Metrics the baseline does not name are shown
but not checked; baseline entries of notebooks that were not run are ignored.

Regressions are reported as ``{"metric", "value", "baseline", "tolerance", "reason"}`` where
``baseline`` is the spec's ``value`` (null for bound-only specs), ``tolerance`` the other spec
keys (``{"abs": 0.08}``, ``{"at_least": 0.5}``, ``{"exact": true}``) and ``reason`` a sentence.

Everything a run shows to people (``summary.md``, ``index.html``, ``dmlviz report OLD NEW``)
is in :mod:`dmlviz.report`; the run itself and the ``summary.json`` schema in
:mod:`dmlviz.runner`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

CLAIM_PREFIX = "claim:"
DIFFERENCE_WORDS = ("minus", "gain", "diff", "delta", "change")
MIN_ABS = 0.02
SPEC_KEYS = ("value", "abs", "rel", "at_least", "at_most", "why", "key")
DEFAULT_REL = 0.10
DEFAULT_ZERO_ABS = 1e-6
BASELINE_DOC = (
    "Expected metrics per notebook for this run profile. Each metric: {'value': v, 'abs': a} "
    "and/or 'rel': r means |x - v| <= max(a, r*|v|); 'value' alone means an exact match; "
    "'at_least'/'at_most' are inclusive bounds. 'why' says how the tolerance was chosen. "
    "A metric missing from a run, or outside its tolerance, is a regression (see dmlviz/baseline.py). "
    "Entries whose 'why' starts with 'DEFAULT' were written by `dmlviz baseline` and still need a "
    "measured tolerance (spread over seeds and CPU/GPU)."
)


# --------------------------------------------------------------------------- values

def is_number(x) -> bool:
    """A real number, and not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def same_value(a, b) -> bool:
    """Equal as a baseline means it: bools only equal bools, numbers up to float rounding."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if is_number(a) and is_number(b):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def fmt(v: Any) -> str:
    """Format a metric value compactly (4 significant digits for floats)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def load_summary(run_dir: str | os.PathLike) -> dict:
    """Read ``summary.json`` of a run directory, with a clear error when it is absent."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a dmlviz run directory: no summary.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


# --------------------------------------------------------------------------- baselines

def validate_spec(spec: Any, where: str) -> dict:
    """Check one metric's tolerance spec and return it (raises ``ValueError`` naming ``where``)."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a metric spec must be an object like "
                         f'{{"value": 0.6, "abs": 0.05}}, got {spec!r}')
    unknown = [k for k in spec if k not in SPEC_KEYS and not k.startswith("_")]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(SPEC_KEYS)}")
    if not any(k in spec for k in ("value", "at_least", "at_most")):
        raise ValueError(f"{where}: needs 'value' and/or 'at_least'/'at_most'")
    for k in ("abs", "rel"):
        if k in spec:
            if "value" not in spec:
                raise ValueError(f"{where}: '{k}' needs a 'value' to be relative to")
            if not is_number(spec[k]) or spec[k] < 0:
                raise ValueError(f"{where}: '{k}' must be a non-negative number, got {spec[k]!r}")
            if not is_number(spec["value"]):
                raise ValueError(f"{where}: '{k}' needs a numeric 'value', got {spec['value']!r}")
    for k in ("at_least", "at_most"):
        if k in spec and not is_number(spec[k]):
            raise ValueError(f"{where}: '{k}' must be a number, got {spec[k]!r}")
    if "why" in spec and not isinstance(spec["why"], str):
        raise ValueError(f"{where}: 'why' must be a string")
    if "key" in spec and not isinstance(spec["key"], bool):
        raise ValueError(f"{where}: 'key' must be true or false")
    return spec


def load_baseline(path: str | os.PathLike, profile: str | None = None) -> dict:
    """Read and validate a baseline file.

    Args:
        path: the JSON file.
        profile: when given, the file's ``profile`` must match it.

    Returns:
        The parsed baseline ``{"profile": ..., "notebooks": {name: {metric: spec}}}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not valid JSON, wrong structure, a bad spec, or another profile's file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline file {str(path)!r} does not exist; write one with "
                                "`dmlviz baseline RUN_DIR`, or run with --baseline none")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"baseline file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("notebooks"), dict):
        raise ValueError(f"baseline file {str(path)!r} must be an object with a 'notebooks' "
                         "object mapping notebook names to {metric: spec}")
    if profile is not None and data.get("profile") not in (None, profile):
        raise ValueError(f"baseline file {str(path)!r} is for profile {data.get('profile')!r}, "
                         f"but this run uses profile {profile!r}")
    for nb, metrics in data["notebooks"].items():
        if nb.startswith("_"):
            continue
        if not isinstance(metrics, dict):
            raise ValueError(f"baseline {path.name}: notebooks.{nb} must map metric names to specs")
        for name, spec in metrics.items():
            if not name.startswith("_"):
                validate_spec(spec, f"baseline {path.name}: notebooks.{nb}.{name}")
    return data


def baseline_entries(baseline: dict | None, notebook: str) -> dict:
    """The ``{metric: spec}`` a baseline holds for one notebook (comment keys dropped)."""
    if not baseline:
        return {}
    entries = baseline.get("notebooks", {}).get(notebook, {}) or {}
    return {k: v for k, v in entries.items() if not k.startswith("_")}


def tolerance_of(spec: dict) -> dict:
    """The tolerance part of a spec, as reported in ``regressions[].tolerance``."""
    tol = {k: spec[k] for k in ("abs", "rel", "at_least", "at_most") if k in spec}
    if not tol and "value" in spec:
        tol = {"exact": True}
    return tol


def describe_tolerance(spec: dict) -> str:
    """Short human form of a spec: ``0.62 ± 0.08``, ``≥ 0.5``, ``= true``."""
    parts = []
    if "value" in spec:
        v = fmt(spec["value"])
        allowed = []
        if "abs" in spec:
            allowed.append(f"± {fmt(spec['abs'])}")
        if "rel" in spec:
            allowed.append(f"± {spec['rel'] * 100:g}%")
        parts.append(f"{v} {' or '.join(allowed)}" if allowed else f"= {v}")
    if "at_least" in spec:
        parts.append(f"≥ {fmt(spec['at_least'])}")
    if "at_most" in spec:
        parts.append(f"≤ {fmt(spec['at_most'])}")
    return ", ".join(parts)


def is_claim(metric: str) -> bool:
    """``claim:<id>`` metrics hold a claim's verdict (written by :mod:`dmlviz.claims`)."""
    return metric.startswith(CLAIM_PREFIX)


def check_metric(value: Any, spec: dict, present: bool = True,
                 claim_name: str | None = None) -> str | None:
    """Check one recorded value against its spec.

    Args:
        value: the recorded value.
        spec: its baseline spec.
        present: whether the run recorded it at all.
        claim_name: the claim id when the metric is a claim's verdict (its regression
            then reads "verdict changed: reproduced → not established").

    Returns:
        ``None`` when the value meets the spec, else the reason it is a regression.
    """
    if not present:
        return "claim not evaluated by the run" if claim_name else "not recorded by the run"
    numeric = any(k in spec for k in ("abs", "rel", "at_least", "at_most"))
    if numeric and value is None:
        return "recorded as null (NaN or inf)"
    if numeric and not is_number(value):
        return f"expected a number, got {value!r}"
    if "value" in spec:
        want = spec["value"]
        if "abs" in spec or "rel" in spec:
            allowed = max(spec.get("abs", 0.0), spec.get("rel", 0.0) * abs(want))
            if not abs(value - want) <= allowed:
                return f"{fmt(value)} is {fmt(abs(value - want))} from {fmt(want)} (allowed {fmt(allowed)})"
        elif not same_value(value, want):
            if claim_name is not None:
                return f"verdict changed: {fmt(want)} → {fmt(value)}"
            return f"{fmt(value)} != expected {fmt(want)}"
    if "at_least" in spec and not value >= spec["at_least"]:
        return f"{fmt(value)} < at_least {fmt(spec['at_least'])}"
    if "at_most" in spec and not value <= spec["at_most"]:
        return f"{fmt(value)} > at_most {fmt(spec['at_most'])}"
    return None

def find_regressions(metrics: dict, entries: dict) -> list[dict]:
    """Every baseline entry the recorded ``metrics`` of one notebook do not meet."""
    out = []
    for name in sorted(entries):
        spec = entries[name]
        reason = check_metric(metrics.get(name), spec, present=name in metrics,
                              claim_name=name[len(CLAIM_PREFIX):] if is_claim(name) else None)
        if reason is not None:
            out.append({"metric": name, "value": metrics.get(name), "baseline": spec.get("value"),
                        "tolerance": tolerance_of(spec), "reason": reason})
    return out


def default_spec(value: Any, source: str) -> dict:
    """The spec ``dmlviz baseline`` writes for a freshly seen metric (to be reviewed)."""
    if is_number(value):
        v = float(f"{value:.6g}") if isinstance(value, float) else value
        if v == 0:
            return {"value": v, "abs": DEFAULT_ZERO_ABS,
                    "why": f"DEFAULT ±{DEFAULT_ZERO_ABS:g} absolute around 0, {source}; review it"}
        return {"value": v, "rel": DEFAULT_REL,
                "why": f"DEFAULT ±{DEFAULT_REL:.0%} relative, {source}; review it: "
                       "measure the spread over seeds and CPU/GPU"}
    return {"value": value, "why": f"DEFAULT exact match, {source}"}


def seed_spec(values: list, source: str) -> dict | None:
    """The spec for one metric seen in several independent runs (seeds), or ``None`` to drop it.

    Strings and bools (claim verdicts among them) match exactly when every run agrees, and
    are not guarded when they differ (a verdict that flips with the seed is noise, not a
    regression: ``None``); integers match exactly when the runs agree; floats get
    ``abs = max(2 × spread over the runs, MIN_ABS)`` around the first run's value.
    """
    first = values[0]
    n = len(values)
    if not all(is_number(v) for v in values) or all(isinstance(v, int) for v in values) \
            and len(set(values)) == 1:
        if len({json.dumps(v) for v in values}) > 1:
            return None
        return {"value": first, "why": f"exact match, {source}"}
    spread = max(values) - min(values)
    tol = float(f"{max(2 * spread, MIN_ABS):.3g}")
    return {"value": float(f"{first:.6g}"), "abs": tol,
            "why": f"{source}: spread over {n} seeds {fmt(spread)}, doubled, at least {MIN_ABS:g}"}


def _merge_seed_runs(summaries: list[dict], names: list[str], source: str,
                     old: dict, changes: list[str]) -> dict:
    notebooks = {}
    for name in names:
        runs = [s["notebooks"][name] for s in summaries]
        before = old.get(name, {})
        after = {k: v for k, v in before.items() if k.startswith("_")}
        metrics = [r.get("metrics", {}) for r in runs]
        has_claims = any(is_claim(m) for m in metrics[0])
        for metric in sorted(metrics[0]):
            values = [m.get(metric) for m in metrics]
            if any(v is None for v in values):
                changes.append(f"{name}: {metric} missing or null in some runs, not guarded")
                continue
            prior = before.get(metric)
            difference = any(w in metric.lower() for w in DIFFERENCE_WORDS)
            if prior is not None and "value" not in prior:  # a bound
                if difference and has_claims:
                    changes.append(f"{name}: dropped the bound on {metric} (it pinned a "
                                   "result's sign; the notebook's claim verdicts guard that)")
                else:
                    after[metric] = prior
                continue
            spec = seed_spec(values, source)
            if spec is None:
                changes.append(f"{name}: {metric} differs across the runs "
                               f"({[fmt(v) for v in values]}): not guarded")
                continue
            if "abs" in spec and spec["abs"] >= abs(spec["value"]) and difference:
                changes.append(f"{name}: dropped {metric} = {fmt(values[0])} (tolerance "
                               f"{fmt(spec['abs'])} >= its size: guards nothing)")
                continue
            if prior is not None and "key" in prior:  # shown in the overview: stays so
                spec["key"] = prior["key"]
            after[metric] = spec
            changes.append(f"{name}: {metric} {describe_tolerance(spec)}")
        notebooks[name] = after
    return notebooks


def make_baseline(run_dirs, out: str | os.PathLike | None = None, fresh: bool = False,
                  root: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """Write a baseline file from finished runs (``dmlviz baseline DIR [DIR ...]``).

    With **one** run: notebooks that succeeded get their recorded metrics. A metric already
    in the existing baseline keeps its tolerance and ``why`` and only gets the new ``value``
    (bound-only specs are kept as they are), unless ``fresh``. New metrics get
    :func:`default_spec`. Metrics a succeeded notebook no longer records are dropped; entries
    of notebooks that failed or were not run are kept.

    With **several** runs (the same notebooks run with independent seeds): every notebook
    that succeeded in all of them gets its tolerances re-derived from the spread over the
    runs (:func:`seed_spec`); the values are the first run's (the one CI repeats). A notebook
    that trains seeds ``seed, seed + 1, …`` needs runs whose seed sets do not overlap, e.g.
    ``-p seed 0``, ``10``, ``20``. Bound-only specs already in the file are kept, except, in a
    notebook that records claim verdicts, bounds on difference metrics (names with
    minus/gain/diff/delta/change): they pinned a result's sign, which the verdict now guards.
    A difference metric whose tolerance is at least its size guards nothing and is dropped.

    Args:
        run_dirs: a run directory holding ``summary.json``, or a list of them.
        out: the baseline file; default ``<root>/tests/baselines/<profile>.json``.
        fresh: ignore the existing file's tolerances.
        root: the project root for the default ``out`` (default: the current directory).

    Returns:
        The written path and a list of human-readable changes.
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not run_dirs:
        raise ValueError("make_baseline needs at least one run directory")
    summaries = [load_summary(d) for d in run_dirs]
    summary = summaries[0]
    profile = summary.get("profile", "quick")
    if any(s.get("profile", "quick") != profile for s in summaries):
        raise ValueError(f"run_dirs: the runs mix profiles {[s.get('profile') for s in summaries]}")
    out = Path(out) if out else Path(root or ".") / "tests" / "baselines" / f"{profile}.json"
    old = load_baseline(out) if out.exists() and not fresh else {"notebooks": {}}
    stamp = summary.get("started", "")[:10]
    source = f"from run {Path(run_dirs[0]).name} (profile {profile}, device " \
             f"{summary.get('device_resolved') or summary.get('device')}, {stamp})"
    notebooks = {k: dict(v) for k, v in old.get("notebooks", {}).items()}
    changes = []
    if len(summaries) > 1:
        seeds = [s.get("parameters", {}).get("seed") for s in summaries]
        ok = [n for n, nb in summary.get("notebooks", {}).items()
              if all(s.get("notebooks", {}).get(n, {}).get("status") == "ok" for s in summaries)]
        skipped = set(summary.get("notebooks", {})) - set(ok)
        changes += [f"{n}: not ok in every run, baseline entries left unchanged" for n in skipped]
        source = f"runs {[Path(d).name for d in run_dirs]} (seeds {seeds}, profile {profile}, " \
                 f"device {summary.get('device_resolved')}, {stamp})"
        notebooks.update(_merge_seed_runs(summaries, ok, source, old.get("notebooks", {}),
                                          changes))
        return _write_baseline(out, old, profile, notebooks), changes
    if summary.get("parameters"):
        changes.append(f"warning: that run overrode parameters {summary['parameters']}")
    for name, nb in summary.get("notebooks", {}).items():
        if nb.get("status") != "ok":
            changes.append(f"{name}: status {nb.get('status')}, baseline entries left unchanged")
            continue
        before = notebooks.get(name, {})
        after = {k: v for k, v in before.items() if k.startswith("_")}
        for metric, value in sorted(nb.get("metrics", {}).items()):
            spec = before.get(metric)
            if spec is None:
                after[metric] = default_spec(value, source)
                changes.append(f"{name}: added {metric} = {fmt(value)}")
            elif "value" in spec and not same_value(spec["value"], value):
                new_value = float(f"{value:.6g}") if isinstance(value, float) else value
                after[metric] = {**spec, "value": new_value}
                changes.append(f"{name}: {metric} {fmt(spec['value'])} -> {fmt(value)} "
                               f"(tolerance kept: {describe_tolerance(spec)})")
            else:
                after[metric] = spec
        for metric in before:
            if not metric.startswith("_") and metric not in nb.get("metrics", {}):
                changes.append(f"{name}: dropped {metric} (no longer recorded)")
        notebooks[name] = after
    return _write_baseline(out, old, profile, notebooks), changes


def _write_baseline(out: Path, old: dict, profile: str, notebooks: dict) -> Path:
    data = {"_doc": old.get("_doc", BASELINE_DOC), "profile": profile,
            "notebooks": dict(sorted(notebooks.items()))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out

