"""Video denoisers built on the operations (torch only, no Qt).

* :func:`nl_means`: space-time NL-means along the flow. Every query patch is replaced by
  the weighted mean of its K nearest space-time patches (search -> weights -> gather ->
  weighted scatter), and overlapping patches are averaged.
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

import numpy as np
import torch

from ._progress import Steps
from .ops import Region, gather, query_coords, scatter, search
from .ops._region import as_region

__all__ = ["nl_means", "nl_bayes", "skimage_nl_means", "METHODS"]


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
    if flows is not None:
        flows = tuple(f.to(device=device, dtype=torch.float32) for f in flows)
    return x, back, xd, flows, regions


def nl_means(
    video,
    sigma: float,
    *,
    ps: int = 5,
    ws: int = 11,
    wt: int = 2,
    k: int = 16,
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
        (see :func:`napari_stnls.ops.search`).
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
            cnt = torch.zeros(B, T, 1, H, W, device=device)
            for band in bands:
                steps.check()
                d, i = search(xd, xd, ps=ps, ws=ws, wt=wt, k=k, flows=flows, region=band)
                w = torch.exp(-torch.clamp(d / norm - 2.0, min=0.0) / h**2)
                # each neighbour patch is written back at its query's position
                at = query_coords(xd.shape, band, device=device).view(1, 1, -1, 1, 3).expand_as(i)
                scatter(gather(xd, i, ps=ps), at, out=(agg, cnt), weights=w, ps=ps)
                steps.advance()
            sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
            out[sl] = agg[sl] / cnt[sl].clamp_min(1e-12)
    return back(out.to(x.device))


def _bayes_pass(noisy, guide, sigma, *, ps, ws, wt, k, flows, stride0, regions, rows, step, steps):
    """One step of video non-local Bayes: group, estimate, aggregate every group patch."""
    B, T, C, H, W = noisy.shape
    pad = ps // 2
    out = noisy.clone() if step == 1 else guide.clone()
    var = sigma**2
    for r in regions:
        agg = torch.zeros_like(noisy)
        cnt = torch.zeros(B, T, 1, H, W, device=noisy.device)
        for band in _bands(r, pad + ws, rows, noisy.shape):  # groups of nearby references reach r
            steps.check()
            # whole-pixel positions: bilinear reading would lower the patches' noise
            # variance below sigma^2, which the Wiener filter assumes
            _, i = search(guide, guide, ps=ps, ws=ws, wt=wt, k=k, flows=flows, region=band,
                          stride0=stride0, itype="int")
            yn = gather(noisy, i, ps=ps)  # (B, 1, Q, K, 1, C, ps, ps)
            shape = yn.shape
            yn = yn.reshape(B, -1, k, C * ps * ps)
            mn = yn.mean(2, keepdim=True)
            if step == 1:
                cov = (yn - mn).transpose(-1, -2) @ (yn - mn) / (k - 1)
                ev, U = torch.linalg.eigh(cov)
                gain = torch.clamp(ev - var, min=0) / ev.clamp_min(1e-12)
            else:
                yb = gather(guide, i, ps=ps).reshape(B, -1, k, C * ps * ps)
                mb = yb.mean(2, keepdim=True)
                cov = (yb - mb).transpose(-1, -2) @ (yb - mb) / (k - 1)
                ev, U = torch.linalg.eigh(cov)
                ev = ev.clamp_min(0)
                gain = ev / (ev + var)
            # x = m + U diag(gain) U^T (y - m), for every patch of every group
            est = mn + ((yn - mn) @ U) * gain.unsqueeze(2) @ U.transpose(-1, -2)
            scatter(est.reshape(shape), i, out=(agg, cnt), ps=ps)
            steps.advance()
        sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        covered = cnt[sl] > 0
        out[sl] = torch.where(covered, agg[sl] / cnt[sl].clamp_min(1e-12), out[sl])
    return out


def nl_bayes(
    video,
    sigma: float,
    *,
    ps: int = 5,
    ws: int = 11,
    wt: int = 2,
    k: int = 96,
    stride0: int = 2,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Two-step video non-local Bayes (after Arias & Morel's VNLB), along the flow.

    Step 1 groups the ``k`` most similar space-time patches of every reference patch (on
    a grid of spacing ``stride0``), estimates their mean and covariance and applies the
    Wiener filter ``x = m + (C - sigma^2 I)_+ C^-1 (y - m)`` to every patch of the group,
    then aggregates all estimates. Step 2 searches again on that basic estimate and uses it
    as the oracle covariance: ``x = m + C_b (C_b + sigma^2 I)^-1 (y - m)``.

    Parameters and returns as for :func:`nl_means` (``k`` should exceed the patch size
    ``C*ps*ps`` so that the covariance has full rank). Regions are restored from the groups
    of every reference patch within ``ws + ps//2`` of them; pixels outside every region
    are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = nl_bayes(noisy, 0.1, ws=7, k=40, device="cpu")
    >>> bool(np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean())
    True
    """
    x, back, xd, flows, regions = _prepare(video, sigma, device, region, flows, band_rows)
    B, T, C, H, W = x.shape
    per_row = W * k * ps * ps * C * 4 * 6 // stride0 + W * (C * ps * ps) ** 2 * 4 * 3 // stride0
    rows = band_rows or max(stride0, (256 * 2**20) // max(1, per_row) // stride0 * stride0)
    n_bands = sum(len(_bands(r, ps // 2 + ws, rows, x.shape)) for r in regions)
    steps = Steps(2 * n_bands, progress, should_stop)
    kw = dict(ps=ps, ws=ws, wt=wt, k=k, flows=flows, stride0=stride0, regions=regions, rows=rows,
              steps=steps)
    with torch.no_grad():
        basic = _bayes_pass(xd, xd, sigma, step=1, **kw)
        final = _bayes_pass(xd, basic, sigma, step=2, **kw)
    return back(final.to(x.device))


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
        Filtering strength; default ``0.8 * sigma`` (scikit-image's advice for fast mode).
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
    if h is None:
        h = 0.8 * sigma
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
