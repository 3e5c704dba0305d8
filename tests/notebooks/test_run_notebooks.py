"""Every notebook in notebooks/ runs in the quick profile and meets tests/baselines/quick.json.

One test per notebook, discovered at collection time, marked ``notebook`` (deselect with
``-m "not notebook"``). The CPU tests share one ``dmlviz run`` of the notebooks the session
selected, two at a time on a 2-core machine (:func:`quick_suite`; each notebook then runs on one
thread — its recorded numbers are the same as alone on two, checked when this was introduced),
and each test checks its own notebook's entry of that run. The ``cuda`` twins are also marked
``gpu``: without CUDA they are skipped with the reason; with it they run on the GPU (the
``device="cuda"`` parameter makes ``dmlviz.get_device`` raise rather than fall back to CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_book_browser import check_book

from dmlviz import baseline, runner

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
BASELINE = ROOT / "tests" / "baselines" / "quick.json"
NAMES = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith((".", "_")))


def _check_entry(name: str, result) -> dict:
    """The notebook ``name`` of ``result`` (a :class:`dmlviz.runner.RunResult`) succeeded,
    regressed nothing and prints no noise; returns the run's summary."""
    nb = result.summary["notebooks"][name]
    where = f"see {result.out_dir / (nb['html'] or '')} and {result.out_dir / (nb['log'] or '')}"
    assert nb["status"] == "ok", f"{name}: {nb['status']}: {nb['error']}; {where}"
    assert not nb["regressions"], f"{name} regressed:\n" + "\n".join(
        f"  {r['metric']}: {r['reason']}" for r in nb["regressions"]) + f"\n{where}"
    check_output_hygiene(result.out_dir / nb["executed"])
    return result.summary


def _check_baseline_has(name: str) -> None:
    entries = baseline.baseline_entries(baseline.load_baseline(BASELINE, "quick"), name)
    assert entries, (f"tests/baselines/quick.json has no entries for {name}: run `dmlviz run "
                     f"{name} --profile quick`, then `dmlviz baseline reports/<that run>` and "
                     "replace the DEFAULT tolerances with measured ones")


def run_and_check(name: str, device: str, tmp_path: Path, claims_ledger: list) -> dict:
    _check_baseline_has(name)
    result = runner.run([name], profile="quick", device=device, out=tmp_path / "run",
                        baseline=BASELINE, notebook_dir=NOTEBOOK_DIR, progress=False)
    claims_ledger.append(result.summary)
    return _check_entry(name, result)


@pytest.fixture(scope="session")
def quick_suite(request, tmp_path_factory):
    """One quick-profile CPU run of every notebook whose CPU test the session selected, as
    many at once as there are cores (at most 2), against the quick baseline."""
    names = sorted({item.callspec.params["name"] for item in request.session.items
                    if getattr(item, "originalname", "") == "test_notebook_quick_cpu"})
    if not names:
        pytest.skip("no notebook test of the quick CPU suite is selected")
    return runner.run(names, profile="quick", device="cpu",
                      out=tmp_path_factory.mktemp("quick_suite") / "run", baseline=BASELINE,
                      notebook_dir=NOTEBOOK_DIR, progress=False,
                      jobs=max(1, min(2, os.cpu_count() or 1)))


NOISE = ("PosixPath(", "np.float64(", "np.float32(", "tensor(")


def check_output_hygiene(executed: Path) -> None:
    """What a reader sees is narrative: no reprs of paths or NumPy/torch scalars, and no
    ``Out[…]`` echoing a trailing ``record``/``save_figure``."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
            noisy = [n for n in NOISE if n in text]
            assert not noisy, f"{executed.name} cell {i} prints {noisy}: {text[:200]!r}"
            last = cell.source.strip().splitlines()[-1] if cell.source.strip() else ""
            assert not (out.output_type == "execute_result" and "record(" in last), \
                f"{executed.name} cell {i} echoes a trailing record(): {text[:100]!r}"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_notebook_quick_cpu(name, quick_suite, claims_ledger):
    _check_baseline_has(name)
    if quick_suite.summary not in claims_ledger:
        claims_ledger.append(quick_suite.summary)
    summary = _check_entry(name, quick_suite)
    assert summary["device_resolved"] == "cpu"


@pytest.mark.gpu
@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_notebook_quick_cuda(name, tmp_path, claims_ledger):
    summary = run_and_check(name, "cuda", tmp_path, claims_ledger)
    assert summary["device_resolved"] == "cuda"
    assert summary["notebooks"][name]["parameters"]["device"] == "cuda"


@pytest.mark.notebook
@pytest.mark.browser
def test_book_of_the_quick_runs_in_chromium(request, chromium, tmp_path):
    """The course book of the quick run above (no notebook is executed again): previous/next
    through every chapter, the kernel-free explorers of 02, 03 and 04–06 used once each."""
    suite = request.getfixturevalue("quick_suite")
    missing = [n for n in NAMES if n not in suite.summary["notebooks"]]
    if missing:
        pytest.skip(f"needs this session's quick runs of every notebook; not run: {missing}")
    check_book(chromium, suite.out_dir, tmp_path / "book", NAMES)
