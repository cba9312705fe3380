"""The driver: a video processed tile by tile into an output store, resumable (:func:`process`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._util import Steps, resolve_device
from ..ops import Region
from . import methods
from .sources import FlowCrops, VideoCrops
from .stores import TileStore
from .tiling import HaloSpec, plan_tiles, tile_crop

__all__ = ["process", "Plan", "make_plan"]


def _tile_arg(tile, shape) -> tuple[int, int, int]:
    if tile is None:
        return shape
    if not isinstance(tile, (tuple, list)) or len(tile) != 3 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in tile):
        raise ValueError(f"tile: expected three positive ints (frames, rows, columns), got {tile!r}")
    return tuple(min(int(v), n) for v, n in zip(tile, shape, strict=True))


def _check_window(spec: HaloSpec, shape) -> None:
    T, H, W = shape
    if spec.ws > min(H, W):
        raise ValueError(f"ws: the search window ({spec.ws}) must fit in the frame ({H}x{W})")


@dataclass
class Plan:
    """A run's method, halo, tiles and output shape, the same for :func:`process` and the dask graph."""

    kind: str
    method: object
    params: dict
    spec: HaloSpec
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

    def fingerprint(self, video: VideoCrops, flows: FlowCrops, out_dtype) -> dict:
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


def make_plan(shape: tuple[int, int, int, int], stored_shape: tuple[int, ...], method, params, tile,
              flows: FlowCrops) -> Plan:
    """The :class:`Plan` of ``method`` on a video of ``shape`` (T, H, W, C), stored as
    ``stored_shape`` ((T, H, W) or (T, H, W, C): the denoisers' output shape), in tiles of
    ``tile``; raises on bad parameters before any work."""
    T, H, W, C = shape
    kind, spec, p = methods.resolve_method(method, params, C, T)
    _check_window(spec, (T, H, W))
    tile = _tile_arg(tile, (T, H, W))
    if kind == "fn" and (tile[1] % spec.stride0 and tile[1] != H or tile[2] % spec.stride0 and tile[2] != W):
        raise ValueError(f"tile: rows and columns must be multiples of stride0={spec.stride0}, got {tile}")
    tiles = plan_tiles((T, H, W), tile)
    if kind == "fn":
        s = spec.stride0
        out_shape = (T, -(-H // s), -(-W // s), method.channels)
    else:
        out_shape = tuple(stored_shape)
    return Plan(kind, method, p, spec, (T, H, W), tile, tiles, out_shape, flows.chain(T, spec.wt))


def _run_tile(plan: Plan, video: VideoCrops, flows: FlowCrops, tile: Region, device,
              should_stop) -> np.ndarray:
    crop = plan.crop(tile)
    v = video.read(crop)
    fl = flows.read(crop, v)
    out = methods.compute_tile(plan.kind, plan.method, plan.params, crop, tile, v, fl, device, should_stop)
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
        tile. A path is written as ``OUT.partial`` and renamed to ``OUT`` when its last tile
        is written, so an interrupted run never leaves an incomplete ``OUT``. An existing
        ``OUT`` or ``OUT.partial`` is resumed when its record (``OUT.tiles.json``, or the zarr
        array's ``napari_stnls_tiles`` attribute) matches this call; otherwise it is an
        error unless ``overwrite=True``.
    method : {"nl_bayes", "nl_means"} (or "nlb", "nlm") or SearchFunction
        ``params`` are the denoiser's keyword arguments (``sigma`` required, on the [0, 1]
        scale of the video divided by its type's maximum; ``ps, ws, wt, k`` and ``h`` or
        ``stride0``; ``data_range``, on that scale, estimated once on the whole video when
        not given, as the in-memory call does); a :class:`SearchFunction` carries its own.
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
    dev = resolve_device(device)
    if isinstance(video, (str, Path)) and isinstance(out, (str, Path)) and Path(out).exists() \
            and Path(video).exists() and os.path.samefile(video, out):
        raise ValueError("out: is the input video; refusing to write over it")
    vid = VideoCrops(video, cache_dir)
    try:
        T, H, W, C = vid.shape
        fl = FlowCrops(flows, (T, H, W), max_flow)
        if isinstance(method, str) and params.get("data_range") is None:
            params = {**params, "data_range": vid.signal_range()}  # once, for every tile
        plan = make_plan(vid.shape, vid.reader.shape, method, params, tile, fl)
        out_dtype = np.dtype(dtype if dtype is not None else np.float32)
        s = plan.spec.stride0 if plan.kind == "fn" else 1
        chunks = (plan.tile[0], -(-plan.tile[1] // s), -(-plan.tile[2] // s)) + tuple(plan.out_shape[3:])
        fingerprint = plan.fingerprint(vid, fl, out_dtype)
        store = TileStore(out, plan.out_shape, out_dtype, chunks, fingerprint, overwrite)
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
        store.finish()
    finally:
        vid.close()
    return store.zarr if store.zarr is not None else store.path
