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
        dmlviz.record("x", math.nan)
    assert dmlviz.recorded()["x"] is None
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
    ax.set_title("a rising line")
    assert dmlviz.save_figure(fig, "line", formats=("png", "svg")) is None
    png = tmp_path / "nb" / "figures" / "line.png"
    assert png.stat().st_size > 1000 and (tmp_path / "gallery" / "line.svg").exists()
    from PIL import Image

    assert Image.open(png).info["Description"] == "a rising line"  # alt text in the PNG
    assert "a rising line" in (tmp_path / "nb" / "figures" / "line.svg").read_text()
    assert dmlviz.save_plotly(go.Figure(go.Scatter(y=[1, 2])), "scatter") is None
    html = (tmp_path / "nb" / "figures" / "scatter.html").read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<script")[1][:200]
    with pytest.raises(ValueError, match="plain file stem"):
        dmlviz.save_figure(fig, "../escape")
    with pytest.raises(ValueError, match="formats must be"):
        dmlviz.save_figure(fig, "line", formats=("gif",))


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


def test_a_cell_shows_its_records_as_one_table_and_no_out(ok_run):
    """Clean outputs: a cell's records appear once, as one table after the cell, and a trailing
    ``record(...)`` adds no ``Out[…]``."""
    import nbformat

    nb = nbformat.read(ok_run.out_dir / "01_plots" / "01_plots.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "plots.landmarks" in c.source)
    assert [o.output_type for o in cell.outputs] == ["stream"]
    text = cell.outputs[0].text
    assert text.startswith("recorded 4 metric(s):") and "plots.score" in text
