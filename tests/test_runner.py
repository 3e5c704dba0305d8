"""The papermill runner on small throwaway notebooks (≈40 s: two small runs and one mixed run).

Statuses come from the exceptions execution raises; partial executed notebooks and partial
metrics are kept; bad arguments are refused before any notebook runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from dmlviz import cli, runner

REMOTE = re.compile(r"""<(script|link|img)[^>]*\b(src|href)=["']https?://""", re.I)


# --------------------------------------------------------------------------- refused early

@pytest.fixture
def nb_dir(tmp_path, notebook_factory):
    d = tmp_path / "notebooks"
    notebook_factory(d / "01_alpha.ipynb", ["x = 1"], "Alpha", "\nlandmarks = 8  # landmarks M")
    notebook_factory(d / "02_beta.ipynb", ["y = 2"], "Beta", "\nprototypes = 4")
    return d


def test_unknown_parameter_is_refused_before_anything_runs(nb_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["run", "--notebooks", str(nb_dir), "--out", str(out), "-p", "landmark", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown parameter -p landmark" in err
    assert "landmarks" in err and "prototypes" in err and "seed" in err  # the allowed names
    assert not out.exists()


def test_parameters_the_runner_sets_are_refused(nb_dir):
    with pytest.raises(ValueError, match="--profile"):
        runner.run(["all"], notebook_dir=nb_dir, parameters={"quick": False})
    with pytest.raises(ValueError, match="no selected notebook declares"):
        runner.run(["01_alpha"], notebook_dir=nb_dir, parameters={"prototypes": 2})


def test_unknown_notebook_lists_the_available_ones(nb_dir, capsys):
    assert cli.main(["run", "gamma", "--notebooks", str(nb_dir)]) == 2
    err = capsys.readouterr().err
    assert "'gamma' matches no notebook" in err and "01_alpha, 02_beta" in err


def test_notebook_names_accept_number_and_short_name(nb_dir):
    nbs = runner.discover(nb_dir)
    assert [nb.name for nb in runner.select(["02", "alpha", "02_beta.ipynb"], nbs)] == \
        ["01_alpha", "02_beta"]


@pytest.mark.parametrize("argv", [["--profile", "slow"], ["--device", "tpu"]])
def test_unknown_profile_or_device_is_a_usage_error(nb_dir, argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--notebooks", str(nb_dir), *argv])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be one of"):
        runner.run(["all"], notebook_dir=nb_dir, baseline=None,
                   **{argv[0][2:]: argv[1]})


def test_cuda_without_cuda_is_refused(nb_dir, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        runner.run(["all"], notebook_dir=nb_dir, device="cuda", out=tmp_path / "r", baseline=None)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"profile": "quick", "notebooks": {"01_alpha": {"x": {"valeu": 1}}}}', "unknown key"),
    ('{"profile": "full", "notebooks": {}}', "is for profile 'full'"),
])
def test_missing_or_corrupt_baseline_is_refused_before_running(nb_dir, tmp_path, capsys,
                                                               content, match):
    base = tmp_path / "base.json"
    if content is not None:
        base.write_text(content)
    out = tmp_path / "run"
    code = cli.main(["run", "--notebooks", str(nb_dir), "--out", str(out),
                     "--baseline", str(base)])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_list_shows_titles_and_parameters(nb_dir, capsys):
    assert cli.main(["list", "--notebooks", str(nb_dir)]) == 0
    out = capsys.readouterr().out
    assert "01_alpha  Alpha" in out and "02_beta  Beta" in out
    assert "landmarks = 8" in out and "# landmarks M" in out and "prototypes = 4" in out


def test_parse_value():
    assert runner.parse_value("8") == 8 and runner.parse_value("0.5") == 0.5
    assert runner.parse_value("False") is False and runner.parse_value("None") is None
    assert runner.parse_value("[1, 2]") == [1, 2] and runner.parse_value("fps") == "fps"
    assert runner.parse_value("(1, (2, 3))") == [1, [2, 3]]  # papermill would inject a string


# --------------------------------------------------------------------------- a mixed run

TIMEOUT_S = 8  # generous for the cells that must finish; the sleeping cell needs 60 s


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, notebook_factory):
    """One CLI run, two jobs: a cell that sleeps past --timeout, a kernel that dies, a failing
    cell after a recorded metric. ``-p landmarks 3`` goes only to the notebook declaring it."""
    write_notebook = notebook_factory
    root = tmp_path_factory.mktemp("mixed")
    d = root / "notebooks"
    write_notebook(d / "01_sleep.ipynb", ["x = 1", "import time\ntime.sleep(60)", "y = 2"],
                   "Sleeps too long")
    write_notebook(d / "02_died.ipynb", ["import os\nos._exit(1)"], "Kernel dies")
    write_notebook(d / "03_fail.ipynb", [
        "import dmlviz\ndmlviz.set_output_dir(out_dir)",
        "dmlviz.record('fail.before', 1.0)\ndmlviz.record('fail.landmarks', landmarks)",
        "raise ValueError('boom: the head diverged')",
        "dmlviz.record('fail.after', 2.0)"], "Fails halfway", "\nlandmarks = 8")
    out = root / "run"
    code = cli.main(["run", "all", "--notebooks", str(d), "--out", str(out), "--jobs", "2",
                     "--timeout", str(TIMEOUT_S), "--device", "cpu", "--baseline", "none",
                     "-p", "landmarks", "3", "--no-progress"])
    return code, out, json.loads((out / "summary.json").read_text())


def test_mixed_run_exit_status_and_summary(mixed):
    code, out, s = mixed
    assert code == 1 and s["ok"] is False
    assert {k: v["status"] for k, v in s["notebooks"].items()} == {
        "01_sleep": "timeout", "02_died": "kernel_died", "03_fail": "failed"}
    md = (out / "summary.md").read_text()
    assert "NOT OK" in md and "ValueError" in md and "CellTimeoutError" in md


def test_failing_cell_reports_cell_and_error_and_keeps_partial_results(mixed):
    _, out, s = mixed
    nb = s["notebooks"]["03_fail"]
    # stored notebook: 0 title, 1 parameters, 2 set_output_dir, 3 record, 4 raise
    assert nb["error"]["cell"] == 4 and nb["error"]["exec_count"] == 5
    assert nb["error"]["ename"] == "ValueError"
    assert nb["error"]["evalue"] == "boom: the head diverged"
    assert nb["metrics"] == {"fail.before": 1.0, "fail.landmarks": 3}  # -p reached it
    assert nb["parameters"]["landmarks"] == 3
    executed = nbformat.read(out / nb["executed"], as_version=4)
    assert any(o.get("ename") == "ValueError" for c in executed.cells for o in c.get("outputs", []))
    assert (out / nb["html"]).stat().st_size > 0


def test_cell_past_timeout_is_a_timeout_with_partial_notebook(mixed):
    _, out, s = mixed
    nb = s["notebooks"]["01_sleep"]
    assert nb["error"]["ename"] == "CellTimeoutError" and nb["error"]["cell"] == 3
    assert nb["duration_s"] < 40
    assert "landmarks" not in nb["parameters"]
    executed = nbformat.read(out / nb["executed"], as_version=4)
    assert executed.metadata["dmlviz"]["status"] == "timeout"
    stopped = [c for c in executed.cells if c.get("outputs")
               and any(o.get("ename") == "CellTimeoutError" for o in c.outputs)]
    assert len(stopped) == 1 and "time.sleep(60)" in stopped[0].source
    assert "timeout" in (out / nb["html"]).read_text()


def test_dead_kernel_is_kernel_died(mixed):
    _, out, s = mixed
    nb = s["notebooks"]["02_died"]
    assert nb["error"]["ename"] == "DeadKernelError" and nb["error"]["cell"] == 2
    assert (out / nb["executed"]).exists() and (out / nb["log"]).exists()


# --------------------------------------------------------------------------- success and regressions

def test_success_path_writes_every_file(ok_run):
    assert ok_run.exit_code == 0 and ok_run.summary["ok"] is True
    out = ok_run.out_dir
    s = json.loads((out / "summary.json").read_text())
    assert s == ok_run.summary
    for key in ("schema", "profile", "device", "device_resolved", "started", "notebooks",
                "baseline", "duration_s", "environment"):
        assert key in s
    assert (s["profile"], s["device"], s["device_resolved"]) == ("quick", "cpu", "cpu")
    nb = s["notebooks"]["01_plots"]
    assert nb["status"] == "ok" and nb["error"] is None and nb["regressions"] == []
    assert nb["metrics"] == {"plots.score": 0.5, "plots.count": 3, "plots.flag": True,
                             "plots.landmarks": 4}
    assert nb["parameters"] == {"quick": True, "device": "cpu", "interactive": False,
                                "out_dir": str(out / "01_plots")}
    assert sorted(nb["figures"]) == ["01_plots/figures/plots_line.png",
                                     "01_plots/figures/plots_scatter.html"]
    for rel in ("summary.md", "index.html", nb["executed"], nb["html"], nb["log"],
                "01_plots/metrics.json", *nb["figures"]):
        assert (out / rel).is_file(), rel
    assert (out.parent / "gallery" / "plots_line.png").is_file()  # --figures
    index = (out / "index.html").read_text()
    for link in re.findall(r'(?:href|src)="([^"#]+)"', index):
        assert (out / link).exists(), link
    for page in (index, (out / nb["html"]).read_text()):
        assert not REMOTE.search(page), REMOTE.search(page)
    assert "plotly-graph-div" in (out / nb["html"]).read_text()


def test_regression_gives_nonzero_exit_and_names_the_metric(ok_run, plots_notebooks, tmp_path,
                                                            capsys):
    base = tmp_path / "quick.json"
    base.write_text(json.dumps({"profile": "quick", "notebooks": {"01_plots": {
        "plots.score": {"value": 0.9, "abs": 0.05, "why": "made up to regress"},
        "plots.count": {"value": 3},
        "plots.never_recorded": {"at_least": 0}}}}))
    out = tmp_path / "run"
    code = cli.main(["run", "01", "--notebooks", str(plots_notebooks), "--out", str(out),
                     "--device", "cpu", "--baseline", str(base), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    s = json.loads((out / "summary.json").read_text())
    nb = s["notebooks"]["01_plots"]
    assert nb["status"] == "ok" and s["ok"] is False
    regs = {r["metric"]: r for r in nb["regressions"]}
    assert set(regs) == {"plots.score", "plots.never_recorded"}
    assert regs["plots.score"] == {"metric": "plots.score", "value": 0.5, "baseline": 0.9,
                                   "tolerance": {"abs": 0.05},
                                   "reason": "0.5 is 0.4 from 0.9 (allowed 0.05)"}
    assert regs["plots.never_recorded"]["value"] is None
    assert "not recorded" in regs["plots.never_recorded"]["reason"]
    md = (out / "summary.md").read_text()
    assert "plots.score" in md and "plots.never_recorded" in md and "REGRESSION" in md
    assert "regression plots.score" in printed
    assert 'class="reg"' in (out / "index.html").read_text()


def test_project_root_follows_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    with pytest.raises(ValueError, match="no notebooks to run"):
        runner.run(["all"], baseline=None)
    assert runner.project_root() == tmp_path
    assert runner.default_baseline("full") == tmp_path / "tests" / "baselines" / "full.json"
    assert not Path("reports").exists()


def test_latest_points_to_the_newest_default_run(tmp_path):
    """``reports/latest`` follows the newest default run (the README's gallery links there)."""
    from dmlviz.runner import _point_latest

    first, second = tmp_path / "20260101-000000", tmp_path / "20260101-000100"
    first.mkdir()
    second.mkdir()
    _point_latest(first)
    assert (tmp_path / "latest").resolve() == first.resolve()
    _point_latest(second)
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert str((tmp_path / "latest").readlink()) == second.name  # relative: the folder can move
