"""Kernel-free explorers: plotly figures with their data embedded, saved as standalone HTML.

They run in the course book (and any browser, offline) with no Jupyter kernel: everything a
view can show is precomputed in the notebook and embedded in the page.

* :func:`click_explorer` — click a point on an image; the panels beside it show the maps of
  that point (e.g. the exact attention row vs its CSALR reconstruction, or an SOA map). A
  small script (``post_script`` of plotly's ``write_html``) swaps the precomputed map of the
  clicked grid cell into each panel.
  :func:`query_maps` turns an ``(N, N)`` attention into those per-point maps.
* :func:`choice_explorer` — a drop-down that switches between precomputed maps (prototypes,
  kernels with or without inner attention); pure plotly, no script.

Save them with :func:`dmlviz.outputs.save_plotly` (for the click explorer with its
``post_script``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

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


def choice_explorer(maps: Mapping[str, np.ndarray], *, image=None, title: str = "pick a map"):
    """A drop-down over precomputed maps (pure plotly: no kernel and no script needed).

    Args:
        maps: choice label → ``(h, w)`` map.
        image: optional ``(H, W, 3)`` image shown beside the map.
        title: the figure's title.

    Returns:
        A plotly figure (save it with :func:`dmlviz.outputs.save_plotly`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not maps:
        raise ValueError("maps must name at least one choice")
    arrays = {k: np.round(np.asarray(v, dtype=float), 4) for k, v in maps.items()}
    if any(v.ndim != 2 for v in arrays.values()):
        raise ValueError(f"every map must be (h, w), got { {k: v.shape for k, v in arrays.items()} }")
    cols = 2 if image is not None else 1
    first = next(iter(arrays))
    fig = make_subplots(1, cols, subplot_titles=(("image",) if image is not None else ()) + (first,))
    if image is not None:
        fig.add_trace(go.Image(z=_image_uint8(image)), 1, 1)
    fig.add_trace(go.Heatmap(z=arrays[first], colorscale="Viridis"), 1, cols)
    fig.update_yaxes(autorange="reversed", row=1, col=cols)
    heat = len(fig.data) - 1
    buttons = [{"label": k, "method": "update",
                "args": [{"z": [v]}, {f"annotations[{cols - 1}].text": k}, [heat]]}
               for k, v in arrays.items()]
    fig.update_layout(title=title, height=380, width=360 * cols,
                      margin={"l": 10, "r": 10, "t": 90, "b": 10},
                      updatemenus=[{"buttons": buttons, "x": 0, "y": 1.18, "xanchor": "left"}])
    return fig
