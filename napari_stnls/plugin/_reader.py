"""The plugin's reader: video files, multi-page TIFF and .npy as (T, H, W[, C]) image layers.

No napari import here: :func:`napari_get_reader` returns a function producing layer data
tuples. Files are opened by :func:`napari_stnls.video.io.open_video`: video files (.mp4,
.avi, .mov, .mkv, .gif) with PyAV (imageio when PyAV is missing), TIFF with tifffile, .npy
memory-mapped. Files whose decoded size exceeds ``LAZY_BYTES`` open as dask arrays read in
chunks of frames when displayed, so nothing is decoded up front beyond an index of the
packets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..video.io import LAZY_BYTES, SUFFIXES, open_video

__all__ = ["napari_get_reader", "read_layers", "SUFFIXES", "LAZY_BYTES", "AXIS_LABELS"]

AXIS_LABELS = ("t", "y", "x")  # a video layer's axes (the channel axis of RGB is not one);
# without them napari names the slider's axis "-3", which reads like a frame number


def napari_get_reader(path):
    """npe2 reader hook: a reader function for one supported file, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path) or Path(path).suffix.lower() not in SUFFIXES:
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Layer data tuples ``[(data, kwargs, "image")]`` for one file (or a one-item list)."""
    if isinstance(path, list | tuple):
        path = path[0]
    data = open_video(path)
    rgb = data.ndim == 4 and data.shape[-1] in (3, 4)
    kwargs = {"name": Path(path).stem, "rgb": rgb, "metadata": {"stnls_source": str(path)}}
    if data.ndim == 3 or rgb:
        kwargs["axis_labels"] = AXIS_LABELS
    if np.issubdtype(data.dtype, np.floating):
        kwargs["contrast_limits"] = (0.0, 1.0)
    return [(data, kwargs, "image")]
