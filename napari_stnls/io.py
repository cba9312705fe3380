"""Reading and writing videos as (T, H, W[, C]) arrays: .npy and multi-page TIFF.

Files are written atomically (a temporary file in the same folder, then a rename), so an
interrupted write never leaves a partial output behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["read_video", "write_video", "SUFFIXES"]

SUFFIXES = (".npy", ".tif", ".tiff")


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
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        if suffix == ".npy":
            np.save(tmp, np.asarray(video))
        else:
            import tifffile

            tifffile.imwrite(tmp, np.asarray(video))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
