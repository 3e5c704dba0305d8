"""The course book of a real run, walked in headless Chromium: previous/next through every
chapter, and the kernel-free explorers used once each (the view changes), with no network
request and no console error.

The quick notebook suite does this for the notebooks it has just executed (the last test of
``tests/notebooks/test_run_notebooks.py``, which builds the book from the session's runs
instead of executing the notebooks again). This file checks a run that already exists —
``make report``'s, say: ``DMLVIZ_BOOK_RUN=reports/<run> pytest tests/test_book_browser.py``;
without the variable it is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from book_driver import walk_book

from dmlviz.book import build_book

EXPLORED = ("02", "03")  # chapters whose explorers must be there and work; and one of 04–06


def check_book(chromium: str, run_dir: Path, out: Path, names: list[str]) -> dict:
    """Build the book of ``run_dir`` into ``out`` and walk it; assert what the module says."""
    build_book(run_dir, out)
    log = walk_book(chromium, out, shots=out)
    assert log["chapters"] == names, log["chapters"]
    assert log["back"] == names[-2::-1], log["back"]
    explored = {name[:2] for name in log["explorers"]}
    assert set(EXPLORED) <= explored and explored & {"04", "05", "06"}, log["explorers"]
    assert log["remote"] == [] and log["errors"] == [] and log["console"] == [], log
    print(f"book {out / 'index.html'}: explorers used {log['explorers']}")
    return log


@pytest.mark.browser
def test_book_of_an_existing_run_in_chromium(chromium, tmp_path):
    run = os.environ.get("DMLVIZ_BOOK_RUN")
    if not run:
        pytest.skip("set DMLVIZ_BOOK_RUN to a run directory with every chapter executed")
    summary = json.loads((Path(run) / "summary.json").read_text())
    names = [n for n, nb in summary["notebooks"].items() if nb.get("executed")]
    check_book(chromium, Path(run), tmp_path / "book", names)
