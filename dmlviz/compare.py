"""The methods side by side: one benchmark, one backbone, one training budget (notebook 07).

Every method of the course becomes a *head* on the same frozen EfficientNet-Lite0 feature
maps, trained with the same P×K loop (:func:`dmlviz.train.fit`), the same epochs, batch
and learning rate, from the same seeds, and evaluated on the same unseen classes:

=============  ========================================================  =====================
method         head                                                      objective
=============  ========================================================  =====================
``baseline``   GAP → linear (no attention)                               MS
``sa``         self-attention block (CSALR paper's SA baseline) → GAP    MS + deep supervision
``csalr``      CSALR block (Nyström-compressed attention, eq. 17) → GAP  MS + deep supervision
``soa``        global + local heads with second-order attention (eq. 4)  MS + 0.03·PA (eq. 7)
``crt``        coded residual transform over 16 prototypes (eqs. 1–2)    MS + L_DIV (eq. 3)
``aia``        attention in attention, Gaussian (RFF) kernel → GAP       MS
=============  ========================================================  =====================

Choices (the notebook states them next to the table):

* One tap for every single-map head: the stride-16 map (112 channels); ``soa`` also gets the
  stride-32 map, since two scales are what that method is about. CSALR takes ``H/2 × W/2``
  landmarks (16 of the 64 positions of an 8×8 map).
* Each method trains with its own paper's objective where that objective is a function of
  the head's output and the labels (every one above plugs into ``loss(output, labels)`` of
  :func:`dmlviz.train.fit`): deep supervision (eq. 18, λ = 1) for SA and CSALR, the hybrid
  loss for SOA, the prototype-diversity term for CRT. CRT's cross-branch consistency needs
  two branches and is left out (notebook 04 measures it).
* Neighbour refinement (notebook 06) is not a head: it is trained on top of the frozen
  embeddings of the best head (by mean Recall@1) and reported as one more row.
* Costs (parameters, FLOPs, images/s, peak memory) are of the head alone at one input, on
  the device in use, measured in the same run (:mod:`dmlviz.cost`); the frozen backbone is
  shared by all rows and not counted. Deep-supervision classifiers only run in training and
  are not counted either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from dmlviz.cost import module_cost
from dmlviz.data import ImageFolder, class_disjoint_split, load_digits, make_shapes
from dmlviz.features import local_global_maps
from dmlviz.heads import HEADS, build_head, head_inputs, train_head, train_refiner
from dmlviz.metrics import embedding_space_density, retrieval_metrics, spectral_decay
from dmlviz.neighbours import refine_embeddings
from dmlviz.train import embed

__all__ = ["MEAN_STD_METRICS", "METHODS", "Benchmark", "Method", "comparison_table",
           "embedding_metrics", "load_benchmark", "method_costs", "method_options",
           "refine_on_top", "run_benchmark", "summarise", "validation_split"]


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a head of :data:`dmlviz.heads.HEADS` and its options here.

    Attributes:
        label: the name shown in tables and figures.
        head: the key of :data:`dmlviz.heads.HEADS` that is trained.
        options: the head's options in this comparison (module docstring).
    """

    label: str
    head: str
    options: Mapping = field(default_factory=dict)

    @property
    def paper(self) -> str:
        """Where the method comes from (and the notebook that teaches it)."""
        return HEADS[self.head].paper

    @property
    def objective(self) -> str:
        """The training objective, in words."""
        return HEADS[self.head].objective

    @property
    def two_maps(self) -> bool:
        """The head takes ``(local, global)`` maps instead of the local map alone."""
        return HEADS[self.head].inputs == "maps"


METHODS: dict[str, Method] = {
    "baseline": Method("baseline (GAP + linear)", "baseline"),
    "sa": Method("+ self-attention", "sa"),
    "csalr": Method("+ CSALR", "csalr"),  # landmarks: H/2 × W/2 of the map (method_options)
    "soa": Method("global/local + SOA, hybrid loss", "soa",
                  {"zeta": 0.01}),  # notebook 03, section 1: ζ = 1 saturates on these maps
    "crt": Method("+ CRT", "crt", {"num_prototypes": 16}),
    "aia": Method("+ AiA (Gaussian)", "gau", {"sigma": 1.0}),
}

MEAN_STD_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision",
                    "nmi", "density", "spectral_decay")


@dataclass
class Benchmark:
    """One class-disjoint benchmark on frozen backbone maps.

    Attributes:
        name: ``"shapes"``, ``"digits"`` or the user's folder.
        train_maps, test_maps: ``(local (N, 112, H, W), global (N, 320, H', W'))`` maps of the
            training classes and of the unseen test classes.
        train_labels, test_labels: ``(N,)`` class ids (training ids are ``0 … C−1``).
    """

    name: str
    train_maps: tuple[torch.Tensor, torch.Tensor]
    train_labels: torch.Tensor
    test_maps: tuple[torch.Tensor, torch.Tensor]
    test_labels: torch.Tensor

    def describe(self) -> str:
        local, glob = self.train_maps
        return (f"{self.name}: {len(self.train_labels)} training images of "
                f"{len(self.train_labels.unique())} classes, {len(self.test_labels)} test images of "
                f"{len(self.test_labels.unique())} unseen classes; local map "
                f"{tuple(local.shape[1:])}, global map {tuple(glob.shape[1:])}")


def _per_class(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Indices of at most ``per_class`` random samples of every class (all when None)."""
    if per_class is None:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    keep = [idx[torch.randperm(len(idx), generator=gen)[:per_class]]
            for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique())]
    return torch.cat(keep).sort().values


def load_benchmark(dataset: str, backbone: nn.Module, *, per_class: int | None = 20,
                   seed: int = 0, input_size: int = 128, device: str | torch.device = "auto",
                   progress: bool = True) -> Benchmark:
    """Images → frozen EfficientNet-Lite0 maps (disk-cached) → class-disjoint split.

    Args:
        dataset: ``"shapes"`` (48 procedural classes, :func:`dmlviz.data.make_shapes`),
            ``"digits"`` (scikit-learn's 10 digit classes) or the path of a folder with one
            sub-folder per class (:class:`dmlviz.data.ImageFolder`).
        backbone: an :class:`dmlviz.backbones.EfficientNetLite0`.
        per_class: images per class (shapes are generated with this many; digits and folders
            are subsampled at random); None keeps every image of digits and folders.
        seed: seed of the shapes and of the subsample.
        input_size: images are resized (whole image, no crop) to this side.
        device, progress: of the feature extraction.
    """
    if dataset == "shapes":
        data = make_shapes(num_classes=48, per_class=per_class or 40, size=64, seed=seed)
    elif dataset == "digits":
        data = load_digits()
    elif Path(dataset).is_dir():
        data = ImageFolder(dataset).load(size=input_size)
    else:
        raise FileNotFoundError(f"dataset must be 'shapes', 'digits' or an existing folder with "
                                f"one sub-folder per class, got {dataset!r}")
    if dataset != "shapes":
        data = data.subset(_per_class(data.labels, per_class, seed))
    train_idx, test_idx = class_disjoint_split(data.labels)
    images = backbone.prepare(data.as_uint8(), mode="resize", size=input_size)
    local, glob = local_global_maps(backbone, images, device=device, progress=progress)
    train_labels = data.labels[train_idx]
    _, train_labels = train_labels.unique(return_inverse=True)  # ids 0 … C−1
    return Benchmark(Path(dataset).name if dataset not in ("shapes", "digits") else dataset,
                     (local[train_idx], glob[train_idx]), train_labels,
                     (local[test_idx], glob[test_idx]), data.labels[test_idx])


def _check_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]


def method_options(name: str, grid: tuple[int, int] = (8, 8),
                   options: Mapping[str, Mapping] | None = None) -> dict:
    """The head options of method ``name`` here: its :attr:`Method.options`, CSALR's
    ``H/2 × W/2`` landmarks of a ``grid = (H, W)`` map, then the user's
    ``options[name]`` (e.g. ``{"soa": {"zeta": 0.1}}``) on top."""
    method = _check_method(name)
    out = dict(method.options)
    if method.head == "csalr":
        out["landmarks"] = (max(1, grid[0] // 2), max(1, grid[1] // 2))
    return out | dict((options or {}).get(name, {}))


def _embed(name: str, head: nn.Module, maps, device) -> torch.Tensor:
    return embed(head, head_inputs(METHODS[name].head, _check_maps(maps, "maps")), device=device)


def _check_maps(maps, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (not isinstance(maps, (tuple, list)) or len(maps) != 2
            or not all(torch.is_tensor(m) and m.ndim == 4 for m in maps)
            or len(maps[0]) != len(maps[1])):
        raise ValueError(f"{name} must be a pair (local (N, C, H, W), global (N, C', H', W')) "
                         f"of equal length N, got {type(maps).__name__}")
    return maps[0], maps[1]


def refine_on_top(train_embeddings: torch.Tensor, train_labels: torch.Tensor,
                  test_embeddings: torch.Tensor, *, k: int = 8, num_blocks: int = 2,
                  epochs: int = 10, seed: int = 0, device: str | torch.device = "auto"):
    """Neighbour refinement (notebook 06) trained on one head's frozen training embeddings
    and applied to its test gallery: returns ``(refined test embeddings (M, D), refiner)``."""
    p = min(8, len(torch.as_tensor(train_labels).unique()))
    refiner, _ = train_refiner(train_embeddings, train_labels, k=k, num_blocks=num_blocks,
                               epochs=epochs, p=p, seed=seed, device=device, progress=False)
    return refine_embeddings(refiner, test_embeddings, k, device=device), refiner


def method_costs(names: Sequence[str], local_shape: tuple[int, int, int],
                 global_shape: tuple[int, int, int], *, embedding_dim: int = 64,
                 num_classes: int = 24, batch_size: int = 32, repeats: int = 5,
                 device: str | torch.device = "auto", options: Mapping[str, Mapping] | None = None):
    """:class:`dmlviz.cost.ModuleCost` of each method's head at one input size.

    Args:
        names: keys of :data:`METHODS`.
        local_shape, global_shape: ``(C, H, W)`` of one image's maps.
        embedding_dim, num_classes: as for :func:`dmlviz.heads.build_head`.
        options: per-method overrides, as for :func:`method_options`.
        batch_size, repeats, device: as for :func:`dmlviz.cost.module_cost`.

    Returns:
        ``{name: ModuleCost}``.
    """
    out = {}
    for name in names:
        method = _check_method(name)
        channels = (local_shape[0], global_shape[0]) if method.two_maps else local_shape[0]
        head, _ = build_head(method.head, channels, embedding_dim, num_classes,
                             **method_options(name, tuple(local_shape[1:]), options))
        shape = (tuple(local_shape), tuple(global_shape)) if method.two_maps \
            else tuple(local_shape)
        out[name] = module_cost(head, shape, batch_size=batch_size, repeats=repeats,
                                device=device)
    return out


def embedding_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *,
                      seed: int = 0) -> dict[str, float]:
    """Every column of the comparison table for one gallery: Recall@1/2/4/8, MAP@R,
    R-precision, NMI (:func:`dmlviz.metrics.retrieval_metrics`), embedding-space density and
    spectral decay (:mod:`dmlviz.metrics`; the CRT paper's generalisation measures)."""
    out = retrieval_metrics(embeddings, labels, seed=seed)
    out["density"] = float(embedding_space_density(embeddings, labels))
    out["spectral_decay"] = float(spectral_decay(embeddings, drop_largest=False))  # all values (@1)
    return out


def summarise(per_seed: Mapping[str, Sequence[Mapping[str, float]]],
              metrics: Sequence[str] = MEAN_STD_METRICS) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds: ``{row: {metric: (mean, std)}}``.

    ``std`` is the sample standard deviation (``ddof = 1``); with one seed it is ``nan``, so
    a table never shows a spread that was not measured.
    """
    out = {}
    for row, runs in per_seed.items():
        if not runs:
            raise ValueError(f"per_seed[{row!r}] is empty: every row needs at least one seed")
        out[row] = {}
        for metric in metrics:
            values = torch.tensor([float(r[metric]) for r in runs], dtype=torch.float64)
            std = values.std().item() if len(values) > 1 else math.nan
            out[row][metric] = (values.mean().item(), std)
    return out


def comparison_table(summary: Mapping[str, Mapping[str, tuple[float, float]]],
                     costs: Mapping[str, object] | None = None,
                     labels: Mapping[str, str] | None = None) -> str:
    """The comparison as a Markdown table: ``mean ± std`` per metric (``mean`` alone with one
    seed), then parameters, MFLOPs, images/s and peak MiB of the head when ``costs`` has it."""
    if not summary:
        raise ValueError("summary is empty: nothing to tabulate")
    metrics = list(next(iter(summary.values())))
    cost_cols = ["params", "MFLOPs", "img/s", "peak MiB"] if costs else []
    lines = ["| method | " + " | ".join(metrics + cost_cols) + " |",
             "|---" * (1 + len(metrics) + len(cost_cols)) + "|"]
    for row, values in summary.items():
        cells = [f"{m:.3f}" if math.isnan(s) else f"{m:.3f} ± {s:.3f}"
                 for m, s in (values[metric] for metric in metrics)]
        if costs:
            c = costs.get(row)
            cells += (["–"] * 4 if c is None else
                      [f"{c.parameters:,}", f"{c.flops / 1e6:.2f}", f"{c.images_per_second:,.0f}",
                       f"{c.peak_memory_bytes / 2**20:.2f}"])
        lines.append(f"| {(labels or {}).get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_split(bench: Benchmark, fraction: float = 0.25) -> tuple[Benchmark, Benchmark]:
    """Hold out some *training* classes for choices made on data (which head to refine).

    Args:
        bench: the benchmark.
        fraction: share of the training classes held out (at least 2 classes are held out
            and at least 2 kept, so both sides can be evaluated by retrieval).

    Returns:
        ``(fit, validation)``: ``fit`` trains on the remaining training classes (ids
        ``0 … C'−1``) and keeps the unseen test classes; ``validation`` has the held-out
        training classes as its test side. The test classes are never used to choose.
    """
    n = len(bench.train_labels.unique())
    if not 0 < fraction < 1 or n < 4:
        raise ValueError(f"validation_split needs 0 < fraction < 1 and at least 4 training "
                         f"classes, got fraction={fraction!r} and {n} classes")
    n_val = min(max(round(n * fraction), 2), n - 2)
    fit_idx, val_idx = class_disjoint_split(bench.train_labels, train_fraction=(n - n_val) / n)
    pick = lambda maps, idx: (maps[0][idx], maps[1][idx])  # noqa: E731
    _, fit_labels = bench.train_labels[fit_idx].unique(return_inverse=True)
    fit = Benchmark(bench.name, pick(bench.train_maps, fit_idx), fit_labels,
                    bench.test_maps, bench.test_labels)
    val = Benchmark(f"{bench.name} (validation)", fit.train_maps, fit_labels,
                    pick(bench.train_maps, val_idx), bench.train_labels[val_idx])
    return fit, val


def run_benchmark(bench: Benchmark, methods: Sequence[str], seeds: Sequence[int], *,
                  embedding_dim: int = 64, epochs: int = 10, device: str | torch.device = "auto",
                  options: Mapping[str, Mapping] | None = None, validation: float | None = 0.25,
                  progress: bool = True):
    """Train and evaluate every method with every seed on one benchmark.

    Batches hold P = min(8, training classes) classes × 4 images (digits have only 5
    training classes), the same for every method. With ``validation``, that share of the
    training classes is held out (:func:`validation_split`): heads train on the rest, and
    each seed's metrics gain ``"val_recall@1"`` (Recall@1 on the held-out training classes),
    the number to choose by.

    Returns:
        ``(per_seed, embeddings)``: ``{method: [embedding_metrics(...) per seed]}`` and
        ``{method: [(train embeddings, test embeddings) per seed]}`` (CPU tensors; training
        embeddings of the classes the heads trained on).
    """
    for name in methods:
        _check_method(name)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    val = None
    if validation:
        bench, val = validation_split(bench, validation)
    per_seed = {name: [] for name in methods}
    embeddings = {name: [] for name in methods}
    jobs = [(name, s) for s in seeds for name in methods]
    p = min(8, len(bench.train_labels.unique()))
    for name, s in tqdm(jobs, desc=f"{bench.name}: methods × seeds", disable=not progress):
        method = METHODS[name]
        grid = tuple(bench.train_maps[0].shape[2:])
        head, _ = train_head(method.head, head_inputs(method.head, bench.train_maps),
                             bench.train_labels, embedding_dim=embedding_dim, seed=s,
                             epochs=epochs, p=p, k=4, lr=1e-3, eval_every=epochs,
                             device=device, **method_options(name, grid, options))
        train_emb = _embed(name, head, bench.train_maps, device)
        test_emb = _embed(name, head, bench.test_maps, device)
        metrics = embedding_metrics(test_emb, bench.test_labels, seed=s)
        if val is not None:
            val_emb = _embed(name, head, val.test_maps, device)
            metrics["val_recall@1"] = retrieval_metrics(val_emb, val.test_labels, ks=(1,),
                                                        nmi=False)["recall@1"]
        per_seed[name].append(metrics)
        embeddings[name].append((train_emb, test_emb))
    return per_seed, embeddings
