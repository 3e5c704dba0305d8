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

from dmlviz.outputs import output_dir, record, recorded, save_figure, save_plotly, set_output_dir
from dmlviz.utils import get_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "get_device",
    "output_dir",
    "record",
    "recorded",
    "save_figure",
    "save_plotly",
    "seed_everything",
    "set_output_dir",
]
