"""Retrieval and embedding-space metrics for deep metric learning (DML).

Everything here works on a matrix of embeddings ``(N, D)`` and integer class labels
``(N,)``; all similarities are cosine similarities of L2-normalised embeddings.

Papers and the equations implemented (written out so a line can cite them):

* **Recall@K** — the standard DML protocol (Oh Song et al., CVPR 2016; Musgrave et al.,
  "A Metric Learning Reality Check", ECCV 2020, Sec. 3): leave-one-out on the test set;
  a query scores 1 if at least one of its K nearest neighbours shares its class::

      Recall@K = 1/|Q| Σ_q 1[∃ i ≤ K : y(n_q,i) = y_q]                       (R@K)

* **R-precision** and **MAP@R** (Musgrave et al. 2020, Sec. 3.2), with R = number of
  *other* items of the query's class and rel(i) = 1 if the i-th neighbour is relevant::

      R-precision = 1/|Q| Σ_q (1/R_q) Σ_{i=1}^{R_q} rel_q(i)                 (RP)
      MAP@R       = 1/|Q| Σ_q (1/R_q) Σ_{i=1}^{R_q} P_q(i) · rel_q(i),
                    P_q(i) = (1/i) Σ_{j=1}^{i} rel_q(j)                       (MAP@R)

* **NMI** — k-means (k = number of classes) on L2-normalised embeddings, scored with
  sklearn's ``normalized_mutual_info_score`` against the labels.
* **Embedding-space density** π_ratio (Roth et al., "Revisiting Training Strategies and
  Generalization Performance in Deep Metric Learning", ICML 2020, Sec. 5), with the cosine
  distance d(a, b) = 1 − cos(a, b) and μ_c the L2-normalised mean of class c::

      π_intra = 1/|C'| Σ_{c∈C'} 1/(n_c(n_c−1)) Σ_{i≠j∈c} d(φ_i, φ_j)          (π_intra)
      π_inter = 1/(|C|(|C|−1)) Σ_{c≠c'} d(μ_c, μ_c')                         (π_inter)
      π_ratio = π_intra / π_inter                                             (π_ratio)

  A **larger** π_ratio means the classes are spread wider relative to the distance between
  them (less compact, less separated clusters); Roth et al. call the ratio "density" and find
  that a larger one (less compression of the training classes) goes with better
  generalisation. On *unseen* classes a model that separates them better has a smaller ratio
  by construction, so there the ratio mostly measures separation.

* **Spectral decay** ρ (Roth et al. 2020, Sec. 5): s = singular values of the (uncentred,
  row-normalised) embedding matrix sorted descending, optionally without the largest
  (``drop_largest``), S = s / Σ s, U uniform on as many entries::

      ρ = KL(U ‖ S) = Σ_i U_i log(U_i / S_i)                                  (ρ)

  A **larger** ρ means a more peaked spectrum (fewer directions carry the embedding); ρ = 0
  for a flat one. For the same data ρ also grows with the number of singular values
  min(N, D), so only compare embeddings of the same D (:func:`compare_spectral_decay` warns).

Singleton classes (R = 0) cannot be retrieved: such queries are left out of Recall@K,
R-precision and MAP@R (as pytorch-metric-learning's ``AccuracyCalculator`` does for its
"lone" queries) and out of π_intra; they still count as samples for NMI and π_inter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dmlviz.checks import as_tensor, check_embeddings, check_int

__all__ = [
    "compare_spectral_decay",
    "embedding_space_density",
    "epochs_to_converge",
    "knn",
    "retrieval_metrics",
    "spectral_decay",
]


def knn(
    queries: torch.Tensor,
    reference: torch.Tensor | None = None,
    k: int = 10,
    exclude_self: bool = True,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours by cosine similarity, computed in chunks of queries.

    Runs in torch on the device and dtype of ``queries`` (CPU or CUDA); only a
    ``(chunk_size, R)`` similarity block is held at a time.

    Args:
        queries: ``(N, D)`` embeddings (need not be normalised).
        reference: ``(R, D)`` embeddings to search, or None to search ``queries`` itself.
        k: neighbours per query, 1 ≤ k ≤ number of searchable references (R, or N − 1
            when searching ``queries`` itself with ``exclude_self``).
        exclude_self: when searching ``queries`` itself (``reference`` is None or the very
            same tensor object), drop each query's own row — by index, not by value, so
            duplicate embeddings still count as neighbours. Ignored for a separate reference.
        chunk_size: queries per similarity block (≥ 1).

    Returns:
        ``(similarities, indices)``, both ``(N, k)``: cosine similarities sorted in
        descending order and the matching row indices into the reference (long). Ties are
        broken by ``torch.topk`` (unspecified order).

    Raises:
        ValueError: wrong rank/dtype, NaN or ±inf values (counted by row), dimension, dtype
            or device mismatch, k out of range, chunk_size < 1.
    """
    check_embeddings(queries, name="queries")
    self_search = reference is None or reference is queries
    if not self_search:
        check_embeddings(reference, name="reference")
        if reference.shape[1] != queries.shape[1]:
            raise ValueError(f"queries and reference must have the same dimension D: "
                             f"queries {tuple(queries.shape)}, reference {tuple(reference.shape)}")
        if reference.device != queries.device:
            raise ValueError(f"queries and reference must be on the same device: "
                             f"queries on {queries.device}, reference on {reference.device}")
        if reference.dtype != queries.dtype:
            raise ValueError(f"queries and reference must have the same dtype: queries "
                             f"{queries.dtype}, reference {reference.dtype}; convert one, e.g. "
                             f"reference.to(queries.dtype)")
    drop_self = self_search and bool(exclude_self)
    n_ref = queries.shape[0] if self_search else reference.shape[0]
    available = n_ref - 1 if drop_self else n_ref
    if available < 1:
        raise ValueError(f"k: no references to search ({n_ref} reference rows"
                         f"{', minus the query itself' if drop_self else ''})")
    k = check_int(k, "k", 1, available)
    chunk_size = check_int(chunk_size, "chunk_size", 1)

    q = F.normalize(queries, dim=1)  # (N, D)
    r = q if self_search else F.normalize(reference, dim=1)  # (R, D)
    n = q.shape[0]
    sims = torch.empty(n, k, dtype=q.dtype, device=q.device)  # (N, K)
    idx = torch.empty(n, k, dtype=torch.long, device=q.device)  # (N, K)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = q[start:stop] @ r.T  # (c, R) cosine similarity
        if drop_self:
            rows = torch.arange(stop - start, device=q.device)
            block[rows, rows + start] = float("-inf")  # exclude each query by index
        sims[start:stop], idx[start:stop] = block.topk(k, dim=1, largest=True, sorted=True)
    return sims, idx


def _check_ks(ks, n: int) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Sequence) or isinstance(ks, str) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty sequence of integers, got {ks!r}")
    return tuple(check_int(k, f"ks (entry {k!r}; the number of other samples is {n - 1})",
                            1, n - 1) for k in ks)


@torch.no_grad()
def retrieval_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    nmi: bool = True,
    seed: int = 0,
    n_init: int = 10,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K, MAP@R, R-precision and NMI on a labelled test set (leave-one-out).

    Each sample is used in turn as the query and searched against all the *other*
    samples (cosine similarity), the standard DML protocol.

    Args:
        embeddings: ``(N, D)`` embeddings (tensor or NumPy array; any device).
        labels: ``(N,)`` integer class labels.
        ks: the K of Recall@K, each in [1, N − 1].
        nmi: compute NMI (k-means) too; set False to skip the clustering cost.
        seed: ``random_state`` of sklearn's KMeans, so NMI is repeatable.
        n_init: k-means restarts (fixed, so NMI is repeatable).
        chunk_size: queries per similarity block in :func:`knn`.

    Returns:
        ``{"recall@1": …, "recall@2": …, …, "map@r": …, "r_precision": …, "nmi": …}``,
        python floats in [0, 1]. Queries whose class has a single sample (R = 0) are left
        out of Recall@K, MAP@R and R-precision (like pytorch-metric-learning); NMI uses
        every sample.

    Raises:
        ValueError: wrong ranks/dtypes, NaN or ±inf embeddings (counted by row; one NaN row
            would be every query's nearest neighbour), mismatched lengths, fewer than two
            classes, no class with two samples, or a K outside [1, N − 1].
    """
    embeddings = as_tensor(embeddings, "embeddings")
    labels = as_tensor(labels, "labels")
    check_embeddings(embeddings, labels)
    labels = labels.to(embeddings.device)
    n = embeddings.shape[0]
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels: retrieval needs at least 2 classes, got {len(classes)} "
                         f"class ({classes.tolist()}) in {n} samples")
    r_per_query = counts[inverse] - 1  # (N,) R = other samples of the query's class
    valid = r_per_query > 0  # (N,) queries with at least one relevant item
    if not bool(valid.any()):
        raise ValueError("labels: every class has a single sample, so no query has a "
                         "relevant item to retrieve; need a class with >= 2 samples")
    ks = _check_ks(ks, n)

    k_max = max(max(ks), int(r_per_query.max()))
    _, idx = knn(embeddings, None, k=k_max, exclude_self=True, chunk_size=chunk_size)  # (N, K)
    match = (labels[idx] == labels[:, None])[valid]  # (Q, K) rel(i)
    r_q = r_per_query[valid].to(torch.float64)  # (Q,)

    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(match[:, :k].any(dim=1).double().mean())  # eq. (R@K)
    within_r = torch.arange(k_max, device=idx.device)[None, :] < r_q[:, None]  # (Q, K) i ≤ R
    rel = (match & within_r).double()  # (Q, K)
    precision_at_i = rel.cumsum(dim=1) / torch.arange(1, k_max + 1, device=idx.device)  # P(i)
    out["map@r"] = float(((precision_at_i * rel).sum(dim=1) / r_q).mean())  # eq. (MAP@R)
    out["r_precision"] = float((rel.sum(dim=1) / r_q).mean())  # eq. (RP)
    if nmi:
        out["nmi"] = _nmi(embeddings, labels, len(classes), seed=seed, n_init=n_init)
    return out


def _nmi(embeddings: torch.Tensor, labels: torch.Tensor, n_clusters: int, *,
         seed: int, n_init: int) -> float:
    """k-means (k = number of classes) on L2-normalised embeddings, NMI against labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = F.normalize(embeddings.detach().double(), dim=1).cpu().numpy()  # (N, D)
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(labels.cpu().numpy(), clusters))


@torch.no_grad()
def embedding_space_density(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    return_parts: bool = False,
) -> float | dict[str, float]:
    """Embedding-space density π_ratio of Roth et al. (ICML 2020).

    Follows the authors' reference code (``metrics/dists.py`` of
    Revisiting_Deep_Metric_Learning_PyTorch): cosine distance 1 − cos; π_intra is the mean
    over classes of the mean distance over ordered pairs i ≠ j within the class; π_inter is
    the mean distance over pairs of distinct classes between the L2-normalised class means.
    Computed in float64 in O(N·D) memory (via sums of normalised vectors, no N×N matrix).

    Choices where the reference code is silent or odd: embeddings are L2-normalised first
    (cosine distance is scale-free, so this only fixes what the class mean averages);
    classes with one sample are left out of π_intra (the reference code patches their NaN);
    π_inter is clipped below at 1e-8 before dividing, as in the reference code.

    Args:
        embeddings: ``(N, D)`` embeddings (tensor or NumPy array).
        labels: ``(N,)`` integer class labels; at least 2 classes, one with ≥ 2 samples.
        return_parts: also return π_intra and π_inter.

    Returns:
        π_ratio ≥ 0 as a float, or ``{"pi_intra", "pi_inter", "pi_ratio"}``. **Larger** means
        the classes are wider relative to the distance between their means (less compact or
        less separated); 0 when every class collapses to one point. Roth et al. (and the CRT
        paper, Table 1 "↑") call a larger ratio a higher "density" and link it, measured on the
        training classes, to better generalisation; on unseen classes a better-separating
        model has a smaller ratio by construction.

    Raises:
        ValueError: wrong ranks/dtypes, mismatched lengths, < 2 classes, no class with
            ≥ 2 samples.
    """
    embeddings = as_tensor(embeddings, "embeddings")
    labels = as_tensor(labels, "labels")
    check_embeddings(embeddings, labels)
    labels = labels.to(embeddings.device)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels: embedding_space_density needs at least 2 classes, "
                         f"got {len(classes)}")
    if not bool((counts > 1).any()):
        raise ValueError("labels: embedding_space_density needs a class with >= 2 samples "
                         "for the intra-class distance")
    x = F.normalize(embeddings.double(), dim=1)  # (N, D)
    n_cls = len(classes)
    sums = torch.zeros(n_cls, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, inverse, x)  # (C, D) Σ_{i∈c} φ_i
    sq_norms = torch.zeros(n_cls, dtype=x.dtype, device=x.device)
    sq_norms.index_add_(0, inverse, (x * x).sum(dim=1))  # (C,) Σ_{i∈c} ‖φ_i‖²
    multi = counts > 1
    n_c = counts[multi].double()
    off_diag_cos = (sums[multi] * sums[multi]).sum(dim=1) - sq_norms[multi]  # Σ_{i≠j} cos
    pi_intra = (1.0 - off_diag_cos / (n_c * (n_c - 1))).mean()  # eq. (π_intra)
    mu = F.normalize(sums, dim=1)  # (C, D) normalised class means
    mu_sum = mu.sum(dim=0)
    cross_cos = mu_sum @ mu_sum - (mu * mu).sum()  # Σ_{c≠c'} cos(μ_c, μ_c')
    pi_inter = 1.0 - cross_cos / (n_cls * (n_cls - 1))  # eq. (π_inter)
    pi_ratio = pi_intra / pi_inter.clamp_min(1e-8)  # eq. (π_ratio)
    if return_parts:
        return {"pi_intra": float(pi_intra), "pi_inter": float(pi_inter),
                "pi_ratio": float(pi_ratio)}
    return float(pi_ratio)


@torch.no_grad()
def spectral_decay(
    embeddings: torch.Tensor,
    *,
    drop_largest: bool | int,
    normalize: bool = True,
) -> float:
    """Spectral decay ρ = KL(U ‖ S) of Roth et al. (ICML 2020).

    Follows the authors' reference code (``metrics/rho_spectrum.py``): the singular values of
    the embedding matrix, **not centred**, normalised to sum 1, compared with the uniform
    distribution on as many entries, in the direction KL(uniform ‖ spectrum). Their mode
    ``@1`` keeps all ``min(N, D)`` values (``drop_largest=False``); the variant they plot,
    ``@2``, drops the largest first (``drop_largest=True``) — for uncentred unit-length
    embeddings the largest mostly measures the mean direction. Which one is meant must be
    said (no default). Computed in float64.

    Args:
        embeddings: ``(N, D)`` embeddings (tensor or NumPy array).
        drop_largest: ``True`` drops the largest singular value (Roth et al.'s ``@2``),
            ``False`` keeps all (``@1``); an int ``k`` drops the ``k`` largest (``@k+1``).
        normalize: L2-normalise each row first (DML embeddings live on the unit sphere, as
            in Roth et al.'s pipeline).

    Returns:
        ρ ≥ 0 as a float; ``inf`` if a kept singular value is exactly 0. **Larger** = a more
        peaked spectrum (the embedding uses fewer directions); 0 = all kept singular values
        equal. Roth et al. (and the CRT paper, Table 2 "↓") link a smaller ρ to better
        generalisation. ρ grows with ``min(N, D)`` for the same data: compare equal D only.

    Raises:
        ValueError: wrong rank/dtype, or ``drop_largest`` leaves fewer than 2 values.
    """
    embeddings = as_tensor(embeddings, "embeddings")
    check_embeddings(embeddings)
    n_values = min(embeddings.shape)
    exclude_largest = check_int(
        int(drop_largest) if isinstance(drop_largest, bool) else drop_largest,
        f"drop_largest (the matrix has {n_values} singular values; True = 1)", 0, n_values - 2)
    x = embeddings.double()
    if normalize:
        x = F.normalize(x, dim=1)
    s = torch.linalg.svdvals(x)[exclude_largest:]  # (min(N, D) − e,) descending
    spectrum = s / s.sum()  # S
    n = spectrum.numel()
    if bool((spectrum <= 0).any()):
        return float("inf")
    return float(-np.log(n) - torch.log(spectrum).mean())  # eq. (ρ): Σ (1/n) log((1/n)/S_i)


def compare_spectral_decay(embeddings, *, drop_largest: bool | int,
                           normalize: bool = True) -> dict[str, float]:
    """:func:`spectral_decay` of several embeddings, warning when their D differ.

    ρ grows with the number of singular values even for the same isotropic data, so ρ of a
    64-d and a 192-d embedding are not comparable; a ``UserWarning`` names the dimensions.

    Args:
        embeddings: ``{name: (N, D) embeddings}``.
        drop_largest: as for :func:`spectral_decay` (required).
        normalize: as for :func:`spectral_decay`.

    Returns:
        ``{name: ρ}``.
    """
    import warnings

    if not embeddings:
        raise ValueError("embeddings must map at least one name to an (N, D) embedding")
    tensors = {name: as_tensor(e, f"embeddings[{name!r}]") for name, e in embeddings.items()}
    dims = {name: int(e.shape[-1]) for name, e in tensors.items()}
    if len(set(dims.values())) > 1:
        warnings.warn(f"compare_spectral_decay: embeddings of different dimension D {dims}; "
                      f"ρ grows with min(N, D), so their ρ are not comparable", UserWarning,
                      stacklevel=2)
    return {name: spectral_decay(e, drop_largest=drop_largest, normalize=normalize)
            for name, e in tensors.items()}


@torch.no_grad()
def recall_hits(embeddings: torch.Tensor, labels: torch.Tensor, k: int = 1, *,
                chunk_size: int = 1024) -> torch.Tensor:
    """Per-query Recall@K hits (leave-one-out), for paired tests over queries.

    ``recall_hits(e, y, k).mean()`` equals ``retrieval_metrics(e, y)[f"recall@{k}"]``; the
    per-query form lets :func:`dmlviz.claims.evaluate` resample queries (pass two methods'
    hits on the same test set as ``hits_a`` / ``hits_b``).

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class labels.
        k: the K of Recall@K, in [1, N − 1].
        chunk_size: queries per similarity block in :func:`knn`.

    Returns:
        ``(Q,)`` float64 tensor of 0/1 on CPU, one per query whose class has another sample
        (the queries :func:`retrieval_metrics` averages over), in sample order.

    Raises:
        ValueError: as :func:`retrieval_metrics` (NaN or ±inf rows are refused).
    """
    embeddings = as_tensor(embeddings, "embeddings")
    labels = as_tensor(labels, "labels")
    check_embeddings(embeddings, labels)
    labels = labels.to(embeddings.device)
    k = _check_ks((k,), embeddings.shape[0])[0]
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    valid = counts[inverse] > 1  # (N,)
    _, idx = knn(embeddings, None, k=k, exclude_self=True, chunk_size=chunk_size)  # (N, K)
    hits = (labels[idx] == labels[:, None]).any(dim=1)[valid]  # (Q,)
    return hits.double().cpu()


def epochs_to_converge(history, fraction: float = 0.9, metric: str = "recall@1") -> float:
    """Epochs a run needs to make ``fraction`` of its gain in ``metric`` — this course's rule
    for comparing convergence speed, which the SOA paper's Figs. 1 and 7 show by eye only.

    With ``m_t`` the metric after epoch ``t`` (``t = 0`` before training) and ``m* = max_t
    m_t``, the first ``t`` with ``m_t − m_0 ≥ fraction · (m* − m_0)``, linearly interpolated
    between evaluations (0 when training gains nothing).

    Args:
        history: a :class:`dmlviz.train.History` with ``eval_epochs`` starting at 0.
        fraction: in (0, 1].
        metric: the metric's name in ``history.metrics``.

    Returns:
        The epoch, a float.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if metric not in history.metrics or not history.eval_epochs or history.eval_epochs[0] != 0:
        raise ValueError(f"history must hold {metric!r} measured from epoch 0, got metrics "
                         f"{sorted(history.metrics)} at epochs {history.eval_epochs[:3]}…")
    t = [float(e) for e in history.eval_epochs]
    m = [float(x) for x in history.metrics[metric]]
    target = m[0] + fraction * (max(m) - m[0])
    if max(m) <= m[0]:
        return 0.0
    for i in range(1, len(m)):
        if m[i] >= target:
            return t[i - 1] + (target - m[i - 1]) / (m[i] - m[i - 1]) * (t[i] - t[i - 1])
    return t[-1]  # not reached (cannot happen: the maximum reaches it)

