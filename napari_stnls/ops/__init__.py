"""The five operations of napari-stnls: search, iunfold/ifold, gather/scatter.

Pure PyTorch (reference backend) with per-op dispatch to compiled kernels. This
subpackage never imports napari or Qt. See docs/api.md for the definitions.
"""

from ._dispatch import backend_info
from ._region import Region, grid_shape, grid_view, query_coords
from .fold import ifold, iunfold
from .gather import gather, scatter
from .search import search

__all__ = [
    "Region",
    "backend_info",
    "gather",
    "grid_shape",
    "grid_view",
    "ifold",
    "iunfold",
    "query_coords",
    "scatter",
    "search",
]
