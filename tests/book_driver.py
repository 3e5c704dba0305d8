"""Walk a course book in headless Chromium (used by ``tests/test_book_browser.py`` and by the
book test at the end of ``tests/notebooks/test_run_notebooks.py``).

* :func:`walk_book` opens the book, follows "next" from the cover through every chapter and
  "previous" back to the first, and on the way opens the kernel-free explorers of chapters
  that have them and uses each once (a click on the image, a drop-down choice, a button, the
  step slider), checking that the view changed. Every page is loaded with every non-file
  request blocked and recorded; page errors and console errors are collected (all of them:
  MathJax 3's SVG output loads no font, so a font error is an error too).
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-proxy-server", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# what the plot shows: its heat maps and its points, as plotly.js decoded them (``data`` may
# still hold the page's base64 arrays, which never equal the lists a restyle puts there)
VIEW = ("el => JSON.stringify(el._fullData.map(t => t.type === 'heatmap' ? "
        "Array.from(t.z, r => Array.from(r, v => v)) : t.type === 'scatter' ? "
        "[Array.from(t.x || []), Array.from(t.y || [])] : null))")


def _console(page, log: dict, message) -> None:
    if message.type == "error":
        log["console"].append(f"{page.url}: {message.text}")


def _page(browser, url: str, log: dict):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda e: log["errors"].append(f"{page.url}: {e}"))
    page.on("console", lambda m: _console(page, log, m))

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            log["remote"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_load_state("load")
    if "/figures/" in url:
        page.wait_for_selector(".js-plotly-plot", timeout=15_000)
    return page


def choose_second(page) -> str:
    """Open the drop-down of ``page`` (it opens on its first entry) and choose its second
    entry (a long list runs past the viewport); returns the entry's text."""
    page.locator(".updatemenu-header-group").first.click()
    entry = page.locator(".updatemenu-dropdown-button .updatemenu-item-text").nth(1)
    text = entry.text_content()
    entry.click()
    return text


def use_explorer(page) -> str:
    """Use the explorer on ``page`` once; return what was done. Raises AssertionError when
    the view did not change."""
    plot = page.locator(".js-plotly-plot").first
    before = plot.evaluate(VIEW)
    if page.locator(".slider-rail-rect").count():  # step slider, then the query picker
        rail = page.locator(".slider-rail-rect").first.bounding_box()
        page.mouse.click(rail["x"] + rail["width"] * 0.99, rail["y"] + rail["height"] / 2)
        page.wait_for_timeout(400)
        assert plot.get_attribute("data-step") not in (None, "0"), "the step slider did not move"
        moved = plot.evaluate(VIEW)
        assert moved != before, "the step slider did not change the view"
        query = plot.get_attribute("data-query")
        choose_second(page)
        page.wait_for_timeout(400)
        assert plot.get_attribute("data-query") != query, "the query picker chose no new query"
        before = moved
        kind = "step slider and query picker"
    elif plot.get_attribute("data-cell") is not None:  # click a point on the image
        start = plot.get_attribute("data-cell")
        box = page.locator(".xy .nsewdrag").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.2)
        page.wait_for_timeout(400)
        assert plot.get_attribute("data-cell") != start, "a click on the image chose no new cell"
        kind = "click on the image"
    elif page.locator(".updatemenu-button").count():  # a row of buttons
        button = page.locator(".updatemenu-button").last
        kind = f"button {button.text_content()!r}"
        button.click()
    else:  # a drop-down
        kind = f"drop-down choice {choose_second(page)!r}"
    page.wait_for_timeout(400)
    after = plot.evaluate(VIEW)
    assert after != before, f"the {kind} did not change the view"
    return kind


def walk_book(chromium: str, site: Path, shots: Path | None = None) -> dict:
    """Walk the book in ``site`` (see the module docstring). Returns ``{"chapters": [chapters
    in "next" order], "back": [chapters reached by "previous" from the last], "explorers":
    {chapter: {page: what was done}}, "remote": [...], "errors": [...], "console": [...]}``;
    screenshots of every chapter and explorer go to ``shots`` if given."""
    from playwright.sync_api import sync_playwright

    log = {"chapters": [], "explorers": {}, "remote": [], "errors": [], "console": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = _page(browser, (site / "index.html").resolve().as_uri(), log)
            while page.locator('.book-pager a[rel="next"]').count():
                page.locator('.book-pager a[rel="next"]').first.click()
                page.wait_for_load_state("load")
                chapter = page.locator("nav.book-side a.current").get_attribute("data-chapter")
                log["chapters"].append(chapter)
                if shots is not None:
                    page.screenshot(path=str(shots / f"{chapter}.png"))
                links = page.locator('.book-card a[href*="explorer"]')
                for i in range(links.count()):
                    href = links.nth(i).get_attribute("href")
                    explorer = _page(browser, page.url.rsplit("/", 1)[0] + "/" + href, log)
                    log["explorers"].setdefault(chapter, {})[Path(href).name] = \
                        use_explorer(explorer)
                    if shots is not None:
                        explorer.screenshot(path=str(shots / f"{Path(href).stem}.png"))
                    explorer.close()
            back = []  # "previous" from the last chapter to the first
            for _ in range(len(log["chapters"]) - 1):
                page.locator('.book-pager a[rel="prev"]').first.click()
                page.wait_for_load_state("load")
                back.append(page.locator("nav.book-side a.current").get_attribute("data-chapter"))
            log["back"] = back
        finally:
            browser.close()
    return log
