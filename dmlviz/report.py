"""The human side of a run: ``summary.md``, the offline ``index.html`` and the OLD-vs-NEW
comparison of ``dmlviz report``.

Expected metrics, tolerances and what counts as a regression are in :mod:`dmlviz.baseline`;
the run itself and the ``summary.json`` schema these pages read are in :mod:`dmlviz.runner`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

from dmlviz.baseline import (
    baseline_entries,
    describe_tolerance,
    fmt,
    is_number,
    load_summary,
    same_value,
)
from dmlviz.ledger import LEDGER_CSS, ledger_html, ledger_markdown, verdict_changes

# --------------------------------------------------------------------------- formatting

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
    verdict = ("**ran OK**: every notebook succeeded and no metric regressed" if not probs else
               f"**NOT OK**: {len(probs)} problem(s)")
    lines = [f"# dmlviz run {summary.get('started', '')}", "",
             f"profile `{summary.get('profile')}` · device `{summary.get('device')}`"
             f" ({summary.get('device_resolved', '?')}) · {len(nbs)} notebook(s) · "
             f"{fmt_duration(summary.get('duration_s'))} · baseline "
             f"`{summary.get('baseline') or 'none'}`", ""] + ledger_markdown(summary) + [
             "## Runs", "", verdict, "",
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
.badge.ok{background:var(--okbg);color:var(--ok)}.badge.failed,.badge.kernel_died,.badge.worker_died{background:var(--badbg);
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
    if summary.get("book"):
        meta.append(f'<a href="{_e(summary["book"])}"><b>course book</b></a>')
    if summary.get("scheduler"):
        meta.append(f"Dask scheduler <code>{_e(summary['scheduler'])}</code>")
    if summary.get("sweep"):  # a dmlviz sweep: its page with the tables and plots
        meta.append(f'<a href="{_e(summary["sweep"])}"><b>sweep page</b></a>')
    if probs:
        verdict = (f'<div class="verdict bad">✗ {len(probs)} problem(s)<ul>'
                   + "".join(f"<li>{_e(p)}</li>" for p in probs) + "</ul></div>")
    else:
        verdict = (f'<div class="verdict ok">✓ Ran: all {len(nbs)} notebook(s) succeeded and no '
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
            f'</title><style>{CSS}{LEDGER_CSS}</style></head><body><main><h1>dmlviz report</h1>'
            f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>'
            f'{ledger_html(summary)}{verdict}{table}{"".join(cards)}<footer>{foot}</footer></main></body></html>\n')


# --------------------------------------------------------------------------- OLD vs NEW

def _delta(old, new) -> str:
    if is_number(old) and is_number(new):
        d = new - old
        if d == 0:
            return "0"
        rel = f" ({d / abs(old):+.1%})" if old else ""
        return f"{d:+.4g}{rel}"
    return "" if same_value(old, new) else "changed"


def compare_runs(old_dir: str | os.PathLike, new_dir: str | os.PathLike) -> tuple[str, str]:
    """Compare two runs side by side (``dmlviz report OLD NEW``).

    Returns:
        ``(markdown, html)`` texts: the claims whose verdict changed, per notebook the status
        and duration in both runs, then every metric with both values and the difference.
    """
    old, new = load_summary(old_dir), load_summary(new_dir)
    on, nn = old.get("notebooks", {}), new.get("notebooks", {})
    names = list(nn) + [n for n in on if n not in nn]
    md = [f"# dmlviz: {Path(old_dir).name} → {Path(new_dir).name}", "",
          f"old: profile `{old.get('profile')}`, device `{old.get('device_resolved', old.get('device'))}`,"
          f" {old.get('started')}  ", f"new: profile `{new.get('profile')}`, device "
          f"`{new.get('device_resolved', new.get('device'))}`, {new.get('started')}", ""]
    changed = verdict_changes(old, new)
    md += ["## Claims whose verdict changed", ""] + (
        [f"- `{cid}`: {a} → {b}" for cid, a, b in changed] or ["none"]) + [""]
    changed_h = ('<div class="card"><h2>Claims whose verdict changed</h2><table><tbody>'
                 + "".join(f"<tr class=reg><td><code>{_e(cid)}</code></td><td>{_e(a)} → {_e(b)}"
                           "</td></tr>" for cid, a, b in changed)
                 + "</tbody></table></div>") if changed else \
        '<div class="card"><h2>Claims whose verdict changed</h2><p class="mut">none</p></div>'
    md += ["| notebook | status old → new | duration old → new | Δ duration |", "|---|---|---|---|"]
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
            f', {_e(new.get("started"))}</span></div>{changed_h}<div class="card"><table><thead><tr><th>'
            'notebook</th><th>status</th><th>duration</th><th>Δ</th></tr></thead><tbody>'
            + "".join(rows_h) + '</tbody></table></div><div class="card"><table><thead><tr><th>'
            'notebook</th><th>metric</th><th>old</th><th>new</th><th>Δ</th></tr></thead><tbody>'
            + "".join(metric_h) + f"</tbody></table></div><footer>generated "
            f"{_e(_dt.datetime.now().isoformat(timespec='seconds'))}</footer></main></body></html>\n")
    return "\n".join(md) + "\n", page
