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

**Hybrid loss** (eq. 7): ``L = L_MS + λ L_PA`` with ``λ = 0.03``, the proxies trained with
a 100× larger learning rate — :class:`dmlviz.losses.HybridLoss` and
:func:`dmlviz.losses.parameter_groups`; :func:`dmlviz.train.fit` takes ``loss_lr``.

Interpretations — no copy of the paper was at hand when this was written; where its text
leaves a choice open (or memory of it is not certain) we made the usual one and say so:

* ``C'`` (``reduced``) defaults to ``C // 2`` and ``v`` is reduced to ``C'`` as well, as in
  the non-local block (Wang et al., CVPR 2018) that SOA is built on; ``φ`` is a 1×1
  convolution back to ``C`` channels.
* ``φ`` is **zero-initialised** (weight and bias), so ``f_soa = f`` at the start of training
  and the head starts as plain pooling of the backbone features (the non-local block's
  zero-initialised BN plays the same role). Eq. (2) itself is tested as written for any ``φ``.
* ``ζ`` is a fixed scalar (default 1, as in the issue's signature), not learned and not
  ``1/√C'``. On unnormalised backbone features ζ = 1 saturates the softmax: on EfficientNet-Lite0's
  stride-16 map ``qᵀk`` spreads by ~75 within a row at initialisation, each row puts ~0.98 of
  its weight on one position and passes almost no gradient to q and k. Notebook 03 therefore
  uses ζ = 0.01 (logits of order 1) and reports ζ = 1 as an ablation. ``zeta=0`` (uniform
  attention) is allowed as a control.
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

__all__ = [
    "BRANCHES",
    "LOSSES",
    "GlobalLocalEmbedder",
    "SecondOrderAttention",
    "fit_global_local",
    "gap_gmp",
    "local_global_maps",
    "make_loss",
    "object_attention_mass",
    "object_fraction",
    "second_order_attention",
    "space_to_depth",
]

BRANCHES = ("both", "local", "global")



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

    Attributes:
        query, key, value: 1×1 convolutions ``C → C'``.
        phi: 1×1 convolution ``C' → C``, zero-initialised so the block starts as the
            identity (see the module docstring).
    """

    def __init__(self, channels: int, reduced: int | None = None, zeta: float = 1.0) -> None:
        super().__init__()
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

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Args: x ``(B, C, H, W)``. Returns: ``f_soa (B, C, H, W)``, and with
        ``return_maps=True`` also the attention ``a (B, N, N)`` (row = query position)."""
        check_feature_map(x, "x", self.channels, module=self)
        b, _, h, w = x.shape
        q, k, v = (conv(x).flatten(2) for conv in (self.query, self.key, self.value))  # (B, C', N)
        out, a = second_order_attention(q, k, v, self.zeta)  # (B, C', N), (B, N, N) eq. (1)
        y = x + self.phi(out.reshape(b, self.reduced, h, w))  # (B, C, H, W) eq. (2)
        return (y, a) if return_maps else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduced={self.reduced}, zeta={self.zeta}"


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
        normalize: L2-normalise the output embedding.
    """

    def __init__(self, local_channels: int, global_channels: int, embedding_dim: int, *,
                 soa: bool = True, single_head: bool = False, branches: str = "both",
                 reduced: int | None = None, zeta: float = 1.0, normalize: bool = True) -> None:
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
            return SecondOrderAttention(c, reduced, zeta) if soa else nn.Identity()

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
                return_maps: bool = False):
        """Embed a batch.

        Args:
            local_map: ``(B, C_local, H, W)`` stride-16 features.
            global_map: ``(B, C_global, H', W')`` stride-32 features (ignored, but checked,
                with ``branches="local"``; likewise ``local_map`` with ``"global"``).
            return_maps: also return ``{head name: attention (B, N, N)}`` (empty without SOA).

        Returns:
            ``(B, D)`` embeddings (unit norm with ``normalize=True``), and the maps if asked.
        """
        maps, parts = {}, []
        for name, x in self._inputs(local_map, global_map).items():
            if name not in self.heads:
                continue  # the branch left out by the local-only / global-only ablation
            head = self.heads[name]
            if self.soa:
                x, maps[name] = head(x, return_maps=True)  # (B, C, H, W), (B, N, N)
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


def make_loss(name: str, num_classes: int, embedding_dim: int, weight: float = 0.03) -> nn.Module:
    """The three losses the paper compares (Figs. 1, 7), by name.

    Args:
        name: ``"ms"`` (multi-similarity), ``"proxy_anchor"`` or ``"hybrid"`` (eq. 7,
            ``L_MS + λ L_PA``).
        num_classes: training classes ``C`` (one proxy each).
        embedding_dim: ``D``.
        weight: λ of the hybrid loss (paper: 0.03).
    """
    from dmlviz.losses import HybridLoss, MultiSimilarityLoss, ProxyAnchorLoss

    if name == "ms":
        return MultiSimilarityLoss()
    if name == "proxy_anchor":
        return ProxyAnchorLoss(num_classes, embedding_dim)
    if name == "hybrid":
        return HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(num_classes, embedding_dim),
                          weight=weight)  # eq. (7)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def fit_global_local(train_maps: tuple[torch.Tensor, torch.Tensor], train_labels: torch.Tensor,
                     test_maps: tuple[torch.Tensor, torch.Tensor], test_labels: torch.Tensor, *,
                     loss: str = "hybrid", embedding_dim: int = 64, seed: int = 0,
                     hybrid_weight: float = 0.03, epochs: int = 10, p: int = 8, k: int = 4,
                     lr: float = 1e-3, proxy_lr: float = 1e-1, eval_every: int = 1,
                     device: str | torch.device = "auto", progress: bool = False,
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
        **embedder_kwargs: ``soa``, ``single_head``, ``branches``, ``reduced``, ``zeta``.

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
    criterion = make_loss(loss, num_classes, embedding_dim, hybrid_weight)
    history = fit(model, criterion, tuple(train_maps), train_labels,
                  test_inputs=tuple(test_maps), test_labels=test_labels, epochs=epochs, p=p,
                  k=k, lr=lr, loss_lr=proxy_lr, eval_every=eval_every, seed=seed,
                  device=device, progress=progress)
    return model, history
