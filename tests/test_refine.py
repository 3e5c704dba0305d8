"""Tests for dmlviz.attention.refine (eqs. 1–4 of the neighbour-refinement paper)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlviz.attention.refine import (
    PARAMETER_FREE,
    CrossAttentionBlock,
    NeighborRefiner,
    cross_attention,
    neighbour_average,
    neighbour_softmax,
    parameter_free,
)
from dmlviz.heads import train_refiner
from dmlviz.metrics import retrieval_metrics
from dmlviz.neighbours import (
    attention_on_same_class,
    build_contexts,
    neighbourhood_purity,
    purity_matched_contexts,
    refine_embeddings,
)
from dmlviz.utils import flush_denormals


def _random_refiner(dim=16, blocks=3, heads=4, **kw):
    torch.manual_seed(0)
    return NeighborRefiner(dim, blocks, heads, zero_init=False, **kw)


def _slow_block(block: CrossAttentionBlock, e: torch.Tensor, c: torch.Tensor):
    """eq. (2) written out per query and per head with explicit loops."""
    d, h = block.dim, block.num_heads
    dh = d // h
    s = math.sqrt(d)
    out = torch.zeros_like(e)
    weights = torch.zeros(len(e), h, c.shape[1])
    for b in range(len(e)):
        q = block.q(s * e[b])
        heads = []
        for i in range(h):
            sl = slice(i * dh, (i + 1) * dh)
            logits = torch.stack([(q[sl] * block.k(s * c[b, j])[sl]).sum() / math.sqrt(dh)
                                  for j in range(c.shape[1])])
            a = torch.exp(logits - logits.max())
            a = a / a.sum()
            weights[b, i] = a
            heads.append(sum(a[j] * block.v(s * c[b, j])[sl] for j in range(c.shape[1])))
        out[b] = block.out(torch.cat(heads)) / s
    return out, weights


def test_block_matches_slow_formula():
    torch.manual_seed(1)
    block = CrossAttentionBlock(8, 2, zero_init=False)
    e = F.normalize(torch.randn(3, 8), dim=-1)
    c = F.normalize(torch.randn(3, 5, 8), dim=-1)
    fast, w_fast = block(e, c)
    slow, w_slow = _slow_block(block, e, c)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_fast, w_slow, atol=1e-6, rtol=1e-5)


def test_residual_and_normalisation_per_step():
    refiner = _random_refiner()
    e0, ctx = torch.randn(6, 16), torch.randn(6, 5, 16)
    steps, maps = refiner(e0, ctx, return_all=True, return_maps=True)
    assert steps.shape == (6, 4, 16) and maps.attention.shape == (6, 3, 4, 5)
    torch.testing.assert_close(steps[:, 0], F.normalize(e0, dim=-1))
    ctx_n = F.normalize(ctx, dim=-1)
    for t, block in enumerate(refiner.blocks):
        update, _ = block(steps[:, t], ctx_n)
        torch.testing.assert_close(steps[:, t + 1], F.normalize(steps[:, t] + update, dim=-1))  # eq. (3)
    torch.testing.assert_close(steps.norm(dim=-1), torch.ones(6, 4))
    torch.testing.assert_close(refiner(e0, ctx), steps[:, -1])


def test_attention_weights_sum_to_one():
    refiner = _random_refiner()
    _, maps = refiner(torch.randn(4, 16), torch.randn(4, 7, 16), return_maps=True)
    assert (maps.attention >= 0).all()
    torch.testing.assert_close(maps.attention.sum(-1), torch.ones(4, 3, 4))
    _, w = cross_attention(torch.randn(2, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8), 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))


def test_zero_blocks_leave_embeddings_unchanged():
    refiner = NeighborRefiner(16, 4, 4)  # zero-initialised W_O: every block outputs zero
    e0, ctx = torch.randn(5, 16), torch.randn(5, 3, 16)
    steps = refiner(e0, ctx, return_all=True)
    for t in range(5):
        torch.testing.assert_close(steps[:, t], F.normalize(e0, dim=-1))


def test_variants():
    """Sec. 4.5: "we add the cross-attention block, which has as its input for queries, keys and
    values the actual query image embedding e_q" (CA only), and "averaging the embedding of a
    query point and 8 of its nearest neighbors" (NNs) — the K + 1 vectors weigh 1/(K+1) each."""
    e0, ctx = torch.randn(4, 16), torch.randn(4, 3, 16)
    ca = _random_refiner(variant="ca_only")
    out, maps = ca(e0, None, return_maps=True)
    a = maps.attention
    assert a.shape == (4, 3, 4, 1) and torch.allclose(a, torch.ones_like(a))
    torch.testing.assert_close(ca(e0, ctx), out)  # the context is ignored
    en, cn = F.normalize(e0, dim=-1), F.normalize(ctx, dim=-1)
    for b in range(4):  # the paper's row: an explicit mean over the query and its 3 neighbours
        mean = (en[b] + cn[b, 0] + cn[b, 1] + cn[b, 2]) / 4
        torch.testing.assert_close(neighbour_average(e0, ctx)[b], mean / mean.norm())
    half = F.normalize(en + cn.mean(1), dim=-1)  # the weight-1/2 control
    torch.testing.assert_close(neighbour_average(e0, ctx, query_weight=0.5), half)
    torch.testing.assert_close(parameter_free("nn_half", e0, ctx), half)
    torch.testing.assert_close(parameter_free("nn_avg", e0, ctx), neighbour_average(e0, ctx))
    both = NeighborRefiner(16, 2, 4, variant="nn_avg_ca")  # zero init: just the average
    torch.testing.assert_close(both(e0, ctx), neighbour_average(e0, ctx))
    for name in PARAMETER_FREE:
        with pytest.raises(ValueError, match="parameter_free"):
            NeighborRefiner(16, 2, 4, variant=name)


def test_neighbour_softmax_is_eq1_weighting():
    """Eq. (1): "Attn(e_q, C_q) := softmax(e_q C_q^T / sqrt(d))" — "If we use it directly to
    aggregate information, we obtain a weighted sum of the embeddings of the nearest
    neighbors"; here with temperature tau, added to the query as the residual of eq. (3)."""
    torch.manual_seed(3)
    e0, ctx = torch.randn(3, 8), torch.randn(3, 5, 8)
    en, cn = F.normalize(e0, dim=-1), F.normalize(ctx, dim=-1)
    tau = 0.2
    for b in range(3):
        logits = [float(en[b] @ cn[b, j]) / tau for j in range(5)]
        w = [math.exp(x - max(logits)) for x in logits]
        w = [x / sum(w) for x in w]
        v = en[b] + sum(w[j] * cn[b, j] for j in range(5))
        torch.testing.assert_close(neighbour_softmax(e0, ctx, tau=tau)[b], v / v.norm())
    # a very high temperature gives equal weights: the weight-1/2 control
    torch.testing.assert_close(neighbour_softmax(e0, ctx, tau=1e9),
                               neighbour_average(e0, ctx, query_weight=0.5))
    with pytest.raises(ValueError, match="tau"):
        neighbour_softmax(e0, ctx, tau=0)


def test_shared_projection_equals_per_pair_formula():
    """Keys and values "K(k)", "V(v)" of eq. (2) depend only on the neighbour, so projecting
    each gallery row once per block and gathering gives today's per-pair formula exactly."""
    torch.manual_seed(4)
    refiner = NeighborRefiner(16, 3, 4, zero_init=False).double()
    x = torch.randn(50, 16, dtype=torch.float64)
    ctx, idx = build_contexts(x, 6)
    per_pair, maps = refiner(x, ctx, return_all=True, return_maps=True)  # today's formula
    shared, maps2 = refiner(x, reference=x, indices=idx, return_all=True, return_maps=True)
    torch.testing.assert_close(shared, per_pair, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(maps2.attention, maps.attention, atol=1e-12, rtol=1e-12)
    fast = refine_embeddings(refiner.float(), x.float(), 6, batch_size=7, device="cpu",
                             return_all=True)
    torch.testing.assert_close(fast, per_pair.float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="either context"):
        refiner(x.float(), ctx.float(), reference=x.float(), indices=idx)
    with pytest.raises(ValueError, match="indices must lie"):
        refiner(x.float(), reference=x[:5].float(), indices=idx)


def test_refine_with_reference_gallery():
    """Alg. 2 with a query/gallery split: each query's context is its K nearest gallery rows
    (brute-force search here), none excluded."""
    refiner = _random_refiner()
    torch.manual_seed(5)
    queries, gallery = torch.randn(12, 16), torch.randn(30, 16)
    qn, gn = F.normalize(queries, dim=-1), F.normalize(gallery, dim=-1)
    idx = torch.stack([torch.tensor(sorted(range(30), key=lambda j: -float(qn[i] @ gn[j]))[:4])
                       for i in range(12)])
    expected = refiner(queries, gn[idx])
    got = refine_embeddings(refiner, queries, 4, reference=gallery, device="cpu", batch_size=5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    ca = _random_refiner(variant="ca_only")
    torch.testing.assert_close(refine_embeddings(ca, queries, 4, reference=gallery, device="cpu"),
                               ca(queries))
    torch.testing.assert_close(refine_embeddings("nn_softmax", queries, 4, reference=gallery,
                                                 device="cpu"), neighbour_softmax(queries, gn[idx]))
    with pytest.raises(ValueError, match=r"k must be in \[1, 30\]"):
        refine_embeddings(refiner, queries, 31, reference=gallery, device="cpu")
    with pytest.raises(ValueError, match="reference must have D = 16"):
        refine_embeddings(refiner, queries, 3, reference=torch.randn(30, 8), device="cpu")


def test_purity_matched_contexts():
    """Training contexts with m nearest same-class and K − m nearest other-class rows, m drawn
    from given counts: checked against a brute-force search per query."""
    torch.manual_seed(6)
    labels = torch.arange(5).repeat_interleave(8)
    x = torch.randn(40, 6)
    ctx, idx = purity_matched_contexts(x, labels, 4, [1, 3], seed=0)
    xn = F.normalize(x, dim=-1)
    torch.testing.assert_close(ctx, xn[idx])
    counts = (labels[idx] == labels[:, None]).sum(1)
    assert set(counts.tolist()) <= {1, 3} and len(set(counts.tolist())) == 2
    for i in range(40):
        m = int(counts[i])
        order = sorted((j for j in range(40) if j != i), key=lambda j: -float(xn[i] @ xn[j]))
        same = [j for j in order if labels[j] == labels[i]][:m]
        other = [j for j in order if labels[j] != labels[i]][:4 - m]
        assert sorted(idx[i].tolist()) == sorted(same + other)
        sims = (xn[idx[i]] @ xn[i]).tolist()
        assert sims == sorted(sims, reverse=True)  # nearest first
    with pytest.raises(ValueError, match="same_counts"):
        purity_matched_contexts(x, labels, 4, [5])


def test_attention_on_same_class():
    weights = torch.tensor([[[[0.75, 0.25]]], [[[0.5, 0.5]]]])  # (N=2, T=1, H=1, K=2)
    idx = torch.tensor([[1, 2], [0, 2]])
    labels = torch.tensor([0, 0, 1])
    mass, uniform = attention_on_same_class(weights, idx, labels[:2], labels)
    assert mass == pytest.approx((0.75 + 0.5) / 2) and uniform == pytest.approx(0.5)


def test_flush_denormals_restores_setting():
    tiny = torch.tensor([1e-40])
    torch.set_flush_denormal(False)
    with flush_denormals():
        assert (tiny * 1.0).item() == 0.0 or not torch.set_flush_denormal(True)
    assert (tiny * 1.0).item() != 0.0  # restored: off again
    if torch.set_flush_denormal(True):  # supported here: a previous "on" stays on
        with flush_denormals():
            pass
        assert (tiny * 1.0).item() == 0.0
    torch.set_flush_denormal(False)


def test_train_refiner_contexts_and_early_stopping():
    """Alg. 1 "Precompute k nearest neighbors NN(e_i^0)": passing those very contexts gives the
    same refiner; early stopping picks an epoch from the held-out training classes."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(6).repeat_interleave(8)
    x = torch.randn(48, 8, generator=g)
    kw = dict(k=4, num_blocks=2, num_heads=2, epochs=3, p=3, per_class=4, seed=0, device="cpu",
              cache=False, progress=False)
    a, _ = train_refiner(x, labels, **kw)
    b, _ = train_refiner(x, labels, contexts=build_contexts(x, 4)[0], **kw)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    stopped, history = train_refiner(x, labels, early_stopping=0.34, **kw)
    assert history.eval_epochs == [0, 1, 2, 3] and 1 <= stopped.trained_epochs <= 3
    best = max(range(1, 4), key=lambda i: (history.metrics["recall@1"][i], -i))
    assert stopped.trained_epochs == best
    val_x, val_y = torch.randn(16, 8, generator=g), torch.arange(2).repeat_interleave(8)
    held, history = train_refiner(x, labels, early_stopping=(val_x, val_y), **kw)
    best = max(range(1, 4), key=lambda i: (history.metrics["recall@1"][i], -i))
    assert held.trained_epochs == best
    plain, _ = train_refiner(x, labels, **{**kw, "epochs": best})  # the same run, stopped there
    for pa, pb in zip(held.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="contexts must be"):
        train_refiner(x, labels, contexts=torch.randn(48, 4, 5), **kw)


def test_build_contexts_matches_brute_force():
    torch.manual_seed(2)
    x = torch.randn(30, 6)
    ctx, idx = build_contexts(x, 4, chunk_size=7)
    assert ctx.shape == (30, 4, 6) and idx.shape == (30, 4)
    xn = F.normalize(x, dim=-1)
    for i in range(30):
        sims = [(float(xn[i] @ xn[j]), j) for j in range(30) if j != i]
        expected = [j for _, j in sorted(sims, reverse=True)[:4]]
        assert idx[i].tolist() == expected
        assert i not in idx[i].tolist()
    torch.testing.assert_close(ctx, xn[idx])
    ref = torch.randn(10, 6)
    ctx2, idx2 = build_contexts(x, 10, reference=ref)
    assert idx2.shape == (30, 10) and set(idx2[0].tolist()) == set(range(10))


def test_purity():
    labels = torch.tensor([0, 0, 1, 1])
    idx = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 1]])
    torch.testing.assert_close(neighbourhood_purity(idx, labels), torch.tensor([0.5, 0.5, 0.5, 0.5]))


def test_refine_embeddings_batched_equals_direct():
    refiner = _random_refiner()
    x = torch.randn(40, 16)
    out = refine_embeddings(refiner, x, 5, batch_size=7, device="cpu", return_all=True)
    ctx, _ = build_contexts(x, 5)
    torch.testing.assert_close(out, refiner(x, ctx, return_all=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(refine_embeddings("nn_avg", x, 5, device="cpu"),
                               neighbour_average(x, ctx))
    bf = refine_embeddings(refiner, x, 5, device="cpu", dtype=torch.bfloat16)
    assert bf.dtype == torch.float32  # bf16 may swap near-tied neighbours: compare typical rows
    assert (bf - out[:, -1]).norm(dim=-1).median() < 0.05
    assert next(refiner.parameters()).dtype == torch.float32


def test_training_improves_recall_on_separable_case():
    # 6 classes, each a few tight clusters with one noisy member pulled towards another
    # class: the neighbours of a query fix its nearest-neighbour mistake.
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(12, 16, generator=g), dim=-1)
    labels = torch.arange(12).repeat_interleave(10)
    x = centres[labels] + 0.55 * torch.randn(120, 16, generator=g)
    train = labels < 6
    y_tr = labels[train]
    refiner, history = train_refiner(x[train], y_tr, k=6, num_blocks=2, num_heads=2, epochs=15,
                                   p=6, per_class=5, lr=3e-3, seed=0, device="cpu", cache=False,
                                   progress=False)
    # measured on the training classes: this checks that Alg. 1 optimises what it should.
    # (On the unseen classes 6-11 this tiny refiner does not help: see notebook 06.)
    before = retrieval_metrics(x[train], y_tr, nmi=False)["recall@1"]
    after = retrieval_metrics(refine_embeddings(refiner, x[train], 6, device="cpu"), y_tr,
                              nmi=False)["recall@1"]
    assert history.loss[-1] < history.loss[0]
    assert after > before + 0.05, (before, after)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads"):
        NeighborRefiner(10, 2, 3)
    refiner = NeighborRefiner(16, 2, 4)
    with pytest.raises(ValueError, match="context must be"):
        refiner(torch.randn(4, 16), torch.randn(4, 3, 8))
    with pytest.raises(ValueError, match="e0 must have D = 16"):
        refiner(torch.randn(4, 8), torch.randn(4, 3, 8))
    with pytest.raises(ValueError, match="context must be"):
        refiner(torch.randn(4, 16), torch.randn(5, 3, 16))
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
        build_contexts(torch.randn(10, 4), 10)
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
        refine_embeddings(refiner, torch.randn(10, 16), 10, device="cpu")
    with pytest.raises(ValueError, match="variant"):
        NeighborRefiner(16, 2, 4, variant="bogus")
    with pytest.raises(ValueError, match="refiner"):
        refine_embeddings("mean", torch.randn(10, 16), 3, device="cpu")
    with pytest.raises(ValueError, match="early_stopping"):
        train_refiner(torch.randn(20, 16), torch.arange(4).repeat_interleave(5), early_stopping=1.5,
                    device="cpu", cache=False, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    refiner = _random_refiner()
    x = torch.randn(50, 16)
    cpu = refine_embeddings(refiner, x, 4, device="cpu")
    gpu = refine_embeddings(refiner, x, 4, device="cuda")
    torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=1e-4)


@pytest.mark.notebook
def test_notebook_06_runs_on_own_npz_files(tmp_path):
    """Sec. 3: "our approach can be applied on top of the initial features or even the final
    embeddings computed with any existing method": ``dmlviz run 06 -p train_npz A.npz -p
    test_npz B.npz``, paths relative to where the command runs, runs the whole notebook —
    recall per step, the Table 4 rows, the dynamics map — on a user's two files."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(14, 16))
    for name, classes, per in (("A.npz", range(8), 12), ("B.npz", range(8, 14), 10)):
        labels = np.repeat(np.array(list(classes)), per)
        emb = (centres[labels] + 0.8 * rng.normal(size=(len(labels), 16))).astype(np.float32)
        np.savez(tmp_path / name, embeddings=emb, labels=labels)
    cli = "from dmlviz.cli import main; raise SystemExit(main())"
    done = subprocess.run([sys.executable, "-c", cli, "run", "06", "--profile", "quick", "--device",
                           "cpu", "--out", "run", "--baseline", "none", "-p", "train_npz", "A.npz",
                           "-p", "test_npz", "B.npz"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = next((tmp_path / "run").glob("06_*"))
    metrics = json.loads((run / "metrics.json").read_text())
    values = metrics.get("metrics", metrics)
    assert "refine.recall@1.step8" in values and "refine.recall@1.nn_avg" in values
    ledger = {c["id"]: c for c in json.loads((run / "claims.json").read_text())}
    assert {"refine.steps_improve", "refine.both_beats_nn_avg"} <= set(ledger)
    assert all(c["seeds"] == 3 and c["queries"] == 60 for c in ledger.values())
    assert (run / "figures" / "refine_dynamics_tsne.png").is_file()
