"""The paper's derivation of eq. (9), measured step by step (notebook 01).

Chen, Gong, Ge & Du, "Compressed Self-Attention for Deep Metric Learning with Low-Rank
Approximation" (CSALR), IJCAI-20, section 3.1, eqs. (3)–(9). The approximation itself lives in
:mod:`dmlviz.attention.nystrom`; this module holds the analysis a course needs on top of it:

* :func:`paper_chain` — the residual of every line (4)–(9) as printed, with the paper's
  coefficient ``(n/m) U_mn`` or with one that exists iff ``rank A = m``;
* :func:`derivation_gaps` — the classical Nyström argument (Williams & Seeger 2001), gap by gap;
* :func:`skeleton_checks` — the rigorous statement (skeleton / CUR form) checked in floating point:
  sampled rows and columns reproduced, the error equal to the Schur complement, rank additivity.

Notation as in notebook 01: ``A`` is ``n × n``, ``S`` the ``m`` landmarks (rows and columns),
``A_nm = A[:, S]``, ``A_mm = A[S, S]``, ``A_mn = A[S, :]``, ``A U = U Λ`` the eigen-system.
"""

from __future__ import annotations

import math

import torch

from dmlviz.attention.nystrom import (
    check_indices,
    check_matrix,
    nystrom,
    relative_error,
    schur_residual,
)

__all__ = ["CHAIN_STEPS", "derivation_gaps", "paper_chain", "skeleton_checks"]


CHAIN_STEPS = ("(4)", "(5)", "(6)", "(7)", "(8)", "(9)")


def paper_chain(A: torch.Tensor, rows, coefficient: str = "paper") -> dict[str, float]:
    """The residual of every step of the paper's derivation (eqs. 3–9), as printed.

    With the eigen-system ``A U = U Λ`` (3) (complex in general) and ``U_mn = U[S, :]`` the
    ``m`` sampled rows of ``U``, the paper writes, for a coefficient ``Y = (n/m) U_mn``::

        (4)  A_nm Y ≈ U Λ                      (the Nyström quadrature: the only approximation)
        (5)  A_nm Y ≈ A U                      (4) matched against (3)
        (6)  A_mm Y ≈ A_mn U                   the rows S of (5)
        (7)  A_nm Y U⁻¹ ≈ A_nm A_mm⁻¹ A_mn     (6) times A_mm⁻¹, A_nm (left) and U⁻¹ (right)
        (8)  U Λ U⁻¹ ≈ A_nm A_mm⁻¹ A_mn        (4) matched against (7)
        (9)  A ≈ A_nm A_mm⁻¹ A_mn              (8) matched against (3)

    (5)–(9) follow from (4) by substitution. ``coefficient="exists"`` replaces (4)'s ``(n/m)
    U_mn`` by the least-squares ``Y`` of ``A_nm Y = A U``: an exact ``Y`` exists iff the columns
    of ``A`` lie in the span of ``A_nm`` (``rank A = rank A_nm``); with ``A_mm`` invertible that is
    ``rank A = m``, the theorem's condition, and then every step is an equality.

    Args:
        A: ``(N, N)`` square matrix (computed in complex128).
        rows: ``(M,)`` distinct landmarks ``S`` with ``A[S, S]`` invertible.
        coefficient: ``"paper"`` (``Y = (n/m) U_mn``) or ``"exists"`` (least-squares ``Y``).

    Returns:
        ``{"(4)": r4, …, "(9)": r9}``: ``‖lhs − rhs‖_F / ‖rhs‖_F`` of each step as written.
    """
    check_matrix(A, square=True, why=" for an eigen-system")
    if coefficient not in ("paper", "exists"):
        raise ValueError(f"coefficient must be 'paper' or 'exists', got {coefficient!r}")
    rows = check_indices(rows, A.shape[0], "rows", A).cpu()
    a = A.detach().to(torch.complex128).cpu()
    n, m = a.shape[0], len(rows)
    lam, u = torch.linalg.eig(a)  # (3): A U = U Λ
    a_nm, a_mm, a_mn = a[:, rows], a[rows][:, rows], a[rows, :]
    au = a @ u  # (N, N)
    # (M, N): the paper's (n/m) U_mn, or the least-squares Y = argmin ‖A_nm Y − A U‖
    y = (n / m) * u[rows, :] if coefficient == "paper" else torch.linalg.lstsq(a_nm, au).solution
    u_inv = torch.linalg.inv(u)
    nys = a_nm @ torch.linalg.solve(a_mm, a_mn)  # A_nm A_mm⁻¹ A_mn

    def rel(lhs, rhs) -> float:
        return float((lhs - rhs).norm() / rhs.norm().clamp_min(1e-300))

    return {
        "(4)": rel(a_nm @ y, u * lam),  # A_nm Y ≈ U Λ
        "(5)": rel(a_nm @ y, au),  # A_nm Y ≈ A U
        "(6)": rel(a_mm @ y, a_mn @ u),  # A_mm Y ≈ A_mn U
        "(7)": rel(a_nm @ y @ u_inv, nys),  # A_nm Y U⁻¹ ≈ A_nm A_mm⁻¹ A_mn
        "(8)": rel((u * lam) @ u_inv, nys),  # U Λ U⁻¹ ≈ A_nm A_mm⁻¹ A_mn
        "(9)": rel(nys, a),  # A ≈ A_nm A_mm⁻¹ A_mn
    }


def derivation_gaps(A: torch.Tensor, rows) -> dict[str, float]:
    """How far each "≈" of the eigen-system derivation of eq. (9) is from equality.

    The classical Nyström argument of Williams & Seeger 2001, extended with left eigenvectors
    for non-symmetric ``A`` (not the paper's chain as printed: see :func:`paper_chain`): with
    eigenpairs ``A uᵢ = μᵢ uᵢ`` (``μ`` by decreasing modulus, complex in general) and
    ``A_mm U_m = U_m Λ_m``, ``S`` = the landmarks:

    * ``"quadrature"`` — (4): ``(N/M) A[:, S] uᵢ[S] ≈ μᵢ uᵢ`` (M-point quadrature of the
      eigen-equation); median relative residual over the top ``min(M, 8)`` eigenpairs of A.
    * ``"eigenvalues"`` — (5): ``(N/M) λᵢ(A_mm) ≈ μᵢ``; median relative error, same pairs.
    * ``"extension"`` — (6)–(7): the Nyström-extended vectors ``ũᵢ = A_nm U_m[:, i] / λᵢ``
      are ≈ eigenvectors of A; median over ``i`` of ``min_μ ‖A ũ − μ ũ‖ / ‖A ũ‖``.
    * ``"biorthogonality"`` — (8): ``A ≈ Ũ ((N/M) Λ_m) Ṽ`` with the extended left vectors
      ``Ṽ = (M/N) Λ_m⁻¹ U_m⁻¹ A_mn`` is the eigen-decomposition ``A = U M U⁻¹`` only if
      ``Ṽ Ũ = I``; ``‖Ṽ Ũ − I‖_F / √M``. (The quadrature factors N/M cancel in (9).)
    * ``"algebra"`` — (8)→(9): ``‖Ũ Λ_m Ṽ' − A_nm A_mm⁻¹ A_mn‖_F / ‖·‖_F`` (an identity;
      ``Ṽ' = Λ_m⁻¹ U_m⁻¹ A_mn``).
    * ``"error"`` — (9): ``‖A − Â‖_F / ‖A‖_F``.
    * ``"complex_fraction"`` — share of ``A_mm``'s eigenvalues that are not real.

    Args:
        A: ``(N, N)`` square matrix (computed in complex128).
        rows: ``(M,)`` distinct landmark indices with ``A_mm`` invertible.

    Returns:
        ``{name: float}`` as listed.
    """
    check_matrix(A, square=True, why=" for an eigen-system")
    rows = check_indices(rows, A.shape[0], "rows", A)
    a = A.detach().double().cpu()
    rows = rows.cpu()
    n, m = a.shape[0], len(rows)
    a_nm, a_mm, a_mn = a[:, rows], a[rows][:, rows], a[rows, :]
    mu, u = torch.linalg.eig(a)  # (N,), (N, N) complex
    order = mu.abs().argsort(descending=True)
    mu, u = mu[order], u[:, order]
    lam, um = torch.linalg.eig(a_mm)  # (M,), (M, M)
    order = lam.abs().argsort(descending=True)
    lam, um = lam[order], um[:, order]
    ac, k = a.to(torch.complex128), min(m, 8)
    quad = [float(((n / m) * ac[:, rows] @ u[rows, i] - mu[i] * u[:, i]).norm()
                  / (mu[i] * u[:, i]).norm().clamp_min(1e-300)) for i in range(k)]
    eigval = [float(((n / m) * lam[i] - mu[i]).abs() / mu[i].abs().clamp_min(1e-300))
              for i in range(k)]
    u_ext = a_nm.to(torch.complex128) @ um / lam  # (N, M)   eq. (6)–(7), right vectors
    v_ext = (torch.linalg.inv(um) @ a_mn.to(torch.complex128)) / lam[:, None]  # (M, N), left
    au = ac @ u_ext  # (N, M)
    rq = (u_ext.conj() * au).sum(0) / (u_ext.conj() * u_ext).sum(0)  # Rayleigh quotients
    ext = ((au - rq * u_ext).norm(dim=0) / au.norm(dim=0).clamp_min(1e-300)).median()
    biorth = ((m / n) * v_ext @ u_ext - torch.eye(m, dtype=torch.complex128)).norm() / math.sqrt(m)
    recon_eig = (u_ext * lam) @ v_ext  # Ũ Λ_m Ṽ, (N, N)
    recon = a_nm @ torch.linalg.solve(a_mm, a_mn)  # eq. (9)
    return {
        "quadrature": float(torch.tensor(quad).median()),
        "eigenvalues": float(torch.tensor(eigval).median()),
        "extension": float(ext),
        "biorthogonality": float(biorth),
        "algebra": float((recon_eig - recon).norm() / recon.norm()),
        "error": float((a - recon).norm() / a.norm()),
        "complex_fraction": float((lam.imag.abs() > 1e-9 * lam.abs()).double().mean()),
    }


def skeleton_checks(A: torch.Tensor, rows) -> dict[str, float | int]:
    """The theorem behind eq. (9) (skeleton / CUR form), checked in floating point on one matrix.

    With ``Â = A_nm A_mm⁻¹ A_mn`` (eq. 9) for the landmarks ``J = rows`` and ``R`` the other
    indices: (1) ``Â`` reproduces the rows and columns ``J``; (2) ``(A − Â)[R, R]`` is the Schur
    complement ``S = A_RR − A_Rm A_mm⁻¹ A_mR``; (3) ``rank A = m + rank S``.

    Args:
        A: ``(N, N)`` square matrix (float64 to see rounding-level errors).
        rows: ``(M,)`` distinct landmarks ``J`` with ``A[J, J]`` invertible.

    Returns:
        ``rel_error`` (``‖A − Â‖_F / ‖A‖_F``), ``sampled`` (largest ``|A − Â|`` on the rows and
        columns ``J``), ``schur`` (largest ``|(A − Â)[R, R] − S|``), both divided by ``max |A|``,
        and the numerical ranks ``rank_a``, ``rank_s`` of ``A`` and ``S`` with one tolerance
        ``‖A‖₂ · N · eps``.
    """
    check_matrix(A, square=True, why=" for a Schur complement")
    rows = check_indices(rows, A.shape[0], "rows", A)
    n = A.shape[0]
    chosen = set(rows.tolist())
    rest = torch.tensor([i for i in range(n) if i not in chosen])  # R, (N − M,)
    approx = nystrom(A, rows)  # eq. (9)
    resid = A - approx
    scale = A.abs().max()
    sampled = max(resid[rows].abs().max(), resid[:, rows].abs().max()) / scale
    schur = schur_residual(A, rows)  # (N − M, N − M)
    schur_err = (resid[rest][:, rest] - schur).abs().max() / scale
    tol = torch.linalg.matrix_norm(A, 2) * n * torch.finfo(A.dtype).eps  # one tolerance for both ranks
    return {
        "rel_error": relative_error(A, approx),
        "sampled": float(sampled),
        "schur": float(schur_err),
        "rank_a": int(torch.linalg.matrix_rank(A, atol=tol)),
        "rank_s": int(torch.linalg.matrix_rank(schur, atol=tol)),
    }
