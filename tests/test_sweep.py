"""``dmlviz sweep`` on a tiny throwaway notebook, on local Dask clusters of 2 workers.

One 4-point × 2-seed sweep (all 8 results, ``sweep.json``, the sweep page, the report index),
then ``--resume`` of it with one more grid value (only the missing points run), a sweep whose
worker process is killed while its task runs (the task is retried on the other worker and
the sweep completes), and bad specs (exit 2, naming the field) — which need no cluster. The
ready sweeps in ``sweeps/`` are checked against the real notebooks' parameters (no execution).
About a minute on 2 cores, most of it kernel start-ups.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmlviz import claims, cli, sweep

ROOT = Path(__file__).resolve().parents[1]
# any registered a-greater-than-b claim: the tiny notebook evaluates it (effect +0.5, no spread)
CLAIM = next(c.id for c in claims.CLAIMS.values() if c.direction == "greater" and c.b)

TINY_PARAMETERS = ("\nwidth = 2  # an int knob\nscale = 1.0  # a float knob\n"
                   "shape = (4, 4)  # a tuple knob\nfail_width = 4  # this width raises\n"
                   "trace = ''  # append one line per execution to this file\n"
                   "hold = ''  # first execution: write the worker's pid here, then sleep\n"
                   f"claim_id = {CLAIM!r}")
TINY_CELLS = [
    "import os, pathlib, time\nimport dmlviz\nfrom dmlviz import claims\n"
    "dmlviz.set_output_dir(out_dir)",
    "if trace:\n    with open(trace, 'a') as f:\n        f.write(f'{width} {scale} {seed}\\n')\n"
    "if hold and not os.path.exists(hold):\n"
    "    pathlib.Path(hold + '.tmp').write_text(str(os.getppid()))  # the kernel's parent\n"
    "    os.replace(hold + '.tmp', hold)\n    time.sleep(60)",
    "if width == fail_width:\n    raise ValueError(f'boom at width {width}')",
    "dmlviz.record('tiny.value', width * scale + seed / 100)\n"
    "dmlviz.record('tiny.cells', shape[0] * shape[1])",
    "a = [width + seed + 0.1 * i for i in range(3)]\nb = [x - 0.5 for x in a]\n"
    "claims.assess(claim_id, a=a, b=b)\nclaims.table()",
]


@pytest.fixture(scope="module", autouse=True)
def fixed_commit():
    """One commit for the whole module: others committing to the checkout meanwhile must not
    make --resume rerun everything (a new commit does, by design)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dmlviz.runner._git_commit", lambda root: "abc1234")
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, notebook_factory):
    d = tmp_path_factory.mktemp("sweep_notebooks")
    notebook_factory(d / "01_tiny.ipynb", TINY_CELLS, "Tiny sweep notebook", TINY_PARAMETERS)
    return d


def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


GRID_SPEC = """title = "tiny: width × scale"
notebook = "01_tiny"
profile = "quick"
seeds = [0, 10]
device = "cpu"
metrics = ["tiny.*"]

[parameters]
trace = "{trace}"

[grid]
width = {widths}
scale = [1.0, 2.5]
"""


@pytest.fixture(scope="module")
def grid_sweep(tiny, tmp_path_factory):
    """The 4-point × 2-seed sweep, through the CLI, on the default local cluster (2 workers)."""
    root = tmp_path_factory.mktemp("grid_sweep")
    trace = root / "trace.txt"
    spec = write_spec(root / "tiny.toml", GRID_SPEC.format(trace=trace, widths="[2, 3]"))
    out = root / "sweep"
    t0 = time.monotonic()
    code = cli.main(["sweep", str(spec), "--notebooks", str(tiny), "--workers", "2",
                     "--out", str(out), "--no-progress"])
    return {"code": code, "out": out, "spec": spec, "trace": trace, "root": root,
            "wall": time.monotonic() - t0, "sweep": json.loads((out / "sweep.json").read_text())}


def test_grid_sweep_runs_every_point_and_seed(grid_sweep):
    s, out = grid_sweep["sweep"], grid_sweep["out"]
    assert grid_sweep["code"] == 0
    assert s["counts"] == {"ok": 8}, [(p["id"], p["status"], p["error"]) for p in s["points"]]
    assert len(s["points"]) == 8
    assert s["axes"] == [["width"], ["scale"]] and s["workers"] == 2
    got = {(p["point"]["width"], p["point"]["scale"], p["seed"]) for p in s["points"]}
    assert got == {(w, c, seed) for w in (2, 3) for c in (1.0, 2.5) for seed in (0, 10)}
    for p in s["points"]:
        w, c, seed = p["point"]["width"], p["point"]["scale"], p["seed"]
        # the value the notebook computes from the injected parameters, independently here
        assert p["metrics"]["tiny.value"] == pytest.approx(w * c + seed / 100)
        assert p["parameters"]["seed"] == seed and p["parameters"]["quick"] is True
        assert p["attempts"] == 1 and p["died_on"] == [] and p["worker"].startswith("tcp://"), p
        assert p["duration_s"] > 0 and p["commit"] == s["commit"], p
        assert [(c["id"], c["verdict"]) for c in p["claims"]] == [(CLAIM, "reproduced")], p
        for rel in (p["executed"], p["html"], p["log"], f"{p['run_dir']}/metrics.json"):
            assert (out / rel).is_file(), rel
    workers = [p["worker"] for p in s["points"]]
    assert len(set(workers)) == 2, workers  # both workers took tasks
    assert len(grid_sweep["trace"].read_text().splitlines()) == 8


def test_sweep_page_tables_plots_claims_and_index(grid_sweep):
    out, s = grid_sweep["out"], grid_sweep["sweep"]
    page = (out / "sweep.html").read_text()
    for metric in ("tiny.value", "tiny.cells"):
        assert f"<code>{metric}</code>" in page
        assert (out / "sweep_figures" / f"{metric}.png").stat().st_size > 1000
    # mean ± t-interval over the two seeds at width 3, scale 2.5: values 7.5 and 7.6
    row = next(r for r in sweep.aggregate(s, "tiny.value")
               if r["point"] == {"width": 3, "scale": 2.5})
    assert row["values"] == {0: 7.5, 10: pytest.approx(7.6)}
    assert row["mean"] == pytest.approx(7.55)
    # sd = 0.1/√2, so the half-width t(0.975, 1)·sd/√2 is t·0.05
    assert row["half"] == pytest.approx(12.706205 * 0.05, rel=1e-5)
    assert CLAIM in page and "pooled verdict" in page and claims.CLAIMS[CLAIM].quote[:40] in page
    pooled = sweep.pooled_claims(s)[CLAIM][0]["pooled"]
    assert pooled.seeds == 6 and pooled.effect == pytest.approx(0.5)  # 3 per execution × 2
    index = (out / "index.html").read_text()
    assert 'href="sweep.html"' in index
    for link in re.findall(r'(?:href|src)="([^"#]+)"', page + index):
        assert (out / link).exists(), link
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"] == "sweep.html" and len(summary["notebooks"]) == 8


def test_resume_runs_only_the_missing_points(grid_sweep, tiny):
    """Resume with width 4 added (whose notebook raises): the 8 finished points are kept,
    one point whose commit differs reruns, the 4 new ones run and fail once each (a failing
    notebook is a failed task: recorded, not retried)."""
    out, trace = grid_sweep["out"], grid_sweep["trace"]
    data = json.loads((out / "sweep.json").read_text())
    stale = data["points"][0]
    stale["commit"] = "0000000"
    (out / "sweep.json").write_text(json.dumps(data))
    spec = write_spec(grid_sweep["root"] / "more.toml",
                      GRID_SPEC.format(trace=trace, widths="[2, 3, 4]"))
    before = len(trace.read_text().splitlines())
    code = cli.main(["sweep", str(spec), "--notebooks", str(tiny), "--workers", "2",
                     "--resume", str(out), "--no-progress"])
    assert code == 1  # the width-4 executions failed
    s = json.loads((out / "sweep.json").read_text())
    assert len(s["points"]) == 12
    ran = trace.read_text().splitlines()[before:]
    assert sorted(ran) == sorted(["2 1.0 0"] + [f"4 {c} {seed}" for c in (1.0, 2.5)
                                                for seed in (0, 10)])
    new = [p for p in s["points"] if p["point"]["width"] == 4]
    assert {p["status"] for p in new} == {"failed"}
    assert all(p["attempts"] == 1 and p["error"]["ename"] == "ValueError" for p in new)
    assert sum(p["resumed"] for p in s["points"]) == 7
    rerun = next(p for p in s["points"] if p["id"] == stale["id"])
    assert rerun["status"] == "ok" and not rerun["resumed"] and rerun["commit"] == s["commit"]


def holding_spec(tmp_path, name: str):
    """A two-point sweep of the tiny notebook whose first execution writes its worker's pid to
    ``hold`` and then sleeps: ``(hold, spec)``."""
    hold = tmp_path / "hold.pid"
    return hold, write_spec(tmp_path / f"{name}.toml", f"""notebook = "01_tiny"
seeds = [0]
device = "cpu"
[parameters]
hold = "{hold}"
[grid]
width = [5, 6]
""")


def test_worker_killed_mid_task_is_retried_on_another_worker(tiny, tmp_path):
    hold, spec = holding_spec(tmp_path, "kill")
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while not hold.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if hold.exists():
            pid = int(hold.read_text())
            killed["pid"] = pid
            os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = sweep.run_sweep(spec, out=tmp_path / "sweep", workers=2, notebook_dir=tiny,
                             progress=False)
    thread.join(timeout=5)
    s = result.sweep
    assert killed, "the notebook never started"
    assert result.exit_code == 0 and s["counts"] == {"ok": 2}
    retried = [p for p in s["points"] if p["attempts"] == 2]
    assert len(retried) == 1, [(p["id"], p["attempts"]) for p in s["points"]]
    p = retried[0]
    assert len(p["died_on"]) == 1 and p["died_on"][0] != p["worker"]
    assert p["metrics"]["tiny.value"] == pytest.approx(p["point"]["width"])
    assert "retried on" in (result.out_dir / "sweep.html").read_text()


# --------------------------------------------------------------------------- bad specs

BASE = 'notebook = "01_tiny"\nseeds = [0, 1]\n'


@pytest.mark.parametrize("body, field", [
    ('notebook = "99_nothing"\nseeds = [0]\n[grid]\nwidth = [1]\n', "notebook"),
    (BASE + "[grid]\nwidht = [1, 2]\n", "grid.widht"),
    (BASE + "[grid]\n", "grid"),
    (BASE + "[grid]\nwidth = []\n", "grid.width"),
    (BASE + '[grid]\nwidth = [1, "two"]\n', "grid.width[1]"),
    (BASE + "[grid]\nscale = [true]\n", "grid.scale[0]"),
    (BASE + "[grid]\nshape = [4]\n", "grid.shape[0]"),
    (BASE + "[grid]\nwidth = 3\n", "grid.width"),
    ('notebook = "01_tiny"\nseeds = "0"\n[grid]\nwidth = [1]\n', "seeds"),
    ('notebook = "01_tiny"\nseeds = [0]\nprofile = "slow"\n[grid]\nwidth = [1]\n', "profile"),
    ('notebook = "01_tiny"\nseeds = [0]\nseed = 1\n[grid]\nwidth = [1]\n', "seed"),
    (BASE + "[grid]\nseed = [1, 2]\n", "grid.seed"),
    (BASE + "[grid]\nquick = [false]\n", "grid.quick"),
    (BASE + "[parameters]\nwidth = 1.5\n[grid]\nscale = [1.0]\n", "parameters.width"),
    (BASE + "[zip]\nwidth = [1, 2]\nscale = [1.0]\n", "zip.scale"),
    (BASE + "[grid]\nwidth = [1, 1]\n", "grid.width"),
])
def test_bad_spec_exits_2_naming_the_field(tiny, tmp_path, capsys, body, field):
    spec = write_spec(tmp_path / "bad.toml", body)
    out = tmp_path / "out"
    code = cli.main(["sweep", str(spec), "--notebooks", str(tiny), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"bad.toml: {field}:" in err, err
    assert not out.exists()


def test_bad_spec_messages_say_what_is_allowed(tiny, tmp_path):
    spec = write_spec(tmp_path / "s.toml", BASE + "[grid]\nwidht = [1]\n")
    with pytest.raises(sweep.SpecError, match=r"declares no parameter 'widht'; allowed: .*width"):
        sweep.load_spec(spec, tiny)
    spec = write_spec(tmp_path / "s.toml", BASE + '[grid]\nwidth = [1, "two"]\n')
    with pytest.raises(sweep.SpecError, match=r"'two' is a string, but the notebook's default 2 "
                       "asks for an integer"):
        sweep.load_spec(spec, tiny)
    with pytest.raises(FileNotFoundError):
        sweep.load_spec(tmp_path / "missing.toml", tiny)


def test_zip_axis_and_points(tiny, tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path / "z.toml", BASE + (
        "[grid]\nshape = [[2, 2], [4, 4]]\n[zip]\nwidth = [1, 2, 3]\nscale = [0.5, 1, 2.0]\n")),
        tiny)
    pts = spec.points()
    assert len(pts) == 6 and len(spec.tasks()) == 12
    assert pts[0] == {"shape": [2, 2], "width": 1, "scale": 0.5}
    assert {(p["width"], p["scale"]) for p in pts} == {(1, 0.5), (2, 1), (3, 2.0)}
    assert spec.tasks()[0][0] == "shape=2x2-width=1-scale=0.5-s0"


def test_an_existing_sweep_is_not_overwritten(grid_sweep, tiny):
    with pytest.raises(ValueError, match="already holds a sweep; continue it with --resume"):
        sweep.run_sweep(grid_sweep["spec"], out=grid_sweep["out"], notebook_dir=tiny,
                        progress=False)


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_ready_sweeps_fit_the_notebooks(path):
    """Every ready sweep names parameters the real notebook declares, with fitting types; a
    quick twin exists for every full one and stays small enough for CI."""
    spec = sweep.load_spec(path, ROOT / "notebooks")
    if path.stem.endswith("-quick"):
        assert spec.profile == "quick" and len(spec.tasks()) <= 4
    else:
        assert (path.parent / f"{path.stem}-quick.toml").is_file()
        assert spec.profile == "full" and len(spec.seeds) >= 3


def test_ctrl_c_stops_cleanly_keeping_what_finished(tiny, tmp_path):
    """SIGINT (Ctrl-C) to ``dmlviz sweep`` while one point holds: exit 130, the finished point
    kept in sweep.json and on the page, the other one recorded as cancelled."""
    hold, spec = holding_spec(tmp_path, "int")
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dmlviz.cli", "sweep", str(spec),
                             "--notebooks", str(tiny), "--workers", "2", "--out", str(out),
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a background job inherits SIGINT ignored (POSIX); Ctrl-C needs it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            if json.loads((out / "sweep.json").read_text())["counts"].get("ok") == 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    assert hold.exists(), "the holding point never started"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr[-2000:]
    assert time.monotonic() - t0 < 45  # it did not wait for the held notebook (60 s)
    s = json.loads((out / "sweep.json").read_text())
    assert s["interrupted"] is True and s["counts"] == {"ok": 1, "cancelled": 1}
    assert "--resume" in stdout
    assert "Interrupted" in (out / "sweep.html").read_text()
