"""The run's claims ledger: which paper claims reproduced, as ``claims.json``, Markdown and HTML.

Each notebook writes the claims it evaluated with :mod:`dmlviz.claims` to its own
``claims.json``; the runner puts them into ``summary.json`` (``notebooks.<name>.claims``).
This module turns them into the run's ledger — one row per claim, grouped by paper, with the
verdict, effect, interval and seeds — that leads ``summary.md`` and ``index.html``, and lists
the claims whose verdict changed between two runs (``dmlviz report OLD NEW``). It reads only
the summary (no tensors, no SciPy), so the ``dmlviz`` command stays light.
"""

from __future__ import annotations

import html
from typing import Any

VERDICT_CLASS = {"reproduced": "ok", "reversed": "bad", "not established": "warn",
                 "not testable here": "mut"}


def ledger(summary: dict) -> list[dict]:
    """Every claim evaluated in the run, each with its notebook, profile, device and a link.

    Returns:
        A list of claim dicts (the fields of :class:`dmlviz.claims.Result` plus ``paper``,
        ``where``, ``quote``, ``compared``, ``notebook``, ``profile``, ``device`` and ``link``
        — the notebook's HTML at the cell that printed the claims table), sorted by paper
        and claim id.
    """
    rows = []
    for name, nb in summary.get("notebooks", {}).items():
        link = nb.get("html")
        if link and nb.get("claims_cell"):
            link += f"#cell-id={nb['claims_cell']}"
        for c in nb.get("claims", []):
            rows.append({**c, "notebook": name, "profile": summary.get("profile"),
                         "device": summary.get("device_resolved"), "link": link})
    return sorted(rows, key=lambda r: (r.get("paper", ""), r["id"]))


def _interval(c: dict) -> str:
    if c.get("low") is None or c.get("high") is None:
        return ""
    return f"[{c['low']:+.3f}, {c['high']:+.3f}]"


def _effect(c: dict) -> str:
    return "" if c.get("effect") is None else f"{c['effect']:+.3f}"


def _counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _by_paper(rows: list[dict]) -> dict[str, list[dict]]:
    papers: dict[str, list[dict]] = {}
    for r in rows:
        papers.setdefault(r.get("paper_title") or r.get("paper", "?"), []).append(r)
    return papers


def ledger_markdown(summary: dict) -> list[str]:
    """The ledger as Markdown lines (empty when no notebook evaluated a claim)."""
    rows = ledger(summary)
    if not rows:
        return []
    lines = ["## Claims ledger", "", f"{len(rows)} claim(s): {_counts(rows)}.", ""]
    for paper, claims in _by_paper(rows).items():
        lines += [f"### {paper}", "", "| claim | where | compared | effect | 95 % interval | "
                  "seeds agree | verdict |", "|---|---|---|---|---|---|---|"]
        for c in claims:
            agree = f"{c.get('agree', 0)}/{c.get('seeds', 0)}" if c.get("seeds") else ""
            verdict = f"**{c['verdict']}**" + (f" ({c['reason']})" if c.get("reason") else "")
            lines.append(f"| `{c['id']}` | {c.get('where', '')} | {c.get('compared', '')} | "
                         f"{_effect(c)} | {_interval(c)} | {agree} | {verdict} |")
        lines.append("")
    return lines


LEDGER_CSS = """
.ledger .v{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:700;
white-space:nowrap}.ledger .v.ok{background:var(--okbg);color:var(--ok)}
.ledger .v.bad{background:var(--badbg);color:var(--bad)}.ledger .v.warn{background:var(--warnbg);
color:var(--warn)}.ledger .v.mut{border:1px solid var(--line);color:var(--mut)}
.ledger h3{font-size:15px;margin:16px 0 6px}.ledger q{color:var(--mut);font-size:12.5px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def ledger_html(summary: dict, title: str = "Claims ledger", card: str = "card") -> str:
    """The ledger as an HTML section of class ``card`` (the page's card style) and ``ledger``;
    an empty string when no claim was evaluated."""
    rows = ledger(summary)
    if not rows:
        return ""
    parts = [f'<section class="{_e(card)} ledger" id="claims"><h2>{_e(title)}</h2>'
             f'<div class="mut">{len(rows)} claim(s) from the papers: {_e(_counts(rows))}. '
             "Effect = mean paired difference over independent seeds; interval 95 % — about one "
             "in twenty claims without a true effect still shows one by chance.</div>"]
    for paper, claims in _by_paper(rows).items():
        body = []
        for c in claims:
            cls = VERDICT_CLASS.get(c["verdict"], "mut")
            name = (f'<a href="{_e(c["link"])}"><code>{_e(c["id"])}</code></a>' if c.get("link")
                    else f"<code>{_e(c['id'])}</code>")
            agree = f"{c.get('agree', 0)}/{c.get('seeds', 0)}" if c.get("seeds") else ""
            reason = f'<br><span class="mut">{_e(c["reason"])}</span>' if c.get("reason") else ""
            body.append(f'<tr><td>{name}<br><q>{_e(c.get("quote", ""))}</q></td>'
                        f'<td>{_e(c.get("where", ""))}</td><td>{_e(c.get("compared", ""))}</td>'
                        f'<td class="num">{_e(_effect(c))}</td><td class="num">'
                        f'{_e(_interval(c))}</td><td class="num">{_e(agree)}</td>'
                        f'<td><span class="v {cls}">{_e(c["verdict"])}</span>{reason}</td></tr>')
        parts.append(f"<h3>{_e(paper)}</h3><table><thead><tr><th>claim</th><th>where</th>"
                     "<th>compared</th><th>effect</th><th>95 % interval</th><th>seeds agree</th>"
                     f"<th>verdict</th></tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(parts) + "</section>"


def verdict_changes(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """``(claim id, old verdict, new verdict)`` for every claim whose verdict differs between
    two run summaries (``"not evaluated"`` where a run did not evaluate it)."""
    before = {c["id"]: c["verdict"] for c in ledger(old)}
    after = {c["id"]: c["verdict"] for c in ledger(new)}
    return [(cid, before.get(cid, "not evaluated"), after.get(cid, "not evaluated"))
            for cid in sorted(set(before) | set(after))
            if before.get(cid) != after.get(cid)]
