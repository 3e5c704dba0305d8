"""dmlviz — a notebook workbench for attention in deep metric learning.

Shape alphabet used in every docstring and shape comment of the package:

====  ==========================================================
B     batch
C     channels
H, W  spatial height and width of a feature map
N     positions, N = H·W (or number of samples for embeddings)
M     landmarks (Nyström / CSALR)
D     embedding dimension
K     neighbours (refinement) or prototypes (CRT)
T     refinement steps
G     attention groups (CSALR) or heads (``heads`` in the refiner's shapes)
S     image side length (square images)
====  ==========================================================

Symbols of a paper keep the paper's letter where it is a name, not a shape: CSALR's factor
matrices are ``CSALRMaps.W`` ``(B, G, N, M)`` and ``CSALRMaps.B`` ``(B, G, M, N)`` as in eqs.
(11)–(16), although ``B`` is also the batch size of the shapes.

Device contract, followed by every public function of the package that takes ``device=``:

1. ``device`` defaults to ``"auto"`` and is resolved by :func:`dmlviz.utils.get_device`:
   ``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` where there is none raises
   instead of quietly running on the CPU. A notebook's ``device`` parameter passes through
   unchanged, so one value means the same thing in every call.
2. The function moves the model it runs and the inputs it needs to that device (inputs batch
   by batch) and computes there; the caller never writes ``.to(device)``.
3. Every tensor it returns is on the CPU, whatever ``device`` was.
4. Training helpers (:func:`dmlviz.train.fit` and every recipe built on it) return the trained
   model — and leave it, with its loss — on the CPU in eval mode, also when the weights come
   from the checkpoint cache.
5. Functions that only *use* a model they are given (:func:`dmlviz.train.embed`,
   :func:`dmlviz.train.evaluate`, feature extraction, refinement, cost measurement) leave
   it as they found it: back on its own device, every submodule in its own train/eval mode,
   also when they raise (:func:`dmlviz.utils.on_device`).

So a model from a training helper can be called at once on CPU tensors, and passing it to
any function with ``device="cuda"`` changes neither where it lives nor its mode. The one
``device`` that is not a place to compute, :func:`dmlviz.sweep.run_sweep`'s, defaults to
None: it overrides the spec's own ``device`` only when given. ``tests/test_device_contract.py``
checks the defaults of every signature and the devices and modes of what each function returns
and leaves; a new function with ``device=`` needs a case there.
"""

import importlib

_EXPORTS = {  # public name -> the module that defines it (imported on first use)
    "HEADS": "dmlviz.heads",
    "History": "dmlviz.train",
    "HybridLoss": "dmlviz.losses",
    "ImageFolder": "dmlviz.data",
    "LabelledImages": "dmlviz.data",
    "MultiSimilarityLoss": "dmlviz.losses",
    "NonFiniteLossError": "dmlviz.train",
    "PKSampler": "dmlviz.data",
    "ProxyAnchorLoss": "dmlviz.losses",
    "SmallCNN": "dmlviz.backbones",
    "TripletLoss": "dmlviz.losses",
    "build_head": "dmlviz.heads",
    "class_disjoint_split": "dmlviz.data",
    "efficientnet_lite0": "dmlviz.backbones",
    "embed": "dmlviz.train",
    "embedding_space_density": "dmlviz.metrics",
    "evaluate": "dmlviz.train",
    "extract_features": "dmlviz.features",
    "fit": "dmlviz.train",
    "get_device": "dmlviz.utils",
    "imagenet_labels": "dmlviz.imagenet",
    "knn": "dmlviz.metrics",
    "load_digits": "dmlviz.data",
    "load_embeddings": "dmlviz.data",
    "load_photos": "dmlviz.data",
    "make_shapes": "dmlviz.data",
    "output_dir": "dmlviz.outputs",
    "record": "dmlviz.outputs",
    "recorded": "dmlviz.outputs",
    "retrieval_metrics": "dmlviz.metrics",
    "save_figure": "dmlviz.outputs",
    "save_plotly": "dmlviz.outputs",
    "seed_everything": "dmlviz.utils",
    "set_output_dir": "dmlviz.outputs",
    "spectral_decay": "dmlviz.metrics",
    "train_head": "dmlviz.heads",
}


def __getattr__(name: str):
    """Import on first use (PEP 562): a public name from its defining module, or a submodule
    (``dmlviz.viz``), so ``import dmlviz`` and the ``dmlviz`` command stay light until a
    tensor function is needed."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
