"""Coded residual transform (CRT): prototype-coded residuals as a DML embedding head.

Kan, Liang, Li, Cen, Wang & He, "Coded Residual Transform for Generalizable Deep Metric
Learning", NeurIPS 2022, sections 3.2–3.3, eqs. (1)–(5) and the total loss.

A feature map ``x`` (C channels, N = H·W positions ``x_j``) is described by its residuals to
``K`` learned prototypes ``c_k`` (the one-layer "prototype network", i.e. a 1×1 convolution
whose filters are the prototypes)::

    a_jk = x_j · c_k                                    correlation (the paper's Fig. 2)
    r_k  = Σ_j softplus(a_jk) (x_j − c_k)               coded residual of prototype k   (1)
    f    = mean_k Γ_k(r_k)                              embedding                        (2)

``Γ_k`` is a small fully connected network (Linear → GELU → Linear) per prototype, or one
shared ``Γ`` for all k (``shared_embedding=True``, the paper's Table 7 ablation). Training adds

* the **diversity** loss (eq. 3): mean |cos(c_k, c_l)| over distinct prototype pairs, which
  pushes the prototypes apart so that they code different parts of the map;
* the **cross-branch consistency** loss (eq. 5): two CRT branches with different K and
  embedding sizes (paper: K₁ = 49 → 128-d, K₂ = 64 → 1024-d) should agree on which images
  are similar: the L1 distance between their batch cosine-similarity matrices.

Total loss (section 3.3): ``L = L_DIV + λ₁ L_MS + λ₂ L_CON`` (:class:`CRTObjective`).

Interpretations — no copy of the paper was at hand; the structure follows the issue text:

* the softplus weights are not normalised over positions (eq. 1 as stated), so ``‖r_k‖``
  grows with N; the embedding is L2-normalised after the mean of eq. (2);
* the hidden width of ``Γ_k`` equals the embedding size D;
* :class:`TwoBranchCRT` retrieves with the concatenation of the two unit-length branch
  embeddings divided by √2 (cosine = mean of the two branch cosines); the metric loss is
  applied to each branch separately and summed;
* the diversity loss of a two-branch model is the sum over the branches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_feature_map, check_int

__all__ = [
    "CRTObjective",
    "CodedResidualTransform",
    "TwoBranchCRT",
    "correlation",
    "cross_branch_consistency_loss",
    "prototype_cosine",
    "prototype_diversity_loss",
    "residual_encoding",
]



def _check_prototypes(prototypes, channels: int | None = None) -> None:
    if not torch.is_tensor(prototypes) or prototypes.ndim != 2 or len(prototypes) < 1:
        raise ValueError(f"prototypes must be a tensor (K, C) with K >= 1, got "
                         f"{tuple(prototypes.shape) if torch.is_tensor(prototypes) else type(prototypes).__name__}")
    if channels is not None and prototypes.shape[1] != channels:
        raise ValueError(f"prototypes have {prototypes.shape[1]} channels but x has {channels}")


# ----------------------------------------------------------------------------- functional core

def correlation(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Correlation ``x_j · c_k`` of every position with every prototype (the paper's Fig. 2).

    Args:
        x: ``(B, C, H, W)`` feature map.
        prototypes: ``(K, C)``.

    Returns:
        ``(B, K, H, W)`` correlation maps.
    """
    check_feature_map(x, "x")
    _check_prototypes(prototypes, x.shape[1])
    return torch.einsum("bchw,kc->bkhw", x, prototypes)  # (B, K, H, W)


def residual_encoding(x: torch.Tensor, prototypes: torch.Tensor,
                      return_weights: bool = False):
    """Coded residuals ``r_k = Σ_j softplus(x_j·c_k) (x_j − c_k)`` (eq. 1).

    Args:
        x: ``(B, C, H, W)`` feature map.
        prototypes: ``(K, C)``.
        return_weights: also return the softplus weights.

    Returns:
        ``(B, K, C)`` residuals; with ``return_weights`` also ``(B, K, H, W)`` weights.
    """
    a = correlation(x, prototypes)  # (B, K, H, W)
    w = F.softplus(a).flatten(2)  # (B, K, N)
    feats = x.flatten(2)  # (B, C, N)
    # Σ_j w_jk (x_j − c_k) = Σ_j w_jk x_j − (Σ_j w_jk) c_k, without a (B, K, N, C) tensor
    r = torch.einsum("bkn,bcn->bkc", w, feats) - w.sum(2)[..., None] * prototypes  # eq. (1)
    if return_weights:
        return r, w.view_as(a)
    return r


def prototype_cosine(prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between all prototype pairs.

    Args:
        prototypes: ``(K, C)``.

    Returns:
        ``(K, K)`` matrix of cos(c_k, c_l) (ones on the diagonal).
    """
    _check_prototypes(prototypes)
    p = F.normalize(prototypes, dim=1)
    return p @ p.T  # (K, K)


def prototype_diversity_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """Diversity loss: mean |cos(c_k, c_l)| over ordered pairs k ≠ l (eq. 3).

    0 for mutually orthogonal prototypes, 1 for identical (or opposite) ones; 0 when K = 1.

    Args:
        prototypes: ``(K, C)``.

    Returns:
        Scalar tensor.
    """
    cos = prototype_cosine(prototypes)  # (K, K)
    k = len(cos)
    if k < 2:
        return cos.sum() * 0.0
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    return cos[off].abs().mean()  # eq. (3)


def cross_branch_consistency_loss(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Consistency loss: mean |S₁ − S₂| between the two branches' batch cosine matrices (eq. 5).

    Args:
        f1: ``(B, D1)`` embeddings of branch 1.
        f2: ``(B, D2)`` embeddings of branch 2 (same images; D2 may differ from D1).

    Returns:
        Scalar tensor; 0 when the two branches rank the batch identically in cosine.
    """
    for f, name in ((f1, "f1"), (f2, "f2")):
        if not torch.is_tensor(f) or f.ndim != 2:
            raise ValueError(f"{name} must be a tensor (B, D), got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
    if len(f1) != len(f2):
        raise ValueError(f"f1 and f2 must hold the same images: got {len(f1)} and {len(f2)} rows")
    a, b = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    return (a @ a.T - b @ b.T).abs().mean()  # eq. (5)  (B, B)


# ----------------------------------------------------------------------------- modules

class CodedResidualTransform(nn.Module):
    """CRT head: K prototypes → coded residuals (eq. 1) → Γ_k → mean → unit length (eq. 2).

    Args:
        in_channels: ``C`` of the input map.
        num_prototypes: ``K`` ≥ 1.
        embedding_dim: ``D``; also the hidden width of each ``Γ_k``.
        shared_embedding: one ``Γ`` for all prototypes (Table 7 ablation) instead of one each.

    Shapes: input ``(B, C, H, W)``, output ``(B, D)`` unit-norm embeddings.
    """

    def __init__(self, in_channels: int, num_prototypes: int, embedding_dim: int,
                 shared_embedding: bool = False) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.num_prototypes = check_int(num_prototypes, "num_prototypes", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.shared_embedding = bool(shared_embedding)
        c, k, d = self.in_channels, self.num_prototypes, self.embedding_dim
        g = 1 if self.shared_embedding else k
        # the prototype network: a 1×1 conv without bias, initialised like one
        self.prototypes = nn.Parameter(torch.empty(k, c))  # (K, C)
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))
        bound1, bound2 = 1 / math.sqrt(c), 1 / math.sqrt(d)
        self.w1 = nn.Parameter(torch.empty(g, c, d).uniform_(-bound1, bound1))  # (G, C, D)
        self.b1 = nn.Parameter(torch.empty(g, d).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(g, d, d).uniform_(-bound2, bound2))  # (G, D, D)
        self.b2 = nn.Parameter(torch.empty(g, d).uniform_(-bound2, bound2))

    def correlation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``x_j · c_k`` for every position and prototype: ``(B, C, H, W) → (B, K, H, W)``."""
        check_feature_map(x, "x", self.in_channels, module=self)
        return correlation(x, self.prototypes)

    def embed_residuals(self, r: torch.Tensor) -> torch.Tensor:
        """``Γ_k(r_k)``: ``(B, K, C) → (B, K, D)`` (a shared Γ broadcasts over k)."""
        h = F.gelu(torch.einsum("bkc,kcd->bkd", r, self.w1.expand(self.num_prototypes, -1, -1))
                   + self.b1)  # (B, K, D)
        return torch.einsum("bkd,kde->bke", h, self.w2.expand(self.num_prototypes, -1, -1)) + self.b2

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``; return_maps: also return a dict with ``correlation``
        ``(B, K, H, W)``, ``weights`` (softplus) ``(B, K, H, W)``, ``residuals`` ``(B, K, C)``
        and ``prototype_cosine`` ``(K, K)``.

        Returns: ``(B, D)`` unit-norm embeddings (and the maps).
        """
        check_feature_map(x, "x", self.in_channels, module=self)
        r, w = residual_encoding(x, self.prototypes, return_weights=True)  # (B, K, C)
        f = F.normalize(self.embed_residuals(r).mean(dim=1), dim=1)  # eq. (2)  (B, D)
        if not return_maps:
            return f
        with torch.no_grad():
            maps = {"correlation": correlation(x, self.prototypes), "weights": w,
                    "residuals": r, "prototype_cosine": prototype_cosine(self.prototypes)}
        return f, maps

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_prototypes={self.num_prototypes}, "
                f"embedding_dim={self.embedding_dim}, shared_embedding={self.shared_embedding}")


class TwoBranchCRT(nn.Module):
    """Two CRT branches on the same map with different K and D (section 3.3).

    ``forward`` returns ``[f₁, f₂] / √2`` ``(B, D₁ + D₂)``, unit length, so that retrieval
    uses the mean of the two branch cosines; :meth:`split` recovers ``f₁, f₂``.

    Args:
        in_channels: ``C``.
        num_prototypes: ``(K₁, K₂)`` (paper: 49, 64).
        embedding_dims: ``(D₁, D₂)`` (paper: 128, 1024).
        shared_embedding: as for :class:`CodedResidualTransform`.
    """

    def __init__(self, in_channels: int, num_prototypes: tuple[int, int] = (49, 64),
                 embedding_dims: tuple[int, int] = (128, 1024),
                 shared_embedding: bool = False) -> None:
        super().__init__()
        for value, name in ((num_prototypes, "num_prototypes"), (embedding_dims, "embedding_dims")):
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"{name} must be a pair (branch 1, branch 2), got {value!r}")
        self.branches = nn.ModuleList(
            CodedResidualTransform(in_channels, k, d, shared_embedding)
            for k, d in zip(num_prototypes, embedding_dims, strict=True))
        self.embedding_dims = tuple(b.embedding_dim for b in self.branches)

    def split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, D₁ + D₂) → ((B, D₁), (B, D₂))``, each branch back at unit length."""
        if not torch.is_tensor(f) or f.ndim != 2 or f.shape[1] != sum(self.embedding_dims):
            raise ValueError(f"f must be (B, {sum(self.embedding_dims)}) = (B, D₁ + D₂), got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
        f1, f2 = f.split(self.embedding_dims, dim=1)
        return F.normalize(f1, dim=1), F.normalize(f2, dim=1)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``. Returns: ``(B, D₁ + D₂)`` (and ``[maps₁, maps₂]``)."""
        outs = [b(x, return_maps=return_maps) for b in self.branches]
        fs = [o[0] for o in outs] if return_maps else outs
        f = torch.cat(fs, dim=1) / math.sqrt(2)  # (B, D₁ + D₂)
        return (f, [o[1] for o in outs]) if return_maps else f


class CRTObjective(nn.Module):
    """``L = w_div L_DIV + λ₁ L_metric + λ₂ L_CON`` for a CRT model (section 3.3).

    Called like any DML loss, ``objective(embeddings, labels)``, so it plugs into
    :func:`dmlviz.train.fit`. It reads the model's prototypes (for L_DIV) and, for a
    :class:`TwoBranchCRT`, splits the embeddings into the branches (metric loss on each, summed;
    L_CON between them). The model is referenced, not registered: its parameters stay the
    model's (an optimiser sees each one once).

    Args:
        model: a :class:`CodedResidualTransform` or :class:`TwoBranchCRT`.
        metric_loss: e.g. :class:`dmlviz.losses.MultiSimilarityLoss`.
        diversity_weight: weight of L_DIV (1 in the paper; 0 switches it off).
        metric_weight: λ₁.
        consistency_weight: λ₂ (two-branch models only; ignored otherwise).
    """

    def __init__(self, model: nn.Module, metric_loss: nn.Module, *, diversity_weight: float = 1.0,
                 metric_weight: float = 1.0, consistency_weight: float = 0.0) -> None:
        super().__init__()
        if not isinstance(model, (CodedResidualTransform, TwoBranchCRT)):
            raise ValueError(f"model must be a CodedResidualTransform or TwoBranchCRT, got "
                             f"{type(model).__name__}")
        for value, name in ((diversity_weight, "diversity_weight"), (metric_weight, "metric_weight"),
                            (consistency_weight, "consistency_weight")):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.__dict__["_model"] = model  # not a submodule
        self.metric_loss = metric_loss
        self.diversity_weight = float(diversity_weight)
        self.metric_weight = float(metric_weight)
        self.consistency_weight = float(consistency_weight)
        self.last: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` from the model, labels ``(B,)``. Returns: scalar loss."""
        model = self._model
        if isinstance(model, TwoBranchCRT):
            fs = model.split(embeddings)
            branches = list(model.branches)
            con = cross_branch_consistency_loss(*fs)  # eq. (5)
        else:
            fs, branches, con = [embeddings], [model], embeddings.sum() * 0.0
        metric = sum(self.metric_loss(f, labels) for f in fs)
        div = sum(prototype_diversity_loss(b.prototypes) for b in branches)  # eq. (3)
        self.last = {"div": float(div.detach()), "metric": float(metric.detach()),
                     "con": float(con.detach())}
        return (self.diversity_weight * div + self.metric_weight * metric
                + self.consistency_weight * con)

    def extra_repr(self) -> str:
        return (f"model={type(self._model).__name__}, diversity_weight={self.diversity_weight}, "
                f"metric_weight={self.metric_weight}, consistency_weight={self.consistency_weight}")
