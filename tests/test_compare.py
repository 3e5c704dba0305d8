"""dmlviz.compare (notebook 07): the heads, one training budget, the summary and the verdicts."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from dmlviz import compare
from dmlviz.heads import build_head
from dmlviz.viz.comparison import plot_comparison

matplotlib.use("Agg")

LOCAL, GLOBAL = (16, 4, 4), (24, 2, 2)


def _maps(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *LOCAL, generator=gen), torch.randn(n, *GLOBAL, generator=gen)


@pytest.mark.parametrize("name", list(compare.METHODS))
def test_every_method_maps_to_unit_embeddings(name):
    """Every row of the comparison is a registry head built with this comparison's options."""
    method = compare.METHODS[name]
    channels = (LOCAL[0], GLOBAL[0]) if method.two_maps else LOCAL[0]
    torch.manual_seed(0)
    head, loss = build_head(method.head, channels, 8, 3,
                            **compare.method_options(name, LOCAL[1:]))
    maps = _maps(5)
    emb = compare._embed(name, head, maps, "cpu")
    assert emb.shape == (5, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert torch.isfinite(loss(head(*maps) if method.two_maps else head(maps[0]), labels))
    assert method.paper and method.objective


def test_method_options():
    """CSALR takes H/2 × W/2 landmarks of the map; the user's options go on top."""
    assert compare.method_options("csalr", (8, 6)) == {"landmarks": (4, 3)}
    assert compare.method_options("soa", options={"soa": {"zeta": 0.5}}) == {"zeta": 0.5}
    assert compare.method_options("crt") == {"num_prototypes": 16}


def test_unknown_method_and_bad_maps_are_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        compare.method_options("transformer")
    with pytest.raises(ValueError, match="must be a pair"):
        compare._embed("baseline", torch.nn.Identity(), torch.zeros(2, *LOCAL), "cpu")


def test_summarise_mean_std_and_single_seed_nan():
    runs = {"a": [{"recall@1": 0.5}, {"recall@1": 0.7}], "b": [{"recall@1": 0.4}]}
    s = compare.summarise(runs, metrics=("recall@1",))
    mean, std = s["a"]["recall@1"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02))
    assert s["b"]["recall@1"][0] == pytest.approx(0.4) and math.isnan(s["b"]["recall@1"][1])
    with pytest.raises(ValueError, match="at least one seed"):
        compare.summarise({"c": []})
    table = compare.comparison_table(s)
    assert "0.600 ± 0.141" in table and "| b | 0.400 |" in table


def test_method_costs_counts_the_head_alone():
    costs = compare.method_costs(["baseline"], LOCAL, GLOBAL, embedding_dim=8, repeats=1,
                                 batch_size=2, device="cpu")
    assert costs["baseline"].parameters == LOCAL[0] * 8 + 8  # the linear layer
    fig = plot_comparison(compare.summarise({"baseline": [{"recall@1": 0.5, "map@r": 0.2,
                                                           "nmi": 0.6}]},
                                            metrics=("recall@1", "map@r", "nmi")), costs)
    assert len(fig.axes) == 2


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="'shapes', 'digits' or an existing folder"):
        compare.load_benchmark(str(tmp_path / "nope"), backbone=None)


def test_per_class_subsample_keeps_every_class():
    labels = torch.arange(3).repeat_interleave(10)
    idx = compare._per_class(labels, 4, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 4]
    assert len(compare._per_class(labels, None, seed=0)) == 30


def test_validation_split_holds_out_training_classes_only():
    """Choices are made on held-out *training* classes: the validation side never holds a test
    class, the fit side trains on the remaining ids 0 … C'−1 and keeps the test side as is."""
    labels = torch.arange(8).repeat_interleave(3)
    local, glob = _maps(len(labels))
    bench = compare.Benchmark("toy", (local, glob), labels, (local[:6], glob[:6]),
                              torch.tensor([20, 20, 21, 21, 22, 22]))
    fit, val = compare.validation_split(bench, 0.25)
    assert fit.train_labels.unique().tolist() == list(range(6))
    assert val.test_labels.unique().tolist() == [6, 7]
    assert fit.test_labels is bench.test_labels
    with pytest.raises(ValueError, match="at least 4 training classes"):
        compare.validation_split(compare.validation_split(fit, 0.5)[1], 0.5)
