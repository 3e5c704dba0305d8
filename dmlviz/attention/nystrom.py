"""Nyström / skeleton (CUR) low-rank approximation: matrix level and attention level.

Chen, Gong, Ge & Du, "Compressed Self-Attention for Deep Metric Learning with Low-Rank
Approximation" (CSALR), IJCAI-20: section 3.1, eqs. (3)–(9) (the matrix-level claim and its
eigen-system derivation) and section 3.2, eqs. (10)–(16) (the attention-level version).

**Matrix level** (eq. 9). From ``m`` sampled rows ``I`` and columns ``J`` of ``A`` (the paper
uses ``I = J``)::

    Â = A[:, J] · A[I, J]⁻¹ · A[I, :]  = A_nm A_mm⁻¹ A_mn                              (9)

The paper derives (9) from the eigen-system of ``A`` (eqs. 3–9): only (4) is an approximation,
(5)–(9) follow by substitution; :func:`dmlviz.derivation.paper_chain` measures every line as
printed, and shows that replacing (4)'s coefficient by a ``Y`` with ``A U = A_nm Y`` (which exists
iff ``rank A = m``) makes every line exact. The rigorous statement needs no eigenvectors. Permute
``I`` first and write ``A = [[A_mm, A_mr], [A_rm, A_rr]]``; the block LDU factorisation::

    A = [[I, 0], [A_rm A_mm⁻¹, I]] · [[A_mm, 0], [0, S]] · [[I, A_mm⁻¹ A_mr], [0, I]]
    S = A_rr − A_rm A_mm⁻¹ A_mr                       (Schur complement of A_mm in A)

holds for **any** square ``A`` with ``A_mm`` invertible (no symmetry, no PSD), and ``Â`` is
the same product with ``S`` replaced by 0. Hence (i) ``Â`` reproduces the sampled rows and
columns exactly, (ii) ``A − Â = [[0, 0], [0, S]]`` — the error *is* the Schur complement
(:func:`schur_residual`), and (iii) ``rank A = m + rank S``, so ``Â = A`` iff
``rank A = rank A_mm = m``. ``rank Â ≤ m``, so no choice of landmarks beats the truncated SVD
(Eckart–Young, :func:`best_rank`, :func:`svd_bound`).

**Attention level** (eqs. 10–16). Queries and keys
``q, k`` of shape ``(B, N, C)`` are average-pooled over ``M`` disjoint patches into *virtual*
landmarks ``q̃, k̃`` of shape ``(B, M, C)`` (not rows of any matrix; pooling commutes with the
1×1 convolutions that make ``q`` and ``k``, so pooling ``q`` equals projecting pooled
features). Three blocks, each normalised **separately** (``s`` = ``scale``)::

    A_nm = softmax_M(s q k̃ᵀ)    A_mm = softmax_M(s q̃ k̃ᵀ)    A_mn = softmax_N(s q̃ kᵀ)
    W = A_nm A_mm⁻¹   (N×M)      B = A_mn   (M×N)            out = W (B v)           (10–14)

The exact map is ``A = softmax_N(s q kᵀ)`` (:func:`softmax_attention`).

**The indicator** (eqs. 15–16): "we transform A_n,m and A_m,m" — only those two blocks get
``+ 1(·,·)``, added to the normalised softmax (the ``+`` stands outside the fraction), and
``B = A_mn`` stays as in eq. (13). With ``P[j, p] = 1`` iff position ``p`` lies in patch ``j``
(``indicator_at="affinity"``, the default)::

    W = (A_nm + Pᵀ)(A_mm + I)⁻¹     B = A_mn                                          (15–16)

"(16) guarantees that A_m,m⁻¹ always exists": ``A_mm`` is row-stochastic with a positive
diagonal, so ``A_mm + I`` is strictly diagonally dominant (margin ``2 a_ii``) and invertible by
Gershgorin. Rows of ``W B`` sum to 1 (``(A_mm + I) 1 = 2·1``, ``(A_nm + Pᵀ) 1 = 2·1``), and with
every position a landmark (``P = I``, ``A_nm = A_mm = A``) ``W = I`` and ``W B = A`` exactly.

Two other readings, kept to *teach* the difference (notebook 01, section 5), never the default:

* ``indicator_at="affinity_b"`` — **not the paper**: ``P`` is also added to ``B`` (``A_mn + P``).
  Then ``W B`` is the Nyström approximation of ``A + PᵀP`` (the attention plus a block of ones
  over each position's own patch, entries of size 1 against attention weights of size 1/N):
  at ``m = n`` it returns ``A + I``, not ``A``. Earlier versions of this module used it.
* ``indicator_at="logit"`` — the indicator inside the softmaxes of ``A_nm`` and ``A_mm``; the
  blocks stay row-stochastic and no invertibility guarantee follows.

**CPU solve guard.** On this CPU build (oneMKL), a *batched* ``torch.linalg.solve`` (or
``lu_factor``) with batch ≥ 2, ``M`` ≳ 150 and more than one thread prints "Parameter 6 was
incorrect on entry to DLASWP" and hangs. :func:`solve_right` solves such batches one matrix
at a time; every solve in this package goes through it.

Choices where the text leaves one open: no temperature in the softmaxes unless ``scale`` is
given (the paper writes ``exp(Qᵢᵀ Kⱼ)``); patches are the disjoint cells of an ``mh × mw`` grid
(sizes differ by at most one position when the map does not divide evenly; the paper's
kernel = stride pooling when they divide); ``q`` and ``k`` have the same ``N`` (self-attention).

Where the rest lives: landmark strategies, pooling patches and pooled landmarks in
:mod:`dmlviz.attention.landmarks`; the step-by-step analysis of the paper's derivation (notebook
01) in :mod:`dmlviz.derivation`; timing exact vs factored attention in :func:`dmlviz.cost.measure_cost`.

Maps: :func:`nystrom_softmax_attention` returns the factors themselves, one
:class:`NystromAttention` (``w``, ``b``, the blocks, the patches); the attention output is
``w @ (b @ v)``. The multi-head module level (:func:`dmlviz.attention.csalr.csalr_attention`)
follows the package's ``return_maps=True`` → ``(output, maps)`` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from dmlviz.attention.landmarks import landmarks, patch_indicator, pool_landmarks
from dmlviz.checks import check_int
from dmlviz.utils import derive_seed

INVERSES = ("solve", "pinv", "iterative")
INDICATOR_AT = ("affinity", "affinity_b", "logit")
SOLVE_SPLIT_MIN = 128  # batched CPU solves with M >= this are split (the DLASWP hang, M >= ~150)


# ----------------------------------------------------------------------------- checks


def check_matrix(a, name: str = "A", square: bool = False, why: str = "") -> torch.Tensor:
    """``a`` unchanged if it is a 2-D floating-point matrix (square if asked), else ValueError.

    Args:
        a: the matrix ``(N, N')``.
        name: its name in the error message.
        square: require ``N = N'``.
        why: appended to the "must be square" message.
    """
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.ndim != 2 or not a.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating-point matrix, got shape "
                         f"{tuple(a.shape)} and dtype {a.dtype}")
    if square and a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be square{why}, got shape {tuple(a.shape)}")
    return a


def check_indices(idx, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """Landmark indices as a ``(M,)`` int64 tensor on the device of ``like`` (the matrix they
    index): 1-D, integer, non-empty, ``M ≤ n``, in ``[0, n)`` and distinct (a repeated landmark
    makes ``A_mm`` singular); otherwise ValueError naming ``name``, what was given and what is
    allowed."""
    t = torch.as_tensor(idx, device=like.device)
    if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D sequence of integer indices, got "
                         f"shape {tuple(t.shape)} and dtype {t.dtype}")
    if len(t) == 0:
        raise ValueError(f"{name} is empty: need at least one landmark")
    if len(t) > n:
        raise ValueError(f"{name} has {len(t)} indices but the matrix has only {n} "
                         f"along that side: m must be <= {n}")
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ValueError(f"{name} must lie in [0, {n - 1}], got values from "
                         f"{int(t.min())} to {int(t.max())}")
    if len(torch.unique(t)) != len(t):
        dup = sorted({int(v) for v in t.tolist() if (t == v).sum() > 1})
        raise ValueError(f"{name} has duplicate indices {dup[:10]}: a repeated landmark makes "
                         "A_mm singular; pass distinct indices")
    return t.long()


def _check_inverse(inverse: str, iterations: int) -> None:
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}")
    check_int(iterations, "iterations", 1)


# ----------------------------------------------------------------------------- inverses


def pinv_iterative(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse by the iteration of Nyströmformer (Xiong et al., AAAI 2021).

    ``Z₀ = aᵀ / (‖a‖₁ ‖a‖_∞)``, ``Z ← ¼ Z (13I − aZ (15I − aZ (7I − aZ)))``. ``aZ`` stays a
    polynomial in ``a aᵀ``; each of its eigenvalues, ``x = σ² / (‖a‖₁ ‖a‖_∞) ∈ (0, 1]`` at the
    start (σ a singular value of ``a``), moves to ``f(x)`` with ``1 − f(x) = ¼ (1 − x)³ (4 − x)``:
    cubic convergence near 1, but a small ``x`` only grows ×3.25 per step, so a core with
    condition number κ needs about ``2 log κ / log 3.25`` iterations. The default 6 (the
    Nyströmformer setting) therefore inverts only well-conditioned matrices; on an
    ill-conditioned one it acts as a regulariser. On a rank-deficient matrix the rounding
    noise in the null space grows ×3.25 per step too: the error is smallest after a moderate
    number of steps and then grows without bound (past ~30 steps in float64 in the tests).
    Nyströmformer scales ``Z₀`` by the maximum over the batch and omits the absolute values,
    which changes nothing for softmax blocks.

    Args:
        a: ``(…, M, M')`` matrices.
        iterations: number of update steps (≥ 1).

    Returns:
        ``(…, M', M)`` approximate pseudo-inverses.
    """
    if not isinstance(a, torch.Tensor) or a.ndim < 2 or not a.is_floating_point():
        raise ValueError("a must be a floating-point tensor of shape (..., M, M'), got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    check_int(iterations, "iterations", 1)
    norm1 = a.abs().sum(-2).amax(-1)  # ‖a‖₁: largest column sum, (…,)
    norm_inf = a.abs().sum(-1).amax(-1)  # ‖a‖_∞: largest row sum, (…,)
    z = a.transpose(-1, -2) / (norm1 * norm_inf).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z  # (…, M, M)
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def solve_right(core: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ core⁻¹`` by ``torch.linalg.solve(core, x, left=False)``, safe on this CPU build.

    A batched CPU solve with batch ≥ 2, ``M`` ≳ 150 and more than one thread hangs in oneMKL's
    DLASWP ("Parameter 6 was incorrect on entry to DLASWP"). For a CPU batch with
    ``M ≥ SOLVE_SPLIT_MIN`` (128) and more than one thread, the batch is solved one matrix at a
    time (same result; autograd goes through each solve); everything else is one batched call.

    Args:
        core: ``(…, M, M)`` invertible matrices.
        x: ``(…, N, M)`` right-hand sides (batch dimensions broadcast as in torch).

    Returns:
        ``(…, N, M)``.
    """
    batch = torch.broadcast_shapes(core.shape[:-2], x.shape[:-2])
    n_batch = math.prod(batch)
    if (core.device.type != "cpu" or n_batch < 2 or core.shape[-1] < SOLVE_SPLIT_MIN
            or torch.get_num_threads() < 2):
        return torch.linalg.solve(core, x, left=False)
    core_b = core.expand(*batch, *core.shape[-2:]).reshape(n_batch, *core.shape[-2:])
    x_b = x.expand(*batch, *x.shape[-2:]).reshape(n_batch, *x.shape[-2:])
    out = torch.stack([torch.linalg.solve(c, r, left=False) for c, r in zip(core_b, x_b, strict=True)])
    return out.reshape(*batch, *out.shape[-2:])


def inverse_times(core: torch.Tensor, y: torch.Tensor, inverse: str = "solve",
                  iterations: int = 6) -> torch.Tensor:
    """``core⁻¹ y`` (or the pseudo-inverse): ``(…, M, M)⁻¹ @ (…, M, C)``.

    CSALR's output ``W (B v) = A_nm (A_mm⁻¹ (B v))`` needs only this ``M × C`` solve, not the
    ``N × M`` one that forms ``W``. ``"solve"`` goes through :func:`solve_right` (the CPU guard)
    on the transposes; no singularity check (use it where ``A_mm + I`` guarantees invertibility).

    Args:
        core: ``(…, M, M)``.
        y: ``(…, M, C)``.
        inverse: ``"solve"``, ``"pinv"`` or ``"iterative"``.
        iterations: steps of the iterative pseudo-inverse.

    Returns:
        ``(…, M, C)``.
    """
    _check_inverse(inverse, iterations)
    if inverse == "pinv":
        return torch.linalg.pinv(core) @ y
    if inverse == "iterative":
        return pinv_iterative(core, iterations) @ y
    return solve_right(core.transpose(-1, -2), y.transpose(-1, -2)).transpose(-1, -2)


def _times_inverse(x: torch.Tensor, core: torch.Tensor, inverse: str, iterations: int,
                   name: str = "A_mm", check: bool = True) -> torch.Tensor:
    """``x @ core⁻¹`` (or the pseudo-inverse): ``(…, N, M) @ (…, M, M)⁻¹``; with ``check`` a
    singular core makes ``inverse="solve"`` raise instead of returning inf/garbage."""
    if inverse == "pinv":
        return x @ torch.linalg.pinv(core)
    if inverse == "iterative":
        return x @ pinv_iterative(core, iterations)
    if core.shape[-1] != core.shape[-2]:
        raise ValueError(f"inverse='solve' needs a square {name}, got shape "
                         f"{tuple(core.shape)} (len(rows) != len(cols)); use inverse='pinv'")
    if not check:
        return solve_right(core, x)
    with torch.no_grad():
        s = torch.linalg.svdvals(core).reshape(-1, core.shape[-1])  # (batch, M) descending
        tol = s[:, :1] * core.shape[-1] * torch.finfo(core.dtype).eps  # matrix_rank's tolerance
        bad = (s[:, -1:] <= tol).flatten().nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        rank = int((s[i] > tol[i]).sum())
        cond = float(s[i, 0] / s[i, -1]) if float(s[i, -1]) > 0 else float("inf")
        where = f" (batch item {i})" if s.shape[0] > 1 else ""
        raise ValueError(f"{name}{where} ({core.shape[-1]}×{core.shape[-1]}) is singular to "
                         f"working precision (numerical rank {rank}, condition number {cond:.2e}), "
                         "so inverse='solve' cannot invert it. Use inverse='pinv' (Moore–Penrose, "
                         "least squares), other landmarks, or the indicator term (A_mm + I).")
    return solve_right(core, x)


# ----------------------------------------------------------------------------- matrix level


def nystrom(A: torch.Tensor, rows, cols=None, *, inverse: str = "solve",
            iterations: int = 6) -> torch.Tensor:
    """The Nyström / skeleton approximation ``A[:, cols] · A[rows, cols]⁻¹ · A[rows, :]``.

    Args:
        A: ``(N, N')`` matrix (any dtype on any device; use float64 to see 1e-12 errors).
            Must be square when ``cols`` is None.
        rows: ``(M,)`` distinct row indices ``I``.
        cols: ``(M',)`` distinct column indices ``J``; default ``rows`` (the paper's Nyström).
        inverse: ``"solve"`` (exact inverse; raises if ``A[I, J]`` is singular),
            ``"pinv"`` (Moore–Penrose, also for ``M != M'``) or ``"iterative"``
            (:func:`pinv_iterative`).
        iterations: steps of the iterative pseudo-inverse.

    Returns:
        ``(N, N')`` approximation of rank at most ``M``.
    """
    _check_inverse(inverse, iterations)
    check_matrix(A, square=cols is None,
                  why=" when cols is None (the same landmarks index rows and columns)")
    rows = check_indices(rows, A.shape[0], "rows", A)
    cols = rows if cols is None else check_indices(cols, A.shape[1], "cols", A)
    c = A[:, cols]  # (N, M')
    core = A[rows][:, cols]  # (M, M')
    r = A[rows, :]  # (M, N')
    return _times_inverse(c, core, inverse, iterations, "A[rows, cols]") @ r  # eq. (9)


def schur_residual(A: torch.Tensor, rows, *, inverse: str = "solve") -> torch.Tensor:
    """The Schur complement ``S = A_rr − A_rm A_mm⁻¹ A_mr`` of the landmark block.

    ``r`` are the indices not in ``rows``, in increasing order. ``A − nystrom(A, rows)`` is zero
    on the sampled rows and columns and equals ``S`` on ``r × r``.

    Args:
        A: ``(N, N)`` square matrix.
        rows: ``(M,)`` distinct landmark indices (used for rows and columns).
        inverse: ``"solve"`` or ``"pinv"`` (``"iterative"`` also accepted).

    Returns:
        ``(N − M, N − M)`` matrix (empty when ``M = N``).
    """
    _check_inverse(inverse, 1)
    check_matrix(A, square=True, why=" for a Schur complement")
    rows = check_indices(rows, A.shape[0], "rows", A)
    keep = torch.ones(A.shape[0], dtype=torch.bool, device=A.device)
    keep[rows] = False
    rest = keep.nonzero().flatten()  # (N − M,)
    a_rm, a_mm, a_mr = A[rest][:, rows], A[rows][:, rows], A[rows][:, rest]
    return A[rest][:, rest] - _times_inverse(a_rm, a_mm, inverse, 6) @ a_mr


def best_rank(A: torch.Tensor, m: int) -> torch.Tensor:
    """The best rank-``m`` approximation (truncated SVD; Eckart–Young optimum in the Frobenius
    and spectral norms, the lower bound for every rank-``m`` method such as Nyström).

    Args:
        A: ``(N, N')`` matrix.
        m: rank, ``1 ≤ m ≤ min(N, N')``.

    Returns:
        ``(N, N')`` matrix.
    """
    check_matrix(A)
    m = check_int(m, "m", 1, min(A.shape))
    u, s, vh = torch.linalg.svd(A, full_matrices=False)
    return (u[:, :m] * s[:m]) @ vh[:m]


def svd_bound(A: torch.Tensor, ms: Sequence[int]) -> torch.Tensor:
    """Relative Frobenius error of :func:`best_rank` for each ``m``: ``√(Σ_{i>m} σᵢ²) / ‖A‖_F``.

    Args:
        A: ``(N, N')`` matrix.
        ms: ranks.

    Returns:
        ``(len(ms),)`` float64 tensor on the CPU.
    """
    check_matrix(A)
    ms = [check_int(m, "m", 0, min(A.shape)) for m in ms]
    s2 = torch.linalg.svdvals(A.double()).pow(2).cpu()  # (min(N, N'),)
    tail = s2.flip(0).cumsum(0).flip(0)  # tail[i] = Σ_{j≥i} σ_j²
    tail = torch.cat([tail, tail.new_zeros(1)])
    return (tail[ms] / tail[0]).sqrt()


def relative_error(A: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖A − approx‖_F / ‖A‖_F`` as a float (computed in float64)."""
    if A.shape != approx.shape:
        raise ValueError(f"A and approx must have the same shape, got {tuple(A.shape)} "
                         f"and {tuple(approx.shape)}")
    return float((A.double() - approx.double()).norm() / A.double().norm())


def error_curve(A: torch.Tensor, ms: Sequence[int], strategy: str = "random", *,
                features: torch.Tensor | None = None, size: tuple[int, int] | None = None,
                repeats: int = 1, seed: int = 0, inverse: str = "pinv",
                iterations: int = 6) -> torch.Tensor:
    """Relative error of :func:`nystrom` against the number of landmarks, over random draws.

    Args:
        A: ``(N, N)`` matrix.
        ms: landmark counts.
        strategy: a :func:`dmlviz.attention.landmarks.landmarks` strategy (``"even"`` is drawn once: it is deterministic).
        features: ``(N, C)`` row features for the k-means strategies.
        size: ``(H, W)`` grid for ``"even"``.
        repeats: draws of the random strategies (draw d seeded ``derive_seed(seed, d)``).
        seed: first seed.
        inverse: see :func:`nystrom` (default ``"pinv"``, so no draw stops a sweep).
        iterations: steps of the iterative pseudo-inverse.

    Returns:
        ``(R, len(ms))`` float64 tensor, ``R = 1`` for ``"even"`` else ``repeats``.
    """
    check_matrix(A, square=True, why=" for an error curve")
    draws = 1 if strategy == "even" else check_int(repeats, "repeats", 1)
    return torch.tensor([[relative_error(A, nystrom(A, landmarks(
        A.shape[0], m, strategy, features=features, size=size, seed=derive_seed(seed, d)),
        inverse=inverse, iterations=iterations)) for m in ms] for d in range(draws)],
        dtype=torch.float64)


# ----------------------------------------------------------------------------- attention level


class NystromAttention(NamedTuple):
    """What :func:`nystrom_softmax_attention` returns (leading ``(B,)`` when the input had it).

    Attributes:
        w: ``(…, N, M)`` coefficients ``W = A_nm A_mm⁻¹`` (eq. 14; with the indicator,
            ``(A_nm + Pᵀ)(A_mm + I)⁻¹``, eqs. 15–16).
        b: ``(…, M, N)`` landmark attention ``B = A_mn`` (eq. 13; unchanged by the indicator
            except in the ``"affinity_b"`` reading).
        a_nm: ``(…, N, M)`` block used in ``W`` (indicator included).
        a_mm: ``(…, M, M)`` block inverted in ``W`` (indicator included).
        reconstruction: ``(…, N, N)`` ``W B`` (None unless asked for).
        patch: ``(N,)`` pooling patch of each position (None when landmarks were given without it).
    """

    w: torch.Tensor
    b: torch.Tensor
    a_nm: torch.Tensor
    a_mm: torch.Tensor
    reconstruction: torch.Tensor | None
    patch: torch.Tensor | None


def _check_qk(q, name: str) -> torch.Tensor:
    if not isinstance(q, torch.Tensor) or q.ndim not in (2, 3) or not q.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape (N, C) or (B, N, C), "
                         f"got {getattr(q, 'shape', type(q).__name__)}")
    return q


def softmax_attention(q: torch.Tensor, k: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """The exact attention map ``softmax_N(s q kᵀ)``: ``(…, N, C), (…, N', C) → (…, N, N')``."""
    _check_qk(q, "q"), _check_qk(k, "k")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same channels C, got {q.shape[-1]} and {k.shape[-1]}")
    return torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)


def nystrom_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    m=None,
    *,
    size: tuple[int, int] | None = None,
    pool: str = "avg",
    q_landmarks: torch.Tensor | None = None,
    k_landmarks: torch.Tensor | None = None,
    patch: torch.Tensor | None = None,
    indicator: bool = False,
    indicator_at: str = "affinity",
    scale: float = 1.0,
    inverse: str = "solve",
    iterations: int = 6,
    check: bool = True,
    return_reconstruction: bool = False,
    compute_w: bool = True,
) -> NystromAttention:
    """CSALR's attention-level Nyström factors (eqs. 10–16) from pooled (or given) landmarks.

    Args:
        q: ``(N, C)`` or ``(B, N, C)`` queries.
        k: keys of the same shape as ``q``.
        m: number of landmarks ``M`` (or ``(mh, mw)`` with ``size``) to pool ``q`` and ``k``
            into; leave None when passing ``q_landmarks`` and ``k_landmarks``.
        size: ``(H, W)`` of the feature map (``N = H·W``) for a 2-D pooling grid.
        pool: ``"avg"`` (the paper) or ``"max"``.
        q_landmarks: ``(M, C)`` / ``(B, M, C)`` landmark queries ``q̃`` (instead of ``m``).
        k_landmarks: ``(M, C)`` / ``(B, M, C)`` landmark keys ``k̃``.
        patch: ``(N,)`` patch id in ``[0, M)`` of each position (−1: none) for the indicator
            when landmarks are given; computed by the pooling otherwise.
        indicator: add ``1(same pooling patch)`` to ``A_nm`` and ``A_mm`` (eqs. 15–16).
        indicator_at: ``"affinity"`` (eqs. 15–16 as printed: ``A_nm + Pᵀ``, ``A_mm + I``,
            ``B = A_mn``), ``"affinity_b"`` (not the paper: also ``B = A_mn + P``; for
            teaching) or ``"logit"`` (inside the softmaxes of ``A_nm``, ``A_mm``).
        scale: multiplies the logits ``q kᵀ`` (1 as in the paper; ``C**-0.5`` Transformer-style).
        inverse: ``"solve"``, ``"pinv"`` or ``"iterative"`` (see :func:`nystrom`).
        iterations: steps of the iterative pseudo-inverse.
        check: with ``inverse="solve"``, verify that ``A_mm`` is invertible (one SVD of the
            ``M × M`` blocks) and raise a clear error if not. Turn it off in a training loop
            where the indicator term already guarantees invertibility.
        return_reconstruction: also return the ``(…, N, N)`` map ``W B``.
        compute_w: form ``W`` (default). False leaves ``w`` None (and no reconstruction):
            for callers that apply ``A_mm⁻¹`` to ``B v`` instead (:func:`inverse_times`).

    Returns:
        :class:`NystromAttention` with ``w`` ``(…, N, M)``, ``b`` ``(…, M, N)``, the blocks
        and, if asked, ``reconstruction``. The attention output is ``w @ (b @ v)``.
    """
    _check_qk(q, "q"), _check_qk(k, "k")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (N, C) / (B, N, C) (self-attention), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_inverse(inverse, iterations)
    if indicator_at not in INDICATOR_AT:
        raise ValueError(f"indicator_at must be one of {INDICATOR_AT}, got {indicator_at!r}")
    n = q.shape[-2]
    if m is not None:
        if q_landmarks is not None or k_landmarks is not None or patch is not None:
            raise ValueError("pass either m (pool the landmarks here) or q_landmarks/k_landmarks"
                             "/patch, not both")
        if isinstance(m, int) and not isinstance(m, bool) and m > n:
            raise ValueError(f"m (landmarks) must be at most N = {n} positions, got {m}")
        q_landmarks, patch = pool_landmarks(q, m, size=size, pool=pool)  # (…, M, C), (N,)
        k_landmarks, _ = pool_landmarks(k, m, size=size, pool=pool)  # (…, M, C)
    elif q_landmarks is None or k_landmarks is None:
        raise ValueError("give m (number of landmarks) or both q_landmarks and k_landmarks")
    for name, t in (("q_landmarks", q_landmarks), ("k_landmarks", k_landmarks)):
        _check_qk(t, name)
        if t.ndim != q.ndim or t.shape[:-2] != q.shape[:-2] or t.shape[-1] != q.shape[-1]:
            raise ValueError(f"{name} must have shape {(*q.shape[:-2], 'M', q.shape[-1])}, "
                             f"got {tuple(t.shape)}")
    if q_landmarks.shape != k_landmarks.shape:
        raise ValueError(f"q_landmarks and k_landmarks must have the same shape, got "
                         f"{tuple(q_landmarks.shape)} and {tuple(k_landmarks.shape)}")
    mm = q_landmarks.shape[-2]
    if mm > n:
        raise ValueError(f"M = {mm} landmarks is more than N = {n} positions")
    kt, ktil = k.transpose(-1, -2), k_landmarks.transpose(-1, -2)
    logit_nm = scale * q @ ktil  # (…, N, M)
    logit_mm = scale * q_landmarks @ ktil  # (…, M, M)
    logit_mn = scale * q_landmarks @ kt  # (…, M, N)
    if indicator:
        if patch is None:
            raise ValueError("indicator=True needs the patch of every position: pass patch "
                             "(N,) with the given landmarks, or pass m to pool them here")
        patch = torch.as_tensor(patch, device=q.device)
        if patch.shape != (n,) or int(patch.max()) >= mm:
            raise ValueError(f"patch must have shape ({n},) with ids < M = {mm}, got shape "
                             f"{tuple(patch.shape)} and max {int(patch.max())}")
        p = patch_indicator(patch, mm, q.dtype)  # (M, N)
        eye = torch.eye(mm, dtype=q.dtype, device=q.device)
        if indicator_at == "logit":  # a reading of (15)–(16) inside the softmaxes (not the paper's)
            logit_nm, logit_mm = logit_nm + p.T, logit_mm + eye
    a_nm = torch.softmax(logit_nm, dim=-1)  # (…, N, M), normalised over M    eq. (11)
    a_mm = torch.softmax(logit_mm, dim=-1)  # (…, M, M), normalised over M    eq. (12)
    a_mn = torch.softmax(logit_mn, dim=-1)  # (…, M, N), normalised over N    eq. (13), B
    if indicator and indicator_at in ("affinity", "affinity_b"):
        a_nm, a_mm = a_nm + p.T, a_mm + eye  # eqs. (15), (16): A_nm + 1(Q_i, K'_j), A_mm + I
        if indicator_at == "affinity_b":  # NOT the paper: B = A_mn + P (reconstructs A + PᵀP)
            a_mn = a_mn + p
    if not compute_w:
        return NystromAttention(None, a_mn, a_nm, a_mm, None, patch)
    w = _times_inverse(a_nm, a_mm, inverse, iterations, check=check)  # W = A_nm A_mm⁻¹ eq. (14)
    recon = w @ a_mn if return_reconstruction else None  # (…, N, N)
    return NystromAttention(w, a_mn, a_nm, a_mm, recon, patch)
