"""Video denoisers built on the operations (torch only, no Qt).

* :func:`nl_means`: space-time NL-means along the flow. Every query patch is replaced by
  the weighted mean of its K nearest space-time patches (search -> weights -> aggregate, a
  gather then weighted scatter that never stores the patches: fused kernels on the CPU and
  on CUDA), and overlapping patches are averaged.
* :func:`nl_bayes`: two-step video non-local Bayes along the flow.
* :func:`skimage_nl_means`: scikit-image's NL-means per frame or on the space-time
  volume, behind the same interface, for comparison.

:data:`METHODS` maps the short names the command line and the plugin use to them. Every
denoiser takes ``progress(done, total)`` and ``should_stop()`` (see
:mod:`napari_stnls._progress`): when ``should_stop()`` returns True it raises
:class:`~napari_stnls._progress.Cancelled` and returns nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._progress import Steps
from .ops import Region, aggregate, as_region, gather, scatter, search

__all__ = ["nl_means", "nl_bayes", "nl_bayes_params", "skimage_nl_means", "METHODS"]


def _to_video(video, name: str = "video") -> tuple[torch.Tensor, Callable]:
    """(B, T, C, H, W) float tensor and a function that converts a result back."""
    if isinstance(video, torch.Tensor):
        if video.ndim != 5:
            raise ValueError(f"{name}: expected a tensor of shape (B, T, C, H, W), got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor (values in [0, 1]), got {video.dtype}")
        return video, lambda x: x.to(video.dtype)
    if isinstance(video, np.ndarray):
        if video.ndim not in (3, 4):
            raise ValueError(f"{name}: expected an array (T, H, W) or (T, H, W, C), got shape {video.shape}")
        if not np.issubdtype(video.dtype, np.floating):
            raise TypeError(f"{name}: expected floating-point values in [0, 1], got {video.dtype}")
        gray = video.ndim == 3
        arr = video[..., None] if gray else video
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2)[None]

        def back(x: torch.Tensor) -> np.ndarray:
            out = x[0].permute(0, 2, 3, 1).cpu().numpy().astype(video.dtype, copy=False)
            return out[..., 0] if gray else out

        return t, back
    raise TypeError(f"{name}: expected a torch.Tensor (B, T, C, H, W) or a numpy array (T, H, W[, C]), "
                    f"got {type(video).__name__}")


def _dilate(r: Region, pad: int, shape) -> Region:
    _, T, _, H, W = shape
    return Region(r.t0, r.t1, max(0, r.y0 - pad), min(H, r.y1 + pad), max(0, r.x0 - pad), min(W, r.x1 + pad))


def _bands(r: Region, pad: int, rows: int, shape) -> list[Region]:
    """One-frame bands of at most ``rows`` rows covering ``r`` dilated by ``pad`` in y and x."""
    q = _dilate(r, pad, shape)
    return [Region(t, t + 1, y, min(q.y1, y + rows), q.x0, q.x1)
            for t in range(q.t0, q.t1) for y in range(q.y0, q.y1, rows)]


def _prepare(video, sigma, device, region, flows, band_rows):
    """Checks and conversions shared by the denoisers.

    Returns the input as a (B, T, C, H, W) tensor, the function converting a result back to
    the input's type, the float32 copy on ``device``, the flows there, and the regions.
    """
    x, back = _to_video(video)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number on the video's scale, got {sigma!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but is not available")
    if band_rows is not None and (not isinstance(band_rows, int) or band_rows <= 0):
        raise ValueError(f"band_rows: expected a positive int, got {band_rows!r}")
    regions = region if isinstance(region, list) else [region]
    regions = [as_region(r, x.shape) for r in regions]
    xd = x.to(device=device, dtype=torch.float32)
    # channels-last in memory, as the compiled kernels read it: converted once here rather
    # than copied by every band's search and aggregate (a no-op for napari layers and numpy)
    xd = xd.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if flows is not None:
        flows = tuple(f.to(device=device, dtype=torch.float32) for f in flows)
    return x, back, xd, flows, regions


def nl_means_params(sigma: float, frames: int, ws: int = 11, wt: int = 2) -> dict:
    """The patch side ``ps`` and neighbour count ``k`` :func:`nl_means` uses for ``sigma``.

    Interpolated in :data:`NLM_TABLE` (``ps`` made odd), ``k`` capped at the candidates of
    a window of ``ws`` x ``ws`` pixels in ``min(frames, 2*wt+1)`` frames. Callers that split
    a video (tiles, lazy frames) resolve them once on the whole video's ``frames``.

    Examples
    --------
    >>> nl_means_params(10 / 255, frames=8), nl_means_params(40 / 255, frames=8)
    ({'ps': 7, 'k': 16}, {'ps': 7, 'k': 48})
    """
    s255 = min(max(float(sigma) * 255, NLB_SIGMAS[0]), NLB_SIGMAS[-1])
    ps = int(round(float(np.interp(s255, NLB_SIGMAS, NLM_TABLE["ps"]))))
    ps += 1 - ps % 2
    k = int(round(float(np.interp(s255, NLB_SIGMAS, NLM_TABLE["k"]))))
    if isinstance(ws, int) and isinstance(wt, int):  # at most the window's candidates
        k = max(1, min(k, min(int(frames), 2 * wt + 1) * ws * ws))
    return {"ps": ps, "k": k}


def nl_means(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ws: int = 11,
    wt: int = 2,
    k: int | None = None,
    h: float = 0.5,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Space-time NL-means along the optical flow.

    Parameters
    ----------
    video : Tensor (B, T, C, H, W) or ndarray (T, H, W[, C])
        Noisy video with values in [0, 1]. It is never modified.
    sigma : float
        Noise standard deviation on the same scale (sigma=20 on the 0-255 scale is 20/255).
    ps, ws, wt, k
        Patch side, search-window side, temporal radius and number of neighbours
        (see :func:`napari_stnls.ops.search`). ``ps`` and ``k`` default to the values
        tuned for ``sigma`` (:data:`NLM_TABLE`: ``ps`` 7; ``k`` 16 at sigma 10/255, 24 at
        20-30/255 and 48 from 40/255 on, interpolated between).
    h : float
        Filtering strength: a neighbour at normalised distance ``d`` (squared patch
        difference divided by ``ps*ps*C*sigma^2``) gets weight ``exp(-max(d - 2, 0) / h^2)``;
        two noisy copies of the same patch have ``d`` close to 2.
    flows : (Tensor, Tensor), optional
        ``(fflow, bflow)``, each (B, T, 2, H, W), as for search.
    region : Region or 6-tuple or list of them, optional
        Restore only these regions; pixels outside every region are returned unchanged.
        A pixel's value depends only on the patches that cover it, so the result inside a
        region is the same as when the whole video is processed.
    device : str or torch.device, optional
        Where to compute; default: CUDA when available, else the CPU.
    band_rows : int, optional
        Rows of queries processed at once (bounds memory); default from a 256 MiB budget.
    progress : callable, optional
        Called as ``progress(done, total)`` after each band of queries.
    should_stop : callable, optional
        Polled before each band; when it returns True, :class:`~napari_stnls._progress.Cancelled`
        is raised and no result is returned.

    Returns
    -------
    Same type and layout as ``video``.

    Raises
    ------
    Cancelled
        When ``should_stop()`` returned True.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = nl_means(noisy, 0.1, ws=7, k=8, device="cpu")
    >>> out.shape, bool(np.abs(out - clean).mean() < np.abs(noisy - clean).mean())
    ((3, 24, 32), True)
    """
    x, back, xd, flows, regions = _prepare(video, sigma, device, region, flows, band_rows)
    tuned = nl_means_params(sigma, x.shape[1], ws, wt)
    ps = tuned["ps"] if ps is None else ps
    k = tuned["k"] if k is None else k
    if not isinstance(h, (int, float)) or not h > 0:
        raise ValueError(f"h: expected a positive number, got {h!r}")
    B, T, C, H, W = x.shape
    per_row = W * k * ps * ps * C * 4 * 4  # gathered patches and their weighted copy, float32
    rows = band_rows or max(1, (256 * 2**20) // max(1, per_row))
    pad = ps // 2
    # Each region is aggregated on its own from every query whose patch covers one of its
    # pixels (the region dilated by the patch radius), so overlapping regions never count a
    # query twice and each pixel gets exactly what processing the whole video gives it.
    plans = [(r, _bands(r, pad, rows, x.shape)) for r in regions]
    steps = Steps(sum(len(b) for _, b in plans), progress, should_stop)
    norm = ps * ps * C * sigma**2
    out = xd.clone()
    with torch.no_grad():
        for r, bands in plans:
            agg = torch.zeros_like(xd)
            cnt = torch.zeros(B, T, 1, H, W, device=xd.device)
            for band in bands:
                steps.check()
                d, i = search(xd, xd, ps=ps, ws=ws, wt=wt, k=k, flows=flows, region=band)
                w = torch.exp(-torch.clamp(d / norm - 2.0, min=0.0) / h**2)
                # each neighbour patch is written back at its query's position
                aggregate(xd, i, "queries", region=band, out=(agg, cnt), weights=w, ps=ps)
                steps.advance()
            sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
            out[sl] = agg[sl] / cnt[sl].clamp_min(1e-12)
    return back(out.to(x.device))


# Orthonormal opponent colour transform: luminance carries most of the signal, and the
# noise stays white with the same sigma in every channel.
_OPP = torch.tensor([[1 / 3**0.5, 1 / 3**0.5, 1 / 3**0.5],
                     [1 / 2**0.5, 0.0, -1 / 2**0.5],
                     [1 / 6**0.5, -2 / 6**0.5, 1 / 6**0.5]])


def _to_opp(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """(B, T, 3, H, W) RGB <-> orthonormal opponent space (Y, U, V)."""
    m = _OPP.to(x)
    return torch.einsum("dc,btchw->btdhw", m.T if inverse else m, x)


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``torch.linalg.eigh`` of small matrices, fast on the CPU.

    LAPACK's own threads slow small eigen-problems down (8x when the cores are busy), so
    on the CPU each chunk of the batch is solved single-threaded, in parallel chunks.
    On CUDA, PyTorch solves a batch of matrices larger than 32 x 32 one matrix at a time
    (seen with torch 2.11+cu130 on an H100: ``nl_bayes`` on 10 CIF frames took minutes),
    so such batches are solved on the CPU and the results copied back.
    """
    if cov.device.type == "cuda" and cov.shape[-1] > 32 and cov.shape[0] > 1:
        vals, vecs = _eigh(cov.cpu())
        return vals.to(cov.device), vecs.to(cov.device)
    n = torch.get_num_threads()
    if cov.device.type != "cpu" or cov.shape[0] < 2:
        return torch.linalg.eigh(cov)

    def one(c):
        torch.set_num_threads(1)  # per calling thread for OpenMP/BLAS
        return torch.linalg.eigh(c)

    try:
        if n == 1:
            return one(cov)
        with ThreadPoolExecutor(n) as ex:
            parts = list(ex.map(one, cov.chunk(n)))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    finally:
        torch.set_num_threads(n)


def _bayes_pass(noisy, guide, sigma, *, ps, pt, ws, wt, k, thresh, couple, luma_search, flows, stride0,
                regions, rows, step, steps):
    """One step of video non-local Bayes: group, estimate, aggregate every group patch.

    Groups are searched on ``guide`` (its first channel only with ``luma_search``); the
    Bayes estimate of each group's noisy patches uses the group's own covariance (step 1)
    or the guide's (step 2), with each colour channel on its own unless ``couple``.
    Eigen-directions whose signal variance is at most ``thresh * sigma^2`` are set to the
    group mean (VNLB's variance threshold).
    """
    B, T, C, H, W = noisy.shape
    pad = ps // 2
    out = noisy.clone() if step == 1 else guide.clone()
    var = sigma**2
    key = guide[:, :, :1] if luma_search else guide
    G = 1 if couple else C  # independent groups per reference patch
    for r in regions:
        agg = torch.zeros_like(noisy)
        cnt = torch.zeros(B, T, 1, H, W, device=noisy.device)
        for band in _bands(r, pad + ws, rows, noisy.shape):  # groups of nearby references reach r
            steps.check()
            # whole-pixel positions: bilinear reading would lower the patches' noise
            # variance below sigma^2, which the Wiener filter assumes
            _, i = search(key, key, ps=ps, pt=pt, ws=ws, wt=wt, k=k, flows=flows, region=band,
                          stride0=stride0, itype="int")

            def groups(v, i=i):  # (B, 1, Q, K, pt, C, ps, ps) -> (B, Q, G, K, D)
                p = gather(v, i, ps=ps, pt=pt)
                p = p.permute(0, 1, 2, 5, 3, 4, 6, 7) if not couple else p.unsqueeze(3)
                return p.reshape(B, p.shape[2], G, k, -1)

            yn = groups(noisy)
            mn = yn.mean(3, keepdim=True)
            yc = yn - mn
            if step == 1:
                cov = yc.transpose(-1, -2) @ yc / (k - 1)
                ev, U = _eigh(cov.flatten(0, 2))
                ev, U = ev.view(*cov.shape[:-1]), U.view(cov.shape)
                ev = ev - var
            else:
                yb = groups(guide)
                yb = yb - yb.mean(3, keepdim=True)
                cov = yb.transpose(-1, -2) @ yb / (k - 1)
                ev, U = _eigh(cov.flatten(0, 2))
                ev, U = ev.view(*cov.shape[:-1]), U.view(cov.shape)
            gain = torch.where(ev > thresh * var, ev / (ev + var).clamp_min(1e-12), torch.zeros_like(ev))
            # x = m + U diag(gain) U^T (y - m), for every patch of every group
            est = mn + ((yc @ U) * gain.unsqueeze(3)) @ U.transpose(-1, -2)
            Q = est.shape[1]
            if couple:
                est = est.reshape(B, 1, Q, k, pt, C, ps, ps)
            else:
                est = est.reshape(B, 1, Q, C, k, pt, ps, ps).permute(0, 1, 2, 4, 5, 3, 6, 7)
            scatter(est, i, out=(agg, cnt), ps=ps, pt=pt)
            steps.advance()
        sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        covered = cnt[sl] > 0
        out[sl] = torch.where(covered, agg[sl] / cnt[sl].clamp_min(1e-12), out[sl])
    return out


# Default parameters of nl_bayes per noise level (sigma on the 0-255 scale), tuned on
# generated videos (benchmarks/tune_nlb.py), never on the benchmark clips.
NLB_SIGMAS = (10.0, 20.0, 30.0, 40.0, 50.0)
NLB_TABLE: dict[str, tuple[float, ...]] = {
    "ps": (5, 5, 5, 5, 5),
    "ps2": (5, 5, 5, 5, 5),
    "pt": (2, 2, 2, 2, 2),
    "ws": (15, 15, 15, 15, 15),
    "wt": (2, 2, 2, 2, 2),
    "k": (60, 60, 60, 60, 60),
    "k2": (160, 160, 160, 160, 160),
    "stride0": (2, 2, 2, 2, 2),
    "thresh": (1.0, 1.0, 1.85, 2.7, 2.7),
    "thresh2": (1.2, 1.2, 0.85, 0.5, 0.5),
}
# nl_means' defaults per noise level (NLB_SIGMAS), tuned the same way (--method nlm, four
# scenes including a smooth, fast-moving one): 7x7 patches at every sigma, and more
# neighbours from sigma 40 on.
NLM_TABLE: dict[str, tuple[float, ...]] = {
    "ps": (7, 7, 7, 7, 7),
    "k": (16, 24, 24, 48, 48),
}


def nl_bayes_params(sigma: float, channels: int = 3) -> dict:
    """The default parameters of :func:`nl_bayes` for noise ``sigma`` (on the [0, 1] scale).

    Interpolated linearly (in sigma*255) between the rows of :data:`NLB_TABLE`, tuned on
    generated videos (see ``benchmarks/tune_nlb.py``); clamped outside 10..50.

    Examples
    --------
    >>> p = nl_bayes_params(20 / 255)
    >>> sorted(p)
    ['k', 'k2', 'ps', 'ps2', 'pt', 'stride0', 'thresh', 'thresh2', 'ws', 'wt']
    """
    s = min(max(float(sigma) * 255, NLB_SIGMAS[0]), NLB_SIGMAS[-1])
    out = {}
    for name, values in NLB_TABLE.items():
        v = float(np.interp(s, NLB_SIGMAS, values))
        out[name] = v if name.startswith("thresh") else int(round(v))
    for name in ("ps", "ps2", "ws"):  # odd sides
        out[name] += 1 - out[name] % 2
    d = out["pt"] * out["ps"] ** 2 * (1 if channels == 3 else channels)
    out["k"] = max(out["k"], d + 1)
    out["k2"] = max(out["k2"], out["pt"] * out["ps2"] ** 2 * channels + 1)
    return out


def nl_bayes(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ps2: int | None = None,
    pt: int | None = None,
    ws: int | None = None,
    wt: int | None = None,
    k: int | None = None,
    k2: int | None = None,
    stride0: int | None = None,
    thresh: float | None = None,
    thresh2: float | None = None,
    opponent: bool = True,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Two-step video non-local Bayes (after Arias & Morel's VNLB), along the flow.

    Colour videos are first taken to an orthonormal opponent space (Y, U, V), where the
    noise keeps its sigma and Y carries most of the signal. Step 1 groups the ``k`` most
    similar space-time patches (``ps x ps`` pixels over ``pt`` frames) of every reference
    patch on a grid of spacing ``stride0``, matched on Y, and filters each channel of the
    group on its own: with the eigen-decomposition of the group's covariance,
    ``x = m + U diag(g) U^T (y - m)`` where ``g = l / (l + sigma^2)`` for the signal
    variances ``l = lambda - sigma^2`` above ``thresh * sigma^2`` and 0 below. Every
    filtered patch is aggregated (averaged where patches overlap). Step 2 searches again on
    that basic estimate (all channels), takes its covariance as the oracle
    (``l = lambda_basic``, threshold ``thresh2``) and filters all channels jointly with
    ``k2`` patches of side ``ps2``.

    Parameters
    ----------
    video, sigma, flows, region, device, band_rows, progress, should_stop
        As for :func:`nl_means`.
    ps, ps2, pt, ws, wt, k, k2, stride0, thresh, thresh2 : optional
        Patch side in steps 1 and 2, frames per patch, search window side, temporal
        radius, group sizes in steps 1 and 2, spacing of the reference patches, variance
        thresholds in steps 1 and 2. None takes the value tuned for ``sigma``
        (:func:`nl_bayes_params`).
    opponent : bool
        Work in the opponent colour space (3-channel videos only).

    Returns
    -------
    Same type and layout as ``video``. Regions: each one is restored on its own (step 1 on
    the region dilated by the reach of step 2's search, step 2 on the region), so its result
    is the same whether it is given alone or with others (where regions overlap, the last
    one listed gives the value); pixels outside every region are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = nl_bayes(noisy, 0.1, ws=7, device="cpu")
    >>> bool(np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean())
    True
    """
    x, back, xd, flows, regions = _prepare(video, sigma, device, region, flows, band_rows)
    B, T, C, H, W = x.shape
    p = nl_bayes_params(sigma, C)
    given = dict(ps=ps, ps2=ps2, pt=pt, ws=ws, wt=wt, k=k, k2=k2, stride0=stride0)
    for name, v in given.items():
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
            p[name] = v
    for name, v in dict(thresh=thresh, thresh2=thresh2).items():
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
            p[name] = float(v)
    n_cand = min(T, 2 * p["wt"] + 1) * p["ws"] ** 2  # the most neighbours a window holds
    p["k"], p["k2"] = min(p["k"], n_cand), min(p["k2"], n_cand)
    opp = bool(opponent) and C == 3
    if opp:
        xd = _to_opp(xd)
    cfg1 = dict(ps=p["ps"], k=p["k"], thresh=p["thresh"], couple=not opp, luma_search=opp)
    cfg2 = dict(ps=p["ps2"], k=p["k2"], thresh=p["thresh2"], couple=True, luma_search=False)
    ws, wt, s0, pt = p["ws"], p["wt"], p["stride0"], p["pt"]
    # step 2 reads the basic estimate around the region: up to ws//2 + ps2 pixels (plus the
    # flow) away in space and wt frames in time
    reach = ws // 2 + p["ps2"]
    regions1 = [Region(max(0, r.t0 - wt), min(T, r.t1 + wt), max(0, r.y0 - reach), min(H, r.y1 + reach),
                       max(0, r.x0 - reach), min(W, r.x1 + reach)) for r in regions]

    def plan(cfg, regs):
        D = pt * cfg["ps"] ** 2 * (C if cfg["couple"] else 1)
        G = 1 if cfg["couple"] else C
        per_query = G * (cfg["k"] * D * 4 * 6 + D * D * 4 * 4)
        rows = band_rows or max(s0, (256 * 2**20) // max(1, per_query * -(-W // s0)) * s0)
        return rows, sum(len(_bands(r, cfg["ps"] // 2 + ws, rows, x.shape)) for r in regs)

    (rows1, n1), (rows2, n2) = plan(cfg1, regions1), plan(cfg2, regions)
    steps = Steps(n1 + n2, progress, should_stop)
    kw = dict(pt=pt, ws=ws, wt=wt, flows=flows, stride0=s0, steps=steps)
    with torch.no_grad():
        # Each region on its own, both steps: its result does not depend on the other
        # regions (where regions overlap, the last one listed gives the value).
        final = xd.clone()
        for r, r1 in zip(regions, regions1, strict=True):
            basic = _bayes_pass(xd, xd, sigma, step=1, regions=[r1], rows=rows1, **cfg1, **kw)
            est = _bayes_pass(xd, basic, sigma, step=2, regions=[r], rows=rows2, **cfg2, **kw)
            sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
            final[sl] = est[sl]
            del basic, est
        if opp:
            final = _to_opp(final, inverse=True)
            # outside the regions: the input itself, bit for bit (no round trip through YUV)
            keep = torch.ones(B, T, 1, H, W, dtype=torch.bool, device=final.device)
            for r in regions:
                keep[:, r.t0:r.t1, :, r.y0:r.y1, r.x0:r.x1] = False
            final = torch.where(keep, x.to(final), final)
    return back(final.to(x.device))


# skimage_nl_means' default h / sigma per noise level (NLB_SIGMAS), tuned on generated
# videos with benchmarks/tune_nlb.py (--method skimage2d / skimage3d).
SKIMAGE_H: dict[str, tuple[float, ...]] = {
    "2d": (0.75, 0.6, 0.55, 0.5, 0.5),
    "3d": (0.5, 0.4, 0.35, 0.3, 0.3),
}


def skimage_nl_means(
    video,
    sigma: float,
    *,
    mode: str = "2d",
    h: float | None = None,
    patch_size: int = 5,
    patch_distance: int = 6,
    region=None,
    flows=None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """scikit-image's NL-means per frame (``"2d"``) or on the space-time volume (``"3d"``).

    The baseline the other denoisers are compared with: :func:`skimage.restoration.denoise_nl_means`
    in fast mode, with the noise variance subtracted from the patch distances
    (``sigma`` passed on), colour channels searched together.

    Parameters
    ----------
    video : Tensor (B, T, C, H, W) or ndarray (T, H, W[, C])
        Noisy video with values in [0, 1]. It is never modified.
    sigma : float
        Noise standard deviation on the same scale.
    mode : {"2d", "3d"}
        ``"2d"``: every frame on its own (square patches and windows); ``"3d"``: the
        (T, H, W) volume, with cubic patches and windows reaching ``patch_distance`` frames
        before and after (no motion compensation).
    h : float, optional
        Filtering strength; default ``f * sigma`` with ``f`` interpolated in sigma*255 from
        :data:`SKIMAGE_H` (tuned on generated videos: 0.75 at sigma 10 down to 0.5 at 40
        in 2-D, 0.5 down to 0.3 in 3-D).
    patch_size, patch_distance : int
        Side of the patches and radius of the search window, as in scikit-image.
    region : Region or 6-tuple or list of them, optional
        Restore only these regions; pixels outside every region are returned unchanged.
        Each region is denoised from its own crop, dilated by ``patch_size + patch_distance``
        (in time too for ``"3d"``), so pixels inside it see the same neighbourhood as when
        the whole video is processed except within that distance of the video's border.
    flows, device
        Accepted so that every entry of :data:`METHODS` is called the same way; ignored
        (scikit-image neither follows the motion nor runs on a GPU).
    progress, should_stop : callable, optional
        As for :func:`nl_means`; one unit per frame (``"2d"``) or per video (``"3d"``).

    Returns
    -------
    Same type and layout as ``video``.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = skimage_nl_means(noisy, 0.1, mode="3d")
    >>> out.shape, bool(np.abs(out - clean).mean() < np.abs(noisy - clean).mean())
    ((3, 24, 32), True)
    """
    from skimage.restoration import denoise_nl_means

    x, back, _, _, regions = _prepare(video, sigma, "cpu", region, None, None)
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode: expected '2d' or '3d', got {mode!r}")
    if h is None and mode in SKIMAGE_H:
        h = float(np.interp(sigma * 255, NLB_SIGMAS, SKIMAGE_H[mode])) * sigma
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
        raise ValueError(f"h: expected a positive number, got {h!r}")
    for name, v, lo in (("patch_size", patch_size, 1), ("patch_distance", patch_distance, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    B, T, C, H, W = x.shape
    pad = patch_size + patch_distance
    per_region = B * (1 if mode == "3d" else T)
    steps = Steps(per_region * len(regions), progress, should_stop)
    vid = x.detach().to("cpu", torch.float32).permute(0, 1, 3, 4, 2).numpy()  # (B, T, H, W, C)
    out = vid.copy()
    kw = dict(h=float(h), sigma=float(sigma), fast_mode=True, patch_size=patch_size,
              patch_distance=patch_distance, channel_axis=-1)
    for r in regions:
        q = _dilate(r, pad, x.shape)
        if mode == "3d":
            q = Region(max(0, r.t0 - pad), min(T, r.t1 + pad), q.y0, q.y1, q.x0, q.x1)
        inner = (slice(r.y0 - q.y0, r.y1 - q.y0), slice(r.x0 - q.x0, r.x1 - q.x0))
        for b in range(B):
            crop = vid[b, q.t0:q.t1, q.y0:q.y1, q.x0:q.x1]
            if mode == "3d":
                steps.check()
                res = denoise_nl_means(crop, **kw).reshape(crop.shape)  # C=1 comes back squeezed
                out[b, r.t0:r.t1, r.y0:r.y1, r.x0:r.x1] = res[r.t0 - q.t0:r.t1 - q.t0, *inner]
                steps.advance()
                continue
            for t in range(r.t0, r.t1):
                steps.check()
                res = denoise_nl_means(crop[t - q.t0], **kw).reshape(crop.shape[1:])
                out[b, t, r.y0:r.y1, r.x0:r.x1] = res[inner]
                steps.advance()
    return back(torch.from_numpy(out).permute(0, 1, 4, 2, 3).to(x.device))


METHODS: dict[str, Callable] = {"nlb": nl_bayes, "nlm": nl_means, "skimage": skimage_nl_means}
"""Denoisers by the short name the command line (``--method``) and the plugin use. Each is
called as ``METHODS[name](video, sigma, flows=..., region=..., device=..., progress=...,
should_stop=...)``; ``"skimage"`` ignores ``flows`` and ``device``."""
