"""dmlviz.attention.aia: kernels against explicit formulas, masks, SE as a special case, costs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmlviz.attention.aia import (
    VARIANTS,
    AttentionEmbedder,
    KernelAttention,
    RandomFourierFeatures,
    SEBlock,
    aia_from_se,
    fit_attention_head,
    gaussian_kernel,
    kernel_feature_dim,
    make_attention,
    median_distance,
    object_share,
    rff_kernel_error,
    sop_features,
    with_rff,
)
from dmlviz.cost import count_flops, count_parameters


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLVIZ_CACHE_DIR", str(tmp_path / "cache"))


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- kernels

def test_sop_features_are_the_upper_triangle_of_the_outer_product():
    x = _x(3, 5, 4)  # (..., c) with c = 4
    f = sop_features(x)
    assert f.shape == (3, 5, 4 * 5 // 2)
    for a in range(3):
        for b in range(5):
            v = x[a, b]
            explicit = [v[i] * v[j] for i in range(4) for j in range(i, 4)]  # row-major, i ≤ j
            torch.testing.assert_close(f[a, b], torch.stack(explicit))


def test_sop_inner_products_exact_kernel_and_papers_choice():
    x, y = _x(6, 5, seed=1), _x(7, 5, seed=2)
    dot = x @ y.T
    exact = sop_features(x, exact_kernel=True) @ sop_features(y, exact_kernel=True).T
    torch.testing.assert_close(exact, dot**2)  # eq. (11) holds with √2 off the diagonal
    plain = sop_features(x) @ sop_features(y).T
    torch.testing.assert_close(plain, (dot**2 + (x**2) @ (y**2).T) / 2)  # the upper triangle alone
    assert not torch.allclose(plain, dot**2)


def test_rff_features_formula_and_kernel():
    rff = RandomFourierFeatures(3, 7, sigma=2.0, seed=0).double()
    x = _x(4, 3)
    proj = x @ rff.omega
    torch.testing.assert_close(rff(x), torch.cat([proj.cos(), proj.sin()], -1) / math.sqrt(7))
    # ⟨ϕ(x), ϕ(y)⟩ = mean_i cos(ω_iᵀ(x − y))
    y = _x(5, 3, seed=1)
    expected = torch.cos((x[:, None] - y[None]) @ rff.omega).mean(-1)
    torch.testing.assert_close(rff(x) @ rff(y).T, expected)
    # frequencies ~ N(0, σ⁻²): their spread is 1/σ
    assert abs(RandomFourierFeatures(8, 4000, sigma=2.0, seed=0).omega.std().item() - 0.5) < 0.01


def test_gaussian_kernel_explicit():
    x, y = _x(4, 3), _x(5, 3, seed=1)
    k = gaussian_kernel(x, y, sigma=1.5)
    for i in range(4):
        for j in range(5):
            assert math.isclose(k[i, j].item(),
                                math.exp(-((x[i] - y[j]) ** 2).sum().item() / (2 * 1.5**2)),
                                rel_tol=1e-9)


def test_rff_error_shrinks_like_one_over_sqrt_dim():
    x = _x(40, 6) * 0.5
    errors = rff_kernel_error(x, [16, 256, 4096], sigma=1.0, seeds=(0, 1, 2))
    assert errors[16] > errors[256] > errors[4096]
    # 16× more features → about 4× smaller error (Remark 3); allow a wide band
    for small, large in ((16, 256), (256, 4096)):
        assert 2.0 < errors[small] / errors[large] < 8.0
    assert errors == rff_kernel_error(x, [16, 256, 4096], sigma=1.0, seeds=(0, 1, 2))  # seeded


def test_median_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 10, 5
    assert median_distance(x) == 5.0


# ----------------------------------------------------------------------------- the block

@pytest.mark.parametrize("kind", ["linear", "sop", "gaussian"])
@pytest.mark.parametrize("inner", [True, False])
def test_block_shapes_and_mask_range(kind, inner):
    torch.manual_seed(0)
    block = KernelAttention(16, kind, inner=inner, reduction=4, rff_dim=10)
    x = torch.randn(3, 16, 5, 6)
    y, maps = block(x, return_maps=True)
    c_prime = kernel_feature_dim(kind, 4, 10)
    assert c_prime == {"linear": 4, "sop": 10, "gaussian": 20}[kind]
    assert y.shape == x.shape and maps["z"].shape == x.shape
    assert maps["features"].shape == (3, c_prime, 5, 6)
    if inner:
        assert maps["inner"].shape == (3, 16) and (maps["inner"] >= 0).all()
    else:
        assert maps["inner"] is None and block.inner is None
    z = maps["z"]
    # sigmoid of a product of two ReLU outputs: z ∈ [0.5, 1)
    assert (z >= 0.5).all() and (z < 1).all()
    torch.testing.assert_close(y, z * x)  # x^z = z ⊗ x, eq. (4)
    block.eval()
    torch.testing.assert_close(block(x), block(x, return_maps=True)[0])


def test_block_matches_explicit_eq4():
    torch.manual_seed(1)
    block = KernelAttention(8, "sop", inner=True, reduction=2).eval()
    x = torch.randn(2, 8, 3, 3)
    xt = block.reduce(x)  # (B, c, H, W) eq. (1)
    feats = sop_features(xt.movedim(1, -1)).movedim(-1, 1)  # (B, c', H, W)
    w = block.inner(feats.mean((2, 3), keepdim=True))  # (B, C, 1, 1) eqs. (2)-(3)
    z = torch.sigmoid(w * block.outer(feats))
    torch.testing.assert_close(block(x), z * x)


def test_se_is_a_special_case_of_aia():
    torch.manual_seed(2)
    se = SEBlock(32, reduction=4)
    with torch.no_grad():  # a non-trivial excitation
        se.fc2.bias.normal_()
    x = torch.randn(4, 32, 6, 5)
    aia = aia_from_se(se)
    y_se, maps_se = se(x, return_maps=True)
    y_aia, maps_aia = aia(x, return_maps=True)
    torch.testing.assert_close(y_aia, y_se)
    torch.testing.assert_close(maps_aia["z"], maps_se["z"][:, :, None, None].expand_as(x))
    assert (y_aia - y_se).abs().max() < 1e-6


def test_with_rff_changes_sigma_and_dim_without_retraining():
    torch.manual_seed(3)
    block = KernelAttention(8, "gaussian", inner=True, reduction=2, rff_dim=12, sigma=1.0).eval()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(with_rff(block)(x), block(x))
    torch.testing.assert_close(with_rff(block, sigma=1.0, rff_dim=12)(x), block(x))
    wide = with_rff(block, sigma=2.0)
    torch.testing.assert_close(wide.features.rff.omega, block.features.rff.omega / 2)
    small = with_rff(block, rff_dim=5)
    assert small(x).shape == x.shape and small.features.out_dim == 10
    assert small.outer[0].in_channels == 10 and block.outer[0].in_channels == 24  # original intact
    with pytest.raises(ValueError, match="rff_dim"):
        with_rff(block, rff_dim=13)
    with pytest.raises(ValueError, match="kind='gaussian'"):
        with_rff(KernelAttention(8, "linear", reduction=2))


def test_variants_and_embedder():
    torch.manual_seed(4)
    x = torch.randn(4, 16, 4, 4)
    for name in VARIANTS:
        att = make_attention(name, 16, reduction=4, rff_dim=8, se_reduction=4)
        assert (att is None) == (name == "baseline")
        emb = AttentionEmbedder(16, 8, att)
        e = emb(x)
        assert e.shape == (4, 8)
        torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="name must be one of"):
        make_attention("gauss", 16)


def test_costs_count_every_conv():
    # parameters: φ (C·c + c conv, 2c BN), ψ and ϖ (c'·C + C conv, 2C BN each)
    C, r = 16, 4
    c = C // r
    for kind, cp in (("linear", c), ("sop", c * (c + 1) // 2)):
        block = KernelAttention(C, kind, inner=True, reduction=r)
        phi = C * c + c + 2 * c
        psi = cp * C + C + 2 * C
        assert count_parameters(block) == phi + 2 * psi
        # FLOPs per image at H×W = 5×5: φ and ψ at every position, ϖ once (+ c² for the SoP
        # outer product written as a matrix product at every position)
        hw = 25
        expected = 2 * C * c * hw + 2 * cp * C * hw + 2 * cp * C
        if kind == "sop":
            expected += 2 * c * c * hw
        assert count_flops(block, (C, 5, 5)) == expected
    # the Gaussian frequencies are a buffer, not parameters
    g = KernelAttention(C, "gaussian", inner=False, reduction=r, rff_dim=6)
    assert count_parameters(g) == (C * c + 3 * c) + (12 * C + 3 * C)


def test_object_share():
    energy = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    fraction = torch.tensor([[1.0, 0.5, 0.0, 1.0]])
    torch.testing.assert_close(object_share(energy, fraction), torch.tensor([2.5 / 4], dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        object_share(-energy, fraction)
    with pytest.raises(ValueError, match="fraction must be"):
        object_share(energy, fraction[:, :3])


def test_fit_attention_head_builds_the_variant_and_trains_it():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(32, 8, 3, 3, generator=g)
    labels = torch.arange(8).repeat_interleave(4)
    model, history = fit_attention_head("gau", maps, labels, maps, labels, seed=1, embedding_dim=4,
                                        epochs=1, p=4, k=4, device="cpu", reduction=2, rff_dim=4,
                                        sigma=2.0)
    assert isinstance(model, AttentionEmbedder) and not model.training
    att = model.attention
    assert isinstance(att, KernelAttention) and att.kind == "gaussian" and att.sigma == 2.0
    assert history.eval_epochs == [0, 1] and len(history.loss) == 1


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="channels must be divisible by reduction"):
        KernelAttention(30, reduction=4)
    with pytest.raises(ValueError, match="rff_dim"):
        KernelAttention(16, "gaussian", rff_dim=0)
    with pytest.raises(ValueError, match="sigma"):
        KernelAttention(16, "gaussian", sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        RandomFourierFeatures(4, 8, sigma=-1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        KernelAttention(16, kind="rbf")
    with pytest.raises(ValueError, match="C = 16 channels"):
        KernelAttention(16)(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        KernelAttention(16)(torch.randn(16, 3, 3))
    with pytest.raises(ValueError, match="x must be a float tensor"):
        sop_features(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="se must be an SEBlock"):
        aia_from_se(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="y must be a tensor"):
        rff_kernel_error(torch.randn(4, 3), [8], y=torch.randn(4, 2))


# ----------------------------------------------------------------------------- figures

def test_figures_render():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmlviz.viz.aia_maps import (
        aia_explorer,
        channel_energy,
        plot_kernel_error,
        plot_map_rows,
        plot_sop_check,
        plot_variant_bars,
    )

    x = _x(10, 4)
    fig = plot_kernel_error({"σ=1": rff_kernel_error(x, [4, 16], seeds=(0,))})
    assert fig.axes[0].get_xscale() == "log"
    a, b = x[:5], x[5:]
    plot_sop_check((a * b).sum(1), (sop_features(a) * sop_features(b)).sum(1),
                   (sop_features(a, True) * sop_features(b, True)).sum(1))
    plot_variant_bars({"baseline": [0.5, 0.6], "sop": [0.7]})
    maps = torch.rand(2, 8, 3, 3)
    energy = channel_energy(maps)
    assert energy.shape == (2, 3, 3)
    fig = plot_map_rows(torch.rand(2, 3, 24, 24), {"input": energy, "z": torch.rand(2, 3, 3)},
                        masks=torch.rand(2, 24, 24) > 0.5, vlims={"z": (0.5, 1.0)})
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="rows\\['z'\\] must be a tensor"):
        plot_map_rows(torch.rand(2, 3, 24, 24), {"z": torch.rand(3, 3, 3)})
    torch.manual_seed(0)
    blocks = {(k, inner): KernelAttention(8, k, inner=inner, reduction=2, rff_dim=6)
              for k in ("linear", "sop", "gaussian") for inner in (True, False)}
    box = aia_explorer(blocks, maps, torch.rand(2, 3, 24, 24), sigma=1.0, rff_dim=6)
    sigma_slider = box.children[0].children[0]
    sigma_slider.value = 2.0  # redraws without error
    plt.close("all")


@pytest.mark.gpu
def test_blocks_on_cuda_match_cpu():
    torch.manual_seed(5)
    x = torch.randn(4, 16, 5, 5)
    for kind in ("linear", "sop", "gaussian"):
        block = KernelAttention(16, kind, inner=True, reduction=4, rff_dim=12).eval()
        expected = block(x)
        got = block.cuda()(x.cuda()).cpu()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert count_flops(block, (16, 5, 5)) == count_flops(block.cpu(), (16, 5, 5))
