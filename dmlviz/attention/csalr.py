"""CSALR: compressed self-attention with low-rank approximation, as an ``nn.Module``.

Chen, Gong, Ge & Du, "Compressed Self-Attention for Deep Metric Learning with Low-Rank
Approximation", IJCAI-20, section 3.2 (eqs. 10–17) and section 3.3 (deep supervision, eq. 18).
The attention-level algebra (pooled landmarks, the three blocks, the indicator) lives in
:func:`dmlviz.attention.nystrom.nystrom_softmax_attention`; this module adds the learned
projections, the residual, multiple heads ("groups"), the deep-supervision head and the
paper's explicit self-attention baseline (eqs. 1–2).

For a feature map ``x`` of ``C`` channels over ``N = H·W`` positions, per group ``g``::

    q = W_q x,  k = W_k x,  v = W_v x                          1×1 convolutions
    A   = softmax_N(s q kᵀ)                       (N×N, never built in forward)      (10)
    q̃, k̃ = avg-pool of q, k over an mh × mw grid of disjoint patches (M = mh·mw)
    A_nm = softmax_M(s q k̃ᵀ), A_mm = softmax_M(s q̃ k̃ᵀ), A_mn = softmax_N(s q̃ kᵀ)   (11–13)
    with the indicator (default): A_nm + Pᵀ, A_mm + I; B = A_mn unchanged            (15–16)
    W = A_nm A_mm⁻¹  (N×M),  B = A_mn  (M×N),  W B ≈ A                             (14)
    f = fuse([W_g (B_g v_g)]_g)         the CSALR module's output
    O = x + α · f,  α initialised to 0   the residual, "drawn out of the CSALR module"  (17)

Deep supervision (section 3.3): "we implement deep supervision before the residual
connection": ``logits_i = Linear(GAP(x ⊙ f))`` — the *input* times the module's output ``f``,
not ``O`` — trained with cross-entropy, ``L = L_F + λ Σ_i L_DS_i`` (eq. 18). Because ``f``
does not pass through α, the branch trains q, k and v from the first step, while α = 0 still
leaves the main branch unchanged (:meth:`CSALR.attend`; the head and the loss are
:class:`dmlviz.heads.PooledEmbedder` and :class:`dmlviz.losses.DeepSupervisedLoss`).

Maps (the package's protocol): ``return_maps=True`` returns ``(output, maps)`` — a
:class:`CSALRMaps` (``W (B, G, N, M)``, ``B (B, G, M, N)``) from :func:`csalr_attention` and
:class:`CSALR`, a :class:`SelfAttentionMaps` (``attention (B, G, N, N)``) from
:class:`SelfAttention`. Landmark grids and patches come from :mod:`dmlviz.attention.landmarks`.

Choices where the paper's text leaves one open (section numbers refer to the paper):

* **Pooling grid.** ``landmarks=(mh, mw)`` cuts the map into an ``mh × mw`` grid of disjoint
  patches; when ``H`` (or ``W``) is divisible by ``mh`` (``mw``) this is exactly
  ``avg_pool2d`` with kernel = stride = ``(H/mh, W/mw)``. When it is not, average pooling
  with kernel = stride = ``⌊H/mh⌋`` would drop the last rows/columns and give a different
  ``M``; we instead use the patches of :func:`dmlviz.attention.landmarks.patches` — every
  position in exactly one patch, patch sizes ``⌊H/mh⌋`` or ``⌈H/mh⌉`` (unlike
  ``adaptive_avg_pool2d``, whose windows overlap). An int ``landmarks`` is laid out as the
  grid closest to the map's aspect.
* **Temperature.** ``scale`` multiplies the logits; the default ``qk_channels_per_group**-0.5``
  (Transformer convention) keeps the softmaxes from saturating on backbone features. The
  paper writes ``softmax(QKᵀ)`` (``scale=1``).
* **Indicator** (eqs. 15–16, as printed; default on): ``A_nm + Pᵀ`` and ``A_mm + I``, with
  ``B = A_mn`` unchanged (see :mod:`dmlviz.attention.nystrom`); ``A_mm + I`` is always
  invertible and ``W B`` has rows summing to 1. ``indicator_at="affinity_b"`` (also ``P`` on
  ``B``) and ``"logit"`` are other readings, kept for teaching, not the paper's form.
* **Inverse.** ``inverse="auto"`` solves exactly with ``A_mm + I`` when the indicator is on
  (always invertible, the paper's ``A_mm⁻¹``) and uses the pseudo-inverse without it (pooled
  landmarks of a smooth map are nearly equal, so ``A_mm`` can be numerically singular).
* **Projections.** ``q, k`` have ``qk_channels`` (default ``C // 8``, as in SAGAN/DANet,
  rounded down to a multiple of ``groups``); ``v`` keeps ``C`` channels. Heads split the
  channels of ``q, k, v`` into ``groups`` equal parts; the fusing 1×1 convolution
  ``C → C`` exists only for ``groups > 1`` (with one group, eq. 17 as written).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.attention.landmarks import landmark_grid, patches
from dmlviz.attention.nystrom import (
    INDICATOR_AT,
    INVERSES,
    inverse_times,
    nystrom_softmax_attention,
)
from dmlviz.checks import check_feature_map, check_int

__all__ = [
    "CSALR",
    "CSALRMaps",
    "SelfAttention",
    "SelfAttentionMaps",
    "csalr_attention",
]


# ----------------------------------------------------------------------------- maps


class CSALRMaps(NamedTuple):
    """What CSALR returns with ``return_maps=True``: the two factors of the compressed map.

    Attributes:
        W: ``(B, G, N, M)`` coefficients ``W = A_nm A_mm⁻¹`` (eq. 14; with the indicator
            ``(A_nm + Pᵀ)(A_mm + I)⁻¹``, eqs. 15–16).
        B: ``(B, G, M, N)`` landmark attention ``B = A_mn`` (eq. 13).

    ``W[b, g] @ B[b, g]`` is the reconstructed ``(N, N)`` attention map of group ``g``.
    """

    W: torch.Tensor
    B: torch.Tensor


class SelfAttentionMaps(NamedTuple):
    """What :class:`SelfAttention` returns with ``return_maps=True``.

    Attributes:
        attention: ``(B, G, N, N)`` the exact map ``softmax_N(s q kᵀ)`` (eq. 1; row = query).
    """

    attention: torch.Tensor


# ----------------------------------------------------------------------------- functional core

def csalr_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, landmarks, *,
                    size: tuple[int, int], indicator: bool = True,
                    indicator_at: str = "affinity", scale: float = 1.0,
                    inverse: str = "auto", return_maps: bool = False):
    """Multi-head CSALR aggregation ``W (B v)`` (eqs. 11–17 without the residual).

    Args:
        q: ``(B, G, N, Cq)`` queries of ``G`` groups (heads).
        k: ``(B, G, N, Cq)`` keys.
        v: ``(B, G, N, Cv)`` values.
        landmarks: ``M`` or ``(mh, mw)`` (see :func:`dmlviz.attention.landmarks.landmark_grid`).
        size: ``(H, W)`` with ``H·W = N``.
        indicator: add the same-patch indicator to ``A_nm`` and ``A_mm`` (eqs. 15–16).
        indicator_at: ``"affinity"`` (the paper), ``"affinity_b"`` or ``"logit"`` (see
            :mod:`dmlviz.attention.nystrom`).
        scale: multiplies the logits.
        inverse: ``"auto"`` (``"solve"`` with the indicator, else ``"pinv"``), ``"solve"``,
            ``"pinv"`` or ``"iterative"``.
        return_maps: also return the factors, a :class:`CSALRMaps` with ``W (B, G, N, M)`` and
            ``B (B, G, M, N)``.

    Without ``return_maps`` the output is computed as ``A_nm (A_mm⁻¹ (B v))`` (an ``M × Cv``
    solve; ``W`` is never formed), with them as ``W (B v)``; the two agree to rounding.

    Half-precision inputs (float16 / bfloat16): the factors ``W`` and ``B`` are computed in
    float32 (PyTorch has no half-precision ``solve``) and cast back; ``W (B v)`` runs in the
    input dtype (without ``return_maps`` everything runs in float32 and is cast back).

    Returns:
        ``out (B, G, N, Cv)`` with ``out = W (B v)`` — the ``N × N`` map is never formed —
        or, with ``return_maps``, ``(out, CSALRMaps(W, B))``.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        if not torch.is_tensor(t) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor (B, G, N, C), got "
                             f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, G, N, Cq), got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, G, N, Cv) with (B, G, N) = {tuple(q.shape[:3])} as q, "
                         f"got {tuple(v.shape)}")
    if inverse != "auto" and inverse not in INVERSES:
        raise ValueError(f"inverse must be 'auto' or one of {INVERSES}, got {inverse!r}")
    b, g, n, _ = q.shape
    if size[0] * size[1] != n:
        raise ValueError(f"size={tuple(size)} has H·W = {size[0] * size[1]} positions but q has "
                         f"N = {n}")
    grid = landmark_grid(landmarks, size)
    if inverse == "auto":
        inverse = "solve" if indicator and indicator_at != "logit" else "pinv"
    low = q.dtype in (torch.float16, torch.bfloat16)  # no half-precision linalg.solve / pinv
    qf, kf = (q.float(), k.float()) if low else (q, k)
    qf, kf = qf.reshape(b * g, n, -1), kf.reshape(b * g, n, -1)  # (B·G, N, Cq)
    (h, w_), (mh, mw) = size, grid
    if h % mh == 0 and w_ % mw == 0:  # kernel = stride pooling: avg_pool2d, no (M, N) matrix
        def pool(t: torch.Tensor) -> torch.Tensor:  # (B·G, N, Cq) → (B·G, M, Cq)
            t = t.transpose(1, 2).reshape(b * g, -1, h, w_)
            return F.avg_pool2d(t, (h // mh, w_ // mw)).flatten(2).transpose(1, 2)

        landmarks = dict(q_landmarks=pool(qf), k_landmarks=pool(kf),
                         patch=patches(n, grid, tuple(size)).to(q.device))
    else:  # disjoint patches of ⌊H/mh⌋ or ⌈H/mh⌉ rows (see the module docstring)
        landmarks = dict(m=grid, size=tuple(size))
    f = nystrom_softmax_attention(
        qf, kf, **landmarks, indicator=indicator, indicator_at=indicator_at, scale=scale,
        inverse=inverse, check=False, compute_w=return_maps)  # eqs. (11)–(16)
    if not return_maps:  # W (B v) = A_nm (A_mm⁻¹ (B v)): an M × Cv solve instead of N × M
        vf = v.float().reshape(b * g, n, -1) if low else v.reshape(b * g, n, -1)  # (B·G, N, Cv)
        z = inverse_times(f.a_mm, f.b @ vf, inverse)  # (B·G, M, Cv)
        return (f.a_nm @ z).reshape(b, g, n, -1).to(v.dtype)  # (B, G, N, Cv)   eq. (17)
    w = f.w.reshape(b, g, n, -1).to(v.dtype)  # (B, G, N, M)
    bm = f.b.reshape(b, g, -1, n).to(v.dtype)  # (B, G, M, N)
    out = w @ (bm @ v)  # (B, G, N, Cv)   eq. (17), W (B V)
    return out, CSALRMaps(W=w, B=bm)


# ----------------------------------------------------------------------------- modules

class _Projections(nn.Module):
    """Shared parts of :class:`CSALR` and :class:`SelfAttention`: 1×1 convolutions for
    q, k, v, the group split, the fusing convolution and the residual weight α."""

    def __init__(self, channels: int, qk_channels: int | None, groups: int,
                 scale: float | None) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.groups = check_int(groups, "groups", 1)
        if self.channels % self.groups:
            raise ValueError(f"channels={channels} is not divisible by groups={groups}: each "
                             "group (head) needs an equal share of the channels")
        if qk_channels is None:
            qk_channels = max(self.groups, (self.channels // 8) // self.groups * self.groups)
        self.qk_channels = check_int(qk_channels, "qk_channels", 1)
        if self.qk_channels % self.groups:
            raise ValueError(f"qk_channels={qk_channels} is not divisible by groups={groups}")
        per_group = self.qk_channels // self.groups
        self.scale = float(per_group ** -0.5 if scale is None else scale)
        self.query = nn.Conv2d(self.channels, self.qk_channels, 1)
        self.key = nn.Conv2d(self.channels, self.qk_channels, 1)
        self.value = nn.Conv2d(self.channels, self.channels, 1)
        self.fuse = nn.Conv2d(self.channels, self.channels, 1) if self.groups > 1 else nn.Identity()
        self.alpha = nn.Parameter(torch.zeros(1))  # α of eq. (17), starts at 0: O = x

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)`` → ``q, k (B, G, N, Cq/G)``, ``v (B, G, N, C/G)``."""
        check_feature_map(x, "x", self.channels, module=self)
        b, g = x.shape[0], self.groups

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, G·c, H, W) → (B, G, N, c)
            return t.flatten(2).reshape(b, g, t.shape[1] // g, -1).transpose(2, 3)

        return heads(self.query(x)), heads(self.key(x)), heads(self.value(x))

    def merge(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``fuse(out)``: the heads ``out (B, G, N, C/G)`` back to ``(B, C, H, W)``, fused."""
        b, c, h, w = x.shape
        y = out.transpose(2, 3).reshape(b, c, h, w)  # heads concatenated along channels
        return self.fuse(y)  # 1×1 convolution over the groups (identity for one group)

    def residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``x + α · fuse(out)``; ``out (B, G, N, C/G)`` back to ``(B, C, H, W)``."""
        return x + self.alpha * self.merge(x, out)  # eq. (17)

    def full_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The exact attention maps ``softmax_N(s q kᵀ)`` (eq. 10): ``(B, G, N, N)``."""
        q, k, _ = self.qkv(x)
        return torch.softmax(self.scale * q @ k.transpose(-1, -2), dim=-1)  # (B, G, N, N) eq. (10)

    def _extra(self) -> str:
        return (f"channels={self.channels}, qk_channels={self.qk_channels}, "
                f"groups={self.groups}, scale={self.scale:.4g}")


class CSALR(_Projections):
    """Compressed self-attention with low-rank approximation (eqs. 10–17).

    Args:
        channels: ``C`` of the input map (divisible by ``groups``).
        qk_channels: channels of q and k (default ``C // 8`` rounded to a multiple of
            ``groups``).
        landmarks: ``M`` or ``(mh, mw)``: the pooling grid of the virtual landmarks.
        groups: heads ``G``; channels split evenly, one CSALR each, fused by a 1×1 conv.
        indicator: the same-patch indicator of eqs. 15–16 (on ``A_nm`` and ``A_mm``).
        indicator_at: ``"affinity"`` (default, the paper), ``"affinity_b"`` or ``"logit"``.
        scale: logit scale (default ``(qk_channels / groups) ** -0.5``; the paper: 1).
        inverse: ``"auto"``, ``"solve"``, ``"pinv"`` or ``"iterative"``.

    Attributes:
        query, key, value: 1×1 convolutions; fuse: 1×1 convolution (identity for one group);
        alpha: the residual weight α, initialised to 0.
    """

    def __init__(self, channels: int, qk_channels: int | None = None, landmarks=(8, 12),
                 groups: int = 1, indicator: bool = True, *, indicator_at: str = "affinity",
                 scale: float | None = None, inverse: str = "auto") -> None:
        super().__init__(channels, qk_channels, groups, scale)
        if indicator_at not in INDICATOR_AT:
            raise ValueError(f"indicator_at must be one of {INDICATOR_AT}, got {indicator_at!r}")
        if inverse != "auto" and inverse not in INVERSES:
            raise ValueError(f"inverse must be 'auto' or one of {INVERSES}, got {inverse!r}")
        if isinstance(landmarks, (tuple, list)):
            landmarks = tuple(check_int(v, "landmarks", 1) for v in landmarks)
            if len(landmarks) != 2:
                raise ValueError(f"landmarks must be an int M or a pair (mh, mw), got {landmarks!r}")
        else:
            landmarks = check_int(landmarks, "landmarks", 1)
        self.landmarks, self.indicator = landmarks, bool(indicator)
        self.indicator_at, self.inverse = indicator_at, inverse

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Apply CSALR.

        Args:
            x: ``(B, C, H, W)`` feature map.
            return_maps: also return the factors (:class:`CSALRMaps`).

        Returns:
            ``O (B, C, H, W)`` = ``x + α · fuse(W (B v))``, and with ``return_maps``
            ``(O, CSALRMaps(W, B))``: ``W (B, G, N, M)``, ``B (B, G, M, N)``;
            ``W[b, g] @ B[b, g]`` is the reconstructed map.
        """
        f, maps = self.attend(x, return_maps=True)  # (B, C, H, W), the module's output
        y = x + self.alpha * f  # (B, C, H, W) eq. (17)
        return (y, maps) if return_maps else y

    def attend(self, x: torch.Tensor, return_maps: bool = False):
        """The CSALR module's output before the residual: ``f = fuse(W (B v))``.

        Args:
            x: ``(B, C, H, W)`` feature map.
            return_maps: also return the factors (:class:`CSALRMaps`).

        Returns:
            ``f (B, C, H, W)`` (``forward`` gives ``x + α f``), with ``return_maps``
            ``(f, CSALRMaps(W, B))``.
        """
        q, k, v = self.qkv(x)  # (B, G, N, Cq/G), (B, G, N, Cq/G), (B, G, N, C/G)
        out, maps = csalr_attention(q, k, v, self.landmarks, size=tuple(x.shape[2:]),
                                    indicator=self.indicator, indicator_at=self.indicator_at,
                                    scale=self.scale, inverse=self.inverse, return_maps=True)
        f = self.merge(x, out)  # (B, C, H, W)
        return (f, maps) if return_maps else f

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstructed maps ``W B``: ``(B, G, N, N)`` (for figures; builds N × N)."""
        _, maps = self.forward(x, return_maps=True)
        return maps.W @ maps.B  # (B, G, N, N)

    def extra_repr(self) -> str:
        return (f"{self._extra()}, landmarks={self.landmarks}, indicator={self.indicator}, "
                f"indicator_at={self.indicator_at!r}, inverse={self.inverse!r}")


class SelfAttention(_Projections):
    """The paper's self-attention baseline (eqs. 1–2): the explicit ``N × N`` map.

    ``O = x + α · fuse(softmax_N(s q kᵀ) v)`` with the same projections, groups, scale and
    α = 0 initialisation as :class:`CSALR`, so the two differ only in the attention map.

    Args:
        channels, qk_channels, groups, scale: as for :class:`CSALR`.
    """

    def __init__(self, channels: int, qk_channels: int | None = None, groups: int = 1, *,
                 scale: float | None = None) -> None:
        super().__init__(channels, qk_channels, groups, scale)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``. Returns: ``O (B, C, H, W)``, and with
        ``return_maps=True`` ``(O, SelfAttentionMaps(attention))``, attention
        ``(B, G, N, N)`` (row = query position)."""
        f, maps = self.attend(x, return_maps=True)
        y = x + self.alpha * f  # (B, C, H, W) eq. (2)
        return (y, maps) if return_maps else y

    def attend(self, x: torch.Tensor, return_maps: bool = False):
        """The SA module's output before the residual, ``f = fuse(A v)`` ``(B, C, H, W)``,
        and with ``return_maps`` ``(f, SelfAttentionMaps(attention))``, ``A (B, G, N, N)``."""
        q, k, v = self.qkv(x)
        a = torch.softmax(self.scale * q @ k.transpose(-1, -2), dim=-1)  # (B, G, N, N) eq. (1)
        f = self.merge(x, a @ v)  # (B, C, H, W)
        return (f, SelfAttentionMaps(attention=a)) if return_maps else f

    def extra_repr(self) -> str:
        return self._extra()
