"""dmlviz.losses against pytorch-metric-learning (independent oracle), plus errors."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

from dmlviz.losses import (
    HybridLoss,
    MultiSimilarityLoss,
    ProxyAnchorLoss,
    TripletLoss,
    parameter_groups,
)

SEEDS = [0, 1, 2, 3, 4]
ATOL = 1e-5
# Largest |ours − PML| seen in every comparison below (value and gradients); reported at the
# end of the session by test_report_max_abs_diff so the number in the docs is real.
MAX_DIFF: dict[str, float] = {}


def batch(seed: int, b: int = 32, d: int = 16, num_classes: int | None = None,
          clustered: bool = False, dtype=torch.float64):
    """A random batch (B, D) with 4–8 classes; ``clustered`` puts classes around centres."""
    g = torch.Generator().manual_seed(seed)
    c = num_classes or int(torch.randint(4, 9, (1,), generator=g))
    labels = torch.randint(0, c, (b,), generator=g)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    if clustered:
        x = 0.5 * x + 2.0 * torch.randn(c, d, generator=g, dtype=dtype)[labels]
    return x, labels, c


def compare(name: str, ours_fn, theirs_fn, x: torch.Tensor, extra=()):
    """Loss value and gradients (w.r.t. x and ``extra`` pairs) of ours vs PML."""
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    la, lb = ours_fn(xa), theirs_fn(xb)
    la.backward()
    lb.backward()
    diffs = [(la - lb).abs().item(), (xa.grad - xb.grad).abs().max().item()]
    for pa, pb in extra:
        diffs.append((pa.grad - pb.grad).abs().max().item())
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), *diffs)
    assert torch.allclose(la, lb, atol=ATOL, rtol=0), (la.item(), lb.item())
    assert torch.allclose(xa.grad, xb.grad, atol=ATOL, rtol=0)
    for pa, pb in extra:
        assert torch.allclose(pa.grad, pb.grad, atol=ATOL, rtol=0)
    return la


# --------------------------------------------------------------------------- multi-similarity


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params", [(2.0, 50.0, 0.5), (1.0, 10.0, 0.2)])
def test_multi_similarity_equals_pml(seed, params):
    alpha, beta, base = params
    x, y, _ = batch(seed, clustered=seed % 2 == 1)
    ours = MultiSimilarityLoss(alpha, beta, base)
    theirs = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    loss = compare("multi_similarity", lambda e: ours(e, y), lambda e: theirs(e, y), x)
    assert loss.item() > 0


def test_multi_similarity_edge_batches_equal_pml():
    ours, theirs = MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss()
    x = torch.randn(6, 5, dtype=torch.float64)
    for y in (torch.arange(6),  # no positives
              torch.tensor([0, 0, 1, 2, 3, 4])):  # most anchors without a positive
        compare("multi_similarity", lambda e, y=y: ours(e, y), lambda e, y=y: theirs(e, y), x)
    with pytest.raises(ValueError, match="single class"):  # no negatives: refused (issue 20)
        ours(x, torch.zeros(6, dtype=torch.long))


def test_multi_similarity_hand_value():
    """Eq. (6), ℓ_m(X) = 1/m Σ_i (1/γ log(1 + Σ_{k∈P_i} exp(−γ(S_ik − σ))) + 1/β log(1 +
    Σ_{k∈N_i} exp(β(S_ik ± σ)))) — the negative term in Wang et al.'s form S − σ, the default
    (the paper prints + σ: ``negative_base``); computed by hand on four points."""
    # two classes of two orthogonal-ish points; compute eq. (MS) by hand
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # every anchor: one positive at S = 0, negatives at S = -1 (opposite) and 0
    a, b, lam = 2.0, 50.0, 0.5
    pos = torch.log1p(torch.exp(torch.tensor(-a * (0 - lam)))) / a
    neg = torch.log1p(torch.exp(torch.tensor(b * (-1 - lam))) + torch.exp(torch.tensor(b * (0 - lam)))) / b
    expected = (pos + neg).double()
    got = MultiSimilarityLoss(a, b, lam)(x, y)
    assert torch.allclose(got, expected, atol=1e-12)


# --------------------------------------------------------------------------- proxy anchor


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [None, 12])  # 12: some proxies have no positive
def test_proxy_anchor_equals_pml(seed, num_classes):
    x, y, c = batch(seed, num_classes=None, clustered=seed % 2 == 0)
    n_cls = num_classes or c
    torch.manual_seed(seed)
    ours = ProxyAnchorLoss(n_cls, x.shape[1], margin=0.1, alpha=32.0).double()
    theirs = pml_losses.ProxyAnchorLoss(n_cls, x.shape[1], margin=0.1, alpha=32).double()
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    loss = compare("proxy_anchor", lambda e: ours(e, y), lambda e: theirs(e, y), x,
                   extra=[(ours.proxies, theirs.proxies)])
    assert loss.item() > 0


def test_proxy_anchor_init_and_parameter():
    loss = ProxyAnchorLoss(5, 7)
    assert isinstance(loss.proxies, nn.Parameter)
    assert loss.proxies.shape == (5, 7)
    assert [n for n, _ in loss.named_parameters()] == ["proxies"]
    # kaiming_normal_(mode="fan_out") on (5, 7): std = sqrt(2 / 5)
    torch.manual_seed(0)
    big = ProxyAnchorLoss(2000, 50)
    assert abs(big.proxies.std().item() - (2 / 2000) ** 0.5) < 2e-3


def test_proxy_anchor_float32_proxies_with_float64_embeddings():
    x, y, c = batch(0)
    loss = ProxyAnchorLoss(c, x.shape[1])  # float32 proxies
    x = x.requires_grad_(True)
    loss(x, y).backward()
    assert loss.proxies.grad is not None and loss.proxies.grad.dtype == torch.float32
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("bad", [[-1, 0, 1, 2], [0, 1, 2, 4]])
def test_proxy_anchor_labels_out_of_range(bad):
    loss = ProxyAnchorLoss(4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        loss(torch.randn(4, 3), torch.tensor(bad))


def test_proxy_anchor_wrong_dim_and_args():
    with pytest.raises(ValueError, match="embedding_dim = 3"):
        ProxyAnchorLoss(4, 3)(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes"):
        ProxyAnchorLoss(0, 3)
    with pytest.raises(ValueError, match="embedding_dim"):
        ProxyAnchorLoss(3, 2.5)
    with pytest.raises(ValueError, match="alpha"):
        ProxyAnchorLoss(3, 2, alpha=0)


# --------------------------------------------------------------------------- triplet


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.2, 0.05])
def test_triplet_batch_hard_equals_pml(seed, margin):
    x, y, _ = batch(seed, clustered=seed % 2 == 1)
    ours = TripletLoss(margin=margin, mining="batch_hard")
    theirs = pml_losses.TripletMarginLoss(margin=margin)
    miner = pml_miners.BatchHardMiner()
    compare("triplet_batch_hard", lambda e: ours(e, y), lambda e: theirs(e, y, miner(e, y)), x)


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_all_equals_pml(seed):
    x, y, _ = batch(seed, b=24, clustered=seed % 2 == 0)
    ours = TripletLoss(margin=0.2, mining="all")
    theirs = pml_losses.TripletMarginLoss(margin=0.2)  # no miner: every valid triplet
    compare("triplet_all", lambda e: ours(e, y), lambda e: theirs(e, y), x)


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
def test_triplet_zero_loss_keeps_graph(mining):
    # two tight, far-apart classes: no triplet violates the margin
    x = torch.tensor([[1.0, 0.0], [0.99, 0.01], [-1.0, 0.0], [-0.99, -0.01]],
                     requires_grad=True)
    loss = TripletLoss(0.2, mining)(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)


def test_triplet_hand_value():
    # a=(1,0), p=(0,1) same class, n=(-1,0): d(a,p)=√2, d(a,n)=2 → [√2 − 2 + m]_+
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    m = 1.0
    # anchors 0 and 1 each: hardest positive √2; negatives at 2 (anchor 0) and √2 (anchor 1)
    expected = torch.tensor([2**0.5 - 2 + m, 2**0.5 - 2**0.5 + m]).double().mean()
    assert torch.allclose(TripletLoss(m)(x, y), expected, atol=1e-6)


def test_triplet_unknown_mining_names_allowed():
    with pytest.raises(ValueError, match=r"mining must be one of \('batch_hard', 'all'\)"):
        TripletLoss(mining="semihard")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)


# --------------------------------------------------------------------------- hybrid


def test_hybrid_is_ms_plus_weighted_pa():
    """Eq. (7): "Our hybrid objective function is a combination of proxy-anchor and MS losses
    balanced by normalization factor λ: L = ℓ_m + λ ℓ_p" (λ = 0.03, Sec. 4)."""
    x, y, c = batch(3)
    ms, pa = MultiSimilarityLoss(), ProxyAnchorLoss(c, x.shape[1]).double()
    hybrid = HybridLoss(ms, pa, weight=0.03)
    assert torch.allclose(hybrid(x, y), ms(x, y) + 0.03 * pa(x, y), atol=1e-12)
    assert [n for n, _ in hybrid.named_parameters()] == ["proxy.proxies"]


def test_hybrid_equals_pml_combination():
    x, y, c = batch(4, clustered=True)
    torch.manual_seed(0)
    pa = ProxyAnchorLoss(c, x.shape[1]).double()
    hybrid = HybridLoss(MultiSimilarityLoss(), pa, weight=0.03)
    pml_pa = pml_losses.ProxyAnchorLoss(c, x.shape[1]).double()
    with torch.no_grad():
        pml_pa.proxies.copy_(pa.proxies)
    pml_ms = pml_losses.MultiSimilarityLoss()
    compare("hybrid", lambda e: hybrid(e, y), lambda e: pml_ms(e, y) + 0.03 * pml_pa(e, y), x,
            extra=[(pa.proxies, pml_pa.proxies)])


def test_hybrid_rejects_bad_parts():
    with pytest.raises(ValueError, match="pairwise"):
        HybridLoss(lambda e, y: e.sum(), ProxyAnchorLoss(2, 2))
    with pytest.raises(ValueError, match="weight"):
        HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(2, 2), weight=-1)


def test_parameter_groups_give_proxies_their_own_lr():
    model = nn.Linear(8, 4).double()
    loss = HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(3, 4)).double()
    groups = parameter_groups(model, loss, lr=1e-4, proxy_lr=1e-2)
    assert [g["name"] for g in groups] == ["model", "loss"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    assert groups[1]["params"][0] is loss.proxy.proxies
    opt = torch.optim.SGD(groups, lr=0.5)
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.arange(12) % 3
    before_w, before_p = model.weight.detach().clone(), loss.proxy.proxies.detach().clone()
    loss(model(x), y).backward()
    opt.step()
    dw = (model.weight - before_w).abs().max() / model.weight.grad.abs().max()
    dp = (loss.proxy.proxies - before_p).abs().max() / loss.proxy.proxies.grad.abs().max()
    assert abs(dw.item() - 1e-4) < 1e-9 and abs(dp.item() - 1e-2) < 1e-9


def test_parameter_groups_skip_empty_and_reject_shared():
    model = nn.Linear(3, 3)
    assert [g["name"] for g in parameter_groups(model, MultiSimilarityLoss())] == ["model"]
    loss = ProxyAnchorLoss(2, 3)
    with pytest.raises(ValueError, match="share"):
        parameter_groups(nn.ModuleList([model, loss]), loss)
    with pytest.raises(ValueError, match="proxy_lr"):
        parameter_groups(model, loss, proxy_lr=0)


# --------------------------------------------------------------------------- shared behaviour

ALL_LOSSES = [
    lambda: MultiSimilarityLoss(),
    lambda: ProxyAnchorLoss(8, 16).double(),
    lambda: TripletLoss(mining="batch_hard"),
    lambda: TripletLoss(mining="all"),
    lambda: HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(8, 16).double()),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_gradients_flow_through_a_model(make):
    torch.manual_seed(0)
    model = nn.Linear(10, 16).double()
    loss_fn = make()
    x, y = torch.randn(32, 10, dtype=torch.float64), torch.randint(0, 8, (32,))
    loss = loss_fn(model(x), y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.weight.grad).all() and model.weight.grad.abs().sum() > 0
    for p in loss_fn.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize(
    ("emb", "lab", "match"),
    [
        (torch.randn(4, 16, 1), torch.arange(4), r"embeddings must be 2-D \(N, D\), got shape \(4, 16, 1\)"),
        (torch.ones(4, 16, dtype=torch.long), torch.arange(4), "embeddings must be a floating-point"),
        (torch.randn(4, 16), torch.arange(4).float(), "labels must be an integer tensor"),
        (torch.randn(4, 16), torch.zeros(4, 1, dtype=torch.long), r"labels must be 1-D \(N,\), got shape \(4, 1\)"),
        (torch.randn(4, 16), torch.arange(5), r"same length: embeddings has shape \(4, 16\), labels has shape \(5,\)"),
        ([[0.0] * 16] * 4, torch.arange(4), "embeddings must be a torch.Tensor"),
    ],
)
def test_input_validation(make, emb, lab, match):
    with pytest.raises(ValueError, match=match):
        make().float()(emb, lab)


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_small_integer_labels_and_tiny_batches(make):
    loss_fn = make()
    x, y = torch.randn(32, 16, dtype=torch.float64), torch.randint(0, 8, (32,))
    assert torch.equal(loss_fn(x, y.int()), loss_fn(x, y))
    assert torch.equal(loss_fn(x, y.to(torch.uint8)), loss_fn(x, y))
    if isinstance(loss_fn, ProxyAnchorLoss):
        one = loss_fn(x[:1], y[:1])  # one sample: the other proxies are its negatives
        assert one.ndim == 0 and torch.isfinite(one)
    else:  # one sample is one class: no negative pair, refused (issue 20)
        with pytest.raises(ValueError, match="single class"):
            loss_fn(x[:1], y[:1])


def test_constructor_validation():
    with pytest.raises(ValueError, match="alpha"):
        MultiSimilarityLoss(alpha=0)
    with pytest.raises(ValueError, match="beta"):
        MultiSimilarityLoss(beta=-1)
    with pytest.raises(ValueError, match="base"):
        MultiSimilarityLoss(base=float("nan"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", ALL_LOSSES)
def test_cuda_matches_cpu(make):
    torch.manual_seed(0)
    loss_fn = make()
    x, y = torch.randn(32, 16, dtype=torch.float64), torch.randint(0, 8, (32,))
    cpu = loss_fn(x, y)
    gpu = loss_fn.cuda()(x.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-8)


def test_proxy_anchor_device_mismatch_is_clear():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="move the loss"):
        ProxyAnchorLoss(3, 2)(torch.randn(3, 2, device="cuda"), torch.arange(3, device="cuda"))


def test_report_max_abs_diff():
    """Runs last in this file: print the largest |ours − PML| seen (pytest -s shows it)."""
    if not MAX_DIFF:
        pytest.skip("the PML comparisons ran in another process (pytest-xdist)")
    for name, diff in sorted(MAX_DIFF.items()):
        print(f"max |ours - PML| {name}: {diff:.3e}")
        assert diff < ATOL


def test_ms_negative_base_is_the_margin_of_the_negative_term():
    """Ebrahimpour et al. print eq. (6) with exp(β(S_ik + σ)) in the negative term; Wang et
    al. have exp(β(S_ik − σ)). negative_base=None is the latter (the PML loss); the literal
    print is negative_base = −σ, checked against the explicit sum for one anchor set."""
    torch.manual_seed(0)
    e, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.nn.functional.normalize(e, dim=1)
    s = x @ x.T
    same = y[:, None] == y[None, :]
    eye = torch.eye(6, dtype=torch.bool)
    for negative_base, shift in ((None, 0.5), (-0.5, -0.5), (0.2, 0.2)):
        loss = MultiSimilarityLoss(2.0, 4.0, 0.5, negative_base=negative_base)
        pos = torch.log1p((torch.exp(-2.0 * (s - 0.5)) * (same & ~eye)).sum(1)) / 2.0
        neg = torch.log1p((torch.exp(4.0 * (s - shift)) * ~same).sum(1)) / 4.0
        assert loss(e, y).item() == pytest.approx((pos + neg).mean().item(), rel=1e-12)
    with pytest.raises(ValueError, match="negative_base must be a finite number"):
        MultiSimilarityLoss(negative_base=float("nan"))
