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
  are similar: "the L_1 distance between these two similarity matrices",
  ``L_CON = ‖S⁽¹⁾ − S⁽²⁾‖₁``, the **sum** of |S⁽¹⁾_ij − S⁽²⁾_ij| over the B² entries
  (``reduction="sum"``, the default; ``reduction="mean"`` divides by B², which is B² times
  smaller — 1024× at B = 32 — so a λ₂ tuned for one form is not the other's).

Total loss (section 3.3): ``L = L_DIV + λ₁ L_MS + λ₂ L_CON`` (:class:`CRTObjective`); the
paper sets λ₁ per branch (section 4.1: 1.0 for branch 1, 0.1 for branch 2 on CUB and Cars,
0.9 on SOP and In-Shop) and λ₂ = 0.9.

Matched controls (not in the paper, which compares with its MS baseline on a fine-tuned
backbone): global average pooling, then a linear map or an MLP whose hidden width
:func:`matched_hidden` picks to match a CRT head's parameter count
(:class:`dmlviz.heads.PooledEmbedder`, heads ``gap_linear`` and ``gap_mlp``) — and
the ablations ``CodedResidualTransform(..., subtract_prototype=False)`` (weighted pooling
``Σ_j softplus(a_jk) x_j`` without the ``− c_k`` of eq. 1) and ``num_prototypes=1``.

Maps (the package's protocol): ``return_maps=True`` returns ``(output, maps)`` — a
:class:`CRTMaps` (``correlation``, ``weights`` ``(B, K, H, W)``, ``residuals`` ``(B, K, C)``,
``prototype_cosine`` ``(K, K)``) from :class:`CodedResidualTransform`, a
:class:`TwoBranchCRTMaps` (``branch1``, ``branch2``: a :class:`CRTMaps` each, or ``None``)
from :class:`TwoBranchCRT`.

Interpretations, where the paper's text is silent:

* the softplus weights are not normalised over positions (eq. 1 as stated), so ``‖r_k‖``
  grows with N; the embedding is L2-normalised after the mean of eq. (2);
* ``Γ_k`` ("multiple fully connected layers and one GELU", section 3.2) is Linear → GELU →
  Linear with hidden width D;
* :class:`TwoBranchCRT` **retrieves with branch 1** (``retrieval="branch1"``, the default):
  Table 8 "reports the results of embedding computed from the first embedding branch", and
  Tables 3–4 give CRT's dimension as 128, branch 1's size. ``retrieval="concat"`` (the two unit-length embeddings concatenated, divided by √2)
  is an ensemble of two heads, offered as a named option. The metric loss is applied to each
  branch with its own λ₁ and summed;
* ``share_weights=True`` (Tables 9–10: "the network weight of the second embedding branch is
  shared from the first embedding branch", with equal K in both): needs K₁ = K₂; branch 2 uses
  branch 1's prototypes, and also its ``Γ_k`` when D₁ = D₂ (then the branches coincide and
  L_CON is 0: only the second λ₁ remains);
* the diversity loss of a two-branch model is the sum over the (distinct) branches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_feature_map, check_int

__all__ = [
    "CONSISTENCY_REDUCTIONS",
    "CRTMaps",
    "CRTObjective",
    "CodedResidualTransform",
    "TwoBranchCRT",
    "TwoBranchCRTMaps",
    "correlation",
    "cross_branch_consistency_loss",
    "matched_hidden",
    "prototype_cosine",
    "prototype_diversity_loss",
    "residual_encoding",
]

CONSISTENCY_REDUCTIONS = ("sum", "mean")
RETRIEVAL_MODES = ("branch1", "concat")


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
                      return_weights: bool = False, subtract_prototype: bool = True):
    """Coded residuals ``r_k = Σ_j softplus(x_j·c_k) (x_j − c_k)`` (eq. 1).

    Args:
        x: ``(B, C, H, W)`` feature map.
        prototypes: ``(K, C)``.
        return_weights: also return the softplus weights.
        subtract_prototype: False drops the ``− c_k`` (the ablation "no residual":
            ``Σ_j softplus(x_j·c_k) x_j``, a correlation-weighted pooling of the features).

    Returns:
        ``(B, K, C)`` residuals; with ``return_weights`` also ``(B, K, H, W)`` weights.
    """
    a = correlation(x, prototypes)  # (B, K, H, W)
    w = F.softplus(a).flatten(2)  # (B, K, N)
    feats = x.flatten(2)  # (B, C, N)
    # Σ_j w_jk (x_j − c_k) = Σ_j w_jk x_j − (Σ_j w_jk) c_k, without a (B, K, N, C) tensor
    r = torch.einsum("bkn,bcn->bkc", w, feats)  # (B, K, C) Σ_j w_jk x_j
    if subtract_prototype:
        r = r - w.sum(2)[..., None] * prototypes  # eq. (1)
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


def cross_branch_consistency_loss(f1: torch.Tensor, f2: torch.Tensor,
                                  reduction: str = "sum") -> torch.Tensor:
    """Consistency loss ``L_CON = ‖S⁽¹⁾ − S⁽²⁾‖₁`` between the branches' cosine matrices (eq. 5).

    ``S⁽ᵇ⁾_ij = cos(f_i⁽ᵇ⁾, f_j⁽ᵇ⁾)`` (eq. 4) over the B images of the batch.

    Args:
        f1: ``(B, D1)`` embeddings of branch 1.
        f2: ``(B, D2)`` embeddings of branch 2 (same images; D2 may differ from D1).
        reduction: ``"sum"`` — the entry-wise L1 norm of eq. (5), Σ_ij |S⁽¹⁾_ij − S⁽²⁾_ij|
            (grows with B²); ``"mean"`` — the same divided by B² (in [0, 2]).

    Returns:
        Scalar tensor; 0 when the two branches give the same cosine matrix.
    """
    for f, name in ((f1, "f1"), (f2, "f2")):
        if not torch.is_tensor(f) or f.ndim != 2:
            raise ValueError(f"{name} must be a tensor (B, D), got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
    if len(f1) != len(f2):
        raise ValueError(f"f1 and f2 must hold the same images: got {len(f1)} and {len(f2)} rows")
    if reduction not in CONSISTENCY_REDUCTIONS:
        raise ValueError(f"reduction must be one of {CONSISTENCY_REDUCTIONS}, got {reduction!r}")
    a, b = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    diff = (a @ a.T - b @ b.T).abs()  # (B, B) |S⁽¹⁾ − S⁽²⁾|, eq. (4)
    return diff.sum() if reduction == "sum" else diff.mean()  # eq. (5)


def matched_hidden(in_channels: int, embedding_dim: int, target: int) -> int:
    """Hidden width ``h`` of a GAP + MLP head (C → h → D) whose parameter count
    ``h (C + 1 + D) + D`` is closest to ``target`` (e.g. a CRT head's parameter count).

    Args:
        in_channels: ``C``.
        embedding_dim: ``D``.
        target: the parameter count to match, ≥ 1.

    Returns:
        ``h`` ≥ 1.
    """
    c = check_int(in_channels, "in_channels", 1)
    d = check_int(embedding_dim, "embedding_dim", 1)
    target = check_int(target, "target", 1)
    return max(1, round((target - d) / (c + 1 + d)))


# ----------------------------------------------------------------------------- modules

class CRTMaps(NamedTuple):
    """What :class:`CodedResidualTransform` returns with ``return_maps=True`` (no gradient).

    Attributes:
        correlation: ``(B, K, H, W)`` ``a_jk = x_j · c_k`` of every position and prototype
            (the paper's Fig. 2).
        weights: ``(B, K, H, W)`` the coding weights ``softplus(a_jk)`` of eq. (1).
        residuals: ``(B, K, C)`` the coded residuals ``r_k`` of eq. (1).
        prototype_cosine: ``(K, K)`` ``cos(c_k, c_l)``, what L_DIV (eq. 3) averages.
    """

    correlation: torch.Tensor
    weights: torch.Tensor
    residuals: torch.Tensor
    prototype_cosine: torch.Tensor


class CodedResidualTransform(nn.Module):
    """CRT head: K prototypes → coded residuals (eq. 1) → Γ_k → mean → unit length (eq. 2).

    Args:
        in_channels: ``C`` of the input map.
        num_prototypes: ``K`` ≥ 1.
        embedding_dim: ``D``; also the hidden width of each ``Γ_k``.
        shared_embedding: one ``Γ`` for all prototypes (Table 7 ablation) instead of one each.
        subtract_prototype: False drops the ``− c_k`` of eq. (1) (the "no residual" ablation).

    Shapes: input ``(B, C, H, W)``, output ``(B, D)`` unit-norm embeddings;
    ``forward(x, return_maps=True)`` returns ``(f, maps)`` with ``maps`` a :class:`CRTMaps`.
    """

    def __init__(self, in_channels: int, num_prototypes: int, embedding_dim: int,
                 shared_embedding: bool = False, subtract_prototype: bool = True) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.num_prototypes = check_int(num_prototypes, "num_prototypes", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.shared_embedding = bool(shared_embedding)
        self.subtract_prototype = bool(subtract_prototype)
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
        """Args: x ``(B, C, H, W)``; return_maps: also return a :class:`CRTMaps`
        (``correlation`` and ``weights`` ``(B, K, H, W)``, ``residuals`` ``(B, K, C)``,
        ``prototype_cosine`` ``(K, K)``).

        Returns: ``(B, D)`` unit-norm embeddings; with ``return_maps`` ``(f, CRTMaps)``.
        """
        check_feature_map(x, "x", self.in_channels, module=self)
        r, w = residual_encoding(x, self.prototypes, return_weights=True,
                                 subtract_prototype=self.subtract_prototype)  # (B, K, C)
        f = F.normalize(self.embed_residuals(r).mean(dim=1), dim=1)  # eq. (2)  (B, D)
        if not return_maps:
            return f
        with torch.no_grad():
            maps = CRTMaps(correlation=correlation(x, self.prototypes), weights=w, residuals=r,
                           prototype_cosine=prototype_cosine(self.prototypes))
        return f, maps

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_prototypes={self.num_prototypes}, "
                f"embedding_dim={self.embedding_dim}, shared_embedding={self.shared_embedding}, "
                f"subtract_prototype={self.subtract_prototype}")


class TwoBranchCRTMaps(NamedTuple):
    """What :class:`TwoBranchCRT` returns with ``return_maps=True``: each branch's
    :class:`CRTMaps` (its ``K`` = K₁ or K₂), or ``None`` for the branch that ``output``
    did not compute (``"branch1"`` computes only branch 1, ``"branch2"`` only branch 2).

    Attributes:
        branch1: :class:`CRTMaps` of branch 1 (K₁ prototypes) or ``None``.
        branch2: :class:`CRTMaps` of branch 2 (K₂ prototypes) or ``None``.
    """

    branch1: CRTMaps | None = None
    branch2: CRTMaps | None = None


class TwoBranchCRT(nn.Module):
    """Two CRT branches on the same map with different K and D (section 3.3, Fig. 3).

    In training mode ``forward`` returns both branches, ``[f₁, f₂] / √2`` ``(B, D₁ + D₂)``
    (what :class:`CRTObjective` splits, with :meth:`split`, for L_MS per branch and L_CON). In
    eval mode it returns the **retrieval** embedding: branch 1 ``(B, D₁)`` by default, as the
    paper's Table 8 ("results of embedding computed from the first embedding branch"), or the
    concatenation with ``retrieval="concat"`` (an ensemble of both heads). ``output=`` overrides
    the mode: ``"both"``, ``"branch1"``, ``"branch2"``, ``"concat"`` (= ``"both"``).
    ``forward(x, return_maps=True)`` returns ``(f, maps)`` with ``maps`` a
    :class:`TwoBranchCRTMaps` (``maps.branch1``, ``maps.branch2``).

    Args:
        in_channels: ``C``.
        num_prototypes: ``(K₁, K₂)`` (paper: 49, 64).
        embedding_dims: ``(D₁, D₂)`` (paper: 128, 1024).
        shared_embedding: as for :class:`CodedResidualTransform`.
        retrieval: ``"branch1"`` (default) or ``"concat"``: what eval mode returns.
        share_weights: branch 2 reuses branch 1's prototypes (needs K₁ = K₂), and its ``Γ_k``
            when D₁ = D₂ (Tables 9–10; see the module docstring).
    """

    OUTPUTS = ("both", "concat", "branch1", "branch2")

    def __init__(self, in_channels: int, num_prototypes: tuple[int, int] = (49, 64),
                 embedding_dims: tuple[int, int] = (128, 1024),
                 shared_embedding: bool = False, retrieval: str = "branch1",
                 share_weights: bool = False) -> None:
        super().__init__()
        for value, name in ((num_prototypes, "num_prototypes"), (embedding_dims, "embedding_dims")):
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"{name} must be a pair (branch 1, branch 2), got {value!r}")
        if retrieval not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval must be one of {RETRIEVAL_MODES}, got {retrieval!r}")
        if share_weights and num_prototypes[0] != num_prototypes[1]:
            raise ValueError(f"share_weights=True needs the same number of prototypes in both "
                             f"branches (Table 9), got num_prototypes={tuple(num_prototypes)}")
        self.branches = nn.ModuleList(
            CodedResidualTransform(in_channels, k, d, shared_embedding)
            for k, d in zip(num_prototypes, embedding_dims, strict=True))
        self.embedding_dims = tuple(b.embedding_dim for b in self.branches)
        self.retrieval = retrieval
        self.share_weights = bool(share_weights)
        if self.share_weights:
            one, two = self.branches
            two.prototypes = one.prototypes  # the same Parameter: one prototype network
            if one.embedding_dim == two.embedding_dim:
                two.w1, two.b1, two.w2, two.b2 = one.w1, one.b1, one.w2, one.b2

    @property
    def distinct_branches(self) -> list[CodedResidualTransform]:
        """The branches whose prototypes are their own (one when ``share_weights``)."""
        return [self.branches[0]] if self.share_weights else list(self.branches)

    def split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, D₁ + D₂) → ((B, D₁), (B, D₂))``, each branch back at unit length."""
        if not torch.is_tensor(f) or f.ndim != 2 or f.shape[1] != sum(self.embedding_dims):
            raise ValueError(f"f must be (B, {sum(self.embedding_dims)}) = (B, D₁ + D₂), the "
                             f"output of forward(x, output='both'), got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
        f1, f2 = f.split(self.embedding_dims, dim=1)
        return F.normalize(f1, dim=1), F.normalize(f2, dim=1)

    def forward(self, x: torch.Tensor, return_maps: bool = False, output: str | None = None):
        """Args: x ``(B, C, H, W)``; return_maps: also return a :class:`TwoBranchCRTMaps`;
        output: see the class docstring (default: ``"both"`` in training, ``retrieval`` in eval).

        Returns: ``(B, D₁ + D₂)``, ``(B, D₁)`` or ``(B, D₂)``; with ``return_maps``
        ``(f, TwoBranchCRTMaps)``.
        """
        if output is None:
            output = "both" if self.training else self.retrieval
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS} or None, got {output!r}")
        wanted = {"branch1": [0], "branch2": [1]}.get(output, [0, 1])
        outs = [self.branches[i](x, return_maps=return_maps) for i in wanted]
        fs = [o[0] for o in outs] if return_maps else outs
        f = fs[0] if len(fs) == 1 else torch.cat(fs, dim=1) / math.sqrt(2)  # (B, D₁ + D₂)
        if not return_maps:
            return f
        return f, TwoBranchCRTMaps(**{f"branch{i + 1}": o[1]
                                      for i, o in zip(wanted, outs, strict=True)})

    def extra_repr(self) -> str:
        return f"retrieval={self.retrieval!r}, share_weights={self.share_weights}"


class CRTObjective(nn.Module):
    """``L = w_div L_DIV + λ₁ L_metric + λ₂ L_CON`` for a CRT model (section 3.3).

    Called like any DML loss, ``objective(embeddings, labels)``, so it plugs into
    :func:`dmlviz.train.fit`. It reads the model's prototypes (for L_DIV) and, for a
    :class:`TwoBranchCRT`, splits the training embeddings ``(B, D₁ + D₂)`` into the branches
    (metric loss on each, with its own λ₁; L_CON between them). The model is referenced, not
    registered: its parameters stay the model's (an optimiser sees each one once).

    Args:
        model: a :class:`CodedResidualTransform` or :class:`TwoBranchCRT`.
        metric_loss: e.g. :class:`dmlviz.losses.MultiSimilarityLoss`.
        diversity_weight: weight of L_DIV (1 in the paper; 0 switches it off).
        metric_weight: λ₁; for a two-branch model a number (both branches) or a pair
            ``(λ₁⁽¹⁾, λ₁⁽²⁾)`` (paper, CUB and Cars: ``(1.0, 0.1)``).
        consistency_weight: λ₂ (two-branch models only; ignored otherwise; paper 0.9).
        consistency_reduction: ``"sum"`` (eq. 5's L1 norm, default) or ``"mean"`` (÷ B²).
    """

    def __init__(self, model: nn.Module, metric_loss: nn.Module, *, diversity_weight: float = 1.0,
                 metric_weight: float | tuple[float, float] = 1.0,
                 consistency_weight: float = 0.0, consistency_reduction: str = "sum") -> None:
        super().__init__()
        if not isinstance(model, (CodedResidualTransform, TwoBranchCRT)):
            raise ValueError(f"model must be a CodedResidualTransform or TwoBranchCRT, got "
                             f"{type(model).__name__}")
        n_branches = 2 if isinstance(model, TwoBranchCRT) else 1
        weights = (tuple(metric_weight) if isinstance(metric_weight, (tuple, list))
                   else (metric_weight,) * n_branches)
        if len(weights) != n_branches:
            raise ValueError(f"metric_weight must be a number or one number per branch "
                             f"({n_branches}), got {metric_weight!r}")
        for value, name in ((diversity_weight, "diversity_weight"),
                            *((w, "metric_weight") for w in weights),
                            (consistency_weight, "consistency_weight")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if consistency_reduction not in CONSISTENCY_REDUCTIONS:
            raise ValueError(f"consistency_reduction must be one of {CONSISTENCY_REDUCTIONS}, "
                             f"got {consistency_reduction!r}")
        self.__dict__["_model"] = model  # not a submodule
        self.metric_loss = metric_loss
        self.diversity_weight = float(diversity_weight)
        self.metric_weights = tuple(float(w) for w in weights)
        self.consistency_weight = float(consistency_weight)
        self.consistency_reduction = consistency_reduction
        self.last: dict[str, float] = {}

    @property
    def metric_weight(self) -> float:
        """λ₁ of branch 1."""
        return self.metric_weights[0]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` from the model in training mode (``(B, D₁ + D₂)`` for
        two branches), labels ``(B,)``. Returns: scalar loss."""
        model = self._model
        if isinstance(model, TwoBranchCRT):
            fs = model.split(embeddings)
            branches = model.distinct_branches
            con = cross_branch_consistency_loss(*fs, reduction=self.consistency_reduction)  # eq. (5)
        else:
            fs, branches, con = [embeddings], [model], embeddings.sum() * 0.0
        metrics = [self.metric_loss(f, labels) for f in fs]
        metric = sum(w * m for w, m in zip(self.metric_weights, metrics, strict=True))
        div = sum(prototype_diversity_loss(b.prototypes) for b in branches)  # eq. (3)
        self.last = {"div": float(div.detach()), "metric": float(metric.detach()),
                     "con": float(con.detach())}
        return self.diversity_weight * div + metric + self.consistency_weight * con

    def extra_repr(self) -> str:
        return (f"model={type(self._model).__name__}, diversity_weight={self.diversity_weight}, "
                f"metric_weights={self.metric_weights}, consistency_weight={self.consistency_weight}, "
                f"consistency_reduction={self.consistency_reduction!r}")


# ----------------------------------------------------------------------------- the notebook's set


