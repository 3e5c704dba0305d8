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
to the *object*. :func:`object_attention_mass` measures exactly that, with object masks.

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
  both. :func:`make_loss` takes ``eq6="standard"`` (``S − σ``, default) or ``"literal"``.
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

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.checks import check_feature_map, check_int
from dmlviz.utils import derive_seed, get_device

__all__ = [
    "BRANCHES",
    "INTERVENTIONS",
    "LOSSES",
    "ORDERS",
    "PAPER_SETTINGS",
    "GlobalLocalEmbedder",
    "SecondOrderAttention",
    "embed_intervened",
    "epochs_to_converge",
    "fit_global_local",
    "gap_decomposition",
    "gap_gmp",
    "intervene",
    "local_global_maps",
    "make_loss",
    "object_attention_mass",
    "object_fraction",
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


def object_fraction(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Fraction of object pixels in each cell of an ``H × W`` feature grid.

    Args:
        masks: ``(B, S, S)`` boolean (or 0/1 float) object masks of the images.
        size: the feature map's ``(H, W)`` (or one int for a square map).

    Returns:
        ``(B, N)`` float in [0, 1], positions in the row-major order of a flattened map.
    """
    if not torch.is_tensor(masks) or masks.ndim != 3:
        raise ValueError(f"masks must be a tensor (B, S, S), got "
                         f"{tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    cells = F.adaptive_avg_pool2d(masks[:, None].float(), size)  # (B, 1, H, W)
    return cells.flatten(1)  # (B, N)


def object_attention_mass(attn: torch.Tensor, fraction: torch.Tensor,
                          background_below: float = 1e-6,
                          object_above: float = 0.5) -> dict[str, float]:
    """How much attention background and object positions put on the object.

    The attention mass of query ``i`` on the object is ``Σ_j a_ij m_j`` with ``m_j`` the
    object fraction of cell ``j``. A uniform attention row would give the image's mean
    object fraction — the chance level, computed per query and averaged over the same
    queries, so the two numbers are directly comparable.

    Args:
        attn: ``(B, N, N)`` attention rows (each sums to 1), e.g. from ``return_maps=True``.
        fraction: ``(B, N)`` object fraction per cell (:func:`object_fraction`).
        background_below: a query is *background* when its cell's object fraction is
            below this (default: no object pixel at all).
        object_above: a query is *object* when its cell's object fraction exceeds this.

    Returns:
        ``{"background_to_object", "background_chance", "object_to_object",
        "object_chance", "background_queries", "object_queries"}`` — means over all
        queries of that kind in the batch, and how many there were.
    """
    if not torch.is_tensor(attn) or attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be a tensor (B, N, N), got "
                         f"{tuple(attn.shape) if torch.is_tensor(attn) else type(attn).__name__}")
    if not torch.is_tensor(fraction) or fraction.shape != attn.shape[:2]:
        raise ValueError(f"fraction must be (B, N) = {tuple(attn.shape[:2])} to match attn, got "
                         f"{tuple(fraction.shape) if torch.is_tensor(fraction) else type(fraction).__name__}")
    m = fraction.to(attn.dtype)
    mass = (attn @ m[..., None]).squeeze(-1)  # (B, N) Σ_j a_ij m_j
    chance = m.mean(dim=1, keepdim=True).expand_as(m)  # (B, N) uniform attention
    out = {}
    for kind, mask in (("background", m < background_below), ("object", m > object_above)):
        n = int(mask.sum())
        out[f"{kind}_to_object"] = float(mass[mask].mean()) if n else float("nan")
        out[f"{kind}_chance"] = float(chance[mask].mean()) if n else float("nan")
        out[f"{kind}_queries"] = n
    return out


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
    y, a = block(x, return_maps=True)  # (B, C, H, W), (B, N, N)
    abar = a.mean(dim=1)  # (B, N) ā_j = 1/N Σ_i a_ij
    v = block.value(x).flatten(2)  # (B, C', N)
    pooled = (v @ abar[..., None])[..., None]  # (B, C', 1, 1) Σ_j ā_j v_j
    rhs = x.mean(dim=(2, 3)) + block.phi(pooled).flatten(1)  # (B, C) GAP(f) + φ(Σ_j ā_j v_j)
    return {"gap_f_soa": y.mean(dim=(2, 3)), "gap_f_plus_phi": rhs, "abar": abar}


# ----------------------------------------------------------------------------- modules

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
        also the attention ``a (B, N, N)`` actually used (row = query position)."""
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
        return (y, a) if return_maps else y

    def extra_repr(self) -> str:
        extra = "" if self.order == 2 else f", order={self.order}"
        return f"channels={self.channels}, reduced={self.reduced}, zeta={self.zeta}{extra}"


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
            return_maps: also return ``{head name: attention (B, N, N)}`` (empty without SOA).
            edit: optional ``(B, N, N) → (B, N, N)`` applied to every head's attention
                before aggregation (:func:`intervene`; ignored without SOA).

        Returns:
            ``(B, D)`` embeddings (unit norm with ``normalize=True``), and the maps if asked.
        """
        maps, parts = {}, []
        for name, x in self._inputs(local_map, global_map).items():
            if name not in self.heads:
                continue  # the branch left out by the local-only / global-only ablation
            head = self.heads[name]
            if self.soa:
                x, maps[name] = head(x, return_maps=True, edit=edit)  # (B, C, H, W), (B, N, N)
            parts.append(self.linears[name](gap_gmp(x)))  # (B, D/2) eq. (4)
        e = torch.cat(parts, dim=1)  # (B, D) [e_local ; e_global]
        if self.normalize:
            e = F.normalize(e, dim=1)
        return (e, maps) if return_maps else e

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, soa={self.soa}, "
                f"single_head={self.single_head}, branches={self.branches!r}")


# ----------------------------------------------------------------------------- features

def local_global_maps(backbone: nn.Module, images: torch.Tensor, *,
                      device: str | torch.device = "cpu", cache: bool = True,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The local (stride-16) and global (stride-32) EfficientNet-Lite0 maps, disk-cached.

    The backbone runs once up to stride 16 (:func:`dmlviz.backbones.extract_features`);
    the global map is then computed from the cached local map by the remaining blocks
    (stride 16 → 32), also cached — half the cost of two full passes, same numbers.

    Args:
        backbone: an :class:`dmlviz.backbones.EfficientNetLite0` (frozen; eval mode).
        images: ``(B, 3, S, S)`` prepared images (``backbone.prepare(...)``).
        device, cache, progress: as for :func:`dmlviz.backbones.extract_features`.

    Returns:
        ``(local (B, 112, ⌈S/16⌉, ⌈S/16⌉), global (B, 320, ⌈S/32⌉, ⌈S/32⌉))`` on the CPU.
    """
    from dmlviz.backbones import EfficientNetLite0, extract_features

    if not isinstance(backbone, EfficientNetLite0):
        raise ValueError(f"backbone must be an EfficientNetLite0, got {type(backbone).__name__}")
    local = extract_features(backbone, images, stride=16, device=device, cache=cache,
                             progress=progress)  # (B, 112, S/16, S/16)
    taps = backbone._taps  # {stride: index of the last block at that stride}
    tail = nn.Sequential(*backbone._blocks[taps[16] + 1: taps[32] + 1])  # stride 16 → 32
    tail.train(backbone.training)  # extract_features restores this mode on the shared blocks
    glob = extract_features(tail, local, device=device, cache=cache,
                            progress=progress)  # (B, 320, S/32, S/32)
    return local, glob


# ----------------------------------------------------------------------------- training recipe

LOSSES = ("ms", "proxy_anchor", "hybrid")


EQ6_READINGS = ("standard", "literal")

#: The paper's settings (section 4.2, "Training", "Input Setting", "Hyperparameter Setting";
#: section 4.1 for the validation split), for the table of notebook 03.
PAPER_SETTINGS = {
    "zeta": 1.0, "gamma": 2.0, "beta": 50.0, "sigma": 1.0, "alpha": 32.0, "delta": 0.1,
    "weight": 0.03, "lr": 1e-4, "proxy_lr": 1e-2, "epochs": 20, "batch": 100,
    "backbone": "ResNet-50 (ImageNet), fine-tuned", "input_size": 224,
    "optimizer": "AdamW", "validation": "20 % of the training set",
}


def make_loss(name: str, num_classes: int, embedding_dim: int, weight: float = 0.03, *,
              gamma: float = 2.0, beta: float = 50.0, sigma: float = 0.5,
              eq6: str = "standard", alpha: float = 32.0, delta: float = 0.1) -> nn.Module:
    """The three losses the paper compares (Figs. 1, 7), by name, with the paper's symbols.

    Args:
        name: ``"ms"`` (multi-similarity, eq. 6), ``"proxy_anchor"`` (eq. 5) or ``"hybrid"``
            (eq. 7, ``L_MS + λ L_PA``).
        num_classes: training classes ``C`` (one proxy each).
        embedding_dim: ``D``.
        weight: λ of the hybrid loss (paper: 0.03).
        gamma, beta: γ and β of eq. (6) (paper: 2, 50).
        sigma: σ of eq. (6), the MS ``base`` (paper: 1; default 0.5, Wang et al.'s and PML's
            default — notebook 03 shows both).
        eq6: ``"standard"``: ``e^{β(S_ik − σ)}`` in the negative term, as in Wang et al.;
            ``"literal"``: ``e^{β(S_ik + σ)}``, as eq. (6) is printed.
        alpha, delta: α and δ of eq. (5) (paper: 32, 0.1).
    """
    from dmlviz.losses import HybridLoss, MultiSimilarityLoss, ProxyAnchorLoss

    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    if eq6 not in EQ6_READINGS:
        raise ValueError(f"eq6 must be one of {EQ6_READINGS}, got {eq6!r}")

    def ms() -> nn.Module:
        return MultiSimilarityLoss(gamma, beta, sigma,
                                   negative_base=-sigma if eq6 == "literal" else None)  # eq. (6)

    def pa() -> nn.Module:
        return ProxyAnchorLoss(num_classes, embedding_dim, margin=delta, alpha=alpha)  # eq. (5)

    if name == "ms":
        return ms()
    if name == "proxy_anchor":
        return pa()
    return HybridLoss(ms(), pa(), weight=weight)  # eq. (7)


def epochs_to_converge(history, fraction: float = 0.9, metric: str = "recall@1") -> float:
    """Epochs a run needs to make ``fraction`` of its gain in ``metric`` (Figs. 1, 7).

    With ``m_t`` the metric after epoch ``t`` (``t = 0`` before training) and ``m* = max_t
    m_t``, the first ``t`` with ``m_t − m_0 ≥ fraction · (m* − m_0)``, linearly interpolated
    between evaluations (0 when training gains nothing).

    Args:
        history: a :class:`dmlviz.train.History` with ``eval_epochs`` starting at 0.
        fraction: in (0, 1].
        metric: the metric's name in ``history.metrics``.

    Returns:
        The epoch, a float.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if metric not in history.metrics or not history.eval_epochs or history.eval_epochs[0] != 0:
        raise ValueError(f"history must hold {metric!r} measured from epoch 0, got metrics "
                         f"{sorted(history.metrics)} at epochs {history.eval_epochs[:3]}…")
    t = [float(e) for e in history.eval_epochs]
    m = [float(x) for x in history.metrics[metric]]
    target = m[0] + fraction * (max(m) - m[0])
    if max(m) <= m[0]:
        return 0.0
    for i in range(1, len(m)):
        if m[i] >= target:
            return t[i - 1] + (target - m[i - 1]) / (m[i] - m[i - 1]) * (t[i] - t[i - 1])
    return t[-1]  # not reached (cannot happen: the maximum reaches it)


def fit_global_local(train_maps: tuple[torch.Tensor, torch.Tensor], train_labels: torch.Tensor,
                     test_maps: tuple[torch.Tensor, torch.Tensor], test_labels: torch.Tensor, *,
                     loss: str = "hybrid", embedding_dim: int = 64, seed: int = 0,
                     hybrid_weight: float = 0.03, epochs: int = 10, p: int = 8, k: int = 4,
                     lr: float = 1e-3, proxy_lr: float = 1e-1, eval_every: int = 1,
                     device: str | torch.device = "auto", progress: bool = False,
                     loss_kwargs: dict | None = None, nmi: bool = False,
                     **embedder_kwargs):
    """Build a :class:`GlobalLocalEmbedder` from ``seed`` and train it on cached maps.

    The model is initialised right after ``torch.manual_seed(seed)``, so two calls with the
    same seed and head configuration start from the same weights whatever the loss — the
    "same model, same seeds" of the loss comparison. Training is :func:`dmlviz.train.fit`
    (P×K batches, AdamW, checkpoint cache) with the proxies on their own rate ``proxy_lr``.

    Args:
        train_maps: ``(local (N, C_l, H, W), global (N, C_g, H', W'))`` of the training images.
        train_labels: ``(N,)`` class ids in ``[0, C)``.
        test_maps, test_labels: the unseen classes, for Recall@K after every ``eval_every``
            epochs.
        loss: one of :data:`LOSSES`.
        embedding_dim: ``D``.
        seed: seeds the initial weights and the batch order.
        hybrid_weight: λ of eq. (7).
        epochs, p, k, lr, eval_every, device, progress: as for :func:`dmlviz.train.fit`.
        proxy_lr: learning rate of the Proxy-Anchor proxies (the paper: 100× the network's).
        loss_kwargs: the loss's hyper-parameters, passed to :func:`make_loss` (``gamma``,
            ``beta``, ``sigma``, ``eq6``, ``alpha``, ``delta``).
        nmi: also measure NMI (k-means) at every evaluation (slow; default off).
        **embedder_kwargs: ``soa``, ``single_head``, ``branches``, ``reduced``, ``zeta``,
            ``order``.

    Returns:
        ``(model, history)``: the trained model (eval mode) and its
        :class:`dmlviz.train.History`.
    """
    from dmlviz.checks import check_labels
    from dmlviz.train import fit
    from dmlviz.utils import seed_everything

    for maps, name in ((train_maps, "train_maps"), (test_maps, "test_maps")):
        if not isinstance(maps, (tuple, list)) or len(maps) != 2:
            raise ValueError(f"{name} must be a pair (local_map, global_map), got "
                             f"{type(maps).__name__}")
    train_labels = check_labels(train_labels, "train_labels")
    if int(train_labels.min()) < 0:
        raise ValueError(f"train_labels must be class ids >= 0, got min {int(train_labels.min())}")
    num_classes = int(train_labels.max()) + 1
    seed_everything(seed)
    model = GlobalLocalEmbedder(train_maps[0].shape[1], train_maps[1].shape[1], embedding_dim,
                                **embedder_kwargs)
    criterion = make_loss(loss, num_classes, embedding_dim, hybrid_weight, **(loss_kwargs or {}))
    history = fit(model, criterion, tuple(train_maps), train_labels,
                  test_inputs=tuple(test_maps), test_labels=test_labels, epochs=epochs, p=p,
                  k=k, lr=lr, loss_lr=proxy_lr, eval_every=eval_every, seed=seed,
                  device=device, progress=progress,
                  metric_kwargs=None if nmi else {"nmi": False})
    return model, history


@torch.no_grad()
def embed_intervened(model: GlobalLocalEmbedder, maps: tuple[torch.Tensor, torch.Tensor],
                     mode: str = "none", seed: int = 0, batch_size: int = 256,
                     device: str | torch.device = "auto") -> torch.Tensor:
    """Embeddings ``(B, D)`` of a trained model with its attention replaced by
    :func:`intervene` (``mode``) in every head, on the CPU; the model is left unchanged.

    Args:
        model: a trained :class:`GlobalLocalEmbedder` with SOA.
        maps: ``(local (B, C_l, H, W), global (B, C_g, H', W'))``.
        mode: one of :data:`INTERVENTIONS`.
        seed: seeds the permutations of ``"shuffle_rows"`` (batch ``i`` draws from
            ``derive_seed(seed, i)``).
        batch_size: images per forward pass.
        device: where to run.
    """
    if not isinstance(model, GlobalLocalEmbedder) or not model.soa:
        raise ValueError("model must be a GlobalLocalEmbedder with soa=True")
    if mode not in INTERVENTIONS:
        raise ValueError(f"mode must be one of {INTERVENTIONS}, got {mode!r}")
    if not isinstance(maps, (tuple, list)) or len(maps) != 2:
        raise ValueError(f"maps must be a pair (local_map, global_map), got {type(maps).__name__}")
    device = get_device(device)
    was_training, old_device = model.training, next(model.parameters()).device
    model.eval().to(device)
    out = []
    for i, start in enumerate(range(0, len(maps[0]), batch_size)):
        gen = torch.Generator().manual_seed(derive_seed(seed, i))
        edit = None if mode == "none" else (lambda a, g=gen: intervene(a, mode, g))
        batch = [m[start:start + batch_size].to(device) for m in maps]
        out.append(model(*batch, edit=edit).float().cpu())
    model.train(was_training).to(old_device)
    return torch.cat(out)
