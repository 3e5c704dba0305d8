"""Baselines, tolerances and the human side of a run: summary.md, index.html, comparisons.

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
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

SPEC_KEYS = ("value", "abs", "rel", "at_least", "at_most", "why", "key")
DEFAULT_REL = 0.10
DEFAULT_ZERO_ABS = 1e-6
BASELINE_DOC = (
    "Expected metrics per notebook for this run profile. Each metric: {'value': v, 'abs': a} "
    "and/or 'rel': r means |x - v| <= max(a, r*|v|); 'value' alone means an exact match; "
    "'at_least'/'at_most' are inclusive bounds. 'why' says how the tolerance was chosen. "
    "A metric missing from a run, or outside its tolerance, is a regression (see dmlviz/report.py). "
    "Entries whose 'why' starts with 'DEFAULT' were written by `dmlviz baseline` and still need a "
    "measured tolerance (spread over seeds and CPU/GPU)."
)


# --------------------------------------------------------------------------- baselines

def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


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
            if not _is_number(spec[k]) or spec[k] < 0:
                raise ValueError(f"{where}: '{k}' must be a non-negative number, got {spec[k]!r}")
            if not _is_number(spec["value"]):
                raise ValueError(f"{where}: '{k}' needs a numeric 'value', got {spec['value']!r}")
    for k in ("at_least", "at_most"):
        if k in spec and not _is_number(spec[k]):
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


def check_metric(value: Any, spec: dict, present: bool = True) -> str | None:
    """Check one recorded value against its spec.

    Returns:
        ``None`` when the value meets the spec, else the reason it is a regression.
    """
    if not present:
        return "not recorded by the run"
    numeric = any(k in spec for k in ("abs", "rel", "at_least", "at_most"))
    if numeric and value is None:
        return "recorded as null (NaN or inf)"
    if numeric and not _is_number(value):
        return f"expected a number, got {value!r}"
    if "value" in spec:
        want = spec["value"]
        if "abs" in spec or "rel" in spec:
            allowed = max(spec.get("abs", 0.0), spec.get("rel", 0.0) * abs(want))
            if not abs(value - want) <= allowed:
                return f"{fmt(value)} is {fmt(abs(value - want))} from {fmt(want)} (allowed {fmt(allowed)})"
        elif not _same(value, want):
            return f"{fmt(value)} != expected {fmt(want)}"
    if "at_least" in spec and not value >= spec["at_least"]:
        return f"{fmt(value)} < at_least {fmt(spec['at_least'])}"
    if "at_most" in spec and not value <= spec["at_most"]:
        return f"{fmt(value)} > at_most {fmt(spec['at_most'])}"
    return None


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def find_regressions(metrics: dict, entries: dict) -> list[dict]:
    """Every baseline entry the recorded ``metrics`` of one notebook do not meet."""
    out = []
    for name in sorted(entries):
        spec = entries[name]
        reason = check_metric(metrics.get(name), spec, present=name in metrics)
        if reason is not None:
            out.append({"metric": name, "value": metrics.get(name), "baseline": spec.get("value"),
                        "tolerance": tolerance_of(spec), "reason": reason})
    return out


def default_spec(value: Any, source: str) -> dict:
    """The spec ``dmlviz baseline`` writes for a freshly seen metric (to be reviewed)."""
    if _is_number(value):
        v = float(f"{value:.6g}") if isinstance(value, float) else value
        if v == 0:
            return {"value": v, "abs": DEFAULT_ZERO_ABS,
                    "why": f"DEFAULT ±{DEFAULT_ZERO_ABS:g} absolute around 0, {source}; review it"}
        return {"value": v, "rel": DEFAULT_REL,
                "why": f"DEFAULT ±{DEFAULT_REL:.0%} relative, {source}; review it: "
                       "measure the spread over seeds and CPU/GPU"}
    return {"value": value, "why": f"DEFAULT exact match, {source}"}


def make_baseline(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                  fresh: bool = False, root: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """Write a baseline file from a finished run (``dmlviz baseline DIR``).

    Notebooks that succeeded get their recorded metrics. A metric already in the existing
    baseline keeps its tolerance and ``why`` and only gets the new ``value`` (bound-only
    specs are kept as they are), unless ``fresh``. New metrics get :func:`default_spec`.
    Metrics a succeeded notebook no longer records are dropped; entries of notebooks that
    failed or were not run are kept.

    Args:
        run_dir: a run directory holding ``summary.json``.
        out: the baseline file; default ``<root>/tests/baselines/<profile>.json``.
        fresh: ignore the existing file's tolerances.
        root: the project root for the default ``out`` (default: the current directory).

    Returns:
        The written path and a list of human-readable changes.
    """
    summary = load_summary(run_dir)
    profile = summary.get("profile", "quick")
    out = Path(out) if out else Path(root or ".") / "tests" / "baselines" / f"{profile}.json"
    old = load_baseline(out) if out.exists() and not fresh else {"notebooks": {}}
    stamp = summary.get("started", "")[:10]
    source = f"from run {Path(run_dir).name} (profile {profile}, device " \
             f"{summary.get('device_resolved') or summary.get('device')}, {stamp})"
    notebooks = {k: dict(v) for k, v in old.get("notebooks", {}).items()}
    changes = []
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
            elif "value" in spec and not _same(spec["value"], value):
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
    data = {"_doc": old.get("_doc", BASELINE_DOC), "profile": profile,
            "notebooks": dict(sorted(notebooks.items()))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return out, changes


# --------------------------------------------------------------------------- formatting

def fmt(v: Any) -> str:
    """Format a metric value compactly (4 significant digits for floats)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_duration(s: float | None) -> str:
    """``42.1 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def load_summary(run_dir: str | os.PathLike) -> dict:
    """Read ``summary.json`` of a run directory, with a clear error when it is absent."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a dmlviz run directory: no summary.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def key_metrics(nb: dict, entries: dict, limit: int = 5) -> list[str]:
    """The metrics to show in the overview: those the baseline marks ``"key": true``, else
    the first ``limit`` recorded ones."""
    recorded = nb.get("metrics", {})
    keys = [m for m, spec in entries.items() if spec.get("key") and m in recorded]
    return keys or list(recorded)[:limit]


def problems(summary: dict) -> list[str]:
    """One line per reason the run is not green (empty list when it is)."""
    out = []
    for name, nb in summary.get("notebooks", {}).items():
        if nb["status"] != "ok":
            err = nb.get("error") or {}
            where = f" at {_where(err)}" if err.get("cell") is not None else ""
            out.append(f"{name}: {nb['status']}{where}: {err.get('ename', '')}: "
                       f"{_one_line(err.get('evalue', ''))}")
        for r in nb.get("regressions", []):
            out.append(f"{name}: regression {r['metric']}: {r['reason']}")
    return out


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- summary.md

def summary_markdown(summary: dict, baseline: dict | None = None) -> str:
    """The run as Markdown: verdict, overview table, problems, metrics per notebook."""
    nbs = summary.get("notebooks", {})
    probs = problems(summary)
    verdict = ("**OK**: every notebook succeeded and no metric regressed" if not probs else
               f"**NOT OK**: {len(probs)} problem(s)")
    lines = [f"# dmlviz run {summary.get('started', '')}", "",
             f"profile `{summary.get('profile')}` · device `{summary.get('device')}`"
             f" ({summary.get('device_resolved', '?')}) · {len(nbs)} notebook(s) · "
             f"{fmt_duration(summary.get('duration_s'))} · baseline "
             f"`{summary.get('baseline') or 'none'}`", "", verdict, "",
             "| notebook | status | duration | regressions | metrics |",
             "|---|---|---|---|---|"]
    for name, nb in nbs.items():
        lines.append(f"| {name} | {nb['status']} | {fmt_duration(nb.get('duration_s'))} | "
                     f"{len(nb.get('regressions', []))} | {len(nb.get('metrics', {}))} |")
    if probs:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in probs]
    for name, nb in nbs.items():
        lines += ["", f"## {name}" + (f" — {nb['title']}" if nb.get("title") else ""), ""]
        if nb.get("error"):
            e = nb["error"]
            lines += [f"{nb['status']} at {_where(e)}: `{e.get('ename')}: "
                      f"{_one_line(e.get('evalue', ''))}`", ""]
        regressed = {r["metric"]: r for r in nb.get("regressions", [])}
        if nb.get("metrics") or regressed:
            lines += ["| metric | value | expected | check |", "|---|---|---|---|"]
            entries = baseline_entries(baseline, name)
            for m in sorted(set(nb.get("metrics", {})) | set(regressed)):
                value = fmt(nb["metrics"][m]) if m in nb.get("metrics", {}) else "missing"
                mark = ("**REGRESSION**: " + regressed[m]["reason"]) if m in regressed else (
                    "ok" if m in entries else "")
                expected = describe_tolerance(entries[m]) if m in entries else ""
                lines.append(f"| `{m}` | {value} | {expected} | {mark} |")
        else:
            lines.append("no metrics recorded")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- index.html

CSS = """
:root{--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--mut:#667085;--line:#e4e7ec;--ok:#127a3e;
--okbg:#e3f5ea;--bad:#b42318;--badbg:#fde8e6;--warn:#a15c07;--warnbg:#fdf1dc;--acc:#3356c4}
@media (prefers-color-scheme:dark){:root{--bg:#14161b;--card:#1d2027;--fg:#e6e8ec;--mut:#98a1b2;
--line:#2c313b;--okbg:#173b26;--ok:#7ad39b;--badbg:#45201d;--bad:#ff9b8f;--warnbg:#3e2f14;
--warn:#f3c26b;--acc:#8aa7ff}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 60px}h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:0}a{color:var(--acc);text-decoration:none}a:hover{text-decoration:underline}
.meta{color:var(--mut);font-size:13.5px}.meta span{margin-right:14px;display:inline-block;overflow-wrap:anywhere}
.verdict{margin:18px 0 22px;padding:14px 18px;border-radius:10px;font-weight:600;font-size:16px}
.verdict.ok{background:var(--okbg);color:var(--ok)}.verdict.bad{background:var(--badbg);color:var(--bad)}
.verdict ul{margin:8px 0 0;padding-left:20px;font-weight:400;font-size:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 20px;
margin:0 0 18px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
table{border-collapse:collapse;width:100%;font-size:14px}th{text-align:left;color:var(--mut);
font-weight:600;font-size:12.5px;text-transform:uppercase;letter-spacing:.03em}
th,td{padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:700;
letter-spacing:.02em;text-transform:uppercase;white-space:nowrap}
.badge.ok{background:var(--okbg);color:var(--ok)}.badge.failed,.badge.kernel_died{background:var(--badbg);
color:var(--bad)}.badge.timeout{background:var(--warnbg);color:var(--warn)}
.chip{display:inline-block;margin:0 6px 4px 0;padding:1px 8px;border:1px solid var(--line);
border-radius:6px;font-size:12.5px;white-space:nowrap}.chip b{font-weight:600}
.reg,.reg td,.chip.reg{color:var(--bad)}tr.reg td{background:var(--badbg)}.chip.reg{border-color:var(--bad)}
.pass{color:var(--ok)}.mut{color:var(--mut)}code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
.head{display:flex;align-items:center;gap:12px;flex-wrap:wrap;margin-bottom:10px}
.head .links{margin-left:auto;font-size:13.5px}.head .links a{margin-left:12px}
.err{background:var(--badbg);color:var(--bad);border-radius:8px;padding:10px 12px;margin:8px 0 12px;
white-space:pre-wrap;font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace}
.gallery{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px}.gallery a{display:block;width:220px;
border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff;color:#333;font-size:12px}
.gallery img{display:block;width:100%;height:150px;object-fit:contain;background:#fff}
.gallery span{display:block;padding:4px 8px;border-top:1px solid #eee;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.gallery a.html{display:flex;align-items:center;
justify-content:center;height:180px;font-size:13px;color:var(--acc)}
details summary{cursor:pointer;color:var(--mut);font-size:13.5px;margin-top:10px}
details.metrics summary{font-size:14px;color:var(--fg);margin:14px 0 6px}
details.metrics td .mut{font-size:12.5px}
footer{color:var(--mut);font-size:12.5px;margin-top:30px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _where(err: dict) -> str:
    """``In [5] (cell 4)`` — where a notebook stopped, as a reader and an editor see it."""
    if err.get("cell") is None:
        return "outside a cell"
    label = f"In [{err['exec_count']}] " if err.get("exec_count") else ""
    return f"{label}(cell {err['cell']})" if label else f"cell {err['cell']}"


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status.replace("_", " "))}</span>'


def _metric_rows(nb: dict, entries: dict) -> str:
    regressed = {r["metric"]: r for r in nb.get("regressions", [])}
    rows = []
    for m in sorted(set(nb.get("metrics", {})) | set(regressed)):
        has = m in nb.get("metrics", {})
        spec = entries.get(m)
        if m in regressed:
            check = f'<td class="reg">✗ {_e(regressed[m]["reason"])}</td>'
        elif spec is not None:
            check = '<td class="pass">✓</td>'
        else:
            check = '<td class="mut">not in baseline</td>'
        why = f'<br><span class="mut">{_e(spec["why"])}</span>' if spec and spec.get("why") else ""
        rows.append(f'<tr class="{"reg" if m in regressed else ""}"><td><code>{_e(m)}</code></td>'
                    f'<td class="num">{_e(fmt(nb["metrics"][m])) if has else "missing"}</td>'
                    f'<td>{_e(describe_tolerance(spec)) if spec else ""}{why}</td>{check}</tr>')
    return "".join(rows)


def render_index(summary: dict, baseline: dict | None = None) -> str:
    """The run's offline ``index.html`` (inline CSS, no script, relative links only)."""
    nbs = summary.get("notebooks", {})
    probs = problems(summary)
    env = summary.get("environment", {})
    meta = [f"profile <b>{_e(summary.get('profile'))}</b>",
            f"device <b>{_e(summary.get('device'))}</b> ({_e(summary.get('device_resolved', '?'))})",
            f"started {_e(summary.get('started', ''))}",
            f"total {_e(fmt_duration(summary.get('duration_s')))}",
            f"jobs {_e(summary.get('jobs'))}", f"cell timeout {_e(summary.get('timeout_s'))} s",
            f"baseline {_e(summary.get('baseline') or 'none')}"]
    if env.get("git_commit"):
        meta.append(f"commit <code>{_e(env['git_commit'])}</code>")
    if summary.get("parameters"):
        meta.append(f"overrides <code>{_e(json.dumps(summary['parameters']))}</code>")
    if probs:
        verdict = (f'<div class="verdict bad">✗ {len(probs)} problem(s)<ul>'
                   + "".join(f"<li>{_e(p)}</li>" for p in probs) + "</ul></div>")
    else:
        verdict = (f'<div class="verdict ok">✓ All {len(nbs)} notebook(s) succeeded and no '
                   "metric regressed</div>")
    rows = []
    for name, nb in nbs.items():
        entries = baseline_entries(baseline, name)
        regs = {r["metric"] for r in nb.get("regressions", [])}
        keys = key_metrics(nb, entries)
        heads = {m.split(".", 1)[0] for m in keys}
        strip = len(heads) == 1 and all("." in m for m in keys)  # "quickstart." on every chip
        chips = "".join(
            f'<span class="chip{" reg" if m in regs else ""}" title="{_e(m)}">'
            f'{_e(m.split(".", 1)[1] if strip else m)} <b>{_e(fmt(nb["metrics"][m]))}</b></span>'
            for m in keys)
        regcell = ("".join(f'<div class="reg">✗ {_e(r["metric"])}: {_e(r["reason"])}</div>'
                           for r in nb.get("regressions", []))
                   or ('<span class="pass">none</span>' if entries else
                       '<span class="mut">no baseline</span>'))
        link = f'<a href="{_e(nb["html"])}">{_e(name)}</a>' if nb.get("html") else _e(name)
        rows.append(f'<tr class="{"reg" if nb["status"] != "ok" else ""}"><td>{link}<br>'
                    f'<span class="mut">{_e(nb.get("title", ""))}</span></td>'
                    f'<td>{_badge(nb["status"])}</td>'
                    f'<td class="num">{_e(fmt_duration(nb.get("duration_s")))}</td>'
                    f'<td>{chips or "<span class=mut>–</span>"}</td><td>{regcell}</td></tr>')
    table = ('<div class="card"><table><thead><tr><th>notebook</th><th>status</th><th>duration'
             '</th><th>key metrics</th><th>regressions</th></tr></thead><tbody>'
             + "".join(rows) + "</tbody></table></div>")
    cards = []
    for name, nb in nbs.items():
        entries = baseline_entries(baseline, name)
        links = "".join(f'<a href="{_e(nb[k])}">{label}</a>' for k, label in
                        (("html", "notebook (HTML)"), ("executed", ".ipynb"), ("log", "log"))
                        if nb.get(k))
        err = ""
        if nb.get("error"):
            e = nb["error"]
            cell = _where(e)
            err = (f'<div class="err">{_e(nb["status"])} at {_e(cell)}: {_e(e.get("ename"))}: '
                   f'{_e(e.get("evalue", ""))}</div>')
        figs = []
        for f in nb.get("figures", []):
            stem = Path(f).stem
            if f.endswith((".png", ".svg", ".jpg")):
                figs.append(f'<a href="{_e(f)}" title="{_e(stem)}"><img src="{_e(f)}" '
                            f'alt="{_e(stem)}"><span>{_e(stem)}</span></a>')
            elif f.endswith(".html"):
                figs.append(f'<a class="html" href="{_e(f)}">▶ interactive: {_e(stem)}</a>')
        metrics = _metric_rows(nb, entries)
        n_metrics = len(set(nb.get("metrics", {})) | {r["metric"] for r in nb.get("regressions", [])})
        n_regs = len(nb.get("regressions", []))
        checked = sum(1 for m in entries if m in nb.get("metrics", {}))
        label = (f"{n_metrics} metric(s) · {checked} checked against the baseline · "
                 + (f'<span class="reg">{n_regs} regression(s)</span>' if n_regs else "none regressed"))
        opened = " open" if n_regs or n_metrics <= 8 else ""
        body = (f'<details class="metrics"{opened}><summary>{label}</summary><table><thead><tr>'
                '<th>metric</th><th>value</th><th>expected</th><th>check</th></tr></thead>'
                f'<tbody>{metrics}</tbody></table></details>' if metrics
                else '<p class="mut">no metrics recorded</p>')
        params = nb.get("parameters", {})
        cards.append(
            f'<section class="card" id="{_e(name)}"><div class="head"><h2>{_e(name)}</h2>'
            f'{_badge(nb["status"])}<span class="mut">{_e(fmt_duration(nb.get("duration_s")))}'
            f'</span><span class="links">{links}</span></div>'
            f'<div class="mut">{_e(nb.get("title", ""))}</div>{err}'
            + (f'<div class="gallery">{"".join(figs)}</div>' if figs else "") + body
            + (f'<details><summary>parameters</summary><code>{_e(json.dumps(params))}</code>'
               '</details>' if params else "") + "</section>")
    foot = (f"dmlviz {_e(env.get('dmlviz', ''))} · python {_e(env.get('python', ''))} · "
            f"{_e(env.get('platform', ''))} · {_e(env.get('cpu_count', '?'))} CPU(s) · "
            "summary.json / summary.md next to this page")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>dmlviz report · {_e(summary.get("profile"))} · {_e(summary.get("started"))}'
            f'</title><style>{CSS}</style></head><body><main><h1>dmlviz regression report</h1>'
            f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>{verdict}'
            f'{table}{"".join(cards)}<footer>{foot}</footer></main></body></html>\n')


# --------------------------------------------------------------------------- OLD vs NEW

def _delta(old, new) -> str:
    if _is_number(old) and _is_number(new):
        d = new - old
        if d == 0:
            return "0"
        rel = f" ({d / abs(old):+.1%})" if old else ""
        return f"{d:+.4g}{rel}"
    return "" if _same(old, new) else "changed"


def compare_runs(old_dir: str | os.PathLike, new_dir: str | os.PathLike) -> tuple[str, str]:
    """Compare two runs side by side (``dmlviz report OLD NEW``).

    Returns:
        ``(markdown, html)`` texts: per notebook the status and duration in both runs,
        then every metric with both values and the difference.
    """
    old, new = load_summary(old_dir), load_summary(new_dir)
    on, nn = old.get("notebooks", {}), new.get("notebooks", {})
    names = list(nn) + [n for n in on if n not in nn]
    md = [f"# dmlviz: {Path(old_dir).name} → {Path(new_dir).name}", "",
          f"old: profile `{old.get('profile')}`, device `{old.get('device_resolved', old.get('device'))}`,"
          f" {old.get('started')}  ", f"new: profile `{new.get('profile')}`, device "
          f"`{new.get('device_resolved', new.get('device'))}`, {new.get('started')}", "",
          "| notebook | status old → new | duration old → new | Δ duration |", "|---|---|---|---|"]
    rows_h, metric_h = [], []
    for n in names:
        o, w = on.get(n, {}), nn.get(n, {})
        so, sn = o.get("status", "absent"), w.get("status", "absent")
        do, dn = o.get("duration_s"), w.get("duration_s")
        dd = (f"{dn - do:+.1f} s" + (f" ({(dn - do) / do:+.0%})" if do else "")
              if do is not None and dn is not None else "")
        md.append(f"| {n} | {so} → {sn} | {fmt_duration(do)} → {fmt_duration(dn)} | {dd} |")
        rows_h.append(f"<tr><td>{_e(n)}</td><td>{_badge(so)} → {_badge(sn)}</td><td class=num>"
                      f"{_e(fmt_duration(do))} → {_e(fmt_duration(dn))}</td><td class=num>{_e(dd)}"
                      "</td></tr>")
    md += ["", "| notebook | metric | old | new | Δ |", "|---|---|---|---|---|"]
    for n in names:
        om, nm = on.get(n, {}).get("metrics", {}), nn.get(n, {}).get("metrics", {})
        for m in sorted(set(om) | set(nm)):
            a = fmt(om[m]) if m in om else "missing"
            b = fmt(nm[m]) if m in nm else "missing"
            d = _delta(om[m], nm[m]) if m in om and m in nm else "—"
            md.append(f"| {n} | `{m}` | {a} | {b} | {d} |")
            cls = ' class="reg"' if (m in om) != (m in nm) or d == "changed" else ""
            metric_h.append(f"<tr{cls}><td>{_e(n)}</td><td><code>{_e(m)}</code></td><td class=num>"
                            f"{_e(a)}</td><td class=num>{_e(b)}</td><td class=num>{_e(d)}</td></tr>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dmlviz compare'
            f'</title><style>{CSS}</style></head><body><main><h1>{_e(Path(old_dir).name)} → '
            f'{_e(Path(new_dir).name)}</h1><div class="meta"><span>old: {_e(old.get("profile"))}, '
            f'{_e(old.get("device_resolved", old.get("device")))}, {_e(old.get("started"))}</span>'
            f'<span>new: {_e(new.get("profile"))}, {_e(new.get("device_resolved", new.get("device")))}'
            f', {_e(new.get("started"))}</span></div><div class="card"><table><thead><tr><th>'
            'notebook</th><th>status</th><th>duration</th><th>Δ</th></tr></thead><tbody>'
            + "".join(rows_h) + '</tbody></table></div><div class="card"><table><thead><tr><th>'
            'notebook</th><th>metric</th><th>old</th><th>new</th><th>Δ</th></tr></thead><tbody>'
            + "".join(metric_h) + f"</tbody></table></div><footer>generated "
            f"{_e(_dt.datetime.now().isoformat(timespec='seconds'))}</footer></main></body></html>\n")
    return "\n".join(md) + "\n", page
