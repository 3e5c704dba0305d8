"""Attention in attention (AiA): linear, second-order polynomial (SoP) and Gaussian kernel attention.

Fang, Zhou, Roy, Ji, Petersson & Harandi, "Attention in Attention Networks for Person
Retrieval", IEEE TPAMI 44(9), 2022 (``shared/papers/aia-attention-in-attention-kernels-tpami.txt``),
section 3, eqs. (1)–(17), Table 1; the block's layers (section 4.4); the baselines and costs of
Tables 3, 4 and 8 (sections 5.2.2, 5.2.3, 5.2.7).

The paper's symbols (used the same way here, in the notebook and in the code comments)
-------------------------------------------------------------------------------------

=====================  =============================  =================================================
paper                  here                           meaning
=====================  =============================  =================================================
``X``, ``x ∈ R^c``     ``x``, ``C`` channels          input map; its local feature at one position
``r``                  ``reduction``                  dimensionality reduction factor
``φ(·)`` (\\varphi)    ``KernelAttention.reduce``     1×1 conv + BN + ReLU, ``c → c̄ = c/r`` (eq. 1)
``x̄ = φ(x)``           ``maps.reduced``               the reduced local feature, ``c̄`` channels
``SoP(·)``, ``Gau(·)``  ``KernelAttention.features``   explicit kernel feature map (Table 1, eqs. 9, 14);
                                                      the identity for the linear kernel
``x̃``                  ``maps.features``              kernel features of ``x̄`` (``x̃ = x̄`` if linear)
``κ(·)``               :class:`~dmlviz.attention.kernels.RandomFourierFeatures`  the randomised embedding of eq. (14): ``Gau = κ``
``ω_i``, ``c'``        ``omega``, ``rff_dim``         random frequencies and their number (``2c'`` features)
``σ``                  ``sigma``                      width of the Gaussian kernel (eq. 13)
``m``                  —                              ``GAP(x̃)``, the global feature (eq. 2)
``ϖ(·)`` (\\varpi)     ``KernelAttention.inner``      inner attention: 1×1 conv + BN + ReLU → ``c``
``ϕ(·)`` (\\phi)       ``KernelAttention.outer``      outer embedding: 1×1 conv + BN + ReLU → ``c``
``x̂ = ϖ(m) ⊗ ϕ(x̃)``   —                              the inter-dependency of global and local (eq. 3)
``z = Sigmoid(x̂)``     ``maps.z``                     the attention mask
``x^z = z ⊗ x``        the block's output             the attended map (eq. 4)
=====================  =============================  =================================================

``φ`` (U+03C6, the paper's ``\\varphi``) is the **reduction**, ``ϕ`` (U+03D5, the paper's
``\\phi``) the **outer embedding**; some fonts draw the two glyphs the other way round, so
the code names them in words (``reduce``, ``outer``). Section 4.4 writes ``ω(·)`` where it
means ``ϖ(·)``. In eq. (5) ``σ(·)`` and ``ξ(·)`` are SE's gating functions, not the kernel width.
The package's shape alphabet writes the paper's ``c`` as ``C``.

The block
---------
::

    x̄ = φ(x)                                    (1)   C → c̄ = C/r
    x̃ = x̄ | SoP(x̄) | Gau(x̄)                  Table 1, eqs. (8)–(9), (13)–(15)
    m = (1/hw) Σ_i x̃_i                          (2)   (the paper writes eq. 2 for x̄, eq. 10 for x̃)
    x̂ = ϖ(m) ⊗ ϕ(x̃),   z = Sigmoid(x̂)          (3), (10)
    x^z = z ⊗ x                                 (4)

``ϖ(m) ∈ R^C`` is one weight per channel computed from the whole map; it re-weights the
per-position outer embedding ``ϕ(x̃)`` — attention inside attention. Without AiA
(``inner=False``) the mask is ``z = Sigmoid(ϕ(x̃))`` — eqs. (7), (12), (17).

The three kernels (Table 1), each an explicit feature map with ``⟨x̃_i, x̃_j⟩ ≈ K(x̄_i, x̄_j)``:

* **linear** ``K(x, y) = xᵀy``: ``x̃ = x̄``, ``c̄`` features (eqs. 6–7).
* **second-order polynomial**: :func:`~dmlviz.attention.kernels.sop_features`, the upper triangle of ``x̄x̄ᵀ``
  vectorised, ``c̄(c̄+1)/2`` features (eqs. 8–12). ``m`` is then the (uncentred)
  auto-correlation of ``X̄`` — second-order pooling.
* **Gaussian** ``K(x, y) = exp(-‖x-y‖² / 2σ²)``: :class:`~dmlviz.attention.kernels.RandomFourierFeatures` (Rahimi &
  Recht, NeurIPS 2007), ``κ(x̄) = √(1/c')[cos(ωᵀx̄); sin(ωᵀx̄)]`` with ``ω_i ~ N(0, σ⁻²I)``,
  ``2c'`` features (eqs. 13–16). The error shrinks like ``1/√c'`` (Remark 3) —
  :func:`~dmlviz.attention.kernels.rff_kernel_error` measures it.

The baselines of Table 3: :class:`SEBlock` (eq. 5) and the non-local block
(:class:`dmlviz.attention.second_order.SecondOrderAttention`, one copy in the package), both
with the paper's reduction ``r = 4`` by default ("We set the dimensionality reduction factor as
4 in both SE and NL blocks", section 5.2.2). :func:`aia_from_se` builds the AiA block that
computes an SE block exactly (eqs. 5 vs 6). :func:`table8_blocks` builds the blocks of Tables 3
and 8 at the paper's input ``480 × 16 × 8`` and :data:`PAPER_COSTS` holds the paper's numbers.

Maps (the package's protocol): ``return_maps=True`` returns ``(output, maps)`` — an
:class:`AiAMaps` (``z``, ``inner``, ``outer``, ``features``, ``reduced``) from
:class:`KernelAttention`, an :class:`SEMaps` (``z (B, C)``) from :class:`SEBlock`.

Choices where the paper leaves room (each is visible in the notebook)
---------------------------------------------------------------------
* ``ϕ`` and ``ϖ`` end in BN + ReLU, as section 4.4 states for all three embedding functions.
  Their product is then ``≥ 0``, so **z ∈ [0.5, 1)**: a mask can at most halve a feature,
  and wherever either factor is exactly 0 (about half of the ReLU outputs at initialisation)
  ``z`` is exactly 0.5. :func:`zero_shares` measures both; ``final_relu=False`` drops the
  ReLU after ``ϕ`` and ``ϖ`` (an ablation, not the paper's block).
* SoP features keep the plain upper triangle (eq. 9 and the authors' code), so
  ``⟨SoP(x), SoP(y)⟩ = ((xᵀy)² + Σ_u x_u² y_u²) / 2``; eq. (11) expands it as if each
  off-diagonal pair were counted twice. ``exact_kernel=True`` adds √2 to the off-diagonal
  terms and makes ``⟨SoP(x), SoP(y)⟩ = (xᵀy)²`` exact.
* Eq. (15) as printed draws ``ω`` from ``N(0, I)`` (σ = 1); the Fourier transform of the
  kernel of eq. (13) is ``N(0, σ⁻²I)``, which is what :class:`~dmlviz.attention.kernels.RandomFourierFeatures` draws.
* The paper's Gaussian features are fixed (``omega="fixed"``, ``features="cos+sin"``:
  eq. 14, "learnable parameters are avoided in the non-linear transformation"). Its
  Table 8 numbers for Gau-attention (0.58 M parameters, 0.044 G) fit instead the authors'
  code: a *learned* ``c̄ → c'`` 1×1 convolution initialised like ``ω`` with a phase
  ``b ~ U[0, 2π)``, BatchNorm and ``cos`` only (``omega="learned"``, ``features="cos"``,
  ``batch_norm=True``: 580,680 parameters and 44.5 M multiply-accumulates at 480×16×8 with
  ``r = 4``, ``c' = 480``; the fixed cos+sin block has 982,440 and 74.2 M). Both are here.
* ``σ``: the paper gives no value. ``sigma="median"`` sets σ to the median distance between
  the reduced features ``x̄`` of the first training batch the block sees (the "median
  heuristic"), computed after ``φ`` — the features the kernel is applied to — never on test
  data (:meth:`KernelAttention.calibrate_sigma` does it on a batch you pass). A fixed number
  is taken as given. ``σ = 1`` on these features makes the kernel ≈ 0 between different
  positions.
* BatchNorm in ``ϖ`` sees one vector per image, so training needs batches of ≥ 2 images.
* The paper's "FLOPs" in Tables 3 and 8 are multiply-accumulates (MACs): a 1×1 convolution
  ``c_in → c_out`` at ``hw`` positions counts ``c_in · c_out · hw``. :func:`dmlviz.cost.count_macs`
  counts them; :func:`dmlviz.cost.count_flops` counts 2 × MACs.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.attention.kernels import (
    KINDS,
    RFF_FEATURES,
    RFF_OMEGA,
    RandomFourierFeatures,
    kernel_feature_dim,
    median_distance,
    sop_features,
)
from dmlviz.attention.second_order import SecondOrderAttention
from dmlviz.checks import check_choice, check_feature_map, check_int, check_positive

__all__ = [
    "ABLATIONS",
    "PAPER_COSTS",
    "VARIANTS",
    "AiAMaps",
    "KernelAttention",
    "SEBlock",
    "SEMaps",
    "aia_from_se",
    "make_attention",
    "table8_blocks",
    "with_rff",
    "zero_shares",
]


def _check_sigma(sigma) -> float | str:
    if sigma == "median":
        return "median"
    if isinstance(sigma, str):
        raise ValueError(f"sigma must be a finite number > 0 or 'median', got {sigma!r}")
    return check_positive(sigma, "sigma")



# ----------------------------------------------------------------------------- modules

def _conv_bn(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """1×1 conv + BN + ReLU (section 4.4: the paper's φ, ϕ and ϖ; the authors' ``_dim_change``);
    ``relu=False`` drops the ReLU (the ``final_relu=False`` ablation)."""
    layers = [nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class _KernelFeatures(nn.Module):
    """Kernel features of every position of a map: ``(B, c̄, H, W)`` → ``(B, c', H, W)``."""

    def __init__(self, kind: str, c: int, rff_dim: int, sigma: float, exact_kernel: bool,
                 omega: str = "fixed", rff_features: str = "cos+sin", rff_batch_norm: bool = False):
        super().__init__()
        self.kind, self.exact_kernel = kind, exact_kernel
        self.rff = (RandomFourierFeatures(c, rff_dim, sigma, omega=omega, features=rff_features,
                                          batch_norm=rff_batch_norm)
                    if kind == "gaussian" else None)
        self.out_dim = kernel_feature_dim(kind, c, rff_dim, rff_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return x  # x̃ = x̄: identity mapping (Table 1)
        v = x.movedim(1, -1)  # (B, H, W, c̄)
        f = sop_features(v, self.exact_kernel) if self.kind == "sop" else self.rff(v)
        return f.movedim(-1, 1)  # (B, c', H, W) x̃ = SoP(x̄), eq. (9) | Gau(x̄), eq. (14)


class AiAMaps(NamedTuple):
    """What :class:`KernelAttention` returns with ``return_maps=True`` (``c̄ = C / r``,
    ``c'`` = ``features.out_dim``).

    Attributes:
        z: ``(B, C, H, W)`` the mask ``z = Sigmoid(x̂)`` (eqs. 3, 10; 7, 12, 17 without AiA).
        inner: ``(B, C)`` the inner attention ``ϖ(m)``, or ``None`` without AiA.
        outer: ``(B, C, H, W)`` the outer embedding ``ϕ(x̃)``.
        features: ``(B, c', H, W)`` the kernel features ``x̃`` (``x̃ = x̄`` for the linear kernel).
        reduced: ``(B, c̄, H, W)`` the reduced local features ``x̄ = φ(x)`` (eq. 1).
    """

    z: torch.Tensor
    inner: torch.Tensor | None
    outer: torch.Tensor
    features: torch.Tensor
    reduced: torch.Tensor


class KernelAttention(nn.Module):
    """Linear / SoP / Gaussian kernel attention, with (AiA) or without inner attention.

    ``forward(x, return_maps=True)`` returns ``(x^z, maps)`` with ``maps`` an :class:`AiAMaps`
    (``maps.z`` ``(B, C, H, W)``, ``maps.inner`` ``(B, C)``, …).

    Args:
        channels: ``C`` (the paper's ``c``) of the input map.
        kind: ``"linear"``, ``"sop"`` or ``"gaussian"`` (the kernel of Table 1).
        inner: use the inner attention ``ϖ(m)`` (AiA, eqs. 3, 10); ``False`` gives the
            outer embedding alone (eqs. 7, 12, 17).
        reduction: ``r``; φ maps ``C → c̄ = C/r`` channels (``C`` must be divisible by ``r``).
        rff_dim: ``c'``, random frequencies of the Gaussian kernel (ignored otherwise).
        sigma: σ of the Gaussian kernel, a number or ``"median"`` (ignored otherwise):
            σ becomes the median distance between the reduced features ``x̄ = φ(x)`` of the
            first batch the block sees in training mode (or of the batch given to
            :meth:`calibrate_sigma`); until then the frequencies are drawn for σ = 1.
        exact_kernel: SoP features with √2 off-diagonal terms (see :func:`~dmlviz.attention.kernels.sop_features`).
        omega, rff_features, rff_batch_norm: the random Fourier features' ``omega``,
            ``features`` and ``batch_norm`` (:class:`~dmlviz.attention.kernels.RandomFourierFeatures`).
        final_relu: end ``ϕ`` and ``ϖ`` with ReLU (section 4.4; then ``z ∈ [0.5, 1)``).
            ``False`` is an ablation: conv + BN only, so ``x̂`` can be negative and ``z``
            anywhere in ``(0, 1)``.

    Attributes:
        reduce: φ, 1×1 conv + BN + ReLU ``C → c̄`` (eq. 1).
        features: the kernel feature map (identity, SoP or Gau), ``c̄ → c'`` channels
            (``features.out_dim``).
        outer: ϕ, 1×1 conv + BN + ReLU ``c' → C``, the outer embedding.
        inner: ϖ, 1×1 conv + BN + ReLU ``c' → C`` on the pooled features ``m``, or ``None``
            without AiA.
    """

    def __init__(self, channels: int, kind: str = "linear", inner: bool = True,
                 reduction: int = 4, rff_dim: int = 480, sigma: float | str = 1.0,
                 exact_kernel: bool = False, omega: str = "fixed",
                 rff_features: str = "cos+sin", rff_batch_norm: bool = False,
                 final_relu: bool = True) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        check_choice(kind, "kind", KINDS)
        self.reduction = check_int(reduction, "reduction", 1)
        if channels % reduction:
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            raise ValueError(f"channels must be divisible by reduction: channels={channels}, "
                             f"reduction={reduction}; allowed reductions: {divisors}")
        self.rff_dim = check_int(rff_dim, "rff_dim", 1)
        self.sigma_mode = _check_sigma(sigma)
        check_choice(omega, "omega", RFF_OMEGA)
        check_choice(rff_features, "rff_features", RFF_FEATURES)
        self.kind, self.use_inner, self.exact_kernel = kind, bool(inner), bool(exact_kernel)
        self.final_relu = bool(final_relu)
        c = channels // reduction
        start = 1.0 if self.sigma_mode == "median" else self.sigma_mode
        self.reduce = _conv_bn(channels, c)  # φ, eq. (1)
        self.features = _KernelFeatures(kind, c, self.rff_dim, start, self.exact_kernel,
                                        omega, rff_features, bool(rff_batch_norm))
        self.outer = _conv_bn(self.features.out_dim, channels, self.final_relu)  # ϕ
        self.inner = (_conv_bn(self.features.out_dim, channels, self.final_relu)
                      if inner else None)  # ϖ
        self.register_buffer("sigma_calibrated", torch.tensor(self.sigma_mode != "median"))

    @property
    def sigma(self) -> float | None:
        """σ of the Gaussian kernel now (``None`` for the other kernels)."""
        return self.features.rff.sigma if self.features.rff is not None else None

    @torch.no_grad()
    def calibrate_sigma(self, x: torch.Tensor | None = None, *, reduced: torch.Tensor | None = None,
                        max_points: int = 2000) -> float:
        """Set σ to the median distance between reduced features ``x̄ = φ(x)`` (median heuristic).

        Args:
            x: ``(B, C, H, W)`` a batch of training maps; φ runs on a copy in the block's
                current mode (training mode: BatchNorm with the batch's statistics, as the
                first training step sees it), so no running statistics change.
            reduced: ``(B, c̄, H, W)`` the reduced features themselves, instead of ``x``.
            max_points: positions sampled (seeded) for the median.

        Returns:
            The new σ; the frequencies are rescaled to it (:meth:`RandomFourierFeatures.set_sigma`).
        """
        if self.kind != "gaussian":
            raise ValueError(f"calibrate_sigma needs kind='gaussian', this block is {self.kind!r}")
        if (x is None) == (reduced is None):
            raise ValueError("calibrate_sigma: pass exactly one of x (B, C, H, W) or reduced")
        if reduced is None:
            check_feature_map(x, "x", self.channels, module=self)
            reduced = copy.deepcopy(self.reduce)(x)  # (B, c̄, H, W) x̄ = φ(x)
        vectors = reduced.detach().movedim(1, -1).reshape(-1, reduced.shape[1])  # (B·N, c̄)
        sigma = median_distance(vectors, max_points=max_points)
        if not sigma > 0:
            raise ValueError("calibrate_sigma: the reduced features of this batch are all equal "
                             "(median distance 0); pass a batch with more than one image")
        self.features.rff.set_sigma(sigma)
        self.sigma_calibrated.fill_(True)
        return sigma

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Mask the map.

        Args:
            x: ``(B, C, H, W)``.
            return_maps: also return an :class:`AiAMaps` (``z``, ``inner``, ``outer``,
                ``features``, ``reduced``).

        Returns:
            ``x^z = z ⊗ x``, ``(B, C, H, W)``; with ``return_maps`` ``(x^z, AiAMaps)``.
        """
        check_feature_map(x, "x", self.channels, module=self)
        xr = self.reduce(x)  # (B, c̄, H, W) x̄ = φ(x), eq. (1)
        if self.training and not bool(self.sigma_calibrated) and self.kind == "gaussian":
            self.calibrate_sigma(reduced=xr)  # σ = median distance of this batch's x̄
        k = self.features(xr)  # (B, c', H, W) x̃
        outer = self.outer(k)  # (B, C, H, W) ϕ(x̃)
        w = None
        xh = outer
        if self.inner is not None:
            m = k.mean(dim=(2, 3), keepdim=True)  # (B, c', 1, 1) m = GAP(x̃), eqs. (2), (10)
            w = self.inner(m)  # (B, C, 1, 1) ϖ(m)
            xh = w * outer  # (B, C, H, W) x̂ = ϖ(m) ⊗ ϕ(x̃), eq. (3)
        z = torch.sigmoid(xh)  # (B, C, H, W) z = Sigmoid(x̂); eqs. (7), (12), (17) without AiA
        y = z * x  # x^z = z ⊗ x, eq. (4)
        if not return_maps:
            return y
        return y, AiAMaps(z=z, inner=None if w is None else w.flatten(1), outer=outer,
                          features=k, reduced=xr)

    def extra_repr(self) -> str:
        rff = self.features.rff
        extra = {"sop": f", exact_kernel={self.exact_kernel}"}.get(self.kind, "")
        if rff is not None:
            extra = (f", rff_dim={self.rff_dim}, sigma={self.sigma_mode!r}, omega="
                     f"{rff.omega_mode!r}, rff_features={rff.features!r}, "
                     f"rff_batch_norm={rff.norm is not None}")
        relu = "" if self.final_relu else ", final_relu=False"
        return (f"channels={self.channels}, kind={self.kind!r}, inner={self.use_inner}, "
                f"reduction={self.reduction}{extra}{relu}")


def zero_shares(maps: AiAMaps) -> dict[str, float]:
    """How much of a block's output is exactly at the ReLU's or the sigmoid's floor.

    With ReLU at the end of ``ϖ`` and ``ϕ`` (section 4.4), ``x̂ = ϖ(m) ⊗ ϕ(x̃)`` is 0 wherever
    either factor is 0, and there ``z = Sigmoid(0) = 0.5`` exactly: that entry is halved
    whatever the image.

    Args:
        maps: the :class:`AiAMaps` of ``KernelAttention(..., return_maps=True)``.

    Returns:
        ``{"inner_zero": share of ϖ(m) entries == 0 (nan without AiA), "outer_zero": share
        of ϕ(x̃) entries == 0, "z_half": share of z entries == 0.5}``.
    """
    if not isinstance(maps, AiAMaps):
        raise ValueError("maps must be the AiAMaps of KernelAttention(..., return_maps=True), "
                         f"got {type(maps).__name__}")
    inner = maps.inner
    return {"inner_zero": float("nan") if inner is None else float((inner == 0).double().mean()),
            "outer_zero": float((maps.outer == 0).double().mean()),
            "z_half": float((maps.z == 0.5).double().mean())}


class SEMaps(NamedTuple):
    """What :class:`SEBlock` returns with ``return_maps=True``.

    Attributes:
        z: ``(B, C)`` one weight per channel, ``Sigmoid(σ(ξ(GAP(X))))`` of eq. (5).
    """

    z: torch.Tensor


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018), the paper's eq. (5):
    ``X^z = Sigmoid(σ(ξ(GAP(X)))) ⊗ X`` with ``ξ = W₁``, ``σ = W₂ δ(·)`` — one weight per
    channel.

    Args:
        channels: ``C``.
        reduction: ``r``; the bottleneck is ``max(1, C // r)`` wide. Default 4, the paper's
            ("We set the dimensionality reduction factor as 4 in both SE and NL blocks").

    Attributes:
        fc1: ``W₁``, ``C → C/r``; fc2: ``W₂``, ``C/r → C`` (linear layers with bias).

    ``forward(x, return_maps=True)`` returns ``(z ⊗ x, maps)`` with ``maps`` an
    :class:`SEMaps` (``maps.z`` ``(B, C)``).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.reduction = check_int(reduction, "reduction", 1)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``. Returns: ``z ⊗ x`` ``(B, C, H, W)``; with
        ``return_maps`` ``(z ⊗ x, SEMaps)``, ``SEMaps.z`` ``(B, C)``."""
        check_feature_map(x, "x", self.channels, module=self)
        z = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))  # (B, C) eq. (5)
        y = z[:, :, None, None] * x
        return (y, SEMaps(z=z)) if return_maps else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class _Ones(nn.Module):
    """The outer embedding switched off: ``ϕ(·) ≡ 1`` with C channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return k.new_ones(k.shape[0], self.channels, *k.shape[2:])


def aia_from_se(se: SEBlock) -> KernelAttention:
    """The AiA block that computes ``se`` exactly — SE as a special case of AiA (eqs. 5 vs 6).

    The paper: "if φ(·) is the identity mapping, ϕ(X) = I, and ϖ(·) = σ(ξ(·)), then our AiA
    block realizes the SE block". Set up as the linear-kernel AiA block with φ the identity
    (``x̄ = x``), the outer embedding ``ϕ ≡ 1`` and ``ϖ`` equal to SE's excitation
    ``W₂ δ(W₁ ·)`` (as 1×1 convolutions with SE's weights); eq. (6) then reads eq. (5).

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
    block.reduce = nn.Identity()  # φ = identity: x̄ = x
    block.outer = _Ones(c)  # ϕ(X) = I
    w1 = nn.Conv2d(c, se.fc1.out_features, 1)
    w2 = nn.Conv2d(se.fc1.out_features, c, 1)
    with torch.no_grad():
        w1.weight.copy_(se.fc1.weight[:, :, None, None])
        w1.bias.copy_(se.fc1.bias)
        w2.weight.copy_(se.fc2.weight[:, :, None, None])
        w2.bias.copy_(se.fc2.bias)
    block.inner = nn.Sequential(w1, nn.ReLU(), w2)  # ϖ = σ(ξ(·)) = W₂ δ(W₁ ·), eq. (5)
    return block.to(se.fc1.weight.device)


def with_rff(block: KernelAttention, sigma: float | None = None,
             rff_dim: int | None = None) -> KernelAttention:
    """A copy of a (trained) Gaussian block with a different σ or fewer frequencies.

    Not retrained: σ rescales the frequencies (``ω ← ω · σ_old / σ``); ``rff_dim = c'' < c'``
    keeps the first ``c''`` frequencies (and phases) and the matching input columns of ϕ and
    ϖ, scaled by ``√(c'/c'')`` so the features keep their norm. Shows how sensitive a trained
    mask is to the kernel's width and to the number of random features (the explorer).

    Args:
        block: a :class:`KernelAttention` with ``kind="gaussian"`` (without ``rff_batch_norm``
            when ``rff_dim`` changes).
        sigma: the new σ (default: unchanged).
        rff_dim: the new ``c'``, between 1 and the block's (default: unchanged).
    """
    if not isinstance(block, KernelAttention) or block.kind != "gaussian":
        raise ValueError("block must be a KernelAttention with kind='gaussian', got "
                         f"{getattr(block, 'kind', type(block).__name__)!r}")
    new = copy.deepcopy(block)
    rff = new.features.rff
    if sigma is not None:
        rff.set_sigma(sigma)
    if rff_dim is not None and rff_dim != rff.rff_dim:
        old = rff.rff_dim
        rff_dim = check_int(rff_dim, "rff_dim", 1, old)
        if rff.norm is not None:
            raise ValueError("with_rff: rff_dim cannot change on a block with rff_batch_norm=True")
        keep = torch.arange(rff_dim)
        if rff.features == "cos+sin":
            keep = torch.cat([keep, old + keep])  # cos and sin columns
        with torch.no_grad():
            omega = rff.omega[:, :rff_dim].clone()
            phase = rff.phase[:rff_dim].clone() if rff.phase is not None else None
        if isinstance(rff.omega, nn.Parameter):
            rff.omega = nn.Parameter(omega)
            rff.phase = nn.Parameter(phase) if phase is not None else None
        else:
            rff.omega, rff.phase = omega, phase
        rff.rff_dim = new.rff_dim = rff_dim
        new.features.out_dim = rff.out_dim
        for seq in (new.outer, new.inner):
            if seq is None:
                continue
            conv = seq[0]
            small = nn.Conv2d(len(keep), conv.out_channels, 1).to(conv.weight.device)
            with torch.no_grad():
                small.weight.copy_(conv.weight[:, keep] * math.sqrt(old / rff_dim))
                small.bias.copy_(conv.bias)
            seq[0] = small
    return new


# ----------------------------------------------------------------------------- Tables 3, 4 and 8

VARIANTS = ("baseline", "se", "nonlocal", "lin", "sop", "gau",
            "lin_no_aia", "sop_no_aia", "gau_no_aia")
ABLATIONS = ("lin_no_relu", "sop_no_relu", "gau_no_relu")
_KIND = {"lin": "linear", "sop": "sop", "gau": "gaussian"}


def make_attention(name: str, channels: int, *, reduction: int = 4, rff_dim: int = 480,
                   sigma: float | str = "median", exact_kernel: bool = False,
                   se_reduction: int = 4, nonlocal_reduction: int = 4, nonlocal_zeta: float = 1.0,
                   omega: str = "fixed", rff_features: str = "cos+sin",
                   rff_batch_norm: bool = False) -> nn.Module | None:
    """The attention module of one row of the paper's Tables 3 and 4, by name.

    Args:
        name: one of :data:`VARIANTS`: ``"baseline"`` (no attention: ``None``), ``"se"``,
            ``"nonlocal"`` (:class:`~dmlviz.attention.second_order.SecondOrderAttention`
            with ``C' = C / nonlocal_reduction``), ``"lin"``, ``"sop"``, ``"gau"`` (AiA) and
            the same with ``"_no_aia"`` (outer embedding only); or one of :data:`ABLATIONS`
            (``"lin_no_relu"`` …: AiA without the ReLU after ϕ and ϖ).
        channels: ``C``.
        reduction, rff_dim, sigma, exact_kernel, omega, rff_features, rff_batch_norm: of the
            kernel attention blocks (:class:`KernelAttention`).
        se_reduction: the SE bottleneck's reduction ``r`` (the paper's 4).
        nonlocal_reduction: the non-local block's reduction ``C / C'`` (the paper's 4).
        nonlocal_zeta: ζ of the non-local block's softmax.
    """
    check_choice(name, "name", VARIANTS + ABLATIONS)
    if name == "baseline":
        return None
    if name == "se":
        return SEBlock(channels, se_reduction)
    if name == "nonlocal":
        reduced = max(1, channels // check_int(nonlocal_reduction, "nonlocal_reduction", 1))
        return SecondOrderAttention(channels, reduced=reduced, zeta=nonlocal_zeta)
    base = name.removesuffix("_no_aia").removesuffix("_no_relu")
    return KernelAttention(channels, _KIND[base], inner=not name.endswith("_no_aia"),
                           reduction=reduction, rff_dim=rff_dim, sigma=sigma,
                           exact_kernel=exact_kernel, omega=omega, rff_features=rff_features,
                           rff_batch_norm=rff_batch_norm, final_relu=not name.endswith("_no_relu"))


#: The paper's numbers: parameters (×10⁶) from Tables 3, 4, 8 and "FLOPs" (×10⁹, in fact
#: multiply-accumulates) from Table 8, for an attention block at the input 480 × 16 × 8.
PAPER_COSTS = {
    "Lin w/o AiA (r=4)": {"params_M": 0.12, "GMACs": None, "where": "Table 3"},
    "Lin w/ AiA (r=4)": {"params_M": 0.18, "GMACs": 0.015, "where": "Tables 3, 8"},
    "SE (r=4)": {"params_M": 0.12, "GMACs": None, "where": "Table 3"},
    "NL (r=4)": {"params_M": 0.23, "GMACs": None, "where": "Table 3"},
    "SoP w/ AiA (r=8)": {"params_M": 1.79, "GMACs": 0.117, "where": "Tables 4, 8"},
    "Gau w/ AiA (r=4, c'=480): fixed ω, cos+sin (eq. 14)": {"params_M": 0.58, "GMACs": 0.044,
                                                             "where": "Tables 4, 8"},
    "Gau w/ AiA (r=4, c'=480): learned ω, cos, BN (code)": {"params_M": 0.58, "GMACs": 0.044,
                                                             "where": "Tables 4, 8"},
}


def table8_blocks(channels: int = 480) -> dict[str, nn.Module]:
    """The attention blocks of Tables 3 and 8 with the paper's settings, keyed like
    :data:`PAPER_COSTS` (measure them at ``(480, 16, 8)`` with :func:`dmlviz.cost.module_cost`).

    Lin and SE, NL use ``r = 4`` (section 5.2.2), SoP ``r = 8`` and Gau ``r = 4, c' = 480``
    (Table 8's "Hyper Parameter" row). The Gaussian row comes twice: as the paper's eq. (14)
    (fixed ω, cos and sin, ``2c'`` features) and as the authors' code (a learned ``c̄ → c'``
    projection with phase, BN, cos only). σ does not change a count (fixed at 1 here).
    """
    c = check_int(channels, "channels", 1)
    return {
        "Lin w/o AiA (r=4)": make_attention("lin_no_aia", c, reduction=4, sigma=1.0),
        "Lin w/ AiA (r=4)": make_attention("lin", c, reduction=4, sigma=1.0),
        "SE (r=4)": make_attention("se", c, se_reduction=4),
        "NL (r=4)": make_attention("nonlocal", c, nonlocal_reduction=4),
        "SoP w/ AiA (r=8)": make_attention("sop", c, reduction=8, sigma=1.0),
        "Gau w/ AiA (r=4, c'=480): fixed ω, cos+sin (eq. 14)": make_attention(
            "gau", c, reduction=4, rff_dim=480, sigma=1.0),
        "Gau w/ AiA (r=4, c'=480): learned ω, cos, BN (code)": make_attention(
            "gau", c, reduction=4, rff_dim=480, sigma=1.0, omega="learned", rff_features="cos",
            rff_batch_norm=True),
    }


# ----------------------------------------------------------------------------- DML head


