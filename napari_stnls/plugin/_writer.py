"""The plugin's writer: one image layer to TIFF, ``.npy``, a ``.zarr`` store or a video file.

No napari or Qt import here: :func:`write_image` is npe2's single-layer writer, called with
the path, the layer's data and its attributes (``meta``: ``rgb``, ``contrast_limits``,
``metadata``, ...), and returning the paths written.

* ``.tif``/``.tiff``, ``.npy`` and ``.zarr`` keep the layer's data exactly: its type (uint8,
  uint16, float32, ...) and shape, any layout. TIFF pages are written one at a time (BigTIFF
  past 4 GB), so are the ``.npy`` and zarr frames (zarr: one chunk per index of the first
  axis).
* ``.mp4``/``.avi``/``.mov``/``.mkv`` are 8-bit H.264 (yuv420p) through
  :func:`napari_stnls.video.io.write_video`, for layers of frames (T, H, W), (H, W) or RGB(A)
  (T, H, W, 3|4) (alpha dropped). uint8 layers are written as they are; any other type is
  mapped as napari shows it: the layer's contrast limits to 0..255, clipped, with a warning
  that says so (save as ``.tif``, ``.npy`` or ``.zarr`` to keep the values). The frame rate is
  the source video's, for a layer read from a video file by this plugin, else 25 fps.

Lazy layers (dask arrays, the plugin's background frames) are read a few frames at a time,
so memory stays bounded by those frames. Every output is written under a temporary name in
the same folder and renamed when complete (:func:`napari_stnls._util.atomic_path`,
:func:`~napari_stnls._util.atomic_dir`): an interrupted or failed save leaves nothing under
the final name, and a layer read lazily from a file can be saved over that file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._util import atomic_dir, atomic_path
from ..video.io import VIDEO_SUFFIXES, video_rate, write_video

__all__ = ["write_image", "WRITER_SUFFIXES", "CHUNK_BYTES"]

WRITER_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".mp4", ".avi", ".mov", ".mkv")
CHUNK_BYTES = 64 * 2**20  # frames read at once from the layer's data, at most (but one frame at least)
_BIGTIFF_BYTES = 2**32 - 2**25  # classic TIFF ends at 4 GB (margin for the tags)


def write_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: an image layer's data to ``path``.

    Parameters
    ----------
    path : str
        The file (or ``.zarr`` store) to write; its suffix picks the format
        (:data:`WRITER_SUFFIXES`).
    data : array-like, shape (..., H, W) or (..., H, W, 3|4) for RGB(A)
        The layer's data: NumPy, dask, zarr, or the plugin's background frames; a multiscale
        layer's list of levels (the first, full-resolution level is written).
    meta : dict
        The layer's attributes; used: ``rgb``, ``multiscale``, ``contrast_limits`` (video
        files from other types than uint8) and ``metadata["stnls_source"]`` (frame rate).

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    ValueError
        Before anything is written: an unsupported suffix, a missing or read-only folder,
        data that is not a real-valued array, or a layout a video file cannot hold.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "frames.tif"
    >>> frames = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    >>> write_image(str(out), frames, {}) == [str(out)]
    True
    >>> import tifffile
    >>> tifffile.imread(out).dtype, tifffile.imread(out).shape
    (dtype('uint16'), (2, 3, 4))
    """
    meta = dict(meta or {})
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in WRITER_SUFFIXES:
        raise ValueError(f"path: unsupported file type {suffix or '(none)'!r}; "
                         f"expected one of {WRITER_SUFFIXES}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"path: folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"path: folder is not writable: {folder}")
    if out.is_dir() and suffix != ".zarr":
        raise ValueError(f"path: {out} is a folder")
    if meta.get("multiscale") or isinstance(data, list | tuple):
        data = data[0]
    if not all(hasattr(data, a) for a in ("shape", "dtype", "__getitem__")):
        raise TypeError(f"data: expected an array, got {type(data).__name__}")
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise ValueError(f"data: unsupported pixel type {dtype}")
    shape = tuple(int(n) for n in data.shape)
    if len(shape) < 2:
        raise ValueError(f"data: expected an image of at least 2 dimensions, got shape {shape}")
    rgb = bool(meta.get("rgb", False))

    if suffix in VIDEO_SUFFIXES:
        _write_video_file(out, data, shape, dtype, rgb, meta)
    elif suffix == ".npy":
        with atomic_path(out) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            for a, block in _blocks(data, shape, dtype):
                mm[a:a + len(block)] = block
            mm.flush()
            del mm
    elif suffix == ".zarr":
        import zarr

        chunks = (1, *shape[1:]) if len(shape) >= 3 + rgb else shape
        with atomic_dir(out) as tmp:
            z = zarr.open_array(tmp, mode="w", shape=shape, chunks=chunks, dtype=dtype)
            for a, block in _blocks(data, shape, dtype):
                z[a:a + len(block)] = block
    else:
        import tifffile

        page = shape[-3:] if rgb and shape[-1] in (3, 4) else shape[-2:]
        big = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > _BIGTIFF_BYTES
        if len(page) == len(shape):  # one page: the first axis is the page's own
            pages = iter([np.asarray(_whole(data), dtype=dtype)])
        else:
            pages = (p for _, block in _blocks(data, shape, dtype) for p in block.reshape(-1, *page))
        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, pages, shape=shape, dtype=dtype, bigtiff=big,
                             photometric="rgb" if len(page) == 3 else "minisblack")
    return [str(out)]


def _blocks(data, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, data[start:stop])`` as NumPy along the first axis, at most :data:`CHUNK_BYTES`
    each (one index at least); the plugin's background frames are waited for, one by one."""
    frame_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    step = max(1, CHUNK_BYTES // max(frame_bytes, 1))
    waits = callable(getattr(data, "wait", None)) and callable(getattr(data, "is_ready", None))
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        if waits:  # BackgroundFrames: a frame not computed yet reads as a placeholder
            for t in range(a, b):
                if not data.wait(t):
                    raise ValueError(f"data: frame {t} could not be computed"
                                     + (f": {data.failed(t)}" if callable(getattr(data, "failed", None))
                                        and data.failed(t) is not None else ""))
        block = data[a:b]
        if hasattr(block, "compute"):  # dask
            block = block.compute()
        yield a, np.asarray(block, dtype=dtype)


def _write_video_file(out: Path, data, shape, dtype: np.dtype, rgb: bool, meta: dict) -> None:
    frames_rgb = rgb and shape[-1] in (3, 4)
    ndim = len(shape) - frames_rgb
    if ndim not in (2, 3):
        raise ValueError(f"data: a video file holds frames (T, H, W) or (T, H, W, 3); this layer has shape "
                         f"{shape}{' (RGB)' if frames_rgb else ''}: save it as .tif, .npy or .zarr")
    if ndim == 2:  # one image: a one-frame video
        data, shape = _OneFrame(data), (1, *shape)
    lo, hi = None, None
    if dtype != np.uint8:
        lo, hi = _limits(meta, data, dtype)
        warnings.warn(f"{out.name}: {dtype} data written as 8-bit video, the contrast limits {lo:g}..{hi:g} "
                      "mapped to 0..255 (save as .tif, .npy or .zarr to keep the values)", UserWarning,
                      stacklevel=3)
    frames = np.empty((*shape[:3], 3) if frames_rgb else shape, np.uint8)
    for a, block in _blocks(data, shape, dtype):
        if frames_rgb:
            block = block[..., :3]  # alpha dropped
        if lo is not None:
            if hi > lo:
                block = np.clip(np.rint((block.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255)
            else:  # one value shown: above it white
                block = (block > lo) * 255
        frames[a:a + len(block)] = block
    source = (meta.get("metadata") or {}).get("stnls_source")
    fps = video_rate(source) if isinstance(source, str | Path) else None
    write_video(out, frames, fps=fps, name="path")


def _limits(meta: dict, data, dtype: np.dtype) -> tuple[float, float]:
    """The layer's contrast limits, or (when missing) the type's range for integers and the
    first frame's for floats."""
    limits = meta.get("contrast_limits")
    if limits is not None and len(limits) == 2 and all(np.isfinite(float(v)) for v in limits):
        return float(limits[0]), float(limits[1])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    first = np.asarray(data[0], dtype=np.float64)
    return float(np.nanmin(first)), float(np.nanmax(first))


def _whole(data):
    block = data[...]
    return block.compute() if hasattr(block, "compute") else block


class _OneFrame:
    """A 2-D image seen as one frame (1, ...)."""

    def __init__(self, image):
        self.image = image
        self.shape = (1, *image.shape)
        self.dtype = image.dtype

    def __getitem__(self, key):
        return np.asarray(_whole(self.image))[None][key]
