"""What gets trained: one registry of DML heads, one builder, one training recipe.

Every method of the course is a *head* on frozen backbone maps (or, for neighbour
refinement, on frozen embeddings). :data:`HEADS` maps a name to a :class:`Head`: how to
build the module and its paper's training objective, and where the method is taught.
:func:`build_head` builds one, :func:`train_head` seeds, builds and trains it with
:func:`dmlviz.train.fit` and returns it on the CPU in eval mode. Adding a method is one
registry entry: a builder ``(in_channels, embedding_dim, num_classes, **options) →
(module, loss)``.

==================  ====================================================  ==================
name                head                                                  objective (paper)
==================  ====================================================  ==================
``linear``          linear map of feature vectors ``(B, C)``              MS
``baseline``        GAP → linear (:class:`PooledEmbedder`, no attention)  MS
``sa``, ``csalr``   self-attention / CSALR block → GAP → linear           MS + λ CE (eq. 18)
``soa``             global + local heads with second-order attention      MS + 0.03 PA (eq. 7)
``crt`` …           coded residual transform and notebook 04's controls   L_DIV + λ₁ L_MS (+ λ₂ L_CON)
``se`` … ``gau``    Table 3/4 attention blocks of AiA → GAP → linear      MS
``refiner``         cross-attention over k nearest neighbours (Alg. 1)    MS on e^T (eq. 4)
==================  ====================================================  ==================

Options a family's builder takes (passed as ``**options``): CSALR/SA — ``deep_supervision``
(λ of eq. 18; 0 turns the classifier off) and the block's arguments (``landmarks``,
``groups``, ``indicator`` …); SOA — ``loss`` (``"ms"``, ``"proxy_anchor"``, ``"hybrid"``),
``weight`` (λ of eq. 7), ``loss_kwargs`` and the embedder's arguments (``zeta``, ``order`` …);
CRT — ``num_prototypes``, ``branch_prototypes``, ``branch_dims``, ``branch_metric_weights``,
``consistency_weight``, ``consistency_reduction``; AiA (and ``baseline``) — the arguments of
:func:`dmlviz.attention.aia.make_attention` (``reduction``, ``rff_dim``, ``sigma`` …);
``refiner`` — ``num_blocks``, ``num_heads``, ``variant``.

Neighbour refinement trains on ``(e⁰, contexts)`` pairs rather than maps:
:func:`train_refiner` is Alg. 1 — it builds the contexts
(:func:`dmlviz.neighbours.build_contexts`), flushes denormals and can stop early on held-out
classes; ``train_head("refiner", (e⁰, contexts), …)`` trains on contexts you give, nothing else.

Where the heads differ from the papers (every notebook says so where it trains them)
-----------------------------------------------------------------------------------
All heads sit on **frozen** backbone maps (EfficientNet-Lite0, no fine-tuning) and are trained
with P×K batches (:class:`dmlviz.data.PKSampler`) and AdamW — the course's one budget, not each
paper's backbone, batch or schedule.

* **CSALR / SA** (Chen et al., sections 3.2–3.3): one block on one map, so eq. (18) has one
  deep-supervision branch (the paper puts N = 3 modules inside a trained backbone); the metric
  loss ``L_F`` is multi-similarity (the paper keeps each re-ID method's own loss). The block's
  default is ``groups=1``; the paper's setting, 2 groups, is what notebook 02 passes
  (``groups=2``); notebook 07's ``csalr`` row keeps the default.
* **SOA** (Ebrahimpour et al., section 4.2): ``loss_lr = 0.1`` is the paper's 100× ratio
  (proxies 1e-2 vs network 1e-4) *at the default* ``lr = 1e-3``; pass ``loss_lr = 100 · lr``
  when you change ``lr`` (notebook 03 does).
* **CRT** (Kan et al., section 4.1): ``num_prototypes = 8``, two branches of ``K = (8, 16)``
  and ``D = (64, 128)`` — small heads for 8×8 maps; the paper's K₁ = 49, K₂ = 64 and
  D = 128 / 1024 are :class:`dmlviz.attention.crt.TwoBranchCRT`'s own defaults.
  ``gap_linear`` and ``gap_mlp`` are this course's matched controls, not the paper's rows.
* **AiA** (Fang et al., sections 5.2.2–5.2.3): the block sits on a frozen stride-16 map and
  the head is trained with MS alone (the paper trains its backbone end to end with hard-mined
  triplet + cross-entropy); the reduction is ``r = 4`` for every kernel (Table 4's SoP row uses
  ``r = 8``: pass ``reduction=8``); Table 4's "non-linear attention V1/V2" rows are not built.
  ``sop_no_aia``/``gau_no_aia`` (outer embedding only, eqs. 12, 17) and the ``*_no_relu``
  ablations are this course's rows, not the paper's.
* **Refiner** ("Attend to context…", Alg. 1, eq. 4): Alg. 1 "samples b pairs"; here batches are
  P×K like every head. Eq. (4) gives no α, β, λ: the MS loss's own defaults
  (:class:`dmlviz.losses.MultiSimilarityLoss`: α = 2, β = 50, λ = 0.5) are used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dmlviz.attention import aia, crt, csalr, refine
from dmlviz.attention.second_order import INTERVENTIONS, GlobalLocalEmbedder, intervene
from dmlviz.checks import as_tensor, check_embeddings, check_feature_map, check_int, check_labels
from dmlviz.losses import DeepSupervisedLoss, MultiSimilarityLoss, SupervisedEmbedding, make_loss
from dmlviz.neighbours import build_contexts
from dmlviz.train import History, Inputs, fit
from dmlviz.utils import derive_seed, flush_denormals, get_device, on_device, seed_everything

__all__ = ["HEADS", "Head", "PooledEmbedder", "build_head", "embed_intervened", "head_inputs",
           "train_head", "train_refiner"]


# ----------------------------------------------------------------------------- the embedder

class PooledEmbedder(nn.Module):
    """The DML head of every single-map method: attention → GAP → linear (or MLP) → unit length.

    ``y = attention(x)`` (or ``x`` itself without attention), ``e = normalise(g(mean_n y_n))``
    with ``g`` a linear map ``C → D`` or, with ``hidden=h``, Linear(C, h) → GELU → Linear(h, D).

    A block with ``attend(x)`` and ``alpha`` (CSALR, self-attention) is applied as
    ``y = x + α f`` with ``f = attend(x)`` its output before the residual (the same as its
    ``forward``, without computing maps). Deep supervision (CSALR, section 3.3, eq. 18):
    with ``num_classes`` (such a block is then required), in training mode ``forward`` returns a
    :class:`dmlviz.losses.SupervisedEmbedding` with the logits of a classifier on
    ``GAP(x ⊙ f)`` — "deep supervision before the residual connection".

    Args:
        channels: ``C`` of the input map.
        embedding_dim: ``D``.
        attention: a module ``(B, C, H, W) → (B, C, H, W)``, or None (GAP of the raw map).
        hidden: hidden width of an MLP instead of the linear map (notebook 04's matched control).
        num_classes: training classes of the deep-supervision classifier; None: none.

    Shapes: input ``(B, C, H, W)``, output ``(B, D)`` unit-norm embeddings.
    """

    def __init__(self, channels: int, embedding_dim: int, attention: nn.Module | None = None, *,
                 hidden: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.hidden = None if hidden is None else check_int(hidden, "hidden", 1)
        if num_classes is not None and not (hasattr(attention, "attend") and hasattr(attention, "alpha")):
            raise ValueError("num_classes (deep supervision) needs an attention module with "
                             f"attend(x) and alpha, got {type(attention).__name__}")
        self.attention = attention
        c, d = self.channels, self.embedding_dim
        self.linear = (nn.Linear(c, d) if self.hidden is None else
                       nn.Sequential(nn.Linear(c, self.hidden), nn.GELU(), nn.Linear(self.hidden, d)))
        self.classifier = (None if num_classes is None
                           else nn.Linear(c, check_int(num_classes, "num_classes", 2)))

    def forward(self, x: torch.Tensor):
        """Args: x ``(B, C, H, W)``. Returns: ``(B, D)`` unit embeddings, or a
        :class:`~dmlviz.losses.SupervisedEmbedding` in training mode with deep supervision."""
        check_feature_map(x, "x", self.channels, module=self)
        f = None
        if hasattr(self.attention, "attend"):
            f = self.attention.attend(x)  # (B, C, H, W), the block's output before the residual
            y = x + self.attention.alpha * f  # eq. (17) / (2)
        elif self.attention is not None:
            y = self.attention(x)  # (B, C, H, W)
        else:
            y = x
        e = F.normalize(self.linear(y.mean(dim=(2, 3))), dim=1)  # (B, D)
        if self.classifier is not None and self.training:
            logits = self.classifier((x * f).mean(dim=(2, 3)))  # (B, classes), section 3.3
            return SupervisedEmbedding(e, logits)
        return e

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, embedding_dim={self.embedding_dim}, "
                f"hidden={self.hidden}, deep_supervision={self.classifier is not None}")


# ----------------------------------------------------------------------------- builders

def _csalr_family(kind: str) -> Callable:
    def build(c: int, d: int, classes: int | None, *, deep_supervision: float = 1.0, **block):
        attention = (csalr.SelfAttention if kind == "sa" else csalr.CSALR)(c, **block)
        supervised = deep_supervision > 0 and classes is not None
        head = PooledEmbedder(c, d, attention, num_classes=classes if supervised else None)
        return head, DeepSupervisedLoss(MultiSimilarityLoss(), deep_supervision)  # eq. (18)
    return build


def _soa(channels: tuple[int, int], d: int, classes: int | None, *, loss: str = "hybrid",
         weight: float = 0.03, loss_kwargs: Mapping | None = None, **embedder):
    if classes is None and loss != "ms":
        raise ValueError(f"loss={loss!r} has one proxy per class: pass num_classes")
    head = GlobalLocalEmbedder(channels[0], channels[1], d, **embedder)
    return head, make_loss(loss, classes or 2, d, weight, **dict(loss_kwargs or {}))  # eq. (7)


def _crt_family(variant: str) -> Callable:
    def build(c: int, d: int, classes: int | None, *, num_prototypes: int = 8,
              branch_prototypes: tuple[int, int] = (8, 16), branch_dims: tuple[int, int] = (64, 128),
              branch_metric_weights: tuple[float, float] = (1.0, 0.1),
              consistency_weight: float = 0.9, consistency_reduction: str = "sum"):
        ms, k = MultiSimilarityLoss(), num_prototypes
        if variant == "gap_linear":
            return PooledEmbedder(c, d), ms
        if variant == "gap_mlp":
            with torch.random.fork_rng(devices=[]):  # the CRT it matches consumes no randomness
                target = sum(p.numel() for p in crt.CodedResidualTransform(c, k, d).parameters())
            return PooledEmbedder(c, d, hidden=crt.matched_hidden(c, d, target)), ms
        if variant.startswith("crt"):
            model = crt.CodedResidualTransform(c, 1 if variant == "crt_k1" else k, d,
                                               subtract_prototype=variant != "crt_no_residual")
            return model, crt.CRTObjective(model, ms, diversity_weight=float(variant != "crt_no_div"))
        model = crt.TwoBranchCRT(c, tuple(branch_prototypes), tuple(branch_dims))
        lam = consistency_weight if variant == "two_branch_con" else 0.0
        return model, crt.CRTObjective(model, ms, metric_weight=tuple(branch_metric_weights),
                                       consistency_weight=lam,
                                       consistency_reduction=consistency_reduction)
    return build


def _aia_family(variant: str) -> Callable:
    def build(c: int, d: int, classes: int | None, **knobs):
        return PooledEmbedder(c, d, aia.make_attention(variant, c, **knobs)), MultiSimilarityLoss()
    return build


def _linear(c: int, d: int, classes: int | None):
    return nn.Linear(c, d), MultiSimilarityLoss()


def _refiner(dim: int, d: int, classes: int | None, *, num_blocks: int = 8, num_heads: int = 8,
             variant: str = "full"):
    return refine.NeighborRefiner(dim, num_blocks, num_heads, variant=variant), MultiSimilarityLoss()


@dataclass(frozen=True)
class Head:
    """One entry of :data:`HEADS`.

    Attributes:
        label: the name shown in tables and figures.
        paper: where the method comes from, and the notebook that teaches it.
        objective: the training objective, in words.
        build: ``(in_channels, embedding_dim, num_classes, **options) → (module, loss)``.
        inputs: ``"map"`` (one map ``(B, C, H, W)``), ``"maps"`` (the pair ``(local,
            global)``), ``"vectors"`` (features ``(B, C)``) or ``"embeddings"`` (the pair
            ``(e⁰ (B, D), contexts (B, K, D))``).
        loss_lr: learning rate of the loss's own parameters (Proxy-Anchor proxies), or None
            for the model's.
    """

    label: str
    paper: str
    objective: str
    build: Callable[..., tuple[nn.Module, nn.Module]] = field(repr=False)
    inputs: str = "map"
    loss_lr: float | None = None


_CRT = "Kan et al. NeurIPS-22, notebook 04"
_AIA = "Fang et al. TPAMI, notebook 05"
_AIA_LABELS = {"se": "SE", "nonlocal": "NL", "lin": "Lin + AiA", "sop": "SoP + AiA",
               "gau": "Gau + AiA", "lin_no_aia": "Lin", "sop_no_aia": "SoP", "gau_no_aia": "Gau",
               "lin_no_relu": "Lin + AiA, no ReLU", "sop_no_relu": "SoP + AiA, no ReLU",
               "gau_no_relu": "Gau + AiA, no ReLU"}

#: name → :class:`Head`, the one registry of what the course trains.
HEADS: dict[str, Head] = {
    "linear": Head("linear embedding of feature vectors", "the base model of notebook 06", "MS",
                   _linear, inputs="vectors"),
    "baseline": Head("baseline (GAP + linear)", "notebook 00", "MS", _aia_family("baseline")),
    "sa": Head("+ self-attention", "CSALR paper's SA baseline, notebook 02",
               "MS + deep supervision (eq. 18)", _csalr_family("sa")),
    "csalr": Head("+ CSALR", "Chen et al. IJCAI-20, notebook 02",
                  "MS + deep supervision (eq. 18)", _csalr_family("csalr")),
    "soa": Head("global/local + SOA, hybrid loss", "Ebrahimpour et al. WACV-22, notebook 03",
                "MS + 0.03 Proxy-Anchor (eq. 7)", _soa, inputs="maps", loss_lr=1e-1),
    "gap_linear": Head("GAP + linear (control)", _CRT, "MS", _crt_family("gap_linear")),
    "gap_mlp": Head("GAP + MLP, as many parameters as crt (control)", _CRT, "MS",
                    _crt_family("gap_mlp")),
    "crt": Head("CRT: K prototypes, L_DIV + λ₁ L_MS", _CRT, "MS + prototype diversity (eq. 3)",
                _crt_family("crt")),
    "crt_k1": Head("CRT with K = 1 (one perspective)", _CRT, "MS + L_DIV", _crt_family("crt_k1")),
    "crt_no_residual": Head("CRT without the − c_k of eq. (1)", _CRT, "MS + L_DIV",
                            _crt_family("crt_no_residual")),
    "crt_no_div": Head("CRT without L_DIV", _CRT, "MS", _crt_family("crt_no_div")),
    "two_branch": Head("two CRT branches, λ₂ = 0", _CRT, "λ₁ MS per branch + L_DIV",
                       _crt_family("two_branch")),
    "two_branch_con": Head("two CRT branches + λ₂ L_CON", _CRT,
                           "λ₁ MS per branch + L_DIV + λ₂ L_CON (eq. 5)",
                           _crt_family("two_branch_con")),
    **{name: Head(_AIA_LABELS[name], _AIA, "MS", _aia_family(name))
       for name in aia.VARIANTS + aia.ABLATIONS if name != "baseline"},
    "refiner": Head("+ neighbour refinement", "'Attend to context…' (ICLR submission), notebook 06",
                    "MS on e^T (eq. 4)", _refiner, inputs="embeddings"),
}


def _check_head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {name!r}")
    return HEADS[name]


def build_head(name: str, in_channels: int | tuple[int, int], embedding_dim: int = 64,
               num_classes: int | None = None, **options) -> tuple[nn.Module, nn.Module]:
    """The module and the training loss of head ``name``, freshly initialised (seed first).

    Args:
        name: a key of :data:`HEADS`.
        in_channels: ``C`` of the map; ``(C_local, C_global)`` for ``inputs="maps"`` heads;
            ``D`` of the embeddings for the refiner.
        embedding_dim: ``D`` of the output (ignored by the refiner and the two-branch CRT
            heads, whose sizes are their own options).
        num_classes: training classes (deep-supervision classifier, Proxy-Anchor proxies).
        **options: the family's options (module docstring).

    Returns:
        ``(module, loss)`` for :func:`dmlviz.train.fit`.
    """
    head = _check_head(name)
    if head.inputs == "maps":
        if (not isinstance(in_channels, (tuple, list)) or len(in_channels) != 2):
            raise ValueError(f"head {name!r} takes two maps: in_channels must be (C_local, "
                             f"C_global), got {in_channels!r}")
        channels = tuple(check_int(c, "in_channels", 1) for c in in_channels)
    else:
        channels = check_int(in_channels, "in_channels", 1)
    embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", 2)
    try:
        return head.build(channels, embedding_dim, num_classes, **options)
    except TypeError as err:
        raise ValueError(f"head {name!r}: {err} (see dmlviz.heads for each family's "
                         "options)") from None


def head_inputs(name: str, maps: Inputs) -> Inputs:
    """What head ``name`` is called on: the local map alone, or the pair ``(local, global)``."""
    if _check_head(name).inputs == "map" and isinstance(maps, (tuple, list)):
        return maps[0]
    return maps


def _in_channels(head: Head, inputs: Inputs):
    if head.inputs == "map":
        check_feature_map(inputs, "train_inputs")
        return inputs.shape[1]
    if head.inputs == "vectors":
        if not torch.is_tensor(inputs) or inputs.ndim != 2:
            raise ValueError(f"train_inputs must be feature vectors (N, C) for head inputs="
                             f"'vectors', got {getattr(inputs, 'shape', type(inputs).__name__)}")
        return inputs.shape[1]
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise ValueError(f"train_inputs must be a pair for a head with inputs={head.inputs!r}, "
                         f"got {type(inputs).__name__}")
    return (inputs[0].shape[1], inputs[1].shape[1]) if head.inputs == "maps" else inputs[0].shape[1]


def train_head(name: str, train_inputs: Inputs, train_labels: torch.Tensor,
               test_inputs: Inputs | None = None, test_labels: torch.Tensor | None = None, *,
               embedding_dim: int = 64, seed: int = 0, epochs: int = 10, p: int = 8, k: int = 4,
               lr: float = 1e-3, loss_lr: float | None = None, eval_every: int = 1,
               device: str | torch.device = "auto", cache: bool = True, progress: bool = False,
               metric_kwargs: dict | None = None, **options) -> tuple[nn.Module, History]:
    """Seed, build head ``name`` (:func:`build_head`) and train it (:func:`dmlviz.train.fit`).

    The head is built right after ``seed_everything(seed)``, so every head of one seed starts
    from its own fixed weights and sees the same batches — the paired runs the claims ledger
    compares.

    Args:
        name: a key of :data:`HEADS`.
        train_inputs: ``(N, C, H, W)`` maps, the pair ``(local, global)`` for ``"maps"``
            heads, ``(N, C)`` vectors for ``"vectors"`` heads, or ``(e⁰ (N, D), contexts (N, K, D))`` for the refiner.
        train_labels: ``(N,)`` class ids in ``[0, num_classes)``.
        test_inputs, test_labels: unseen classes for the periodic metrics (optional).
        embedding_dim: ``D``.
        seed: seeds the initial weights and the batch order.
        epochs, p, k, lr, eval_every, device, cache, progress, metric_kwargs: as for
            :func:`dmlviz.train.fit`.
        loss_lr: learning rate of the loss's parameters; default the head's
            :attr:`Head.loss_lr` (the proxies of ``soa``: 0.1).
        **options: the head family's options (module docstring).

    Returns:
        ``(model, history)``: the trained model on the CPU in eval mode, and its history.
    """
    head = _check_head(name)
    train_labels = check_labels(train_labels, "train_labels")
    if int(train_labels.min()) < 0:
        raise ValueError(f"train_labels must be class ids >= 0, got min {int(train_labels.min())}")
    channels = _in_channels(head, train_inputs)
    seed_everything(seed)
    model, loss = build_head(name, channels, embedding_dim, int(train_labels.max()) + 1, **options)
    test = {} if test_inputs is None else {"test_inputs": test_inputs, "test_labels": test_labels}
    history = fit(model, loss, train_inputs, train_labels, epochs=epochs, p=p, k=k, lr=lr,
                  loss_lr=head.loss_lr if loss_lr is None else loss_lr, eval_every=eval_every,
                  seed=seed, device=device, cache=cache, progress=progress,
                  metric_kwargs=metric_kwargs, **test)
    return model.cpu().eval(), history


# ----------------------------------------------------------------------------- refinement

def _held_out(embeddings, labels, contexts, k, early_stopping, seed):
    """Split for early stopping: ``(fit_e, fit_y, fit_contexts, val_e, val_y)``."""
    if isinstance(early_stopping, (tuple, list)):  # held-out classes given
        if len(early_stopping) != 2:
            raise ValueError("early_stopping must be a fraction or a pair (embeddings, labels) "
                             f"of held-out classes, got a sequence of {len(early_stopping)}")
        val_e = as_tensor(early_stopping[0], "early_stopping embeddings").float()
        val_y = check_labels(early_stopping[1], "early_stopping labels")
        check_embeddings(val_e, val_y, name="early_stopping embeddings")
        fit_ctx = contexts if contexts is not None else build_contexts(embeddings, k)[0]
        return embeddings, labels, fit_ctx, val_e, val_y
    if not 0.0 < float(early_stopping) < 1.0:
        raise ValueError("early_stopping must be None, a fraction in (0, 1) or a pair "
                         f"(embeddings, labels), got {early_stopping}")
    classes = labels.unique()
    n_val = max(1, round(float(early_stopping) * len(classes)))
    if len(classes) - n_val < 2:
        raise ValueError(f"early_stopping = {early_stopping} leaves {len(classes) - n_val} of "
                         f"{len(classes)} training classes to train on; at least 2 are needed")
    g = torch.Generator().manual_seed(derive_seed(seed, 1))
    held = classes[torch.randperm(len(classes), generator=g)[:n_val]]
    val = torch.isin(labels, held)
    fit_e = embeddings[~val]
    # the classes that train find their neighbours among themselves (no held-out rows)
    fit_ctx = contexts[~val] if contexts is not None else build_contexts(fit_e, k)[0]  # (N_fit, K, D)
    return fit_e, labels[~val], fit_ctx, embeddings[val], labels[val]


def train_refiner(embeddings: torch.Tensor, labels: torch.Tensor, *, k: int = 8,
                  num_blocks: int = 8, num_heads: int = 8, variant: str = "full",
                  contexts: torch.Tensor | None = None, early_stopping=None,
                  test_embeddings: torch.Tensor | None = None,
                  test_labels: torch.Tensor | None = None, epochs: int = 20, p: int = 8,
                  per_class: int = 4, lr: float = 1e-3, eval_every: int = 5, seed: int = 0,
                  device: str | torch.device = "auto", cache: bool = True,
                  progress: bool = True) -> tuple[nn.Module, History]:
    """Alg. 1: train the ``refiner`` head with the MS loss on ``e^T`` (eq. 4).

    Eq. (4) as printed has ``log Σ exp(·)`` with no ``1 +`` inside the logarithms; this uses
    :class:`dmlviz.losses.MultiSimilarityLoss`, Wang et al.'s form with ``log(1 + Σ exp(·))``
    (the loss the paper cites), so a batch whose terms all vanish gives 0, not −∞.

    The base model is frozen: its training-set embeddings and their kNN contexts (self
    excluded, :func:`dmlviz.neighbours.build_contexts`) are computed once and packed as the
    pair of inputs ``(e⁰, C)`` that :func:`dmlviz.train.fit` indexes together and passes as
    ``refiner(e⁰, C)`` — the same P×K loop, optimiser and checkpoint cache as every head.
    Denormal floats are flushed to zero while it trains
    (:func:`dmlviz.utils.flush_denormals`; the previous setting is restored).

    Args:
        embeddings: ``(N, D)`` initial training embeddings.
        labels: ``(N,)`` training labels.
        k: neighbours per context.
        num_blocks, num_heads, variant: see :class:`dmlviz.attention.refine.NeighborRefiner`.
        contexts: ``(N, K, D)`` training contexts to use instead of the kNN ones (e.g.
            :func:`dmlviz.neighbours.purity_matched_contexts`); None builds them.
        early_stopping: held-out classes to stop on — a pair ``(embeddings, labels)`` (best
            when the base model never saw them either), or a fraction of the training
            *classes* (seeded choice) taken out of ``embeddings``. The refiner trains on the
            rest for up to ``epochs`` epochs, Recall@1 on the held-out classes (contexts from
            their own rows, as a test gallery) is measured after every epoch, and the returned
            refiner is the one after the earliest best epoch ≥ 1 (retrained to it; training is
            deterministic). Its ``trained_epochs`` attribute says which.
        test_embeddings, test_labels: unseen classes, contexts from their own gallery, for
            the periodic Recall@K of :func:`dmlviz.train.fit` (optional; ignored with
            ``early_stopping``).
        epochs, p, lr, eval_every, seed, device, cache, progress: as in :func:`dmlviz.train.fit`.
        per_class: samples per class in a P×K batch (``fit``'s ``k``).

    Returns:
        ``(refiner, history)``: the trained refiner (CPU, eval mode, ``trained_epochs`` set)
        and its :class:`dmlviz.train.History` (with ``early_stopping``: of the run over all
        epochs, ``metrics["recall@1"]`` on the held-out classes at ``eval_epochs``).
    """
    embeddings = as_tensor(embeddings, "embeddings").float()
    labels = check_labels(labels, "labels")
    check_embeddings(embeddings, labels)
    if contexts is not None:
        contexts = as_tensor(contexts, "contexts").float()
        if contexts.ndim != 3 or contexts.shape[0] != len(embeddings) or contexts.shape[2] != \
                embeddings.shape[1]:
            raise ValueError(f"contexts must be (N, K, D) = ({len(embeddings)}, K, "
                             f"{embeddings.shape[1]}) like embeddings, got {tuple(contexts.shape)}")
        contexts = F.normalize(contexts, dim=-1)
        k = contexts.shape[1]

    def new_refiner() -> nn.Module:
        torch.manual_seed(seed)
        return build_head("refiner", embeddings.shape[1], num_blocks=num_blocks,
                          num_heads=num_heads, variant=variant)[0]

    def train(model, inputs, y, **kw) -> History:
        return fit(model, MultiSimilarityLoss(), inputs, y, p=p, k=per_class, lr=lr, seed=seed,
                   device=device, cache=cache, progress=progress, **kw)  # eq. (4)

    with flush_denormals():
        if early_stopping is None:
            if contexts is None:
                contexts, _ = build_contexts(embeddings, k)  # (N, K, D) Alg. 1: training contexts
            test = {}
            if test_embeddings is not None:
                test_embeddings = as_tensor(test_embeddings, "test_embeddings").float()
                test_contexts, _ = build_contexts(test_embeddings, k)  # (M, K, D)
                test = {"test_inputs": (test_embeddings, test_contexts), "test_labels": test_labels}
            refiner = new_refiner()
            history = train(refiner, (embeddings, contexts), labels, epochs=epochs,
                            eval_every=eval_every, **test)
            refiner.trained_epochs = epochs
            return refiner.cpu().eval(), history
        fit_e, fit_y, fit_ctx, val_e, val_y = _held_out(embeddings, labels, contexts, k,
                                                        early_stopping, seed)
        val_ctx, _ = build_contexts(val_e, k)  # held-out classes: their own gallery
        run = new_refiner()
        history = train(run, (fit_e, fit_ctx), fit_y, epochs=epochs, eval_every=1,
                        test_inputs=(val_e, val_ctx), test_labels=val_y)
        scores = history.metrics["recall@1"]  # at eval_epochs 0, 1, …, epochs
        best = max(range(1, len(scores)), key=lambda i: (scores[i], -i))  # earliest best epoch ≥ 1
        best_epoch = history.eval_epochs[best]
        refiner = new_refiner()
        if best_epoch == epochs:
            refiner.load_state_dict(run.state_dict())
        else:
            train(refiner, (fit_e, fit_ctx), fit_y, epochs=best_epoch, eval_every=best_epoch)
        refiner.trained_epochs = best_epoch
        return refiner.cpu().eval(), history


# ----------------------------------------------------------------------------- using a trained SOA head

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
    out = []
    with on_device(model, device):  # back on its device, in its modes, afterwards
        for i, start in enumerate(range(0, len(maps[0]), batch_size)):
            gen = torch.Generator().manual_seed(derive_seed(seed, i))
            edit = None if mode == "none" else (lambda a, g=gen: intervene(a, mode, g))
            batch = [m[start:start + batch_size].to(device) for m in maps]
            out.append(model(*batch, edit=edit).float().cpu())
    return torch.cat(out)

