"""Collect the claims each notebook test evaluated and print the run's claims ledger at the
end of the pytest session (so CI's log shows which paper claims reproduced)."""

from __future__ import annotations

import pytest

from dmlviz.ledger import ledger_markdown

SUMMARIES = pytest.StashKey[list]()


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
