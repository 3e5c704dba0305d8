"""A small, reproducible DML training loop for the notebooks.

``fit`` trains any ``model`` that maps a batch of inputs (images, or precomputed features)
to embeddings ``(B, D)`` with any loss called as ``loss(embeddings, labels)``. Batches come
from :class:`dmlviz.data.PKSampler` (P classes × K samples), the optimiser is AdamW, the
loss's own parameters (Proxy-Anchor proxies) get their own learning rate, and test metrics
on unseen classes are measured every ``eval_every`` epochs. Inputs may be one tensor or a tuple
of tensors indexed together (e.g. a local and a global feature map), passed to the model as
``model(*batch)``.

Finished runs are cached on disk (``dmlviz.cache``) under a key made of the initial weights
of model and loss, the training data, every hyper-parameter and the source of the code that
defines them (:func:`source_digest`: editing a module's forward pass retrains), so re-running
a notebook cell returns the trained model at once; a corrupt checkpoint — unreadable, or readable but of
the wrong structure (other keys, other shapes, a malformed history) — is retrained with a
warning, and a cache that cannot be written only warns: the trained model is returned.

Bad input stops ``fit`` before training: NaN or ±inf in the inputs (counted per sample),
counts that are not integers (``epochs=1.5``). During training, ``fit`` stops at the first
batch whose embeddings or loss are not finite with :class:`NonFiniteLossError`, which carries
the :class:`History` of the epochs completed so far (``err.history``).
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from dmlviz.cache import cache_dir, digest, load_entry, save_entry
from dmlviz.checks import check_finite, check_int, check_labels
from dmlviz.data import PKSampler
from dmlviz.losses import parameter_groups
from dmlviz.metrics import retrieval_metrics
from dmlviz.utils import get_device, on_device, seed_everything


@dataclass
class History:
    """What happened during :func:`fit`.

    Attributes:
        loss: mean training loss per epoch.
        eval_epochs: epochs after which test metrics were measured (0 = before training).
        metrics: ``{metric name: [value per eval epoch]}``, e.g. ``metrics["recall@1"]``.
        from_cache: the model was loaded from the checkpoint cache instead of trained.
    """

    loss: list[float] = field(default_factory=list)
    eval_epochs: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    from_cache: bool = False

    def to_dict(self) -> dict:
        return {"loss": self.loss, "eval_epochs": self.eval_epochs, "metrics": self.metrics}

    def add_eval(self, epoch: int, values: dict[str, float]) -> None:
        self.eval_epochs.append(epoch)
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)


Inputs = torch.Tensor | tuple[torch.Tensor, ...]


class NonFiniteLossError(FloatingPointError, ValueError):
    """:func:`fit` met a NaN or ±inf loss (or embeddings) and stopped training.

    Attributes:
        history: the :class:`History` up to the last completed epoch (its losses and
            metrics), so a diverged run still shows how it got there.
        epoch, batch: where it stopped (1-based epoch, 0-based batch within it).
    """

    def __init__(self, message: str, history: History, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.history, self.epoch, self.batch = history, epoch, batch


CODE_MODULES = ("dmlviz.train", "dmlviz.data", "dmlviz.losses", "dmlviz.checks")


def source_digest(*modules: nn.Module) -> str:
    """A hash of the source that decides what training produces: the files defining
    ``modules`` (every submodule's class), every attention module (their forward passes call
    each other), the losses, the input checks, this loop and the P×K sampler. Part of the
    checkpoint key."""
    package = Path(__file__).resolve().parent
    files = {package / "attention" / p.name for p in (package / "attention").glob("*.py")}
    for name in {type(m).__module__ for module in modules for m in module.modules()} \
            | set(CODE_MODULES):
        path = getattr(sys.modules.get(name), "__file__", None)
        if name.split(".")[0] == "dmlviz" and path:
            files.add(Path(path).resolve())
    return digest({f.relative_to(package).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                   for f in sorted(files) if f.is_file() and f.is_relative_to(package)})


def _check_inputs(inputs, name: str = "inputs") -> Inputs:
    """``inputs`` as one tensor or a tuple of tensors of equal length (N, ...)."""
    if torch.is_tensor(inputs):
        return inputs
    if (not isinstance(inputs, (tuple, list)) or not inputs
            or not all(torch.is_tensor(t) for t in inputs)):
        raise ValueError(f"{name} must be a tensor (N, ...) or a tuple of tensors indexed "
                         f"together, got {type(inputs).__name__}")
    lengths = [len(t) for t in inputs]
    if len(set(lengths)) != 1:
        raise ValueError(f"the tensors of {name} must have the same length N, got {lengths}")
    return tuple(inputs)


def _check_finite_inputs(inputs: Inputs, name: str) -> None:
    """NaN or ±inf anywhere in the inputs: refused, counting the samples that hold one."""
    for i, t in enumerate(inputs if isinstance(inputs, tuple) else (inputs,)):
        check_finite(t, name if torch.is_tensor(inputs) else f"{name}[{i}]", "sample")


def _take(inputs: Inputs, index, device) -> Inputs:
    """Rows ``index`` of one tensor or of each tensor of a tuple, on ``device``."""
    if isinstance(inputs, tuple):
        return tuple(t[index].to(device) for t in inputs)
    return inputs[index].to(device)


def _forward(model: nn.Module, batch: Inputs) -> torch.Tensor:
    return model(*batch) if isinstance(batch, tuple) else model(batch)


@torch.no_grad()
def embed(model: nn.Module, inputs: Inputs, batch_size: int = 256,
          device: str | torch.device = "auto") -> torch.Tensor:
    """Embeddings ``(N, D)`` of ``inputs`` in eval mode, batched, returned on the CPU.

    ``inputs`` is one tensor ``(N, ...)`` or a tuple of tensors indexed together and passed
    as ``model(*batch)``; ``batch_size`` is an integer ≥ 1. Inputs with NaN or ±inf are
    refused (``ValueError`` counting the samples). ``model`` and each batch run on
    ``device``; afterwards the model is back on its own device and in its own train/eval
    mode (:func:`dmlviz.utils.on_device`, the package's device contract).
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    device = get_device(device)
    inputs = _check_inputs(inputs)
    _check_finite_inputs(inputs, "inputs")
    n = len(inputs[0]) if isinstance(inputs, tuple) else len(inputs)
    if n == 0:
        raise ValueError("inputs is empty (N = 0); embed needs at least one sample")
    with on_device(model, device):
        out = [_forward(model, _take(inputs, slice(i, i + batch_size), device)).float().cpu()
               for i in range(0, n, batch_size)]
    return torch.cat(out)


def evaluate(model: nn.Module, inputs: Inputs, labels: torch.Tensor,
             device: str | torch.device = "auto", **metric_kwargs) -> dict[str, float]:
    """Retrieval metrics (Recall@K, MAP@R, R-precision, NMI) of ``model`` on ``inputs``
    (:func:`embed` on ``device``; the model is left where and as it was)."""
    return retrieval_metrics(embed(model, inputs, device=device), labels, **metric_kwargs)


def fit(
    model: nn.Module,
    loss: nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    *,
    test_inputs: Inputs | None = None,
    test_labels: torch.Tensor | None = None,
    epochs: int = 10,
    p: int = 8,
    k: int = 4,
    lr: float = 1e-3,
    loss_lr: float | None = None,
    weight_decay: float = 1e-4,
    eval_every: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    cache: bool = True,
    progress: bool = True,
    metric_kwargs: dict | None = None,
) -> History:
    """Train ``model`` in place with ``loss`` on P×K batches; return the :class:`History`.

    Args:
        model: maps a batch of ``inputs`` to embeddings ``(B, D)``.
        loss: called as ``loss(embeddings, labels)``; its parameters (if any) are trained too.
        inputs: ``(N, ...)`` training inputs (images or features), indexed by batch; or a
            tuple of such tensors, indexed together and passed as ``model(*batch)``.
        labels: ``(N,)`` class ids.
        test_inputs, test_labels: unseen-class data for the periodic metrics (optional).
        epochs: passes of :class:`PKSampler` (N // (P·K) batches each), ≥ 1.
        p, k: classes per batch and samples per class.
        lr: AdamW learning rate of the model.
        loss_lr: learning rate of the loss's parameters (default ``lr``); the multi-head DML
            paper trains Proxy-Anchor proxies 100× faster than the network.
        weight_decay: AdamW weight decay of the model (none on the loss's parameters).
        eval_every: measure test metrics every this many epochs (and before training).
        seed: seeds batch order and any randomness in the model's forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cache: load/save the trained weights in the checkpoint cache.
        progress: show a progress bar over epochs.
        metric_kwargs: keyword arguments of :func:`dmlviz.metrics.retrieval_metrics` for the
            periodic test metrics, e.g. ``{"nmi": False}`` to skip the k-means per epoch.

    Returns:
        The training history; ``model`` and ``loss`` hold the trained weights, on the CPU,
        ``model`` in eval mode — also when the weights come from the cache, and when
        training stops with an error (the package's device contract).

    Raises:
        ValueError: bad arguments (non-integer counts, NaN or ±inf inputs, mismatched
            lengths, ...), before any training.
        NonFiniteLossError: a batch gave non-finite embeddings or loss; training stopped
            there and ``err.history`` holds the completed epochs (nothing is cached).
    """
    labels = check_labels(labels, "labels")
    inputs = _check_inputs(inputs, "inputs")
    n = len(inputs[0]) if isinstance(inputs, tuple) else len(inputs)
    if n != len(labels):
        raise ValueError(f"inputs has {n} samples but labels has {len(labels)}")
    if (test_inputs is None) != (test_labels is None):
        raise ValueError("pass both test_inputs and test_labels, or neither")
    if test_inputs is not None:
        test_inputs = _check_inputs(test_inputs, "test_inputs")
        test_labels = check_labels(test_labels, "test_labels")
        n_test = len(test_inputs[0]) if isinstance(test_inputs, tuple) else len(test_inputs)
        if n_test != len(test_labels):
            raise ValueError(f"test_inputs has {n_test} samples but test_labels has "
                             f"{len(test_labels)}")
    epochs = check_int(epochs, "epochs", 1)
    eval_every = check_int(eval_every, "eval_every", 1)
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    _check_finite_inputs(inputs, "inputs")
    if test_inputs is not None:
        _check_finite_inputs(test_inputs, "test_inputs")
    device = get_device(device)
    sampler = PKSampler(labels, p=p, k=k, seed=seed)  # validates p and k

    # repr() carries hyper-parameters that are not in the state dict (MS alpha, hybrid weight…);
    # code = the source of every module that defines a part of model or loss, and of this loop
    # and the sampler, so a checkpoint trained by other code is never taken for this one
    config = dict(model=repr(model), loss=repr(loss), epochs=epochs, p=p, k=k,
                  lr=lr, loss_lr=loss_lr, weight_decay=weight_decay, eval_every=eval_every,
                  seed=seed, test=test_labels is not None, version=1,
                  code=source_digest(model, loss))
    if metric_kwargs:  # only when given, so the keys of earlier runs stay valid
        config["metric_kwargs"] = dict(metric_kwargs)
    metric_kwargs = dict(metric_kwargs or {})
    key = digest(config, model.state_dict(), loss.state_dict(), inputs, labels,
                 test_inputs if test_inputs is not None else [])
    path = None
    if cache:
        try:
            path = cache_dir() / "checkpoints" / f"{key}.pt"
        except OSError as err:
            warnings.warn(f"fit: the checkpoint cache is unusable ({type(err).__name__}: {err}); "
                          "training without it", stacklevel=2)
    try:
        model.to(device)
        loss.to(device)
        if path is not None and (entry := load_entry(path)) is not None:
            history = _restore(entry, model, loss, path)
            if history is not None:
                return history

        seed_everything(seed)
        groups = parameter_groups(model, loss, lr=lr, proxy_lr=loss_lr or lr)
        for group in groups:  # no weight decay on proxies
            group["weight_decay"] = weight_decay if group["name"] == "model" else 0.0
        optimiser = torch.optim.AdamW(groups)

        history = History()
        if test_inputs is not None:
            history.add_eval(0, evaluate(model, test_inputs, test_labels, device, **metric_kwargs))
        bar = tqdm(range(1, epochs + 1), desc=f"fit {type(model).__name__}", disable=not progress)
        for epoch in bar:
            model.train()
            total = 0.0
            for i, batch in enumerate(sampler):
                emb = _forward(model, _take(inputs, batch, device))
                where = f"at epoch {epoch}, batch {i}"
                if (torch.is_tensor(emb) and emb.is_floating_point()
                        and not bool(emb.isfinite().all())):
                    rows = int((~emb.isfinite()).reshape(len(emb), -1).any(dim=1).sum())
                    raise NonFiniteLossError(
                        f"fit stopped {where}: the model's embeddings hold {rows} non-finite "
                        f"row(s) of {len(emb)} (the weights diverged, or the learning rate "
                        f"lr={lr} is too high); the history of the {len(history.loss)} completed "
                        "epoch(s) is in err.history", history, epoch, i)
                value = loss(emb, labels[batch].to(device))
                if not math.isfinite(current := value.item()):
                    raise NonFiniteLossError(
                        f"fit stopped {where}: the loss is {current} (not finite; is the "
                        f"learning rate lr={lr} too high?); the history of the "
                        f"{len(history.loss)} completed epoch(s) is in err.history",
                        history, epoch, i)
                optimiser.zero_grad(set_to_none=True)
                value.backward()
                optimiser.step()
                total += current
            history.loss.append(total / len(sampler))
            shown = {"loss": f"{history.loss[-1]:.3f}"}
            if test_inputs is not None and (epoch % eval_every == 0 or epoch == epochs):
                history.add_eval(epoch, evaluate(model, test_inputs, test_labels, device,
                                                 **metric_kwargs))
                shown["R@1"] = f"{history.metrics['recall@1'][-1]:.3f}"
            bar.set_postfix(shown)
        model.eval()
        if path is not None:
            try:
                save_entry(path, {"model": {n: t.cpu() for n, t in model.state_dict().items()},
                                  "loss": {n: t.cpu() for n, t in loss.state_dict().items()},
                                  "history": history.to_dict()})
            except OSError as err:  # unwritable cache: keep the trained model, say so
                warnings.warn(f"fit: could not write the checkpoint {str(path)!r} "
                              f"({type(err).__name__}: {err}); the trained model is returned but "
                              "not cached", stacklevel=2)
        return history
    finally:  # the device contract: the trained model is returned on the CPU, in eval mode
        model.cpu().eval()
        loss.cpu()


def _state_mismatch(saved, module: nn.Module) -> str | None:
    """Why the state dict ``saved`` does not fit ``module`` (keys, shapes, dtypes), or None."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__} instead of a state dict"
    own = module.state_dict()
    if set(saved) != set(own):
        extra, missing = sorted(set(saved) - set(own)), sorted(set(own) - set(saved))
        return f"other keys (unexpected {extra[:3]}, missing {missing[:3]})"
    for name, t in own.items():
        if not torch.is_tensor(saved[name]) or saved[name].shape != t.shape \
                or saved[name].dtype != t.dtype:
            got = (f"{tuple(saved[name].shape)} {saved[name].dtype}" if torch.is_tensor(saved[name])
                   else type(saved[name]).__name__)
            return f"{name!r} is {got}, the module has {tuple(t.shape)} {t.dtype}"
    return None


def _history_from(saved) -> History | None:
    """The cached history as a :class:`History`, or None when it is malformed."""
    if not isinstance(saved, dict) or set(saved) != {"loss", "eval_epochs", "metrics"}:
        return None
    loss, epochs, metrics = saved["loss"], saved["eval_epochs"], saved["metrics"]
    if (not isinstance(loss, list) or not isinstance(epochs, list)
            or not isinstance(metrics, dict)
            or not all(isinstance(v, list) for v in metrics.values())):
        return None
    return History(loss=loss, eval_epochs=epochs, metrics=metrics, from_cache=True)


def _restore(entry, model: nn.Module, loss: nn.Module, path) -> History | None:
    """Load a checkpoint into ``model`` and ``loss`` and return its history; None (with a
    warning, nothing loaded) when the entry has the wrong structure, so ``fit`` retrains."""
    why = None
    if not isinstance(entry, dict) or not {"model", "loss", "history"} <= set(entry):
        why = "it lacks the keys 'model', 'loss' and 'history'"
    else:
        why = (_state_mismatch(entry["model"], model) and
               f"model weights: {_state_mismatch(entry['model'], model)}") or \
              (_state_mismatch(entry["loss"], loss) and
               f"loss weights: {_state_mismatch(entry['loss'], loss)}")
        history = _history_from(entry["history"]) if why is None else None
        if why is None and history is None:
            why = "its history is malformed"
    if why is not None:
        warnings.warn(f"cache entry {str(path)!r} has the wrong structure ({why}); rebuilding it",
                      stacklevel=3)
        return None
    model.load_state_dict(entry["model"])
    loss.load_state_dict(entry["loss"])
    model.eval()
    return history
