"""dmlviz.viz.dynamics: one consistent 2-D map for all refinement steps, per-step geometry,
movers, and the figures and explorer of notebook 06."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dmlviz.viz import dynamics


def _clusters(n_per: int = 12, classes: int = 4, dim: int = 8, seed: int = 0):
    """Unit embeddings of well-separated classes, labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(n_per)
    e = centres[labels] + 0.15 * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(e, dim=1), labels


def _steps(moved=(), n_steps: int = 3):
    """(N, T+1, D): every step equals e⁰ except the ``moved`` rows, which jump to class 0's centre."""
    e, labels = _clusters()
    steps = e[:, None].repeat(1, n_steps, 1).clone()
    target = e[labels == 0].mean(0)
    for i in moved:
        steps[i, 1:] = torch.nn.functional.normalize(target, dim=0)
    return steps, labels


def test_transform_keeps_unmoved_points_in_place_and_moves_the_moved_ones():
    moved = [40, 41]  # class 3 points sent to class 0
    steps, labels = _steps(moved)
    maps = dynamics.step_maps_2d(steps, seed=0)
    assert maps.shape == (3, len(labels), 2)
    extent = np.ptp(maps[0], axis=0).max()
    shift = np.linalg.norm(maps[-1] - maps[0], axis=1)
    still = np.setdiff1d(np.arange(len(labels)), moved)
    assert np.median(shift[still]) < 0.1 * extent
    class0_centre = maps[0][labels.numpy() == 0].mean(0)
    for i in moved:  # now among class 0, far from where they started
        assert np.linalg.norm(maps[-1, i] - class0_centre) < np.linalg.norm(maps[0, i] - class0_centre) / 2


def test_step_maps_reject_bad_input():
    with pytest.raises(ValueError, match="method must be"):
        dynamics.step_maps_2d(_steps()[0], method="pca")
    with pytest.raises(ValueError, match=r"\(N, T\+1, D\)"):
        dynamics.step_maps_2d(torch.randn(10, 8))
    with pytest.raises(ValueError, match="N ≥ 5"):
        dynamics.step_maps_2d(torch.randn(3, 2, 8))


def test_step_geometry_matches_an_explicit_formula():
    steps, labels = _steps(moved=[40, 41])
    geometry = dynamics.step_geometry(steps, labels)
    for t in range(steps.shape[1]):
        e = torch.nn.functional.normalize(steps[:, t].double(), dim=1)
        intra = []
        for c in labels.unique():
            x = e[labels == c]
            d = 1 - x @ x.T
            intra.append(d.sum() / (len(x) * (len(x) - 1)))
        means = torch.nn.functional.normalize(
            torch.stack([e[labels == c].mean(0) for c in labels.unique()]), dim=1)
        dm = 1 - means @ means.T
        k = len(means)
        inter = dm.sum() / (k * (k - 1))
        assert geometry["pi_intra"][t] == pytest.approx(float(torch.stack(intra).mean()), abs=1e-9)
        assert geometry["pi_inter"][t] == pytest.approx(float(inter), abs=1e-9)
        assert geometry["pi_ratio"][t] == pytest.approx(float(torch.stack(intra).mean() / inter), abs=1e-9)
    assert geometry["pi_intra"][-1] > geometry["pi_intra"][0]  # two strays widen class 3... and 0


def test_top_movers_finds_the_points_that_moved():
    steps, _ = _steps(moved=[5, 40])
    assert sorted(dynamics.top_movers(steps, 2).tolist()) == [5, 40]
    assert len(dynamics.top_movers(steps, 7)) == 7


def test_figures_and_animation_have_one_panel_or_frame_per_step():
    steps, labels = _steps(moved=[40], n_steps=5)
    maps = np.random.default_rng(0).normal(size=(5, len(labels), 2))
    fig = dynamics.plot_step_maps(maps, labels, movers=[40])
    assert [ax.get_title() for ax in fig.axes] == ["step t = 0 (e⁰)", "step t = 1", "step t = 2",
                                                    "step t = 4"]
    assert len(fig.axes[1].texts) == 1 and not fig.axes[0].texts  # one arrow, none at e⁰
    plt.close(fig)
    animation = dynamics.step_animation(maps, labels, movers=[40])
    assert len(animation.frames) == 5
    assert len(animation.layout.sliders[0].steps) == 5
    assert animation.layout.sliders[0].active == 0  # opens at step 0, showing e⁰
    assert np.allclose(animation.data[0].x, animation.frames[0].data[0].x)

    fig = dynamics.plot_recall_per_step({"T=4": [0.5, 0.55, 0.6, 0.6, 0.61]})
    assert len(fig.axes[0].get_lines()) == 1
    plt.close(fig)
    per_seed = [[0.5, 0.6, 0.7], [0.4, 0.5, 0.5]]  # (S=2, T+1=3): two thin lines and the mean
    fig = dynamics.plot_recall_per_step({"T=2": per_seed})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[-1].get_ydata()) == pytest.approx([0.45, 0.55, 0.6])
    plt.close(fig)
    fig = dynamics.plot_step_geometry(dynamics.step_geometry(steps, labels))
    assert len(fig.axes) == 2  # the ratio on a twin axis
    plt.close(fig)


def test_static_map_and_animation_share_class_colours_and_a_legend():
    """One Okabe–Ito colour and marker per class in both figures, and a legend in both."""
    _, labels = _steps(n_steps=3)
    maps = np.random.default_rng(0).normal(size=(3, len(labels), 2))
    classes = np.unique(labels)
    fig = dynamics.plot_step_maps(maps, labels, class_names={int(c): f"c{c}" for c in classes})
    legend = fig.axes[-1].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == [
        f"c{c}" for c in classes]
    static = [mcolors.to_hex(h.get_facecolor()[0]) for h in fig.axes[-1].collections[:len(classes)]]
    plt.close(fig)
    animation = dynamics.step_animation(maps, labels)
    points = [t for t in animation.data if t.mode == "markers"]
    assert [t.marker.color.lower() for t in points] == static
    assert animation.layout.showlegend
    names = [f"c{c}" for c in range(int(classes.max()) + 1)]  # a list indexed by class id
    fig = dynamics.plot_step_maps(maps, torch.as_tensor(labels), class_names=names)
    assert fig.axes[-1].get_legend().get_texts()[0].get_text() == names[int(classes[0])]
    plt.close(fig)


def test_neighbour_attention_marks_same_class_neighbours():
    weights = torch.softmax(torch.randn(2, 4, 3), dim=-1)  # (T, H, K)
    fig = dynamics.plot_neighbour_attention(weights, torch.tensor([1, 0, 1]), query_label=1)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["✓ 1", "✗ 0", "✓ 1"]
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(image, weights.mean(1).numpy(), rtol=1e-6)
    plt.close(fig)


def test_refinement_explorer_slider_spans_the_steps():
    steps, labels = _steps(n_steps=4)
    n = len(labels)
    maps = np.random.default_rng(0).normal(size=(4, n, 2))
    weights = torch.softmax(torch.randn(n, 3, 2, 5), dim=-1)
    neighbours = torch.randint(0, n, (n, 5))
    box = dynamics.refinement_explorer(maps, labels, weights, neighbours, queries=[0, 7])
    step, query = box.children[0].children
    assert (step.min, step.max) == (0, 3)
    assert [v for _, v in query.options] == [0, 7]
    assert step.value == 0
    box = dynamics.refinement_explorer(maps, labels, weights, neighbours, queries=[0, 7],
                                       class_names={int(c): f"c{c}" for c in labels},
                                       tags=["fixed", "broken"])
    step, query = box.children[0].children
    assert [lab for lab, _ in query.options] == [f"0: c{int(labels[0])} (fixed)",
                                                f"7: c{int(labels[7])} (broken)"]
    step.value = 3  # redraws without error
    query.value = 7
    plt.close("all")


def test_aligned_umap_places_every_step():
    """The AlignedUMAP alternative of notebook 06 (full profile): one 2-D layout per step, the
    steps tied by the identity relation; (T+1, N, 2), finite."""
    steps, labels = _steps([40, 41])
    maps = dynamics.step_maps_2d(steps, method="aligned_umap", seed=0)
    assert maps.shape == (3, len(labels), 2) and np.isfinite(maps).all()
