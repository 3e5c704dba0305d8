"""Tests of dmlviz.derivation: the paper's derivation of eq. (9) (CSALR, Chen et al. IJCAI-20,
eqs. 3–9), measured step by step."""

import numpy as np
import pytest
import torch

from dmlviz.attention.landmarks import landmarks
from dmlviz.attention.nystrom import nystrom
from dmlviz.derivation import derivation_gaps, paper_chain, skeleton_checks

F64 = torch.float64


def rank_m(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=F64) @ torch.randn(m, n, generator=g, dtype=F64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_derivation_gaps():
    """Eqs. (4)–(9) read as the classical Nyström argument: with every position a landmark
    each "≈" is an equality; on a rank-m matrix eq. (9) is exact while the quadrature (4) and
    the biorthogonality behind (8) are not."""
    S = randn(30, 30, seed=26)
    S = S @ S.T
    gaps = derivation_gaps(S, torch.randperm(30))  # all landmarks: every step is exact
    assert max(gaps[k] for k in ("quadrature", "eigenvalues", "extension", "biorthogonality",
                                 "algebra", "error")) < 1e-8
    gaps = derivation_gaps(rank_m(40, 5, 27), landmarks(40, 5, seed=2))
    assert gaps["error"] < 1e-10 and gaps["algebra"] < 1e-10  # eq. (9) exact ...
    assert gaps["quadrature"] > 0.05 and gaps["biorthogonality"] > 0.05  # ... the ≈ steps not


def test_paper_chain_only_step_4_is_an_approximation():
    """Eqs. (3)–(9): "we approximate (3) by randomly sampling m columns of A_n,n ...
    (n/m) A_n,m U_m,n ≈ U_n,n Λ_n,n" (4), then (5)–(9) by matching and multiplying. On a
    non-symmetric rank-m matrix (eq. 9 exact by the theorem) (4) with the paper's coefficient
    (n/m) U_mn is off by order one, while with a Y solving A_nm Y = A U exactly (it exists iff
    rank A = m) every step holds to rounding. Residuals are recomputed here from numpy's eig."""
    n, m = 30, 5
    A = rank_m(n, m, 31)
    rows = landmarks(n, m, seed=4)
    paper = paper_chain(A, rows)
    exists = paper_chain(A, rows, "exists")
    assert paper["(4)"] > 0.1 and paper["(9)"] < 1e-10
    assert max(exists.values()) < 1e-8, exists
    # a full-rank matrix (distinct eigenvalues: U unique up to unit scalars): no exact Y, and
    # (9) is not exact either; (4) checked independently with numpy's eig
    B = randn(n, n, seed=32)
    full = paper_chain(B, rows, "exists")
    assert full["(5)"] > 0.1 and full["(9)"] > 0.1
    lam, u = np.linalg.eig(B.numpy())
    r = rows.numpy()
    lhs = (n / m) * B.numpy()[:, r] @ u[r, :]
    ref = np.linalg.norm(lhs - u * lam) / np.linalg.norm(u * lam)
    assert paper_chain(B, rows)["(4)"] == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="coefficient must be"):
        paper_chain(A, rows, "nystrom")


def test_skeleton_checks_on_rank_m_and_full_rank_matrices():
    """The theorem behind eq. (9): Â reproduces the sampled rows and columns, "A − Â" is the
    Schur complement A_RR − A_Rm A_mm⁻¹ A_mR on the other indices, and rank A = m + rank S —
    for a rank-m matrix (Â = A) and a full-rank one (Â ≠ A) alike. The Schur complement is
    recomputed here with an explicit inverse."""
    n, m = 30, 5
    rows = landmarks(n, m, seed=3)
    exact = skeleton_checks(rank_m(n, m, 33), rows)
    assert exact["rel_error"] < 1e-10 and exact["sampled"] < 1e-12 and exact["schur"] < 1e-12
    assert exact["rank_a"] == m and exact["rank_s"] == 0
    B = randn(n, n, seed=34)
    full = skeleton_checks(B, rows)
    assert full["rel_error"] > 0.1 and full["sampled"] < 1e-12 and full["schur"] < 1e-12
    assert full["rank_a"] == n and full["rank_a"] == m + full["rank_s"]
    rest = torch.tensor([i for i in range(n) if i not in set(rows.tolist())])
    s = B[rest][:, rest] - B[rest][:, rows] @ torch.linalg.inv(B[rows][:, rows]) @ B[rows][:, rest]
    resid = (B - nystrom(B, rows))[rest][:, rest]
    torch.testing.assert_close(resid, s, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="duplicate"):
        skeleton_checks(B, [0, 0, 1])
