"""dmlviz.attention.aia: kernels against explicit formulas, masks, SE as a special case, costs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dmlviz.attention.aia import (
    ABLATIONS,
    PAPER_COSTS,
    AiAMaps,
    KernelAttention,
    SEBlock,
    aia_from_se,
    make_attention,
    table8_blocks,
    with_rff,
    zero_shares,
)
from dmlviz.attention.kernels import (
    RandomFourierFeatures,
    gaussian_kernel,
    kernel_feature_dim,
    median_distance,
    rff_kernel_error,
    sop_features,
)
from dmlviz.cost import count_flops, count_macs, count_parameters

pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- kernels

def test_sop_features_are_the_upper_triangle_of_the_outer_product():
    """Sec. 3.3: "We summarize the bilinear pooling and feature rearrangement with:
    SoP(x̄) = Vec(UTri(x̄x̄ᵀ))" — the upper triangle of the outer product, vectorised."""
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
    """Eq. (14): κ(x̄) = √(1/c')[cos(ωᵀx̄); sin(ωᵀx̄)], "where the weights (i.e., ω_i,
    i = 1, …, c') are drawn from the scaled Fourier transformation of a Gaussian kernel" —
    checked against the explicit formula; the frequencies' scale is 1/σ (module docstring)."""
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
    """Eq. (13): "the function Gau(x̄) estimates the Gaussian kernel along each channel, such
    that" K(x̄_i, x̄_j) = exp(−‖x̄_i − x̄_j‖² / 2σ²) — against an explicit double loop."""
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


@pytest.mark.parametrize("omega", ["fixed", "learned"])
@pytest.mark.parametrize("features", ["cos+sin", "cos"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_rff_options_counts(omega, features, batch_norm):
    """Eq. (14): cos and sin of c' projections give 2c' features; the cos-only form with phases
    gives c'. Learned ω (and b) are parameters, fixed ones buffers; BN adds 2 per projection."""
    c, cp = 5, 7
    rff = RandomFourierFeatures(c, cp, sigma=1.5, seed=0, omega=omega, features=features,
                                batch_norm=batch_norm)
    assert rff.out_dim == (2 * cp if features == "cos+sin" else cp)
    learned = (c * cp + (cp if features == "cos" else 0)) if omega == "learned" else 0
    assert count_parameters(rff) == learned + (2 * cp if batch_norm else 0)
    assert rff(torch.randn(3, 4, c)).shape == (3, 4, rff.out_dim)
    # the same draw whether ω is learned or fixed (a learned ω starts as the paper's)
    fixed = RandomFourierFeatures(c, cp, sigma=1.5, seed=0, features=features)
    torch.testing.assert_close(rff.omega.detach(), fixed.omega)


def test_rff_cos_only_formula():
    """Rahimi & Recht's second form: κ(x) = √(2/c') cos(ωᵀx + b), b ~ U[0, 2π)."""
    rff = RandomFourierFeatures(3, 9, sigma=2.0, seed=1, features="cos").double()
    x = _x(4, 3)
    expected = math.sqrt(2 / 9) * torch.cos(x @ rff.omega + rff.phase)
    torch.testing.assert_close(rff(x), expected)
    assert rff.phase.min() >= 0 and rff.phase.max() < 2 * math.pi


@pytest.mark.parametrize("features", ["cos+sin", "cos"])
def test_fixed_rff_still_converge_to_the_exact_gaussian_kernel(features):
    """Remark 3, eq. (16): E[κ(x̄_i)ᵀκ(x̄_j)] = K(x̄_i, x̄_j) = exp(-‖x̄_i − x̄_j‖²/2σ²); the
    average of c' random terms has an error that falls like 1/√c'. Exact kernel by formula."""
    x = _x(40, 6) * 0.5
    errors = rff_kernel_error(x, [16, 256, 4096], sigma=1.0, seeds=(0, 1, 2), features=features)
    assert errors[16] > errors[256] > errors[4096]
    for small, large in ((16, 256), (256, 4096)):
        assert 2.0 < errors[small] / errors[large] < 8.0  # 16× the features: about 4× smaller
    assert errors[4096] < 0.02


def test_table8_counts_match_hand_counts_and_the_paper():
    """Sec. 5.2.7: "The size of the input feature map to the attention block ... set to
    480 × 16 × 8"; Table 8: Lin (r = 4) 0.015 / 0.18 M, SoP (r = 8) 0.117 / 1.79 M, Gau
    (r = 4, c' = 480) 0.044 / 0.58 M ("FLOPs" ×10⁹ that are multiply-accumulates). Table 3:
    SE and NL (r = 4) 0.12 M and 0.23 M. Hand counts of 1×1 conv (+ bias) + BN layers."""
    C, hw = 480, 16 * 8

    def conv_bn(cin, cout):  # weights + bias + BN (γ, β)
        return cin * cout + cout + 2 * cout

    blocks = table8_blocks(C)
    assert set(blocks) == set(PAPER_COSTS)
    c4, c8 = C // 4, C // 8
    sop = c8 * (c8 + 1) // 2
    hand = {  # (parameters, MACs per image)
        "Lin w/o AiA (r=4)": (conv_bn(C, c4) + conv_bn(c4, C), 2 * C * c4 * hw),
        "Lin w/ AiA (r=4)": (conv_bn(C, c4) + 2 * conv_bn(c4, C), 2 * C * c4 * hw + c4 * C),
        "SE (r=4)": (C * c4 + c4 + c4 * C + C, 2 * C * c4),
        "NL (r=4)": (3 * (C * c4 + c4) + c4 * C + C, 4 * C * c4 * hw + 2 * hw * hw * c4),
        "SoP w/ AiA (r=8)": (conv_bn(C, c8) + 2 * conv_bn(sop, C),
                             C * c8 * hw + c8 * c8 * hw + sop * C * hw + sop * C),
        "Gau w/ AiA (r=4, c'=480): fixed ω, cos+sin (eq. 14)": (
            conv_bn(C, c4) + 2 * conv_bn(960, C), C * c4 * hw + c4 * 480 * hw + 960 * C * hw + 960 * C),
        "Gau w/ AiA (r=4, c'=480): learned ω, cos, BN (code)": (
            conv_bn(C, c4) + (c4 * 480 + 480 + 2 * 480) + 2 * conv_bn(480, C),
            C * c4 * hw + c4 * 480 * hw + 480 * C * hw + 480 * C),
    }
    for name, block in blocks.items():
        params, macs = hand[name]
        assert count_parameters(block) == params, name
        assert count_macs(block, (C, 16, 8)) == macs, name
        paper = PAPER_COSTS[name]
        if name != "Gau w/ AiA (r=4, c'=480): fixed ω, cos+sin (eq. 14)":
            assert round(params / 1e6, 2) == paper["params_M"], name
            if paper["GMACs"] is not None:
                assert abs(macs / 1e9 - paper["GMACs"]) < 0.0006, name
    assert count_parameters(blocks["Lin w/ AiA (r=4)"]) == 176_040
    assert count_parameters(blocks["Gau w/ AiA (r=4, c'=480): learned ω, cos, BN (code)"]) == 580_680


def test_se_and_nonlocal_use_the_papers_reduction_by_default():
    """Sec. 5.2.2: "We set the dimensionality reduction factor as 4 in both SE and NL blocks"."""
    assert SEBlock(480).fc1.out_features == 120
    assert make_attention("se", 480).fc1.out_features == 120
    assert make_attention("nonlocal", 480).reduced == 120


def test_median_sigma_is_set_on_the_reduced_features_of_the_first_training_batch():
    """σ by the median heuristic on x̄ = φ(x) (the features the Gaussian kernel of eq. 13 sees),
    checked against an explicit median over all pairs of positions."""
    torch.manual_seed(6)
    block = KernelAttention(16, "gaussian", reduction=4, rff_dim=8, sigma="median")
    x = torch.rand(3, 16, 4, 4) * 3
    omega0 = block.features.rff.omega.clone()
    block.eval()
    block(x)  # an eval-mode pass (e.g. test data) never calibrates
    assert not bool(block.sigma_calibrated) and block.sigma == 1.0
    block.train()
    with torch.no_grad():
        xr = copy.deepcopy(block.reduce)(x).movedim(1, -1).reshape(-1, 4).double()
    n = len(xr)
    dists = [float((xr[i] - xr[j]).norm()) for i in range(n) for j in range(i + 1, n)]
    expected = float(torch.tensor(dists).median())
    block(x)  # the first training pass sets σ
    assert bool(block.sigma_calibrated)
    assert math.isclose(block.sigma, expected, rel_tol=1e-6)
    torch.testing.assert_close(block.features.rff.omega, omega0 / expected)
    block(x * 10)  # later batches do not move it
    assert math.isclose(block.sigma, expected, rel_tol=1e-6)
    fresh = KernelAttention(16, "gaussian", reduction=4, rff_dim=8, sigma="median")
    fresh.load_state_dict(block.state_dict())  # σ travels with the checkpoint
    assert math.isclose(fresh.sigma, expected, rel_tol=1e-6) and bool(fresh.sigma_calibrated)
    explicit = KernelAttention(16, "gaussian", reduction=4, rff_dim=8, sigma="median")
    s = explicit.calibrate_sigma(x)
    assert s > 0 and explicit.sigma == s


def test_zero_shares_and_the_half_mask():
    """With ReLU after ϖ and ϕ (Sec. 4.4) x̂ = ϖ(m) ⊗ ϕ(x̃) is 0 where either factor is 0,
    and there z = Sigmoid(0) = 0.5 exactly."""
    unused = torch.zeros(1)  # x̃ and x̄: not read by zero_shares
    maps = AiAMaps(z=torch.tensor([0.5, 0.7, 0.5, 0.9]), inner=torch.tensor([[0.0, 3.0]]),
                   outer=torch.tensor([0.0, 1.0, 2.0, 0.0]), features=unused, reduced=unused)
    assert zero_shares(maps) == {"inner_zero": 0.5, "outer_zero": 0.5, "z_half": 0.5}
    assert math.isnan(zero_shares(maps._replace(inner=None))["inner_zero"])
    torch.manual_seed(7)
    block = KernelAttention(16, "linear", reduction=4).eval()
    _, m = block(torch.randn(4, 16, 5, 5), return_maps=True)
    product_zero = (m.inner[:, :, None, None] * m.outer) == 0
    assert torch.equal(product_zero, m.z == 0.5)
    assert zero_shares(m)["z_half"] == float(product_zero.double().mean()) > 0.25
    with pytest.raises(ValueError, match="maps must be the AiAMaps"):
        zero_shares({"z": m.z})


def test_without_final_relu_the_mask_can_go_below_half():
    torch.manual_seed(8)
    block = make_attention("sop_no_relu", 16, reduction=4)
    assert not block.final_relu and not any(isinstance(layer, nn.ReLU) for layer in block.outer)
    assert not any(isinstance(layer, nn.ReLU) for layer in block.inner)
    _, m = block(torch.randn(4, 16, 5, 5), return_maps=True)
    assert (m.z < 0.5).any() and (m.z > 0.5).any()
    assert set(ABLATIONS) == {"lin_no_relu", "sop_no_relu", "gau_no_relu"}


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
    assert y.shape == x.shape and maps.z.shape == x.shape
    assert maps.features.shape == (3, c_prime, 5, 6)
    assert maps.reduced.shape == (3, 4, 5, 6) and maps.outer.shape == x.shape
    if inner:
        assert maps.inner.shape == (3, 16) and (maps.inner >= 0).all()
    else:
        assert maps.inner is None and block.inner is None
    z = maps.z
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
    torch.testing.assert_close(maps_aia.z, maps_se.z[:, :, None, None].expand_as(x))
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
    cos = KernelAttention(8, "gaussian", reduction=2, rff_dim=12, rff_features="cos",
                          omega="learned").eval()
    small = with_rff(cos, rff_dim=5)
    assert small.features.out_dim == 5 and small.outer[0].in_channels == 5
    assert small.features.rff.phase.shape == (5,) and small(x).shape == x.shape


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
    with pytest.raises(ValueError, match="omega must be one of"):
        RandomFourierFeatures(4, 8, omega="trained")
    with pytest.raises(ValueError, match="features must be one of"):
        RandomFourierFeatures(4, 8, features="sin")
    with pytest.raises(ValueError, match="sigma must be a finite number > 0 or 'median'"):
        KernelAttention(16, "gaussian", sigma="mean")
    with pytest.raises(ValueError, match="calibrate_sigma needs kind='gaussian'"):
        KernelAttention(16, "linear").calibrate_sigma(torch.randn(2, 16, 3, 3))


# ----------------------------------------------------------------------------- figures

def test_figures_render():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmlviz.masks import channel_energy
    from dmlviz.viz.aia_maps import (
        aia_explorer,
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
