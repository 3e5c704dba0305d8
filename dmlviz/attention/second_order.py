"""Second-order attention (SOA) and the global + local multi-head embedder.

Ebrahimpour, Qian & Beach, "Multi-Head Deep Metric Learning Using Global and Local
Representations", WACV 2022, sections 3.1–3.4, eqs. (1)–(7).

**Second-order attention** (eqs. 1, 2). A feature map ``f`` of ``C`` channels over
``N = H·W`` positions goes through three 1×1 convolutions, the queries, keys and values
``q, k, v ∈ R^{C'×N}``. Every position ``i`` attends to every position ``j``::

    a = softmax_j(ζ qᵀk)          (B, N, N), each row sums to 1                    (1)
    f_soa = f + φ(v aᵀ)           (v aᵀ)_i = Σ_j a_ij v_j,  φ: 1×1 conv C' → C      (2)

"Second order" because ``a_ij`` is a product of the features at two positions (a
correlation), not a weight computed from one position alone (first-order attention such
as a spatial mask or an SE block). A position can therefore gather evidence from any other
position, however far away: the paper's Fig. 6 shows points on the *background* attending
to the *object*. :func:`dmlviz.masks.object_attention_mass` measures exactly that, with object masks.

**Multi-head embedder** (sections 3.2–3.3). The local head works on a stride-16 feature
map (fine, small receptive fields), the global head on the stride-32 map (coarse,
whole-object context). Each head applies its own SOA, pools it with global average plus
global max pooling and maps it with one linear layer to ``D/2``; the two halves are
concatenated to the embedding ``e ∈ R^D``::

    e_h = W_h (GAP(f_soa,h) + GMP(f_soa,h)) ∈ R^{D/2},  h ∈ {local, global}       (4)
    e = [e_local ; e_global] / ‖[e_local ; e_global]‖

**What GAP sees of the pairwise weights.** ``φ`` is a 1×1 convolution (affine), so the
global average of eq. (2) is::

    GAP(f_soa) = GAP(f) + φ(Σ_j ā_j v_j),   ā_j = 1/N Σ_i a_ij  (attention averaged over queries)

The GAP half of eq. (4) only sees the column means ``ā`` — one saliency per image — never
which query attends where; only GMP can use the query dependence. :func:`gap_decomposition`
checks the identity; :func:`intervene` replaces the attention at inference by its mean row
``ā`` (GAP unchanged, exactly), by its rows shuffled between queries (``ā`` unchanged, so
GAP unchanged too) or by uniform weights; ``order=1`` trains a first-order control with the
same parameters (one pooled query per image).

**Maps** (the package's protocol): ``return_maps=True`` returns ``(output, maps)`` — a
:class:`SOAMaps` (``attention (B, N, N)``) from :class:`SecondOrderAttention`, a
:class:`GlobalLocalMaps` (``local_attention``, ``global_attention``, ``single_attention``,
each ``(B, N, N)`` of its own grid, or ``None``) from :class:`GlobalLocalEmbedder`.

**Hybrid loss** (eq. 7): ``L = L_MS + λ L_PA`` with ``λ = 0.03``, the proxies trained with
a 100× larger learning rate — :class:`dmlviz.losses.HybridLoss` and
:func:`dmlviz.losses.parameter_groups`; :func:`dmlviz.train.fit` takes ``loss_lr``.

Interpretations — where the paper's text (``shared/papers/``) leaves a choice open we made
the usual one and say so:

* ``C'`` (``reduced``) defaults to ``C // 2`` and ``v`` is reduced to ``C'`` as well, as in
  the non-local block (Wang et al., CVPR 2018) that SOA is built on; ``φ`` is a 1×1
  convolution back to ``C`` channels.
* ``φ`` is **zero-initialised** (weight and bias), so ``f_soa = f`` at the start of training
  and the head starts as plain pooling of the backbone features (the non-local block's
  zero-initialised BN plays the same role). Eq. (2) itself is tested as written for any ``φ``.
* ``ζ`` is a fixed scalar (default 1, the paper's "ζ in Eq. 1 is set to 1"), not learned.
  On unnormalised backbone features ζ = 1 saturates the softmax (on EfficientNet-Lite0's
  stride-16 map ``qᵀk`` spreads by ~75 within a row at initialisation); notebook 03 chooses ζ
  on a validation split of the training classes. ``zeta=0`` (uniform attention) is allowed.
* Eq. (6) is printed with ``+σ`` in the negative term; Wang et al.'s MS loss has ``S − σ`` in
  both. :func:`dmlviz.losses.make_loss` takes ``eq6="standard"`` (``S − σ``, default) or ``"literal"``.
* "GAP + GMP" is the **sum** of the two poolings (as in the Proxy-Anchor authors' code),
  not their concatenation.
* The concatenated embedding is L2-normalised (``normalize=True``); the losses normalise
  again, which changes nothing.
* The single-head ablation (``single_head=True``) rearranges the local map by
  space-to-depth ("Focus", as in YOLOv5: every 2×2 block of positions becomes 4× the
  channels), concatenates it with the global map along channels and runs one SOA, one
  pooling and one linear layer to ``D``.
* Backbone: this workbench taps EfficientNet-Lite0 (112 channels at stride 16, 320 at
  stride 32) and keeps it frozen; the paper fine-tunes a larger ImageNet CNN end to end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_feature_map, check_int

__all__ = [
    "BRANCHES",
    "INTERVENTIONS",
    "ORDERS",
    "PAPER_SETTINGS",
    "GlobalLocalEmbedder",
    "GlobalLocalMaps",
    "SOAMaps",
    "SecondOrderAttention",
    "gap_decomposition",
    "gap_gmp",
    "intervene",
    "second_order_attention",
    "space_to_depth",
]

BRANCHES = ("both", "local", "global")
ORDERS = (1, 2)
INTERVENTIONS = ("none", "mean_row", "shuffle_rows", "uniform")


# ----------------------------------------------------------------------------- functional core

def second_order_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           zeta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) and the aggregation of eq. (2), on flattened maps.

    Args:
        q: ``(B, C', N)`` queries.
        k: ``(B, C', N)`` keys.
        v: ``(B, Cv, N)`` values.
        zeta: the scale ζ inside the softmax.

    Returns:
        ``(out, a)``: ``out (B, Cv, N)`` with ``out_i = Σ_j a_ij v_j`` and the attention
        ``a (B, N, N)``, row ``i`` (query position) summing to 1 over ``j``.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        if not torch.is_tensor(t) or t.ndim != 3:
            raise ValueError(f"{name} must be a tensor (B, C, N), got "
                             f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, C', N), got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if v.shape[0] != q.shape[0] or v.shape[2] != q.shape[2]:
        raise ValueError(f"v must be (B, Cv, N) with B = {q.shape[0]} and N = {q.shape[2]} "
                         f"as q, got {tuple(v.shape)}")
    a = torch.softmax(zeta * q.transpose(1, 2) @ k, dim=-1)  # (B, N, N) eq. (1)
    out = v @ a.transpose(1, 2)  # (B, Cv, N) Σ_j a_ij v_j, eq. (2)
    return out, a


def gap_gmp(x: torch.Tensor) -> torch.Tensor:
    """Global average plus global max pooling, eq. (4): ``(B, C, H, W)`` → ``(B, C)``."""
    check_feature_map(x, "x")
    return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))  # eq. (4)


def space_to_depth(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Space-to-depth ("Focus"): ``(B, C, H, W)`` → ``(B, C·block², H/block, W/block)``.

    Output channel ``c·block² + i·block + j`` at ``(h, w)`` holds input channel ``c`` at
    ``(block·h + i, block·w + j)`` (the order of ``F.pixel_unshuffle``).
    """
    check_feature_map(x, "x")
    block = check_int(block, "block", 1)
    if x.shape[2] % block or x.shape[3] % block:
        raise ValueError(f"x must have H and W divisible by block = {block}, got shape "
                         f"{tuple(x.shape)}")
    return F.pixel_unshuffle(x, block)


def intervene(attn: torch.Tensor, mode: str, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Replace trained attention rows at inference, to ask which part of them is used.

    Args:
        attn: ``(B, N, N)`` attention, row ``i`` = query position ``i``, rows sum to 1.
        mode: ``"none"`` (unchanged), ``"mean_row"`` (every query gets its image's mean row
            ``ā_j = 1/N Σ_i a_ij``: no query dependence, GAP of eq. (2) unchanged),
            ``"shuffle_rows"`` (the rows are permuted between the queries of each image:
            every row is still a trained row, but attached to the wrong query; ``ā``
            unchanged) or ``"uniform"`` (``a_ij = 1/N``: no attention at all).
        generator: the random permutation's generator (``"shuffle_rows"`` only).

    Returns:
        ``(B, N, N)`` rows that still sum to 1.
    """
    if not torch.is_tensor(attn) or attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be a tensor (B, N, N), got "
                         f"{tuple(attn.shape) if torch.is_tensor(attn) else type(attn).__name__}")
    if mode not in INTERVENTIONS:
        raise ValueError(f"mode must be one of {INTERVENTIONS}, got {mode!r}")
    b, n, _ = attn.shape
    if mode == "mean_row":
        return attn.mean(dim=1, keepdim=True).expand(b, n, n)  # ā, the same for every query
    if mode == "uniform":
        return torch.full_like(attn, 1.0 / n)
    if mode == "shuffle_rows":
        perm = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])  # (B, N)
        return torch.gather(attn, 1, perm.to(attn.device)[..., None].expand(b, n, n))
    return attn


def gap_decomposition(block: SecondOrderAttention, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both sides of ``GAP(f_soa) = GAP(f) + φ(Σ_j ā_j v_j)`` (module docstring).

    Args:
        block: a :class:`SecondOrderAttention`.
        x: ``(B, C, H, W)`` its input ``f``.

    Returns:
        ``{"gap_f_soa": (B, C), "gap_f_plus_phi": (B, C), "abar": (B, N)}``: the global
        average of the block's output, the right-hand side computed from the attention's
        column means ``ā`` alone, and ``ā``.
    """
    if not isinstance(block, SecondOrderAttention):
        raise ValueError(f"block must be a SecondOrderAttention, got {type(block).__name__}")
    y, maps = block(x, return_maps=True)  # (B, C, H, W), SOAMaps
    abar = maps.attention.mean(dim=1)  # (B, N) ā_j = 1/N Σ_i a_ij
    v = block.value(x).flatten(2)  # (B, C', N)
    pooled = (v @ abar[..., None])[..., None]  # (B, C', 1, 1) Σ_j ā_j v_j
    rhs = x.mean(dim=(2, 3)) + block.phi(pooled).flatten(1)  # (B, C) GAP(f) + φ(Σ_j ā_j v_j)
    return {"gap_f_soa": y.mean(dim=(2, 3)), "gap_f_plus_phi": rhs, "abar": abar}


# ----------------------------------------------------------------------------- modules

class SOAMaps(NamedTuple):
    """What :class:`SecondOrderAttention` returns with ``return_maps=True``.

    Attributes:
        attention: ``(B, N, N)`` the attention ``a`` of eq. (1) actually used (after
            ``edit``), row ``i`` = query position ``i``, each row summing to 1.
    """

    attention: torch.Tensor


class SecondOrderAttention(nn.Module):
    """Second-order attention block, eqs. (1)–(2): ``f_soa = f + φ(v · softmax(ζ qᵀk)ᵀ)``.

    Args:
        channels: ``C`` of the input map.
        reduced: ``C'`` of queries, keys and values (default ``max(1, C // 2)``).
        zeta: ζ, the scale (inverse temperature) inside the softmax, ≥ 0. ``zeta=0`` gives
            uniform attention ``a_ij = 1/N``: every position receives the same global mean
            ``φ(v̄)`` — a control with the same parameters but no pairwise (second-order)
            weighting.
        order: ``2`` (default) is eq. (1). ``1`` is the **first-order control**: the
            queries are pooled over positions into one image query ``q̄ = GAP(q)``, so
            each image gets one learned saliency map ``s = softmax_j(ζ q̄ᵀk_j)`` and every
            position receives the same ``φ(Σ_j s_j v_j)``. Same modules, same parameters
            (exactly), but no query dependence. ``return_maps`` then gives ``s`` repeated
            for every query row.

    ``forward(x, return_maps=True)`` returns ``(f_soa, maps)`` with ``maps`` a
    :class:`SOAMaps`: ``maps.attention`` ``(B, N, N)``.

    Attributes:
        query, key, value: 1×1 convolutions ``C → C'``.
        phi: 1×1 convolution ``C' → C``, zero-initialised so the block starts as the
            identity (see the module docstring).
    """

    def __init__(self, channels: int, reduced: int | None = None, zeta: float = 1.0,
                 order: int = 2) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} (2: eq. 1, 1: the first-order "
                             f"control), got {order!r}")
        self.order = int(order)
        self.channels = check_int(channels, "channels", 1)
        self.reduced = check_int(reduced if reduced is not None else max(1, channels // 2),
                                 "reduced", 1)
        if isinstance(zeta, bool) or not isinstance(zeta, (int, float)) or not 0 <= zeta < float("inf"):
            raise ValueError(f"zeta must be a finite number >= 0, got {zeta!r}")
        self.zeta = float(zeta)
        self.query = nn.Conv2d(self.channels, self.reduced, 1)
        self.key = nn.Conv2d(self.channels, self.reduced, 1)
        self.value = nn.Conv2d(self.channels, self.reduced, 1)
        self.phi = nn.Conv2d(self.reduced, self.channels, 1)
        nn.init.zeros_(self.phi.weight)
        nn.init.zeros_(self.phi.bias)

    def forward(self, x: torch.Tensor, return_maps: bool = False, edit=None):
        """Args: x ``(B, C, H, W)``; ``edit``: optional function ``(B, N, N) → (B, N, N)``
        applied to the attention before it aggregates the values (an intervention, e.g.
        :func:`intervene`). Returns: ``f_soa (B, C, H, W)``, and with ``return_maps=True``
        the pair ``(f_soa, SOAMaps)``: the attention ``a (B, N, N)`` actually used (row =
        query position)."""
        check_feature_map(x, "x", self.channels, module=self)
        b, _, h, w = x.shape
        q, k, v = (conv(x).flatten(2) for conv in (self.query, self.key, self.value))  # (B, C', N)
        if self.order == 1:  # first-order control: one pooled image query
            s = torch.softmax(self.zeta * q.mean(2, keepdim=True).transpose(1, 2) @ k, -1)  # (B, 1, N)
            a = s.expand(b, h * w, h * w)  # (B, N, N), every row the same saliency
        else:
            a = torch.softmax(self.zeta * q.transpose(1, 2) @ k, dim=-1)  # (B, N, N) eq. (1)
        if edit is not None:
            a = edit(a)
            if not torch.is_tensor(a) or a.shape != (b, h * w, h * w):
                raise ValueError(f"edit must return the attention's shape {(b, h * w, h * w)}, "
                                 f"got {tuple(a.shape) if torch.is_tensor(a) else type(a).__name__}")
        out = v @ a.transpose(1, 2)  # (B, C', N) Σ_j a_ij v_j, eq. (2)
        y = x + self.phi(out.reshape(b, self.reduced, h, w))  # (B, C, H, W) eq. (2)
        return (y, SOAMaps(attention=a)) if return_maps else y

    def extra_repr(self) -> str:
        extra = "" if self.order == 2 else f", order={self.order}"
        return f"channels={self.channels}, reduced={self.reduced}, zeta={self.zeta}{extra}"


class GlobalLocalMaps(NamedTuple):
    """What :class:`GlobalLocalEmbedder` returns with ``return_maps=True``: the attention
    ``a`` of each SOA head (eq. 1), row = query position, or ``None`` for a head the model
    does not have (every field is ``None`` with ``soa=False``).

    Attributes:
        local_attention: ``(B, N, N)`` of the local head, ``N = H·W`` of the stride-16 map.
        global_attention: ``(B, N', N')`` of the global head (stride-32 map).
        single_attention: ``(B, N', N')`` of the one head of ``single_head=True``.
    """

    local_attention: torch.Tensor | None = None
    global_attention: torch.Tensor | None = None
    single_attention: torch.Tensor | None = None


class GlobalLocalEmbedder(nn.Module):
    """The multi-head embedding head: SOA on the local and the global map, GAP + GMP,
    one linear layer per head to ``D/2``, concatenated and L2-normalised to ``D``.

    Args:
        local_channels: ``C`` of the stride-16 (local) map, e.g. 112 for EfficientNet-Lite0.
        global_channels: ``C`` of the stride-32 (global) map, e.g. 320.
        embedding_dim: ``D``; must be even for two heads (``branches="both"``).
        soa: apply second-order attention (False: pool the raw maps — the "without SOA"
            ablation).
        single_head: the paper's single-head ablation: space-to-depth on the local map,
            concatenated with the global map, one SOA, one linear layer to ``D``. The local
            map must then be exactly twice the global map's size.
        branches: ``"both"`` (default), ``"local"`` or ``"global"``: which head(s) to use
            (the local-only / global-only ablation gives its one head all ``D`` dimensions).
        reduced: ``C'`` of every SOA block (default ``C // 2`` of its input).
        zeta: ζ of every SOA block.
        order: ``2`` (SOA, eq. 1) or ``1`` (the first-order control with the same
            parameters; see :class:`SecondOrderAttention`).
        normalize: L2-normalise the output embedding.

    ``forward(local_map, global_map, return_maps=True)`` returns ``(e, maps)`` with ``maps``
    a :class:`GlobalLocalMaps` (``maps.local_attention`` ``(B, N, N)``, …).
    """

    def __init__(self, local_channels: int, global_channels: int, embedding_dim: int, *,
                 soa: bool = True, single_head: bool = False, branches: str = "both",
                 reduced: int | None = None, zeta: float = 1.0, order: int = 2,
                 normalize: bool = True) -> None:
        super().__init__()
        self.local_channels = check_int(local_channels, "local_channels", 1)
        self.global_channels = check_int(global_channels, "global_channels", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        if branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}")
        if single_head and branches != "both":
            raise ValueError(f"single_head=True merges both maps; it needs branches='both', "
                             f"got branches={branches!r}")
        if branches == "both" and not single_head and embedding_dim % 2:
            raise ValueError(f"embedding_dim must be even with two heads (D/2 each), got "
                             f"{embedding_dim}")
        self.soa, self.single_head, self.branches = bool(soa), bool(single_head), branches
        self.normalize = bool(normalize)

        def attention(c: int) -> nn.Module:
            return SecondOrderAttention(c, reduced, zeta, order) if soa else nn.Identity()

        if single_head:
            c = 4 * self.local_channels + self.global_channels
            self.heads = nn.ModuleDict({"single": attention(c)})
            self.linears = nn.ModuleDict({"single": nn.Linear(c, embedding_dim)})
        else:
            names = ("local", "global") if branches == "both" else (branches,)
            dim = embedding_dim // len(names)
            channels = {"local": self.local_channels, "global": self.global_channels}
            self.heads = nn.ModuleDict({n: attention(channels[n]) for n in names})
            self.linears = nn.ModuleDict({n: nn.Linear(channels[n], dim) for n in names})

    def _inputs(self, local_map: torch.Tensor, global_map: torch.Tensor) -> dict[str, torch.Tensor]:
        check_feature_map(local_map, "local_map", self.local_channels, module=self)
        check_feature_map(global_map, "global_map", self.global_channels, module=self)
        if len(local_map) != len(global_map):
            raise ValueError(f"local_map and global_map must have the same batch size B, got "
                             f"{len(local_map)} and {len(global_map)}")
        if not self.single_head:
            return {"local": local_map, "global": global_map}
        lh, lw = local_map.shape[2:]
        gh, gw = global_map.shape[2:]
        if (lh, lw) != (2 * gh, 2 * gw):
            raise ValueError(f"single_head=True needs local_map exactly twice the size of "
                             f"global_map, got {lh}×{lw} and {gh}×{gw}")
        focus = space_to_depth(local_map, 2)  # (B, 4·C_local, H/2, W/2)
        return {"single": torch.cat([focus, global_map], dim=1)}  # (B, 4·C_l + C_g, H/2, W/2)

    def forward(self, local_map: torch.Tensor, global_map: torch.Tensor,
                return_maps: bool = False, edit=None):
        """Embed a batch.

        Args:
            local_map: ``(B, C_local, H, W)`` stride-16 features.
            global_map: ``(B, C_global, H', W')`` stride-32 features (ignored, but checked,
                with ``branches="local"``; likewise ``local_map`` with ``"global"``).
            return_maps: also return a :class:`GlobalLocalMaps`, each head's attention
                ``(B, N, N)`` (all ``None`` without SOA).
            edit: optional ``(B, N, N) → (B, N, N)`` applied to every head's attention
                before aggregation (:func:`intervene`; ignored without SOA).

        Returns:
            ``(B, D)`` embeddings (unit norm with ``normalize=True``); with ``return_maps``
            the pair ``(e, GlobalLocalMaps)``.
        """
        maps, parts = {}, []
        for name, x in self._inputs(local_map, global_map).items():
            if name not in self.heads:
                continue  # the branch left out by the local-only / global-only ablation
            head = self.heads[name]
            if self.soa:
                x, soa_maps = head(x, return_maps=True, edit=edit)  # (B, C, H, W), SOAMaps
                maps[f"{name}_attention"] = soa_maps.attention  # (B, N, N)
            parts.append(self.linears[name](gap_gmp(x)))  # (B, D/2) eq. (4)
        e = torch.cat(parts, dim=1)  # (B, D) [e_local ; e_global]
        if self.normalize:
            e = F.normalize(e, dim=1)
        return (e, GlobalLocalMaps(**maps)) if return_maps else e

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, soa={self.soa}, "
                f"single_head={self.single_head}, branches={self.branches!r}")


# ----------------------------------------------------------------------------- training recipe


#: The paper's settings (section 4.2, "Training", "Input Setting", "Hyperparameter Setting";
#: section 4.1 for the validation split), for the table of notebook 03.
PAPER_SETTINGS = {
    "zeta": 1.0, "gamma": 2.0, "beta": 50.0, "sigma": 1.0, "alpha": 32.0, "delta": 0.1,
    "weight": 0.03, "lr": 1e-4, "proxy_lr": 1e-2, "epochs": 20, "batch": 100,
    "backbone": "ResNet-50 (ImageNet), fine-tuned", "input_size": 224,
    "optimizer": "AdamW", "validation": "20 % of the training set",
}

