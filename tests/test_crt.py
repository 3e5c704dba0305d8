"""Tests for dmlviz.attention.crt (coded residual transform, Kan et al. NeurIPS 2022)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmlviz.attention.crt import (
    CodedResidualTransform,
    CRTObjective,
    TwoBranchCRT,
    correlation,
    cross_branch_consistency_loss,
    prototype_cosine,
    prototype_diversity_loss,
    residual_encoding,
)
from dmlviz.cost import count_parameters
from dmlviz.losses import MultiSimilarityLoss


def _slow_residuals(x, c, subtract=True):
    """eq. (1) with explicit loops over images, prototypes and positions."""
    b, ch, h, w = x.shape
    out = torch.zeros(b, len(c), ch, dtype=x.dtype)
    for i in range(b):
        for k in range(len(c)):
            for u in range(h):
                for v in range(w):
                    xj = x[i, :, u, v]
                    out[i, k] += math.log1p(math.exp(float(xj @ c[k]))) * (xj - c[k] if subtract else xj)
    return out


def test_no_residual_ablation_drops_the_prototype_term():
    """Eq. (1) "r_k = Σ_j log[1 + exp(w_kj)](x_j − c_k)"; the ablation keeps the weights and
    drops "− c_k": Σ_j log[1 + exp(w_kj)] x_j (checked against the loop)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    c = torch.randn(4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(residual_encoding(x, c, subtract_prototype=False),
                               _slow_residuals(x, c, subtract=False))
    m = CodedResidualTransform(5, 4, 6, subtract_prototype=False).double()
    _, maps = m(x, return_maps=True)
    torch.testing.assert_close(maps.residuals, _slow_residuals(x, m.prototypes.detach(), False))
    assert "subtract_prototype=False" in repr(m)


def test_residual_encoding_matches_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    c = torch.randn(3, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(residual_encoding(x, c), _slow_residuals(x, c))


def test_tiny_example_by_hand():
    # a 2-channel 1×2 map, one prototype: r = Σ_j softplus(x_j·c)(x_j − c)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # x_1=(1,0), x_2=(0,1)
    c = torch.tensor([[1.0, 0.0]])
    sp1, sp0 = math.log1p(math.e), math.log(2.0)
    expected = torch.tensor([[[sp1 * 0.0 + sp0 * -1.0, sp1 * 0.0 + sp0 * 1.0]]])
    torch.testing.assert_close(residual_encoding(x, c), expected)


def test_correlation_maps_match_einsum():
    torch.manual_seed(0)
    m = CodedResidualTransform(6, 4, 8)
    x = torch.randn(3, 6, 5, 5)
    ref = torch.einsum("bchw,kc->bkhw", x, m.prototypes)
    torch.testing.assert_close(m.correlation_maps(x), ref)
    torch.testing.assert_close(correlation(x, m.prototypes), ref)
    f, maps = m(x, return_maps=True)
    assert f.shape == (3, 8)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    assert maps.correlation.shape == (3, 4, 5, 5)
    torch.testing.assert_close(maps.weights, F.softplus(ref))
    assert maps.residuals.shape == (3, 4, 6) and maps.prototype_cosine.shape == (4, 4)


def test_embedding_is_mean_of_per_prototype_networks():
    torch.manual_seed(1)
    m = CodedResidualTransform(4, 3, 5)
    x = torch.randn(2, 4, 3, 3)
    r = residual_encoding(x, m.prototypes)
    outs = [F.gelu(r[:, k] @ m.w1[k] + m.b1[k]) @ m.w2[k] + m.b2[k] for k in range(3)]
    torch.testing.assert_close(m(x), F.normalize(torch.stack(outs).mean(0), dim=1))  # eq. (2)


def test_diversity_loss_orthogonal_and_identical():
    assert float(prototype_diversity_loss(torch.eye(4, 6))) == pytest.approx(0.0, abs=1e-7)
    same = torch.randn(1, 6).repeat(5, 1)
    assert float(prototype_diversity_loss(same)) == pytest.approx(1.0, abs=1e-6)
    assert float(prototype_diversity_loss(torch.randn(1, 6))) == 0.0
    p = torch.randn(5, 6)
    cos = F.cosine_similarity(p[:, None], p[None], dim=2)
    torch.testing.assert_close(prototype_cosine(p), cos)
    off = ~torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(prototype_diversity_loss(p), cos[off].abs().mean())


def test_consistency_loss():
    f = torch.randn(6, 8)
    assert float(cross_branch_consistency_loss(f, f)) == pytest.approx(0.0, abs=1e-7)
    # scale and rotation do not change cosine matrices; a different dimension is allowed
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    pad = torch.cat([3 * f @ q, torch.zeros(6, 4)], dim=1)
    assert float(cross_branch_consistency_loss(f, pad)) == pytest.approx(0.0, abs=36e-6)  # sum of 36
    with pytest.raises(ValueError, match="same images"):
        cross_branch_consistency_loss(f, torch.randn(5, 8))
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_branch_consistency_loss(f, f, reduction="max")


def test_consistency_loss_is_the_l1_norm_of_eq5():
    """Eq. (4) "s_ij = f_i · f_j^T / (‖f_i‖₂ ‖f_j‖₂)" and eq. (5) "L_CON = ‖S⁽¹⁾ − S⁽²⁾‖₁":
    the entry-wise L1 norm, i.e. the sum of |s⁽¹⁾_ij − s⁽²⁾_ij| over all N × N entries,
    computed here with explicit loops; the "mean" option is that sum / N²."""
    g = torch.Generator().manual_seed(7)
    n = 6
    f1 = torch.randn(n, 8, generator=g, dtype=torch.float64)
    f2 = torch.randn(n, 3, generator=g, dtype=torch.float64)

    def s(f, i, j):
        return float(f[i] @ f[j]) / (float(f[i].norm()) * float(f[j].norm()))  # eq. (4)

    l1 = sum(abs(s(f1, i, j) - s(f2, i, j)) for i in range(n) for j in range(n))  # eq. (5)
    assert float(cross_branch_consistency_loss(f1, f2)) == pytest.approx(l1, rel=1e-12)
    assert float(cross_branch_consistency_loss(f1, f2, reduction="sum")) == pytest.approx(l1, rel=1e-12)
    assert float(cross_branch_consistency_loss(f1, f2, reduction="mean")) == pytest.approx(
        l1 / n**2, rel=1e-12)


def test_shared_vs_separate_parameter_counts():
    c, k, d = 10, 7, 6
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    gamma = c * d + d + d * d + d
    assert count(CodedResidualTransform(c, k, d)) == k * c + k * gamma
    assert count(CodedResidualTransform(c, k, d, shared_embedding=True)) == k * c + gamma
    x = torch.randn(2, c, 3, 3)
    assert CodedResidualTransform(c, k, d, shared_embedding=True)(x).shape == (2, d)


def test_two_branch_and_objective():
    torch.manual_seed(0)
    m = TwoBranchCRT(6, (3, 5), (4, 8))
    x = torch.randn(8, 6, 3, 3)
    f = m(x)
    assert f.shape == (8, 12)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(8))
    f1, f2 = m.split(f)
    torch.testing.assert_close(f1, m.branches[0](x))
    torch.testing.assert_close(f2, m.branches[1](x))
    labels = torch.arange(4).repeat_interleave(2)
    ms = MultiSimilarityLoss()
    obj = CRTObjective(m, ms, diversity_weight=1.0, metric_weight=2.0, consistency_weight=0.5)
    assert list(obj.parameters()) == []  # the model is referenced, not registered
    expected = (prototype_diversity_loss(m.branches[0].prototypes)
                + prototype_diversity_loss(m.branches[1].prototypes)
                + 2.0 * (ms(f1, labels) + ms(f2, labels))
                + 0.5 * cross_branch_consistency_loss(f1, f2, reduction="sum"))
    torch.testing.assert_close(obj(f, labels), expected)
    obj(f, labels).backward()
    assert m.branches[0].prototypes.grad is not None
    # per-branch λ₁ (section 4.1: "1.0" in the first branch, "0.1" in the second) and mean L_CON
    obj2 = CRTObjective(m, ms, metric_weight=(1.0, 0.1), consistency_weight=0.9,
                        consistency_reduction="mean")
    expected2 = (prototype_diversity_loss(m.branches[0].prototypes)
                 + prototype_diversity_loss(m.branches[1].prototypes)
                 + 1.0 * ms(f1, labels) + 0.1 * ms(f2, labels)
                 + 0.9 * cross_branch_consistency_loss(f1, f2).detach() / 64)
    torch.testing.assert_close(obj2(f, labels).detach(), expected2.detach())
    assert obj2.metric_weights == (1.0, 0.1) and "consistency_reduction='mean'" in repr(obj2)
    with pytest.raises(ValueError, match="one number per branch"):
        CRTObjective(m, ms, metric_weight=(1.0, 0.1, 0.2))
    with pytest.raises(ValueError, match="consistency_reduction"):
        CRTObjective(m, ms, consistency_reduction="max")


def test_two_branch_retrieves_with_branch_one_by_default():
    """Sec. 4.4, Table 8: "This table reports the results of embedding computed from the first
    embedding branch"; the concatenation is a named option, and training sees both."""
    torch.manual_seed(0)
    m = TwoBranchCRT(6, (3, 5), (4, 8))
    x = torch.randn(5, 6, 3, 3)
    both = m(x)  # training mode
    assert both.shape == (5, 12)
    m.eval()
    torch.testing.assert_close(m(x), m.branches[0](x))  # eval: branch 1
    torch.testing.assert_close(m(x, output="branch2"), m.branches[1](x))
    torch.testing.assert_close(m(x, output="both"), both)
    m_cat = TwoBranchCRT(6, (3, 5), (4, 8), retrieval="concat")
    m_cat.load_state_dict(m.state_dict())
    torch.testing.assert_close(m_cat.eval()(x), both)
    f, maps = m(x, return_maps=True)  # eval: branch 1 only
    assert f.shape == (5, 4) and maps.branch2 is None
    assert maps.branch1.correlation.shape == (5, 3, *x.shape[2:])
    _, maps = m(x, return_maps=True, output="both")
    assert maps.branch1.weights.shape[1] == 3 and maps.branch2.weights.shape[1] == 5
    _, maps = m(x, return_maps=True, output="branch2")
    assert maps.branch1 is None and maps.branch2.residuals.shape == (5, 5, 6)
    with pytest.raises(ValueError, match="retrieval must be one of"):
        TwoBranchCRT(6, (3, 5), (4, 8), retrieval="mean")
    with pytest.raises(ValueError, match="output must be one of"):
        m(x, output="branch3")


def test_two_branch_shared_weights():
    """Tables 9–10: "the network weight of the second embedding branch is shared from the
    first embedding branch" (equal numbers of prototypes)."""
    torch.manual_seed(0)
    sep = TwoBranchCRT(6, (3, 3), (4, 8))
    shared = TwoBranchCRT(6, (3, 3), (4, 8), share_weights=True)
    assert shared.branches[1].prototypes is shared.branches[0].prototypes
    gamma = lambda d: 3 * (6 * d + d + d * d + d)  # noqa: E731
    assert count_parameters(sep) == 2 * 3 * 6 + gamma(4) + gamma(8)
    assert count_parameters(shared) == 3 * 6 + gamma(4) + gamma(8)
    same = TwoBranchCRT(6, (3, 3), (4, 4), share_weights=True).eval()
    x = torch.randn(4, 6, 3, 3)
    torch.testing.assert_close(same(x, output="branch1"), same(x, output="branch2"))
    assert len(same.distinct_branches) == 1
    with pytest.raises(ValueError, match="same number of prototypes"):
        TwoBranchCRT(6, (3, 5), (4, 8), share_weights=True)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_prototypes"):
        CodedResidualTransform(4, 0, 8)
    with pytest.raises(ValueError, match="in_channels"):
        CodedResidualTransform(0, 2, 8)
    m = CodedResidualTransform(4, 2, 8)
    with pytest.raises(ValueError, match="C = 4 channels"):
        m(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match="prototypes"):
        residual_encoding(torch.randn(1, 4, 2, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match="num_prototypes"):
        TwoBranchCRT(4, (3,), (4, 8))
    with pytest.raises(ValueError, match="model"):
        CRTObjective(torch.nn.Linear(2, 2), MultiSimilarityLoss())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    m = CodedResidualTransform(6, 4, 8)
    x = torch.randn(3, 6, 4, 4)
    ref = m(x)
    torch.testing.assert_close(m.cuda()(x.cuda()).cpu(), ref, atol=1e-5, rtol=1e-4)


def test_prototype_figures_and_explorer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmlviz.viz.prototypes import (
        crt_explorer,
        plot_metric_panels,
        plot_object_share,
        plot_prototype_map,
    )

    fig = plot_object_share({"before": [0.1, 0.5], "after": [0.2, 0.7]}, chance=0.2)
    assert len(fig.axes[0].patches) == 4
    # Fig. 2: "The red dots on the top right corner indicates the background prototype"
    from dmlviz.viz.prototypes import background_prototype, prototype_row_names

    assert background_prototype([0.4, 0.05, 0.3]) == 1
    assert prototype_row_names(3, 1) == ["c0", "c1 ● bg", "c2"]
    fig_bg = plot_object_share({"after": [0.4, 0.05, 0.3]}, chance=0.2, background=1)
    labels = [t.get_text() for t in fig_bg.axes[0].get_xticklabels()]
    assert labels[1] == "c1 ● bg" and len(fig_bg.axes[0].lines) == 2  # chance line + red dot
    with pytest.raises(ValueError, match="background"):
        prototype_row_names(3, 5)
    with pytest.raises(ValueError, match="prototypes"):
        plot_object_share({"a": [0.1, 0.2], "b": [0.3]}, chance=0.2)
    fig2 = plot_metric_panels({"Recall@1": {"baseline": 0.5, "crt": 0.9},
                               "ρ": {"baseline": 0.3, "crt": 0.4}})
    assert len(fig2.axes) == 2
    torch.manual_seed(0)
    m = CodedResidualTransform(4, 3, 5)
    maps = [torch.randn(4, 2, 2), torch.randn(4, 3, 3)]
    images = [torch.rand(3, 16, 16), torch.rand(3, 24, 24)]
    box = crt_explorer(m, maps, images, masks=[torch.rand(16, 16) > 0.5, None], titles=["a", "b"])
    slider = box.children[0].children[0]
    slider.value = 2  # redraws without error
    with pytest.raises(ValueError, match="same length"):
        crt_explorer(m, maps, images[:1])
    assert len(plot_prototype_map(images[1], torch.randn(3, 3)).axes) == 3  # + colour bar
    with pytest.raises(ValueError, match="corr"):
        plot_prototype_map(images[1], torch.randn(3))
    plt.close("all")


