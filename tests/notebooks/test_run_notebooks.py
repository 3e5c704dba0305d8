"""Every notebook in notebooks/ runs in the quick profile and meets tests/baselines/quick.json.

One test per notebook, discovered at collection time, marked ``notebook`` (about a minute each
on 2 CPU cores; deselect with ``-m "not notebook"``). The ``cuda`` twins are also marked
``gpu``: without CUDA they are skipped with the reason; with it they run on the GPU (the
``device="cuda"`` parameter makes ``dmlviz.get_device`` raise rather than fall back to CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from book_driver import merge_runs
from test_book_browser import check_book

from dmlviz import baseline, runner

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
BASELINE = ROOT / "tests" / "baselines" / "quick.json"
NAMES = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb") if not p.name.startswith((".", "_")))


def run_and_check(name: str, device: str, tmp_path: Path, claims_ledger: list) -> dict:
    entries = baseline.baseline_entries(baseline.load_baseline(BASELINE, "quick"), name)
    assert entries, (f"tests/baselines/quick.json has no entries for {name}: run `dmlviz run "
                     f"{name} --profile quick`, then `dmlviz baseline reports/<that run>` and "
                     "replace the DEFAULT tolerances with measured ones")
    result = runner.run([name], profile="quick", device=device, out=tmp_path / "run",
                        baseline=BASELINE, notebook_dir=NOTEBOOK_DIR, progress=False)
    claims_ledger.append(result.summary)
    nb = result.summary["notebooks"][name]
    where = f"see {result.out_dir / (nb['html'] or '')} and {result.out_dir / (nb['log'] or '')}"
    assert nb["status"] == "ok", f"{name}: {nb['status']}: {nb['error']}; {where}"
    assert not nb["regressions"], f"{name} regressed:\n" + "\n".join(
        f"  {r['metric']}: {r['reason']}" for r in nb["regressions"]) + f"\n{where}"
    check_output_hygiene(result.out_dir / nb["executed"])
    return result.summary


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
def test_notebook_quick_cpu(name, quick_runs, claims_ledger):
    summary = run_and_check(name, "cpu", quick_runs.dir(name), claims_ledger)
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
def test_book_of_the_quick_runs_in_chromium(quick_runs, chromium, tmp_path):
    """The course book of the runs above (no notebook is executed again): previous/next
    through every chapter, the kernel-free explorers of 02, 03 and 04–06 used once each."""
    missing = [n for n in NAMES if n not in quick_runs.runs]
    if missing:
        pytest.skip(f"needs this session's quick runs of every notebook; not run: {missing}")
    run = merge_runs({n: quick_runs.runs[n] / "run" for n in NAMES}, tmp_path / "run")
    check_book(chromium, run, tmp_path / "book", NAMES)
