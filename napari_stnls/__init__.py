"""napari-stnls: space-time non-local patch search for videos.

The operations live in :mod:`napari_stnls.ops` (pure PyTorch, no napari or Qt).
"""

__version__ = "0.1.0"
