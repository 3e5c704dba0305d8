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

from dmlviz.backbones import SmallCNN, efficientnet_lite0, extract_features
from dmlviz.data import (
    ImageFolder,
    LabelledImages,
    PKSampler,
    class_disjoint_split,
    load_digits,
    load_embeddings,
    load_photos,
    make_shapes,
)
from dmlviz.imagenet import imagenet_labels
from dmlviz.losses import HybridLoss, MultiSimilarityLoss, ProxyAnchorLoss, TripletLoss
from dmlviz.metrics import embedding_space_density, knn, retrieval_metrics, spectral_decay
from dmlviz.outputs import output_dir, record, recorded, save_figure, save_plotly, set_output_dir
from dmlviz.train import History, embed, evaluate, fit
from dmlviz.utils import get_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "History",
    "HybridLoss",
    "ImageFolder",
    "LabelledImages",
    "MultiSimilarityLoss",
    "PKSampler",
    "ProxyAnchorLoss",
    "SmallCNN",
    "TripletLoss",
    "class_disjoint_split",
    "efficientnet_lite0",
    "embed",
    "embedding_space_density",
    "evaluate",
    "extract_features",
    "fit",
    "get_device",
    "imagenet_labels",
    "knn",
    "load_digits",
    "load_embeddings",
    "load_photos",
    "make_shapes",
    "output_dir",
    "record",
    "recorded",
    "retrieval_metrics",
    "save_figure",
    "save_plotly",
    "seed_everything",
    "set_output_dir",
    "spectral_decay",
]
