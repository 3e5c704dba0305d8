"""Neighbour contexts and refinement of a whole embedding set (Algorithms 1–2 around the refiner).

"Attend to context for refining embeddings in deep metric learning" (ICLR submission),
Algorithms 1–2: "Precompute k nearest neighbors NN(e_i^0)", then refine every embedding with
its context. The refiner itself — cross-attention blocks, eqs. (2)–(3) — is
:class:`dmlviz.attention.refine.NeighborRefiner`; this module finds the neighbours
(:func:`dmlviz.metrics.knn`) and runs a refiner, or a parameter-free control, over every row:

* :func:`build_contexts` — the kNN context ``(N, K, D)`` of every embedding (self excluded);
* :func:`purity_matched_contexts` — training contexts as impure as given ones (notebook 06);
* :func:`refine_embeddings` — Alg. 2, batched, on any device, returning CPU tensors;
* :func:`neighbourhood_purity`, :func:`attention_on_same_class` — how many of a context's
  neighbours share the query's class, and how much attention the refiner gives them.

Training the refiner (Alg. 1) is :func:`dmlviz.heads.train_refiner`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.attention.refine import PARAMETER_FREE, parameter_free
from dmlviz.checks import as_tensor, check_embeddings, check_int, check_labels
from dmlviz.metrics import knn
from dmlviz.utils import get_device, on_device

__all__ = ["attention_on_same_class", "build_contexts", "neighbourhood_purity", "purity_matched_contexts",
           "refine_embeddings"]


def build_contexts(embeddings: torch.Tensor, k: int, reference: torch.Tensor | None = None,
                   *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The kNN context of every embedding (Alg. 1–2 line "Precompute k nearest neighbors").

    Args:
        embeddings: ``(N, D)`` initial embeddings (tensor or array; CPU or GPU).
        k: neighbours per context, ``1 ≤ k ≤ N − 1`` (or ``≤ R`` with a ``reference``).
        reference: ``(R, D)`` gallery to search instead of ``embeddings`` itself (then no
            row is excluded); None searches ``embeddings`` with each row's self excluded.
        chunk_size: queries per similarity block.

    Returns:
        ``(contexts (N, K, D), indices (N, K))``: the neighbours' L2-normalised embeddings,
        nearest first, and their row indices into the searched set.
    """
    embeddings = as_tensor(embeddings, "embeddings")
    check_embeddings(embeddings)
    gallery = embeddings if reference is None else as_tensor(reference, "reference")
    if reference is not None:
        check_embeddings(gallery, name="reference")
    n_ref = len(gallery) - (1 if reference is None else 0)
    if isinstance(k, int) and not isinstance(k, bool) and not 1 <= k <= n_ref:
        what = "N − 1 (the other embeddings)" if reference is None else "R (the reference rows)"
        raise ValueError(f"k must be in [1, {n_ref}] = [1, {what}], got k = {k}")
    _, idx = knn(embeddings, None if reference is None else gallery, k=k,
                 exclude_self=True, chunk_size=chunk_size)  # (N, K)
    contexts = F.normalize(gallery, dim=-1)[idx]  # (N, K, D)
    return contexts, idx



def purity_matched_contexts(embeddings: torch.Tensor, labels: torch.Tensor, k: int,
                            same_counts, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training contexts as impure as given ones: m same-class and K − m other neighbours.

    For every query a count ``m`` is drawn (seeded, with replacement) from ``same_counts`` —
    e.g. the same-class counts of the *test* contexts — capped at the query's class size − 1;
    its context is then its ``m`` nearest same-class rows and its ``K − m`` nearest rows of
    other classes (self excluded), nearest first. The purity distribution of the result is
    that of ``same_counts``, so a refiner trained on it meets test-like contexts.

    Args:
        embeddings: ``(N, D)`` training embeddings.
        labels: ``(N,)`` their labels.
        k: neighbours per context.
        same_counts: ``(M,)`` integers in [0, K] to draw from.
        seed: seeds the draw.

    Returns:
        ``(contexts (N, K, D), indices (N, K))`` as :func:`build_contexts`.
    """
    embeddings = as_tensor(embeddings, "embeddings").float()
    labels = check_labels(labels, "labels")
    check_embeddings(embeddings, labels)
    k = check_int(k, "k", 1)
    counts = torch.as_tensor(same_counts).long().flatten()
    if counts.numel() == 0 or int(counts.min()) < 0 or int(counts.max()) > k:
        raise ValueError(f"same_counts must be non-empty integers in [0, k = {k}], got "
                         f"{counts.numel()} values in [{counts.min() if counts.numel() else ''}, "
                         f"{counts.max() if counts.numel() else ''}]")
    n = len(embeddings)
    class_size = (labels[:, None] == labels[None, :]).sum(1)  # (N,)
    if int((n - class_size).min()) < k:
        raise ValueError(f"k = {k} exceeds the rows outside some query's class "
                         f"({int((n - class_size).min())}); pass a smaller k")
    g = torch.Generator().manual_seed(int(seed))
    m = counts[torch.randint(0, len(counts), (n,), generator=g)]  # (N,) drawn same-class counts
    m = torch.minimum(m, class_size - 1)
    x = F.normalize(embeddings, dim=-1)
    sim = x @ x.T  # (N, N)
    sim.fill_diagonal_(-float("inf"))  # self excluded
    same = labels[:, None] == labels[None, :]
    s_same = sim.masked_fill(~same, -float("inf")).topk(k, dim=1)  # nearest same-class
    s_other = sim.masked_fill(same, -float("inf")).topk(k, dim=1)  # nearest other-class
    take_same = torch.arange(k)[None, :] < m[:, None]  # (N, K) first m of the same-class list
    take_other = torch.arange(k)[None, :] < (k - m)[:, None]
    cand_idx = torch.cat([s_same.indices, s_other.indices], dim=1)  # (N, 2K)
    cand_sim = torch.cat([s_same.values.masked_fill(~take_same, -float("inf")),
                          s_other.values.masked_fill(~take_other, -float("inf"))], dim=1)
    order = cand_sim.topk(k, dim=1).indices  # (N, K) the chosen K, nearest first
    idx = cand_idx.gather(1, order)
    return x[idx], idx



def _check_k(k, n_ref: int, what: str) -> None:
    if isinstance(k, int) and not isinstance(k, bool) and not 1 <= k <= n_ref:
        raise ValueError(f"k must be in [1, {n_ref}] = [1, {what}], got k = {k}")



@torch.no_grad()
def refine_embeddings(refiner: nn.Module | str, embeddings: torch.Tensor, k: int, *,
                      reference: torch.Tensor | None = None, batch_size: int = 4096,
                      device: str | torch.device = "auto", return_all: bool = False,
                      chunk_size: int = 1024, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Alg. 2: refine embeddings with their kNN contexts, batched.

    The neighbour indices come from :func:`dmlviz.metrics.knn`; for ``variant="full"`` each
    block projects every gallery row to its key and value once and gathers them per query
    (module docstring), so the cost per block is ``O((N + R)·D²)`` instead of ``O(N·K·D²)``.

    Two protocols:

    * ``reference=None`` (Alg. 2): the gallery refines itself; contexts are each row's K
      nearest *other* rows of ``embeddings``.
    * ``reference=G`` (a query/gallery split): the queries ``embeddings`` are refined with
      contexts among the gallery rows ``G`` (none excluded). Refine the gallery itself with
      ``reference=None`` and retrieve refined queries against the refined gallery.

    Args:
        refiner: a trained :class:`NeighborRefiner`, or one of :data:`PARAMETER_FREE`
            (``"nn_avg"``, ``"nn_half"``, ``"nn_softmax"``; :func:`parameter_free`).
        embeddings: ``(N, D)`` initial embeddings to refine.
        k: neighbours per context (the value the refiner was trained with).
        reference: ``(R, D)`` gallery the contexts come from, or None (``embeddings``).
        batch_size: queries refined at once.
        device: where to run (``"auto"``, ``"cpu"``, ``"cuda"``).
        return_all: return every step ``(N, T+1, D)`` instead of ``e^T (N, D)``.
        chunk_size: queries per kNN similarity block.
        dtype: run the kNN search and the refiner in this dtype (e.g. ``torch.bfloat16`` on
            a GPU); None keeps float32. In bf16 near-tied neighbours may swap places.

    Returns:
        Refined unit embeddings (float32) on the CPU, ``(N, D)`` or ``(N, T+1, D)``.
    """
    device = get_device(device)
    embeddings = as_tensor(embeddings, "embeddings")
    check_embeddings(embeddings)
    batch_size = check_int(batch_size, "batch_size", 1)
    if reference is None:
        _check_k(k, len(embeddings) - 1, "N − 1")
    else:
        reference = as_tensor(reference, "reference")
        check_embeddings(reference, name="reference")
        if reference.shape[1] != embeddings.shape[1]:
            raise ValueError(f"reference must have D = {embeddings.shape[1]} as embeddings, got "
                             f"shape {tuple(reference.shape)}")
        _check_k(k, len(reference), "R (the reference rows)")
    if isinstance(refiner, str):
        if refiner not in PARAMETER_FREE:
            raise ValueError(f"refiner must be a NeighborRefiner or one of {PARAMETER_FREE}, "
                             f"got {refiner!r}")
        if return_all:
            raise ValueError(f"return_all needs a NeighborRefiner ({refiner!r} has a single step)")
        return _refine(None, refiner, embeddings, reference, k, device, batch_size, return_all,
                       chunk_size, dtype)
    param_dtype = next(refiner.parameters()).dtype
    with on_device(refiner, device) as model:  # back where and as it was afterwards
        try:
            return _refine(model, refiner, embeddings, reference, k, device, batch_size,
                           return_all, chunk_size, dtype)
        finally:
            model.to(param_dtype)


def _refine(model, refiner, embeddings, reference, k, device, batch_size, return_all, chunk_size,
            dtype) -> torch.Tensor:
    """The body of :func:`refine_embeddings`, with the model (or None) already on ``device``."""
    queries = F.normalize(embeddings.to(device).float(), dim=-1)  # (N, D)
    gallery = queries if reference is None else F.normalize(reference.to(device).float(), dim=-1)
    if dtype is not None:
        queries, gallery = queries.to(dtype), (gallery.to(dtype) if reference is not None
                                               else queries.to(dtype))
        if model is not None:
            model = model.to(dtype)
    _, idx = knn(queries, None if reference is None else gallery, k=k, exclude_self=True,
                 chunk_size=chunk_size)  # (N, K)
    if model is not None and model.variant == "full":
        refined = model.refine_gallery(queries, gallery, idx, batch_size=batch_size,
                                       return_all=return_all)  # K/V once per gallery row
        return refined.float().cpu()
    out = []
    for b in (slice(s, s + batch_size) for s in range(0, len(queries), batch_size)):
        context = None if (model is not None and model.variant == "ca_only") else gallery[idx[b]]
        refined = (parameter_free(refiner, queries[b], context) if model is None
                   else model(queries[b], context, return_all=return_all))
        out.append(refined.float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- label statistics

def neighbourhood_purity(indices: torch.Tensor, labels: torch.Tensor,
                         reference_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of each query's K neighbours that share its class.

    Args:
        indices: ``(N, K)`` neighbour indices (from :func:`dmlviz.neighbours.build_contexts`).
        labels: ``(N,)`` labels of the queries.
        reference_labels: ``(R,)`` labels of the searched set (default ``labels``).

    Returns:
        ``(N,)`` float tensor in [0, 1].
    """
    labels = check_labels(labels, "labels")
    ref = labels if reference_labels is None else check_labels(reference_labels, "reference_labels")
    if not torch.is_tensor(indices) or indices.ndim != 2 or len(indices) != len(labels):
        got = tuple(indices.shape) if torch.is_tensor(indices) else type(indices).__name__
        raise ValueError(f"indices must be (N, K) with N = {len(labels)} as labels, got {got}")
    return (ref[indices.cpu()] == labels[:, None]).float().mean(dim=1)  # (N,)



def attention_on_same_class(weights: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor,
                            reference_labels: torch.Tensor | None = None) -> tuple[float, float]:
    """How much attention lands on neighbours of the query's own class, and what equal
    weights would give.

    Args:
        weights: ``(N, T, H, K)`` attention of :meth:`NeighborRefiner.forward`
            (``RefinerMaps.attention`` of ``return_maps=True``).
        indices: ``(N, K)`` the neighbours' rows in the searched set.
        labels: ``(N,)`` query labels.
        reference_labels: ``(R,)`` labels of the searched set (default ``labels``).

    Returns:
        ``(mass, uniform)``: the mean over queries, blocks and heads of the attention on
        same-class neighbours, and the mean context purity (the mass of equal weights).
    """
    if not torch.is_tensor(weights) or weights.ndim != 4 or weights.shape[0] != len(indices) \
            or weights.shape[3] != indices.shape[1]:
        got = tuple(weights.shape) if torch.is_tensor(weights) else type(weights).__name__
        raise ValueError(f"weights must be (N, T, H, K) with N, K = {tuple(indices.shape)} as "
                         f"indices, got {got}")
    labels = check_labels(labels, "labels")
    ref = labels if reference_labels is None else check_labels(reference_labels, "reference_labels")
    same = (ref[indices.cpu()] == labels[:, None]).float()  # (N, K)
    mass = (weights.detach().float().cpu().mean(dim=2) * same[:, None, :]).sum(-1).mean()  # Σ_j a_j [same]
    return float(mass), float(same.mean())

