"""Neighbour refinement: cross-attention from an embedding to its k nearest neighbours.

"Attend to context for refining embeddings in deep metric learning" (ICLR submission),
section 3, eqs. (1)–(4), Algorithms 1–2, Table 4.

A trained DML model gives every image an initial embedding ``e⁰`` (any model: dmlviz's own
or a user's ``.npz`` via :func:`dmlviz.data.load_embeddings`). The *context* of a query is
the set of its K nearest neighbours in the gallery, by cosine similarity of the initial
embeddings, the query itself excluded::

    C = [c_1; …; c_K] ∈ R^{K×D},  c_j = e⁰ of the j-th nearest neighbour              (1)

T cross-attention blocks ``CA¹ … CA^T``, each with its own projections, let the query look
at its context: the query asks (``Q``), the neighbours answer (``K``, ``V``)::

    CA^t(e, C, C) = W_O^t [head_1; …; head_H],
    head_h = softmax_j( (W_Q,h e)ᵀ (W_K,h c_j) / √d_h ) (W_V,h c_j),   d_h = D / H     (2)
    e^t = (e^{t−1} + CA^t(e^{t−1}, C, C)) / ‖e^{t−1} + CA^t(e^{t−1}, C, C)‖          (3)

The context stays the initial neighbour embeddings at every step; only the query moves.
Training (Alg. 1): the base model is frozen; contexts come from the training set's own
embeddings; the refiner is trained with the multi-similarity loss on ``e^T``::

    L = L_MS(e^T, y)                                                                  (4)

Inference (Alg. 2): embed the gallery, find each item's K neighbours in it
(:func:`dmlviz.metrics.knn`, chunked, CPU or GPU), refine every item in batches, and
retrieve with the refined embeddings ``e^T``.

Ablations (Table 4), :data:`VARIANTS`. Table 4 crosses two ingredients, cross-attention (CA)
and the neighbours (NN); we read its rows as:

* ``"ca_only"`` — CA without neighbours: the context is the query itself (K = 1). With one
  key the softmax is 1, so each block adds ``W_O W_V e``: a learned residual transform that
  never sees a neighbour;
* ``"nn_avg"`` — the neighbours without CA and without any learned parameter:
  ``normalise(e⁰ + mean_j c_j)`` (:func:`neighbour_average`);
* ``"full"`` — both: CA over the K neighbours, eqs. (2)–(3) (the method; Table 4's "both");
* ``"nn_avg_ca"`` — an extra control, not in the paper: the neighbour average followed by
  the ``ca_only`` blocks — learned, and it sees the neighbours, but weights them uniformly,
  never by attention. It separates "attention over neighbours" from "neighbours + parameters".

Interpretations — no copy of the paper was at hand when this was written; where the text
(as we remember it) leaves a choice open we made the usual one and say so here:

* ``W_O`` of every block is zero-initialised (``zero_init=True``): the untrained refiner is
  the identity (``e^t = e⁰``), so training starts from the baseline's retrieval. Eqs.
  (2)–(3) are tested as written for any weights.
* Embeddings and contexts are L2-normalised on entry. Their coordinates are then ~1/√D,
  so the projections see ``√D·e`` and ``√D·c`` (a fixed rescaling, so the default
  ``nn.Linear`` initialisation gives attention logits of order one), and the block's output
  is divided by √D again, so the update is on the scale of the unit query it is added to
  (as in a transformer, where residual stream and block output share one scale).
* No LayerNorm or feed-forward sub-layer in a block: eq. (2) is attention plus ``W_O``.
* The "both" row of Table 4 is read as the full method (CA over the neighbours), above.
* Contexts for training are the neighbours among the *training* embeddings (self
  excluded); for the test set they are the neighbours in the *test gallery*.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import as_tensor, check_embeddings, check_int, check_labels

__all__ = [
    "VARIANTS",
    "CrossAttentionBlock",
    "NeighborRefiner",
    "build_contexts",
    "cross_attention",
    "fit_refiner",
    "neighbour_average",
    "neighbourhood_purity",
    "refine_embeddings",
]

VARIANTS = ("full", "ca_only", "nn_avg", "nn_avg_ca")
_LEARNED = ("full", "ca_only", "nn_avg_ca")


def _check_pair(e0, context, dim: int | None = None, *, context_required: bool = True) -> None:
    """``e0 (B, D)`` and ``context (B, K, D)`` float tensors of matching B and D."""
    if not torch.is_tensor(e0) or e0.ndim != 2 or not e0.is_floating_point():
        got = f"shape {tuple(e0.shape)} {e0.dtype}" if torch.is_tensor(e0) else type(e0).__name__
        raise ValueError(f"e0 must be a float tensor (B, D), got {got}")
    if dim is not None and e0.shape[1] != dim:
        raise ValueError(f"e0 must have D = {dim} (the refiner's dim), got shape {tuple(e0.shape)}")
    if context is None:
        if context_required:
            raise ValueError("context (B, K, D) is required for this variant, got None")
        return
    if not torch.is_tensor(context) or context.ndim != 3 or not context.is_floating_point():
        got = (f"shape {tuple(context.shape)} {context.dtype}" if torch.is_tensor(context)
               else type(context).__name__)
        raise ValueError(f"context must be a float tensor (B, K, D), got {got}")
    if context.shape[0] != e0.shape[0] or context.shape[2] != e0.shape[1] or context.shape[1] < 1:
        raise ValueError(f"context must be (B, K, D) with B = {e0.shape[0]}, K >= 1 and "
                         f"D = {e0.shape[1]} as e0, got shape {tuple(context.shape)}")


# ----------------------------------------------------------------------------- functional core

def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention of one query per row over its own K keys — eq. (2) without
    the projections.

    Args:
        q: ``(B, D)`` projected queries.
        k: ``(B, K, D)`` projected keys.
        v: ``(B, K, Dv)`` projected values.
        num_heads: ``H``; ``D`` and ``Dv`` must be divisible by it.

    Returns:
        ``(out, weights)``: ``out (B, Dv)``, the heads' outputs concatenated, and the
        attention ``weights (B, H, K)``, summing to 1 over the K neighbours.
    """
    b, d = q.shape
    n_keys, dv = k.shape[1], v.shape[2]
    if d % num_heads or dv % num_heads:
        raise ValueError(f"num_heads = {num_heads} must divide D = {d} and Dv = {dv}")
    qh = q.view(b, num_heads, 1, d // num_heads)  # (B, H, 1, d_h)
    kh = k.view(b, n_keys, num_heads, d // num_heads).transpose(1, 2)  # (B, H, K, d_h)
    vh = v.view(b, n_keys, num_heads, dv // num_heads).transpose(1, 2)  # (B, H, K, dv_h)
    logits = (qh @ kh.transpose(2, 3)).squeeze(2) / math.sqrt(d // num_heads)  # (B, H, K)
    weights = torch.softmax(logits, dim=-1)  # (B, H, K) eq. (2) softmax over neighbours j
    out = (weights.unsqueeze(2) @ vh).squeeze(2)  # (B, H, dv_h) Σ_j a_j W_V c_j
    return out.reshape(b, dv), weights


def neighbour_average(e0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Table 4 "NN": add the mean of the neighbours to the query, no attention, no weights.

    Args:
        e0: ``(B, D)`` initial embeddings.
        context: ``(B, K, D)`` their neighbours' initial embeddings.

    Returns:
        ``(B, D)`` unit vectors ``normalise(ê⁰ + mean_j ĉ_j)`` (ˆ = L2-normalised).
    """
    _check_pair(e0, context)
    e0, context = F.normalize(e0, dim=-1), F.normalize(context, dim=-1)
    return F.normalize(e0 + context.mean(dim=1), dim=-1)  # (B, D)


def neighbourhood_purity(indices: torch.Tensor, labels: torch.Tensor,
                         reference_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of each query's K neighbours that share its class.

    Args:
        indices: ``(N, K)`` neighbour indices (from :func:`build_contexts`).
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


# ----------------------------------------------------------------------------- modules

class CrossAttentionBlock(nn.Module):
    """One block ``CA^t`` of eq. (2): own ``W_Q, W_K, W_V, W_O`` (``D → D``), H heads.

    Args:
        dim: ``D``, divisible by ``num_heads``.
        num_heads: ``H``.
        zero_init: start with ``W_O = 0`` (the block outputs zero, eq. (3) is the identity).
    """

    def __init__(self, dim: int, num_heads: int = 8, *, zero_init: bool = True) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim", 1)
        self.num_heads = check_int(num_heads, "num_heads", 1)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads: dim = {dim}, "
                             f"num_heads = {num_heads} (allowed: a divisor of {dim})")
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, e: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``e (B, D)`` unit query, ``context (B, K, D)`` unit neighbours.
        Returns: ``(CA(e, C, C) (B, D), weights (B, H, K))``."""
        scale = math.sqrt(self.dim)  # unit vectors -> coordinates of order one
        heads, weights = cross_attention(self.q(scale * e), self.k(scale * context),
                                         self.v(scale * context), self.num_heads)  # eq. (2)
        return self.out(heads) / scale, weights  # (B, D), (B, H, K) back to the unit scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, scale=sqrt(dim) in, 1/sqrt(dim) out"


class NeighborRefiner(nn.Module):
    """T cross-attention blocks refining an embedding with its neighbours (eqs. 2–3, Alg. 2).

    Args:
        dim: ``D`` of the embeddings.
        num_blocks: ``T``, the number of refinement steps (≥ 1).
        num_heads: ``H`` per block; must divide ``dim``.
        variant: one of :data:`VARIANTS` except ``"nn_avg"`` (which has no parameters; use
            :func:`neighbour_average`): ``"full"``, ``"ca_only"`` or ``"nn_avg_ca"``.
        zero_init: zero-initialise every ``W_O`` (the untrained refiner is the identity).
    """

    def __init__(self, dim: int, num_blocks: int = 8, num_heads: int = 8, *,
                 variant: str = "full", zero_init: bool = True) -> None:
        super().__init__()
        if variant not in _LEARNED:
            hint = " ('nn_avg' has no parameters: use neighbour_average)" if variant == "nn_avg" else ""
            raise ValueError(f"variant must be one of {_LEARNED}{hint}, got {variant!r}")
        self.dim = check_int(dim, "dim", 1)
        self.num_blocks = check_int(num_blocks, "num_blocks", 1)
        self.num_heads = check_int(num_heads, "num_heads", 1)
        self.variant = variant
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, num_heads, zero_init=zero_init)
                                    for _ in range(num_blocks))

    def forward(self, e0: torch.Tensor, context: torch.Tensor | None = None, *,
                return_all: bool = False, return_maps: bool = False):
        """Refine ``e0`` with its ``context``.

        Args:
            e0: ``(B, D)`` initial embeddings (normalised here).
            context: ``(B, K, D)`` initial embeddings of each query's K neighbours
                (normalised here). Ignored by ``variant="ca_only"`` (may be None).
            return_all: return every step ``e⁰ … e^T`` instead of ``e^T`` only.
            return_maps: also return the attention weights over the neighbours.

        Returns:
            ``e^T (B, D)``, or ``(B, T+1, D)`` with ``return_all`` (index 0 is the block
            input: ``ê⁰``, or for ``"nn_avg_ca"`` the neighbour average); with ``return_maps``
            a pair ``(that, weights (B, T, H, K))`` (K = 1 for ``"ca_only"``/``"nn_avg_ca"``).
        """
        _check_pair(e0, context, self.dim, context_required=self.variant != "ca_only")
        e = F.normalize(e0, dim=-1)  # (B, D) ê⁰
        if self.variant == "full":
            context = F.normalize(context, dim=-1)  # (B, K, D) eq. (1)
        else:
            if self.variant == "nn_avg_ca":
                e = neighbour_average(e, context)  # (B, D) Table 4 "NN" first
            context = e[:, None, :]  # (B, 1, D) the query alone
        steps, maps = [e], []
        for block in self.blocks:
            update, weights = block(e, context)  # (B, D), (B, H, K) eq. (2)
            e = F.normalize(e + update, dim=-1)  # eq. (3)
            steps.append(e)
            maps.append(weights)
        out = torch.stack(steps, dim=1) if return_all else e  # (B, T+1, D) | (B, D)
        if return_maps:
            return out, torch.stack(maps, dim=1)  # (B, T, H, K)
        return out

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


# ----------------------------------------------------------------------------- contexts, Alg. 1–2

def build_contexts(embeddings: torch.Tensor, k: int, reference: torch.Tensor | None = None,
                   *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The kNN context of every embedding (eq. 1), by :func:`dmlviz.metrics.knn`.

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
    from dmlviz.metrics import knn

    embeddings = as_tensor(embeddings, "embeddings")
    check_embeddings(embeddings)
    gallery = embeddings if reference is None else as_tensor(reference, "reference")
    n_ref = len(gallery) - (1 if reference is None else 0)
    if isinstance(k, int) and not isinstance(k, bool) and not 1 <= k <= n_ref:
        what = "N − 1 (the other embeddings)" if reference is None else "R (the reference rows)"
        raise ValueError(f"k must be in [1, {n_ref}] = [1, {what}], got k = {k}")
    _, idx = knn(embeddings, None if reference is None else gallery, k=k,
                 exclude_self=True, chunk_size=chunk_size)  # (N, K)
    contexts = F.normalize(gallery, dim=-1)[idx]  # (N, K, D)
    return contexts, idx


@torch.no_grad()
def refine_embeddings(refiner: nn.Module | str, embeddings: torch.Tensor, k: int, *,
                      batch_size: int = 4096, device: str | torch.device = "auto",
                      return_all: bool = False, chunk_size: int = 1024,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """Alg. 2: refine a whole gallery with its own kNN contexts, batched.

    The neighbour indices come from :func:`dmlviz.metrics.knn` over the gallery (self
    excluded); contexts are gathered per batch, so memory stays ``O(batch_size·K·D)``.

    Args:
        refiner: a trained :class:`NeighborRefiner`, or ``"nn_avg"`` for
            :func:`neighbour_average`.
        embeddings: ``(N, D)`` initial embeddings of the gallery.
        k: neighbours per context (the value the refiner was trained with).
        batch_size: queries refined at once.
        device: where to run (``"auto"``, ``"cpu"``, ``"cuda"``).
        return_all: return every step ``(N, T+1, D)`` instead of ``e^T (N, D)``.
        chunk_size: queries per kNN similarity block.
        dtype: run the kNN search and the refiner in this dtype (e.g. ``torch.bfloat16`` on
            a GPU); None keeps float32. In bf16 near-tied neighbours may swap places.

    Returns:
        Refined unit embeddings (float32) on the CPU, ``(N, D)`` or ``(N, T+1, D)``.
    """
    from dmlviz.metrics import knn
    from dmlviz.utils import get_device

    device = get_device(device)
    embeddings = as_tensor(embeddings, "embeddings")
    check_embeddings(embeddings)
    batch_size = check_int(batch_size, "batch_size", 1)
    if isinstance(k, int) and not isinstance(k, bool) and not 1 <= k <= len(embeddings) - 1:
        raise ValueError(f"k must be in [1, {len(embeddings) - 1}] = [1, N − 1], got k = {k}")
    if isinstance(refiner, str):
        if refiner != "nn_avg":
            raise ValueError(f"refiner must be a NeighborRefiner or 'nn_avg', got {refiner!r}")
        if return_all:
            raise ValueError("return_all needs a NeighborRefiner ('nn_avg' has a single step)")
        model = None
    else:
        model = refiner.to(device)
        was_training = model.training
        param_dtype = next(model.parameters()).dtype
        model.eval()
    gallery = F.normalize(embeddings.to(device).float(), dim=-1)  # (N, D)
    if dtype is not None:
        gallery = gallery.to(dtype)
        if model is not None:
            model = model.to(dtype)
    _, idx = knn(gallery, None, k=k, exclude_self=True, chunk_size=chunk_size)  # (N, K)
    out = []
    for start in range(0, len(gallery), batch_size):
        e0 = gallery[start:start + batch_size]  # (b, D)
        context = gallery[idx[start:start + batch_size]]  # (b, K, D)
        refined = (neighbour_average(e0, context) if model is None
                   else model(e0, context, return_all=return_all))
        out.append(refined.float().cpu())
    if model is not None:
        model.to(param_dtype).train(was_training)
    return torch.cat(out)


def fit_refiner(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int = 8,
    num_blocks: int = 8,
    num_heads: int = 8,
    variant: str = "full",
    test_embeddings: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    epochs: int = 20,
    p: int = 8,
    per_class: int = 4,
    lr: float = 1e-3,
    eval_every: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    cache: bool = True,
    progress: bool = True,
):
    """Alg. 1: train a :class:`NeighborRefiner` with the MS loss on ``e^T`` (eq. 4).

    The base model is frozen: its training-set embeddings and their kNN contexts (self
    excluded, :func:`build_contexts`) are computed once and packed as the pair of inputs
    ``(e⁰, C)`` that :func:`dmlviz.train.fit` indexes together and passes as
    ``refiner(e⁰, C)`` — the same P×K loop, optimiser and checkpoint cache as every model.

    Args:
        embeddings: ``(N, D)`` initial training embeddings.
        labels: ``(N,)`` training labels.
        k: neighbours per context.
        num_blocks, num_heads, variant: see :class:`NeighborRefiner`.
        test_embeddings, test_labels: unseen classes, contexts from their own gallery, for
            the periodic Recall@K of :func:`dmlviz.train.fit` (optional).
        epochs, p, lr, eval_every, seed, device, cache, progress: as in :func:`dmlviz.train.fit`.
        per_class: samples per class in a P×K batch (``fit``'s ``k``).

    Returns:
        ``(refiner, history)``: the trained refiner (eval mode) and its
        :class:`dmlviz.train.History`.
    """
    from dmlviz.losses import MultiSimilarityLoss
    from dmlviz.train import fit

    embeddings = as_tensor(embeddings, "embeddings").float()
    check_embeddings(embeddings)
    torch.manual_seed(seed)
    refiner = NeighborRefiner(embeddings.shape[1], num_blocks, num_heads, variant=variant)
    contexts, _ = build_contexts(embeddings, k)  # (N, K, D) Alg. 1: training-set contexts
    test = {}
    if test_embeddings is not None:
        test_embeddings = as_tensor(test_embeddings, "test_embeddings").float()
        test_contexts, _ = build_contexts(test_embeddings, k)  # (M, K, D)
        test = {"test_inputs": (test_embeddings, test_contexts), "test_labels": test_labels}
    history = fit(refiner, MultiSimilarityLoss(), (embeddings, contexts), labels,  # eq. (4)
                  epochs=epochs, p=p, k=per_class, lr=lr, eval_every=eval_every, seed=seed,
                  device=device, cache=cache, progress=progress, **test)
    return refiner.cpu().eval(), history
