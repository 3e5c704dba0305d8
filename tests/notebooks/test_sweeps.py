"""A ready quick sweep runs end to end on the default local Dask cluster (marked ``notebook``:
four executions of notebook 02 in the quick profile, a few minutes on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmlviz import sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.notebook
def test_csalr_quick_sweep_writes_every_point_and_the_page(tmp_path):
    result = sweep.run_sweep(ROOT / "sweeps" / "csalr-landmarks-groups-quick.toml",
                             out=tmp_path / "sweep", workers=2, device="cpu",
                             notebook_dir=ROOT / "notebooks", progress=False)
    s = json.loads((result.out_dir / "sweep.json").read_text())
    bad = [(p["id"], p["status"], p["error"]) for p in s["points"] if p["status"] != "ok"]
    assert not bad, f"see {result.out_dir / 'index.html'}: {bad}"
    assert result.exit_code == 0 and len(s["points"]) == len(
        sweep.load_spec(ROOT / "sweeps" / "csalr-landmarks-groups-quick.toml").tasks())
    metrics = sweep.swept_metrics(s, s["spec"]["metrics"])
    assert "csalr.recall@1.sa" in metrics and "csalr.recall@1.csalr_g2" in metrics
    page = (result.out_dir / "sweep.html").read_text()
    for m in metrics:
        assert f"<code>{m}</code>" in page
    assert 'href="sweep.html"' in (result.out_dir / "index.html").read_text()
