"""Videos larger than memory: tile-by-tile processing from disk, and lazy dask graphs (no Qt).

A video of shape (T, H, W[, C]) held as a NumPy array or memmap, a ``.npy`` file, a zarr
array or store, a dask array or a video file is cut into tiles of (frames, rows, columns).
Each tile reads only the *crop* of the video (and of the flows) that its output can depend
on, runs the search-based method on the chosen device, and its interior is written into an
output store (zarr or ``.npy``). The result equals the in-memory call on the whole video to
float rounding, and peak memory follows the tile size, not the video size.

The crop is derived from the definitions in ``docs/api.md``, axis by axis:

* **one search pass**, queries on rows ``[a0, a1)``: a query's position carried along the
  flow moves at most ``D = ceil((nt - 1) * max|flow|) + 1`` pixels (``nt - 1`` chained steps,
  ``+1`` for rounding), the window centre is clamped into ``[r, H-1-r]`` with
  ``r = ws // 2`` (monotone, so the centres of the queries lie between those of ``a0 - D``
  and ``a1 - 1 + D``), the candidates span ``+-r`` and their patches ``+-dilation*(ps//2)``,
  plus one pixel for bilinear reading. In time the window of frame ``t`` is
  ``s0 .. s0 + nt - 1`` with ``s0 = clamp(t - wt, 0, T - nt)``. A crop that holds all of
  this and ends either at the frame's border or strictly inside (so that its own window
  clamping never triggers) gives the same candidates as the whole video (:func:`read_span`).
* **NL-means** writes each query's weighted neighbours at the query's own patch, so a
  tile's output depends on the queries within ``ps // 2`` of it (run in region mode).
* **NL-Bayes** writes every patch of a group at the group member's position; the pixels a
  tile's output reads through step 2 (:func:`contrib_span` then :func:`read_span`) need the
  step-1 estimate, which needs a second such halo: the halo is doubled. The crop is run as
  a whole (``region=None``, its origin aligned to the reference grid ``stride0`` and to 2
  for round-half-to-even), with a margin so that the references at the crop's edges, whose
  windows the crop clamps differently, cannot reach the pixels that matter.

Flows are arrays (T, 2, H, W) (``fflow``, ``bflow``; NumPy, memmap, zarr or dask) read with
the same crop; ``max_flow`` bounds ``|flow|`` (read from the flows in one streamed pass when
not given; a tile whose flows exceed a given bound is a ValueError). Flows computed per tile
(``flows="tvl1"`` etc.) are an explicit, approximate option: the flow of a crop differs from
the flow of the whole video near the crop's edges, so that result is not the whole-video one.

Resuming: the finished tiles are recorded in a sidecar ``OUT.tiles.json`` (written
atomically after the tile's data is flushed), with a fingerprint of the run's parameters;
running the same call again continues with the tiles not yet written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._atomic import atomic_path
from ._progress import Cancelled, Steps
from .ops import Region, gather, search

__all__ = [
    "SearchFunction",
    "denoise_dask",
    "open_video",
    "plan_tiles",
    "process",
    "read_span",
    "contrib_span",
    "tile_crop",
    "Cancelled",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
_RECORD_VERSION = 1


# ----------------------------------------------------------------------------- halos


def read_span(a0: int, a1: int, n: int, r: int, pr: int, d: int) -> tuple[int, int]:
    """Rows (or columns) ``[lo, hi)`` that one search pass reads for queries on ``[a0, a1)``.

    Parameters
    ----------
    a0, a1 : int
        Half-open range of query positions along the axis.
    n : int
        The axis' length (H or W).
    r : int
        Half-width of the search window, ``stride1 * (ws // 2)``.
    pr : int
        Patch radius, ``dilation * (ps // 2)``.
    d : int
        Bound on how far the flow chain moves a query (0 without flows).

    Returns
    -------
    (lo, hi) : int
        Every pixel the candidates, their patches (mirrored), the query patches and the
        flow reads touch lies in ``[lo, hi)``, clipped to ``[0, n)``.

    Examples
    --------
    >>> read_span(40, 48, 100, r=5, pr=2, d=0)   # interior: +-(r + pr + 1)
    (32, 56)
    >>> read_span(0, 4, 100, r=5, pr=2, d=0)     # the window clamped at the border reaches 2r + pr
    (0, 14)
    """
    def m(v: int) -> int:
        return min(max(v, r), n - 1 - r)

    lo = min(m(a0 - d) - r - pr - 1, a0 - pr)
    hi = max(m(a1 - 1 + d) + r + pr + 2, a1 + pr)
    return max(0, lo), min(n, hi)


def contrib_span(a0: int, a1: int, n: int, r: int, pr: int, d: int) -> tuple[int, int]:
    """Query positions ``[lo, hi)`` whose neighbours' patches can cover pixels ``[a0, a1)``.

    The inverse of :func:`read_span` for methods that write every neighbour patch back at
    the neighbour's own position (NL-Bayes groups). Same parameters.

    Examples
    --------
    >>> contrib_span(40, 48, 100, r=5, pr=2, d=0)
    (32, 56)
    """
    v = a0 - r - pr - 1
    lo = 0 if v <= r else max(0, v - d)
    u = a1 + r + pr
    hi = n if u >= n - 1 - r else min(n, u + d + 1)
    return lo, hi


def _window_start(t: int, T: int, wt: int) -> int:
    nt = min(T, 2 * wt + 1)
    return min(max(t - wt, 0), T - nt)


def _touched(t: int, T: int, wt: int, pt: int) -> tuple[int, int]:
    """Frames ``[lo, hi)`` a query in frame ``t`` reads, and a group of its writes:
    its window, ``pt - 1`` frames more for the patches' depth, mirrored past the end."""
    if T == 1:
        return 0, 1
    s0, nt, period = _window_start(t, T, wt), min(T, 2 * wt + 1), 2 * (T - 1)
    frames = [f % period for f in range(s0, s0 + nt + pt - 1)]
    frames = [period - f if f > T - 1 else f for f in frames]
    return min(frames), max(frames) + 1


def _read_frames(t0: int, t1: int, T: int, wt: int, pt: int = 1) -> tuple[int, int]:
    """Frames that queries in frames ``[t0, t1)`` read."""
    spans = [_touched(t, T, wt, pt) for t in range(t0, t1)]
    return min(a for a, _ in spans), max(b for _, b in spans)


def _contrib_frames(t0: int, t1: int, T: int, wt: int, pt: int = 1) -> tuple[int, int]:
    """Frames whose queries' groups can write into frames ``[t0, t1)``."""
    ts = [t for t in range(T) if _touched(t, T, wt, pt)[0] < t1 and _touched(t, T, wt, pt)[1] > t0]
    return ts[0], ts[-1] + 1


@dataclass(frozen=True)
class _Spec:
    """What the halo of a method depends on (``ps2``: NL-Bayes' step-2 patch side)."""

    kind: str  # "nlm", "nlb" or "fn"
    ps: int
    ws: int
    wt: int
    stride0: int = 1
    dilation: int = 1
    ps2: int | None = None
    pt: int = 1


def tile_crop(spec: _Spec, tile: Region, shape: tuple[int, int, int], d: tuple[int, int]) -> Region:
    """The crop of the video (and flows) that the output of ``tile`` depends on.

    Parameters
    ----------
    spec : _Spec
        The method and its window parameters.
    tile : Region
        The output tile (frames, rows, columns), half-open.
    shape : (T, H, W)
        The whole video's size.
    d : (dy, dx)
        Bounds on how far the flow chain moves a query along y and x (0 without flows).

    Returns
    -------
    Region
        The crop, in the whole video's coordinates.
    """
    T, H, W = shape
    r, pr = spec.ws // 2, spec.dilation * (spec.ps // 2)
    pr2 = spec.dilation * ((spec.ps2 or spec.ps) // 2)
    spans = []
    for (a0, a1), n, dd in (((tile.y0, tile.y1), H, d[0]), ((tile.x0, tile.x1), W, d[1])):
        if spec.kind == "nlb":
            b2 = read_span(*contrib_span(a0, a1, n, r, pr2, dd), n, r, pr2, dd)  # step 2 reads the basic here
            lo, hi = read_span(*contrib_span(*b2, n, r, pr, dd), n, r, pr, dd)  # step 1 for it reads this
            # references at the crop's edges (clamped differently there) must reach neither b2 in
            # step 1 nor the tile in step 2
            m1, m2 = 2 * r + pr + 4, 2 * r + pr2 + 4
            lo, hi = max(0, min(lo, b2[0] - m1, a0 - m2)), min(n, max(hi, b2[1] + m1, a1 + m2))
            align = math.lcm(2, spec.stride0)
            lo -= lo % align
        else:
            q0, q1 = (max(0, a0 - pr), min(n, a1 + pr)) if spec.kind == "nlm" else (a0, a1)
            lo, hi = read_span(q0, q1, n, r, pr, dd)
            lo -= lo % 2  # round-half-to-even of itype="int" is not shift-invariant for odd shifts
        spans.append((lo, hi))
    wt, pt = spec.wt, spec.pt
    if spec.kind == "nlb":
        b2 = _read_frames(*_contrib_frames(tile.t0, tile.t1, T, wt, pt), T, wt, pt)
        t0, t1 = _read_frames(*_contrib_frames(*b2, T, wt, pt), T, wt, pt)
        m = min(T, 2 * wt + 1) + pt
        t0, t1 = max(0, min(t0, b2[0] - m)), min(T, max(t1, b2[1] + m))
    else:
        t0, t1 = _read_frames(tile.t0, tile.t1, T, wt, pt)
    return Region(t0, t1, *spans[0], *spans[1])


def plan_tiles(shape: tuple[int, int, int], tile: tuple[int, int, int]) -> list[Region]:
    """Output tiles of size ``tile`` (frames, rows, columns) covering ``shape``, in raster order.

    Examples
    --------
    >>> plan_tiles((3, 10, 10), (2, 10, 6))
    [Region(t0=0, t1=2, y0=0, y1=10, x0=0, x1=6), Region(t0=0, t1=2, y0=0, y1=10, x0=6, x1=10), \
Region(t0=2, t1=3, y0=0, y1=10, x0=0, x1=6), Region(t0=2, t1=3, y0=0, y1=10, x0=6, x1=10)]
    """
    T, H, W = shape
    tt, th, tw = tile
    return [Region(t, min(T, t + tt), y, min(H, y + th), x, min(W, x + tw))
            for t in range(0, T, tt) for y in range(0, H, th) for x in range(0, W, tw)]


# ----------------------------------------------------------------------------- inputs


class _Reader:
    """Reads crops of an array-like (NumPy, memmap, ``.npy`` path, zarr, dask) as NumPy."""

    def __init__(self, src, name: str):
        self.name = name
        self._npy: Path | None = None
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
                self._npy, self.shape, self.dtype = src, arr.shape, arr.dtype
                del arr
                self._arr = None
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
        if isinstance(src, torch.Tensor):
            src = src.detach().cpu().numpy()
        if not all(hasattr(src, a) for a in ("shape", "dtype", "__getitem__")):
            raise TypeError(f"{name}: expected a NumPy/zarr/dask array or a path, got {type(src).__name__}")
        self._arr = src
        self.shape, self.dtype = tuple(src.shape), np.dtype(src.dtype)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._npy is not None:
            # a fresh mapping per read, dropped at once: file pages read do not stay in RSS
            arr = np.load(self._npy, mmap_mode="r", allow_pickle=False)
            out = np.array(arr[index])
            del arr
            return out
        out = self._arr[index]
        if hasattr(out, "compute"):  # dask
            out = out.compute()
        return np.asarray(out)


class _Video:
    """A (T, H, W[, C]) video read as float32 (T, H, W, C) crops on the [0, 1] scale."""

    def __init__(self, src, cache_dir=None):
        self._tmp: str | None = None
        if isinstance(src, (str, Path)) and Path(src).suffix.lower() in VIDEO_SUFFIXES:
            src = self._decode(Path(src), cache_dir)
        self.reader = _Reader(src, "video")
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
        from .io import _av

        av = _av()
        if not path.is_file():
            raise ValueError(f"video: no such file: {path}")
        self._tmp = tempfile.mkdtemp(prefix="stnls-decode-", dir=cache_dir)
        raw = Path(self._tmp) / "frames.raw"
        n, hwc = 0, None
        try:
            with av.open(str(path)) as container, open(raw, "wb") as f:
                for frame in container.decode(video=0):
                    a = frame.to_ndarray(format="rgb24")
                    hwc = a.shape
                    f.write(np.ascontiguousarray(a).tobytes())
                    n += 1
        except Exception as e:
            self.close()
            raise ValueError(f"video: cannot read {path}: {e}") from e
        if n == 0:
            self.close()
            raise ValueError(f"video: no frames in {path}")
        out = Path(self._tmp) / "frames.npy"
        mm = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(n, *hwc))
        src = np.memmap(raw, dtype=np.uint8, mode="r", shape=(n, *hwc))
        for t in range(n):
            mm[t] = src[t]
        mm.flush()
        del mm, src
        raw.unlink()
        return out

    def read(self, crop: Region) -> np.ndarray:
        idx = (slice(crop.t0, crop.t1), slice(crop.y0, crop.y1), slice(crop.x0, crop.x1))
        a = self.reader.read(idx)
        if self.gray:
            a = a[..., None]
        a = a.astype(np.float32)
        if self.scale != 1.0:
            a /= self.scale
        return a

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def open_video(src, cache_dir=None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a video source, as :func:`process` would read it (no pixels read).

    Video files are decoded (to a temporary file) to count their frames.
    """
    v = _Video(src, cache_dir)
    try:
        return v.reader.shape, v.dtype
    finally:
        v.close()


class _Flows:
    """``(fflow, bflow)`` arrays (T, 2, H, W) read per crop, or a per-tile flow method."""

    def __init__(self, flows, shape: tuple[int, int, int], max_flow):
        self.method: str | None = None
        self.readers = None
        T, H, W = shape
        if max_flow is not None and (isinstance(max_flow, bool) or not isinstance(max_flow, (int, float))
                                     or not max_flow >= 0 or not math.isfinite(max_flow)):
            raise ValueError(f"max_flow: expected a finite number >= 0 (pixels), got {max_flow!r}")
        if isinstance(flows, str):
            from .flow import METHODS

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
            rd = _Reader(f, f"flows ({name})")
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
            from .flow import compute_flows

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


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class SearchFunction:
    """A user function of the K nearest patches of every query, streamed like the denoisers.

    For each query patch (on the grid of spacing ``stride0``) the ``k`` nearest patches are
    searched in the window around it (along the flows), gathered, and passed on with the
    search's output::

        values = fn(patches, inds, dists)

    with ``patches`` (1, nheads, Q, k, 1, C/nheads, ps, ps), ``inds`` (1, nheads, Q, k, 3)
    holding absolute ``(t, y, x)`` positions in the *whole* video (not the tile), and ``dists``
    (1, nheads, Q, k), for a batch of Q queries in raster order. ``fn`` returns
    ``values`` (1, Q, channels), the output at each query. The result has shape
    (T, ceil(H / stride0), ceil(W / stride0), channels). ``fn`` must treat queries
    independently (batches may be split anywhere).

    Parameters
    ----------
    fn : callable
        ``fn(patches, inds, dists) -> Tensor (1, Q, channels)``.
    channels : int
        Channels of the output.
    ps, ws, wt, k, stride0, dist, dilation, nheads, exclude_self, itype
        As for :func:`napari_stnls.ops.search` (``pt=1``, ``stride1=1``).

    Examples
    --------
    >>> mean_dist = SearchFunction(lambda p, i, d: d.mean(-1).transpose(1, 2), channels=1, k=4, ws=5)
    """

    fn: Callable
    channels: int
    ps: int = 5
    ws: int = 11
    wt: int = 2
    k: int = 8
    stride0: int = 1
    dist: str = "l2"
    dilation: int = 1
    nheads: int = 1
    exclude_self: bool = False
    itype: str = "float"
    batch_queries: int = field(default=4096, compare=False)

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn: expected a callable fn(patches, inds, dists), got {type(self.fn).__name__}")
        for name in ("channels", "ps", "k", "stride0", "dilation", "nheads", "batch_queries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if isinstance(self.ws, bool) or not isinstance(self.ws, int) or self.ws <= 0 or self.ws % 2 == 0:
            raise ValueError(f"ws: expected a positive odd int, got {self.ws!r}")
        if isinstance(self.wt, bool) or not isinstance(self.wt, int) or self.wt < 0:
            raise ValueError(f"wt: expected an int >= 0, got {self.wt!r}")


_METHOD_NAMES = {"nlm": "nlm", "nl_means": "nlm", "nlb": "nlb", "nl_bayes": "nlb"}
_NLM_DEFAULTS = dict(ps=None, ws=11, wt=2, k=None, h=0.5)  # ps, k: nl_means_params
_NLB_KEYS = ("ps", "ps2", "pt", "ws", "wt", "k", "k2", "stride0", "thresh", "thresh2", "opponent")


def _method(method, params: dict, channels: int, frames: int):
    """(kind, spec, params) of a method name or a SearchFunction.

    For NL-Bayes, ``params`` keeps only what was given (``nl_bayes`` picks the rest for
    ``sigma`` the same way on every crop), and the spec holds the resolved values.
    """
    if isinstance(method, SearchFunction):
        if params:
            raise TypeError(f"unexpected keyword arguments with a SearchFunction: {sorted(params)}")
        m = method
        return "fn", _Spec("fn", m.ps, m.ws, m.wt, m.stride0, m.dilation), {}
    if not isinstance(method, str) or method not in _METHOD_NAMES:
        raise ValueError(f"method: expected one of {sorted(_METHOD_NAMES)} or a SearchFunction, "
                         f"got {method!r}")
    kind = _METHOD_NAMES[method]
    if "sigma" not in params:
        raise TypeError(f"{method}: missing the keyword argument sigma (noise level on the [0, 1] scale)")
    keys = set(_NLM_DEFAULTS) if kind == "nlm" else set(_NLB_KEYS)
    unknown = set(params) - keys - {"sigma"}
    if unknown:
        raise TypeError(f"{method}: unexpected keyword arguments {sorted(unknown)}")
    sigma = params["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number on the [0, 1] scale, got {sigma!r}")
    ints = ("ps", "ws", "wt", "k") if kind == "nlm" else ("ps", "ps2", "pt", "ws", "wt", "k", "k2", "stride0")
    for name in ints:
        v = params.get(name)
        low = 0 if name == "wt" and kind == "nlm" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    if kind == "nlm":
        from .denoise import nl_means_params

        p = {**_NLM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
        # resolved once on the whole video, as nl_means does, so every tile uses the same
        tuned = nl_means_params(sigma, frames, p["ws"], p["wt"])
        p = {**tuned, **{k: v for k, v in p.items() if v is not None}}
        spec = _Spec(kind, p["ps"], p["ws"], p["wt"])
    else:
        from .denoise import nl_bayes_params

        p = dict(params)
        q = nl_bayes_params(sigma, channels) | {k: v for k, v in params.items() if v is not None}
        spec = _Spec(kind, q["ps"], q["ws"], q["wt"], q["stride0"], ps2=q["ps2"], pt=q["pt"])
    if spec.ws % 2 == 0:
        raise ValueError(f"ws: expected an odd window side, got {spec.ws}")
    return kind, spec, p


def _compute_tile(kind, method, p, crop: Region, tile: Region, v: np.ndarray, flows, device,
                  should_stop=None) -> np.ndarray:
    """Output of ``tile`` (t, h, w, C) from the video crop ``v`` (t, h, w, C) and its flows."""
    from .denoise import nl_bayes, nl_means

    local = Region(tile.t0 - crop.t0, tile.t1 - crop.t0, tile.y0 - crop.y0, tile.y1 - crop.y0,
                   tile.x0 - crop.x0, tile.x1 - crop.x0)
    sl = (slice(local.t0, local.t1), slice(local.y0, local.y1), slice(local.x0, local.x1))
    if kind == "nlm":
        kw = {k: p[k] for k in ("ps", "ws", "wt", "k", "h")}
        out = nl_means(v, p["sigma"], flows=flows, region=local, device=device, should_stop=should_stop, **kw)
        return out[sl]
    if kind == "nlb":
        kw = {k: p[k] for k in _NLB_KEYS if k in p}
        out = nl_bayes(v, p["sigma"], flows=flows, device=device, should_stop=should_stop, **kw)
        return out[sl]
    return _compute_fn(method, crop, tile, local, v, flows, device, should_stop)


def _compute_fn(m: SearchFunction, crop, tile, local, v, flows, device, should_stop):
    s = m.stride0
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2)[None].to(dev)
    fl = None if flows is None else tuple(f.to(dev) for f in flows)
    offset = torch.tensor([crop.t0, crop.y0, crop.x0], device=dev)
    nW = -(-(local.x1 - local.x0) // s)
    rows = max(1, m.batch_queries // nW)  # grid rows per batch
    res = np.empty((local.t1 - local.t0, -(-(local.y1 - local.y0) // s), nW, m.channels), np.float32)
    with torch.no_grad():
        for t in range(local.t0, local.t1):
            for g0 in range(0, res.shape[1], rows):
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped by the caller")
                g1 = min(res.shape[1], g0 + rows)
                y0, y1 = local.y0 + g0 * s, min(local.y1, local.y0 + g1 * s)
                band = Region(t, t + 1, y0, y1, local.x0, local.x1)
                d, i = search(x, x, ps=m.ps, ws=m.ws, wt=m.wt, k=m.k, flows=fl, dist=m.dist, stride0=s,
                              dilation=m.dilation, nheads=m.nheads, exclude_self=m.exclude_self,
                              itype=m.itype, region=band)
                patches = gather(x, i, ps=m.ps, dilation=m.dilation)
                vals = m.fn(patches, i + offset.to(i.dtype), d)
                q = (g1 - g0) * nW
                if not isinstance(vals, torch.Tensor) or tuple(vals.shape) != (1, q, m.channels):
                    got = tuple(vals.shape) if isinstance(vals, torch.Tensor) else type(vals).__name__
                    raise ValueError(f"fn: expected a tensor of shape {(1, q, m.channels)}, got {got}")
                res[t - local.t0, g0:g1] = vals[0].reshape(g1 - g0, nW, m.channels).float().cpu().numpy()
    return res


# ----------------------------------------------------------------------------- outputs


def _writable(path: Path) -> bool:
    """Whether ``path`` (a file or folder) may be written: permission and its write bits."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _atomic_json(path: Path, obj) -> None:
    with atomic_path(path, ".tmp", fsync=True) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)


class _Store:
    """An output store (``.zarr`` or ``.npy`` path, or a zarr array) and its record of tiles."""

    def __init__(self, out, shape, dtype, chunks, fingerprint: dict, overwrite: bool):
        self.fingerprint = fingerprint
        self.zarr = None
        if not isinstance(out, (str, Path)):
            if not all(hasattr(out, a) for a in ("attrs", "shape", "dtype", "read_only")):
                raise TypeError("out: expected a .zarr or .npy path or a zarr array, "
                                f"got {type(out).__name__}")
            if out.read_only:
                raise ValueError("out: the zarr array is read-only")
            if tuple(out.shape) != tuple(shape):
                raise ValueError(f"out: expected a zarr array of shape {tuple(shape)}, "
                                 f"got {tuple(out.shape)}")
            self.zarr, self.path, self.record = out, None, None
            rec = dict(out.attrs.get("napari_stnls_tiles", {}))
            self.done = set(rec.get("done", [])) if rec.get("fingerprint") == fingerprint else set()
            return
        path = Path(out)
        self.path = path
        self.kind = path.suffix.lower()
        if self.kind not in (".zarr", ".npy"):
            raise ValueError(f"out: expected a .zarr or .npy path, got {path}")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise ValueError(f"out: folder does not exist: {folder}")
        if not _writable(folder):
            raise ValueError(f"out: folder is not writable: {folder}")
        self.record = path.with_name(path.name + ".tiles.json")
        rec = None
        if self.record.exists():
            try:
                rec = json.loads(self.record.read_text())
            except (OSError, ValueError):
                rec = None
        if path.exists():
            if not _writable(path) or (path.is_dir() and any(not _writable(p) for p in path.iterdir())):
                raise ValueError(f"out: {path} is read-only")
            resumable = rec is not None and rec.get("fingerprint") == fingerprint
            if not resumable and not overwrite:
                why = "another run's output" if rec is not None else "not an unfinished output of this call"
                raise ValueError(f"out: {path} exists and is {why}; pass overwrite=True (--overwrite) to "
                                 "replace it")
            if resumable and not overwrite:
                self.done = set(rec.get("done", []))
                self._open()
                return
            self._remove()
        self._create(shape, dtype, chunks)
        self.done = set()
        self._save()

    def _remove(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()

    def _create(self, shape, dtype, chunks) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            if self.kind == ".npy":
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
                mm.flush()
                del mm
            else:
                import zarr

                zarr.open_array(str(tmp), mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
                                fill_value=0)
            os.replace(tmp, self.path)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
            raise
        self._open()

    def _open(self) -> None:
        if self.kind == ".zarr":
            import zarr

            self.zarr = zarr.open_array(str(self.path), mode="r+")

    def _save(self) -> None:
        rec = {"version": _RECORD_VERSION, "fingerprint": self.fingerprint, "done": sorted(self.done)}
        if self.path is None:
            self.zarr.attrs["napari_stnls_tiles"] = rec
        else:
            _atomic_json(self.record, rec)

    def write(self, index: int, region: tuple[slice, ...], values: np.ndarray) -> None:
        """Write one tile, flush it, then record it as done."""
        if self.zarr is not None:
            self.zarr[region] = values  # each chunk is written whole (zarr: temp file, then rename)
        else:
            mm = np.load(self.path, mmap_mode="r+", allow_pickle=False)
            mm[region] = values
            mm.flush()
            del mm  # unmapped: written pages leave this process's RSS
        self.done.add(index)
        self._save()


# ----------------------------------------------------------------------------- driver


def _tile_arg(tile, shape) -> tuple[int, int, int]:
    if tile is None:
        return shape
    if not isinstance(tile, (tuple, list)) or len(tile) != 3 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in tile):
        raise ValueError(f"tile: expected three positive ints (frames, rows, columns), got {tile!r}")
    return tuple(min(int(v), n) for v, n in zip(tile, shape, strict=True))


def _device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but is not available")
    return device


def _check_window(spec: _Spec, shape) -> None:
    T, H, W = shape
    if spec.ws > min(H, W):
        raise ValueError(f"ws: the search window ({spec.ws}) must fit in the frame ({H}x{W})")


@dataclass
class _Plan:
    kind: str
    method: object
    params: dict
    spec: _Spec
    shape: tuple[int, int, int]
    tile: tuple[int, int, int]
    tiles: list[Region]
    out_shape: tuple[int, ...]
    d: tuple[int, int]

    def crop(self, tile: Region) -> Region:
        return tile_crop(self.spec, tile, self.shape, self.d)

    def out_index(self, tile: Region) -> tuple[slice, ...]:
        s = self.spec.stride0 if self.kind == "fn" else 1
        return (slice(tile.t0, tile.t1), slice(tile.y0 // s, -(-tile.y1 // s)),
                slice(tile.x0 // s, -(-tile.x1 // s)))

    def fingerprint(self, video: _Video, flows: _Flows, out_dtype) -> dict:
        p = {k: v for k, v in self.params.items()}
        if self.kind == "fn":
            m = self.method
            fn_name = getattr(m.fn, "__qualname__", type(m.fn).__name__)
            p = {k: v for k, v in asdict(m).items() if k not in ("fn", "batch_queries")} | {"fn": fn_name}
        flow_desc = flows.method or ("arrays" if flows.readers is not None else None)
        fp = dict(kind=self.kind, params=p, halo=asdict(self.spec), shape=list(video.reader.shape),
                  dtype=str(video.dtype),
                  tile=list(self.tile), flows=flow_desc, flow_bound=list(flows.bound),
                  out_dtype=str(np.dtype(out_dtype)))
        fp["hash"] = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return fp


def _plan(video: _Video, method, params, tile, flows: _Flows) -> _Plan:
    T, H, W, C = video.shape
    kind, spec, p = _method(method, params, C, T)
    _check_window(spec, (T, H, W))
    tile = _tile_arg(tile, (T, H, W))
    if kind == "fn" and (tile[1] % spec.stride0 and tile[1] != H or tile[2] % spec.stride0 and tile[2] != W):
        raise ValueError(f"tile: rows and columns must be multiples of stride0={spec.stride0}, got {tile}")
    tiles = plan_tiles((T, H, W), tile)
    if kind == "fn":
        s = spec.stride0
        out_shape = (T, -(-H // s), -(-W // s), method.channels)
    else:
        out_shape = video.reader.shape
    return _Plan(kind, method, p, spec, (T, H, W), tile, tiles, out_shape, flows.chain(T, spec.wt))


def _run_tile(plan: _Plan, video: _Video, flows: _Flows, tile: Region, device, should_stop) -> np.ndarray:
    crop = plan.crop(tile)
    v = video.read(crop)
    fl = flows.read(crop, v)
    out = _compute_tile(plan.kind, plan.method, plan.params, crop, tile, v, fl, device, should_stop)
    if plan.kind != "fn" and video.gray:
        out = out[..., 0]
    return out


def _to_dtype(values: np.ndarray, dtype: np.dtype, scale: float) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(values * scale), 0, scale).astype(dtype)
    return values.astype(dtype, copy=False)


def process(
    video,
    out,
    method="nl_bayes",
    *,
    tile: tuple[int, int, int] | None = (8, 256, 256),
    flows=None,
    max_flow: float | None = None,
    device: str | torch.device | None = None,
    dtype=None,
    overwrite: bool = False,
    cache_dir=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params,
):
    """Process a video tile by tile into an output store; resumable.

    Parameters
    ----------
    video : ndarray, np.memmap, zarr array, dask array, or path (.npy, .zarr, .mp4/.avi/.mov/.mkv)
        The video, (T, H, W) or (T, H, W, C); integer pixels are divided by their type's
        maximum, floats are taken on the [0, 1] scale. It is never modified. A ``.npy``
        path is read through a fresh memory map per tile (so read pages do not pile up in
        RSS); video files are first decoded frame by frame into a temporary ``.npy`` in
        ``cache_dir``.
    out : path (.zarr or .npy) or zarr array
        Where the result goes, tile by tile. A zarr store is created with one chunk per
        tile. An existing ``out`` is resumed when its record (``OUT.tiles.json``, or the
        zarr array's ``napari_stnls_tiles`` attribute) matches this call; otherwise it is
        an error unless ``overwrite=True``.
    method : {"nl_bayes", "nl_means"} (or "nlb", "nlm") or SearchFunction
        ``params`` are the denoiser's keyword arguments (``sigma`` required, on the [0, 1]
        scale; ``ps, ws, wt, k`` and ``h`` or ``stride0``); a :class:`SearchFunction`
        carries its own.
    tile : (frames, rows, columns), optional
        Output tile; None is the whole video. Peak memory grows with the tile plus its halo.
    flows : (fflow, bflow) or str, optional
        Arrays (T, 2, H, W) (NumPy, memmap, zarr, dask, .npy/.zarr paths, or torch tensors
        (1, T, 2, H, W)), read per crop; or a method of :mod:`napari_stnls.flow` computed
        on each tile's crop (approximate: it differs from the whole video's flow; needs
        ``max_flow``, to which the flows are clipped).
    max_flow : float, optional
        Bound on ``|flow|`` in pixels; read from the flows (one pass) when not given.
    device : str or torch.device, optional
        Where to compute; default CUDA when available.
    dtype : numpy dtype, optional
        Output type; default float32 for the denoisers (values in [0, 1]) and the search
        function. An integer type stores ``round(value * max)`` like the input's scale.
    progress, should_stop : callable, optional
        ``progress(done, total)`` after each tile; ``should_stop()`` polled before and
        within each tile, raising :class:`Cancelled`. Tiles written before are kept and
        recorded, so the same call resumes.

    Returns
    -------
    The output: a zarr array or the ``.npy`` path.

    Raises
    ------
    ValueError
        Bad arguments, a missing or read-only output location (before any work), an
        existing output that is not this call's.
    Cancelled
        When ``should_stop()`` returned True.
    """
    dev = _device(device)
    if isinstance(video, (str, Path)) and isinstance(out, (str, Path)) and Path(out).exists() \
            and Path(video).exists() and os.path.samefile(video, out):
        raise ValueError("out: is the input video; refusing to write over it")
    vid = _Video(video, cache_dir)
    try:
        T, H, W, C = vid.shape
        fl = _Flows(flows, (T, H, W), max_flow)
        plan = _plan(vid, method, params, tile, fl)
        out_dtype = np.dtype(dtype if dtype is not None else np.float32)
        s = plan.spec.stride0 if plan.kind == "fn" else 1
        chunks = (plan.tile[0], -(-plan.tile[1] // s), -(-plan.tile[2] // s)) + tuple(plan.out_shape[3:])
        fingerprint = plan.fingerprint(vid, fl, out_dtype)
        store = _Store(out, plan.out_shape, out_dtype, chunks, fingerprint, overwrite)
        steps = Steps(len(plan.tiles), progress, should_stop)
        if store.done:
            steps.advance(len(store.done))
        scale = vid.scale if np.issubdtype(out_dtype, np.integer) and plan.kind != "fn" else 1.0
        if np.issubdtype(out_dtype, np.integer) and scale == 1.0:
            scale = float(np.iinfo(out_dtype).max)
        for n, t in enumerate(plan.tiles):
            if n in store.done:
                continue
            steps.check()
            values = _run_tile(plan, vid, fl, t, dev, should_stop)
            store.write(n, plan.out_index(t), _to_dtype(values, out_dtype, scale))
            steps.advance()
    finally:
        vid.close()
    return store.zarr if store.zarr is not None else store.path


# ----------------------------------------------------------------------------- dask


def _dask_tile(v, ff, bf, kind, method, params, crop, tile, device, gray, flow_method, bound):
    """One block of :func:`denoise_dask` (runs on a worker)."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 3:
        v = v[..., None]
    if flow_method is not None:
        from .flow import compute_flows

        f = compute_flows(v[..., 0] if v.shape[-1] == 1 else v, flow_method)
        fl = tuple(x.clamp(-bound, bound) for x in f)
    elif ff is not None:
        fl = tuple(torch.from_numpy(np.asarray(f, np.float32))[None] for f in (ff, bf))
    else:
        fl = None
    out = _compute_tile(kind, method, params, crop, tile, v, fl, _device(device))
    return out[..., 0] if gray and kind != "fn" else out


def denoise_dask(
    video,
    method="nl_bayes",
    *,
    tile: tuple[int, int, int] | None = None,
    flows=None,
    max_flow: float | None = None,
    device: str | None = "cpu",
    **params,
):
    """The same computation as :func:`process`, as a lazy dask array (one task per tile).

    Each output block is one tile: a task that takes the dask slice of the video (and flows)
    that the tile depends on (the crop of :func:`tile_crop`, asymmetric at the frame
    borders, which ``map_overlap``'s fixed depth cannot express) and runs the method on it.
    Nothing is computed until asked: ``result[t].compute()`` computes only the tiles of
    frame t (with ``tile=(1, H, W)``, the default, one task per frame: what a napari layer
    needs to compute frames as the user scrolls to them). Runs on any dask scheduler,
    ``dask.distributed`` included.

    Parameters
    ----------
    video : dask array, ndarray, zarr array or path (.npy, .zarr)
        (T, H, W) or (T, H, W, C); integer pixels are scaled to [0, 1].
    method, params, flows, max_flow
        As for :func:`process`. Without ``max_flow``, the bound is computed from the flows
        now (one pass).
    tile : (frames, rows, columns), optional
        The output chunks; default one frame (1, H, W).
    device : str, optional
        Where each task computes (default ``"cpu"``; use "cuda" on GPU workers).

    Returns
    -------
    dask.array.Array
        float32, shape (T, H, W[, C]) (for a SearchFunction: (T, nH, nW, channels)),
        chunked by tile.
    """
    import dask
    import dask.array as da

    vid = _Video(video) if not hasattr(video, "dask") else None
    if vid is not None:
        if vid._tmp is not None:
            vid.close()
            raise ValueError("video: video files are not supported here; decode to .npy or .zarr first")
        src = vid.reader._arr if vid.reader._arr is not None else np.load(vid.reader._npy, mmap_mode="r")
        scale, dtype = vid.scale, vid.dtype
        dv = da.from_array(src, chunks=(1,) + tuple(src.shape[1:]), asarray=False)
    else:
        dv = video
        dtype = np.dtype(dv.dtype)
        if len(dv.shape) not in (3, 4):
            raise ValueError(f"video: expected (T, H, W) or (T, H, W, C), got {tuple(dv.shape)}")
        scale = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    gray = dv.ndim == 3
    T, H, W = dv.shape[:3]
    if tile is None:
        tile = (1, H, W)

    class _Shape:  # what _plan needs of a video
        pass

    shim = _Shape()
    shim.shape = (T, H, W, 1 if gray else dv.shape[3])
    shim.reader = _Shape()
    shim.reader.shape = tuple(dv.shape)
    fl = _Flows(flows if isinstance(flows, str) or flows is None else tuple(
        (f[0] if isinstance(f, torch.Tensor) and f.ndim == 5 else f) for f in flows), (T, H, W), max_flow)
    plan = _plan(shim, method, params, tile, fl)
    dvf = dv.astype(np.float32) / scale if scale != 1.0 else dv.astype(np.float32)
    dflows = None
    if fl.readers is not None:
        dflows = [f if hasattr(f, "dask") else da.from_array(
            np.load(f, mmap_mode="r") if isinstance(f, (str, Path)) else (
                f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f),
            chunks=(1, 2, H, W), asarray=False) for f in (flows[0], flows[1])]
        dflows = [f[0] if f.ndim == 5 else f for f in dflows]
    bound = fl.bound[0]
    blocks = {}
    for t in plan.tiles:
        crop = plan.crop(t)
        vs = dvf[crop.t0:crop.t1, crop.y0:crop.y1, crop.x0:crop.x1]
        ff = bf = None
        if dflows is not None:
            idx = (slice(crop.t0, crop.t1), slice(None), slice(crop.y0, crop.y1), slice(crop.x0, crop.x1))
            ff, bf = dflows[0][idx], dflows[1][idx]
        task = dask.delayed(_dask_tile, pure=True)(vs, ff, bf, plan.kind, plan.method, plan.params, crop, t,
                                                   device, gray, fl.method, bound)
        idx = plan.out_index(t)
        shp = tuple(s.stop - s.start for s in idx) + tuple(plan.out_shape[3:])
        blocks[(t.t0, t.y0, t.x0)] = da.from_delayed(task, shape=shp, dtype=np.float32)
    ts = sorted({k[0] for k in blocks})
    ys = sorted({k[1] for k in blocks})
    xs = sorted({k[2] for k in blocks})
    # da.block joins along the last axes, as many as the nesting is deep
    leaf = (lambda b: [b]) if len(plan.out_shape) == 4 else (lambda b: b)
    return da.block([[[leaf(blocks[(a, b, c)]) for c in xs] for b in ys] for a in ts])
