"""The executed notebook as a standalone offline HTML page (``<stem>/<stem>.html`` of a run).

:func:`export_html` renders an executed notebook with nbconvert's lab template so that the
page needs no network: no require.js, mermaid or MathJax CDN (MathJax comes from the run's
offline MathJax 3 that :func:`copy_mathjax` copies from ``django-static-mathjax``;
else formulas stay TeX source), remote ``<script src=...>`` tags inside outputs dropped
(plotly.js itself is embedded by the ``plotly_mimetype+notebook`` renderer), and widgets
(tqdm bars) replaced by their final state as text. Used by :mod:`dmlviz.runner`, which
executes the notebooks and lays out the run directory.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

_REMOTE_SCRIPT = re.compile(r"""<script[^>]*\bsrc=["']https?://[^"']*["'][^>]*>\s*</script>""", re.I)
MATHJAX_DIR = "_static/mathjax"
MATHJAX_SCRIPT = "tex-svg.js"
_MATHJAX_BLOCK = """
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'},
  options: {enableMenu: false},
  loader: {paths: {mathjax: '{{ resources.mathjax_url }}'}}
};
</script>
<script src="{{ resources.mathjax_url }}/tex-svg.js"></script>
"""


def copy_mathjax(out: Path) -> str | None:
    """Copy an offline MathJax 3 (``es5/`` of the ``django-static-mathjax`` package: the
    ``tex-svg`` component and the TeX extensions it may load on demand) to
    ``out/_static/mathjax`` for the notebook HTML exports; ``None`` when the package is missing,
    and the exports then show formulas as TeX source.

    SVG output draws every glyph as a path from the script itself: no web font is probed or
    fetched, so an offline page logs no font errors (MathJax 2's HTML-CSS output tried local
    TeX fonts and an ``about:blank`` font-face test, both console errors in a file:// page).
    """
    try:
        import mathjax
    except ImportError:
        return None
    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (src / MATHJAX_SCRIPT).is_file():
        return None
    dst = out / MATHJAX_DIR
    if not (dst / MATHJAX_SCRIPT).is_file():
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / MATHJAX_SCRIPT, dst / MATHJAX_SCRIPT)
        shutil.copytree(src / "input" / "tex" / "extensions", dst / "input" / "tex" / "extensions",
                        dirs_exist_ok=True)
        shutil.copy2(src.parent / "LICENSE", dst / "LICENSE")
    return MATHJAX_DIR


def _widget_text(state: dict, model_id: str, depth: int = 0) -> str:
    """Plain-text rendering of a saved widget (tqdm bars: prefix, bar, suffix)."""
    model = state.get(model_id.removeprefix("IPY_MODEL_"), {})
    name, st = model.get("model_name", ""), model.get("state", {})
    if depth > 5 or not st:
        return ""
    if name in ("HTMLModel", "HTMLMathModel", "LabelModel", "TextModel"):
        text = re.sub(r"<[^>]+>", "", html.unescape(str(st.get("value", ""))))
        return re.sub(r"[\xa0\u2007\u2009]", " ", text).strip()
    if name in ("FloatProgressModel", "IntProgressModel"):
        lo, hi, value = st.get("min", 0), st.get("max", 100), st.get("value", 0)
        frac = min(max((value - lo) / (hi - lo), 0.0), 1.0) if hi != lo else 1.0
        return "|" + "█" * round(20 * frac) + " " * (20 - round(20 * frac)) + "|"
    return " ".join(t for c in st.get("children", []) if (t := _widget_text(state, c, depth + 1)))


def _unwidget(nb) -> None:
    """Replace widget outputs with their saved state as text: widgets need JavaScript from a
    CDN, which an offline page cannot load."""
    state = nb.metadata.pop("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            view = data.pop("application/vnd.jupyter.widget-view+json", None)
            if view is not None:
                text = _widget_text(state, view.get("model_id", ""))
                if text:
                    data["text/plain"] = text


def export_html(executed: Path, html_path: Path, mathjax_url: str | None = None, *,
                before: str = "", after: str = "", css: str = "") -> None:
    """Export an executed notebook to standalone HTML that needs no network.

    The lab template without require.js, mermaid and the MathJax CDN (MathJax comes from
    ``mathjax_url``, a relative path to the run's offline copy, when given); remote
    ``<script src=...>`` tags inside outputs (plotly adds a MathJax CDN one) are dropped;
    widgets (tqdm bars) become their final state as text.

    Args:
        executed: the executed ``.ipynb``.
        html_path: the page to write.
        mathjax_url: relative path of an offline MathJax copy (:func:`copy_mathjax`).
        before, after: HTML put before and after the notebook's cells (the course book's
            navigation and claims table); ``css``: extra style rules for them.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    template = ("{%- extends 'index.html.j2' -%}\n"
                "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}\n"
                "{%- block html_head_js_mathjax -%}{%- if resources.mathjax_url -%}"
                + _MATHJAX_BLOCK + "{%- endif -%}{%- endblock html_head_js_mathjax -%}\n"
                "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
                "{%- block html_head_css -%}<style>{{ resources.dmlviz_css }}</style>"
                "{%- endblock html_head_css -%}\n"
                "{%- block body_header -%}{{ super() }}{{ resources.dmlviz_before }}"
                "{%- endblock body_header -%}\n"
                "{%- block body_footer -%}{{ resources.dmlviz_after }}{{ super() }}"
                "{%- endblock body_footer -%}\n")
    nb = nbformat.read(executed, as_version=4)
    _unwidget(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if isinstance(data.get("text/html"), str):
                data["text/html"] = _REMOTE_SCRIPT.sub("", data["text/html"])
    exporter = HTMLExporter(template_name="lab", template_file="dmlviz_offline.html.j2",
                            extra_loaders=[jinja2.DictLoader({"dmlviz_offline.html.j2": template})],
                            mathjax_url=mathjax_url or "")
    body, _ = exporter.from_notebook_node(nb, resources={
        "metadata": {"name": executed.stem}, "dmlviz_before": before, "dmlviz_after": after,
        "dmlviz_css": css})
    html_path.write_text(body, encoding="utf-8")
