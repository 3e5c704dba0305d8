"""Landmarks for Nyström / CSALR: sampled rows, pooling patches and pooled virtual landmarks.

Chen, Gong, Ge & Du, "Compressed Self-Attention for Deep Metric Learning with Low-Rank
Approximation" (CSALR), IJCAI-20. The matrix-level approximation of eq. (9) (in
:mod:`dmlviz.attention.nystrom`) needs ``M`` sampled rows ``I`` of ``A``; :func:`landmarks`
draws them (uniformly at random, evenly spaced, k-means or k-means++ seeding). The paper's own
landmarks (section 3.2, eqs. 11–13) are not rows of ``A``: queries and keys are average-pooled
over ``M`` disjoint patches of the ``H × W`` map (:func:`pool_landmarks`), and the indicator of
eqs. (15)–(16) needs the patch of every position (:func:`patches`, :func:`patch_indicator`).

Choices where the text leaves one open: patches are the disjoint cells of an ``mh × mw`` grid
(:func:`landmark_grid`; an int ``M`` is laid out closest to the map's aspect), with sizes
``⌊H/mh⌋`` or ``⌈H/mh⌉`` when the map does not divide evenly (every position in exactly one
patch); when it divides, this is the paper's kernel = stride pooling.

Shapes (alphabet in :mod:`dmlviz`): ``N = H·W`` positions, ``M = mh·mw`` landmarks, ``C``
channels, ``B`` batch.
"""

from __future__ import annotations

import math

import torch

from dmlviz.checks import check_int

__all__ = [
    "POOLS",
    "STRATEGIES",
    "landmark_grid",
    "landmarks",
    "patch_indicator",
    "patches",
    "pool_landmarks",
]

STRATEGIES = ("random", "even", "kmeans", "kmeans++")
POOLS = ("avg", "max")


def _grid(m, size: tuple[int, int]) -> tuple[int, int]:
    """``(mh, mw)`` with ``mh·mw = m`` closest in aspect to ``size``."""
    h, w = size
    if isinstance(m, (tuple, list)):
        if len(m) != 2:
            raise ValueError(f"m must be an int or a (mh, mw) pair, got {m!r}")
        mh, mw = check_int(m[0], "m[0]", 1, h), check_int(m[1], "m[1]", 1, w)
        return mh, mw
    m = check_int(m, "m (landmarks)", 1, h * w)
    pairs = [(d, m // d) for d in range(1, m + 1) if m % d == 0 and d <= h and m // d <= w]
    if not pairs:
        raise ValueError(f"m={m} cannot be laid out as an mh × mw grid on a {h}×{w} map; "
                         f"pass m=(mh, mw) with mh <= {h}, mw <= {w}")
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(h / w)))


def _check_size(size, n: int) -> tuple[int, int] | None:
    if size is None:
        return None
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)):
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
    if size[0] * size[1] != n:
        raise ValueError(f"size={tuple(size)} has H·W = {size[0] * size[1]} positions but the "
                         f"input has N = {n}")
    return int(size[0]), int(size[1])


def patches(n: int, m, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The pooling patch of every position: ``(N,)`` ids in ``[0, M)``.

    Without ``size`` the ``N`` positions are cut into ``m`` contiguous segments
    (``⌊i·m / N⌋``); with ``size = (H, W)`` the map is cut into an ``mh × mw`` grid (``m`` an
    int laid out closest to the map's aspect, or a pair), patch id ``row·mw + col``. Patch
    sizes differ by at most one row/column of positions.
    """
    n = check_int(n, "n", 1)
    size = _check_size(size, n)
    if size is None:
        m = check_int(m, "m (landmarks)", 1, n)
        return torch.arange(n) * m // n
    (h, w), (mh, mw) = size, _grid(m, size)
    pr = torch.arange(h) * mh // h  # (H,)
    pc = torch.arange(w) * mw // w  # (W,)
    return (pr[:, None] * mw + pc[None, :]).flatten()


def patch_indicator(patch: torch.Tensor, m: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``P`` of shape ``(M, N)``: ``P[j, p] = 1`` iff ``patch[p] == j`` (a negative id: no patch)."""
    patch = torch.as_tensor(patch)
    m = check_int(m, "m", 1)
    return (patch[None, :] == torch.arange(m, device=patch.device)[:, None]).to(dtype)


def pool_landmarks(x: torch.Tensor, m, *, size: tuple[int, int] | None = None,
                   pool: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's virtual landmarks: features pooled over ``M`` disjoint patches.

    Args:
        x: ``(N, C)`` or ``(B, N, C)`` features (queries or keys).
        m: number of landmarks ``M`` (or ``(mh, mw)`` with ``size``).
        size: ``(H, W)`` of the feature map (``N = H·W``, row-major); None for 1-D segments.
        pool: ``"avg"`` (the paper) or ``"max"``.

    Returns:
        ``(x̃, patch)``: ``(M, C)`` or ``(B, M, C)`` pooled features and the ``(N,)`` patch id of
        every position (see :func:`patches`).
    """
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of shape (N, C) or (B, N, C), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    n = x.shape[-2]
    patch = patches(n, m, size).to(x.device)  # (N,)
    mm = int(patch.max()) + 1
    if pool == "avg":
        p = patch_indicator(patch, mm, x.dtype)  # (M, N)
        return (p / p.sum(1, keepdim=True)) @ x, patch  # (…, M, C)
    idx = patch[:, None].expand(x.shape[-2:])  # (N, C)
    idx = idx.expand(*x.shape[:-2], *idx.shape)
    out = x.new_full((*x.shape[:-2], mm, x.shape[-1]), -torch.inf)
    return out.scatter_reduce(-2, idx, x, reduce="amax"), patch


def landmarks(n: int, m: int, strategy: str = "random", *, features: torch.Tensor | None = None,
              size: tuple[int, int] | None = None, seed: int = 0,
              kmeans_iterations: int = 25) -> torch.Tensor:
    """Landmark row/column indices for :func:`dmlviz.attention.nystrom.nystrom`, sorted.

    Args:
        n: number of rows ``N``.
        m: number of landmarks, ``1 ≤ M ≤ N``.
        strategy: ``"random"`` (uniform without replacement), ``"even"`` (evenly spaced; with
            ``size`` the centre of each cell of the pooling grid of :func:`patches`),
            ``"kmeans"`` (Lloyd's k-means on ``features``, then the row nearest each centroid)
            or ``"kmeans++"`` (the k-means++ seeding alone: D²-sampled rows). The paper's
            pooled landmarks are not rows of ``A``: see :func:`pool_landmarks`.
        features: ``(N, C)`` row features for the k-means strategies.
        size: ``(H, W)`` map for ``"even"`` on a 2-D grid.
        seed: seed of the random strategies.
        kmeans_iterations: Lloyd iterations of ``"kmeans"``.

    Returns:
        ``(M,)`` int64 distinct indices in increasing order.
    """
    n = check_int(n, "n", 1)
    if strategy == "pool":
        raise ValueError("strategy='pool': pooled landmarks are averages of features, not rows "
                         "of A; use pool_landmarks(x, m) or nystrom_softmax_attention(q, k, m)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or m > n:
        raise ValueError(f"m (landmarks) must be an integer in [1, n={n}], got {m!r}")
    g = torch.Generator().manual_seed(check_int(seed, "seed", 0))
    if strategy == "random":
        return torch.randperm(n, generator=g)[:m].sort().values
    if strategy == "even":
        size = _check_size(size, n)
        if size is None:
            return ((torch.arange(m) + 0.5) * n / m).floor().long()  # segment centres
        h, w = size
        mh, mw = _grid(m, size)
        r = ((torch.arange(mh) + 0.5) * h / mh).floor().long()
        c = ((torch.arange(mw) + 0.5) * w / mw).floor().long()
        return (r[:, None] * w + c[None, :]).flatten().sort().values
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"strategy={strategy!r} needs features of shape (n={n}, C), got "
                         f"{getattr(features, 'shape', features)}")
    x = features.detach().double().cpu()
    chosen = _kmeans_pp(x, m, g)
    if strategy == "kmeans":
        centres = x[chosen]
        for _ in range(check_int(kmeans_iterations, "kmeans_iterations", 0)):
            assign = torch.cdist(x, centres).argmin(1)  # (N,)
            counts = torch.bincount(assign, minlength=m).double()
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        dist = torch.cdist(centres, x)  # (M, N)
        chosen = []
        for j in range(m):  # nearest row not yet taken
            order = dist[j].argsort()
            chosen.append(next(int(i) for i in order if int(i) not in chosen))
        chosen = torch.tensor(chosen)
    return chosen.sort().values


def _kmeans_pp(x: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): rows drawn with probability ∝ D²."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = (x - x[chosen[0]]).pow(2).sum(1)  # (N,)
    for _ in range(1, m):
        d2[chosen] = 0
        weights = d2 if float(d2.sum()) > 0 else (d2 == 0).double().index_fill(0, torch.tensor(chosen), 0)
        i = int(torch.multinomial(weights, 1, generator=g))
        chosen.append(i)
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    return torch.tensor(chosen)


def landmark_grid(landmarks, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(mh, mw)`` pooling grid of ``landmarks`` on an ``H × W`` map.

    Args:
        landmarks: ``M`` (laid out closest to the map's aspect) or ``(mh, mw)``.
        size: ``(H, W)``.

    Returns:
        ``(mh, mw)`` with ``mh ≤ H`` and ``mw ≤ W``.

    Raises:
        ValueError: more landmarks than positions along a side, or an ``M`` with no grid.
    """
    h, w = size
    if isinstance(landmarks, (tuple, list)):
        if len(landmarks) != 2:
            raise ValueError(f"landmarks must be an int M or a pair (mh, mw), got {landmarks!r}")
        mh, mw = (check_int(v, f"landmarks[{i}]", 1) for i, v in enumerate(landmarks))
        if mh > h or mw > w:
            raise ValueError(f"landmarks=({mh}, {mw}) is larger than the {h}×{w} feature map: "
                             f"need mh <= H = {h} and mw <= W = {w}")
        return mh, mw
    m = check_int(landmarks, "landmarks", 1)
    if m > h * w:
        raise ValueError(f"landmarks={m} is more than the N = {h}·{w} = {h * w} positions of "
                         "the feature map")
    return _grid(m, (h, w))
