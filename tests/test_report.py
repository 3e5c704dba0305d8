"""Baseline checks, ``dmlviz baseline``, ``dmlviz report OLD NEW``, and the report pages in a
real headless Chromium (marked ``browser``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmlviz import baseline, cli

# --------------------------------------------------------------------------- tolerances


@pytest.mark.parametrize("value, spec, ok", [
    (0.60, {"value": 0.62, "abs": 0.08}, True),
    (0.53, {"value": 0.62, "abs": 0.08}, False),
    (110, {"value": 100, "rel": 0.1}, True),
    (111, {"value": 100, "rel": 0.1}, False),
    (0.5, {"value": 0.0, "abs": 0.1, "rel": 0.5}, False),
    (105, {"value": 100, "abs": 1, "rel": 0.05}, True),  # the larger allowance wins
    (0.5, {"at_least": 0.5}, True),
    (0.49, {"at_least": 0.5}, False),
    (2.0, {"at_most": 2.0}, True),
    (2.1, {"at_most": 2.0}, False),
    (0.7, {"value": 0.6, "abs": 0.2, "at_most": 0.65}, False),  # every condition must hold
    (True, {"value": True}, True),
    (1, {"value": True}, False),  # a bool is not a number here
    ("digits", {"value": "digits"}, True),
    (None, {"at_least": 0}, False),  # NaN is recorded as null
    ("x", {"at_least": 0}, False),
])
def test_check_metric(value, spec, ok):
    baseline.validate_spec(spec, "test")
    assert (baseline.check_metric(value, spec) is None) is ok


def test_missing_metric_is_a_regression():
    regs = baseline.find_regressions({"a": 1.0}, {"a": {"value": 1.0}, "b": {"at_least": 0}})
    assert regs == [{"metric": "b", "value": None, "baseline": None,
                     "tolerance": {"at_least": 0}, "reason": "not recorded by the run"}]


@pytest.mark.parametrize("spec, match", [
    ({"abs": 0.1}, "needs 'value'"),
    ({"value": 1, "tol": 0.1}, "unknown key"),
    ({"value": 1, "abs": -1}, "non-negative"),
    ({"value": "a", "rel": 0.1}, "numeric 'value'"),
    ({"at_least": "1"}, "must be a number"),
    (0.5, "must be an object"),
])
def test_bad_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        baseline.validate_spec(spec, "notebooks.x.m")


def test_the_project_baselines_are_valid():
    for path in sorted(Path(__file__).parent.joinpath("baselines").glob("*.json")):
        data = baseline.load_baseline(path, path.stem)
        assert data.get("_doc"), f"{path.name} must say how its tolerances were chosen (_doc)"
        for nb in data["notebooks"]:
            for name, spec in baseline.baseline_entries(data, nb).items():
                assert spec.get("why"), f"{path.name}: {nb}.{name} has no 'why'"


# --------------------------------------------------------------------------- baseline / report

def _fake_run(d: Path, metrics: dict, status="ok", duration=10.0, started="2026-01-01T10:00:00"):
    d.mkdir(parents=True)
    s = {"schema": 1, "profile": "quick", "device": "cpu", "device_resolved": "cpu",
         "started": started, "duration_s": duration, "ok": status == "ok", "parameters": {},
         "notebooks": {"00_x": {"status": status, "duration_s": duration, "error": None,
                                "metrics": metrics, "regressions": [], "title": "X"}}}
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_baseline_command_writes_defaults_and_keeps_reviewed_tolerances(tmp_path, capsys):
    run = _fake_run(tmp_path / "r1", {"r@1": 0.61, "zero": 0.0, "n": 12, "ok": True})
    out = tmp_path / "quick.json"
    assert cli.main(["baseline", str(run), "--out", str(out)]) == 0
    data = baseline.load_baseline(out, "quick")
    e = data["notebooks"]["00_x"]
    assert e["r@1"] == {"value": 0.61, "rel": 0.1, "why": e["r@1"]["why"]}
    assert e["r@1"]["why"].startswith("DEFAULT") and "review" in e["r@1"]["why"]
    assert e["zero"]["abs"] > 0 and e["ok"]["value"] is True and "_doc" in data
    # a reviewed tolerance survives re-baselining; the value moves; a vanished metric goes
    e["r@1"] = {"value": 0.61, "abs": 0.05, "why": "seeds 0-2 spread 0.02, doubled"}
    out.write_text(json.dumps(data))
    run2 = _fake_run(tmp_path / "r2", {"r@1": 0.64, "n": 12, "ok": True})
    assert cli.main(["baseline", str(run2), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    e2 = baseline.load_baseline(out)["notebooks"]["00_x"]
    assert e2["r@1"] == {"value": 0.64, "abs": 0.05, "why": "seeds 0-2 spread 0.02, doubled"}
    assert "zero" not in e2 and "dropped zero" in printed


def test_baseline_skips_failed_notebooks(tmp_path):
    run = _fake_run(tmp_path / "r", {"a": 1.0}, status="failed")
    path, changes = baseline.make_baseline(run, tmp_path / "b.json")
    assert baseline.load_baseline(path)["notebooks"] == {}
    assert any("status failed" in c for c in changes)


def test_report_compares_two_runs(tmp_path, capsys):
    old = _fake_run(tmp_path / "old", {"r@1": 0.60, "gone": 1}, duration=100.0)
    new = _fake_run(tmp_path / "new", {"r@1": 0.66, "fresh": True}, duration=80.0)
    assert cli.main(["report", str(old), str(new)]) == 0
    md = capsys.readouterr().out
    assert "| 00_x | `r@1` | 0.6 | 0.66 | +0.06 (+10.0%) |" in md
    assert "| 00_x | `gone` | 1 | missing | — |" in md
    assert "1 min 40 s → 1 min 20 s" in md and "-20.0 s (-20%)" in md
    page = (new / "compare-old.html").read_text()
    assert "r@1" in page and 'class="reg"' in page


def test_report_on_a_directory_without_summary_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), str(tmp_path)]) == 2
    assert "not a dmlviz run directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _open(browser, path: Path, shot: Path):
    """Load a local page with every non-file request blocked; screenshot it."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    remote, errors = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            remote.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot), full_page=True)
    return page, remote, errors


def _spread(png: Path) -> float:
    """Standard deviation of the grey levels: ~0 for a blank page."""
    from PIL import Image, ImageStat

    return ImageStat.Stat(Image.open(png).convert("L")).stddev[0]


@pytest.mark.browser
def test_report_and_notebook_html_render_offline_in_chromium(chromium, ok_run, tmp_path):
    from playwright.sync_api import sync_playwright

    out = ok_run.out_dir
    nb = ok_run.summary["notebooks"]["01_plots"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page, remote, errors = _open(browser, out / "index.html", tmp_path / "index.png")
            assert remote == [] and errors == []
            assert page.locator(".verdict.ok").is_visible()
            assert page.locator("tbody tr").first.inner_text().startswith("01_plots")
            thumbs = page.locator(".gallery img")
            assert thumbs.count() == 1
            assert thumbs.first.evaluate("img => img.complete && img.naturalWidth > 0")
            assert _spread(tmp_path / "index.png") > 5

            page, remote, errors = _open(browser, out / nb["html"], tmp_path / "notebook.png")
            assert remote == [] and errors == [], (remote, errors)
            plot = page.locator(".js-plotly-plot")
            assert plot.count() == 1  # plotly.js executed offline and drew the figure
            assert plot.locator("svg.main-svg").count() >= 1
            assert plot.locator(".scatterlayer .trace").count() == 1
            assert page.locator(".jp-RenderedImage img").count() == 1  # the matplotlib figure
            if (out / "_static" / "mathjax" / "tex-svg.js").exists():  # django-static-mathjax
                page.wait_for_selector("mjx-container[display='true'] svg", timeout=10_000)
                assert page.locator("mjx-container[display='true']").count() == 1  # typeset offline
            else:
                assert "\\tilde S" in page.inner_text("body")  # shown as TeX source
            assert _spread(tmp_path / "notebook.png") > 5
        finally:
            browser.close()
    print(f"screenshots: {tmp_path / 'index.png'} {tmp_path / 'notebook.png'}")
