"""Neighbour refinement: cross-attention from an embedding to its k nearest neighbours.

"Attend to context for refining embeddings in deep metric learning" (ICLR submission),
section 3, eqs. (1)–(4), Algorithms 1–2, Table 4, Fig. 3.

A trained DML model gives every image an initial embedding ``e⁰`` (any model: dmlviz's own
or a user's ``.npz`` via :func:`dmlviz.data.load_embeddings`). The *context* of a query is
the set of its K nearest neighbours in the gallery, by cosine similarity of the initial
embeddings, the query itself excluded ("Precompute k nearest neighbors NN(e_i^0)", Alg. 1–2)::

    C = [c_1; …; c_K] ∈ R^{K×D},  c_j = e⁰ of the j-th nearest neighbour

T cross-attention blocks ``CA¹ … CA^T``, each with its own projections, let the query look
at its context: the query asks (``Q``), the neighbours answer (``K``, ``V``)::

    CA^t(e, C, C) = W_O^t [head_1; …; head_H],
    head_h = softmax_j( (W_Q,h e)ᵀ (W_K,h c_j) / √d_h ) (W_V,h c_j),   d_h = D / H     (2)
    e^t = (e^{t−1} + CA^t(e^{t−1}, C, C)) / ‖e^{t−1} + CA^t(e^{t−1}, C, C)‖          (3)

(eq. 3 adds the residual; Alg. 2 line 10 normalises every step.) The context stays the
initial neighbour embeddings at every step; only the query moves. Training (Alg. 1): the
base model is frozen; contexts come from the training set's own embeddings; the refiner is
trained with the multi-similarity loss on ``e^T``::

    L = L_MS(e^T, y)                                                                  (4)

Inference (Alg. 2): embed the gallery, find each item's K neighbours in it
(:func:`dmlviz.metrics.knn`, chunked, CPU or GPU), refine every item, and retrieve with the
refined embeddings ``e^T``. A query/gallery protocol refines the queries with contexts from
the gallery (:func:`dmlviz.neighbours.refine_embeddings` with ``reference=gallery``).

**Projecting each gallery row once.** The contexts are rows of one fixed gallery, so the
keys ``W_K c`` and values ``W_V c`` of block t do not depend on the query.
:func:`dmlviz.neighbours.refine_embeddings` (and :meth:`NeighborRefiner.forward` given ``reference`` and
``indices``) projects each gallery row once per block and gathers the projected rows; the
per-pair form (``context (B, K, D)``, projected again for every query) is the same formula
and stays as the reference. For K = 8 the per-pair form spends 16 of its 18 row
projections per query on keys and values; the shared form spends 2 per gallery row.

Ablations (Table 4, :data:`VARIANTS`). Sec. 4.5: "we add the cross-attention block, which has
as its input for queries, keys and values the actual query image embedding e_q … Alternatively,
we add information about the nearest neighbors by averaging the embedding of a query point and
8 of its nearest neighbors … Finally … we add both":

* ``"ca_only"`` — CA whose context is the query itself (K = 1). With one key the softmax is
  1, so each block adds ``W_O W_V e``: a learned residual transform that never sees a
  neighbour (Table 4 "MS-Loss + CA");
* ``"nn_avg"`` — Table 4 "MS-Loss + NNs", as written: the mean of the query and its K
  neighbours, ``normalise((e⁰ + Σ_j c_j) / (K+1))`` — the query weighs 1/(K+1)
  (:func:`neighbour_average`);
* ``"full"`` — both: CA over the K neighbours, eqs. (2)–(3) ("Ours (CA + NNs)");

and three controls that are not rows of the paper:

* ``"nn_half"`` — the query and the *mean* of its neighbours with weight 1/2 each,
  ``normalise(e⁰ + mean_j c_j)`` (what dmlviz computed as "NN" before);
* ``"nn_softmax"`` — eq. (1) of the paper used directly, no parameters: the neighbours
  weighted by ``softmax_j(ê·ĉ_j / τ)`` and added to the query,
  ``normalise(ê + Σ_j a_j ĉ_j)`` (:func:`neighbour_softmax`; τ fixed, default 0.1);
* ``"nn_avg_ca"`` — the paper's neighbour average followed by the ``ca_only`` blocks: learned
  and it sees the neighbours, but weights them uniformly, never by attention.

Maps (the package's protocol): ``NeighborRefiner(..., return_maps=True)`` returns
``(output, maps)`` with ``maps`` a :class:`RefinerMaps` (``attention (B, T, heads, K)``).

Interpretations (where the text leaves a choice open; each is shown in notebook 06):

* ``W_O`` of every block is zero-initialised (``zero_init=True``): the untrained refiner is
  the identity (``e^t = e⁰``), so training starts from the baseline's retrieval. The
  paper only says "Initialize weights of Q^t, K^t, V^t"; eqs. (2)–(3) are tested as written
  for any weights.
* Embeddings and contexts are L2-normalised on entry ("The embedding e_i is usually
  normalized"). Their coordinates are then ~1/√D, so the projections see ``√D·e`` and
  ``√D·c`` (a fixed rescaling, so the default ``nn.Linear`` initialisation gives attention
  logits of order one), and the block's output is divided by √D again, so the update is on
  the scale of the unit query it is added to.
* Multi-head attention with ``d_h = D/H`` in the softmax (eq. 2 writes one head and √d).
  No LayerNorm or feed-forward sub-layer: eq. (2) is attention plus ``W_O``.
* Training contexts are the neighbours among the *training* embeddings (self excluded,
  Alg. 1) unless ``dmlviz.heads.train_refiner(contexts=...)`` passes others (e.g.
  :func:`dmlviz.neighbours.purity_matched_contexts`); test contexts are the neighbours in the test gallery.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_finite, check_int

__all__ = [
    "PARAMETER_FREE",
    "VARIANTS",
    "CrossAttentionBlock",
    "NeighborRefiner",
    "RefinerMaps",
    "cross_attention",
    "neighbour_average",
    "neighbour_softmax",
    "parameter_free",
]

VARIANTS = ("full", "ca_only", "nn_avg", "nn_half", "nn_softmax", "nn_avg_ca")
_LEARNED = ("full", "ca_only", "nn_avg_ca")
PARAMETER_FREE = ("nn_avg", "nn_half", "nn_softmax")


def _check_pair(e0, context, dim: int | None = None, *, context_required: bool = True) -> None:
    """``e0 (B, D)`` and ``context (B, K, D)`` float tensors of matching B and D."""
    if not torch.is_tensor(e0) or e0.ndim != 2 or not e0.is_floating_point():
        got = f"shape {tuple(e0.shape)} {e0.dtype}" if torch.is_tensor(e0) else type(e0).__name__
        raise ValueError(f"e0 must be a float tensor (B, D), got {got}")
    if dim is not None and e0.shape[1] != dim:
        raise ValueError(f"e0 must have D = {dim} (the refiner's dim), got shape {tuple(e0.shape)}")
    check_finite(e0, "e0")  # one NaN query would stay NaN through every block
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
    check_finite(context, "context", "context")


def _check_indexed(e0, reference, indices, dim: int) -> None:
    """``e0 (B, D)``, ``reference (R, D)``, ``indices (B, K)`` into ``reference``."""
    _check_pair(e0, None, dim, context_required=False)
    if not torch.is_tensor(reference) or reference.ndim != 2 or reference.shape[1] != dim:
        got = tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__
        raise ValueError(f"reference must be a float tensor (R, D) with D = {dim}, got {got}")
    if (not torch.is_tensor(indices) or indices.ndim != 2 or len(indices) != len(e0)
            or indices.dtype not in (torch.int64, torch.int32)):
        got = (f"shape {tuple(indices.shape)} {indices.dtype}" if torch.is_tensor(indices)
               else type(indices).__name__)
        raise ValueError(f"indices must be an integer tensor (B, K) with B = {len(e0)}, got {got}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(reference)):
        raise ValueError(f"indices must lie in [0, {len(reference) - 1}] (rows of reference), got "
                         f"[{int(indices.min())}, {int(indices.max())}]")


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


def neighbour_average(e0: torch.Tensor, context: torch.Tensor, *,
                      query_weight: float | None = None) -> torch.Tensor:
    """Table 4 "NNs": the mean of the query and its K neighbours, no attention, no weights.

    Sec. 4.5: "averaging the embedding of a query point and 8 of its nearest neighbors".

    Args:
        e0: ``(B, D)`` initial embeddings.
        context: ``(B, K, D)`` their neighbours' initial embeddings.
        query_weight: None (the paper): every one of the K + 1 vectors weighs 1/(K+1).
            A number w in [0, 1]: ``w·ê⁰ + (1 − w)·mean_j ĉ_j`` (w = 1/2 is the control
            ``"nn_half"``).

    Returns:
        ``(B, D)`` unit vectors (ˆ = L2-normalised inputs).
    """
    _check_pair(e0, context)
    e0, context = F.normalize(e0, dim=-1), F.normalize(context, dim=-1)
    if query_weight is None:
        return F.normalize((e0 + context.sum(dim=1)) / (context.shape[1] + 1), dim=-1)  # (B, D)
    if not 0.0 <= float(query_weight) <= 1.0:
        raise ValueError(f"query_weight must be None or in [0, 1], got {query_weight}")
    w = float(query_weight)
    return F.normalize(w * e0 + (1 - w) * context.mean(dim=1), dim=-1)  # (B, D)


def neighbour_softmax(e0: torch.Tensor, context: torch.Tensor, *, tau: float = 0.1) -> torch.Tensor:
    """A parameter-free attention control: eq. (1)'s weights on the raw embeddings.

    ``a = softmax_j(ê⁰·ĉ_j / τ)`` ("we obtain a weighted sum of the embeddings of the nearest
    neighbors", eq. 1 with the temperature τ in place of √d), added to the query as the
    residual of eq. (3): ``normalise(ê⁰ + Σ_j a_j ĉ_j)``.

    Args:
        e0: ``(B, D)`` initial embeddings.
        context: ``(B, K, D)`` their neighbours' initial embeddings.
        tau: softmax temperature (> 0); large τ gives the uniform mean.

    Returns:
        ``(B, D)`` unit vectors.
    """
    _check_pair(e0, context)
    if not float(tau) > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    e0, context = F.normalize(e0, dim=-1), F.normalize(context, dim=-1)
    a = torch.softmax((context @ e0[:, :, None]).squeeze(2) / tau, dim=-1)  # (B, K) eq. (1)
    return F.normalize(e0 + (a[:, :, None] * context).sum(dim=1), dim=-1)  # (B, D)


def parameter_free(name: str, e0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The parameter-free rows by name: ``"nn_avg"`` (the paper's), ``"nn_half"``, ``"nn_softmax"``."""
    if name == "nn_avg":
        return neighbour_average(e0, context)
    if name == "nn_half":
        return neighbour_average(e0, context, query_weight=0.5)
    if name == "nn_softmax":
        return neighbour_softmax(e0, context)
    raise ValueError(f"refiner must be a NeighborRefiner or one of {PARAMETER_FREE}, got {name!r}")


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

    def project_context(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(W_K √D c, W_V √D c)`` of unit context rows ``(..., D)``."""
        scale = math.sqrt(self.dim)
        return self.k(scale * rows), self.v(scale * rows)

    def attend(self, e: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eq. (2) given projected ``keys, values (B, K, D)``: ``(CA (B, D), weights (B, H, K))``."""
        scale = math.sqrt(self.dim)  # unit vectors -> coordinates of order one
        heads, weights = cross_attention(self.q(scale * e), keys, values, self.num_heads)  # eq. (2)
        return self.out(heads) / scale, weights  # back to the unit scale

    def forward(self, e: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``e (B, D)`` unit query, ``context (B, K, D)`` unit neighbours.
        Returns: ``(CA(e, C, C) (B, D), weights (B, H, K))``."""
        return self.attend(e, *self.project_context(context))  # (B, D), (B, H, K)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, scale=sqrt(dim) in, 1/sqrt(dim) out"


class RefinerMaps(NamedTuple):
    """What :class:`NeighborRefiner` returns with ``return_maps=True``.

    Attributes:
        attention: ``(B, T, heads, K)`` the softmax weights ``a_j`` of eq. (2) of every block
            ``t`` and head ``h`` over the K neighbours (summing to 1 over K; K = 1 for
            ``"ca_only"`` and ``"nn_avg_ca"``, whose context is the query itself).
    """

    attention: torch.Tensor


class NeighborRefiner(nn.Module):
    """T cross-attention blocks refining an embedding with its neighbours (eqs. 2–3, Alg. 2).

    Args:
        dim: ``D`` of the embeddings.
        num_blocks: ``T``, the number of refinement steps (≥ 1).
        num_heads: ``H`` per block; must divide ``dim``.
        variant: one of :data:`VARIANTS` with parameters: ``"full"``, ``"ca_only"`` or
            ``"nn_avg_ca"`` (the parameter-free ones: :func:`parameter_free`).
        zero_init: zero-initialise every ``W_O`` (the untrained refiner is the identity).

    ``forward(e0, context, return_maps=True)`` returns ``(e^T, maps)`` with ``maps`` a
    :class:`RefinerMaps` (``maps.attention`` ``(B, T, heads, K)``).
    """

    def __init__(self, dim: int, num_blocks: int = 8, num_heads: int = 8, *,
                 variant: str = "full", zero_init: bool = True) -> None:
        super().__init__()
        if variant not in _LEARNED:
            hint = (f" ({variant!r} has no parameters: use parameter_free)"
                    if variant in PARAMETER_FREE else "")
            raise ValueError(f"variant must be one of {_LEARNED}{hint}, got {variant!r}")
        self.dim = check_int(dim, "dim", 1)
        self.num_blocks = check_int(num_blocks, "num_blocks", 1)
        self.num_heads = check_int(num_heads, "num_heads", 1)
        self.variant = variant
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, num_heads, zero_init=zero_init)
                                    for _ in range(num_blocks))

    def forward(self, e0: torch.Tensor, context: torch.Tensor | None = None, *,
                reference: torch.Tensor | None = None, indices: torch.Tensor | None = None,
                return_all: bool = False, return_maps: bool = False):
        """Refine ``e0`` with its ``context`` — given as rows, or as indices into a gallery.

        Args:
            e0: ``(B, D)`` initial embeddings (normalised here).
            context: ``(B, K, D)`` initial embeddings of each query's K neighbours
                (normalised here); every pair is projected (the per-pair form). Ignored by
                ``variant="ca_only"`` (may be None).
            reference, indices: instead of ``context``: the gallery ``(R, D)`` and each
                query's neighbour rows ``(B, K)`` in it. Keys and values are then projected
                once per gallery row and block and gathered — the same formula, fewer
                multiplications when the queries share neighbours.
            return_all: return every step ``e⁰ … e^T`` instead of ``e^T`` only.
            return_maps: also return a :class:`RefinerMaps`, the attention weights over
                the neighbours.

        Returns:
            ``e^T (B, D)``, or ``(B, T+1, D)`` with ``return_all`` (index 0 is the block
            input: ``ê⁰``, or for ``"nn_avg_ca"`` the neighbour average); with ``return_maps``
            a pair ``(that, RefinerMaps)``, ``RefinerMaps.attention`` ``(B, T, heads, K)``
            (K = 1 for ``"ca_only"``/``"nn_avg_ca"``).
        """
        indexed = reference is not None or indices is not None
        if indexed:
            if context is not None or reference is None or indices is None:
                raise ValueError("pass either context (B, K, D), or reference (R, D) together "
                                 "with indices (B, K); got "
                                 f"context={'set' if context is not None else None}, "
                                 f"reference={'set' if reference is not None else None}, "
                                 f"indices={'set' if indices is not None else None}")
            _check_indexed(e0, reference, indices, self.dim)
            reference = F.normalize(reference, dim=-1)  # (R, D)
            if self.variant != "full":
                context = reference[indices]  # (B, K, D) few rows: gathering is all it needs
                indexed = False
        else:
            _check_pair(e0, context, self.dim, context_required=self.variant != "ca_only")
        e = F.normalize(e0, dim=-1)  # (B, D) ê⁰
        if self.variant == "full" and not indexed:
            context = F.normalize(context, dim=-1)  # (B, K, D)
        elif self.variant != "full":
            if self.variant == "nn_avg_ca":
                e = neighbour_average(e, context)  # (B, D) Table 4 "NNs" first
            context = e[:, None, :]  # (B, 1, D) the query alone
        steps, maps = [e], []
        for block in self.blocks:
            if indexed:
                keys, values = block.project_context(reference)  # (R, D) once per gallery row
                update, weights = block.attend(e, keys[indices], values[indices])  # eq. (2)
            else:
                update, weights = block(e, context)  # (B, D), (B, H, K) eq. (2), per pair
            e = F.normalize(e + update, dim=-1)  # eq. (3), Alg. 2 line 10
            steps.append(e)
            maps.append(weights)
        out = torch.stack(steps, dim=1) if return_all else e  # (B, T+1, D) | (B, D)
        if return_maps:
            return out, RefinerMaps(attention=torch.stack(maps, dim=1))  # (B, T, heads, K)
        return out

    @torch.no_grad()
    def refine_gallery(self, e0: torch.Tensor, reference: torch.Tensor, indices: torch.Tensor, *,
                       batch_size: int = 4096, return_all: bool = False) -> torch.Tensor:
        """Refine many queries against one gallery, block by block (``variant="full"``).

        Each block projects every gallery row to its key and value once, then updates all
        queries in batches of ``batch_size`` (gathering the projected rows of their
        neighbours): the formula of :meth:`forward`, with ``O((N + R)·D²)`` multiply work per
        block instead of ``O(N·K·D²)``.

        Args:
            e0: ``(N, D)`` initial embeddings (normalised here).
            reference: ``(R, D)`` the gallery (normalised here).
            indices: ``(N, K)`` each query's neighbour rows in ``reference``.
            batch_size: queries updated at once.
            return_all: return every step ``(N, T+1, D)`` instead of ``e^T (N, D)``.

        Returns:
            Unit embeddings on the device and dtype of ``e0``.
        """
        if self.variant != "full":
            raise ValueError(f"refine_gallery needs variant='full', got {self.variant!r} "
                             "(the other variants attend to the query alone: call the refiner)")
        _check_indexed(e0, reference, indices, self.dim)
        batch_size = check_int(batch_size, "batch_size", 1)
        e, reference = F.normalize(e0, dim=-1), F.normalize(reference, dim=-1)
        steps = [e] if return_all else []
        for block in self.blocks:
            keys, values = block.project_context(reference)  # (R, D) each row once per block
            new = torch.empty_like(e)
            for start in range(0, len(e), batch_size):
                b = slice(start, start + batch_size)
                update, _ = block.attend(e[b], keys[indices[b]], values[indices[b]])  # eq. (2)
                new[b] = F.normalize(e[b] + update, dim=-1)  # eq. (3)
            e = new
            if return_all:
                steps.append(e)
        return torch.stack(steps, dim=1) if return_all else e  # (N, T+1, D) | (N, D)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


# ----------------------------------------------------------------------------- contexts, Alg. 1–2


