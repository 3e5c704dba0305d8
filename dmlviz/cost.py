"""What a module costs: parameters, FLOPs, images per second and peak memory at an input size.

The cost tables of the papers this workbench teaches (AiA's Table 8, CSALR's Tables 3 and 5)
compare attention modules by these four numbers; :func:`module_cost` measures all four for
any ``nn.Module`` and :func:`cost_table` for a dictionary of them, at one input size.
:func:`measure_cost` times exact softmax attention against CSALR's Nyström factors for growing
``N`` (notebook 01). Every ``device=`` defaults to ``"auto"`` (:func:`dmlviz.utils.get_device`).

Conventions (say them next to any table built from these numbers):

* **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 × the
  multiply-accumulates of matrix products and convolutions (``mm``, ``bmm``, ``addmm``,
  ``convolution``, scaled-dot-product attention …). Element-wise operations (BatchNorm in
  eval mode, ReLU, sigmoid, cos, the final ``z ⊗ x``) and reductions (pooling) are **not**
  counted, as in most papers' FLOP tables. Reported per image (per batch row), forward pass.
  A multiplication written as a broadcast (``a[..., None] * b[..., None, :]``) is element-wise
  and therefore not counted; write it as a matrix product when it should be.
* **MACs** (multiply-accumulates) are half the FLOPs above: every operator the counter counts
  is a sum of products, one multiply and one add each. Many papers' "FLOPs" columns are in
  fact MACs — AiA's Table 8 (a 1×1 convolution ``c_in → c_out`` at ``hw`` positions counted as
  ``c_in · c_out · hw``) is one; :func:`count_macs` and :attr:`ModuleCost.macs` give them.
* **Parameters**: every element of ``module.parameters()`` (trainable or frozen; buffers such
  as fixed random Fourier frequencies or BatchNorm statistics are not parameters).
* **Images per second**: forward passes in eval mode under ``torch.no_grad()``, median of
  ``repeats`` timed passes after ``warmup`` passes; depends on the machine and its load, so
  compare numbers measured in one session only.
* **Peak memory**: bytes allocated *during* the forward pass above what was allocated
  before it (inputs and parameters excluded). On CUDA from the caching allocator's peak
  statistics; on the CPU by tracking, with a ``TorchDispatchMode``, the storages of every
  tensor the forward pass creates while they are alive. The two agree on what they count
  (activations and temporaries), not to the byte (the CUDA allocator rounds block sizes).
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dmlviz.attention.nystrom import nystrom_softmax_attention, softmax_attention
from dmlviz.checks import check_int
from dmlviz.utils import get_device

__all__ = ["ModuleCost", "cost_table", "count_flops", "count_macs", "count_parameters",
           "flops_by_operator", "format_cost_table", "images_per_second",
           "measure_cost", "module_cost", "peak_memory"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class ModuleCost:
    """The cost of one module at one input size.

    Attributes:
        parameters: number of parameters.
        flops: forward FLOPs per image (2 × multiply-accumulates; see the module docstring).
        images_per_second: forward throughput (``nan`` when not measured).
        peak_memory_bytes: extra memory of one forward pass at ``batch_size`` (``-1`` when
            not measured).
        input_shape: shape(s) of one input image / feature map, without the batch.
        batch_size: the batch the time and memory were measured at.
        device: where they were measured.
    """

    parameters: int
    flops: int
    images_per_second: float
    peak_memory_bytes: int
    input_shape: tuple
    batch_size: int
    device: str

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates per image: ``flops // 2`` (see the module docstring)."""
        return self.flops // 2

    def to_dict(self) -> dict:
        return asdict(self)


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")


def _make_inputs(inputs, batch_size: int = 1, device: str | torch.device = "auto",
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Turn an input specification into a tuple of tensors for ``module(*inputs)``.

    Args:
        inputs: a tensor ``(B, ...)``; a tuple of tensors (a module with several inputs);
            the shape of one input without the batch, e.g. ``(112, 8, 8)`` (a random
            standard-normal batch of ``batch_size`` is drawn); or a tuple of such shapes.
        batch_size: rows of the random batch drawn from a shape (ignored for tensors).
        device: where the tensors go (``"auto"``: CUDA when available).
        seed: seed of the random batch (drawn on the CPU, so the values do not depend on
            ``device``).

    Returns:
        A tuple of tensors.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    device = get_device(device)

    def is_shape(s) -> bool:
        return (isinstance(s, (tuple, list, torch.Size)) and len(s) > 0
                and all(isinstance(d, int) and not isinstance(d, bool) for d in s))

    if torch.is_tensor(inputs):
        return (inputs.to(device),)
    if is_shape(inputs):
        inputs = (tuple(inputs),)
    if (isinstance(inputs, (tuple, list)) and inputs
            and all(torch.is_tensor(t) or is_shape(t) for t in inputs)):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for t in inputs:
            if torch.is_tensor(t):
                out.append(t.to(device))
                continue
            if any(d < 1 for d in t):
                raise ValueError(f"an input shape must have sizes >= 1, got {tuple(t)}")
            out.append(torch.randn((batch_size, *t), generator=gen).to(device))
        return tuple(out)
    raise ValueError("inputs must be a tensor (B, ...), a tuple of tensors, the shape of one "
                     "input without the batch such as (112, 8, 8), or a tuple of such shapes; "
                     f"got {type(inputs).__name__} {inputs!r:.80}")


class _EvalNoGrad:
    """Eval mode and no autograd for a measurement; every submodule's train/eval mode is
    restored after (the device contract of :mod:`dmlviz`)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.modes = [(m, m.training) for m in module.modules()]
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.module.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        for m, training in self.modes:
            m.training = training


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    _check_module(module)
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops_by_operator(module: nn.Module, inputs, batch_size: int = 1) -> dict[str, int]:
    """Forward FLOPs of ``module`` per operator (``{"aten.convolution": …}``), whole batch.

    Args:
        module: any ``nn.Module``; measured in eval mode without gradients.
        inputs: a tensor ``(B, ...)``, a tuple of tensors, or the shape of one input without the batch
            (e.g. ``(112, 8, 8)``; a seeded standard-normal batch is drawn) or a tuple of shapes.
        batch_size: batch of the random inputs drawn from a shape.
    """
    _check_module(module)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    xs = _make_inputs(inputs, batch_size, device)
    counter = FlopCounterMode(display=False)
    with _EvalNoGrad(module), counter:
        module(*xs)
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_flops(module: nn.Module, inputs, batch_size: int = 1, per_image: bool = True) -> int:
    """Forward FLOPs of ``module`` (2 × multiply-accumulates of matmuls and convolutions).

    Args:
        module: any ``nn.Module``; measured in eval mode without gradients.
        inputs: a tensor ``(B, ...)``, a tuple of tensors, or the shape of one input without the batch
            (e.g. ``(112, 8, 8)``; a seeded standard-normal batch is drawn) or a tuple of shapes.
        batch_size: batch of the random inputs drawn from a shape.
        per_image: divide by the batch size (rows of the first input).

    Returns:
        The FLOP count (an integer).
    """
    xs = _make_inputs(inputs, batch_size, "cpu")
    total = sum(flops_by_operator(module, xs).values())
    return total // len(xs[0]) if per_image else total


def count_macs(module: nn.Module, inputs, batch_size: int = 1, per_image: bool = True) -> int:
    """Forward multiply-accumulates of ``module``: :func:`count_flops` ``// 2``.

    The unit of tables that call a 1×1 convolution ``c_in → c_out`` at ``hw`` positions
    ``c_in · c_out · hw`` "FLOPs" (e.g. AiA's Table 8). Same arguments as :func:`count_flops`.
    """
    return count_flops(module, inputs, batch_size=batch_size, per_image=per_image) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn, repeats: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn()``, each between two device syncs."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def images_per_second(module: nn.Module, inputs, batch_size: int = 32, repeats: int = 10,
                      warmup: int = 2, device: str | torch.device = "auto") -> float:
    """Forward throughput in images (batch rows) per second, eval mode, no gradients.

    Args:
        module: any ``nn.Module`` (moved to ``device`` and back).
        inputs: a tensor ``(B, ...)``, a tuple of tensors, or the shape of one input without the batch
            (e.g. ``(112, 8, 8)``; a seeded standard-normal batch is drawn) or a tuple of shapes.
        batch_size: batch of the random inputs drawn from a shape.
        repeats: timed passes; the median time is used.
        warmup: untimed passes first.
        device: where to run (``"auto"``: CUDA when available); the module goes back to
            where its parameters were afterwards.
    """
    _check_module(module)
    repeats = check_int(repeats, "repeats", 1)
    warmup = check_int(warmup, "warmup", 0)
    home = next((p.device for p in module.parameters()), torch.device("cpu"))
    device = get_device(device)
    xs = _make_inputs(inputs, batch_size, device)
    module.to(device)
    try:
        with _EvalNoGrad(module):
            for _ in range(warmup):
                module(*xs)
            times = _times(lambda: module(*xs), repeats, device)
    finally:
        module.to(home)
    return len(xs[0]) / max(statistics.median(times), 1e-9)


class _LiveStorageTracker(TorchDispatchMode):
    """Track the bytes of every storage created by an op while a tensor refers to it."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}  # data_ptr -> live tensors created here referring to it
        self.sizes: dict[int, int] = {}  # data_ptr -> bytes
        self.known: set[int] = set()  # storages that existed before (inputs, parameters)
        self.live = self.peak = 0

    def remember(self, tensors) -> None:
        for t in tensors:
            if torch.is_tensor(t) and t.device.type != "meta":
                self.known.add(t.untyped_storage().data_ptr())

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.sizes.pop(ptr)
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not torch.is_tensor(t):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self.known or ptr == 0:
                continue
            if ptr not in self.refs:
                self.refs[ptr], self.sizes[ptr] = 0, storage.nbytes()
                self.live += self.sizes[ptr]
                self.peak = max(self.peak, self.live)
            self.refs[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def peak_memory(module: nn.Module, inputs, batch_size: int = 32,
                device: str | torch.device = "auto") -> int:
    """Peak bytes allocated during one forward pass, above inputs and parameters.

    Args:
        module: any ``nn.Module``; eval mode, no gradients.
        inputs: a tensor ``(B, ...)``, a tuple of tensors, or the shape of one input without the batch
            (e.g. ``(112, 8, 8)``; a seeded standard-normal batch is drawn) or a tuple of shapes.
        batch_size: batch of the random inputs drawn from a shape.
        device: where to run (``"auto"``: CUDA when available; the module goes back to where
            its parameters were afterwards). CUDA uses the allocator's peak statistics, the CPU
            a dispatch-mode tracker (module docstring).
    """
    _check_module(module)
    home = next((p.device for p in module.parameters()), torch.device("cpu"))
    device = get_device(device)
    xs = _make_inputs(inputs, batch_size, device)
    module.to(device)
    try:
        with _EvalNoGrad(module):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                module(*xs)
                torch.cuda.synchronize(device)
                return int(torch.cuda.max_memory_allocated(device) - base)
            tracker = _LiveStorageTracker()
            tracker.remember([*xs, *module.parameters(), *module.buffers()])
            with tracker:
                out = module(*xs)
            del out
            return int(tracker.peak)
    finally:
        module.to(home)


def module_cost(module: nn.Module, inputs, *, batch_size: int = 32, repeats: int = 10,
                warmup: int = 2, device: str | torch.device = "auto", time_it: bool = True,
                memory: bool = True) -> ModuleCost:
    """Parameters, FLOPs per image, images per second and peak memory of ``module``.

    Args:
        module: any ``nn.Module`` mapping ``module(*inputs)``.
        inputs: a tensor ``(B, ...)``, a tuple of tensors, or the shape of one input without the batch
            (e.g. ``(112, 8, 8)``; a seeded standard-normal batch is drawn) or a tuple of shapes.
        batch_size: batch for the time and memory measurements (FLOPs are per image).
        repeats, warmup: as for :func:`images_per_second`.
        device: where time and memory are measured (``"auto"``: CUDA when available).
        time_it: measure the throughput (else ``nan``).
        memory: measure the peak memory (else ``-1``).

    Returns:
        A :class:`ModuleCost`.
    """
    _check_module(module)
    device = get_device(device)
    xs = _make_inputs(inputs, batch_size, "cpu")
    one = tuple(x[:1] for x in xs)
    module_device = next((p.device for p in module.parameters()), torch.device("cpu"))
    flops = count_flops(module, tuple(x.to(module_device) for x in one))
    return ModuleCost(
        parameters=count_parameters(module),
        flops=flops,
        images_per_second=(images_per_second(module, xs, repeats=repeats, warmup=warmup,
                                             device=device) if time_it else float("nan")),
        peak_memory_bytes=peak_memory(module, xs, device=device) if memory else -1,
        input_shape=tuple(tuple(x.shape[1:]) for x in xs) if len(xs) > 1 else tuple(xs[0].shape[1:]),
        batch_size=len(xs[0]),
        device=str(device),
    )


def measure_cost(ns: Sequence[int], m: int = 64, channels: int = 64, *,
                 device: str | torch.device = "auto", repeats: int = 3,
                 dtype: torch.dtype = torch.float32, seed: int = 0,
                 inverse: str = "pinv") -> list[dict]:
    """Time and memory of exact softmax attention vs the Nyström factors, for growing ``N``.

    Exact: ``softmax_N(q kᵀ / √C) v`` through the ``N × N`` map. Nyström: pooled landmarks,
    ``W = A_nm A_mm⁻¹`` and ``W (B v)``. The default ``inverse="pinv"`` never fails on random
    inputs (whose pooled landmarks are nearly equal, so ``A_mm`` is nearly singular); on a GPU
    ``"iterative"`` (matrix products only) avoids the SVD behind ``pinv``.

    Args:
        ns: numbers of positions ``N`` to measure.
        m: landmarks ``M``.
        channels: ``C`` of ``q, k, v``.
        device: where to run (``"auto"``: CUDA when available).
        repeats: timed runs per case (the minimum is kept, after one warm-up run).
        dtype: computation dtype.
        seed: seed of the random ``q, k, v``.
        inverse: ``"pinv"`` or ``"iterative"`` (see :func:`dmlviz.attention.nystrom.nystrom`).

    Returns:
        one dict per ``N``: ``n``, ``exact_bytes`` (the N×N map), ``nystrom_bytes`` (N×M + M×M +
        M×N), ``exact_s``, ``nystrom_s`` (seconds, best of ``repeats``) and
        ``peak_exact_bytes`` / ``peak_nystrom_bytes`` on CUDA (None on CPU).
    """
    device = get_device(device)
    repeats = check_int(repeats, "repeats", 1)
    if inverse not in ("pinv", "iterative"):
        raise ValueError(f"inverse must be 'pinv' or 'iterative' for random inputs, got {inverse!r}")
    g = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for n in ns:
        n = check_int(n, "n", m)
        q, k, v = (torch.randn(n, channels, generator=g, dtype=dtype).to(device) for _ in range(3))
        scale = channels ** -0.5

        def exact(q=q, k=k, v=v, scale=scale):
            return softmax_attention(q, k, scale=scale) @ v  # (N, C) through the N × N map

        def factored(q=q, k=k, v=v, scale=scale):
            f = nystrom_softmax_attention(q, k, m, scale=scale, inverse=inverse)
            return f.w @ (f.b @ v)  # CSALR's output W (B v), never the N × N map

        row = {"n": n, "exact_bytes": n * n * itemsize, "nystrom_bytes": (2 * n * m + m * m) * itemsize}
        for name, fn in (("exact", exact), ("nystrom", factored)):
            fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            row[f"{name}_s"] = min(_times(fn, repeats, device))  # best of ``repeats``
            row[f"peak_{name}_bytes"] = (torch.cuda.max_memory_allocated(device) - base
                                         if device.type == "cuda" else None)
        rows.append(row)
    return rows


def cost_table(modules: Mapping[str, nn.Module], inputs, **kwargs) -> dict[str, ModuleCost]:
    """:func:`module_cost` of every module of ``{name: module}`` at the same inputs.

    The random inputs are drawn once, so every module sees the same batch.
    """
    if not isinstance(modules, Mapping) or not modules:
        raise ValueError(f"modules must be a non-empty mapping {{name: nn.Module}}, got "
                         f"{type(modules).__name__}")
    xs = _make_inputs(inputs, kwargs.get("batch_size", 32), "cpu")
    return {name: module_cost(m, xs, **kwargs) for name, m in modules.items()}


def format_cost_table(table: Mapping[str, ModuleCost], names: Sequence[str] | None = None,
                      *, macs: bool = False) -> str:
    """A plain-text table of :func:`cost_table`'s result (parameters, MFLOPs, img/s, MiB).

    Args:
        table: ``{name: ModuleCost}``.
        names: the rows, in order (default: all, in the table's order).
        macs: add an ``MMACs`` column (multiply-accumulates, ``MFLOPs / 2``) after ``MFLOPs``.

    Returns:
        The table as text; quantities that were not measured show as ``—``.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"table must be a mapping {{name: ModuleCost}} (cost_table's result), "
                         f"got {type(table).__name__}")
    names = list(names) if names is not None else list(table)
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"names {missing} are not in the table; it holds {list(table)}")
    mac_head = f"{'MMACs':>10s}" if macs else ""
    rows = [f"{'module':<22s}{'params':>10s}{'MFLOPs':>10s}{mac_head}{'img/s':>10s}"
            f"{'peak MiB':>10s}"]
    for name in names:
        c = table[name]
        ips = "—" if math.isnan(c.images_per_second) else f"{c.images_per_second:.0f}"
        mem = "—" if c.peak_memory_bytes < 0 else f"{c.peak_memory_bytes / 2**20:.2f}"
        mac = f"{c.macs / 1e6:>10.3f}" if macs else ""
        rows.append(f"{name:<22s}{c.parameters:>10,d}{c.flops / 1e6:>10.3f}{mac}{ips:>10s}{mem:>10s}")
    return "\n".join(rows)

