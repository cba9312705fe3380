"""Reading and writing videos as (T, H, W[, C]) arrays: .npy, multi-page TIFF, and video
files (.mp4, .avi, .mov, .mkv) through PyAV.

Files are written atomically (a temporary file in the same folder, then a rename), so an
interrupted write never leaves a partial output behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._atomic import atomic_path

__all__ = ["read_video", "write_video", "SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
SUFFIXES = (".npy", ".tif", ".tiff") + VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise ValueError("video files need PyAV: pip install av") from None
    return av


def _suffix(path: Path, name: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{name}: unsupported file type {suffix or '(none)'!r}; expected one of {SUFFIXES}")
    return suffix


def read_video(path) -> tuple[np.ndarray, float]:
    """Read a video file as float32 (T, H, W[, C]) in [0, 1] and return it with its scale.

    Integer files are divided by their type's maximum (255 for uint8), which is returned
    as ``scale`` so that results can be written back on the same scale; float files are
    taken as they are (scale 1).
    """
    path = Path(path)
    suffix = _suffix(path, "input")
    if not path.is_file():
        raise ValueError(f"input: no such file: {path}")
    av = _av() if suffix in VIDEO_SUFFIXES else None  # a missing PyAV is its own error
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif av is not None:
            with av.open(str(path)) as container:
                arr = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        else:
            import tifffile

            arr = tifffile.imread(path)
    except Exception as e:  # unreadable or corrupt: one clear message
        raise ValueError(f"input: cannot read {path}: {e}") from e
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"input: expected frames (T, H, W) or (T, H, W, C) with C in 1, 3, 4; got {arr.shape}"
        )
    if np.issubdtype(arr.dtype, np.integer):
        scale = float(np.iinfo(arr.dtype).max)
        return arr.astype(np.float32) / scale, scale
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), 1.0
    raise ValueError(f"input: unsupported pixel type {arr.dtype}")


def write_video(path, video: np.ndarray) -> Path:
    """Write ``video`` (T, H, W[, C]) to ``path`` atomically; returns the path."""
    path = Path(path)
    suffix = _suffix(path, "output")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"output: folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"output: folder is not writable: {folder}")
    with atomic_path(path, suffix) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.asarray(video))
        elif suffix in VIDEO_SUFFIXES:
            _write_av(tmp, np.asarray(video))
        else:
            import tifffile

            tifffile.imwrite(tmp, np.asarray(video))
    return path


def _write_av(path: str, video: np.ndarray, fps: int = 25) -> None:
    """Write frames with H.264 (near-lossless, crf 1, yuv444p); floats are taken in [0, 1]."""
    av = _av()
    frames = video if video.ndim == 4 else video[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if np.issubdtype(frames.dtype, np.floating):
        frames = np.clip(np.rint(frames * 255), 0, 255)
    frames = frames[..., :3].astype(np.uint8)
    T, H, W, _ = frames.shape
    with av.open(path, mode="w", format="mp4" if path.endswith(".mp4") else None) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = W - W % 2, H - H % 2  # the codec needs even sizes
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "1"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
