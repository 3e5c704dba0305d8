"""The course book: one static site from a run — chapters, sidebar, previous/next, each
chapter's claims table, offline equations; walked in headless Chromium."""

from __future__ import annotations

import pytest
from test_report import CHROMIUM_ARGS, _open

from dmlviz import runner
from dmlviz.book import build_book

CHAPTERS = {
    "01_first": ["import dmlviz\nfrom dmlviz import claims\ndmlviz.set_output_dir(out_dir)",
                 "md:An equation: $$a^2 + b^2 = c^2 \\tag{1}$$",
                 "claims.assess('aia.lin_aia_beats_se', [0.8, 0.82, 0.81], [0.7, 0.71, 0.72])",
                 "claims.table()"],
    "02_second": ["import dmlviz\ndmlviz.set_output_dir(out_dir)\nprint('second')"],
    "03_third": ["import dmlviz\ndmlviz.set_output_dir(out_dir)\nprint('third')"],
}


@pytest.fixture(scope="module")
def book(tmp_path_factory, notebook_factory):
    nbs = tmp_path_factory.mktemp("book_notebooks")
    for name, cells in CHAPTERS.items():
        notebook_factory(nbs / f"{name}.ipynb", cells, f"{name[:2]} — chapter {name[3:]}")
    out = tmp_path_factory.mktemp("book_run") / "run"
    result = runner.run(["all"], device="cpu", out=out, baseline=None, notebook_dir=nbs,
                        progress=False, timeout=120, book=True)
    assert result.summary["book"] == "book/index.html"
    return out


def test_book_has_a_cover_and_one_page_per_chapter(book):
    site = book / "book"
    assert sorted(p.name for p in site.glob("*.html")) == [
        "01_first.html", "02_second.html", "03_third.html", "index.html"]
    cover = (site / "index.html").read_text()
    assert "aia.lin_aia_beats_se" in cover and 'href="01_first.html#cell-id=' in cover
    first = (site / "01_first.html").read_text()
    assert 'href="02_second.html"' in first and "Claims tested in this chapter" in first
    assert 'href="book/index.html"' in (book / "index.html").read_text()  # linked from the report


def test_book_of_a_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dmlviz run directory"):
        build_book(tmp_path)


@pytest.mark.browser
def test_book_walks_next_and_previous_offline_in_chromium(chromium, book, tmp_path):
    from playwright.sync_api import sync_playwright

    site = book / "book"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page, remote, errors = _open(browser, site / "index.html", tmp_path / "cover.png")
            seen = []
            for _ in CHAPTERS:
                page.locator('.book-pager a[rel="next"]').first.click()
                page.wait_for_load_state("load")
                seen.append(page.locator("nav.book-side a.current").inner_text())
            assert seen == [f"{n[:2]} — chapter {n[3:]}" for n in CHAPTERS]
            assert page.locator('.book-pager a[rel="next"]').count() == 0  # the last chapter
            for _ in range(len(CHAPTERS) - 1):
                page.locator('.book-pager a[rel="prev"]').first.click()
                page.wait_for_load_state("load")
            assert page.locator("nav.book-side a.current").inner_text().startswith("01")
            assert page.locator(".ledger .v.ok").count() == 1  # the chapter's claims table
            if (site / "_static" / "mathjax" / "tex-svg.js").exists():  # django-static-mathjax
                page.wait_for_selector("mjx-container[display='true'] svg", timeout=10_000)
            page.screenshot(path=str(tmp_path / "chapter.png"), full_page=True)
            assert remote == [] and errors == [], (remote, errors)
        finally:
            browser.close()
    print(f"screenshots: {tmp_path / 'cover.png'} {tmp_path / 'chapter.png'}")
