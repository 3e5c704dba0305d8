"""Kernel-free explorers: built from precomputed maps, and in headless Chromium a click (or a
drop-down choice) changes the view with no network request and no console error."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import CHROMIUM_ARGS, _open

import dmlviz
from dmlviz.viz.html_explorers import choice_explorer, click_explorer, query_maps


def _maps(gh=4, gw=4, h=6, w=6):
    """Cell (r, c)'s map is 1 at (r, c) of a coarse copy of the grid: a click moves the peak."""
    m = np.zeros((gh, gw, h, w))
    for r in range(gh):
        for c in range(gw):
            m[r, c, r, c] = 1.0
    return m


def test_click_explorer_embeds_every_cell_and_checks_its_input():
    fig, script = click_explorer(np.zeros((32, 32, 3)), {"exact": _maps(), "approx": _maps()})
    assert len(fig.data) == 4 and '"gw":4' in script and "plotly_click" in script
    with pytest.raises(ValueError, match="same grid"):
        click_explorer(np.zeros((8, 8, 3)), {"a": _maps(), "b": _maps(gh=2)})
    with pytest.raises(ValueError, match="non-finite"):
        click_explorer(np.zeros((8, 8, 3)), {"a": _maps() * np.nan})
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        click_explorer(np.zeros((8, 8)), {"a": _maps()})


@pytest.mark.browser
def test_explorers_change_the_view_offline_in_chromium(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    dmlviz.set_output_dir(tmp_path)
    fig, script = click_explorer(np.full((32, 32, 3), 128, np.uint8), {"map": _maps()},
                                 start=(0, 0))
    dmlviz.save_plotly(fig, "click", post_script=script)
    dmlviz.save_plotly(choice_explorer({"first": np.eye(4), "second": np.ones((4, 4))}), "choice")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page, remote, errors = _open(browser, tmp_path / "figures" / "click.html",
                                         tmp_path / "click.png")
            plot = page.locator(".js-plotly-plot")
            z = "el => JSON.stringify(el.data[2].z)"
            before = plot.evaluate(z)
            box = page.locator(".xy .nsewdrag").first.bounding_box()  # the image's axes
            page.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9)
            page.wait_for_timeout(300)
            assert plot.get_attribute("data-cell") == "15"  # the bottom-right cell of 4 × 4
            assert plot.evaluate(z) != before
            page, remote2, errors2 = _open(browser, tmp_path / "figures" / "choice.html",
                                           tmp_path / "choice.png")
            plot = page.locator(".js-plotly-plot")
            before = plot.evaluate("el => JSON.stringify(el.data[0].z)")
            page.locator(".updatemenu-header-group").click()
            page.locator(".updatemenu-item-text", has_text="second").click()
            page.wait_for_timeout(300)
            assert plot.evaluate("el => JSON.stringify(el.data[0].z)") != before
            assert remote == remote2 == [] and errors == errors2 == [], (remote, errors, errors2)
        finally:
            browser.close()


def test_query_maps_are_the_rows_of_the_sampled_queries():
    """Cell (r, c) shows the attention row of the query at grid position (r, c)."""
    a = np.arange(36.0 * 36).reshape(36, 36)
    maps = query_maps(a, (6, 6), grid=3)
    assert maps.shape == (3, 3, 6, 6)
    assert np.array_equal(maps[1, 2], a[2 * 6 + 5].reshape(6, 6))  # rows 0, 2, 5 → (2, 5)
    assert query_maps(a, (6, 6), grid=3, pool=2).shape == (3, 3, 3, 3)
    with pytest.raises(ValueError, match="H·W"):
        query_maps(a[:5], (6, 6))
