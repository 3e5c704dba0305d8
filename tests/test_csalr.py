"""Tests for dmlviz.attention.csalr against an explicit slow implementation of eqs. 10–18."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dmlviz.attention.csalr import (
    CSALR,
    CSALRMaps,
    SelfAttention,
    SelfAttentionMaps,
    csalr_attention,
)
from dmlviz.attention.landmarks import landmark_grid
from dmlviz.attention.nystrom import softmax_attention

DT = torch.float64


def _module(cls=CSALR, **kw):
    torch.manual_seed(0)
    m = cls(**kw).to(DT)
    with torch.no_grad():
        m.alpha.fill_(0.7)
    return m


def slow_csalr(m: CSALR, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eqs. 10–17 written out: loops over batch and groups, avg_pool2d landmarks, explicit
    same-patch indicator on A_nm and A_mm only (eqs. 15–16: "we transform A_n,m and A_m,m";
    B = A_m,n as eq. 13), explicit inverse."""
    b, c, h, w = x.shape
    mh, mw = grid
    assert h % mh == 0 and w % mw == 0  # the slow path uses kernel = stride pooling
    g = m.groups
    cq, cv = m.qk_channels // g, c // g
    q_all, k_all, v_all = m.query(x), m.key(x), m.value(x)
    ph, pw = h // mh, w // mw
    patch = torch.tensor([[(i // ph) * mw + (j // pw) for j in range(w)] for i in range(h)]).flatten()
    big_m = mh * mw
    P = torch.zeros(big_m, h * w, dtype=x.dtype)
    for pos in range(h * w):
        P[patch[pos], pos] = 1.0
    outs = []
    for bi in range(b):
        heads = []
        for gi in range(g):
            qm = q_all[bi, gi * cq:(gi + 1) * cq]  # (cq, H, W)
            km = k_all[bi, gi * cq:(gi + 1) * cq]
            vm = v_all[bi, gi * cv:(gi + 1) * cv]
            q = qm.flatten(1).T  # (N, cq)
            k = km.flatten(1).T
            v = vm.flatten(1).T  # (N, cv)
            qt = F.avg_pool2d(qm[None], (ph, pw), (ph, pw))[0].flatten(1).T  # (M, cq)
            kt = F.avg_pool2d(km[None], (ph, pw), (ph, pw))[0].flatten(1).T
            s = m.scale
            a_nm = torch.softmax(s * q @ kt.T, 1)
            a_mm = torch.softmax(s * qt @ kt.T, 1)
            a_mn = torch.softmax(s * qt @ k.T, 1)
            if m.indicator:
                a_nm, a_mm = a_nm + P.T, a_mm + torch.eye(big_m, dtype=x.dtype)  # eqs. (15), (16)
            wmat = a_nm @ torch.linalg.inv(a_mm)
            heads.append((wmat @ a_mn @ v).T.reshape(cv, h, w))
        outs.append(torch.cat(heads, 0))
    y = torch.stack(outs)
    return x + m.alpha * m.fuse(y)


@pytest.mark.parametrize("groups,indicator", [(1, True), (2, True), (4, False)])
def test_matches_slow_reference(groups, indicator):
    m = _module(channels=16, qk_channels=8, landmarks=(2, 3), groups=groups, indicator=indicator,
                inverse="solve")
    x = torch.randn(2, 16, 6, 9, dtype=DT)
    torch.testing.assert_close(m(x), slow_csalr(m, x, (2, 3)), rtol=1e-8, atol=1e-8)


def test_all_landmarks_without_indicator_is_exact():
    m = _module(channels=8, qk_channels=4, landmarks=(5, 6), indicator=False, inverse="pinv")
    x = torch.randn(1, 8, 5, 6, dtype=DT)
    torch.testing.assert_close(m.reconstruction(x), m.full_attention(x), rtol=1e-6, atol=1e-8)
    sa = _module(SelfAttention, channels=8, qk_channels=4)
    sa.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), sa(x), rtol=1e-6, atol=1e-8)


def test_full_attention_is_softmax_of_projections():
    m = _module(channels=8, qk_channels=4, groups=2, landmarks=4)
    x = torch.randn(2, 8, 4, 4, dtype=DT)
    q, k, _ = m.qkv(x)
    ref = softmax_attention(q.flatten(0, 1), k.flatten(0, 1), scale=m.scale).reshape(2, 2, 16, 16)
    torch.testing.assert_close(m.full_attention(x), ref)
    _, maps = _module(SelfAttention, channels=8, qk_channels=4, groups=2)(x, return_maps=True)
    assert isinstance(maps, SelfAttentionMaps)
    a = maps.attention
    assert a.shape == (2, 2, 16, 16)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 16, dtype=DT))


def test_alpha_zero_is_identity():
    for m in (CSALR(8, 4, (2, 2), groups=2), SelfAttention(8, 4, groups=2)):
        x = torch.randn(2, 8, 4, 6)
        torch.testing.assert_close(m(x), x)


def test_maps_shapes_and_b_rows():
    """Eq. (13) "B = A_m,n", a softmax over the n positions: its rows sum to 1 whether or
    not the indicator is on (eqs. 15–16 transform only A_n,m and A_m,m)."""
    x = torch.randn(2, 16, 8, 8, dtype=DT)
    for kw in (dict(indicator=False), dict(indicator=True), dict(indicator=True, indicator_at="logit")):
        m = _module(channels=16, qk_channels=8, landmarks=(2, 4), groups=4, **kw)
        y, maps = m(x, return_maps=True)
        assert isinstance(maps, CSALRMaps)
        w, b = maps.W, maps.B
        assert y.shape == x.shape and w.shape == (2, 4, 64, 8) and b.shape == (2, 4, 8, 64)
        torch.testing.assert_close(b.sum(-1), torch.ones(2, 4, 8, dtype=DT))
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 64, dtype=DT))  # W 1 = 1
        torch.testing.assert_close((w @ b).sum(-1), torch.ones(2, 4, 64, dtype=DT))
    # the deviation kept for teaching (P on B too): B's rows sum to 1 + patch size
    m = _module(channels=16, qk_channels=8, landmarks=(2, 4), groups=1, indicator_at="affinity_b")
    b = m(x, return_maps=True)[1].B
    torch.testing.assert_close(b.sum(-1), torch.full((2, 1, 8), 9.0, dtype=DT))


def test_indicator_with_every_position_a_landmark_reconstructs_A_exactly():
    """Eqs. (15)–(16) with m = n: 1(Q_i, K'_j) = I, A_n,m = A_m,m = A, so
    W = (A + I)(A + I)⁻¹ = I and W B = A_m,n = A (eq. 14) — checked against the explicit
    softmax(s q kᵀ) of eq. (10), in float64."""
    m = _module(channels=8, qk_channels=4, landmarks=(5, 6), indicator=True, inverse="solve")
    x = torch.randn(2, 8, 5, 6, dtype=DT)
    q, k, _ = m.qkv(x)
    exact = torch.softmax(m.scale * q @ k.transpose(-1, -2), -1)  # (2, 1, 30, 30) eq. (10)
    torch.testing.assert_close(m.reconstruction(x), exact, rtol=1e-12, atol=1e-14)
    w = m(x, return_maps=True)[1].W
    torch.testing.assert_close(w, torch.eye(30, dtype=DT).expand_as(w), rtol=1e-12, atol=1e-12)
    sa = _module(SelfAttention, channels=8, qk_channels=4)
    sa.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), sa(x), rtol=1e-10, atol=1e-12)


def test_groups_split_and_fuse():
    """Group g of the multi-head module equals a one-group CSALR on that group's channels."""
    m = _module(channels=8, qk_channels=4, landmarks=(2, 2), groups=2, inverse="solve")
    x = torch.randn(1, 8, 4, 4, dtype=DT)
    q, k, v = m.qkv(x)
    out = csalr_attention(q, k, v, (2, 2), size=(4, 4), scale=m.scale)  # (1, 2, 16, 4)
    for g in range(2):
        one = _module(channels=8, qk_channels=2, landmarks=(2, 2), groups=1, scale=m.scale)
        with torch.no_grad():
            one.query.weight.copy_(m.query.weight[2 * g:2 * g + 2])
            one.query.bias.copy_(m.query.bias[2 * g:2 * g + 2])
            one.key.weight.copy_(m.key.weight[2 * g:2 * g + 2])
            one.key.bias.copy_(m.key.bias[2 * g:2 * g + 2])
        qg, kg, _ = one.qkv(x)
        ref = csalr_attention(qg, kg, v[:, g:g + 1], (2, 2), size=(4, 4), scale=m.scale)
        torch.testing.assert_close(out[:, g:g + 1], ref)
    y = out.transpose(2, 3).reshape(1, 8, 4, 4)  # heads concatenated along channels
    torch.testing.assert_close(m(x), x + m.alpha * m.fuse(y))


def test_non_divisible_map_pools_disjoint_patches():
    m = _module(channels=4, qk_channels=4, landmarks=(2, 3), indicator=False, inverse="pinv")
    x = torch.randn(1, 4, 7, 8, dtype=DT)  # 7 / 2 and 8 / 3 are not integers
    q, k, v = m.qkv(x)
    _, (w, b) = csalr_attention(q, k, v, (2, 3), size=(7, 8), indicator=False, scale=m.scale,
                                return_maps=True)
    assert w.shape == (1, 1, 56, 6) and b.shape == (1, 1, 6, 56)
    # explicit pooling: rows split 0-3 | 4-6, columns 0-2 | 3-5 | 6-7
    rows, cols = [range(0, 4), range(4, 7)], [range(0, 3), range(3, 6), range(6, 8)]
    qm = m.query(x)[0]
    km = m.key(x)[0]
    qt = torch.stack([qm[:, r][:, :, c].mean((1, 2)) for r in rows for c in cols])  # (6, C)
    kt = torch.stack([km[:, r][:, :, c].mean((1, 2)) for r in rows for c in cols])
    a_mn = torch.softmax(m.scale * qt @ km.flatten(1), 1)
    torch.testing.assert_close(b[0, 0], a_mn)
    a_nm = torch.softmax(m.scale * qm.flatten(1).T @ kt.T, 1)
    a_mm = torch.softmax(m.scale * qt @ kt.T, 1)
    torch.testing.assert_close(w[0, 0], a_nm @ torch.linalg.pinv(a_mm), rtol=1e-6, atol=1e-8)


def test_gradients_reach_alpha_q_k_v():
    m = CSALR(8, 4, (2, 2), groups=2)
    with torch.no_grad():
        m.alpha.fill_(0.5)
    m(torch.randn(2, 8, 4, 4)).square().sum().backward()
    for name in ("alpha", "query.weight", "key.weight", "value.weight", "fuse.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    m0 = CSALR(8, 4, (2, 2))  # α = 0: through the main branch only α gets a gradient
    m0(torch.randn(2, 8, 4, 4)).square().sum().backward()
    assert m0.alpha.grad.abs().sum() > 0
    assert m0.query.weight.grad is None or m0.query.weight.grad.abs().sum() == 0


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.biggest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.biggest = max(self.biggest, t.numel())
        return out


def test_forward_never_builds_the_n_by_n_map():
    m = CSALR(8, 4, (4, 4), groups=1)
    x = torch.randn(1, 8, 32, 32)  # N = 1024
    with torch.no_grad(), _MaxNumel() as probe:
        m(x)
    assert probe.biggest < 1024 * 1024 // 8, probe.biggest


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="not divisible by groups"):
        CSALR(10, groups=4)
    with pytest.raises(ValueError, match="qk_channels"):
        CSALR(8, qk_channels=6, groups=4)
    with pytest.raises(ValueError, match="larger than the 4×4"):
        CSALR(8, 4, landmarks=(5, 2))(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="more than the N"):
        CSALR(8, 4, landmarks=40)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="C = 8 channels"):
        CSALR(8, 4, landmarks=4)(torch.randn(1, 6, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        CSALR(8, 4, landmarks=4)(torch.randn(8, 16))
    with pytest.raises(ValueError, match="indicator_at"):
        CSALR(8, indicator_at="softmax")
    assert landmark_grid(96, (28, 28)) in ((8, 12), (12, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = _module(channels=16, qk_channels=8, landmarks=(2, 4), groups=2).float()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(m.cuda()(x.cuda()).cpu(), m.cpu()(x), rtol=1e-4, atol=1e-4)


def test_figures_and_explorer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmlviz.cost import ModuleCost
    from dmlviz.viz.csalr_maps import csalr_explorer, plot_cost, plot_reconstruction_points

    a = torch.softmax(torch.randn(16, 16), -1)
    fig = plot_reconstruction_points(torch.rand(3, 32, 32), a, a + 0.01, (4, 4), [(0, 0), (3, 2)])
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="outside the 4×4 grid"):
        plot_reconstruction_points(torch.rand(3, 32, 32), a, a, (4, 4), [(4, 0)])
    table = {n: ModuleCost(0, 0, v, 2**20, (1,), 2, "cpu") for n, v in (("SA", 3.0), ("CSALR G=1", 9.0))}
    assert len(plot_cost(table).axes) == 2
    with pytest.raises(ValueError, match="not in the table"):
        plot_cost(table, names=["nope"])
    calls = []

    def maps_fn(i, m, g):
        calls.append((i, m, g))
        return a, a

    box = csalr_explorer([torch.rand(3, 32, 32)] * 2, maps_fn, (4, 4))
    box.children[0].children[0].value = 1  # the first slider redraws
    assert calls == [(0, 96, 1), (1, 96, 1)]
    plt.close("all")


def test_reconstruction_panels_keep_their_label_for_every_point():
    """Fig. 4 helper: each query row titles its reconstruction panel with the caller's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmlviz.viz.csalr_maps import plot_reconstruction_points

    a = torch.softmax(torch.randn(16, 16), -1)
    fig = plot_reconstruction_points(torch.rand(3, 32, 32), a, a, (4, 4), [(0, 0), (1, 1), (3, 2)],
                                     label="paper: W·B")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1::3] == ["paper: W·B"] * 3, titles
    plt.close(fig)


@pytest.mark.parametrize("inverse,indicator", [("solve", True), ("pinv", False), ("iterative", False)])
def test_output_without_maps_equals_w_times_b_v(inverse, indicator):
    """Eq. (17): O_i = I_i + α Σ_k W_ik Σ_j B_kj V_j. The fast path (no maps) computes
    A_nm (A_mm⁻¹ (B v)); it must equal W (B v) with W = A_nm A_mm⁻¹ formed explicitly."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 48, 4, generator=g, dtype=DT) for _ in range(3))
    fast = csalr_attention(q, k, v, (2, 3), size=(6, 8), indicator=indicator, inverse=inverse, scale=0.5)
    out, maps = csalr_attention(q, k, v, (2, 3), size=(6, 8), indicator=indicator, inverse=inverse,
                                scale=0.5, return_maps=True)
    w, b = maps.W, maps.B
    torch.testing.assert_close(fast, out, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(fast, w @ (b @ v), rtol=1e-8, atol=1e-10)
