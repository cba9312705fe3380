"""What runs on a tile's crop: the denoisers by name, or a user's :class:`SearchFunction`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .._util import Cancelled
from ..denoise import nl_bayes, nl_bayes_params, nl_means, nl_means_params, resolve_range
from ..ops import Region, gather, search
from .tiling import HaloSpec

__all__ = ["SearchFunction", "METHOD_NAMES", "NLB_KEYS", "resolve_method", "compute_tile"]


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


METHOD_NAMES = {"nlm": "nlm", "nl_means": "nlm", "nlb": "nlb", "nl_bayes": "nlb"}
NLM_DEFAULTS = dict(ps=None, ws=9, wt=2, k=None, h=0.5)  # ps, k: nl_means_params
NLB_KEYS = ("ps", "ps2", "pt", "ws", "wt", "k", "k2", "stride0", "thresh", "thresh2", "opponent",
            "data_range")


def resolve_method(method, params: dict, channels: int, frames: int):
    """(kind, spec, params) of a method name or a SearchFunction.

    For NL-Bayes, ``params`` keeps only what was given (``nl_bayes`` picks the rest for
    ``sigma`` the same way on every crop), and the spec holds the resolved values.
    ``data_range`` (``(lo, hi)``, in the units of ``sigma``) must be resolved on the whole
    video by the caller: the default parameters follow ``sigma / (hi - lo)``, and each crop
    is mapped with the same ``(lo, hi)``.
    """
    if isinstance(method, SearchFunction):
        if params:
            raise TypeError(f"unexpected keyword arguments with a SearchFunction: {sorted(params)}")
        m = method
        return "fn", HaloSpec("fn", m.ps, m.ws, m.wt, m.stride0, m.dilation), {}
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ValueError(f"method: expected one of {sorted(METHOD_NAMES)} or a SearchFunction, "
                         f"got {method!r}")
    kind = METHOD_NAMES[method]
    if "sigma" not in params:
        raise TypeError(f"{method}: missing the keyword argument sigma (noise level on the [0, 1] scale)")
    keys = set(NLM_DEFAULTS) | {"data_range"} if kind == "nlm" else set(NLB_KEYS)
    unknown = set(params) - keys - {"sigma"}
    if unknown:
        raise TypeError(f"{method}: unexpected keyword arguments {sorted(unknown)}")
    sigma = params["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        raise ValueError(f"sigma: expected a positive, finite number on the [0, 1] scale, got {sigma!r}")
    if params.get("data_range") is None:
        raise TypeError(f"{method}: data_range (lo, hi) must be resolved on the whole video")
    lo, hi = resolve_range(params["data_range"])
    params = {**params, "data_range": [lo, hi]}  # a list: the same after a JSON round trip (resuming)
    rel = sigma / (hi - lo)  # the noise relative to the signal's range: what the tables follow
    ints = ("ps", "ws", "wt", "k") if kind == "nlm" else ("ps", "ps2", "pt", "ws", "wt", "k", "k2", "stride0")
    for name in ints:
        v = params.get(name)
        low = 0 if name == "wt" and kind == "nlm" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    if kind == "nlm":
        p = {**NLM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
        # resolved once on the whole video, as nl_means does, so every tile uses the same
        tuned = nl_means_params(rel, frames, p["ws"], p["wt"])
        p = {**tuned, **{k: v for k, v in p.items() if v is not None}}
        spec = HaloSpec(kind, p["ps"], p["ws"], p["wt"])
    else:
        p = dict(params)
        q = nl_bayes_params(rel, channels) | {k: v for k, v in params.items() if v is not None}
        spec = HaloSpec(kind, q["ps"], q["ws"], q["wt"], q["stride0"], ps2=q["ps2"], pt=q["pt"])
    if spec.ws % 2 == 0:
        raise ValueError(f"ws: expected an odd window side, got {spec.ws}")
    return kind, spec, p


def compute_tile(kind, method, p, crop: Region, tile: Region, v: np.ndarray, flows, device,
                 should_stop=None) -> np.ndarray:
    """Output of ``tile`` (t, h, w, C) from the video crop ``v`` (t, h, w, C) and its flows.

    ``kind``, ``method`` and ``p`` come from :func:`resolve_method`. The drivers call it as
    ``methods.compute_tile``, so that one replacement (a test's counter) sees every tile.
    """
    local = Region(tile.t0 - crop.t0, tile.t1 - crop.t0, tile.y0 - crop.y0, tile.y1 - crop.y0,
                   tile.x0 - crop.x0, tile.x1 - crop.x0)
    sl = (slice(local.t0, local.t1), slice(local.y0, local.y1), slice(local.x0, local.x1))
    if kind == "nlm":
        kw = {k: p[k] for k in ("ps", "ws", "wt", "k", "h", "data_range")}
        out = nl_means(v, p["sigma"], flows=flows, region=local, device=device, should_stop=should_stop, **kw)
        return out[sl]
    if kind == "nlb":
        kw = {k: p[k] for k in NLB_KEYS if k in p}
        # no skipping of references: which ones nl_bayes skips depends on the frames before,
        # which a crop does not hold, so every tile equals the whole video's result; nor the
        # patches of fast motion (the forward-backward check reads the flows beyond the halo)
        out = nl_bayes(v, p["sigma"], flows=flows, device=device, should_stop=should_stop, skip=0, skip2=0,
                       fast_motion=float("inf"), **kw)
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
