"""The plugin's reader: video files, multi-page TIFF and .npy as (T, H, W[, C]) image layers.

No napari import here: :func:`napari_get_reader` returns a function producing layer data
tuples. Video files (.mp4, .avi, .mov, .mkv, .gif) are read with PyAV (imageio when PyAV is
missing), TIFF with tifffile, .npy memory-mapped. Files whose decoded size exceeds
``LAZY_BYTES`` open as dask arrays read in chunks of frames when displayed, so nothing is
decoded up front beyond an index of the packets.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["napari_get_reader", "read_layers", "open_video", "SUFFIXES", "LAZY_BYTES", "AXIS_LABELS"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".gif")
SUFFIXES = (".npy", ".tif", ".tiff") + VIDEO_SUFFIXES
LAZY_BYTES = 512 * 2**20  # decoded size above which files open lazily
CHUNK_FRAMES = 8
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


def _decoded_bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _check(shape, path) -> None:
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3, 4)):
        raise ValueError(f"path: {path}: expected frames (T, H, W) or (T, H, W, C) with C in 1, 3, 4; "
                         f"got {tuple(shape)}")


def open_video(path, lazy: bool | None = None, chunk_frames: int = CHUNK_FRAMES):
    """Open a video file as an array (T, H, W[, C]) in its stored type (uint8 for video files).

    Parameters
    ----------
    path : str or Path
        ``.npy``, ``.tif``/``.tiff`` (one page per frame, or any series tifffile reads),
        or ``.mp4``/``.avi``/``.mov``/``.mkv``/``.gif``.
    lazy : bool, optional
        True: a dask array reading ``chunk_frames`` frames at a time when asked; False:
        everything decoded now; None (default): lazy when the decoded size exceeds
        :data:`LAZY_BYTES`. ``.npy`` files are always memory-mapped (read-only).
    chunk_frames : int
        Frames per dask chunk.

    Returns
    -------
    ndarray, numpy memmap or dask array
        (T, H, W) or (T, H, W, C); a single-channel (T, H, W, 1) file gives (T, H, W).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"path: unsupported file type {suffix or '(none)'!r}; expected one of {SUFFIXES}")
    if not path.is_file():
        raise ValueError(f"path: no such file: {path}")
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames: expected an int >= 1, got {chunk_frames!r}")
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            arr = _open_tiff(path, lazy, chunk_frames)
        elif importlib.util.find_spec("av") is not None:
            arr = _open_av(path, lazy, chunk_frames)
        else:
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path, index=None))
    except Exception as e:  # corrupt or unreadable: one clear message
        if isinstance(e, ValueError) and str(e).startswith("path:"):
            raise
        raise ValueError(f"path: cannot read {path}: {e}") from e
    _check(arr.shape, path)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _lazy_stack(read_chunk, T: int, frame_shape, dtype, chunk_frames: int):
    import dask
    import dask.array as da

    parts = []
    for a in range(0, T, chunk_frames):
        b = min(T, a + chunk_frames)
        parts.append(da.from_delayed(dask.delayed(read_chunk)(a, b), (b - a, *frame_shape), dtype=dtype))
    return da.concatenate(parts, axis=0)


def _open_tiff(path: Path, lazy, chunk_frames):
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        shape, dtype = tuple(series.shape), series.dtype
        one_page_per_frame = len(series.pages) == shape[0] and len(shape) >= 3
    big = _decoded_bytes(shape, dtype) > LAZY_BYTES
    if not (lazy or (lazy is None and big)) or not one_page_per_frame:
        return tifffile.imread(path)

    def read_chunk(a, b):
        return tifffile.imread(path, key=range(a, b)).reshape((b - a, *shape[1:]))

    return _lazy_stack(read_chunk, shape[0], shape[1:], dtype, chunk_frames)


class _AVIndex:
    """Presentation timestamps of every frame and the keyframes, from demuxing (no decoding)."""

    def __init__(self, path: Path):
        import av

        with av.open(str(path)) as c:
            s = c.streams.video[0]
            self.H, self.W = s.codec_context.height, s.codec_context.width
            pts, key = [], []
            for pkt in c.demux(s):
                if pkt.size == 0:
                    continue
                if pkt.pts is None:
                    raise ValueError("packets without timestamps")
                pts.append(int(pkt.pts))
                key.append(bool(pkt.is_keyframe))
        self.pts = np.sort(np.array(pts, dtype=np.int64))
        self.keys = np.sort(np.array([p for p, k in zip(pts, key, strict=True) if k], dtype=np.int64))

    def read(self, path: Path, a: int, b: int) -> np.ndarray:
        import av

        want = {int(p): n for n, p in enumerate(self.pts[a:b])}
        out = np.empty((b - a, self.H, self.W, 3), np.uint8)
        got = set()
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            before = self.keys[self.keys <= self.pts[a]]
            if len(before) and before[-1] > self.pts[0]:
                c.seek(int(before[-1]), stream=s, backward=True, any_frame=False)
            last = int(self.pts[b - 1])
            for f in c.decode(s):
                if f.pts in want:
                    out[want[f.pts]] = f.to_ndarray(format="rgb24")
                    got.add(f.pts)
                if len(got) == len(want) or (f.pts is not None and f.pts > last and len(got) > 0
                                             and f.key_frame):
                    break
        if len(got) != len(want):
            raise ValueError(f"frames {a}..{b - 1}: decoded {len(got)} of {len(want)}")
        return out


def _open_av(path: Path, lazy, chunk_frames):
    import av

    try:
        index = _AVIndex(path)
    except ValueError:
        index = None
    if index is not None and len(index.pts) > 0:
        big = _decoded_bytes((len(index.pts), index.H, index.W, 3), np.uint8) > LAZY_BYTES
        if lazy or (lazy is None and big):
            return _lazy_stack(lambda a, b: index.read(path, a, b), len(index.pts),
                               (index.H, index.W, 3), np.uint8, chunk_frames)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"path: {path} holds no video frames")
    return np.stack(frames)
