"""Kept so that existing imports (``from napari_stnls.data import sample_video``) work; the
code lives in :mod:`napari_stnls.video.synthetic`."""

from .video.synthetic import SampleVideo, sample_video

__all__ = ["sample_video", "SampleVideo"]
