"""The same computation as :func:`~napari_stnls.stream.process`, as a lazy dask array."""

from __future__ import annotations

import numpy as np
import torch

from .._util import resolve_device
from ..denoise import range_frames, range_of_frames
from . import methods
from .process import make_plan
from .sources import FlowCrops, VideoCrops

__all__ = ["denoise_dask"]


def _dask_tile(v, ff, bf, kind, method, params, crop, tile, device, gray, flow_method, bound):
    """One block of :func:`denoise_dask` (runs on a worker)."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 3:
        v = v[..., None]
    if flow_method is not None:
        from ..video.flow import compute_flows

        f = compute_flows(v[..., 0] if v.shape[-1] == 1 else v, flow_method)
        fl = tuple(x.clamp(-bound, bound) for x in f)
    elif ff is not None:
        fl = tuple(torch.from_numpy(np.asarray(f, np.float32))[None] for f in (ff, bf))
    else:
        fl = None
    out = methods.compute_tile(kind, method, params, crop, tile, v, fl, resolve_device(device))
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
        now (one pass); without ``data_range``, the video's range is computed now from up
        to 16 of its frames.
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

    # the synchronous scheduler as a function: named ("synchronous"), dask imports the whole
    # of dask.distributed (~200 modules, ~0.5 s) to look for a client first
    from dask.local import get_sync

    vid = VideoCrops(video) if not hasattr(video, "dask") else None
    if vid is not None:
        if vid.decoded:
            vid.close()
            raise ValueError("video: video files are not supported here; decode to .npy or .zarr first")
        src = vid.reader.source()
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

    fl = FlowCrops(flows, (T, H, W), max_flow)
    dvf = dv.astype(np.float32) / scale if scale != 1.0 else dv.astype(np.float32)
    if isinstance(method, str) and params.get("data_range") is None:
        # once, on the whole video (the frames it needs are computed now), for every tile
        frames = dask.compute(*[dvf[t] for t in range_frames(T)], scheduler=get_sync)
        params = {**params, "data_range": range_of_frames(f if f.ndim == 3 else f[..., None] for f in frames)}
    plan = make_plan((T, H, W, 1 if gray else dv.shape[3]), tuple(dv.shape), method, params, tile, fl)
    dflows = None
    if fl.readers is not None:  # each (T, 2, H, W): dask as given, else wrapped
        dflows = [src if hasattr(src, "dask") else da.from_array(src, chunks=(1, 2, H, W), asarray=False)
                  for src in (rd.source() for rd in fl.readers)]
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
