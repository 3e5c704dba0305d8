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
S     image side length (square images)
====  ==========================================================
"""

import importlib

_EXPORTS = {  # public name -> the module that defines it (imported on first use)
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
    "class_disjoint_split": "dmlviz.data",
    "efficientnet_lite0": "dmlviz.backbones",
    "embed": "dmlviz.train",
    "embedding_space_density": "dmlviz.metrics",
    "evaluate": "dmlviz.train",
    "extract_features": "dmlviz.backbones",
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
