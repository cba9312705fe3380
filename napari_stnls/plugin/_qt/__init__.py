"""The napari plugin's Qt code: one dock widget per module; everything they compute is in
the Qt-free modules :mod:`napari_stnls.plugin.model.search`,
:mod:`napari_stnls.plugin.model.denoise` and :mod:`napari_stnls.plugin.model.regions`."""

from .denoise import DenoiseWidget
from .flow import FlowWidget
from .neighbours import NeighboursWidget
from .regions import RegionsWidget
from .search import SearchWidget

__all__ = ["RegionsWidget", "FlowWidget", "SearchWidget", "NeighboursWidget", "DenoiseWidget"]
