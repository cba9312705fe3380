"""Non-local layers for networks (``torch.nn.Module``s) on top of :mod:`napari_stnls.ops`:
:class:`NonLocalSearch` and :class:`RefineSearch` hold a search's parameters,
:class:`NonLocalAttention` is an attention block over the k nearest space-time patches;
:class:`RaritySampler` draws training regions by patch rarity and :func:`by_regions` runs a
block region by region with the whole-video result.

This layer imports only the ops (and ``napari_stnls._util``). See docs/networks.md.
"""

from .attention import NonLocalAttention, rescale_flows
from .regions import RaritySampler, by_regions, patch_rarity, tile_regions
from .search import NonLocalSearch, RefineSearch

__all__ = ["NonLocalAttention", "NonLocalSearch", "RaritySampler", "RefineSearch", "by_regions",
           "patch_rarity", "rescale_flows", "tile_regions"]
