"""Metric-learning losses: multi-similarity, proxy-anchor, triplet and their hybrid.

Every loss is an ``nn.Module`` called as ``loss(embeddings (B, D), labels (B,)) -> scalar``.
Embeddings are L2-normalised inside the loss. Each one matches pytorch-metric-learning
(PML) 2.x to float precision — the tests check it — and the reduction it uses is stated
below, because the papers leave it open. Notation: x̂_i = x_i/‖x_i‖,
S_ik = x̂_i·x̂_k, P_i = {k ≠ i : y_k = y_i}, N_i = {k : y_k ≠ y_i}.

* Multi-similarity loss — Wang et al., "Multi-Similarity Loss with General Pair Weighting
  for Deep Metric Learning", CVPR 2019 (the L_MS equation, without the pair-mining step)::

      L_MS = 1/B Σ_i [ 1/α log(1 + Σ_{k∈P_i} e^{−α(S_ik − λ)})
                      + 1/β log(1 + Σ_{k∈N_i} e^{β(S_ik − λ)}) ]              (MS)

  Reduction: mean over **all** B anchors, including anchors with zero loss or without
  positives (PML's default ``MeanReducer`` on per-anchor "element" losses; also the 1/m
  of the paper).

* Proxy-anchor loss — Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020,
  with one learnable proxy p per class, s(x, p) the cosine similarity, P⁺ the proxies with
  at least one positive in the batch, X_p⁺ / X_p⁻ the batch items of / not of p's class::

      L_PA = 1/|P⁺| Σ_{p∈P⁺} log(1 + Σ_{x∈X_p⁺} e^{−α(s(x,p) − δ)})
           + 1/|P|  Σ_{p∈P}  log(1 + Σ_{x∈X_p⁻} e^{α(s(x,p) + δ)})              (PA)

  Reduction: exactly the paper's (and PML's ``DivisorReducer``): positive term divided by
  the number of classes present in the batch, negative term by ``num_classes``.

* Triplet margin loss — Schroff et al., "FaceNet", CVPR 2015; batch-hard mining from
  Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017; with
  d the Euclidean distance between L2-normalised embeddings (PML's default ``LpDistance``)::

      ℓ(a, p, n) = [d(a, p) − d(a, n) + m]_+                                  (TRI)
      batch hard: p = argmax_{k∈P_a} d(a, k), n = argmin_{k∈N_a} d(a, k)      (BH)

  Reduction: mean over the triplets with **positive** loss (PML's ``AvgNonZeroReducer``);
  0 (still attached to the graph) when no triplet violates the margin. Anchors without a
  positive or a negative in the batch form no triplet.

* Hybrid loss — Ebrahimpour et al., "Multi-Head Deep Metric Learning Using Global and
  Local Representations", eq. (7)::

      L = L_MS + λ L_PA,   λ = 0.03                                            (7)

  The paper trains the proxies with a learning rate of 1e-2 against 1e-4 for the network;
  :func:`parameter_groups` builds those optimiser groups. :func:`make_loss` builds the
  paper's three losses (MS, PA, hybrid) by name with its symbols (Figs. 1, 7).

* Deep supervision — Chen et al. (CSALR), eq. (18): ``L_sum = L_F + λ Σ_i CE(logits_i, y)``
  (:class:`DeepSupervisedLoss`, fed a :class:`SupervisedEmbedding` by
  :class:`dmlviz.heads.PooledEmbedder` in training mode).

Bad input is refused with a ``ValueError``: embeddings with NaN or ±inf rows (the message
counts them), and for the multi-similarity and triplet losses a batch of a single class
(no negative pair, so the value would say nothing). Proxy-anchor accepts one class: its
negatives are the other classes' proxies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_embeddings

__all__ = [
    "DeepSupervisedLoss",
    "EQ6_READINGS",
    "HybridLoss",
    "LOSSES",
    "MultiSimilarityLoss",
    "ProxyAnchorLoss",
    "SupervisedEmbedding",
    "TripletLoss",
    "make_loss",
    "parameter_groups",
]

TRIPLET_MINING = ("batch_hard", "all")


def _check_number(value, name: str, *, positive: bool = False, non_negative: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """log(1 + Σ_{mask} e^x) along ``dim``, stably; 0 where the mask is empty."""
    x = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([x, zeros], dim=dim), dim=dim)  # the "1 +" is e^0


def _prepare(embeddings: torch.Tensor, labels: torch.Tensor,
             pairwise: str | None = None) -> torch.Tensor:
    """Checked int64 labels on the embeddings' device. ``pairwise`` (the loss's name):
    refuse a batch of a single class, which has no negative pair (the loss would return a
    number that says nothing about the metric)."""
    check_embeddings(embeddings, labels)  # shapes, dtypes, finite values
    labels = labels.to(device=embeddings.device, dtype=torch.long)  # one_hot needs int64
    if pairwise is not None and bool((labels == labels[0]).all()):
        raise ValueError(f"labels: the batch holds a single class ({int(labels[0])}) in "
                         f"{len(labels)} samples, so {pairwise} has no negative pair; use "
                         "batches of at least 2 classes (PKSampler p >= 2)")
    return labels


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity loss (Wang et al., CVPR 2019), eq. (MS) of the module docstring.

    No pair mining: every positive and negative pair is weighted (equal to PML's
    ``MultiSimilarityLoss(alpha, beta, base)`` without a miner). Mean over all B anchors.

    Args:
        alpha: scale α of the positive pairs (> 0).
        beta: scale β of the negative pairs (> 0).
        base: similarity margin λ (σ in Ebrahimpour et al.'s eq. 6).
        negative_base: the margin of the negative term, ``e^{β(S_ik − negative_base)}``;
            ``None`` (default) uses ``base``, as in Wang et al. and PML. Ebrahimpour et al.
            print eq. (6) with ``e^{β(S_ik + σ)}``: that literal reading is
            ``negative_base=-base``.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 negative_base: float | None = None) -> None:
        super().__init__()
        self.alpha = _check_number(alpha, "alpha", positive=True)
        self.beta = _check_number(beta, "beta", positive=True)
        self.base = _check_number(base, "base")
        self.negative_base = (None if negative_base is None
                              else _check_number(negative_base, "negative_base"))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` float; labels ``(B,)`` int, at least 2 classes.
        Returns: scalar loss."""
        labels = _prepare(embeddings, labels, "MultiSimilarityLoss")
        x = F.normalize(embeddings, dim=1)  # (B, D)
        sim = x @ x.T  # (B, B) S_ik
        same = labels[:, None] == labels[None, :]  # (B, B)
        eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
        pos_mask, neg_mask = same & ~eye, ~same
        pos = _log1p_sum_exp(-self.alpha * (sim - self.base), pos_mask, dim=1) / self.alpha
        neg_base = self.base if self.negative_base is None else self.negative_base
        neg = _log1p_sum_exp(self.beta * (sim - neg_base), neg_mask, dim=1) / self.beta
        return (pos + neg).mean()  # eq. (MS): 1/B Σ_i over all anchors

    def extra_repr(self) -> str:
        extra = "" if self.negative_base is None else f", negative_base={self.negative_base}"
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}{extra}"


class ProxyAnchorLoss(nn.Module):
    """Proxy-anchor loss (Kim et al., CVPR 2020), eq. (PA) of the module docstring.

    Args:
        num_classes: number of training classes C (labels must lie in [0, C)).
        embedding_dim: embedding dimension D.
        margin: margin δ.
        alpha: scale α.

    Attributes:
        proxies: ``(C, D)`` learnable ``nn.Parameter``, initialised like PML and the
            authors' code (``kaiming_normal_(mode="fan_out")``). Give it its own, larger
            learning rate with :func:`parameter_groups`.
    """

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.1,
                 alpha: float = 32.0) -> None:
        super().__init__()
        for value, name in ((num_classes, "num_classes"), (embedding_dim, "embedding_dim")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.margin = _check_number(margin, "margin")
        self.alpha = _check_number(alpha, "alpha", positive=True)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))  # (C, D)
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` float; labels ``(B,)`` int in [0, C). Returns: scalar."""
        labels = _prepare(embeddings, labels)
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings must have D = embedding_dim = {self.embedding_dim} "
                             f"columns, got shape {tuple(embeddings.shape)}")
        if self.proxies.device != embeddings.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the proxies are on "
                             f"{self.proxies.device}; move the loss with .to(device)")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {self.num_classes}), "
                             f"got values in [{low}, {high}]")
        x = F.normalize(embeddings, dim=1)  # (B, D)
        p = F.normalize(self.proxies.to(embeddings.dtype), dim=1)  # (C, D)
        cos = x @ p.T  # (B, C) s(x, p)
        pos_mask = F.one_hot(labels, self.num_classes).bool()  # (B, C) x ∈ X_p⁺
        pos = _log1p_sum_exp(-self.alpha * (cos - self.margin), pos_mask, dim=0)  # (C,)
        neg = _log1p_sum_exp(self.alpha * (cos + self.margin), ~pos_mask, dim=0)  # (C,)
        n_with_pos = pos_mask.any(dim=0).sum()  # |P⁺| ≥ 1
        return pos.sum() / n_with_pos + neg.sum() / self.num_classes  # eq. (PA)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
                f"margin={self.margin}, alpha={self.alpha}")


class TripletLoss(nn.Module):
    """Triplet margin loss, eq. (TRI), with batch-hard (BH) or all-triplet mining.

    ``mining="batch_hard"`` equals PML's ``TripletMarginLoss(margin)`` fed by
    ``BatchHardMiner()``; ``mining="all"`` (every valid (a, p, n) triplet; O(B³) memory)
    equals ``TripletMarginLoss(margin)`` without a miner. Distances are Euclidean between
    L2-normalised embeddings; mean over the triplets with positive loss.

    Args:
        margin: margin m (≥ 0).
        mining: one of ``"batch_hard"``, ``"all"``.
    """

    def __init__(self, margin: float = 0.2, mining: str = "batch_hard") -> None:
        super().__init__()
        self.margin = _check_number(margin, "margin", non_negative=True)
        if mining not in TRIPLET_MINING:
            raise ValueError(f"mining must be one of {TRIPLET_MINING}, got {mining!r}")
        self.mining = mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` float; labels ``(B,)`` int, at least 2 classes.
        Returns: scalar loss."""
        labels = _prepare(embeddings, labels, "TripletLoss")
        x = F.normalize(embeddings, dim=1)  # (B, D)
        dist = torch.cdist(x, x)  # (B, B) d(a, k), as PML's LpDistance
        same = labels[:, None] == labels[None, :]  # (B, B)
        eye = torch.eye(len(labels), dtype=torch.bool, device=dist.device)
        pos_mask, neg_mask = same & ~eye, ~same
        if self.mining == "batch_hard":
            hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)  # (B,) eq. (BH)
            hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)  # (B,) eq. (BH)
            has_triplet = pos_mask.any(dim=1) & neg_mask.any(dim=1)
            losses = F.relu(hardest_pos - hardest_neg + self.margin)[has_triplet]  # eq. (TRI)
        else:
            valid = pos_mask[:, :, None] & neg_mask[:, None, :]  # (B, B, B) [a, p, n]
            losses = F.relu(dist[:, :, None] - dist[:, None, :] + self.margin)[valid]  # (TRI)
        positive = losses[losses > 0]
        if positive.numel() == 0:
            return (embeddings * 0).sum()  # zero, but still part of the graph
        return positive.mean()  # mean over triplets with positive loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"


class HybridLoss(nn.Module):
    """Pairwise + weighted proxy loss, eq. (7) of Ebrahimpour et al.: L_MS + λ L_PA.

    Both parts are registered submodules, so ``hybrid.parameters()`` includes the proxies.

    Args:
        pairwise: the pairwise loss, e.g. :class:`MultiSimilarityLoss`.
        proxy: the proxy loss, e.g. :class:`ProxyAnchorLoss`.
        weight: λ ≥ 0 (paper: 0.03).
    """

    def __init__(self, pairwise: nn.Module, proxy: nn.Module, weight: float = 0.03) -> None:
        super().__init__()
        for value, name in ((pairwise, "pairwise"), (proxy, "proxy")):
            if not isinstance(value, nn.Module):
                raise ValueError(f"{name} must be an nn.Module loss called as "
                                 f"loss(embeddings, labels), got {type(value).__name__}")
        self.pairwise = pairwise
        self.proxy = proxy
        self.weight = _check_number(weight, "weight", non_negative=True)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings ``(B, D)`` float; labels ``(B,)`` int. Returns: scalar loss."""
        pairwise = self.pairwise(embeddings, labels)
        return pairwise + self.weight * self.proxy(embeddings, labels)  # eq. (7)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def parameter_groups(model: nn.Module, loss: nn.Module, lr: float = 1e-4,
                     proxy_lr: float = 1e-2) -> list[dict]:
    """Optimiser parameter groups giving the loss's parameters (proxies) their own rate.

    Ebrahimpour et al. (and Kim et al. for Proxy-Anchor) train the proxies 100× faster
    than the network: 1e-2 vs 1e-4. Use as ``torch.optim.AdamW(parameter_groups(model,
    loss))``. Groups with no trainable parameters (e.g. a multi-similarity loss) are left
    out; frozen parameters (``requires_grad=False``) are skipped.

    Args:
        model: the embedding network.
        loss: the loss module (its parameters, e.g. ``proxies``, get ``proxy_lr``).
        lr: learning rate of the network (> 0).
        proxy_lr: learning rate of the loss's parameters (> 0).

    Returns:
        ``[{"params": [...], "lr": lr, "name": "model"}, {"params": [...], "lr": proxy_lr,
        "name": "loss"}]`` without the empty ones.

    Raises:
        ValueError: non-modules, non-positive rates, a parameter shared by model and loss,
            or no trainable parameter at all.
    """
    for value, name in ((model, "model"), (loss, "loss")):
        if not isinstance(value, nn.Module):
            raise ValueError(f"{name} must be an nn.Module, got {type(value).__name__}")
    lr = _check_number(lr, "lr", positive=True)
    proxy_lr = _check_number(proxy_lr, "proxy_lr", positive=True)
    model_params = [p for p in model.parameters() if p.requires_grad]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    shared = {id(p) for p in model_params} & {id(p) for p in loss_params}
    if shared:
        raise ValueError(f"model and loss share {len(shared)} parameter(s); an optimiser "
                         "must see each parameter in one group only")
    groups = [{"params": params, "lr": rate, "name": name}
              for params, rate, name in ((model_params, lr, "model"),
                                         (loss_params, proxy_lr, "loss")) if params]
    if not groups:
        raise ValueError("model and loss have no trainable parameters")
    return groups


# ----------------------------------------------------------------------------- deep supervision (CSALR, eq. 18)

class SupervisedEmbedding(NamedTuple):
    """What :class:`dmlviz.heads.PooledEmbedder` returns in training mode with deep supervision.

    Attributes:
        embeddings: ``(B, D)``.
        logits: ``(B, num_classes)`` of the deep-supervision head, or a tuple of such
            tensors, one per deep-supervision branch (one per attention module).
    """

    embeddings: torch.Tensor
    logits: torch.Tensor



class DeepSupervisedLoss(nn.Module):
    """``L_sum = L_F + λ Σ_i CE(logits_i, labels)`` (eq. 18), one term per branch.

    Called as ``loss(output, labels)`` where ``output`` is a :class:`SupervisedEmbedding`
    (training with deep supervision) or plain ``(B, D)`` embeddings (then only the metric
    loss), so it plugs into :func:`dmlviz.train.fit`.

    Args:
        metric: the metric loss, ``metric(embeddings, labels)``.
        weight: λ ≥ 0.
    """

    def __init__(self, metric: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(metric, nn.Module):
            raise ValueError(f"metric must be an nn.Module loss, got {type(metric).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"weight (λ) must be a number >= 0, got {weight!r}")
        self.metric, self.weight = metric, float(weight)

    def forward(self, output, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(output, SupervisedEmbedding):
            branches = output.logits if isinstance(output.logits, (tuple, list)) else (output.logits,)
            ds = sum(F.cross_entropy(logits, labels) for logits in branches)  # Σ_i L_DS_i
            return self.metric(output.embeddings, labels) + self.weight * ds  # eq. (18)
        return self.metric(output, labels)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"



# ----------------------------------------------------------------------------- the SOA paper's three losses by name

LOSSES = ("ms", "proxy_anchor", "hybrid")



EQ6_READINGS = ("standard", "literal")



def make_loss(name: str, num_classes: int, embedding_dim: int, weight: float = 0.03, *,
              gamma: float = 2.0, beta: float = 50.0, sigma: float = 0.5,
              eq6: str = "standard", alpha: float = 32.0, delta: float = 0.1) -> nn.Module:
    """The three losses the paper compares (Figs. 1, 7), by name, with the paper's symbols.

    Args:
        name: ``"ms"`` (multi-similarity, eq. 6), ``"proxy_anchor"`` (eq. 5) or ``"hybrid"``
            (eq. 7, ``L_MS + λ L_PA``).
        num_classes: training classes ``C`` (one proxy each).
        embedding_dim: ``D``.
        weight: λ of the hybrid loss (paper: 0.03).
        gamma, beta: γ and β of eq. (6) (paper: 2, 50).
        sigma: σ of eq. (6), the MS ``base`` (paper: 1; default 0.5, Wang et al.'s and PML's
            default — notebook 03 shows both).
        eq6: ``"standard"``: ``e^{β(S_ik − σ)}`` in the negative term, as in Wang et al.;
            ``"literal"``: ``e^{β(S_ik + σ)}``, as eq. (6) is printed.
        alpha, delta: α and δ of eq. (5) (paper: 32, 0.1).
    """
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    if eq6 not in EQ6_READINGS:
        raise ValueError(f"eq6 must be one of {EQ6_READINGS}, got {eq6!r}")

    def ms() -> nn.Module:
        return MultiSimilarityLoss(gamma, beta, sigma,
                                   negative_base=-sigma if eq6 == "literal" else None)  # eq. (6)

    def pa() -> nn.Module:
        return ProxyAnchorLoss(num_classes, embedding_dim, margin=delta, alpha=alpha)  # eq. (5)

    if name == "ms":
        return ms()
    if name == "proxy_anchor":
        return pa()
    return HybridLoss(ms(), pa(), weight=weight)  # eq. (7)

