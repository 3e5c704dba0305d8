"""Kernel feature maps of attention in attention (AiA): linear, SoP and random Fourier features.

Fang, Zhou, Roy, Ji, Petersson & Harandi, "Attention in Attention Networks for Person
Retrieval", IEEE TPAMI 44(9), 2022, section 3.2–3.4, Table 1: each kernel of the AiA block is
an explicit feature map ``x̃ = κ(x̄)`` with ``⟨x̃_i, x̃_j⟩ ≈ K(x̄_i, x̄_j)``:

* **linear** ``K(x, y) = xᵀy``: ``x̃ = x̄``, ``c̄`` features (eqs. 6–7);
* **second-order polynomial** ``K(x, y) = (xᵀy)²``: :func:`sop_features`, the upper triangle
  of ``x̄x̄ᵀ`` vectorised, ``c̄(c̄+1)/2`` features (eqs. 8–12);
* **Gaussian** ``K(x, y) = exp(-‖x-y‖² / 2σ²)`` (eq. 13): :class:`RandomFourierFeatures` (Rahimi &
  Recht, NeurIPS 2007), ``κ(x̄) = √(1/c')[cos(ωᵀx̄); sin(ωᵀx̄)]`` with ``ω_i ~ N(0, σ⁻²I)``,
  ``2c'`` features (eqs. 14–16; eq. 15 prints ``ω ~ N(0, I)``, i.e. σ = 1 — the Fourier
  transform of the kernel of eq. 13 is ``N(0, σ⁻²I)``, drawn here); Remark 3 / eq. (16) gives the
  kernel as the features' expectation, and the error shrinks like ``1/√c'`` (Rahimi & Recht's
  bound, not a statement of the paper;
  :func:`rff_kernel_error`). :func:`gaussian_kernel` is the exact kernel they approximate and
  :func:`median_distance` the median heuristic for σ.

The block that uses them, and the choices where the paper leaves room (SoP's √2, the
frequencies' variance, fixed vs learned ω), are described in :mod:`dmlviz.attention.aia`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmlviz.checks import check_choice, check_int, check_positive

__all__ = ["KINDS", "RFF_FEATURES", "RFF_OMEGA", "RandomFourierFeatures", "gaussian_kernel",
           "kernel_feature_dim", "median_distance", "rff_kernel_error", "sop_features"]

KINDS = ("linear", "sop", "gaussian")



RFF_OMEGA = ("fixed", "learned")



RFF_FEATURES = ("cos+sin", "cos")



def sop_features(x: torch.Tensor, exact_kernel: bool = False) -> torch.Tensor:
    """Second-order polynomial features ``SoP(x̄) = Vec(UTri(x̄x̄ᵀ))`` (eqs. 8–9).

    Args:
        x: ``(..., c̄)`` vectors (for a map ``(B, c̄, H, W)`` use ``x.movedim(1, -1)``).
        exact_kernel: multiply the off-diagonal terms by √2, so that
            ``⟨SoP(x), SoP(y)⟩ = (xᵀy)²`` exactly. Without it (eq. 9 and the authors'
            code) ``⟨SoP(x), SoP(y)⟩ = ((xᵀy)² + Σ_u x_u² y_u²) / 2``.

    Returns:
        ``(..., c̄(c̄+1)/2)``: ``x_u x_s`` for ``u ≤ s`` in row-major order of the triangle.
    """
    if not torch.is_tensor(x) or x.ndim < 1 or not x.is_floating_point() or x.shape[-1] < 1:
        raise ValueError(f"x must be a float tensor (..., c) with c >= 1, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    c = x.shape[-1]
    outer = x.unsqueeze(-1) @ x.unsqueeze(-2)  # (..., c̄, c̄) Y = x̄x̄ᵀ, eq. (8)
    rows, cols = torch.triu_indices(c, c, device=x.device)
    feats = outer[..., rows, cols]  # (..., c̄(c̄+1)/2) Vec(UTri(Y)), eq. (9)
    if exact_kernel:
        scale = torch.full(rows.shape, math.sqrt(2.0), dtype=x.dtype, device=x.device)
        scale[rows == cols] = 1.0
        feats = feats * scale  # ⟨·,·⟩ = (xᵀy)²
    return feats



class RandomFourierFeatures(nn.Module):
    """Random Fourier features ``κ(x̄)`` of the Gaussian kernel (eqs. 13–16), and the
    authors'-code variant.

    * ``features="cos+sin"`` (eq. 14): ``κ(x) = √(1/c') [cos(ωᵀx); sin(ωᵀx)]``, ``2c'``
      features, ``⟨κ(x), κ(y)⟩ = (1/c') Σ_i cos(ω_iᵀ(x − y))``.
    * ``features="cos"`` (Rahimi & Recht's second form): ``κ(x) = √(2/c') cos(ωᵀx + b)``
      with phases ``b_i ~ U[0, 2π)``, ``c'`` features; also unbiased for the kernel,
      ``E[2 cos(ωᵀx + b) cos(ωᵀy + b)] = cos(ωᵀ(x − y))``.

    With ``ω_i ~ N(0, σ⁻² I)`` both converge to ``exp(-‖x - y‖² / 2σ²)`` like ``1/√c'``.

    Args:
        in_dim: ``c̄``, the dimension of the input vectors.
        rff_dim: ``c'``, the number of random frequencies.
        sigma: σ, the kernel width (> 0).
        seed: seed of the frequencies (default: the global torch generator, so
            ``torch.manual_seed`` before building a model fixes them).
        omega: ``"fixed"`` (a buffer, never trained: the paper's eqs. 14–15) or
            ``"learned"`` (a parameter initialised with the same draw, trained with the
            model: the authors' code).
        features: ``"cos+sin"`` (eq. 14) or ``"cos"`` (with random phases).
        batch_norm: BatchNorm over the ``c'`` projections ``ωᵀx (+ b)`` before the cosine
            (the authors' ``RFFConv``: conv → BN → cos). It breaks the kernel identity; it
            is here to reproduce Table 8's parameter count.

    Attributes:
        omega: ``(c̄, c')`` frequencies (buffer or parameter).
        phase: ``(c',)`` phases ``b`` for ``features="cos"`` (else ``None``).
        norm: the ``BatchNorm1d(c')`` or ``None``.
    """

    def __init__(self, in_dim: int, rff_dim: int = 480, sigma: float = 1.0,
                 seed: int | None = None, omega: str = "fixed", features: str = "cos+sin",
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.in_dim = check_int(in_dim, "in_dim", 1)
        self.rff_dim = check_int(rff_dim, "rff_dim", 1)
        sigma = check_positive(sigma, "sigma")
        self.omega_mode = check_choice(omega, "omega", RFF_OMEGA)
        self.features = check_choice(features, "features", RFF_FEATURES)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(self.in_dim, self.rff_dim, generator=gen) / sigma  # ω ~ N(0, σ⁻²I)
        b = None
        if self.features == "cos":
            b = torch.rand(self.rff_dim, generator=gen) * (2 * math.pi)  # b ~ U[0, 2π)
        if self.omega_mode == "learned":
            self.omega = nn.Parameter(w)
            self.phase = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("omega", w)
            self.register_buffer("phase", b)
        self.register_buffer("_sigma", torch.tensor(sigma, dtype=torch.float64))
        self.norm = nn.BatchNorm1d(self.rff_dim) if batch_norm else None

    @property
    def sigma(self) -> float:
        """σ the frequencies were drawn (or last rescaled) for."""
        return float(self._sigma)

    @property
    def out_dim(self) -> int:
        """Number of features: ``2c'`` for cos+sin, ``c'`` for cos."""
        return 2 * self.rff_dim if self.features == "cos+sin" else self.rff_dim

    @torch.no_grad()
    def set_sigma(self, sigma: float) -> None:
        """Rescale the frequencies to a new σ (``ω ← ω · σ_old / σ``), as if drawn for it."""
        sigma = check_positive(sigma, "sigma")
        self.omega.mul_(self.sigma / sigma)
        self._sigma.fill_(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(..., c̄)``. Returns: ``(..., out_dim)`` features."""
        if not torch.is_tensor(x) or x.ndim < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be a tensor (..., {self.in_dim}), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        proj = x @ self.omega.to(x.dtype)  # (..., c') ωᵀx̄
        if self.phase is not None:
            proj = proj + self.phase.to(x.dtype)  # ωᵀx̄ + b
        if self.norm is not None:
            proj = self.norm(proj.reshape(-1, self.rff_dim)).reshape(proj.shape)
        if self.features == "cos":
            return math.sqrt(2.0 / self.rff_dim) * torch.cos(proj)
        scale = math.sqrt(1.0 / self.rff_dim)
        return scale * torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)  # eq. (14)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, rff_dim={self.rff_dim}, omega={self.omega_mode!r}, "
                f"features={self.features!r}, batch_norm={self.norm is not None}")



def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Exact Gaussian kernel ``exp(-‖x_i - y_j‖² / 2σ²)``: ``(n, c), (m, c)`` → ``(n, m)``."""
    sigma = check_positive(sigma, "sigma")
    return torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma**2))  # eq. (13)



def median_distance(x: torch.Tensor, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the rows of ``x (n, c)`` — the "median
    heuristic" for the Gaussian kernel's σ (a seeded subsample of ``max_points`` rows if
    larger)."""
    if not torch.is_tensor(x) or x.ndim != 2 or len(x) < 2:
        raise ValueError(f"x must be a tensor (n, c) with n >= 2, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if len(x) > max_points:
        gen = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=gen)[:max_points]]
    return float(torch.pdist(x.detach().double()).median())



def rff_kernel_error(x: torch.Tensor, rff_dims, sigma: float = 1.0, seeds=(0, 1, 2),
                     y: torch.Tensor | None = None, features: str = "cos+sin") -> dict[int, float]:
    """Mean absolute error of random-Fourier inner products against the exact Gaussian kernel.

    For every ``c'`` in ``rff_dims`` and every seed, draws fixed frequencies, computes
    ``|⟨κ(x_i), κ(y_j)⟩ - K(x_i, y_j)|`` for all pairs and averages over pairs and seeds
    (eq. 16 gives the expectation; Rahimi & Recht's bound makes it shrink like ``1/√c'``).

    Args:
        x: ``(n, c)`` vectors.
        rff_dims: the ``c'`` to try.
        sigma: σ of the kernel.
        seeds: seeds of the frequencies.
        y: ``(m, c)`` second set (default ``x``).
        features: ``"cos+sin"`` (eq. 14) or ``"cos"`` (random phases), as for
            :class:`RandomFourierFeatures`.

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
            rff = RandomFourierFeatures(x.shape[1], d, sigma, seed=s, features=features).double()
            with torch.no_grad():
                errors.append(float((rff(x) @ rff(y).T - exact).abs().mean()))  # eq. (16)
        out[d] = sum(errors) / len(errors)
    return out



def kernel_feature_dim(kind: str, c: int, rff_dim: int = 480,
                       rff_features: str = "cos+sin") -> int:
    """Number of kernel features of ``kind`` for ``c`` (= ``c̄``) reduced channels."""
    check_choice(kind, "kind", KINDS)
    check_choice(rff_features, "rff_features", RFF_FEATURES)
    gau = 2 * rff_dim if rff_features == "cos+sin" else rff_dim
    return {"linear": c, "sop": c * (c + 1) // 2, "gaussian": gau}[kind]

