import matplotlib
import numpy as np
import pytest
import torch

from dmlviz.train import History
from dmlviz.viz import (
    image_grid,
    photo_predictions,
    plot_embedding_2d,
    plot_history,
    plot_metric_bars,
    plot_retrievals,
    project_2d,
)

matplotlib.use("Agg")


def test_image_grid_layout_and_masks():
    images = torch.rand(10, 3, 16, 16)
    masks = torch.zeros(10, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    fig = image_grid(images, [str(i) for i in range(10)], masks=masks, ncols=4)
    axes = fig.axes
    assert len(axes) == 12 and axes[0].get_title() == "0"
    assert len(axes[0].collections) == 1  # the mask outline
    assert not axes[11].images  # padding cells stay empty
    with pytest.raises(ValueError, match="titles has 2 entries for 10 images"):
        image_grid(images, ["a", "b"])


def test_grey_images_and_photo_panel():
    fig = image_grid(torch.rand(3, 1, 8, 8))
    assert fig.axes[0].images[0].get_array().ndim == 2
    photos = {"a": np.zeros((10, 20, 3), np.uint8), "b": np.ones((12, 12, 3), np.uint8)}
    fig = photo_predictions(photos, {"a": [("cat", 0.9)], "b": [("dog", 0.5), ("cat", 0.1)]})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("90.0%  cat" in t for t in texts)


def test_retrievals_frames_match_labels():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    fig = plot_retrievals(torch.rand(4, 3, 8, 8), emb, labels, queries=[0], k=2)
    first, second = fig.axes[1], fig.axes[2]
    assert first.spines["top"].get_edgecolor()[:3] == matplotlib.colors.to_rgb("tab:green")
    assert second.spines["top"].get_edgecolor()[:3] == matplotlib.colors.to_rgb("tab:red")


def test_projection_and_curves():
    x = torch.randn(40, 8)
    pts = project_2d(x, method="tsne", seed=0, perplexity=5)
    assert pts.shape == (40, 2)
    assert np.allclose(pts, project_2d(x, method="tsne", seed=0, perplexity=5))
    assert project_2d(x, method="pca").shape == (40, 2)
    with pytest.raises(ValueError, match="'tsne' or 'pca'"):
        project_2d(x, method="umap")
    plot_embedding_2d(pts, torch.arange(40) % 4)
    h = History(loss=[1.0, 0.5], eval_epochs=[0, 2], metrics={"recall@1": [0.2, 0.6]})
    assert plot_history(h).axes[0].lines[0].get_ydata().tolist() == [0.2, 0.6]
    with pytest.raises(ValueError, match="no metric 'map@r'"):
        plot_history(h, "map@r")
    fig = plot_metric_bars({"a": {"recall@1": 0.5, "map@r": 0.2, "nmi": 0.3}})
    assert len(fig.axes[0].patches) == 3


def test_palette_gives_every_class_its_own_colour_and_marker():
    """Okabe-Ito colours, the marker changing every eight classes: 24 classes stay distinct,
    and plotly points get the same colour as the matplotlib legend."""
    from dmlviz.viz.palette import OKABE_ITO, class_style, point_styles

    styles = {class_style(i)[:2] for i in range(24)}
    assert len(styles) == 24 and {c for c, _ in styles} == set(OKABE_ITO)
    colours, symbols = point_styles([30, 10, 30, 20])
    assert colours == [OKABE_ITO[2], OKABE_ITO[0], OKABE_ITO[2], OKABE_ITO[1]]
    assert symbols[0] == "circle"


def test_array_helpers_convert_scale_and_upsample():
    """One converter for every figure: channels first → last, uint8 (or 0–255 floats) → [0, 1]
    with ``unit=True``, one channel → three with ``rgb=True`` (else ``(H, W)`` for a colour map)."""
    from dmlviz.viz.arrays import to_hwc, to_numpy, upsample

    chw = torch.rand(3, 4, 5)
    assert to_hwc(chw).shape == (4, 5, 3) and to_hwc(chw).dtype == np.float32
    grey = torch.rand(1, 4, 5)
    assert to_hwc(grey).shape == (4, 5) and to_hwc(grey, rgb=True).shape == (4, 5, 3)
    assert to_hwc(np.zeros((4, 5)), rgb=True).shape == (4, 5, 3)
    photo = np.full((4, 5, 3), 255, np.uint8)
    assert to_hwc(photo).dtype == np.uint8  # unchanged without unit=True
    np.testing.assert_array_equal(to_hwc(photo, unit=True), np.ones((4, 5, 3)))
    hwc = (chw * 255).permute(1, 2, 0).double().numpy()
    np.testing.assert_array_equal(to_hwc(chw * 255, unit=True), hwc / 255)
    np.testing.assert_array_equal(to_hwc(chw, unit=True), chw.permute(1, 2, 0).double().numpy())
    assert to_hwc(chw, unit=True).dtype == np.float64
    x = torch.arange(6).reshape(2, 3)
    assert to_numpy(x).dtype == np.int64 and to_numpy(x, np.float32).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16), np.float32).tolist() == [1.0, 1.0]
    assert to_numpy([1, 2], float).dtype == np.float64 and to_numpy([1, 2]).dtype.kind == "i"
    cells = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(upsample(cells, (4, 6)),
                                  np.repeat(np.repeat(cells, 2, axis=0), 3, axis=1))
    assert upsample(cells, (3, 3)).tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]


def test_seeded_layers_share_projections_and_keep_the_old_scale():
    """Notebook 02's factory: the projections depend only on ``init``; the scale is
    std / spread · √G (the notebook's former inline ``layer``)."""
    from dmlviz.attention.csalr import CSALR
    from dmlviz.viz.csalr_maps import exact_and_reconstructed, seeded_layers

    configs = {"paper": dict(indicator=True, inverse="solve"),
               "iterative": dict(indicator=False, inverse="iterative")}
    layer = seeded_layers(8, 4.0, configs, std=2.0, seed=3)
    a, b = layer(4), layer(16, variant="iterative")
    pa, pb = next(a.parameters()), next(b.parameters())
    assert pa.dtype == torch.float64 and torch.equal(pa, pb)
    torch.manual_seed(3)
    old = CSALR(8, qk_channels=8, landmarks=4, groups=2, scale=2.0 / 4.0 * 2 ** 0.5,
                indicator=True, inverse="solve").double()
    new = layer(4, groups=2)
    assert all(torch.equal(p, q) for p, q in zip(old.state_dict().values(),
                                                 new.state_dict().values(), strict=True))
    A, R = exact_and_reconstructed(layer, torch.randn(2, 8, 4, 4))(1, 4, 1)
    assert A.shape == R.shape == (16, 16)
    with pytest.raises(ValueError, match="default must be one of"):
        seeded_layers(8, 1.0, configs, default="nope")


def test_convergence_explorer_has_a_slider_that_redraws():
    import matplotlib.pyplot as plt

    from dmlviz.viz.soa_maps import convergence_explorer

    h = History(eval_epochs=[0, 1, 2, 3], metrics={"recall@1": [0.1, 0.3, 0.4, 0.45]})
    box = convergence_explorer({"ms": [h, h], "pa": [h]})
    choice, upto = box.children[0].children
    assert (upto.min, upto.max, upto.value) == (1, 3, 3)
    upto.value = 1  # redraws without error
    choice.value = "pa"
    plt.close("all")
