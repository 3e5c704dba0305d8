"""Collect the claims each notebook test evaluated and print the run's claims ledger at the
end of the pytest session (so CI's log shows which paper claims reproduced)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlviz.ledger import ledger_markdown

SUMMARIES = pytest.StashKey[list]()


class QuickRuns:
    """The session's one-notebook runs: ``dir(name)`` is where the notebook test of ``name``
    writes its run, ``runs`` maps the notebooks run so far to their run directories (the
    book test at the end of ``test_run_notebooks.py`` builds the course book from them)."""

    def __init__(self, root: Path):
        self.root, self.runs = root, {}

    def dir(self, name: str) -> Path:
        self.runs[name] = self.root / name
        return self.runs[name]


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory) -> QuickRuns:
    """The quick-profile CPU runs of this session (see :class:`QuickRuns`)."""
    return QuickRuns(tmp_path_factory.mktemp("quick_runs"))


@pytest.fixture
def claims_ledger(request) -> list:
    """A list the notebook tests append their run summaries to."""
    return request.config.stash.setdefault(SUMMARIES, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summaries = config.stash.get(SUMMARIES, [])
    merged = {"notebooks": {}}
    for s in summaries:
        for name, nb in s.get("notebooks", {}).items():
            merged["notebooks"][f"{name} ({s.get('device_resolved')})"] = nb
    lines = ledger_markdown(merged)
    if lines:
        terminalreporter.section("claims ledger (quick profile)")
        for line in lines:
            terminalreporter.write_line(line)
