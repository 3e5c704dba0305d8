"""The course book: a run's executed notebooks as one static, offline site.

``dmlviz book RUN_DIR`` (and ``dmlviz run --book``, which ``make report`` uses) writes
``RUN_DIR/book/``: a cover page (``index.html``) with the chapters and the whole claims ledger,
and one page per chapter — the executed notebook exported by :func:`dmlviz.export.export_html`
with a sidebar of the chapters, previous/next links, the chapter's claims table at the top and
its interactive (plotly) figures linked at the end. Equations render with the offline MathJax
copy; nothing is fetched from the network. The regression report (``index.html`` of the run)
stays beside it and links to the book.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

from dmlviz.baseline import load_summary
from dmlviz.export import copy_mathjax, export_html
from dmlviz.ledger import LEDGER_CSS, ledger_html

BOOK_DIR = "book"
BOOK_CSS = """
:root{--bg:#fff;--card:#fff;--fg:#1d2330;--mut:#667085;--line:#e4e7ec;--ok:#127a3e;--okbg:#e3f5ea;
--bad:#b42318;--badbg:#fde8e6;--warn:#a15c07;--warnbg:#fdf1dc;--acc:#3356c4}
nav.book-side{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;padding:18px 14px;
background:#f6f7f9;border-right:1px solid var(--line);font:14px/1.45 system-ui,sans-serif;z-index:10}
nav.book-side a{display:block;padding:5px 8px;border-radius:6px;color:var(--fg);text-decoration:none}
nav.book-side a:hover{background:#e9ecf2}nav.book-side a.current{background:var(--acc);color:#fff}
nav.book-side .book-title{font-weight:700;font-size:15px;margin-bottom:10px}
body.jp-Notebook,body.book-cover{margin-left:270px!important}
.book-pager{display:flex;justify-content:space-between;gap:12px;margin:14px 0;
font:14px system-ui,sans-serif}.book-pager a{color:var(--acc);text-decoration:none}
.book-card{border:1px solid var(--line);border-radius:10px;padding:12px 16px;margin:10px 0 18px;
font:14px/1.45 system-ui,sans-serif}.book-card table{border-collapse:collapse;width:100%}
.book-card th,.book-card td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);
vertical-align:top}.book-card h2{font-size:17px;margin:0 0 6px}.mut{color:var(--mut)}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
body.book-cover main{max-width:1000px;padding:24px;font:15px/1.5 system-ui,sans-serif}
""" + LEDGER_CSS


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _sidebar(chapters: list[tuple[str, dict]], current: str | None) -> str:
    links = [f'<a href="index.html" class="{"current" if current is None else ""}">Contents '
             "and claims ledger</a>"]
    for name, nb in chapters:
        cls = "current" if name == current else ""
        links.append(f'<a href="{_e(name)}.html" class="{cls}" data-chapter="{_e(name)}">'
                     f'{_e(nb.get("title") or name)}</a>')
    return (f'<nav class="book-side"><div class="book-title">dmlviz — the course</div>'
            f'{"".join(links)}</nav>')


def _pager(chapters: list[tuple[str, dict]], i: int) -> str:
    prev = (f'<a rel="prev" href="{_e(chapters[i - 1][0])}.html">← '
            f'{_e(chapters[i - 1][1].get("title") or chapters[i - 1][0])}</a>' if i > 0
            else '<a rel="prev" href="index.html">← Contents</a>')
    nxt = (f'<a rel="next" href="{_e(chapters[i + 1][0])}.html">'
           f'{_e(chapters[i + 1][1].get("title") or chapters[i + 1][0])} →</a>'
           if i + 1 < len(chapters) else "<span></span>")
    return f'<div class="book-pager">{prev}{nxt}</div>'


def _book_summary(summary: dict, names: list[str]) -> dict:
    """The summary with each notebook's page pointing into the book (for ledger links)."""
    nbs = {n: {**summary["notebooks"][n], "html": f"{n}.html"} for n in names}
    return {**summary, "notebooks": nbs}


def _interactive(run_dir: Path, out: Path, name: str, nb: dict) -> str:
    links = []
    for rel in nb.get("figures", []):
        if rel.endswith(".html") and (run_dir / rel).is_file():
            target = out / "figures" / name / Path(rel).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / rel, target)
            links.append(f'<li><a href="figures/{_e(name)}/{_e(target.name)}">'
                         f'{_e(target.stem)}</a></li>')
    if not links:
        return ""
    return ('<section class="book-card"><h2>Interactive figures of this chapter</h2>'
            f'<ul>{"".join(links)}</ul><p class="mut">Standalone pages: they run in the browser '
            "without a kernel or a network.</p></section>")


def build_book(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the course book of a finished run.

    Args:
        run_dir: a run directory of ``dmlviz run`` (holding ``summary.json``).
        out: where to write the site; default ``RUN_DIR/book``.

    Returns:
        The path of the book's ``index.html``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
        ValueError: the run has no executed notebook to put in a book.
    """
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    chapters = [(n, nb) for n, nb in summary.get("notebooks", {}).items()
                if nb.get("executed") and (run_dir / nb["executed"]).is_file()]
    if not chapters:
        raise ValueError(f"run_dir {str(run_dir)!r} has no executed notebook to make a book of")
    out = Path(out) if out else run_dir / BOOK_DIR
    out.mkdir(parents=True, exist_ok=True)
    mathjax = copy_mathjax(out)
    book = _book_summary(summary, [n for n, _ in chapters])
    for i, (name, nb) in enumerate(chapters):
        claims = ledger_html({"notebooks": {name: book["notebooks"][name]}},
                             title="Claims tested in this chapter", card="book-card")
        status = "" if nb.get("status") == "ok" else (
            f'<div class="book-card" style="color:var(--bad)">This chapter did not finish: '
            f'{_e(nb.get("status"))} — {_e((nb.get("error") or {}).get("evalue", ""))}</div>')
        before = _sidebar(chapters, name) + _pager(chapters, i) + status + claims
        after = _interactive(run_dir, out, name, nb) + _pager(chapters, i)
        export_html(run_dir / nb["executed"], out / f"{name}.html", mathjax,
                    before=before, after=after, css=BOOK_CSS)
    rows = "".join(f'<tr><td><a href="{_e(n)}.html">{_e(nb.get("title") or n)}</a></td>'
                   f'<td class="num">{len(nb.get("claims", []))}</td></tr>' for n, nb in chapters)
    ledger = ledger_html(book, card="book-card")
    cover = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dmlviz — the '
             f'course</title><style>{BOOK_CSS}</style></head><body class="book-cover">'
             f'{_sidebar(chapters, None)}<main><h1>dmlviz — attention in deep metric learning'
             f'</h1><p class="mut">Executed {_e(summary.get("started", ""))}, profile '
             f'{_e(summary.get("profile"))}, device {_e(summary.get("device_resolved"))}. '
             f'<a href="../index.html">Regression report of this run</a>.</p>'
             f'<section class="book-card"><h2>Chapters</h2><table><thead><tr><th>chapter</th>'
             f'<th>claims tested</th></tr></thead><tbody>{rows}</tbody></table></section>'
             f'{ledger}<div class="book-pager"><span></span><a rel="next" '
             f'href="{_e(chapters[0][0])}.html">{_e(chapters[0][1].get("title") or "start")} →'
             "</a></div>"
             "</main></body></html>\n")
    (out / "index.html").write_text(cover, encoding="utf-8")
    return out / "index.html"
