"""Space-time NL-means along the optical flow (search -> weights -> aggregate)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._util import Steps
from ..ops import aggregate, search
from ._prep import prepare, split_bands
from .params import nl_means_params

__all__ = ["nl_means"]


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
        tuned for ``sigma`` (:data:`~napari_stnls.denoise.params.NLM_TABLE`: ``ps`` 7; ``k`` 16
        at sigma 10/255, 24 at 20-30/255 and 48 from 40/255 on, interpolated between).
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
        Polled before each band; when it returns True, :class:`~napari_stnls._util.Cancelled`
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
    x, back, xd, flows, regions = prepare(video, sigma, device, region, flows, band_rows)
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
    plans = [(r, split_bands(r, pad, rows, x.shape)) for r in regions]
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
