"""Video files and stores as (T, H, W[, C]) arrays: the one reader and writer of the package.

Readable: ``.npy`` (memory-mapped), ``.zarr`` stores, multi-page TIFF, and video files
(.mp4, .avi, .mov, .mkv, .gif) through PyAV (imageio when PyAV is missing). Writable:
``.npy``, TIFF and .mp4/.avi/.mov/.mkv (H.264, near-lossless).

* :func:`open_video`: an array in the stored type, lazy where it pays: ``.npy`` memory-mapped,
  zarr as it is, large TIFF and video files as dask arrays decoded chunk by chunk when read
  (the napari reader).
* :func:`read_video`: everything decoded, as float32 on the [0, 1] scale with the scale
  (the command line).
* :func:`read_frames`: some frames of a file, decoding only those.
* :class:`CropReader`: crops of an array or a ``.npy``/``.zarr`` path read as NumPy, one at a
  time, and :func:`decode_to_npy`, a video file decoded frame by frame into a ``.npy``
  (tile-by-tile processing, bounded memory).
* :func:`write_video`: atomically (a temporary file in the same folder, then a rename), so an
  interrupted write never leaves a partial output behind; video files as H.264 in yuv420p
  (what players expect) at the frame rate given (:func:`video_rate` reads a file's), or
  near-lossless (``lossless=True``: yuv444p, crf 0).
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .._util import atomic_path
from .axes import parse_axes

__all__ = [
    "open_video",
    "read_video",
    "read_frames",
    "write_video",
    "video_rate",
    "DEFAULT_RATE",
    "CropReader",
    "decode_to_npy",
    "AVIndex",
    "SUFFIXES",
    "VIDEO_SUFFIXES",
    "WRITE_SUFFIXES",
    "LAZY_BYTES",
    "CHUNK_FRAMES",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".gif")  # decoded with PyAV
SUFFIXES = (".npy", ".tif", ".tiff") + VIDEO_SUFFIXES  # the files read here (zarr stores are folders)
WRITE_SUFFIXES = (".npy", ".tif", ".tiff", ".mp4", ".avi", ".mov", ".mkv")
LAZY_BYTES = 512 * 2**20  # decoded size above which open_video reads TIFF and video files lazily
CHUNK_FRAMES = 8
DEFAULT_RATE = Fraction(25)  # frames per second of a video file written from frames without a rate


def _av(name: str):
    try:
        import av
    except ImportError:
        raise ValueError(f"{name}: video files need PyAV: pip install av") from None
    return av


def _suffix(path: Path, name: str, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{name}: unsupported file type {suffix or '(none)'!r}; expected one of {allowed}")
    return suffix


def _decoded_bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _check_frames(shape, path, name: str) -> None:
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{name}: {path}: expected frames (T, H, W) or (T, H, W, C) with C in 1, 3, 4; "
                         f"got {tuple(shape)}")


def _open(path, lazy: bool | None, chunk_frames: int, name: str, axes: str | None = None):
    """The file's frames in their stored type and layout (checked against ``axes``, or as
    (T, H, W[, C]) frames without; not squeezed)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".zarr":
        suffix = _suffix(path, name, SUFFIXES + (".zarr",))
    if not (path.is_dir() if suffix == ".zarr" else path.is_file()):
        raise ValueError(f"{name}: no such file: {path}")
    if not isinstance(chunk_frames, int) or isinstance(chunk_frames, bool) or chunk_frames < 1:
        raise ValueError(f"chunk_frames: expected an int >= 1, got {chunk_frames!r}")
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".zarr":
            import zarr

            arr = zarr.open_array(str(path), mode="r")
            arr = arr[:] if lazy is False else arr
        elif suffix in (".tif", ".tiff"):
            arr = _open_tiff(path, lazy, chunk_frames)
        elif importlib.util.find_spec("av") is not None:
            arr = _open_av(path, lazy, chunk_frames, name)
        elif importlib.util.find_spec("imageio") is not None:
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path, index=None))
        else:
            _av(name)  # the error that says what to install
    except Exception as e:  # corrupt or unreadable: one clear message
        if isinstance(e, ValueError) and str(e).startswith(f"{name}:"):
            raise
        raise ValueError(f"{name}: cannot read {path}: {e}") from e
    if axes is None:
        _check_frames(arr.shape, path, name)
    else:
        parse_axes(axes, arr.shape)
    return arr


def open_video(path, lazy: bool | None = None, chunk_frames: int = CHUNK_FRAMES, axes: str | None = None):
    """Open a video file or store as an array (T, H, W[, C]) in its stored type (uint8 for video files).

    Parameters
    ----------
    path : str or Path
        ``.npy``, ``.zarr``, ``.tif``/``.tiff`` (one page per frame, or any series tifffile
        reads), or ``.mp4``/``.avi``/``.mov``/``.mkv``/``.gif``.
    lazy : bool, optional
        True: a dask array reading ``chunk_frames`` frames at a time when asked; False:
        everything decoded now; None (default): lazy when the decoded size exceeds
        :data:`LAZY_BYTES`. ``.npy`` files are always memory-mapped (read-only) and zarr
        stores read when indexed (unless ``lazy=False``).
    chunk_frames : int
        Frames per dask chunk.
    axes : str, optional
        The stored layout (:mod:`napari_stnls.video.axes`, e.g. ``"TZYX"``): any number of
        dimensions is then accepted, checked against it, and returned as stored.

    Returns
    -------
    ndarray, numpy memmap, zarr array or dask array
        (T, H, W) or (T, H, W, C); a single-channel (T, H, W, 1) file gives (T, H, W). With
        ``axes``: the stored shape.

    Raises
    ------
    ValueError
        Naming ``path``: an unsupported type, a missing, unreadable or corrupt file, frames
        of another shape; naming ``axes`` when they do not fit the stored shape.
    """
    arr = _open(path, lazy, chunk_frames, "path", axes)
    if axes is None and arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def read_video(path) -> tuple[np.ndarray, float]:
    """Read a video file as float32 (T, H, W[, C]) in [0, 1] and return it with its scale.

    Integer files are divided by their type's maximum (255 for uint8), which is returned
    as ``scale`` so that results can be written back on the same scale; float files are
    taken as they are (scale 1). Everything is decoded (see :func:`open_video` for lazy
    reading); errors name the ``input``.
    """
    arr = np.asarray(_open(path, False, CHUNK_FRAMES, "input"))
    if np.issubdtype(arr.dtype, np.integer):
        scale = float(np.iinfo(arr.dtype).max)
        return arr.astype(np.float32) / scale, scale
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), 1.0
    raise ValueError(f"input: unsupported pixel type {arr.dtype}")


def read_frames(path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames ``start .. stop-1`` of a file (clipped to its length) as NumPy, in the stored type.

    Video files are decoded from the keyframe before ``start`` to ``stop`` only (through
    :class:`AVIndex` where PyAV finds timestamps); other files are read through
    :func:`open_video`.
    """
    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES and importlib.util.find_spec("av") is not None:
        if not path.is_file():
            raise ValueError(f"path: no such file: {path}")
        try:
            index = AVIndex(path)
        except ValueError:
            index = None
        if index is not None and len(index.pts) > 0:
            stop = len(index.pts) if stop is None else min(int(stop), len(index.pts))
            if not 0 <= start < stop:
                raise ValueError(f"start: expected 0 <= start < {stop}, got {start}")
            return index.read(path, start, stop)
    return np.asarray(open_video(path, lazy=True)[start:stop])


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


class AVIndex:
    """Presentation timestamps of every frame of a video file and its keyframes, from
    demuxing (no decoding), so that any range of frames can be decoded on its own.

    Parameters
    ----------
    path : Path
        A video file PyAV opens.

    Raises
    ------
    ValueError
        When the packets carry no timestamps (then decode the file from its start).
    """

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
        """Frames ``a .. b-1`` as uint8 (b - a, H, W, 3), decoded from the keyframe before ``a``."""
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


def _open_av(path: Path, lazy, chunk_frames, name: str):
    av = _av(name)
    try:
        index = AVIndex(path)
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
        raise ValueError(f"{name}: {path} holds no video frames")
    return np.stack(frames)


def decode_to_npy(path, folder, name: str = "video") -> Path:
    """Decode a video file frame by frame into ``folder/frames.npy`` (uint8 (T, H, W, 3)).

    Memory stays at one frame whatever the video's length: the frames go to a raw file
    first (their count is unknown until the end), then into the ``.npy``. The caller owns
    ``folder`` (and removes it).
    """
    av = _av(name)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file: {path}")
    raw = Path(folder) / "frames.raw"
    n, hwc = 0, None
    try:
        with av.open(str(path)) as container, open(raw, "wb") as f:
            for frame in container.decode(video=0):
                a = frame.to_ndarray(format="rgb24")
                hwc = a.shape
                f.write(np.ascontiguousarray(a).tobytes())
                n += 1
    except Exception as e:
        raise ValueError(f"{name}: cannot read {path}: {e}") from e
    if n == 0:
        raise ValueError(f"{name}: no frames in {path}")
    out = Path(folder) / "frames.npy"
    mm = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(n, *hwc))
    src = np.memmap(raw, dtype=np.uint8, mode="r", shape=(n, *hwc))
    for t in range(n):
        mm[t] = src[t]
    mm.flush()
    del mm, src
    raw.unlink()
    return out


class CropReader:
    """Reads crops of an array-like (NumPy, memmap, zarr, dask, torch) or of a ``.npy`` or
    ``.zarr`` path as NumPy arrays, touching only the crop.

    A ``.npy`` path is read through a fresh memory map per crop, dropped at once, so that
    the file pages read do not stay in the process's memory.

    Parameters
    ----------
    src : array-like or path
        Anything with ``shape``, ``dtype`` and ``__getitem__``; a ``.npy`` file; a zarr
        store (``.zarr`` or any folder).
    name : str
        Names the source in error messages.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy dtype
    """

    def __init__(self, src, name: str):
        self.name = name
        self.npy: Path | None = None
        self.array = None
        if isinstance(src, (str, Path)):
            src = Path(src)
            suffix = src.suffix.lower()
            if not src.exists():
                raise ValueError(f"{name}: no such file or store: {src}")
            if suffix == ".npy":
                try:
                    arr = np.load(src, mmap_mode="r", allow_pickle=False)
                except Exception as e:
                    raise ValueError(f"{name}: cannot read {src}: {e}") from e
                self.npy, self.shape, self.dtype = src, tuple(arr.shape), arr.dtype
                del arr
                return
            if suffix == ".zarr" or src.is_dir():
                import zarr

                try:
                    src = zarr.open_array(str(src), mode="r")
                except Exception as e:
                    raise ValueError(f"{name}: cannot open {src} as a zarr array: {e}") from e
            else:
                raise ValueError(f"{name}: unsupported file type {suffix or '(none)'!r}; expected .npy, "
                                 f".zarr or a video file {VIDEO_SUFFIXES}")
        if type(src).__module__.split(".")[0] == "torch":
            src = src.detach().cpu().numpy()
        if not all(hasattr(src, a) for a in ("shape", "dtype", "__getitem__")):
            raise TypeError(f"{name}: expected a NumPy/zarr/dask array or a path, got {type(src).__name__}")
        self.array = src
        self.shape, self.dtype = tuple(src.shape), np.dtype(src.dtype)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """``src[index]`` as a NumPy array (a copy)."""
        if self.npy is not None:
            arr = np.load(self.npy, mmap_mode="r", allow_pickle=False)
            out = np.array(arr[index])
            del arr
            return out
        out = self.array[index]
        if hasattr(out, "compute"):  # dask
            out = out.compute()
        return np.asarray(out)

    def source(self):
        """The whole source as an array-like, not read: the array, or the ``.npy`` memory-mapped."""
        return self.array if self.npy is None else np.load(self.npy, mmap_mode="r", allow_pickle=False)


def video_rate(path) -> Fraction | None:
    """The average frame rate of a video file (e.g. ``Fraction(30000, 1001)``), or None for
    other files, or when PyAV is missing or the file says none."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES or importlib.util.find_spec("av") is None:
        return None
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate
    except Exception:
        return None
    return Fraction(rate) if rate else None


def write_video(path, video: np.ndarray, *, fps: float | Fraction | None = None, lossless: bool = False,
                name: str = "output") -> Path:
    """Write ``video`` to ``path`` atomically; returns the path.

    ``.npy`` and TIFF keep the array's type and shape (any layout). Video files take frames
    (T, H, W[, C]) with C 1 or 3 and are H.264: 8 bits per channel (floats are taken in
    [0, 1], other integer types scaled by their maximum), odd heights and widths cropped by
    one pixel; yuv420p at crf 17 (what players expect), or with ``lossless`` yuv444p at
    crf 0 (lossless but for the RGB to YUV rounding); at ``fps`` frames per second (default
    :data:`DEFAULT_RATE`; :func:`video_rate` reads a file's).
    """
    path = Path(path)
    suffix = _suffix(path, "output", WRITE_SUFFIXES)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"output: folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"output: folder is not writable: {folder}")
    rate = _rate(fps)
    if suffix in VIDEO_SUFFIXES:
        shape = tuple(np.shape(video))
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise ValueError(f"{name}: video files hold frames (T, H, W) or (T, H, W, 3), got shape {shape}; "
                             "write .npy or .tif for other layouts")
    with atomic_path(path, suffix) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.asarray(video))
        elif suffix in VIDEO_SUFFIXES:
            _write_av(tmp, np.asarray(video), rate, lossless)
        else:
            import tifffile

            tifffile.imwrite(tmp, np.asarray(video))
    return path


def _rate(fps) -> Fraction:
    if fps is None:
        return DEFAULT_RATE
    try:
        rate = Fraction(fps).limit_denominator(1_000_000)
    except (TypeError, ValueError):
        raise ValueError(f"fps: expected a positive number, got {fps!r}") from None
    if not rate > 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    return rate


def _write_av(path: str, video: np.ndarray, fps: Fraction = DEFAULT_RATE, lossless: bool = False) -> None:
    """Write frames with H.264: yuv420p at crf 17, or yuv444p at crf 0 (``lossless``); floats
    are taken in [0, 1], integers other than uint8 scaled by their type's maximum."""
    av = _av("output")
    frames = video if video.ndim == 4 else video[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if np.issubdtype(frames.dtype, np.floating):
        frames = np.clip(np.rint(frames * 255), 0, 255)
    elif frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float64) * (255 / np.iinfo(frames.dtype).max)), 0, 255)
    frames = frames[..., :3].astype(np.uint8)
    T, H, W, _ = frames.shape
    with av.open(path, mode="w", format="mp4" if path.endswith(".mp4") else None) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = W - W % 2, H - H % 2  # yuv420p needs even sizes (cropped for both)
        stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        stream.options = {"crf": "0" if lossless else "17"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
