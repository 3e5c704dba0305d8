"""The device contract of the package docstring (:mod:`dmlviz`), checked for every public
function that takes ``device=``.

* Every such signature defaults to ``"auto"`` (one list names every offender).
* Every such function has a case in :data:`CASES` (or a reason in :data:`NO_TENSORS`): it
  is called with tiny inputs and ``device="cpu"`` — and ``device="cuda"`` where a GPU is at
  hand (``gpu`` marker, skipped here) — and what it returns must be on the CPU (trained
  models also in eval mode), while a model it was given must be left on its device with every
  submodule in its train/eval mode.

A new function with ``device=`` and no case fails :func:`test_every_device_function_has_a_case`:
add a case for it to :data:`CASES`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import dmlviz

# ----------------------------------------------------------------------------- discovery

SKIP_MODULES = ("dmlviz.__main__",)


def _modules():
    yield dmlviz
    for info in pkgutil.walk_packages(dmlviz.__path__, "dmlviz."):
        if info.name in SKIP_MODULES or any(p.startswith("_") for p in info.name.split(".")[1:]):
            continue
        yield importlib.import_module(info.name)


def device_functions() -> dict[str, inspect.Parameter]:
    """``{"module.function" or "module.Class.method": its device parameter}`` for every
    public function and method defined in the package (dataclass fields are records, not
    places to compute: skipped)."""
    found = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj):
                if dataclasses.is_dataclass(obj):
                    continue
                members = [(f"{name}.{n}", getattr(f, "__func__", f))  # static/classmethods
                           for n, f in vars(obj).items()
                           if inspect.isfunction(getattr(f, "__func__", f))
                           and (not n.startswith("_") or n == "__init__")]
            elif inspect.isfunction(obj):
                members = [(name, obj)]
            else:
                continue
            for qualname, fn in members:
                param = inspect.signature(fn).parameters.get("device")
                if param is not None:
                    found[f"{module.__name__}.{qualname}"] = param
    return found


FOUND = device_functions()

#: ``device`` parameters that are not a place to compute, and why their default differs.
DEFAULT_EXEMPT = {
    "dmlviz.sweep.run_sweep": "None = the spec's own device; a given value overrides it",
}

#: device functions that neither return tensors nor take a model, and what they do instead.
NO_TENSORS = {
    "dmlviz.utils.get_device": "resolves the device itself (tested in test_outputs)",
    "dmlviz.runner.run": "passes the resolved device to the notebooks as a parameter",
    "dmlviz.runner.resolve_device": "the CLI's name for get_device: 'cpu' or 'cuda' as a string",
    "dmlviz.sweep.run_sweep": "passes the device to the notebooks of a sweep as a parameter",
}


def test_every_device_default_is_auto():
    offenders = [f"{name} (device={param.default!r})" for name, param in sorted(FOUND.items())
                 if param.default != "auto" and name not in DEFAULT_EXEMPT]
    assert not offenders, ("every public device= must default to 'auto' (package docstring, "
                           "device contract); these do not:\n  " + "\n  ".join(offenders))


def test_discovery_sees_the_known_functions():
    for name in ("dmlviz.train.fit", "dmlviz.train.embed", "dmlviz.utils.get_device"):
        assert name in FOUND


# ----------------------------------------------------------------------------- checks

def _tensors(obj, seen=None):
    """Every tensor inside ``obj``: tuples, lists, dicts, dataclasses, NamedTuples."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, nn.Module):
        return
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def on_cpu(obj, what: str):
    """Every tensor returned is on the CPU."""
    bad = [tuple(t.shape) for t in _tensors(obj) if t.device.type != "cpu"]
    assert not bad, f"{what} returned tensors not on the CPU: shapes {bad[:5]}"
    return obj


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in (*model.parameters(), *model.buffers())}


def trained(model: nn.Module, what: str) -> nn.Module:
    """A model a training helper returns: on the CPU, every submodule in eval mode."""
    assert _devices(model) <= {"cpu"}, f"{what} returned its model on {_devices(model)}"
    training = [n or "(root)" for n, m in model.named_modules() if m.training]
    assert not training, f"{what} returned its model with modules in train mode: {training[:5]}"
    return model


class Given:
    """A model handed to a function that only uses it: mixed train/eval modes (root in
    train mode, its first child in eval mode), to be found as it was afterwards."""

    def __init__(self, model: nn.Module):
        model.train()
        children = list(model.children())
        if children:
            children[0].eval()
        self.model = model
        self.devices = _devices(model)
        self.modes = {n: m.training for n, m in model.named_modules()}

    def left(self, what: str) -> None:
        assert _devices(self.model) == self.devices, \
            f"{what} moved the model it was given from {self.devices} to {_devices(self.model)}"
        changed = [n or "(root)" for n, m in self.model.named_modules()
                   if m.training != self.modes[n]]
        assert not changed, f"{what} changed the train/eval mode of the given model's {changed[:5]}"


# ----------------------------------------------------------------------------- tiny data

CLASSES, PER_CLASS, D = 4, 4, 8
LOCAL, GLOBAL = (8, 4, 4), (12, 2, 2)  # (C, H, W) of the local and global maps


def _labels() -> torch.Tensor:
    return torch.arange(CLASSES).repeat_interleave(PER_CLASS)  # (16,)


def _maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = CLASSES * PER_CLASS
    return torch.randn(n, *LOCAL, generator=gen), torch.randn(n, *GLOBAL, generator=gen)


def _embeddings(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(CLASSES * PER_CLASS, D, generator=gen), dim=1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, 4))


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


FIT = dict(epochs=1, p=2, k=2)


# ----------------------------------------------------------------------------- cases
# A case is called as case(fn, device) with fn the function its key names, so a function
# that moves to another module keeps its case: rename the key.

def case_embed(fn, device):
    given = Given(_mlp())
    on_cpu(fn(given.model, _embeddings(), batch_size=5, device=device), "embed")
    given.left("embed")


def case_evaluate(fn, device):
    given = Given(_mlp())
    fn(given.model, _embeddings(), _labels(), device=device, nmi=False)
    given.left("evaluate")


def case_fit(fn, device):
    from dmlviz.losses import HybridLoss, MultiSimilarityLoss, ProxyAnchorLoss
    from dmlviz.train import NonFiniteLossError

    for _ in ("trained", "from the cache"):
        torch.manual_seed(0)
        model = _mlp()
        loss = HybridLoss(MultiSimilarityLoss(), ProxyAnchorLoss(CLASSES, 4))
        history = fn(model, loss, _embeddings(), _labels(), test_inputs=_embeddings(1),
                     test_labels=_labels(), device=device, progress=False,
                     metric_kwargs={"nmi": False}, **FIT)
        trained(model, "fit")
        assert _devices(loss) <= {"cpu"}, f"fit left its loss on {_devices(loss)}"
    assert history.from_cache
    model = nn.Sequential(nn.Linear(D, 4), _NaN())  # stops at the first batch
    with pytest.raises(NonFiniteLossError):
        fn(model, MultiSimilarityLoss(), _embeddings(), _labels(), device=device, cache=False,
           progress=False, **FIT)
    trained(model, "fit (stopped by NonFiniteLossError)")


class _NaN(nn.Module):
    def forward(self, x):
        return x * float("nan")


def case_on_device(fn, device):
    given = Given(_mlp())
    with fn(given.model, device) as model:
        assert _devices(model) == {dmlviz.get_device(device).type} and not model.training
    given.left("on_device")
    with pytest.raises(RuntimeError, match="inside"), fn(given.model, device):
        raise RuntimeError("inside the block")
    given.left("on_device (after an exception)")


def _head_inputs(kind: str, seed: int = 0):
    """Training inputs of a head whose ``Head.inputs`` is ``kind``."""
    if kind == "map":
        return _maps(seed)[0]
    if kind == "maps":
        return _maps(seed)
    if kind == "vectors":
        return _embeddings(seed)
    gen = torch.Generator().manual_seed(seed)  # (e⁰ (N, D), contexts (N, K=2, D))
    return _embeddings(seed), torch.randn(CLASSES * PER_CLASS, 2, D, generator=gen)


def case_train_head(fn, device):
    from dmlviz.heads import HEADS

    options = {"csalr": {"landmarks": (2, 2)}}  # the 4 × 4 maps hold no more
    for name, head in HEADS.items():
        model, _ = fn(name, _head_inputs(head.inputs), _labels(), _head_inputs(head.inputs, 1),
                      _labels(), embedding_dim=D, device=device, cache=False,
                      metric_kwargs={"nmi": False}, **FIT, **options.get(name, {}))
        trained(model, f"train_head({name!r})")


def _refiner(device="cpu"):
    from dmlviz.heads import train_refiner

    refiner, _ = train_refiner(_embeddings(), _labels(), k=2, num_blocks=1, num_heads=2,
                               epochs=1, p=2, per_class=2, device=device, progress=False)
    return refiner


def case_train_refiner(fn, device):
    refiner, _ = fn(_embeddings(), _labels(), k=2, num_blocks=1, num_heads=2, epochs=1, p=2,
                    per_class=2, device=device, progress=False)
    trained(refiner, "train_refiner")
    refiner, _ = fn(_embeddings(), _labels(), k=2, num_blocks=1, num_heads=2, epochs=2, p=2,
                    per_class=2, early_stopping=(_embeddings(1), _labels()), device=device,
                    progress=False)
    trained(refiner, "train_refiner(early_stopping=...)")


def case_refine_embeddings(fn, device):
    given = Given(_refiner())
    on_cpu(fn(given.model, _embeddings(1), 2, device=device, return_all=True),
           "refine_embeddings")
    given.left("refine_embeddings")
    on_cpu(fn("nn_avg", _embeddings(1), 2, device=device), "refine_embeddings")


def case_embed_intervened(fn, device):
    from dmlviz.heads import train_head

    model, _ = train_head("soa", _maps(), _labels(), embedding_dim=D, device="cpu", **FIT)
    given = Given(model)
    on_cpu(fn(given.model, _maps(1), mode="shuffle_rows", batch_size=5, device=device),
           "embed_intervened")
    given.left("embed_intervened")


def case_extract_features(fn, device):
    from dmlviz.backbones import SmallCNN

    given = Given(SmallCNN(embedding_dim=D, width=4))
    for stride in (None, 4):
        on_cpu(fn(given.model, _images(), stride=stride, device=device, cache=False,
                  progress=False), "extract_features")
        given.left("extract_features")


def _efficientnet():
    from dmlviz.backbones import efficientnet_lite0

    torch.manual_seed(0)
    return efficientnet_lite0(pretrained=False)


def case_local_global_maps(fn, device):
    given = Given(_efficientnet())
    on_cpu(fn(given.model, _images(), device=device, cache=False, progress=False),
           "local_global_maps")
    given.left("local_global_maps")


def case_images_per_second(fn, device):
    given = Given(_mlp())
    fn(given.model, (D,), batch_size=2, repeats=1, warmup=0, device=device)
    given.left("images_per_second")


def case_peak_memory(fn, device):
    given = Given(_mlp())
    fn(given.model, (D,), batch_size=2, device=device)
    given.left("peak_memory")


def case_module_cost(fn, device):
    given = Given(_mlp())
    cost = fn(given.model, (D,), batch_size=2, repeats=1, warmup=0, device=device)
    given.left("module_cost")
    assert cost.device == str(dmlviz.get_device(device))


def case_measure_cost(fn, device):
    on_cpu(fn([8], m=2, channels=4, repeats=1, device=device), "measure_cost")


def case_load_benchmark(fn, device):
    given = Given(_efficientnet())
    on_cpu(fn("shapes", given.model, per_class=2, input_size=32, device=device,
              progress=False), "load_benchmark")
    given.left("load_benchmark")


def case_refine_on_top(fn, device):
    refined, refiner = fn(_embeddings(), _labels(), _embeddings(1), k=2, num_blocks=1,
                          epochs=1, device=device)
    on_cpu(refined, "refine_on_top")
    trained(refiner, "refine_on_top")


def case_method_costs(fn, device):
    costs = fn(["baseline"], LOCAL, GLOBAL, embedding_dim=D, num_classes=CLASSES,
               batch_size=2, repeats=1, device=device)
    assert costs["baseline"].device == str(dmlviz.get_device(device))


def case_run_benchmark(fn, device):
    from dmlviz.compare import Benchmark

    bench = Benchmark("tiny", _maps(), _labels(), _maps(1), _labels())
    on_cpu(fn(bench, ["baseline"], [0], embedding_dim=D, epochs=1, device=device,
              validation=None, progress=False), "run_benchmark")


#: ``{qualified name: case(fn, device)}`` — one per public function with ``device=``.
CASES = {
    "dmlviz.train.embed": case_embed,
    "dmlviz.train.evaluate": case_evaluate,
    "dmlviz.train.fit": case_fit,
    "dmlviz.utils.on_device": case_on_device,
    "dmlviz.heads.train_head": case_train_head,
    "dmlviz.heads.train_refiner": case_train_refiner,
    "dmlviz.neighbours.refine_embeddings": case_refine_embeddings,
    "dmlviz.heads.embed_intervened": case_embed_intervened,
    "dmlviz.features.extract_features": case_extract_features,
    "dmlviz.features.local_global_maps": case_local_global_maps,
    "dmlviz.cost.images_per_second": case_images_per_second,
    "dmlviz.cost.peak_memory": case_peak_memory,
    "dmlviz.cost.module_cost": case_module_cost,
    "dmlviz.cost.measure_cost": case_measure_cost,
    "dmlviz.compare.load_benchmark": case_load_benchmark,
    "dmlviz.compare.refine_on_top": case_refine_on_top,
    "dmlviz.compare.method_costs": case_method_costs,
    "dmlviz.compare.run_benchmark": case_run_benchmark,
}


pytestmark = pytest.mark.usefixtures("private_cache")  # checkpoints and features in tmp_path


def test_every_device_function_has_a_case():
    missing = sorted(set(FOUND) - set(CASES) - set(NO_TENSORS))
    assert not missing, ("public functions with device= need a device-contract case: add a "
                         "case for each to CASES in tests/test_device_contract.py:\n  "
                         + "\n  ".join(missing))


def test_every_case_names_a_device_function():
    stale = sorted((set(CASES) | set(NO_TENSORS) | set(DEFAULT_EXEMPT)) - set(FOUND))
    assert not stale, ("these entries name no public function with device= any more (moved "
                       "or renamed?): rename or remove them:\n  " + "\n  ".join(stale))


def _run(name: str, device: str):
    if name not in FOUND:
        pytest.fail(f"{name} is no public function with device= any more: rename its case")
    module, _, attr = name.rpartition(".")
    CASES[name](getattr(importlib.import_module(module), attr), device)


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract_on_cpu(name):
    _run(name, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(CASES))
def test_contract_on_cuda(name):
    _run(name, "cuda")
