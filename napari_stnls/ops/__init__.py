"""The operations of napari-stnls: search and refine (the k best around given positions),
iunfold/ifold, gather/scatter (and aggregate, gather then scatter without storing the
patches).

Each op validates its arguments, then one guard (:func:`._library.use_compiled`) decides
between the compiled kernels (``torch.ops.napari_stnls.*``; PyTorch's dispatcher picks the
device) and the op's pure-PyTorch reference twin (``_reference/``). This subpackage never
imports napari or Qt. See docs/api.md for the definitions.

Layout: ``search.py``, ``refine.py``, ``gather.py`` (gather, scatter, aggregate), ``fold.py`` (iunfold,
ifold) hold the public ops and the glue around their kernels; ``_library.py`` loads the
compiled module and holds the guard and :func:`backend_info`; ``_registrations.py`` the fake
kernels and autograd of the compiled operators; ``_determinism.py`` the CPU reroute under
``torch.use_deterministic_algorithms(True)``; ``_window.py`` the search window (flow
chaining) that both search paths share; ``_region.py`` and ``_validate.py`` regions and
argument checks.
"""

from . import _registrations  # noqa: F401  (fake kernels and autograd of the compiled operators)
from ._library import backend_info
from ._region import Region, as_region, grid_shape, grid_view, query_coords
from .fold import ifold, iunfold
from .gather import aggregate, gather, scatter
from .refine import refine
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
    "refine",
    "scatter",
    "search",
]
