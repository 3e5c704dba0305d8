"""dmlviz.heads: the one registry of what is trained, the pooled embedder, the recipes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmlviz import heads
from dmlviz.attention.aia import KernelAttention, make_attention
from dmlviz.attention.crt import CodedResidualTransform, matched_hidden
from dmlviz.attention.csalr import csalr_attention
from dmlviz.cost import count_parameters
from dmlviz.heads import HEADS, PooledEmbedder, build_head, train_head
from dmlviz.losses import DeepSupervisedLoss, MultiSimilarityLoss, SupervisedEmbedding

C, CG = 8, 6


pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


def _inputs(name: str, n: int = 6):
    g = torch.Generator().manual_seed(0)
    kind = HEADS[name].inputs
    if kind == "maps":
        return (torch.randn(n, C, 4, 4, generator=g), torch.randn(n, CG, 2, 2, generator=g))
    if kind == "vectors":
        return torch.randn(n, C, generator=g)
    if kind == "embeddings":
        return (F.normalize(torch.randn(n, C, generator=g), dim=1),
                F.normalize(torch.randn(n, 3, C, generator=g), dim=-1))
    return torch.randn(n, C, 4, 4, generator=g)


TINY = {"sa": dict(qk_channels=4), "csalr": dict(qk_channels=4, landmarks=(2, 2)),
        "refiner": dict(num_blocks=1, num_heads=2),
        **{n: dict(reduction=2, rff_dim=4) for n in ("lin", "sop", "gau", "lin_no_aia", "sop_no_aia",
                                                      "gau_no_aia", "lin_no_relu", "sop_no_relu",
                                                      "gau_no_relu")},
        **{n: dict(num_prototypes=3, branch_prototypes=(2, 3), branch_dims=(5, 7))
           for n in ("crt", "crt_k1", "crt_no_residual", "crt_no_div", "gap_mlp", "two_branch",
                     "two_branch_con")}}


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_builds_embeds_and_has_a_finite_loss(name):
    """Every registry entry: a module whose eval output is unit embeddings and a loss that
    takes the training-mode output and labels."""
    channels = (C, CG) if HEADS[name].inputs == "maps" else C
    torch.manual_seed(0)
    dim = 6 if name == "soa" else 5  # two SOA heads of D/2 each
    model, loss = build_head(name, channels, dim, num_classes=3, **TINY.get(name, {}))
    x = _inputs(name)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    args = x if isinstance(x, tuple) else (x,)
    out = model.eval()(*args)
    dim = out.shape[1] if name in ("refiner", "two_branch", "two_branch_con") else dim
    assert out.shape == (6, dim), name
    if name != "linear":  # the base model of notebook 06: the metrics normalise its output
        torch.testing.assert_close(out.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    assert torch.isfinite(loss(model.train()(*args), labels)), name
    head = HEADS[name]
    assert head.label and head.paper and head.objective and head.inputs in ("map", "maps", "vectors", "embeddings")


def test_registry_rejects_unknown_heads_and_options():
    with pytest.raises(ValueError, match="head must be one of"):
        build_head("transformer", C)
    with pytest.raises(ValueError, match="head 'crt'.*unexpected keyword"):
        build_head("crt", C, 5, landmarks=4)
    with pytest.raises(ValueError, match=r"in_channels must be \(C_local, C_global\)"):
        build_head("soa", C)
    with pytest.raises(ValueError, match="num_classes.*attend"):
        PooledEmbedder(C, 5, KernelAttention(C), num_classes=3)


def test_aia_rows_are_make_attention_blocks_and_baseline_is_gap_linear():
    """Tables 3–4 of AiA: each row is the paper's block (make_attention) in the same head;
    the baseline row is GAP → linear, the same head as notebook 04's gap_linear control."""
    x = torch.randn(4, C, 4, 4)
    for name in ("se", "lin", "gau"):
        torch.manual_seed(1)
        model, _ = build_head(name, C, 5, **TINY.get(name, {}))
        torch.manual_seed(1)
        block = make_attention(name, C, **TINY.get(name, {}))
        assert type(model.attention) is type(block)
        torch.testing.assert_close([p for p in model.attention.parameters()][0],
                                   [p for p in block.parameters()][0])
    torch.manual_seed(2)
    base, _ = build_head("baseline", C, 5)
    torch.manual_seed(2)
    control, _ = build_head("gap_linear", C, 5)
    torch.testing.assert_close(base(x), control(x))
    ref = F.normalize(x.mean(dim=(2, 3)) @ base.linear.weight.T + base.linear.bias, dim=1)
    torch.testing.assert_close(base(x), ref)


def test_train_head_builds_the_variant_and_returns_it_on_cpu_in_eval_mode():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(32, 8, 3, 3, generator=g)
    labels = torch.arange(8).repeat_interleave(4)
    model, history = train_head("gau", maps, labels, maps, labels, seed=1, embedding_dim=4,
                                epochs=1, p=4, k=4, device="cpu", reduction=2, rff_dim=4,
                                sigma=2.0)
    assert isinstance(model, PooledEmbedder) and not model.training
    assert next(model.parameters()).device.type == "cpu"
    att = model.attention
    assert isinstance(att, KernelAttention) and att.kind == "gaussian" and att.sigma == 2.0
    assert history.eval_epochs == [0, 1] and len(history.loss) == 1
    with pytest.raises(ValueError, match="train_labels must be class ids >= 0"):
        train_head("baseline", maps, labels - 1, epochs=1, device="cpu")


def test_soa_same_seed_same_start_and_reproducible():
    """The loss comparison of Ebrahimpour et al. (Figs. 1, 7): same model, same seeds —
    every loss starts from the same initial weights; the run is cached and reproducible."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(6)
    centres = torch.randn(8, 5, 1, 1, generator=g)
    local = centres[labels].expand(-1, -1, 4, 4) + 0.5 * torch.randn(48, 5, 4, 4, generator=g)
    glob = torch.randn(48, 7, 2, 2, generator=g)
    train, test = labels < 4, labels >= 4
    kw = dict(epochs=2, p=2, k=4, device="cpu", metric_kwargs={"nmi": False})
    args = ((local[train], glob[train]), labels[train], (local[test], glob[test]), labels[test])
    _, h1 = train_head("soa", *args, loss="hybrid", seed=3, **kw)
    _, h2 = train_head("soa", *args, loss="hybrid", seed=3, **kw)
    assert h2.from_cache and h1.metrics["recall@1"] == h2.metrics["recall@1"]
    assert len(h1.metrics["recall@1"]) == 3  # before training + 2 epochs
    _, h_ms = train_head("soa", *args, loss="ms", seed=3, **kw)
    assert h_ms.metrics["recall@1"][0] == h1.metrics["recall@1"][0]  # same initial model
    _, h_sigma = train_head("soa", *args, loss="ms", seed=3, loss_kwargs={"sigma": 1.0}, **kw)
    assert not h_sigma.from_cache  # a different σ is a different run
    assert HEADS["soa"].loss_lr == 0.1  # the proxies train 100× faster than the heads' 1e-3
    with pytest.raises(ValueError, match="pair"):
        train_head("soa", local, labels, epochs=1)


def test_deep_supervision_trains_q_k_v_at_alpha_zero():
    """Sec. 3.3: "we first perform an element-wise multiplication between the input feature map
    and the output of CSALR module ... then we apply a global average pooling layer ... a fully
    connected layer and apply a loss function ... we implement deep supervision before the
    residual connection". The branch sees the module's output, not x + α·f, so at α = 0 the
    cross-entropy of eq. (18) must still reach the query/key/value convolutions."""
    torch.manual_seed(0)
    for name, kw in (("csalr", dict(landmarks=(2, 2), groups=2)), ("sa", dict(groups=2))):
        model, _ = build_head(name, 8, 6, 3, qk_channels=4, **kw)
        model.train()
        assert model.attention.alpha.item() == 0.0
        x, y = torch.randn(12, 8, 4, 4), torch.arange(3).repeat(4)
        out = model(x)
        F.cross_entropy(out.logits, y).backward()
        for param in ("query.weight", "key.weight", "value.weight"):
            grad = dict(model.attention.named_parameters())[param].grad
            assert grad is not None and grad.abs().sum() > 0, (name, param)
        assert model.attention.alpha.grad is None  # the branch does not depend on α


def test_deep_supervised_loss_sums_over_branches():
    """Eq. (18): L_sum = L_F + λ Σ_{i=1}^{N} L_DS_i, N the number of CSALR modules."""
    torch.manual_seed(1)
    e = F.normalize(torch.randn(12, 6), dim=1)
    y = torch.arange(3).repeat(4)
    branches = tuple(torch.randn(12, 3) for _ in range(3))
    loss = DeepSupervisedLoss(MultiSimilarityLoss(), weight=0.7)
    expected = MultiSimilarityLoss()(e, y) + 0.7 * sum(F.cross_entropy(b, y) for b in branches)
    torch.testing.assert_close(loss(SupervisedEmbedding(e, branches), y), expected)


def test_embedder_deep_supervision_and_loss():
    """Sec. 3.3 "deep supervision before the residual connection": logits of GAP(x ⊙ f) with f
    the module's output; eq. (18) in training, plain embeddings in eval mode."""
    torch.manual_seed(0)
    model, loss = build_head("csalr", 8, 6, 3, qk_channels=4, landmarks=(2, 2),
                             deep_supervision=0.5)
    x, y = torch.randn(12, 8, 4, 4), torch.arange(3).repeat(4)
    out = model.train()(x)
    assert isinstance(out, SupervisedEmbedding) and out.logits.shape == (12, 3)
    with torch.no_grad():  # the module's output before the residual (α = 0 here: O = x)
        q, k, v = model.attention.qkv(x)
        f = csalr_attention(q, k, v, (2, 2), size=(4, 4), scale=model.attention.scale)  # (12, 1, 16, 8)
        f = f.transpose(2, 3).reshape(12, 8, 4, 4)
    gap = (x * f).mean((2, 3))  # x ⊙ f → GAP → linear, before the residual
    torch.testing.assert_close(out.logits, model.classifier(gap))
    expected = MultiSimilarityLoss()(out.embeddings, y) + 0.5 * F.cross_entropy(out.logits, y)
    torch.testing.assert_close(loss(out, y), expected)  # eq. (18)
    e = model.eval()(x)
    assert torch.is_tensor(e) and e.shape == (12, 6)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(loss(e, y), MultiSimilarityLoss()(e, y))
    unsupervised, _ = build_head("csalr", 8, 6, 3, landmarks=(2, 2), deep_supervision=0.0)
    assert unsupervised.classifier is None


def test_crt_matched_set():
    """Notebook 04's heads: equal D for retrieval (two-branch heads retrieve with branch 1),
    the MLP control as large as CRT, and the paper's per-branch λ₁ (1.0, 0.1) with λ₂ on L_CON."""
    x = torch.randn(4, 6, 3, 3)
    names = ("gap_linear", "gap_mlp", "crt", "crt_k1", "crt_no_residual", "crt_no_div",
             "two_branch", "two_branch_con")
    opts = dict(num_prototypes=3, branch_prototypes=(3, 4), branch_dims=(5, 7))
    built = {}
    for name in names:
        torch.manual_seed(0)
        built[name] = build_head(name, 6, 5, **opts)
    for name, (model, _loss) in built.items():
        assert model.eval()(x).shape == (4, 5), name
    crt_params = count_parameters(built["crt"][0])
    assert abs(count_parameters(built["gap_mlp"][0]) - crt_params) <= 6 + 1 + 5
    assert built["crt_k1"][0].num_prototypes == 1
    assert not built["crt_no_residual"][0].subtract_prototype
    assert built["crt_no_div"][1].diversity_weight == 0.0 and built["crt"][1].diversity_weight == 1.0
    con, plain = built["two_branch_con"][1], built["two_branch"][1]
    assert con.consistency_weight == 0.9 and plain.consistency_weight == 0.0
    assert con.metric_weights == (1.0, 0.1) and con.consistency_reduction == "sum"
    torch.manual_seed(0)  # building the CRT it matches draws no random numbers
    again, _ = build_head("gap_mlp", 6, 5, **opts)
    hidden = matched_hidden(6, 5, count_parameters(CodedResidualTransform(6, 3, 5)))
    torch.manual_seed(0)
    plain_mlp = PooledEmbedder(6, 5, hidden=hidden)
    torch.testing.assert_close(again(x), plain_mlp(x))
    torch.testing.assert_close(again(x), built["gap_mlp"][0](x))


def test_head_inputs():
    local, glob = torch.zeros(2, C, 4, 4), torch.zeros(2, CG, 2, 2)
    assert heads.head_inputs("crt", (local, glob)) is local
    assert heads.head_inputs("soa", (local, glob)) == (local, glob)
