"""Non-local layers for networks (``torch.nn.Module``s) on top of :mod:`napari_stnls.ops`:
:class:`NonLocalSearch` and :class:`RefineSearch` hold a search's parameters,
:class:`NonLocalAttention` is an attention block over the k nearest space-time patches.

This layer imports only the ops (and ``napari_stnls._util``). See docs/networks.md.
"""

from .attention import NonLocalAttention, rescale_flows
from .search import NonLocalSearch, RefineSearch

__all__ = ["NonLocalAttention", "NonLocalSearch", "RefineSearch", "rescale_flows"]
