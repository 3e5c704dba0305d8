"""Tests of dmlviz.attention.nystrom and dmlviz.attention.landmarks (reference formulas,
exactness, bad inputs) and of the figure helpers in dmlviz.viz.matrices."""

import subprocess
import sys
import textwrap

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from dmlviz.attention.landmarks import landmarks, patch_indicator, patches, pool_landmarks
from dmlviz.attention.nystrom import (
    best_rank,
    nystrom,
    nystrom_softmax_attention,
    pinv_iterative,
    relative_error,
    schur_residual,
    softmax_attention,
    svd_bound,
)

matplotlib.use("Agg")
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small LAPACK calls: one thread is as fast and immune to OpenMP spin-waits on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rank_m(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=F64) @ torch.randn(m, n, generator=g, dtype=F64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------ matrix level


@pytest.mark.parametrize("seed", range(5))
def test_exact_on_rank_m_matrices(seed):
    """Sec. 3.1: "we propose to approximate it by randomly sampling m rows and m columns of
    An,n without replacement, and then setting An,n ≈ An,m A−1 m,m Am,n" — with m random
    landmarks the ≈ is exact when rank(A) = m (A_{m,m} invertible)."""
    n, m = 60, 7
    A = rank_m(n, m, seed)
    rows = landmarks(n, m, "random", seed=seed)
    cols = landmarks(n, m, "random", seed=seed + 100)
    assert relative_error(A, nystrom(A, rows)) < 1e-10
    assert relative_error(A, nystrom(A, rows, cols)) < 1e-10  # skeleton / CUR, I != J
    assert relative_error(A, nystrom(A, rows, inverse="pinv")) < 1e-10
    # more landmarks than the rank: A_mm is singular, solve refuses, pinv is still exact
    more = landmarks(n, m + 3, "random", seed=seed)
    with pytest.raises(ValueError, match="singular.*pinv"):
        nystrom(A, more)
    assert relative_error(A, nystrom(A, more, inverse="pinv")) < 1e-8


def test_rectangular_matrix_and_core():
    A = randn(30, 8, seed=1) @ randn(8, 45, seed=2)  # (30, 45), rank 8
    rows, cols = landmarks(30, 8, seed=3), landmarks(45, 8, seed=4)
    assert relative_error(A, nystrom(A, rows, cols)) < 1e-10
    cols12 = landmarks(45, 12, seed=5)  # rectangular 8×12 core: pinv only
    assert relative_error(A, nystrom(A, rows, cols12, inverse="pinv")) < 1e-10
    with pytest.raises(ValueError, match="square A\\[rows, cols\\].*pinv"):
        nystrom(A, rows, cols12)


def test_sampled_rows_and_columns_are_reproduced():
    A = randn(40, 40, seed=2)  # full rank: the rest is badly approximated, these are exact
    rows = landmarks(40, 6, "random", seed=1)
    approx = nystrom(A, rows)
    torch.testing.assert_close(approx[rows], A[rows], rtol=0, atol=1e-10)
    torch.testing.assert_close(approx[:, rows], A[:, rows], rtol=0, atol=1e-10)


def test_residual_equals_schur_complement():
    A = randn(30, 30, seed=3)
    rows = torch.tensor([3, 7, 11, 20])
    rest = torch.tensor([i for i in range(30) if i not in rows.tolist()])
    resid = A - nystrom(A, rows)
    schur = schur_residual(A, rows)
    explicit = A[rest][:, rest] - A[rest][:, rows] @ torch.linalg.inv(A[rows][:, rows]) @ A[rows][:, rest]
    torch.testing.assert_close(schur, explicit, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(resid[rest][:, rest], schur, rtol=1e-10, atol=1e-10)
    assert resid[rows].abs().max() < 1e-10 and resid[:, rows].abs().max() < 1e-10
    # Guttman rank additivity: rank A = m + rank S
    B = rank_m(30, 9, 4)
    assert torch.linalg.matrix_rank(schur_residual(B, rows)) == 9 - 4
    assert schur_residual(A, torch.arange(30)).shape == (0, 0)


@pytest.mark.parametrize("strategy", ["random", "even", "kmeans", "kmeans++"])
def test_error_never_below_the_svd_optimum(strategy):
    for seed, A in enumerate([randn(50, 50, seed=5), softmax_attention(randn(50, 4), randn(50, 4)),
                              randn(50, 3, seed=6) @ randn(3, 50, seed=7) + 0.01 * randn(50, 50)]):
        for m in (2, 5, 10, 20):
            idx = landmarks(50, m, strategy, features=A, seed=seed)
            approx = nystrom(A, idx, inverse="pinv")
            optimum = best_rank(A, m)
            assert relative_error(A, approx) >= relative_error(A, optimum) - 1e-12
            assert torch.linalg.matrix_norm(A - approx, 2) >= torch.linalg.matrix_norm(A - optimum, 2) - 1e-10


def test_best_rank_and_svd_bound_against_numpy():
    import numpy as np

    A = randn(20, 15, seed=8)
    u, s, vh = np.linalg.svd(A.numpy(), full_matrices=False)
    ref = (u[:, :4] * s[:4]) @ vh[:4]
    np.testing.assert_allclose(best_rank(A, 4).numpy(), ref, atol=1e-12)
    bound = svd_bound(A, [0, 4, 15])
    assert bound[0] == pytest.approx(1.0) and bound[2] == pytest.approx(0.0, abs=1e-12)
    assert bound[1] == pytest.approx(np.linalg.norm(A.numpy() - ref) / np.linalg.norm(A.numpy()))


def test_iterative_pinv_converges_to_torch_pinv():
    for a in (randn(8, 8, seed=9) + 6 * torch.eye(8, dtype=F64),  # condition number 5
              randn(8, 8, seed=10),  # condition number 33
              randn(6, 9, seed=11)):  # rectangular
        torch.testing.assert_close(pinv_iterative(a, 60), torch.linalg.pinv(a), rtol=1e-10, atol=1e-10)
    # rank 3 of 8: converges, then the rounding noise in the null space (×3.25 per step) explodes
    a = randn(8, 3, seed=12) @ randn(3, 8, seed=13)
    torch.testing.assert_close(pinv_iterative(a, 10), torch.linalg.pinv(a), rtol=1e-9, atol=1e-9)
    assert (pinv_iterative(a, 60) - torch.linalg.pinv(a)).abs().max() > 1


def test_iterative_pinv_follows_its_scalar_recurrence():
    # diagonal a: every x = σ²/(‖a‖₁‖a‖∞) moves by 1 − f(x) = ¼(1 − x)³(4 − x)
    sigma = torch.tensor([4.0, 1.0, 0.1], dtype=F64)
    x = sigma**2 / (sigma.max() ** 2)
    for _ in range(6):
        x = 1 - 0.25 * (1 - x) ** 3 * (4 - x)
    z = pinv_iterative(torch.diag(sigma), 6)
    torch.testing.assert_close(torch.diagonal(z) * sigma, x)
    assert (x[2] < 0.6).item()  # six steps do not invert a condition number of 40


# ------------------------------------------------------------------ landmarks and pooling


@pytest.mark.parametrize("strategy", ["random", "even", "kmeans", "kmeans++"])
def test_landmarks_are_distinct_sorted_and_seeded(strategy):
    feats = randn(70, 5, seed=14)
    for m in (1, 7, 70):
        idx = landmarks(70, m, strategy, features=feats, seed=3)
        assert idx.dtype == torch.int64 and len(idx) == m and len(idx.unique()) == m
        assert (idx.diff() > 0).all() and idx.min() >= 0 and idx.max() < 70
        torch.testing.assert_close(idx, landmarks(70, m, strategy, features=feats, seed=3))


def test_kmeans_landmarks_find_every_cluster():
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]], dtype=F64)
    feats = centres.repeat_interleave(25, 0) + 0.1 * randn(100, 2, seed=15)
    for strategy in ("kmeans", "kmeans++"):
        idx = landmarks(100, 4, strategy, features=feats, seed=0)
        assert sorted((idx // 25).tolist()) == [0, 1, 2, 3]


def test_even_landmarks_are_patch_centres():
    assert landmarks(10, 5, "even").tolist() == [1, 3, 5, 7, 9]
    idx = landmarks(36, 9, "even", size=(6, 6))
    assert idx.tolist() == [7, 9, 11, 19, 21, 23, 31, 33, 35]
    assert patches(36, 9, (6, 6))[idx].tolist() == list(range(9))


def test_pooling_matches_torch_adaptive_pooling():
    x = randn(2, 12 * 8, 5, seed=16)  # (B, N, C) of a 12×8 map
    fmap = x.transpose(1, 2).reshape(2, 5, 12, 8)
    pooled, patch = pool_landmarks(x, (4, 2), size=(12, 8))
    ref = F.adaptive_avg_pool2d(fmap, (4, 2)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, ref)
    assert torch.bincount(patch).tolist() == [12] * 8
    pooled, _ = pool_landmarks(x, (4, 2), size=(12, 8), pool="max")
    torch.testing.assert_close(pooled, F.adaptive_max_pool2d(fmap, (4, 2)).flatten(2).transpose(1, 2))
    pooled, _ = pool_landmarks(x, 8)  # 1-D segments
    torch.testing.assert_close(pooled, F.adaptive_avg_pool1d(x.transpose(1, 2), 8).transpose(1, 2))
    assert torch.bincount(patches(10, 3)).tolist() == [4, 3, 3]  # uneven: sizes differ by <= 1
    assert patches(49, 9, (7, 7)).unique().tolist() == list(range(9))


# ------------------------------------------------------------------ attention level


def test_attention_equals_exact_when_every_position_is_a_landmark():
    q, k = randn(3, 20, 6, seed=17), randn(3, 20, 6, seed=18)
    exact = softmax_attention(q, k, scale=0.7)
    for kwargs in ({"m": 20}, {"m": (4, 5), "size": (4, 5)}, {"q_landmarks": q, "k_landmarks": k}):
        f = nystrom_softmax_attention(q, k, scale=0.7, return_reconstruction=True, **kwargs)
        assert f.w.shape == (3, 20, 20) and f.b.shape == (3, 20, 20)
        torch.testing.assert_close(f.reconstruction, exact, rtol=1e-9, atol=1e-11)
    f = nystrom_softmax_attention(q[0], k[0], 20, scale=0.7, return_reconstruction=True)  # no batch
    torch.testing.assert_close(f.reconstruction, exact[0], rtol=1e-9, atol=1e-11)
    v = randn(3, 20, 4, seed=19)
    torch.testing.assert_close(f.w @ (f.b @ v[0]), exact[0] @ v[0], rtol=1e-9, atol=1e-11)


def test_indicator_all_landmarks_reconstructs_A_exactly():
    """Eqs. (15)–(16): "we transform A_n,m and A_m,m" by "+ 1(Q_i, K'_j)", and eq. (14)
    "A_n,n ≈ A_n,m A_m,m⁻¹ A_m,n = WB" with "B = A_m,n". With m = n every position is its own
    patch (1 = I) and A_n,m = A_m,m = A, so W = (A + I)(A + I)⁻¹ = I and WB = A exactly;
    checked against the explicit softmax of eq. (10) in float64, batched and with a 2-D grid."""
    q, k = randn(3, 24, 4, seed=20), randn(3, 24, 4, seed=21)
    exact = softmax_attention(q, k, scale=0.8)  # (3, 24, 24)
    for kwargs in ({"m": 24}, {"m": (4, 6), "size": (4, 6)}):
        f = nystrom_softmax_attention(q, k, indicator=True, scale=0.8, return_reconstruction=True,
                                      **kwargs)
        torch.testing.assert_close(f.reconstruction, exact, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(f.b, exact, rtol=1e-13, atol=1e-15)  # B = A_m,n, no indicator
    # the deviation kept for teaching ("affinity_b", P added to B too) returns A + I instead
    eye = torch.eye(24, dtype=F64)
    f = nystrom_softmax_attention(q, k, 24, indicator=True, indicator_at="affinity_b", scale=0.8,
                                  return_reconstruction=True)
    torch.testing.assert_close(f.reconstruction, exact + eye)


def test_indicator_rows_of_WB_and_B_sum_to_one():
    """Eq. (13) B = A_m,n is a softmax over the n positions (rows sum to 1); eqs. (15)–(16) add
    1(·,·) to A_n,m and A_m,m only, so (A_m,m + I) 1 = 2·1 = (A_n,m + Pᵀ) 1 and W 1 = 1: the rows
    of WB sum to 1 for any m. The blocks are rebuilt here from the pooled landmarks with an
    explicit indicator matrix and an explicit inverse."""
    for n, grid, size in ((48, (2, 3), (6, 8)), (35, 5, None), (49, (3, 3), (7, 7))):
        q, k = randn(2, n, 5, seed=n), randn(2, n, 5, seed=n + 1)
        f = nystrom_softmax_attention(q, k, grid, size=size, indicator=True, return_reconstruction=True)
        qt, patch = pool_landmarks(q, grid, size=size)
        kt, _ = pool_landmarks(k, grid, size=size)
        m = qt.shape[1]
        P = torch.zeros(m, n, dtype=F64)
        for pos in range(n):
            P[patch[pos], pos] = 1.0  # 1(Q_pos, K'_j): position pos lies in patch j
        a_nm = torch.softmax(q @ kt.transpose(1, 2), -1) + P.T  # eq. (15)
        a_mm = torch.softmax(qt @ kt.transpose(1, 2), -1) + torch.eye(m, dtype=F64)  # eq. (16)
        b = torch.softmax(qt @ k.transpose(1, 2), -1)  # eq. (13), unchanged
        w = a_nm @ torch.linalg.inv(a_mm)
        torch.testing.assert_close(f.b, b)
        torch.testing.assert_close(f.w, w, rtol=1e-10, atol=1e-12)
        ones = torch.ones(2, n, dtype=F64)
        torch.testing.assert_close(b.sum(-1), torch.ones(2, m, dtype=F64))
        torch.testing.assert_close((w @ b).sum(-1), ones, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f.reconstruction.sum(-1), ones, rtol=1e-10, atol=1e-12)
        assert int(torch.linalg.matrix_rank(a_mm[0])) == m  # A_m,m + I invertible


def test_separately_normalised_blocks_are_rescaled_blocks_of_A():
    q, k = randn(40, 5, seed=22), randn(40, 5, seed=23)
    A = softmax_attention(q, k)
    idx = landmarks(40, 8, "random", seed=1)
    f = nystrom_softmax_attention(q, k, q_landmarks=q[idx], k_landmarks=k[idx],
                                  return_reconstruction=True)
    d_n = A[:, idx].sum(1)  # (N,) row sums of the sampled columns
    d_m = A[idx][:, idx].sum(1)  # (M,)
    torch.testing.assert_close(f.a_nm, A[:, idx] / d_n[:, None])
    torch.testing.assert_close(f.b, A[idx])
    ref = (A[:, idx] / d_n[:, None]) @ torch.linalg.solve(A[idx][:, idx], d_m[:, None] * A[idx])
    torch.testing.assert_close(f.reconstruction, ref)
    # rows of W B sum to 1 exactly (A_mm⁻¹ 1 = 1), unlike plain Nyström of A
    torch.testing.assert_close(f.reconstruction.sum(1), torch.ones(40, dtype=F64))
    assert (nystrom(A, idx).sum(1) - 1).abs().max() > 1e-3
    pooled = nystrom_softmax_attention(q, k, 8, return_reconstruction=True)
    torch.testing.assert_close(pooled.reconstruction.sum(1), torch.ones(40, dtype=F64))


def test_indicator_core_is_strictly_diagonally_dominant():
    # property test (seeded loop): random queries/keys, landmark counts and temperatures
    g = torch.Generator().manual_seed(0)
    for trial in range(150):
        n = int(torch.randint(4, 60, (1,), generator=g))
        m = int(torch.randint(1, n + 1, (1,), generator=g))
        c = int(torch.randint(1, 16, (1,), generator=g))
        scale = float(10 ** (torch.rand(1, generator=g) * 2 - 1.5))  # 0.03 .. 3
        q, k = torch.randn(n, c, generator=g, dtype=F64), torch.randn(n, c, generator=g, dtype=F64)
        plain = nystrom_softmax_attention(q, k, m, scale=scale, inverse="pinv").a_mm
        f = nystrom_softmax_attention(q, k, m, indicator=True, scale=scale)  # solve: no error
        torch.testing.assert_close(f.a_mm, plain + torch.eye(m, dtype=F64))
        # |1 + a_ii| − Σ_{j≠i} a_ij = 1 + a_ii − (1 − a_ii) = 2 a_ii > 0 (softmax entries > 0)
        margin = 2 * torch.diagonal(plain)
        assert margin.min() > 0, trial
        # Varah's bound from strict diagonal dominance: ‖(A_mm + I)⁻¹‖_∞ <= 1 / min margin
        assert torch.linalg.inv(f.a_mm).abs().sum(1).max() <= (1 / margin.min()) * (1 + 1e-9)
        assert f.w.isfinite().all()


def test_indicator_core_can_fail_when_the_softmax_underflows():
    # landmark 0 attends only to landmark 1 and vice versa: A_mm = [[0, 1], [1, 0]] in floats
    big = 1e4
    qt = torch.tensor([[0.0, big], [big, 0.0]], dtype=F64)
    kt = torch.eye(2, dtype=F64) * big
    q = torch.cat([qt, qt])
    f = nystrom_softmax_attention(q, q, q_landmarks=qt, k_landmarks=kt, patch=torch.tensor([0, 1, 0, 1]),
                                  indicator=True, inverse="pinv")
    assert torch.linalg.matrix_rank(f.a_mm) == 1
    with pytest.raises(ValueError, match="singular"):
        nystrom_softmax_attention(q, q, q_landmarks=qt, k_landmarks=kt,
                                  patch=torch.tensor([0, 1, 0, 1]), indicator=True)
    with pytest.raises(RuntimeError):  # check=False: torch's own error (or inf) instead of ours
        w = nystrom_softmax_attention(q, q, q_landmarks=qt, k_landmarks=kt, check=False,
                                      patch=torch.tensor([0, 1, 0, 1]), indicator=True).w
        if w.isfinite().all():
            raise RuntimeError("solved a singular system")


def test_batched_solve_with_two_threads_does_not_hang():
    """The CPU solve guard (dmlviz.attention.nystrom.solve_right): after
    torch.set_num_threads(2), a batched torch.linalg.solve with batch >= 2 and M >= ~150 hangs
    in oneMKL's DLASWP on this build. Notebook 02's M = 192 point, batched, with the indicator
    (exact solve), in a subprocess under a timeout; compared with per-item float64 solves."""
    code = textwrap.dedent("""
        import torch
        torch.set_num_threads(2)
        from dmlviz.attention.nystrom import nystrom_softmax_attention, solve_right
        g = torch.Generator().manual_seed(0)
        q = torch.randn(3, 28 * 28, 8, generator=g, dtype=torch.float64)
        k = torch.randn(3, 28 * 28, 8, generator=g, dtype=torch.float64)
        f = nystrom_softmax_attention(q, k, (12, 16), size=(28, 28), indicator=True)  # M = 192
        ref = torch.stack([torch.linalg.solve(f.a_mm[i], f.a_nm[i], left=False) for i in range(3)])
        assert torch.allclose(f.w, ref, rtol=1e-10, atol=1e-12)
        core = f.a_mm.float().requires_grad_()
        out = solve_right(core, f.a_nm.float())  # float32 and backward too
        out.sum().backward()
        assert core.grad.isfinite().all()
        print("ok", tuple(f.w.shape))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok (3, 784, 192)" in proc.stdout, proc.stdout + proc.stderr
    assert "DLASWP" not in proc.stdout + proc.stderr


def test_inverse_variants_agree_at_the_attention_level():
    q, k = randn(2, 36, 4, seed=24), randn(2, 36, 4, seed=25)
    ref = nystrom_softmax_attention(q, k, 4, size=(6, 6), indicator=True).w
    for inverse, iters in (("pinv", 6), ("iterative", 40)):
        w = nystrom_softmax_attention(q, k, 4, size=(6, 6), indicator=True, inverse=inverse,
                                      iterations=iters).w
        torch.testing.assert_close(w, ref, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_raise_clear_errors():
    A = randn(10, 10)
    with pytest.raises(ValueError, match="rows has 12 indices.*m must be <= 10"):
        nystrom(A, list(range(12)))
    with pytest.raises(ValueError, match="duplicate indices \\[3\\]"):
        nystrom(A, [1, 3, 3])
    with pytest.raises(ValueError, match="rows must lie in \\[0, 9\\]"):
        nystrom(A, [0, 10])
    with pytest.raises(ValueError, match="must be square when cols is None"):
        nystrom(randn(10, 6), [0, 1])
    with pytest.raises(ValueError, match="square for a Schur complement"):
        schur_residual(randn(10, 6), [0, 1])
    with pytest.raises(ValueError, match="inverse must be one of"):
        nystrom(A, [0, 1], inverse="lu")
    with pytest.raises(ValueError, match="2-D floating-point"):
        nystrom(torch.ones(10, 10, dtype=torch.int64), [0])
    with pytest.raises(ValueError, match="singular.*condition number.*inverse='pinv'"):
        nystrom(torch.ones(10, 10, dtype=F64), [0, 1])
    with pytest.raises(ValueError, match=r"m \(landmarks\) must be an integer in \[1, n=10\]"):
        landmarks(10, 11)
    with pytest.raises(ValueError, match="not rows of A; use pool_landmarks"):
        landmarks(10, 3, "pool")
    with pytest.raises(ValueError, match="strategy must be one of"):
        landmarks(10, 3, "fps")
    with pytest.raises(ValueError, match="needs features of shape"):
        landmarks(10, 3, "kmeans")
    q = randn(12, 3)
    with pytest.raises(ValueError, match="m \\(landmarks\\) must be at most N = 12"):
        nystrom_softmax_attention(q, q, 13)
    with pytest.raises(ValueError, match="same shape"):
        nystrom_softmax_attention(q, randn(11, 3), 4)
    with pytest.raises(ValueError, match="size=\\(3, 5\\) has H·W = 15"):
        nystrom_softmax_attention(q, q, 4, size=(3, 5))
    with pytest.raises(ValueError, match="indicator=True needs the patch"):
        nystrom_softmax_attention(q, q, q_landmarks=q[:3], k_landmarks=q[:3], indicator=True)
    with pytest.raises(ValueError, match="either m .* not both"):
        nystrom_softmax_attention(q, q, 3, q_landmarks=q[:3], k_landmarks=q[:3])
    with pytest.raises(ValueError, match="give m"):
        nystrom_softmax_attention(q, q)
    with pytest.raises(ValueError, match="cannot be laid out"):
        pool_landmarks(q, 7, size=(3, 4))
    with pytest.raises(ValueError, match="iterations must be in"):
        pinv_iterative(A, 0)
    with pytest.raises(ValueError, match="indicator_at must be one of"):
        nystrom_softmax_attention(q, q, 3, indicator=True, indicator_at="logits")
    with pytest.raises(ValueError, match="same shape"):
        relative_error(A, A[:3])
    assert patch_indicator(torch.tensor([0, -1, 1]), 2).tolist() == [[1, 0, 0], [0, 0, 1]]


# ------------------------------------------------------------------ device and figures


@pytest.mark.gpu
def test_gpu_matches_cpu():
    A = rank_m(50, 6, 28)
    idx = landmarks(50, 6, seed=0)
    torch.testing.assert_close(nystrom(A.cuda(), idx.cuda()).cpu(), nystrom(A, idx))
    q = randn(2, 64, 8, seed=29)
    for inverse in ("solve", "pinv", "iterative"):
        cpu = nystrom_softmax_attention(q, q, 16, size=(8, 8), indicator=True, inverse=inverse,
                                        return_reconstruction=True)
        gpu = nystrom_softmax_attention(q.cuda(), q.cuda(), 16, size=(8, 8), indicator=True,
                                        inverse=inverse, return_reconstruction=True)
        torch.testing.assert_close(gpu.reconstruction.cpu(), cpu.reconstruction)


def test_figure_helpers():
    from dmlviz.viz.matrices import explorer_figure, plot_error_curves, plot_matrices, plot_spectra

    A = randn(12, 12)
    fig = plot_matrices({"A": A.abs(), "B": A}, quantile=0.9)
    assert len(fig.axes) == 4  # two panels, two colour bars
    fig = plot_error_curves([1, 2, 3], {"one": [0.5, 0.2, 0.1], "runs": torch.rand(4, 3)},
                            bound=[0.4, 0.1, 0.05])
    assert len(fig.axes[0].lines) == 3
    with pytest.raises(ValueError, match="2 points for 3 values"):
        plot_error_curves([1, 2, 3], {"bad": [1.0, 2.0]})
    fig = plot_spectra({"A": torch.linalg.svdvals(A)})
    assert fig.axes[0].get_yscale() == "log"
    fmap = randn(6, 5, 5, seed=30)
    for strategy, inverse, indicator in (("pooled (CSALR)", "solve", True), ("kmeans", "pinv", False)):
        fig = explorer_figure(fmap, side=5, grid=2, strategy=strategy, inverse=inverse,
                              indicator=indicator)
        assert len(fig.axes) >= 4
    pytest.importorskip("ipywidgets")
    from dmlviz.viz.matrices import nystrom_explorer

    box = nystrom_explorer(fmap)
    sliders = box.children[0].children
    sliders[1].value = 3  # m side: redraws without error
    assert len(box.children) == 3
    matplotlib.pyplot.close("all")
