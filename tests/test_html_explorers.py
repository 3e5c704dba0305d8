"""Kernel-free explorers: built from precomputed maps, and in headless Chromium a click (or a
drop-down choice) changes the view with no network request and no console error."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import CHROMIUM_ARGS, _open

import dmlviz
from dmlviz.viz.dynamics import step_animation
from dmlviz.viz.html_explorers import (
    choice_explorer,
    click_explorer,
    query_maps,
    step_query_explorer,
)


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


def _steps(t=3, n=30, k=4):
    rng = np.random.default_rng(0)
    maps = np.cumsum(rng.normal(size=(t + 1, n, 2)), axis=0)
    nbr = np.stack([rng.choice(n, k, replace=False) for _ in range(n)])
    return maps, np.arange(n) % 6, rng.random((n, t, 2, k)), nbr


def test_step_query_explorer_opens_at_step_0_with_named_queries():
    maps, labels, w, nbr = _steps()
    fig, script = step_query_explorer(maps, labels, w, nbr, [3, 7], tags=["fixed", "broken"],
                                      class_names=[f"c{i}" for i in range(6)])
    assert fig.layout.sliders[0].active == 0 and len(fig.layout.sliders[0].steps) == 4
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == [
        "query 3: c3 (fixed)", "query 7: c1 (broken)"]
    assert fig.layout.annotations[1].text.startswith("step 0 = e⁰: no refinement block")
    assert "blocks 1…{t}" in script and "plotly_sliderchange" in script
    assert sum(t.type == "scatter" and t.showlegend is not False for t in fig.data) >= 6
    with pytest.raises(ValueError, match="tags"):
        step_query_explorer(maps, labels, w, nbr, [3, 7], tags=["fixed"])
    with pytest.raises(ValueError, match="weights must be"):
        step_query_explorer(maps, labels, w[:, :2], nbr, [3])


def test_choice_explorer_panels_show_their_range():
    fig = choice_explorer({"on": {"x": np.eye(3), "mask": 0.5 + 0.01 * np.eye(3)},
                           "off": {"x": np.ones((3, 3)), "mask": np.full((3, 3), 0.5)}},
                          buttons=True)
    assert [a.text for a in fig.layout.annotations] == ["x: 0–1", "mask: 0.5–0.51"]
    assert fig.layout.updatemenus[0].type == "buttons"
    two = choice_explorer({"a": {"x": np.eye(2)}}, image=[np.zeros((4, 4, 3)), np.zeros((8, 8, 3))])
    assert [t.type for t in two.data] == ["image", "image", "heatmap"]
    with pytest.raises(ValueError, match="same panels"):
        choice_explorer({"a": {"x": np.eye(2)}, "b": {"y": np.eye(2)}})


def _console_errors(page) -> list:
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


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
            maps, labels, w, nbr = _steps()
            fig, script = step_query_explorer(maps, labels, w, nbr, [3, 7], tags=["a", "b"])
            dmlviz.save_plotly(fig, "steps", post_script=script)
            page, remote, errors = _open(browser, tmp_path / "figures" / "steps.html",
                                         tmp_path / "steps.png")
            console = _console_errors(page)
            plot = page.locator(".js-plotly-plot")
            heat = "el => JSON.stringify(el.data[el.data.length - 1].z)"
            before = plot.evaluate(heat)
            rail = page.locator(".slider-rail-rect").first.bounding_box()
            page.mouse.click(rail["x"] + rail["width"] * 0.99, rail["y"] + rail["height"] / 2)
            page.wait_for_timeout(300)
            assert plot.get_attribute("data-step") == "3" and plot.evaluate(heat) != before
            page.locator(".updatemenu-header-group").click()
            page.locator(".updatemenu-item-text", has_text="query 7").click()
            page.wait_for_timeout(300)
            assert plot.get_attribute("data-query") == "7"
            heading = plot.evaluate("el => el.layout.annotations[1].text")
            assert heading == "attention of query 7 (b), blocks 1…3", heading
            assert remote == [] and errors == [] and console == [], (remote, errors, console)
            dmlviz.save_plotly(step_animation(maps, labels), "animation")
            page, remote, errors = _open(browser, tmp_path / "figures" / "animation.html",
                                         tmp_path / "animation.png")
            page.wait_for_timeout(1200)  # plotly's auto-play would have moved on by now
            plot = page.locator(".js-plotly-plot")
            assert plot.evaluate("el => el.layout.sliders[0].active") == 0  # opens at step 0
            assert remote == [] and errors == [], (remote, errors)
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
