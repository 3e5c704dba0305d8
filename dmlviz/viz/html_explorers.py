"""Kernel-free explorers: plotly figures with their data embedded, saved as standalone HTML.

They run in the course book (and any browser, offline) with no Jupyter kernel: everything a
view can show is precomputed in the notebook and embedded in the page.

* :func:`click_explorer` — click a point on an image; the panels beside it show the maps of
  that point (e.g. the exact attention row vs its CSALR reconstruction, or an SOA map). A
  small script (``post_script`` of plotly's ``write_html``) swaps the precomputed map of the
  clicked grid cell into each panel.
  :func:`query_maps` turns an ``(N, N)`` attention into those per-point maps.
* :func:`choice_explorer` — a drop-down (or a row of buttons) that switches between
  precomputed maps, one or several panels per choice (prototypes; kernels with or without
  inner attention); pure plotly, no script.
* :func:`step_query_explorer` — a step slider and a query picker over precomputed refinement
  steps: the points at step t and the query's attention in blocks 1 … t (with a script).

Save them with :func:`dmlviz.outputs.save_plotly` (with the ``post_script`` where one is
returned).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from dmlviz.viz.palette import class_style

CLICK_SCRIPT = """
(function() {
  var gd = document.getElementById('{plot_id}');
  var data = %(data)s;
  function show(cell) {
    var r = Math.floor(cell / data.gw), c = cell %% data.gw;
    for (var i = 0; i < data.panels.length; i++) {
      Plotly.restyle(gd, {z: [data.maps[i][cell]]}, [data.first + i]);
    }
    var x = (c + 0.5) * data.width / data.gw, y = (r + 0.5) * data.height / data.gh;
    Plotly.restyle(gd, {x: [[x]], y: [[y]]}, [1]);
    gd.setAttribute('data-cell', String(cell));
  }
  gd.on('plotly_click', function(ev) {
    var p = ev.points[0];
    if (p.curveNumber > 1) { return; }
    var c = Math.min(data.gw - 1, Math.max(0, Math.floor(p.x / data.width * data.gw)));
    var r = Math.min(data.gh - 1, Math.max(0, Math.floor(p.y / data.height * data.gh)));
    show(r * data.gw + c);
  });
  gd.setAttribute('data-cell', String(data.start));
})();
"""


def _array(x) -> np.ndarray:
    """A NumPy copy of an array or a (possibly grad-tracking, GPU) tensor."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _image_uint8(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, dtype=float) * (255 if img.max() <= 1 else 1), 0, 255)
    return img.astype(np.uint8)


def query_maps(attention, size: tuple[int, int], grid: int = 14, pool: int = 1) -> np.ndarray:
    """Rows of an ``(N, N)`` attention map as per-click-cell maps for :func:`click_explorer`.

    Args:
        attention: ``(N, N)`` attention over a ``size = (H, W)`` map, ``N = H·W`` (rows are
            queries).
        size: ``(H, W)``.
        grid: click cells per side (queries sampled every ``H // grid`` positions).
        pool: average-pool each map by this factor (smaller pages).

    Returns:
        ``(grid, grid, H // pool, W // pool)`` float array: the map of each sampled query.
    """
    import torch

    h, w = size
    a = torch.as_tensor(attention, dtype=torch.float64)
    if a.shape != (h * w, h * w):
        raise ValueError(f"attention must be (H·W, H·W) = ({h * w}, {h * w}), got {tuple(a.shape)}")
    if not 1 <= grid <= min(h, w) or pool < 1:
        raise ValueError(f"grid must be in 1..{min(h, w)} and pool ≥ 1, got grid={grid}, pool={pool}")
    rows = torch.linspace(0, h - 1, grid).round().long()
    cols = torch.linspace(0, w - 1, grid).round().long()
    q = (rows[:, None] * w + cols[None, :]).reshape(-1)  # (grid², ) query positions
    maps = a[q].reshape(grid * grid, 1, h, w)
    if pool > 1:
        maps = torch.nn.functional.avg_pool2d(maps, pool)
    return maps.reshape(grid, grid, *maps.shape[2:]).numpy()


def click_explorer(image, maps: Mapping[str, np.ndarray], *, start: tuple[int, int] | None = None,
                   title: str = "click a point on the image"):
    """An image and, beside it, the precomputed maps of the point clicked on it.

    Args:
        image: ``(H, W, 3)`` image (uint8, or floats in [0, 1]).
        maps: panel title → ``(Gh, Gw, h, w)`` array: for every cell of a Gh × Gw grid over
            the image, the ``h × w`` map that panel shows when that cell is clicked. Every
            panel shares the grid.
        start: the ``(row, col)`` grid cell shown first (default: the centre).
        title: the figure's title.

    Returns:
        ``(figure, post_script)``: a plotly figure and the script that makes clicks work;
        save both with ``save_plotly(figure, name, post_script=post_script)``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    img = _image_uint8(image)
    if not maps:
        raise ValueError("maps must name at least one panel")
    arrays = {k: np.asarray(v, dtype=float) for k, v in maps.items()}
    shapes = {v.shape[:2] for v in arrays.values()}
    if any(v.ndim != 4 for v in arrays.values()) or len(shapes) != 1:
        raise ValueError("every entry of maps must be (Gh, Gw, h, w) with the same grid, got "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    if not all(np.isfinite(v).all() for v in arrays.values()):
        raise ValueError("maps hold non-finite values")
    gh, gw = shapes.pop()
    r0, c0 = start if start is not None else (gh // 2, gw // 2)
    if not (0 <= r0 < gh and 0 <= c0 < gw):
        raise ValueError(f"start must be a cell of the {gh}×{gw} grid, got {start}")
    fig = make_subplots(1, 1 + len(arrays), subplot_titles=("image", *arrays))
    fig.add_trace(go.Image(z=img), 1, 1)
    h, w = img.shape[:2]
    fig.add_trace(go.Scatter(x=[(c0 + 0.5) * w / gw], y=[(r0 + 0.5) * h / gh], mode="markers",
                             marker={"symbol": "x", "size": 12, "color": "#d55e00"},
                             hoverinfo="skip", showlegend=False), 1, 1)
    flat = [np.round(v.reshape(gh * gw, *v.shape[2:]), 4) for v in arrays.values()]
    for i, v in enumerate(flat):
        fig.add_trace(go.Heatmap(z=v[r0 * gw + c0], colorscale="Viridis", showscale=False,
                                 hoverinfo="skip"), 1, 2 + i)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{2 + i}", row=1, col=2 + i)
    fig.update_layout(title=title, height=360, width=320 * (1 + len(arrays)),
                      margin={"l": 10, "r": 10, "t": 60, "b": 10}, clickmode="event")
    data = {"gh": gh, "gw": gw, "width": w, "height": h, "first": 2, "start": r0 * gw + c0,
            "panels": list(arrays), "maps": [v.tolist() for v in flat]}
    return fig, CLICK_SCRIPT % {"data": json.dumps(data, separators=(",", ":"))}


def _choice_panels(maps: Mapping) -> tuple[dict[str, dict[str, np.ndarray]], bool]:
    """``label → (h, w)`` or ``label → {panel → (h, w)}`` as ``label → {panel → map}``."""
    single = not any(isinstance(v, Mapping) for v in maps.values())
    choices = {k: ({"": v} if single else dict(v)) for k, v in maps.items()}
    panels = [list(c) for c in choices.values()]
    if any(p != panels[0] for p in panels) or not panels[0]:
        raise ValueError("every choice must name the same panels, got "
                         f"{ {k: list(c) for k, c in choices.items()} }")
    arrays = {k: {p: np.round(np.asarray(v, dtype=float), 4) for p, v in c.items()}
              for k, c in choices.items()}
    bad = {f"{k}/{p}": v.shape for k, c in arrays.items() for p, v in c.items() if v.ndim != 2}
    if bad:
        raise ValueError(f"every map must be (h, w), got {bad}")
    if not all(np.isfinite(v).all() for c in arrays.values() for v in c.values()):
        raise ValueError("maps hold non-finite values")
    return arrays, single


def choice_explorer(maps: Mapping, *, image=None, title: str = "pick a map",
                    buttons: bool = False):
    """Choices (a drop-down or a row of buttons) over precomputed maps; pure plotly, no kernel
    and no script needed.

    Args:
        maps: choice label → ``(h, w)`` map (one panel, titled by the choice, with a colour
            bar), or choice label → ``{panel title: (h, w) map}`` (several panels, the same
            panels for every choice). With several panels each map is scaled to its own
            range, written in its panel title (``title: lo–hi``), so a map with little
            contrast still shows its structure and its range says how much there is.
        image: optional ``(H, W, 3)`` image shown before the maps, or a list of images.
        title: the figure's title.
        buttons: a row of buttons (toggles) instead of a drop-down.

    Returns:
        A plotly figure (save it with :func:`dmlviz.outputs.save_plotly`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not maps:
        raise ValueError("maps must name at least one choice")
    arrays, single = _choice_panels(maps)
    first = next(iter(arrays))

    def titles(label: str) -> list[str]:
        if single:
            return [label]
        return [f"{p}: {v.min():.3g}–{v.max():.3g}" for p, v in arrays[label].items()]

    images = [] if image is None else list(image) if isinstance(image, list | tuple) else [image]
    lead = len(images)
    n = len(arrays[first])
    fig = make_subplots(1, lead + n, subplot_titles=(("image",) * lead) + tuple(titles(first)),
                        horizontal_spacing=0.06 if n > 1 else 0.2)
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=_image_uint8(img)), 1, 1 + i)
    heat = []
    for j, v in enumerate(arrays[first].values()):
        fig.add_trace(go.Heatmap(z=v, colorscale="Viridis", showscale=single,
                                 hovertemplate="%{z:.3g}<extra></extra>"), 1, lead + 1 + j)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{lead + 1 + j}", row=1,
                         col=lead + 1 + j)
        heat.append(len(fig.data) - 1)
    menu = [{"label": k, "method": "update",
             "args": [{"z": list(c.values())},
                      {f"annotations[{lead + j}].text": t for j, t in enumerate(titles(k))},
                      heat]}
            for k, c in arrays.items()]
    fig.update_layout(title={"text": title, "y": 0.97}, height=400,
                      width=max(360, 300 * (lead + n) + 60),
                      margin={"l": 10, "r": 60, "t": 120, "b": 10},
                      updatemenus=[{"buttons": menu, "x": 0, "y": 1.3, "xanchor": "left",
                                    "type": "buttons" if buttons else "dropdown",
                                    "direction": "right" if buttons else "down"}])
    return fig


STEP_QUERY_SCRIPT = """
(function() {
  var gd = document.getElementById('{plot_id}');
  var data = %(data)s;
  var state = {t: 0, q: 0};
  function show() {
    var t = state.t, q = state.q, xy = data.maps[t], xs = [], ys = [];
    for (var c = 0; c < data.classes.length; c++) {
      xs.push(data.classes[c].map(function(i) { return xy[i][0]; }));
      ys.push(data.classes[c].map(function(i) { return xy[i][1]; }));
    }
    var nb = data.neighbours[q], qi = data.queries[q];
    xs.push(nb.map(function(i) { return xy[i][0]; }));
    ys.push(nb.map(function(i) { return xy[i][1]; }));
    xs.push([data.maps[0][qi][0], xy[qi][0]]);
    ys.push([data.maps[0][qi][1], xy[qi][1]]);
    var traces = [];
    for (var i = 0; i < xs.length; i++) { traces.push(i); }
    Plotly.restyle(gd, {x: xs, y: ys}, traces);
    var z = data.weights[q].map(function(row, b) { return b < t ? row : row.map(function() { return null; }); });
    Plotly.restyle(gd, {z: [z]}, [data.heat]);
    var head = t === 0 ? data.empty : (t === 1 ? data.one : data.some.replace('{t}', String(t)));
    var upd = {'xaxis2.ticktext': data.ticks[q]};
    upd['annotations[1].text'] = head.replace('{q}', data.names[q]);
    Plotly.relayout(gd, upd);
    gd.setAttribute('data-step', String(t));
    gd.setAttribute('data-query', String(qi));
  }
  gd.on('plotly_sliderchange', function(ev) { state.t = parseInt(ev.step.label, 10); show(); });
  gd.on('plotly_buttonclicked', function(ev) {
    var i = ev.menu.buttons.indexOf(ev.button);
    if (i < 0) { i = ev.active; }
    state.q = i; show();
  });
  gd.setAttribute('data-step', '0');
  gd.setAttribute('data-query', String(data.queries[0]));
})();
"""


def step_query_explorer(maps, labels, weights, neighbour_idx, queries, *, tags=None,
                        class_names=None, title: str = "refinement steps: pick a step and a query"):
    """A step slider and a query picker over precomputed refinement steps.

    Left: every point at its place at step ``t`` of a 2-D map (one colour and marker per class,
    :mod:`dmlviz.viz.palette`, with a legend), the picked query (star, with its path from
    ``e⁰``) and its ``K`` neighbours (open circles). Right: the query's attention over its
    neighbours in blocks ``1 … t`` (at ``t = 0`` no block has run, and the panel says so).
    A small script (``post_script`` of plotly's ``write_html``) redraws on either control.

    Args:
        maps: ``(T+1, N, 2)`` positions of every step (e.g. ``viz.dynamics.step_maps_2d``).
        labels: ``(N,)`` class ids.
        weights: ``(N, T, K)`` or ``(N, T, H, K)`` attention of every query over its
            neighbours (heads are averaged).
        neighbour_idx: ``(N, K)`` neighbour indices, nearest first.
        queries: the query indices the picker offers.
        tags: optional short word per offered query (e.g. "fixed", "broken"), shown in the
            picker after the query's class.
        class_names: optional class id → name (a list or mapping).
        title: the figure's title.

    Returns:
        ``(figure, post_script)``; save with ``save_plotly(figure, name, post_script=post_script)``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots


    maps = _array(maps).astype(float)
    labels = _array(labels).astype(int).reshape(-1)
    w = _array(weights).astype(float)
    w = w.mean(axis=2) if w.ndim == 4 else w
    nbr = _array(neighbour_idx).astype(int)
    queries = [int(q) for q in queries]
    if maps.ndim != 3 or maps.shape[2] != 2 or maps.shape[1] != len(labels):
        raise ValueError(f"maps must be (T+1, N, 2) with N = len(labels) = {len(labels)}, "
                         f"got {maps.shape}")
    if w.ndim != 3 or w.shape[:2] != (len(labels), maps.shape[0] - 1) or nbr.shape != (
            len(labels), w.shape[2]):
        raise ValueError(f"weights must be (N, T, K) or (N, T, H, K) and neighbour_idx (N, K) with "
                         f"N = {len(labels)}, T = {maps.shape[0] - 1}; got weights "
                         f"{tuple(np.shape(w))}, neighbour_idx {nbr.shape}")
    if not queries or not all(0 <= q < len(labels) for q in queries):
        raise ValueError(f"queries must be indices in 0..{len(labels) - 1}, got {queries[:10]}")
    tags = list(tags) if tags is not None else [""] * len(queries)
    if len(tags) != len(queries):
        raise ValueError(f"tags must have one entry per query ({len(queries)}), got {len(tags)}")

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None else str(c)

    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    empty = "step 0 = e⁰: no refinement block has run yet"
    fig = make_subplots(1, 2, column_widths=[0.58, 0.42], horizontal_spacing=0.12,
                        subplot_titles=("positions at step t (the e⁰ map)", empty))
    for i, (c, idx) in enumerate(zip(classes, members, strict=True)):
        colour, _, symbol = class_style(i)
        fig.add_trace(go.Scatter(x=maps[0, idx, 0], y=maps[0, idx, 1], mode="markers",
                                 name=name(c), marker={"color": colour, "symbol": symbol, "size": 6},
                                 hovertemplate=f"{name(c)}<extra></extra>"), 1, 1)
    q0 = queries[0]
    fig.add_trace(go.Scatter(x=maps[0, nbr[q0], 0], y=maps[0, nbr[q0], 1], mode="markers",
                             name="its K neighbours", marker={"size": 13, "color": "rgba(0,0,0,0)",
                                                              "line": {"color": "#d55e00", "width": 2}},
                             hoverinfo="skip"), 1, 1)
    fig.add_trace(go.Scatter(x=maps[0, [q0, q0], 0], y=maps[0, [q0, q0], 1], mode="lines+markers",
                             name="query (path from e⁰)", line={"color": "black", "width": 1},
                             marker={"symbol": ["circle-open", "star"], "size": [8, 16],
                                     "color": "black"}, hoverinfo="skip"), 1, 1)
    n_blocks, k = w.shape[1], w.shape[2]
    fig.add_trace(go.Heatmap(z=[[None] * k] * n_blocks, colorscale="Viridis", zmin=0,
                             zmax=float(w[queries].max()),
                             colorbar={"title": "attention", "x": 1.0, "len": 0.6, "y": 0.7},
                             hovertemplate="%{z:.3f}<extra></extra>"), 1, 2)
    heat = len(fig.data) - 1

    def ticks(q: int) -> list[str]:
        return [("✓ " if labels[j] == labels[q] else "✗ ") + name(labels[j]) for j in nbr[q]]

    names = [f"query {q}: {name(labels[q])}" + (f" ({t})" if t else "")
             for q, t in zip(queries, tags, strict=True)]
    short = [f"query {q}" + (f" ({t})" if t else "") for q, t in zip(queries, tags, strict=True)]
    fig.update_xaxes(tickvals=list(range(k)), ticktext=ticks(q0), tickangle=-60, row=1, col=2,
                     title_text="neighbours, nearest first (✓ = the query's class)")
    fig.update_yaxes(tickvals=list(range(n_blocks)), ticktext=[f"block {b + 1}" for b in
                                                                range(n_blocks)],
                     autorange="reversed", range=[-0.5, n_blocks - 0.5], row=1, col=2)
    lo, hi = maps.reshape(-1, 2).min(0), maps.reshape(-1, 2).max(0)
    pad = 0.04 * (hi - lo)
    fig.update_xaxes(range=[lo[0] - pad[0], hi[0] + pad[0]], visible=False, row=1, col=1)
    fig.update_yaxes(range=[lo[1] - pad[1], hi[1] + pad[1]], visible=False, row=1, col=1)
    fig.update_layout(
        title={"text": title, "y": 0.98}, width=1280, height=700,
        legend={"x": 1.1, "y": 1, "font": {"size": 9}, "title": {"text": "class"}},
        margin={"l": 10, "r": 10, "t": 130, "b": 10},
        sliders=[{"active": 0, "currentvalue": {"prefix": "step t = "}, "x": 0, "len": 0.55,
                  "y": -0.02, "yanchor": "top",
                  "steps": [{"label": str(t), "method": "skip", "args": [None]}
                            for t in range(n_blocks + 1)]}],
        updatemenus=[{"buttons": [{"label": s, "method": "skip", "args": [None]} for s in names],
                      "active": 0, "x": 0, "y": 1.25, "xanchor": "left"}])
    data = {"maps": np.round(maps, 3).tolist(), "classes": [m.tolist() for m in members],
            "queries": queries, "neighbours": [nbr[q].tolist() for q in queries],
            "weights": [np.round(w[q], 4).tolist() for q in queries],
            "ticks": [ticks(q) for q in queries], "names": short, "heat": heat, "empty": empty,
            "one": "attention of {q}, block 1", "some": "attention of {q}, blocks 1…{t}"}
    return fig, STEP_QUERY_SCRIPT % {"data": json.dumps(data, separators=(",", ":"),
                                                        ensure_ascii=False)}
