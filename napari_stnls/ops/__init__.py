"""The five operations of napari-stnls: search, iunfold/ifold, gather/scatter (and
aggregate, gather then scatter without storing the patches).

Pure PyTorch (reference backend) with per-op dispatch to compiled kernels. This
subpackage never imports napari or Qt. See docs/api.md for the definitions.
"""

from ._dispatch import backend_info
from ._region import Region, as_region, grid_shape, grid_view, query_coords
from .fold import ifold, iunfold
from .gather import aggregate, gather, scatter
from .search import search

__all__ = [
    "Region",
    "aggregate",
    "as_region",
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
