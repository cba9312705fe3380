"""What a tile reads: crops of the video and of the flows (through :mod:`napari_stnls.video.io`)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..denoise import range_frames, range_of_frames
from ..ops import Region
from ..video.io import VIDEO_SUFFIXES, CropReader, decode_to_npy

__all__ = ["VideoCrops", "FlowCrops"]


class VideoCrops:
    """A (T, H, W[, C]) video read as float32 (T, H, W, C) crops on the [0, 1] scale.

    ``src`` is an array-like or a ``.npy``/``.zarr`` path (read through
    :class:`~napari_stnls.video.io.CropReader`), or a video file, first decoded into a
    temporary ``.npy`` in ``cache_dir`` (removed by :meth:`close`; :attr:`decoded` says so).
    """

    def __init__(self, src, cache_dir=None):
        self._tmp: str | None = None
        if isinstance(src, (str, Path)) and Path(src).suffix.lower() in VIDEO_SUFFIXES:
            src = self._decode(Path(src), cache_dir)
        self.reader = CropReader(src, "video")
        shape, dtype = self.reader.shape, self.reader.dtype
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 2, 3, 4)):
            raise ValueError(f"video: expected (T, H, W) or (T, H, W, C) with C <= 4, got {shape}")
        if np.issubdtype(dtype, np.integer):
            self.scale = float(np.iinfo(dtype).max)
        elif np.issubdtype(dtype, np.floating):
            self.scale = 1.0
        else:
            raise TypeError(f"video: unsupported pixel type {dtype}")
        self.gray = len(shape) == 3
        self.shape = tuple(shape) if not self.gray else (*shape, 1)
        self.dtype = dtype

    def _decode(self, path: Path, cache_dir) -> Path:
        """Decode a video file frame by frame into a temporary .npy (bounded memory)."""
        if not path.is_file():
            raise ValueError(f"video: no such file: {path}")
        self._tmp = tempfile.mkdtemp(prefix="stnls-decode-", dir=cache_dir)
        try:
            return decode_to_npy(path, self._tmp, "video")
        except BaseException:
            self.close()
            raise

    @property
    def decoded(self) -> bool:
        """Whether the source is a video file decoded into a temporary file."""
        return self._tmp is not None

    def read(self, crop: Region) -> np.ndarray:
        """The crop as float32 (t, h, w, C) on the [0, 1] scale."""
        idx = (slice(crop.t0, crop.t1), slice(crop.y0, crop.y1), slice(crop.x0, crop.x1))
        a = self.reader.read(idx)
        if self.gray:
            a = a[..., None]
        a = a.astype(np.float32)
        if self.scale != 1.0:
            a /= self.scale
        return a

    def signal_range(self) -> tuple[float, float]:
        """:func:`~napari_stnls.denoise.signal_range` of the whole video, on the [0, 1] scale of
        :meth:`read`, reading only the frames it needs (the same numbers as on the array)."""
        T, H, W, _ = self.shape
        return range_of_frames(self.read(Region(t, t + 1, 0, H, 0, W))[0] for t in range_frames(T))

    def close(self) -> None:
        """Remove the decoded temporary file, if any."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class FlowCrops:
    """``(fflow, bflow)`` arrays (T, 2, H, W) read per crop, or a per-tile flow method."""

    def __init__(self, flows, shape: tuple[int, int, int], max_flow):
        self.method: str | None = None
        self.readers = None
        T, H, W = shape
        if max_flow is not None and (isinstance(max_flow, bool) or not isinstance(max_flow, (int, float))
                                     or not max_flow >= 0 or not math.isfinite(max_flow)):
            raise ValueError(f"max_flow: expected a finite number >= 0 (pixels), got {max_flow!r}")
        if isinstance(flows, str):
            from ..video.flow import METHODS

            if flows not in METHODS:
                raise ValueError(f"flows: expected arrays (fflow, bflow) or a per-tile method in {METHODS}, "
                                 f"got {flows!r}")
            if max_flow is None:
                raise ValueError("max_flow: needed with per-tile flows (the flows are clipped to it)")
            self.method, self.bound = flows, (float(max_flow), float(max_flow))
            return
        if flows is None:
            self.bound = (0.0, 0.0)
            return
        if not isinstance(flows, (tuple, list)) or len(flows) != 2:
            raise TypeError("flows: expected a pair (fflow, bflow) of arrays (T, 2, H, W) or a method name")
        readers = []
        for f, name in zip(flows, ("fflow", "bflow"), strict=True):
            if isinstance(f, torch.Tensor) and f.ndim == 5 and f.shape[0] == 1:
                f = f[0]
            rd = CropReader(f, f"flows ({name})")
            if tuple(rd.shape) != (T, 2, H, W):
                raise ValueError(f"flows ({name}): expected shape {(T, 2, H, W)}, got {tuple(rd.shape)}")
            readers.append(rd)
        self.readers = readers
        if max_flow is not None:
            self.bound = (float(max_flow), float(max_flow))
        else:  # one streamed pass, a frame at a time
            mx = np.zeros(2)
            for rd in readers:
                for t in range(T):
                    a = np.abs(rd.read((slice(t, t + 1),)).astype(np.float64))
                    mx = np.maximum(mx, a.reshape(2, -1).max(1))
            self.bound = (float(mx[1]), float(mx[0]))  # (dy, dx): channel 0 is dx
        self.checked = max_flow is not None

    def chain(self, T: int, wt: int) -> tuple[int, int]:
        """Bounds (dy, dx) on how far a query moves along the flow chain."""
        if self.readers is None and self.method is None:
            return (0, 0)
        steps = min(T, 2 * wt + 1) - 1
        return tuple(math.ceil(steps * b) + 1 for b in self.bound)

    def read(self, crop: Region, video_crop: np.ndarray):
        """(fflow, bflow) on the crop as (1, t, 2, h, w) float32 tensors, or None."""
        if self.method is not None:
            from ..video.flow import compute_flows

            ff, bf = compute_flows(video_crop[..., 0] if video_crop.shape[-1] == 1 else video_crop,
                                   self.method)
            b = self.bound[0]
            return ff.clamp(-b, b), bf.clamp(-b, b)
        if self.readers is None:
            return None
        idx = (slice(crop.t0, crop.t1), slice(None), slice(crop.y0, crop.y1), slice(crop.x0, crop.x1))
        out = []
        for rd in self.readers:
            a = rd.read(idx).astype(np.float32)
            if self.checked:
                over = np.abs(a).reshape(a.shape[0], 2, -1).max(axis=(0, 2))
                if over[1] > self.bound[0] or over[0] > self.bound[1]:
                    raise ValueError(f"max_flow: {rd.name} reaches {over.max():.3g} px in the crop {crop}, "
                                     f"above the bound {max(self.bound):.3g}; the halo would be too small")
            out.append(torch.from_numpy(a)[None])
        return tuple(out)
