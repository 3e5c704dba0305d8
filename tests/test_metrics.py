"""dmlviz.metrics against pytorch-metric-learning, sklearn, scipy, slow loops and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from scipy.spatial.distance import cdist
from scipy.stats import entropy
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from dmlviz.checks import check_embeddings
from dmlviz.metrics import (
    embedding_space_density,
    knn,
    retrieval_metrics,
    spectral_decay,
)


def clustered(seed: int, n: int = 240, d: int = 12, classes: int = 12, noise: float = 1.2,
              singleton: bool = False):
    """Random clustered data with unequal class sizes (and optionally a 1-sample class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    if singleton:
        labels[0] = classes  # a class with a single sample: R = 0 for that query
    centres = rng.normal(size=(classes + 1, d))
    x = centres[labels] + noise * rng.normal(size=(n, d))
    return torch.from_numpy(x), torch.from_numpy(labels)


def angles(deg) -> torch.Tensor:
    rad = torch.tensor(deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)  # (N, 2) unit vectors


# --------------------------------------------------------------------------- knn


def brute_force_knn(q: np.ndarray, r: np.ndarray, k: int, self_search: bool):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    sims, idx = [], []
    for i in range(len(qn)):
        cand = [(float(qn[i] @ rn[j]), j) for j in range(len(rn)) if not (self_search and j == i)]
        cand.sort(key=lambda t: -t[0])
        sims.append([s for s, _ in cand[:k]])
        idx.append([j for _, j in cand[:k]])
    return np.array(sims), np.array(idx)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 23, 1000])
def test_knn_self_search_matches_slow_loop(chunk_size):
    x = torch.randn(23, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sims, idx = knn(x, k=6, chunk_size=chunk_size)
    ref_s, ref_i = brute_force_knn(x.numpy(), x.numpy(), 6, self_search=True)
    assert sims.shape == idx.shape == (23, 6) and idx.dtype == torch.long
    np.testing.assert_allclose(sims.numpy(), ref_s, atol=1e-12)
    np.testing.assert_array_equal(idx.numpy(), ref_i)


@pytest.mark.parametrize("chunk_size", [2, 5, 64])
def test_knn_separate_reference_matches_slow_loop(chunk_size):
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(11, 4, generator=g), torch.randn(17, 4, generator=g)
    sims, idx = knn(q, r, k=17, chunk_size=chunk_size)  # k = R is allowed with a reference
    ref_s, ref_i = brute_force_knn(q.numpy(), r.numpy(), 17, self_search=False)
    np.testing.assert_allclose(sims.numpy(), ref_s, atol=1e-6)
    np.testing.assert_array_equal(idx.numpy(), ref_i)


def test_knn_excludes_self_by_index_not_value():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # 0, 1, 3 coincide
    sims, idx = knn(x, k=2)
    assert set(idx[0].tolist()) == {1, 3} and set(idx[1].tolist()) == {0, 3}
    assert torch.allclose(sims[:, 0], torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert all(i not in row for i, row in enumerate(idx.tolist()))
    # the same tensor passed as reference is also a self search
    assert torch.equal(knn(x, x, k=2)[1], idx)
    # and without exclusion each query finds itself (or an exact duplicate) first
    s_all, i_all = knn(x, k=4, exclude_self=False)
    assert torch.allclose(s_all[[0, 1, 3], 0], torch.ones(3))
    assert i_all.shape == (4, 4)


def test_knn_keeps_dtype_and_device():
    x = torch.randn(9, 3, dtype=torch.float64)
    s, i = knn(x, k=3)
    assert s.dtype == torch.float64 and s.device == x.device and i.device == x.device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_matches_cpu():
    x = torch.randn(300, 16, dtype=torch.float64)
    s_cpu, i_cpu = knn(x, k=5, chunk_size=64)
    s_gpu, i_gpu = knn(x.cuda(), k=5, chunk_size=64)
    assert s_gpu.device.type == "cuda" and i_gpu.device.type == "cuda"
    assert torch.allclose(s_cpu, s_gpu.cpu(), atol=1e-10)
    assert torch.equal(i_cpu, i_gpu.cpu())
    m_cpu = retrieval_metrics(*clustered(0), nmi=False)
    m_gpu = retrieval_metrics(*(t.cuda() for t in clustered(0)), nmi=False)
    assert m_cpu == pytest.approx(m_gpu, abs=1e-12)


def test_knn_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\], got 5"):
        knn(x, k=5)  # only 4 others once the query itself is excluded
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\], got 6"):
        knn(x, k=6, exclude_self=False)
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\], got 8"):
        knn(x, torch.randn(7, 3), k=8)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\], got 0"):
        knn(x, k=0)
    with pytest.raises(ValueError, match="k must be an integer"):
        knn(x, k=2.0)
    with pytest.raises(ValueError, match=r"same dimension D: queries \(5, 3\), reference \(7, 4\)"):
        knn(x, torch.randn(7, 4), k=2)
    with pytest.raises(ValueError, match=r"queries must be 2-D \(N, D\), got shape \(5,\)"):
        knn(torch.randn(5), k=2)
    with pytest.raises(ValueError, match="chunk_size must be in"):
        knn(x, k=2, chunk_size=0)
    with pytest.raises(ValueError, match="no references to search"):
        knn(torch.randn(1, 3), k=1)


# --------------------------------------------------------------------------- retrieval metrics


def pml_accuracy(x: torch.Tensor, y: torch.Tensor) -> dict:
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count", knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu"))
    return calc.get_accuracy(x.float(), y)  # reference=query: embeddings from the same source


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("singleton", [False, True])
def test_retrieval_matches_pml_accuracy_calculator(seed, singleton):
    x, y = clustered(seed, singleton=singleton)
    x = x.float()
    ours = retrieval_metrics(x, y, nmi=False)
    theirs = pml_accuracy(x, y)
    assert 0.2 < ours["recall@1"] < 0.98  # not a degenerate case
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def slow_recall(x: np.ndarray, y: np.ndarray, k: int) -> float:
    sims = cdist(x, x, "cosine")
    hits, total = 0, 0
    for i in range(len(x)):
        if (y == y[i]).sum() < 2:
            continue  # singleton class: no query
        order = [j for j in np.argsort(sims[i], kind="stable") if j != i][:k]
        hits += int(any(y[j] == y[i] for j in order))
        total += 1
    return hits / total


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_k_matches_slow_loop(seed):
    x, y = clustered(seed, n=120, singleton=True)
    ours = retrieval_metrics(x, y, ks=(1, 3, 5, 10), nmi=False)
    for k in (1, 3, 5, 10):
        assert ours[f"recall@{k}"] == pytest.approx(slow_recall(x.numpy(), y.numpy(), k), abs=1e-12)


def test_keys_types_and_numpy_input():
    x, y = clustered(0, n=80)
    out = retrieval_metrics(x.numpy(), y.numpy())
    assert list(out) == ["recall@1", "recall@2", "recall@4", "recall@8", "map@r",
                         "r_precision", "nmi"]
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in out.values())
    assert out == retrieval_metrics(x, y)  # repeatable (seeded k-means)
    r = [out[f"recall@{k}"] for k in (1, 2, 4, 8)]
    assert r == sorted(r)  # Recall@K never decreases with K


def test_nmi_equals_sklearn_directly():
    x, y = clustered(5, n=150)
    ours = retrieval_metrics(x, y, seed=3)["nmi"]
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    pred = KMeans(n_clusters=len(np.unique(y)), n_init=10, random_state=3).fit_predict(xn)
    assert ours == pytest.approx(normalized_mutual_info_score(y.numpy(), pred), abs=1e-12)


def test_hand_case_four_points():
    # angles 0°, 30° (class A) and 50°, 95° (class B); nearest neighbours by angle:
    #   0° → 30°(A)  hit     30° → 50°(B) miss, then 0°(A)
    #   50° → 30°(A) miss, then 95°(B)       95° → 50°(B) hit
    out = retrieval_metrics(angles([0, 30, 50, 95]), torch.tensor([0, 0, 1, 1]), ks=(1, 2),
                            nmi=False)
    assert out == {"recall@1": 0.5, "recall@2": 1.0, "map@r": 0.5, "r_precision": 0.5}


def test_hand_case_six_points():
    # class A at 0°, 30°, 70°; class B at 45°, 100°, 115° (R = 2 for every query).
    # neighbour lists (classes, nearest first) and the per-query scores:
    #   0°:  A B A B B  → R@1 1, R@2 1, RP 1/2, AP@R (1/1)/2 = 1/2
    #   30°: B A A B B  → R@1 0, R@2 1, RP 1/2, AP@R (1/2)/2 = 1/4
    #   70°: B B A B A  → R@1 0, R@2 0, R@4 1, RP 0, AP@R 0
    #   45°: A A A B B  → R@1 0, R@2 0, R@4 1, RP 0, AP@R 0
    #   100°: B A B A A → R@1 1, RP 1/2, AP@R 1/2
    #   115°: B A B A A → R@1 1, RP 1/2, AP@R 1/2
    x = angles([0, 30, 70, 45, 100, 115])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    out = retrieval_metrics(x, y, ks=(1, 2, 4), nmi=False)
    assert out["recall@1"] == pytest.approx(3 / 6)
    assert out["recall@2"] == pytest.approx(4 / 6)
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["r_precision"] == pytest.approx(2 / 6)
    assert out["map@r"] == pytest.approx(1.75 / 6)


def test_perfect_clusters_score_one():
    x = torch.cat([angles([0, 1, 2]), angles([90, 91, 92]), angles([200, 201])])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    out = retrieval_metrics(x, y, ks=(1, 2, 4))
    assert all(v == pytest.approx(1.0) for v in out.values())


def test_singleton_queries_are_left_out():
    # the singleton at 45° would be a miss for every metric; it must not count
    x = angles([0, 10, 90, 100, 45])
    y = torch.tensor([0, 0, 1, 1, 2])
    out = retrieval_metrics(x, y, ks=(1,), nmi=False)
    assert out == {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0}


def test_retrieval_errors():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        retrieval_metrics(x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="every class has a single sample"):
        retrieval_metrics(x, torch.arange(6))
    with pytest.raises(ValueError, match=r"same length: embeddings has shape \(6, 3\), labels has shape \(5,\)"):
        retrieval_metrics(x, torch.tensor([0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D \(N, D\), got shape \(2, 3, 1\)"):
        retrieval_metrics(torch.randn(2, 3, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be 1-D \(N,\), got shape \(6, 1\)"):
        retrieval_metrics(x, torch.zeros(6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        retrieval_metrics(x, torch.tensor([0.0, 0, 0, 1, 1, 1]))
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"ks \(entry 6; the number of other samples is 5\) must be in \[1, 5\]"):
        retrieval_metrics(x, y, ks=(1, 6))
    with pytest.raises(ValueError, match=r"must be in \[1, 5\], got 0"):
        retrieval_metrics(x, y, ks=(0,))
    with pytest.raises(ValueError, match="non-empty sequence"):
        retrieval_metrics(x, y, ks=())


def test_check_embeddings_messages():
    check_embeddings(torch.randn(3, 2), torch.arange(3))
    check_embeddings(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"feats must be 2-D"):
        check_embeddings(torch.randn(3), name="feats")
    with pytest.raises(ValueError, match=r"targets must be an integer tensor, got dtype torch.bool"):
        check_embeddings(torch.randn(3, 2), torch.ones(3, dtype=torch.bool), labels_name="targets")
    with pytest.raises(ValueError, match="at least one row"):
        check_embeddings(torch.randn(0, 2))


# --------------------------------------------------------------------------- density / spectrum


def roth_density(x: np.ndarray, y: np.ndarray) -> float:
    """Roth et al.'s reference formula written with scipy, class by class."""
    intra = []
    for c in np.unique(y):
        f = x[y == c]
        if len(f) < 2:
            continue
        d = cdist(f, f, "cosine")
        intra.append(d.sum() / (len(f) ** 2 - len(f)))
    coms = [x[y == c].mean(axis=0) for c in np.unique(y)]
    coms = np.array([c / np.linalg.norm(c) for c in coms])
    d = cdist(coms, coms, "cosine")
    inter = d.sum() / (len(d) ** 2 - len(d))
    return float(np.mean(intra) / inter)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_matches_reference_formula(seed):
    x, y = clustered(seed, n=90, singleton=seed == 2)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    assert embedding_space_density(x, y) == pytest.approx(roth_density(xn, y.numpy()), rel=1e-10)


def test_density_hand_case():
    # class 0: (1,0),(0,1): intra distance 1; class 1: (-1,0),(0,-1): intra 1
    # normalised centroids are opposite: inter distance 2 → π_ratio = 1/2
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    parts = embedding_space_density(x, torch.tensor([0, 0, 1, 1]), return_parts=True)
    assert parts == pytest.approx({"pi_intra": 1.0, "pi_inter": 2.0, "pi_ratio": 0.5})
    assert embedding_space_density(3 * x, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.5)


def test_density_larger_means_wider_classes_relative_to_separation():
    """Roth et al. (the CRT paper's eq. 6): "D_ESD = D_Intra / D_Inter". Known answers: two
    classes of two unit vectors at ±θ around opposite axes: intra distance 1 − cos 2θ, class
    means (1, 0) and (−1, 0) at distance 2, so π_ratio = (1 − cos 2θ) / 2 grows with the
    classes' width θ; collapsed classes (θ = 0) give 0."""
    def two_classes(theta):
        a = torch.tensor([[math.cos(theta), math.sin(theta)], [math.cos(theta), -math.sin(theta)]],
                         dtype=torch.float64)
        return torch.cat([a, -a]), torch.tensor([0, 0, 1, 1])
    ratios = []
    for theta in (0.0, 0.3, 0.6, 1.2):
        x, y = two_classes(theta)
        got = embedding_space_density(x, y)
        assert got == pytest.approx((1 - math.cos(2 * theta)) / 2, abs=1e-12)
        ratios.append(got)
    assert ratios == sorted(ratios) and ratios[0] == pytest.approx(0.0, abs=1e-12)


def test_density_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        embedding_space_density(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="a class with >= 2 samples"):
        embedding_space_density(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match="same length"):
        embedding_space_density(torch.randn(4, 2), torch.arange(3))


def test_spectral_decay_uniform_spectrum_is_zero():
    assert spectral_decay(torch.eye(6), drop_largest=False) == pytest.approx(0.0, abs=1e-12)
    assert spectral_decay(torch.eye(6), drop_largest=2) == pytest.approx(0.0, abs=1e-12)


def test_spectral_decay_known_spectrum_both_variants():
    """The CRT paper's eq. (7): "ρ_SD = D_KL(μ_d, V^SV)", the KL divergence of the uniform
    distribution from the normalised singular values. diag(2, 1, 1) has spectrum
    S = (1/2, 1/4, 1/4): ρ(all) = Σ (1/3) log((1/3)/S_i) = (1/3) log(32/27) > 0; without the
    largest (Roth et al.'s plotted @2), S = (1/2, 1/2) is flat: ρ = 0. A larger ρ = a more
    peaked spectrum."""
    x = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    expected = math.log(32 / 27) / 3
    assert spectral_decay(x, drop_largest=False, normalize=False) == pytest.approx(expected, rel=1e-12)
    assert spectral_decay(x, drop_largest=True, normalize=False) == pytest.approx(0.0, abs=1e-12)
    peaked = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
    assert spectral_decay(peaked, drop_largest=False, normalize=False) > expected


def test_compare_spectral_decay_warns_on_different_dimensions():
    """Isotropic Gaussian data: ρ grows with D at fixed N, so a 64-d and a 192-d embedding
    must not be ranked by ρ — the comparison warns."""
    from dmlviz.metrics import compare_spectral_decay

    g = torch.Generator().manual_seed(0)
    small, big = torch.randn(480, 64, generator=g), torch.randn(480, 192, generator=g)
    with pytest.warns(UserWarning, match="different dimension"):
        rho = compare_spectral_decay({"64": small, "192": big}, drop_largest=True)
    assert rho["192"] > rho["64"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_spectral_decay({"a": small, "b": small[:, :64]}, drop_largest=False)
    assert same["a"] == pytest.approx(spectral_decay(small, drop_largest=False))


def test_spectral_decay_needs_explicit_variant():
    with pytest.raises(TypeError, match="drop_largest"):
        spectral_decay(torch.eye(4))


@pytest.mark.parametrize("exclude", [0, 1, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_spectral_decay_matches_scipy(exclude, normalize):
    x, _ = clustered(4, n=60, d=10)
    xs = x.numpy()
    if normalize:
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    s = np.linalg.svd(xs, compute_uv=False)[exclude:]
    p = s / s.sum()
    expected = entropy(np.full(len(p), 1 / len(p)), p)  # KL(U || S)
    got = spectral_decay(x, normalize=normalize, drop_largest=exclude)
    assert got == pytest.approx(expected, rel=1e-10)


def test_spectral_decay_orders_concentration():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(200, 8, generator=g, dtype=torch.float64)
    low_rank = spread[:, :2] @ torch.randn(2, 8, generator=g, dtype=torch.float64)
    low_rank = low_rank + 1e-3 * spread
    assert (spectral_decay(low_rank, drop_largest=False)
            > spectral_decay(spread, drop_largest=False) > 0)


def test_spectral_decay_errors():
    with pytest.raises(ValueError, match=r"drop_largest \(the matrix has 3 singular values; True = 1\) must be in \[0, 1\], got 2"):
        spectral_decay(torch.randn(10, 3), drop_largest=2)
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        spectral_decay(torch.randn(10), drop_largest=False)
