"""Attention in attention (AiA): linear, second-order polynomial (SoP) and Gaussian kernel attention.

Fang, Zhou, Roy, Ji, Petersson & Harandi, "Attention in Attention Networks for Person
Retrieval", IEEE TPAMI 44(9), 2022, section 3, eqs. (1)–(17), Tables 1, 3, 4 and 8.

An AiA block turns a feature map ``x`` (C channels, N = H·W positions) into a soft mask ``z``
of the same shape and returns ``x^z = z ⊗ x``::

    x̃ = φ(x)                 1×1 conv + BN + ReLU, C → c = C/r                      (1)
    ϕ(x̃) ∈ R^{c'}            kernel features at every position (below)
    m = GAP(ϕ(x̃)) ∈ R^{c'}   what the whole map looks like in kernel feature space    (2)
    ϖ(m) ∈ R^C                inner attention: 1×1 conv + BN + ReLU, c' → C            (3)
    z = sigmoid(ϖ(m) ⊗ ψ(ϕ(x̃))),   x^z = z ⊗ x                                       (4)

``ψ`` (1×1 conv + BN + ReLU, c' → C) is the *outer* attention: a per-position mask computed
from that position's kernel features. The *inner* attention ``ϖ(m)`` is one weight per
channel computed from the whole map; it re-weights the outer attention — attention inside
attention. Without AiA (``inner=False``) the mask is the outer attention alone,
``z = sigmoid(ψ(ϕ(x̃)))`` — eqs. (7), (12) and (17) for the three kernels.

The three kernels (Table 1), each an explicit feature map ϕ with ``⟨ϕ(x), ϕ(y)⟩ ≈ k(x, y)``:

* **linear** ``k(x, y) = xᵀy``: ``ϕ(x̃) = x̃``, ``c' = c`` (eqs. 6–7).
* **second-order polynomial** ``k(x, y) = (xᵀy)²``: :func:`sop_features`, the upper triangle
  of ``x̃x̃ᵀ`` vectorised, ``c' = c(c+1)/2`` (eqs. 8–12). ``GAP`` of these features is the
  (uncentred) covariance of the map — second-order pooling.
* **Gaussian** ``k(x, y) = exp(-‖x-y‖² / 2σ²)``: :class:`RandomFourierFeatures` (Rahimi &
  Recht, NeurIPS 2007), ``ω_i ~ N(0, σ⁻²I)`` fixed, ``ϕ(x) = √(1/c')[cos(ωᵀx); sin(ωᵀx)]``,
  ``2c'`` features for ``c'`` frequencies (eqs. 13–17). The approximation error shrinks like
  ``1/√c'`` (Remark 3, eq. 16) — :func:`rff_kernel_error` measures it.

The paper's baselines (Table 3): :class:`SEBlock` (squeeze-and-excitation, Hu et al., CVPR
2018, eq. 5) and the non-local block, which is
:class:`dmlviz.attention.second_order.SecondOrderAttention` (one copy in the package).
:func:`aia_from_se` builds the AiA block that computes an SE block exactly (eqs. 5 vs 6).
Costs (Table 8) come from :func:`dmlviz.cost.module_cost`.

Interpretations — no copy of the paper was at hand; the structure follows the issue text,
memory of the paper and the authors' public code (``PengfeiFANGanu/Attention-in-Attention-
Networks``, ``models/*_baseline_AIA.py``), and where they leave a choice we say so:

* ``ψ`` and ``ϖ`` are both 1×1 conv + BN + ReLU (the authors' ``_dim_change`` blocks), and
  ``⊗`` in eq. (4) is the channel-wise product of ``ϖ(m) ∈ R^C`` with the ``(C, H, W)`` map
  ``ψ(ϕ(x̃))``. Both factors are ≥ 0 after ReLU, so **z ∈ [0.5, 1)**: a mask can at most halve
  a feature. We keep this (it is what the reference code trains) and the notebook shows it.
* The SoP features keep the paper's upper triangle *without* the √2 on off-diagonal terms
  (as in the authors' code), so ``⟨SoP(x), SoP(y)⟩ = ((xᵀy)² + Σ_i x_i² y_i²) / 2``, not
  ``(xᵀy)²`` as eq. (11) states; ``exact_kernel=True`` adds the √2 and makes it exact.
* The random Fourier frequencies are a fixed buffer (the issue's eqs. 13–15). The authors'
  code instead *learns* a 1×1 conv initialised like ω, followed by BN and cos only.
* ``rff_dim`` is ``c'``, the number of frequencies; the Gaussian features have ``2·c'``
  channels (cos and sin).
* BatchNorm in ``ϖ`` sees one value per image, so training needs batches of ≥ 2 images.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_feature_map, check_int

__all__ = [
    "KINDS",
    "VARIANTS",
    "AttentionEmbedder",
    "KernelAttention",
    "RandomFourierFeatures",
    "SEBlock",
    "aia_from_se",
    "fit_attention_head",
    "gaussian_kernel",
    "kernel_feature_dim",
    "make_attention",
    "median_distance",
    "object_share",
    "rff_kernel_error",
    "sop_features",
    "with_rff",
]

KINDS = ("linear", "sop", "gaussian")


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)



# ----------------------------------------------------------------------------- kernel features

def sop_features(x: torch.Tensor, exact_kernel: bool = False) -> torch.Tensor:
    """Second-order polynomial features: the upper triangle of ``x xᵀ``, vectorised (eqs. 8–9).

    Args:
        x: ``(..., c)`` vectors (for a map ``(B, c, H, W)`` use ``x.movedim(1, -1)``).
        exact_kernel: multiply the off-diagonal terms by √2, so that
            ``⟨SoP(x), SoP(y)⟩ = (xᵀy)²`` exactly (eq. 11's claim). Without it (the paper's
            and the authors' choice) ``⟨SoP(x), SoP(y)⟩ = ((xᵀy)² + Σ_i x_i² y_i²) / 2``.

    Returns:
        ``(..., c(c+1)/2)``: ``x_i x_j`` for ``i ≤ j`` in row-major order of the triangle.
    """
    if not torch.is_tensor(x) or x.ndim < 1 or not x.is_floating_point() or x.shape[-1] < 1:
        raise ValueError(f"x must be a float tensor (..., c) with c >= 1, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    c = x.shape[-1]
    outer = x.unsqueeze(-1) @ x.unsqueeze(-2)  # (..., c, c) x xᵀ, eq. (8)
    rows, cols = torch.triu_indices(c, c, device=x.device)
    feats = outer[..., rows, cols]  # (..., c(c+1)/2) upper triangle, eq. (9)
    if exact_kernel:
        scale = torch.full(rows.shape, math.sqrt(2.0), dtype=x.dtype, device=x.device)
        scale[rows == cols] = 1.0
        feats = feats * scale  # ⟨·,·⟩ = (xᵀy)², eq. (11)
    return feats


class RandomFourierFeatures(nn.Module):
    """Random Fourier features of the Gaussian kernel (eqs. 13–15).

    ``ϕ(x) = √(1/c') [cos(ωᵀx); sin(ωᵀx)]`` with ``c'`` fixed frequencies ``ω_i ~ N(0, σ⁻² I)``,
    so that ``⟨ϕ(x), ϕ(y)⟩ = (1/c') Σ_i cos(ω_iᵀ(x - y)) → exp(-‖x - y‖² / 2σ²)``.

    Args:
        in_dim: ``c``, the dimension of the input vectors.
        rff_dim: ``c'``, the number of random frequencies (output has ``2·c'`` features).
        sigma: σ, the kernel width (> 0).
        seed: seed of the frequencies (default: the global torch generator, so
            ``torch.manual_seed`` before building a model fixes them).

    Attributes:
        omega: ``(c, c')`` buffer (saved with the state dict, never trained).
    """

    def __init__(self, in_dim: int, rff_dim: int = 480, sigma: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__()
        self.in_dim = check_int(in_dim, "in_dim", 1)
        self.rff_dim = check_int(rff_dim, "rff_dim", 1)
        self.sigma = _check_positive(sigma, "sigma")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        omega = torch.randn(self.in_dim, self.rff_dim, generator=gen) / self.sigma  # eq. (14)
        self.register_buffer("omega", omega)

    @property
    def out_dim(self) -> int:
        return 2 * self.rff_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(..., c)``. Returns: ``(..., 2c')`` features."""
        if not torch.is_tensor(x) or x.ndim < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be a tensor (..., {self.in_dim}), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        proj = x @ self.omega.to(x.dtype)  # (..., c') ωᵀx
        scale = math.sqrt(1.0 / self.rff_dim)
        return scale * torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)  # eq. (15)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, rff_dim={self.rff_dim}, sigma={self.sigma:g}"


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Exact Gaussian kernel ``exp(-‖x_i - y_j‖² / 2σ²)``: ``(n, c), (m, c)`` → ``(n, m)``."""
    sigma = _check_positive(sigma, "sigma")
    return torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma**2))  # eq. (13)


def median_distance(x: torch.Tensor, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the rows of ``x (n, c)`` — the "median
    heuristic" for the Gaussian kernel's σ (a subsample of ``max_points`` rows if larger)."""
    if not torch.is_tensor(x) or x.ndim != 2 or len(x) < 2:
        raise ValueError(f"x must be a tensor (n, c) with n >= 2, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if len(x) > max_points:
        gen = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=gen)[:max_points]]
    return float(torch.pdist(x.double()).median())


def rff_kernel_error(x: torch.Tensor, rff_dims, sigma: float = 1.0, seeds=(0, 1, 2),
                     y: torch.Tensor | None = None) -> dict[int, float]:
    """Mean absolute error of random-Fourier inner products against the exact Gaussian kernel.

    For every ``c'`` in ``rff_dims`` and every seed, draws the frequencies, computes
    ``|⟨ϕ(x_i), ϕ(y_j)⟩ - k(x_i, y_j)|`` for all pairs and averages over pairs and seeds
    (Remark 3 / eq. 16: it should shrink like ``1/√c'``).

    Args:
        x: ``(n, c)`` vectors.
        rff_dims: the ``c'`` to try.
        sigma: σ of the kernel.
        seeds: seeds of the frequencies.
        y: ``(m, c)`` second set (default ``x``).

    Returns:
        ``{c': mean absolute error}``.
    """
    if not torch.is_tensor(x) or x.ndim != 2:
        raise ValueError(f"x must be a tensor (n, c), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    y = x if y is None else y
    if not torch.is_tensor(y) or y.ndim != 2 or y.shape[1] != x.shape[1]:
        raise ValueError(f"y must be a tensor (m, {x.shape[1]}), got "
                         f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    x, y = x.double(), y.double()
    exact = gaussian_kernel(x, y, sigma)  # (n, m)
    out = {}
    for d in rff_dims:
        d = check_int(d, "rff_dims[i]", 1)
        errors = []
        for s in seeds:
            rff = RandomFourierFeatures(x.shape[1], d, sigma, seed=s).double()
            errors.append(float((rff(x) @ rff(y).T - exact).abs().mean()))  # eq. (16)
        out[d] = sum(errors) / len(errors)
    return out


def kernel_feature_dim(kind: str, c: int, rff_dim: int = 480) -> int:
    """``c'``-channel count of the kernel features of ``kind`` for ``c`` input channels."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {"linear": c, "sop": c * (c + 1) // 2, "gaussian": 2 * rff_dim}[kind]


# ----------------------------------------------------------------------------- modules

def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """1×1 conv + BN + ReLU (the paper's φ, ψ and ϖ; the authors' ``_dim_change``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())


class _KernelFeatures(nn.Module):
    """Kernel features of every position of a map: ``(B, c, H, W)`` → ``(B, c', H, W)``."""

    def __init__(self, kind: str, c: int, rff_dim: int, sigma: float, exact_kernel: bool):
        super().__init__()
        self.kind, self.exact_kernel = kind, exact_kernel
        self.rff = RandomFourierFeatures(c, rff_dim, sigma) if kind == "gaussian" else None
        self.out_dim = kernel_feature_dim(kind, c, rff_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return x  # ϕ(x̃) = x̃, eq. (6)
        v = x.movedim(1, -1)  # (B, H, W, c)
        f = sop_features(v, self.exact_kernel) if self.kind == "sop" else self.rff(v)
        return f.movedim(-1, 1)  # (B, c', H, W)


class KernelAttention(nn.Module):
    """Linear / SoP / Gaussian kernel attention, with (AiA) or without inner attention.

    Args:
        channels: ``C`` of the input map.
        kind: ``"linear"``, ``"sop"`` or ``"gaussian"`` (the kernel of Table 1).
        inner: use the inner attention ``ϖ(GAP(ϕ(x̃)))`` (AiA, eq. 4); ``False`` gives the
            outer attention alone (eqs. 7, 12, 17).
        reduction: ``r``; φ maps ``C → C/r`` channels (``C`` must be divisible by ``r``).
        rff_dim: ``c'``, random frequencies of the Gaussian kernel (ignored otherwise).
        sigma: σ of the Gaussian kernel (ignored otherwise).
        exact_kernel: SoP features with √2 off-diagonal terms (see :func:`sop_features`).

    Attributes:
        reduce: φ, 1×1 conv + BN + ReLU ``C → c`` (eq. 1).
        features: the kernel feature map ϕ, ``c → c'`` channels (``features.out_dim``).
        outer: ψ, 1×1 conv + BN + ReLU ``c' → C``, the outer attention.
        inner: ϖ, 1×1 conv + BN + ReLU ``c' → C`` on the pooled features (eqs. 2–3), or
            ``None`` without AiA.
    """

    def __init__(self, channels: int, kind: str = "linear", inner: bool = True,
                 reduction: int = 4, rff_dim: int = 480, sigma: float = 1.0,
                 exact_kernel: bool = False) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.reduction = check_int(reduction, "reduction", 1)
        if channels % reduction:
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            raise ValueError(f"channels must be divisible by reduction: channels={channels}, "
                             f"reduction={reduction}; allowed reductions: {divisors}")
        self.rff_dim = check_int(rff_dim, "rff_dim", 1)
        self.sigma = _check_positive(sigma, "sigma")
        self.kind, self.use_inner, self.exact_kernel = kind, bool(inner), bool(exact_kernel)
        c = channels // reduction
        self.reduce = _conv_bn_relu(channels, c)  # φ, eq. (1)
        self.features = _KernelFeatures(kind, c, self.rff_dim, self.sigma, self.exact_kernel)
        self.outer = _conv_bn_relu(self.features.out_dim, channels)  # ψ
        self.inner = _conv_bn_relu(self.features.out_dim, channels) if inner else None  # ϖ

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Mask the map.

        Args:
            x: ``(B, C, H, W)``.
            return_maps: also return ``{"z": (B, C, H, W) mask, "inner": (B, C) inner
                attention ϖ(m) (None without AiA), "features": (B, c', H, W) ϕ(x̃)}``.

        Returns:
            ``x^z = z ⊗ x``, ``(B, C, H, W)``; and the maps if asked.
        """
        check_feature_map(x, "x", self.channels, module=self)
        k = self.features(self.reduce(x))  # (B, c', H, W) ϕ(φ(x)), eq. (1)
        outer = self.outer(k)  # (B, C, H, W) ψ(ϕ(x̃))
        w = None
        if self.inner is not None:
            m = k.mean(dim=(2, 3), keepdim=True)  # (B, c', 1, 1) GAP, eq. (2)
            w = self.inner(m)  # (B, C, 1, 1) ϖ(m), eq. (3)
            outer = w * outer  # (B, C, H, W) ϖ(m) ⊗ ψ(ϕ(x̃)), eq. (4)
        z = torch.sigmoid(outer)  # (B, C, H, W) eq. (4) / (7), (12), (17) without AiA
        y = z * x  # x^z = z ⊗ x, eq. (4)
        if not return_maps:
            return y
        return y, {"z": z, "inner": None if w is None else w.flatten(1), "features": k}

    def extra_repr(self) -> str:
        extra = {"gaussian": f", rff_dim={self.rff_dim}, sigma={self.sigma:g}",
                 "sop": f", exact_kernel={self.exact_kernel}"}.get(self.kind, "")
        return (f"channels={self.channels}, kind={self.kind!r}, inner={self.use_inner}, "
                f"reduction={self.reduction}{extra}")


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018), the paper's eq. (5):
    ``z = sigmoid(W₂ δ(W₁ GAP(x)))`` per channel, ``x^z = z ⊗ x``.

    Args:
        channels: ``C``.
        reduction: the bottleneck is ``max(1, C // reduction)`` wide.

    Attributes:
        fc1: ``W₁``, ``C → C/r``; fc2: ``W₂``, ``C/r → C`` (linear layers with bias).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.reduction = check_int(reduction, "reduction", 1)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``. Returns: ``z ⊗ x`` and, if asked, ``{"z": (B, C)}``."""
        check_feature_map(x, "x", self.channels, module=self)
        z = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))  # (B, C) eq. (5)
        y = z[:, :, None, None] * x
        return (y, {"z": z}) if return_maps else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class _Ones(nn.Module):
    """The outer attention switched off: ``ψ(·) ≡ 1`` with C channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return k.new_ones(k.shape[0], self.channels, *k.shape[2:])


def aia_from_se(se: SEBlock) -> KernelAttention:
    """The AiA block that computes ``se`` exactly — SE as a special case of AiA (eqs. 5 vs 6).

    Set up as the linear-kernel AiA block with: φ the identity (no reduction, ``c = C``), the
    outer attention switched off (``ψ ≡ 1``) and the inner attention ϖ equal to SE's
    excitation ``W₂ δ(W₁ ·)`` (as 1×1 convolutions with SE's weights). Then eq. (4) reads
    ``z = sigmoid(W₂ δ(W₁ GAP(x)) ⊗ 1)`` — eq. (5). AiA generalises SE by the per-position
    outer attention that SE lacks. (Our reading of the paper's comparison of eqs. 5 and 6.)

    Args:
        se: a :class:`SEBlock`.

    Returns:
        A :class:`KernelAttention` (``kind="linear"``, ``inner=True``) whose forward equals
        ``se``'s.
    """
    if not isinstance(se, SEBlock):
        raise ValueError(f"se must be an SEBlock, got {type(se).__name__}")
    c = se.channels
    block = KernelAttention(c, kind="linear", inner=True, reduction=1)
    block.reduce = nn.Identity()  # φ = identity: x̃ = x
    block.outer = _Ones(c)  # ψ ≡ 1: no outer attention
    w1 = nn.Conv2d(c, se.fc1.out_features, 1)
    w2 = nn.Conv2d(se.fc1.out_features, c, 1)
    with torch.no_grad():
        w1.weight.copy_(se.fc1.weight[:, :, None, None])
        w1.bias.copy_(se.fc1.bias)
        w2.weight.copy_(se.fc2.weight[:, :, None, None])
        w2.bias.copy_(se.fc2.bias)
    block.inner = nn.Sequential(w1, nn.ReLU(), w2)  # ϖ = W₂ δ(W₁ ·), eq. (5)
    return block.to(se.fc1.weight.device)


def with_rff(block: KernelAttention, sigma: float | None = None,
             rff_dim: int | None = None) -> KernelAttention:
    """A copy of a (trained) Gaussian block with a different σ or fewer frequencies.

    Not retrained: σ rescales the frequencies (``ω ← ω · σ_old / σ``); ``rff_dim = c'' < c'``
    keeps the first ``c''`` frequencies and the matching input columns of ψ and ϖ, scaled
    by ``√(c'/c'')`` so the features keep their norm. Shows how sensitive a trained mask is
    to the kernel's width and to the number of random features (the interactive explorer).

    Args:
        block: a :class:`KernelAttention` with ``kind="gaussian"``.
        sigma: the new σ (default: unchanged).
        rff_dim: the new ``c'``, between 1 and the block's (default: unchanged).
    """
    if not isinstance(block, KernelAttention) or block.kind != "gaussian":
        raise ValueError("block must be a KernelAttention with kind='gaussian', got "
                         f"{getattr(block, 'kind', type(block).__name__)!r}")
    new = copy.deepcopy(block)
    rff = new.features.rff
    if sigma is not None:
        sigma = _check_positive(sigma, "sigma")
        rff.omega.mul_(rff.sigma / sigma)
        rff.sigma = new.sigma = sigma
    if rff_dim is not None and rff_dim != rff.rff_dim:
        old = rff.rff_dim
        rff_dim = check_int(rff_dim, "rff_dim", 1, old)
        keep = torch.cat([torch.arange(rff_dim), old + torch.arange(rff_dim)])  # cos and sin
        rff.omega = rff.omega[:, :rff_dim].clone()
        rff.rff_dim = new.rff_dim = rff_dim
        new.features.out_dim = 2 * rff_dim
        for seq in (new.outer, new.inner):
            if seq is None:
                continue
            conv = seq[0]
            small = nn.Conv2d(2 * rff_dim, conv.out_channels, 1).to(conv.weight.device)
            with torch.no_grad():
                small.weight.copy_(conv.weight[:, keep] * math.sqrt(old / rff_dim))
                small.bias.copy_(conv.bias)
            seq[0] = small
    return new


# ----------------------------------------------------------------------------- DML head

VARIANTS = ("baseline", "se", "nonlocal", "lin", "sop", "gau",
            "lin_no_aia", "sop_no_aia", "gau_no_aia")
_KIND = {"lin": "linear", "sop": "sop", "gau": "gaussian"}


def make_attention(name: str, channels: int, *, reduction: int = 4, rff_dim: int = 480,
                   sigma: float = 1.0, exact_kernel: bool = False, se_reduction: int = 16,
                   nonlocal_zeta: float = 1.0) -> nn.Module | None:
    """The attention module of one row of the paper's Table 3, by name.

    Args:
        name: one of :data:`VARIANTS`: ``"baseline"`` (no attention: ``None``), ``"se"``,
            ``"nonlocal"`` (:class:`~dmlviz.attention.second_order.SecondOrderAttention`,
            ``C' = C/2``), ``"lin"``, ``"sop"``, ``"gau"`` (AiA) and the same with
            ``"_no_aia"`` (outer attention only).
        channels: ``C``.
        reduction, rff_dim, sigma, exact_kernel: of the kernel attention blocks.
        se_reduction: the SE bottleneck's reduction.
        nonlocal_zeta: ζ of the non-local block's softmax.
    """
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {VARIANTS}, got {name!r}")
    if name == "baseline":
        return None
    if name == "se":
        return SEBlock(channels, se_reduction)
    if name == "nonlocal":
        from dmlviz.attention.second_order import SecondOrderAttention

        return SecondOrderAttention(channels, zeta=nonlocal_zeta)
    kind = _KIND[name.removesuffix("_no_aia")]
    return KernelAttention(channels, kind, inner=not name.endswith("_no_aia"),
                           reduction=reduction, rff_dim=rff_dim, sigma=sigma,
                           exact_kernel=exact_kernel)


class AttentionEmbedder(nn.Module):
    """DML head on a frozen feature map: attention block → GAP → linear → L2-normalise.

    Args:
        channels: ``C`` of the input map.
        embedding_dim: ``D``.
        attention: any module ``(B, C, H, W) → (B, C, H, W)`` (e.g. :func:`make_attention`),
            or ``None`` for the baseline (GAP of the raw map).
    """

    def __init__(self, channels: int, embedding_dim: int, attention: nn.Module | None = None):
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.attention = attention
        self.linear = nn.Linear(channels, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C, H, W)``. Returns: ``(B, D)`` unit-norm embeddings."""
        check_feature_map(x, "x", self.channels, module=self)
        if self.attention is not None:
            x = self.attention(x)  # (B, C, H, W)
        return F.normalize(self.linear(x.mean(dim=(2, 3))), dim=1)  # (B, D)


def fit_attention_head(name: str, train_maps: torch.Tensor, train_labels: torch.Tensor,
                       test_maps: torch.Tensor, test_labels: torch.Tensor, *,
                       embedding_dim: int = 64, seed: int = 0, epochs: int = 10, p: int = 8,
                       k: int = 4, lr: float = 1e-3, eval_every: int = 1,
                       device: str | torch.device = "auto", progress: bool = False,
                       **attention_kwargs):
    """Build the ``name`` head from ``seed`` and train it with the multi-similarity loss.

    The model is built right after ``torch.manual_seed(seed)``, so every variant of one seed
    sees the same batches; training is :func:`dmlviz.train.fit` (P×K batches, AdamW,
    checkpoint cache).

    Args:
        name: one of :data:`VARIANTS`.
        train_maps: ``(N, C, H, W)`` cached backbone maps of the training images.
        train_labels: ``(N,)`` class ids.
        test_maps, test_labels: the unseen classes, for Recall@K every ``eval_every`` epochs.
        embedding_dim: ``D``.
        seed: seeds the initial weights (and the random frequencies) and the batch order.
        epochs, p, k, lr, eval_every, device, progress: as for :func:`dmlviz.train.fit`.
        **attention_kwargs: for :func:`make_attention` (``reduction``, ``rff_dim``, ``sigma`` …).

    Returns:
        ``(model, history)``: the trained :class:`AttentionEmbedder` (eval mode) and its
        :class:`dmlviz.train.History`.
    """
    from dmlviz.losses import MultiSimilarityLoss
    from dmlviz.train import fit
    from dmlviz.utils import seed_everything

    check_feature_map(train_maps, "train_maps")
    check_feature_map(test_maps, "test_maps", train_maps.shape[1])
    seed_everything(seed)
    c = train_maps.shape[1]
    model = AttentionEmbedder(c, embedding_dim, make_attention(name, c, **attention_kwargs))
    history = fit(model, MultiSimilarityLoss(), train_maps, train_labels, test_inputs=test_maps,
                  test_labels=test_labels, epochs=epochs, p=p, k=k, lr=lr,
                  eval_every=eval_every, seed=seed, device=device, progress=progress)
    return model, history


# ----------------------------------------------------------------------------- masks on objects

def object_share(energy: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Share of a non-negative map's total that lies on the object, per image.

    ``Σ_n e_n m_n / Σ_n e_n`` with ``m_n`` the object fraction of cell ``n``
    (:func:`dmlviz.attention.second_order.object_fraction`). Comparing the share of the
    masked map ``x^z`` with that of the input map ``x`` says whether the mask moved the
    feature energy towards the object.

    Args:
        energy: ``(B, N)`` or ``(B, H, W)`` non-negative values (e.g. the channel norm of a map).
        fraction: ``(B, N)`` object fraction per cell.

    Returns:
        ``(B,)`` shares in [0, 1].
    """
    if not torch.is_tensor(energy) or energy.ndim not in (2, 3):
        raise ValueError(f"energy must be a tensor (B, N) or (B, H, W), got "
                         f"{tuple(energy.shape) if torch.is_tensor(energy) else type(energy).__name__}")
    e = energy.flatten(1).double()
    if not torch.is_tensor(fraction) or fraction.shape != e.shape:
        raise ValueError(f"fraction must be (B, N) = {tuple(e.shape)} to match energy, got "
                         f"{tuple(fraction.shape) if torch.is_tensor(fraction) else type(fraction).__name__}")
    if (e < 0).any():
        raise ValueError("energy must be non-negative (use a norm or the mask itself)")
    return (e * fraction.double()).sum(1) / e.sum(1).clamp_min(1e-12)
