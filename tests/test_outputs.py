import json
import math

import matplotlib
import numpy as np
import pytest
import torch

import dmlviz

matplotlib.use("Agg")


def test_record_writes_after_each_call(tmp_path):
    out = dmlviz.set_output_dir(tmp_path / "nb")
    dmlviz.record("a.recall@1", np.float32(0.5))
    assert json.loads((out / "metrics.json").read_text()) == {"a.recall@1": 0.5}
    dmlviz.record("b", torch.tensor(3))
    dmlviz.record("c", "text", show=False)
    assert json.loads((out / "metrics.json").read_text()) == {"a.recall@1": 0.5, "b": 3, "c": "text"}
    assert dmlviz.recorded()["b"] == 3


def test_record_non_finite_and_bad_values(tmp_path):
    dmlviz.set_output_dir(tmp_path)
    with pytest.warns(UserWarning, match="recorded as null"):
        assert dmlviz.record("x", math.nan) is None
    with pytest.raises(ValueError, match="takes a number"):
        dmlviz.record("y", [1, 2])
    with pytest.raises(ValueError, match="non-empty metric name"):
        dmlviz.record("", 1.0)


def test_set_output_dir_starts_fresh(tmp_path):
    dmlviz.set_output_dir(tmp_path)
    dmlviz.record("old", 1)
    dmlviz.set_output_dir(tmp_path)
    assert dmlviz.recorded() == {} and not (tmp_path / "metrics.json").exists()


def test_figures_go_to_output_and_gallery(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    monkeypatch.setenv("DMLVIZ_FIGURES_DIR", str(tmp_path / "gallery"))
    dmlviz.set_output_dir(tmp_path / "nb")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = dmlviz.save_figure(fig, "line")
    assert png == tmp_path / "nb" / "figures" / "line.png" and png.stat().st_size > 1000
    assert (tmp_path / "gallery" / "line.png").exists()
    html = dmlviz.save_plotly(go.Figure(go.Scatter(y=[1, 2])), "scatter").read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<script")[1][:200]
    with pytest.raises(ValueError, match="plain file stem"):
        dmlviz.save_figure(fig, "../escape")


def test_seed_and_device():
    dmlviz.seed_everything(3)
    a = torch.rand(2)
    dmlviz.seed_everything(3)
    assert torch.equal(a, torch.rand(2))
    with pytest.raises(ValueError, match="non-negative"):
        dmlviz.seed_everything(-1)
    assert dmlviz.get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        dmlviz.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            dmlviz.get_device("cuda")
