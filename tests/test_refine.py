"""Tests for dmlviz.attention.refine (eqs. 1–4 of the neighbour-refinement paper)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlviz.attention.refine import (
    CrossAttentionBlock,
    NeighborRefiner,
    build_contexts,
    cross_attention,
    fit_refiner,
    neighbour_average,
    neighbourhood_purity,
    refine_embeddings,
)
from dmlviz.metrics import retrieval_metrics


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
    assert steps.shape == (6, 4, 16) and maps.shape == (6, 3, 4, 5)
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
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(4, 3, 4))
    _, w = cross_attention(torch.randn(2, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8), 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))


def test_zero_blocks_leave_embeddings_unchanged():
    refiner = NeighborRefiner(16, 4, 4)  # zero-initialised W_O: every block outputs zero
    e0, ctx = torch.randn(5, 16), torch.randn(5, 3, 16)
    steps = refiner(e0, ctx, return_all=True)
    for t in range(5):
        torch.testing.assert_close(steps[:, t], F.normalize(e0, dim=-1))


def test_variants():
    e0, ctx = torch.randn(4, 16), torch.randn(4, 3, 16)
    ca = _random_refiner(variant="ca_only")
    out, maps = ca(e0, None, return_maps=True)
    assert maps.shape == (4, 3, 4, 1) and torch.allclose(maps, torch.ones_like(maps))
    torch.testing.assert_close(ca(e0, ctx), out)  # the context is ignored
    avg = neighbour_average(e0, ctx)
    expected = F.normalize(F.normalize(e0, dim=-1) + F.normalize(ctx, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(avg, expected)
    both = NeighborRefiner(16, 2, 4, variant="nn_avg_ca")  # zero init: just the average
    torch.testing.assert_close(both(e0, ctx), avg)
    with pytest.raises(ValueError, match="nn_avg"):
        NeighborRefiner(16, 2, 4, variant="nn_avg")


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
    refiner, history = fit_refiner(x[train], y_tr, k=6, num_blocks=2, num_heads=2, epochs=15,
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    refiner = _random_refiner()
    x = torch.randn(50, 16)
    cpu = refine_embeddings(refiner, x, 4, device="cpu")
    gpu = refine_embeddings(refiner, x, 4, device="cuda")
    torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=1e-4)
