"""What the plugin's search widgets compute, without Qt: search per region, neighbours of a pixel,
maps, flows.

Every function here takes numpy (or dask, or memory-mapped) videos in napari's layout
``(T, H, W[, C])`` and returns numpy arrays, so it can be used and tested without napari.
Long functions take ``progress(done, total)`` and ``should_stop()`` and raise
:class:`~napari_stnls._util.Cancelled` before returning anything when asked to stop
(see :mod:`napari_stnls._util`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..._util import Cancelled, Steps, resolve_device
from ...ops import Region, gather, search
from ...video import flow
from .regions import validate_regions

__all__ = [
    "Cancelled",
    "SearchParams",
    "RegionResult",
    "Neighbours",
    "as_float_video",
    "search_regions",
    "merge_results",
    "neighbours_at",
    "gather_patches",
    "mosaic",
    "MAP_STATS",
    "distance_map",
    "flow_vectors",
    "flow_methods",
    "compute_video_flows",
    "check_flows",
]

MAP_STATS = ("kth", "mean", "first")  # distance to the k-th / mean over K / to the best non-self


def as_float_video(data, t0: int = 0, t1: int | None = None) -> np.ndarray:
    """Frames ``t0..t1-1`` of a napari video as float32 (T', H, W, C) in [0, 1] (a new array).

    Integer data is divided by its type's maximum (255 for uint8), floats are kept as
    they are, (T, H, W) gains a channel axis. Only the frames asked for are read, so a
    lazy (dask) or memory-mapped video is never loaded whole. The input is never modified.
    """
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(f"video: expected an array (T, H, W) or (T, H, W, C), got shape {shape}")
    T = int(shape[0])
    t1 = T if t1 is None else t1
    if not 0 <= t0 < t1 <= T:
        raise ValueError(f"frames: expected 0 <= t0 < t1 <= {T}, got {t0}..{t1}")
    arr = np.asarray(data[t0:t1])
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=True)
    else:
        raise TypeError(f"video: unsupported pixel type {arr.dtype}")
    return arr[..., None] if arr.ndim == 3 else arr


def _int(v, name: str, lo: int, odd: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    if odd and v % 2 == 0:
        raise ValueError(f"{name}: expected an odd int, got {v}")
    return int(v)


@dataclass(frozen=True)
class SearchParams:
    """The parameters of :func:`napari_stnls.ops.search` that the plugin exposes.

    ``ps`` patch side (odd), ``ws`` window side (odd), ``wt`` temporal radius, ``k``
    neighbours, ``stride0`` query spacing, ``stride1`` window spacing (may be fractional),
    ``dist`` ``"l2"`` or ``"prod"``, ``exclude_self`` drops the query's own patch,
    ``device`` ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    ps: int = 7
    ws: int = 11
    wt: int = 2
    k: int = 8
    stride0: int = 2
    stride1: float = 1.0
    dist: str = "l2"
    exclude_self: bool = False
    device: str = "auto"

    def check(self, shape: Sequence[int]) -> None:
        """Raise ValueError/TypeError naming the parameter that does not fit a video of ``shape``.

        ``shape`` is napari's (T, H, W[, C]).
        """
        T, H, W = (int(s) for s in shape[:3])
        _int(self.ps, "ps", 1, odd=True)
        ws = _int(self.ws, "ws", 1, odd=True)
        wt = _int(self.wt, "wt", 0)
        k = _int(self.k, "k", 1)
        _int(self.stride0, "stride0", 1)
        if isinstance(self.stride1, bool) or not isinstance(self.stride1, numbers.Real):
            raise TypeError(f"stride1: expected a number, got {self.stride1!r}")
        if not (math.isfinite(self.stride1) and self.stride1 > 0):
            raise ValueError(f"stride1: expected a positive number, got {self.stride1}")
        if self.dist not in ("l2", "prod"):
            raise ValueError(f"dist: expected 'l2' or 'prod', got {self.dist!r}")
        if (ws - 1) * self.stride1 > min(H, W) - 1:
            raise ValueError(
                f"ws: a window of {ws} x {ws} positions {self.stride1:g} px apart does not fit in a "
                f"{H} x {W} frame; use a smaller ws or stride1"
            )
        nt = min(T, 2 * wt + 1)
        window = nt * ws * ws - (1 if self.exclude_self else 0)
        if k > window:
            raise ValueError(
                f"k: {k} neighbours asked for but the window holds only {window} candidates "
                f"({nt} frames x {ws} x {ws}{' - self' if self.exclude_self else ''}); "
                "lower k or raise ws/wt"
            )
        resolve_device(self.device)


@dataclass
class RegionResult:
    """The K nearest neighbours of every query of one region.

    Attributes
    ----------
    region : Region
        The region searched (frames t0..t1-1, rows y0..y1-1, columns x0..x1-1).
    stride0 : int
        Query spacing: query (i, j) of frame t sits at ``(t, y0 + i*stride0, x0 + j*stride0)``.
    dists : ndarray, float32, shape (T_r, nH, nW, K)
        Distances, best first.
    inds : ndarray, float32, shape (T_r, nH, nW, K, 3)
        Absolute positions (t, y, x) of the matches in the video.
    params : SearchParams
        The search's parameters.
    flow : str
        Which flow guided the search ("none" or the flow's name).
    """

    region: Region
    stride0: int
    dists: np.ndarray
    inds: np.ndarray
    params: SearchParams
    flow: str = "none"
    extra: dict = field(default_factory=dict)

    def contains(self, t: float, y: float, x: float) -> bool:
        """Whether pixel (t, y, x) (rounded) lies in the region."""
        r = self.region
        t, y, x = (int(round(float(v))) for v in (t, y, x))
        return r.t0 <= t < r.t1 and r.y0 <= y < r.y1 and r.x0 <= x < r.x1

    def query_index(self, t: float, y: float, x: float) -> tuple[int, int, int]:
        """Index (it, iy, ix) of the query nearest to pixel (t, y, x) of the region."""
        r = self.region
        nT, nH, nW = self.dists.shape[:3]
        it = int(np.clip(round(float(t)) - r.t0, 0, nT - 1))
        iy = int(np.clip(round((float(y) - r.y0) / self.stride0), 0, nH - 1))
        ix = int(np.clip(round((float(x) - r.x0) / self.stride0), 0, nW - 1))
        return it, iy, ix

    def query_position(self, it: int, iy: int, ix: int) -> tuple[int, int, int]:
        """(t, y, x) of query (it, iy, ix)."""
        r = self.region
        return r.t0 + it, r.y0 + iy * self.stride0, r.x0 + ix * self.stride0


def _bands(r: Region, stride0: int, band_queries: int) -> list[Region]:
    """One-frame bands of whole query rows of ``r``, about ``band_queries`` queries each."""
    nW = -(-(r.x1 - r.x0) // stride0)
    rows = stride0 * max(1, band_queries // max(1, nW))
    return [Region(t, t + 1, y, min(r.y1, y + rows), r.x0, r.x1)
            for t in range(r.t0, r.t1) for y in range(r.y0, r.y1, rows)]


def _frame_span(r: Region, T: int, wt: int) -> tuple[int, int]:
    """Frames [ta, tb) holding every search window of the queries of ``r`` (see search's window rule)."""
    nt = min(T, 2 * wt + 1)
    s0 = lambda t: min(max(t - wt, 0), T - nt)  # noqa: E731
    return s0(r.t0), s0(r.t1 - 1) + nt


def check_flows(flows, shape) -> tuple[np.ndarray, np.ndarray] | None:
    """``flows`` (None or a pair of (T, 2, H, W) or (1, T, 2, H, W) arrays or tensors) as a
    pair of float32 NumPy arrays (T, 2, H, W) of a video of napari ``shape`` (T, H, W[, C]),
    or None; ValueError/TypeError naming ``flows`` otherwise."""
    if flows is None:
        return None
    if not isinstance(flows, tuple | list) or len(flows) != 2:
        raise TypeError("flows: expected a pair (fflow, bflow) of arrays (T, 2, H, W)")
    T, H, W = (int(s) for s in shape[:3])
    out = []
    for f in flows:
        f = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
        if f.ndim == 5 and f.shape[0] == 1:
            f = f[0]
        if f.shape != (T, 2, H, W):
            raise ValueError(f"flows: expected arrays of shape {(T, 2, H, W)} (the video's), got {f.shape}")
        out.append(f.astype(np.float32, copy=False))
    return out[0], out[1]


def search_regions(
    video,
    regions: Sequence | None,
    params: SearchParams | None = None,
    *,
    flows=None,
    flow_name: str = "flow",
    band_queries: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[RegionResult]:
    """K-nearest-neighbour patch search of every region, in bands, with progress and cancel.

    Parameters
    ----------
    video : array, shape (T, H, W) or (T, H, W, C)
        napari layout; integer data is scaled to [0, 1]. Numpy, dask or memory-mapped:
        only the frames each region's windows need are read.
    regions : list of Region or 6-tuples, or None
        The regions whose pixels are queries (None: the whole video).
    params : SearchParams
        Patch, window and neighbour settings (checked against the video first).
    flows : (fflow, bflow), optional
        Each (T, 2, H, W) (or (1, T, 2, H, W)), channel 0 = dx, as for search.
    flow_name : str
        Recorded in the results (``"none"`` when ``flows`` is None).
    band_queries : int
        About this many queries are searched per step (one progress tick, one cancel check).
    progress, should_stop
        See :mod:`napari_stnls._util`.

    Returns
    -------
    list of RegionResult
        One per region, in order. Equal to one call of :func:`napari_stnls.ops.search` on
        the whole video with ``region=`` that region (the video is cut to the frames the
        windows reach, which does not change any window).

    Raises
    ------
    Cancelled
        When ``should_stop()`` returned True; nothing is returned.

    Examples
    --------
    >>> from napari_stnls.video.synthetic import sample_video
    >>> vid = sample_video(n_frames=3, size=(24, 32))
    >>> res = search_regions(vid.noisy, [(1, 2, 4, 12, 8, 16)],
    ...                      SearchParams(ps=3, ws=5, wt=1, k=4, stride0=2, device="cpu"))
    >>> res[0].dists.shape, res[0].inds.shape  # (T_r, nH, nW, K), (T_r, nH, nW, K, 3)
    ((1, 4, 4, 4), (1, 4, 4, 4, 3))
    """
    params = SearchParams() if params is None else params
    if not isinstance(params, SearchParams):
        raise TypeError(f"params: expected a SearchParams, got {type(params).__name__}")
    shape = getattr(video, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(f"video: expected an array (T, H, W) or (T, H, W, C), got shape {shape}")
    T, H, W = (int(s) for s in shape[:3])
    params.check(shape)
    regs = [Region(0, T, 0, H, 0, W)] if regions is None else validate_regions(regions, shape)
    if not regs:
        raise ValueError("regions: no region to search")
    fl = check_flows(flows, shape)
    _int(band_queries, "band_queries", 1)
    device = resolve_device(params.device)
    plans = [(r, _bands(r, params.stride0, band_queries)) for r in regs]
    steps = Steps(sum(len(b) for _, b in plans), progress, should_stop)
    results = []
    with torch.no_grad():
        for r, bands in plans:
            steps.check()
            ta, tb = _frame_span(r, T, params.wt)
            vid = torch.from_numpy(as_float_video(video, ta, tb)).permute(0, 3, 1, 2)[None].to(device)
            fw = None
            if fl is not None:
                fw = tuple(torch.from_numpy(np.ascontiguousarray(f[ta:tb]))[None].to(device) for f in fl)
            nH = -(-(r.y1 - r.y0) // params.stride0)
            nW = -(-(r.x1 - r.x0) // params.stride0)
            dists = np.empty((r.t1 - r.t0, nH, nW, params.k), np.float32)
            inds = np.empty((r.t1 - r.t0, nH, nW, params.k, 3), np.float32)
            for b in bands:
                steps.check()
                d, i = search(vid, vid, ps=params.ps, ws=params.ws, wt=params.wt, k=params.k, flows=fw,
                              dist=params.dist, stride0=params.stride0, stride1=float(params.stride1),
                              region=Region(b.t0 - ta, b.t1 - ta, b.y0, b.y1, b.x0, b.x1),
                              exclude_self=params.exclude_self)
                bh = -(-(b.y1 - b.y0) // params.stride0)
                iy = (b.y0 - r.y0) // params.stride0
                it = b.t0 - r.t0
                dists[it, iy:iy + bh] = d[0, 0].reshape(bh, nW, params.k).float().cpu().numpy()
                pos = i[0, 0].reshape(bh, nW, params.k, 3).float().cpu().numpy()
                pos[..., 0] += ta
                inds[it, iy:iy + bh] = pos
                steps.advance()
            results.append(RegionResult(r, params.stride0, dists, inds, params,
                                        "none" if fl is None else flow_name))
    return results


@dataclass
class Neighbours:
    """The K matches of one query.

    ``query`` (t, y, x) of the query on the search grid nearest to the clicked pixel,
    ``positions`` (K, 3) float (t, y, x), ``dists`` (K,), best first, and the result
    (region) they come from.
    """

    query: tuple[int, int, int]
    positions: np.ndarray
    dists: np.ndarray
    result: RegionResult


def merge_results(old: Sequence[RegionResult] | None, new: Sequence[RegionResult]) -> list[RegionResult]:
    """The results of a new search added to those of earlier ones, one per region.

    A region searched again has its old result replaced; the results of the other regions
    are kept. The new results come last: where regions overlap, the later result is the one
    :func:`neighbours_at` and :func:`distance_map` use.

    Examples
    --------
    >>> from napari_stnls.video.synthetic import sample_video
    >>> vid = sample_video(n_frames=3, size=(24, 32))
    >>> p = SearchParams(ps=3, ws=5, wt=1, k=4, stride0=2, device="cpu")
    >>> a, b = (1, 2, 4, 12, 8, 16), (0, 1, 0, 8, 0, 8)
    >>> first = search_regions(vid.noisy, [a, b], p)
    >>> again = search_regions(vid.noisy, [a], p)
    >>> merged = merge_results(first, again)
    >>> [tuple(r.region) for r in merged], merged[0] is first[1], merged[1] is again[0]
    ([(0, 1, 0, 8, 0, 8), (1, 2, 4, 12, 8, 16)], True, True)
    """
    replaced = {tuple(r.region) for r in new}
    return [r for r in (old or ()) if tuple(r.region) not in replaced] + list(new)


def neighbours_at(results: Sequence[RegionResult], t: float, y: float, x: float) -> Neighbours:
    """The matches of the query nearest to pixel (t, y, x), from the last region holding it
    (the one :func:`distance_map` shows where regions overlap).

    Raises ValueError when no searched region holds the pixel.

    Examples
    --------
    >>> from napari_stnls.video.synthetic import sample_video
    >>> vid = sample_video(n_frames=3, size=(24, 32))
    >>> res = search_regions(vid.noisy, [(1, 2, 4, 12, 8, 16)],
    ...                      SearchParams(ps=3, ws=5, wt=1, k=4, stride0=2, device="cpu"))
    >>> nb = neighbours_at(res, 1, 7, 11)
    >>> nb.query, nb.positions.shape, nb.positions[0].tolist()  # itself first (distance 0)
    ((1, 8, 12), (4, 3), [1.0, 8.0, 12.0])
    """
    for res in reversed(results):
        if res.contains(t, y, x):
            idx = res.query_index(t, y, x)
            return Neighbours(res.query_position(*idx), res.inds[idx].copy(), res.dists[idx].copy(), res)
    raise ValueError(f"position: pixel (t={t:g}, y={y:g}, x={x:g}) is in no searched region; "
                     "search a region that holds it first")


def gather_patches(video, positions, ps: int) -> np.ndarray:
    """The ``ps x ps`` patches of ``video`` centred at ``positions`` (with search's mirroring
    and bilinear reading).

    Parameters
    ----------
    video : array (T, H, W[, C])
    positions : array (K, 3)
        (t, y, x); y and x may be fractional, t whole.
    ps : int

    Returns
    -------
    ndarray float32, shape (K, ps, ps, C)
    """
    _int(ps, "ps", 1)
    pos = np.asarray(positions, dtype=np.float32)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
        raise ValueError(f"positions: expected (K, 3) positions (t, y, x), got shape {pos.shape}")
    T = int(video.shape[0])
    t = pos[:, 0].round().astype(int)
    if t.min() < 0 or t.max() >= T:
        raise ValueError(f"positions: frame outside the video (0..{T - 1})")
    ta, tb = int(t.min()), int(t.max()) + 1
    # only the pixels the patches reach are read: a crop around them, ps//2 + 2 wider on each
    # side (bilinear reading); a crop side that is not the frame's border is never reached, so
    # mirroring at the frame's borders is unchanged
    H, W = int(video.shape[1]), int(video.shape[2])
    m = ps // 2 + 2
    y0 = max(0, int(np.floor(pos[:, 1].min())) - m)
    y1 = min(H, int(np.ceil(pos[:, 1].max())) + m + 1)
    x0 = max(0, int(np.floor(pos[:, 2].min())) - m)
    x1 = min(W, int(np.ceil(pos[:, 2].max())) + m + 1)
    frames = video[ta:tb, y0:y1, x0:x1]
    vid = torch.from_numpy(as_float_video(frames)).permute(0, 3, 1, 2)[None]
    p = pos.copy()
    p[:, 0] -= ta
    p[:, 1] -= y0
    p[:, 2] -= x0
    patches = gather(vid, torch.from_numpy(p).view(1, 1, -1, 1, 3), ps=ps)  # (1, 1, K, 1, 1, C, ps, ps)
    return patches[0, 0, :, 0, 0].permute(0, 2, 3, 1).numpy().copy()


def mosaic(patches: np.ndarray, zoom: int = 8, gap: int = 2, columns: int | None = None) -> np.ndarray:
    """Patches side by side, each enlarged ``zoom`` times (nearest), as uint8 RGB.

    Parameters
    ----------
    patches : array (K, ps, ps[, C]) in [0, 1]
    zoom, gap : int
        Enlargement and the white gap between tiles, in pixels.
    columns : int, optional
        Tiles per row (default all in one row).

    Returns
    -------
    ndarray uint8, shape (rows*(ps*zoom+gap)+gap, columns*(ps*zoom+gap)+gap, 3)
    """
    p = np.asarray(patches, dtype=np.float32)
    if p.ndim == 3:
        p = p[..., None]
    if p.ndim != 4 or len(p) == 0:
        raise ValueError(f"patches: expected (K, ps, ps[, C]), got shape {np.shape(patches)}")
    if p.shape[-1] == 1:
        p = np.repeat(p, 3, axis=-1)
    p = p[..., :3]
    K, h, w, _ = p.shape
    zoom, gap = _int(zoom, "zoom", 1), _int(gap, "gap", 0)
    cols = K if columns is None else _int(columns, "columns", 1)
    rows = -(-K // cols)
    th, tw = h * zoom + gap, w * zoom + gap
    out = np.full((rows * th + gap, cols * tw + gap, 3), 255, np.uint8)
    tiles = np.clip(np.rint(p * 255), 0, 255).astype(np.uint8).repeat(zoom, 1).repeat(zoom, 2)
    for n in range(K):
        r, c = divmod(n, cols)
        out[gap + r * th: gap + r * th + h * zoom, gap + c * tw: gap + c * tw + w * zoom] = tiles[n]
    return out


def distance_map(results: Sequence[RegionResult], shape: Sequence[int], stat: str = "kth",
                 kth: int | None = None) -> np.ndarray:
    """A per-pixel map of the regions' search results, zero outside them.

    Each query's value fills the ``stride0 x stride0`` block of pixels it stands for; where
    regions overlap, the later result is shown.

    Parameters
    ----------
    results : list of RegionResult
    shape : (T, H, W[, C])
        The video's shape (napari layout).
    stat : str
        ``"kth"``: distance to the k-th neighbour (``kth``, 1-based, default the last):
        how rare a patch is; ``"mean"``: mean distance over the K; ``"first"``: distance
        to the best match other than the patch itself.
    kth : int, optional

    Returns
    -------
    ndarray float32, shape (T, H, W)
    """
    if stat not in MAP_STATS:
        raise ValueError(f"stat: expected one of {MAP_STATS}, got {stat!r}")
    T, H, W = (int(s) for s in shape[:3])
    out = np.zeros((T, H, W), np.float32)
    for res in results:
        K = res.dists.shape[-1]
        if stat == "kth":
            j = K if kth is None else _int(kth, "kth", 1)
            if j > K:
                raise ValueError(f"kth: {j} is more than the {K} neighbours searched")
            vals = res.dists[..., j - 1]
        elif stat == "mean":
            vals = res.dists.mean(-1)
        else:
            t, y, x = np.meshgrid(*(np.arange(n) for n in res.dists.shape[:3]), indexing="ij")
            q = np.stack([res.region.t0 + t, res.region.y0 + y * res.stride0,
                          res.region.x0 + x * res.stride0], -1)[..., None, :]
            is_self = (np.abs(res.inds - q) < 1e-4).all(-1)
            d = np.where(is_self, np.inf, res.dists)
            vals = d.min(-1) if res.params.dist == "l2" else np.where(is_self, -np.inf, res.dists).max(-1)
            vals = np.where(np.isfinite(vals), vals, 0)
        r, s = res.region, res.stride0
        block = vals.repeat(s, 1).repeat(s, 2)[:, : r.y1 - r.y0, : r.x1 - r.x0]
        out[r.t0:r.t1, r.y0:r.y1, r.x0:r.x1] = block
    return out


def flow_vectors(fflow, step: int = 8, scale: float = 1.0) -> np.ndarray:
    """Forward flow on a subsampled grid as napari Vectors data.

    Parameters
    ----------
    fflow : array, shape (T, 2, H, W) or (1, T, 2, H, W)
        Channel 0 = dx, 1 = dy.
    step : int
        Grid spacing in pixels.
    scale : float
        Length factor applied to the vectors.

    Returns
    -------
    ndarray float32, shape (N, 2, 3)
        ``[origin (t, y, x), direction (0, dy, dx)]`` per vector.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.zeros((2, 2, 16, 16), np.float32); f[:, 0] = 1.5
    >>> v = flow_vectors(f, step=8)
    >>> v.shape, v[0].tolist()
    ((8, 2, 3), [[0.0, 4.0, 4.0], [0.0, 0.0, 1.5]])
    """
    f = fflow.detach().cpu().numpy() if isinstance(fflow, torch.Tensor) else np.asarray(fflow)
    if f.ndim == 5 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 4 or f.shape[1] != 2:
        raise ValueError(f"fflow: expected (T, 2, H, W), got shape {f.shape}")
    step = _int(step, "step", 1)
    T, _, H, W = f.shape
    ys = np.arange(step // 2, H, step)
    xs = np.arange(step // 2, W, step)
    t, y, x = np.meshgrid(np.arange(T), ys, xs, indexing="ij")
    sub = f[:, :, ys][:, :, :, xs]  # (T, 2, nY, nX)
    origin = np.stack([t, y, x], -1).reshape(-1, 3)
    direction = np.stack([np.zeros_like(sub[:, 0]), sub[:, 1], sub[:, 0]], -1).reshape(-1, 3) * scale
    return np.stack([origin, direction], 1).astype(np.float32)


def flow_methods() -> tuple[str, ...]:
    """The optical-flow methods available here (see :func:`napari_stnls.video.flow.compute_flows`)."""
    return tuple(flow.METHODS)


def compute_video_flows(
    video,
    method: str = "tvl1",
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward flows of a napari video, each (T, 2, H, W) float32 numpy.

    Calls :func:`napari_stnls.video.flow.compute_flows`, passing ``should_stop`` to it when it
    takes one, else checking between frames through ``progress``.
    """
    methods = flow_methods()
    if method not in methods:
        raise ValueError(f"method: expected one of {methods}, got {method!r}")
    frames = as_float_video(video)
    if frames.shape[0] < 2:
        raise ValueError("video: optical flow needs at least 2 frames")
    kw = {}
    if "should_stop" in inspect.signature(flow.compute_flows).parameters:
        kw["should_stop"] = should_stop
        prog = progress
    else:  # older compute_flows: stop at the next progress tick
        def prog(done, total):
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                raise Cancelled("stopped by the caller")
    if should_stop is not None and should_stop():
        raise Cancelled("stopped by the caller")
    ff, bf = flow.compute_flows(frames[..., 0] if frames.shape[-1] == 1 else frames, method,
                                progress=prog, **kw)
    return ff[0].numpy(), bf[0].numpy()
