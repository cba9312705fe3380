"""Kept so that existing imports (``from napari_stnls.flow import compute_flows``) work; the
code lives in :mod:`napari_stnls.video.flow`."""

from .video.flow import HAS_OPENCV, METHODS, compute_flows

__all__ = ["compute_flows", "METHODS", "HAS_OPENCV"]
