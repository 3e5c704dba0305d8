"""The maps protocol of dmlviz.attention (DESIGN.md, "attention/"): "``return_maps=True`` →
(output, maps) with one typed maps container per module".

Every ``nn.Module`` class defined in a module of :mod:`dmlviz.attention` whose ``forward`` takes
``return_maps`` is found by introspection and called on a tiny input: it must return a pair
``(output, maps)`` whose output is what ``forward`` gives without ``return_maps``, and whose
maps are a ``NamedTuple`` or dataclass (not a dict, list or tensor) with every field documented
in its docstring and holding a tensor, ``None`` or another such container.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import dmlviz.attention


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


# qualified class name -> (constructor arguments, forward arguments); a tiny input each
CASES = {
    "dmlviz.attention.second_order.SecondOrderAttention": ((6,), lambda: (_x(2, 6, 3, 4),)),
    "dmlviz.attention.second_order.GlobalLocalEmbedder":
        ((5, 7, 6), lambda: (_x(2, 5, 4, 4), _x(2, 7, 2, 2))),
    "dmlviz.attention.crt.CodedResidualTransform": ((6, 3, 4), lambda: (_x(2, 6, 3, 3),)),
    "dmlviz.attention.crt.TwoBranchCRT": ((6, (3, 5), (4, 8)), lambda: (_x(2, 6, 3, 3),)),
    "dmlviz.attention.aia.KernelAttention": ((16, "sop"), lambda: (_x(2, 16, 3, 3),)),
    "dmlviz.attention.aia.SEBlock": ((16,), lambda: (_x(2, 16, 3, 3),)),
    "dmlviz.attention.refine.NeighborRefiner": ((16, 2, 4), lambda: (_x(3, 16), _x(3, 5, 16))),
    "dmlviz.attention.csalr.CSALR": ((8, 4, (2, 2), 2), lambda: (_x(2, 8, 4, 4),)),
    "dmlviz.attention.csalr.SelfAttention": ((8, 4, 2), lambda: (_x(2, 8, 4, 4),)),
}


def _modules_with_maps() -> list[type[nn.Module]]:
    """Every nn.Module class defined in dmlviz.attention.* whose forward has ``return_maps``."""
    found = []
    for info in pkgutil.iter_modules(dmlviz.attention.__path__, "dmlviz.attention."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and issubclass(cls, nn.Module)
                    and "return_maps" in inspect.signature(cls.forward).parameters):
                found.append(cls)
    return found


MODULES = _modules_with_maps()


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_container(maps) -> bool:
    named_tuple = isinstance(maps, tuple) and hasattr(type(maps), "_fields")
    return named_tuple or (dataclasses.is_dataclass(maps) and not isinstance(maps, type))


def _fields(maps) -> dict:
    if dataclasses.is_dataclass(maps):
        return {f.name: getattr(maps, f.name) for f in dataclasses.fields(maps)}
    return maps._asdict()


def _check_container(maps, where: str) -> None:
    assert _is_container(maps), (f"{where}: maps must be a NamedTuple or dataclass, got "
                                 f"{type(maps).__name__}")
    doc = inspect.getdoc(type(maps)) or ""
    fields = _fields(maps)
    assert fields, f"{where}: {type(maps).__name__} has no fields"
    for name, value in fields.items():
        assert name in doc, f"{where}: field {name!r} is not documented in {type(maps).__name__}"
        if _is_container(value):
            _check_container(value, f"{where}.{name}")
        else:
            assert value is None or torch.is_tensor(value), (
                f"{where}.{name}: a field holds a tensor, None or a maps container, got "
                f"{type(value).__name__}")


def test_every_module_with_return_maps_has_a_case():
    """A new attention module with ``return_maps`` gets a tiny input here."""
    assert MODULES, "no attention module with return_maps found"
    missing = sorted(_name(cls) for cls in MODULES if _name(cls) not in CASES)
    assert not missing, f"add a case to CASES for {missing}"


@pytest.mark.parametrize("cls", MODULES, ids=_name)
def test_return_maps_gives_output_and_one_typed_container(cls):
    args, inputs = CASES[_name(cls)]
    torch.manual_seed(0)
    module = cls(*args).eval()
    x = inputs()
    with torch.no_grad():
        plain = module(*x)
        result = module(*x, return_maps=True)
    assert isinstance(result, tuple) and len(result) == 2 and not _is_container(result), (
        f"{_name(cls)}(..., return_maps=True) must return a pair (output, maps), got "
        f"{type(result).__name__} of length {len(result) if isinstance(result, tuple) else '-'}")
    out, maps = result
    torch.testing.assert_close(out, plain)  # the output does not depend on return_maps
    _check_container(maps, _name(cls))
