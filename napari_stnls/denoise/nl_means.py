"""Space-time NL-means along the optical flow (search -> weights -> aggregate)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

import torch

from .._util import Steps
from ..ops import aggregate, search
from ._prep import Download, band_budget, prepare, split_bands, to_host
from .convert import run
from .params import nl_means_params

__all__ = ["nl_means"]


def nl_means(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ws: int = 9,
    wt: int = 2,
    k: int | None = None,
    h: float = 0.5,
    itype: str = "float",
    axes: str | None = None,
    data_range=None,
    noise: str = "gaussian",
    gain: float | None = None,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Space-time NL-means along the optical flow.

    Every query patch is replaced by the weighted mean of its ``k`` nearest space-time
    patches (search -> weights -> aggregate), and overlapping patches are averaged. All
    channels are searched and weighted together, whatever their number.

    Parameters
    ----------
    video : ndarray in the layout ``axes`` names, or Tensor (B, T, C, H, W)
        Noisy video of any real type (uint8, uint16, other integers, float16/32/64) and any
        value range. It is never modified.
    sigma : float
        Noise standard deviation in the video's own units: 20 for uint8 data whose noise is
        20 grey levels, 0.08 for float data in [0, 1] with that noise, 150 for uint16 counts.
        A finite number > 0.
    ps, ws, wt, k
        Patch side, search-window side, temporal radius and number of neighbours
        (see :func:`napari_stnls.ops.search`). ``ps`` and ``k`` default to the values
        tuned for the noise relative to the data's range
        (:data:`~napari_stnls.denoise.params.NLM_TABLE`, keyed by ``sigma / (hi - lo) * 255``:
        ``ps`` 7; ``k`` 16 at 10, 24 at 20-30 and 48 from 40 on, interpolated between).
        ``ws`` 9 scored better than 11 on generated videos at every noise level (fewer wrong
        candidates where the flow follows the motion) for 0.67x the candidates.
    h : float
        Filtering strength: a neighbour at normalised distance ``d`` (squared patch
        difference divided by ``ps*ps*C*sigma^2``) gets weight ``exp(-max(d - 2, 0) / h^2)``;
        two noisy copies of the same patch have ``d`` close to 2.
    itype : {"float", "int"}
        Positions of the neighbours. ``"float"`` follows the flow to sub-pixel positions
        (bilinear patches); ``"int"`` rounds each window's centre to whole pixels, as
        ``nl_bayes`` does: about 1.5x faster on the CPU, but the whole-pixel patches are
        noisier than interpolated ones and cost PSNR (10 frames of bikes, sigma 10-50, TV-L1
        flow: 1.1-2.5 dB; carphone -0.3 to +0.4 dB; ``docs/benchmarks.md``). Without flows
        both give the same neighbours.
    axes : str, optional
        The array's layout over the letters ``T Z Y X C`` (``"YX"``, ``"TYX"``, ``"TYXC"``,
        ``"ZYX"``, ``"TZYX"``, ``"CTYX"``, ...; see :mod:`napari_stnls.video.axes`). The searched
        axis is T, or Z without T; with both, each z-slice's time series is denoised on its
        own; an image is a video of one frame. Default: inferred from the number of
        dimensions ((H, W), (T, H, W), (T, H, W, C) with C <= 4). Tensors are (B, T, C, H, W)
        when ``axes`` is None.
    data_range : float or (lo, hi), optional
        The range of the signal, in the video's units: the default parameters follow
        ``sigma`` relative to it, and the computation runs on ``(x - lo) / (hi - lo)``.
        Default: estimated (:func:`~napari_stnls.denoise.signal_range`), which makes the
        result equivariant: ``f(a*x + b, a*sigma) == a*f(x, sigma) + b``. A number ``r`` is
        ``(0, r)``; ``1.0`` computes on the values as they are (the behaviour of versions
        without this argument, for data in [0, 1]).
    noise : {"gaussian", "poisson-gaussian"}
        The noise model. ``"poisson-gaussian"``: variance ``gain * x + sigma^2`` at signal
        ``x`` (photon counts: ``sigma`` is then the read noise, >= 0); the video is stabilised
        by the generalised Anscombe transform, denoised with noise 1 and taken back by the
        exact unbiased inverse (:mod:`napari_stnls.denoise.noise`).
        :func:`~napari_stnls.denoise.estimate_noise` estimates ``gain`` and ``sigma``.
    gain : float, optional
        With ``noise="poisson-gaussian"``: the gain, in the video's units per photon.
    flows : (fflow, bflow), optional
        Each (B, T, 2, H, W) (B = 1, or one per video of a ``TZYX`` stack) or (T, 2, H, W),
        as for :func:`napari_stnls.ops.search`, in pixels along the searched axis.
    region : Region or 6-tuple or list of them, optional
        Restore only these regions ``(t0, t1, y0, y1, x0, x1)`` (t along the searched axis;
        the same in every z-slice and batch entry); pixels outside every region are returned
        unchanged, bit for bit. A pixel's value depends only on the patches that cover it,
        so the result inside a region is the same as when the whole video is processed.
    device : str or torch.device, optional
        Where to compute; default: CUDA when available, else the CPU.
    band_rows : int, optional
        Rows of queries processed at once (bounds memory); default from a budget of 256 MiB
        on the CPU, an eighth of the free memory (at most 8 GiB) on a GPU.
    progress : callable, optional
        Called as ``progress(done, total)`` after each band of queries.
    should_stop : callable, optional
        Polled before each band; when it returns True, :class:`~napari_stnls._util.Cancelled`
        is raised and no result is returned.

    Returns
    -------
    The type, dtype, shape and layout of ``video`` (integers rounded and clipped to their
    type's range).

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

    16-bit counts, sigma in counts, a z-stack searched slice to slice:

    >>> counts = np.clip(np.rint(noisy * 3000 + 200), 0, None).astype(np.uint16)
    >>> out = nl_means(counts, 300, axes="ZYX", ws=7, k=8, device="cpu")
    >>> out.dtype, out.shape
    (dtype('uint16'), (3, 24, 32))
    """
    return run(_nl_means, video, sigma, noise=noise, gain=gain, axes=axes, data_range=data_range,
               flows=flows, region=region, progress=progress, should_stop=should_stop, ps=ps, ws=ws, wt=wt,
               k=k, h=h, itype=itype, device=device, band_rows=band_rows)


def _nl_means(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ws: int = 9,
    wt: int = 2,
    k: int | None = None,
    h: float = 0.5,
    itype: str = "float",
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """:func:`nl_means` on a float (B, T, C, H, W) tensor (or (T, H, W[, C]) float array)
    whose signal spans about [0, 1], ``sigma`` on that scale; returns the same type."""
    x, back, xd, flows, regions, up = prepare(video, sigma, device, region, flows, band_rows, lazy=True)
    tuned = nl_means_params(sigma, x.shape[1], ws, wt)
    ps = tuned["ps"] if ps is None else ps
    k = tuned["k"] if k is None else k
    if not isinstance(h, (int, float)) or not h > 0:
        raise ValueError(f"h: expected a positive number, got {h!r}")
    if itype not in ("float", "int"):
        raise ValueError(f"itype: expected 'float' or 'int', got {itype!r}")
    B, T, C, H, W = x.shape
    # per query and neighbour: the distance, the weight and the position the search returns,
    # with its working buffers (the search takes about 23 bytes a neighbour on 540p, issue 25);
    # the aggregation is fused (no patch is gathered), so whole frames fit on a GPU
    per_row = W * k * 64
    rows = band_rows or max(1, band_budget(xd.device) // max(1, per_row))
    pad = ps // 2
    # Each region is aggregated on its own from every query whose patch covers one of its
    # pixels (the region dilated by the patch radius), so overlapping regions never count a
    # query twice and each pixel gets exactly what processing the whole video gives it.
    plans = [(r, split_bands(r, pad, rows, x.shape)) for r in regions]
    steps = Steps(sum(len(b) for _, b in plans), progress, should_stop)
    norm = ps * ps * C * sigma**2
    # A frame is finished once the last region holding it has divided its sums there. From a
    # CPU video on a GPU, frames go up as the bands need them (the window's frames, 2 wt either
    # side) and come back as they are finished, both overlapping the GPU's work (Upload,
    # Download); frames outside every region are taken from the input on the CPU.
    last = {t: n for n, (r, _) in enumerate(plans) for t in range(r.t0, r.t1)}
    down = Download(xd) if up.stream is not None else None
    out = torch.empty_like(xd) if down is not None else xd.clone()
    copied = set()
    with torch.no_grad():
        for n, (r, bands) in enumerate(plans):
            agg = torch.zeros_like(xd)
            cnt = torch.zeros(B, T, 1, H, W, device=xd.device)
            for t, frame_bands in groupby(bands, key=lambda b: b.t0):
                for band in frame_bands:
                    steps.check()
                    up.need(t - 2 * wt, t + 2 * wt + 1)
                    d, i = search(xd, xd, ps=ps, ws=ws, wt=wt, k=k, flows=flows, region=band, itype=itype)
                    w = torch.exp(-torch.clamp(d / norm - 2.0, min=0.0) / h**2)
                    # each neighbour patch is written back at its query's position (positions
                    # from search lie in the video: not read back to be checked, no sync)
                    aggregate(xd, i, "queries", region=band, out=(agg, cnt), weights=w, ps=ps,
                              check_inds=False)
                    steps.advance()
                if down is not None and t not in copied:  # the frame's pixels outside the regions
                    out[:, t] = xd[:, t]
                    copied.add(t)
                sl = (slice(None), slice(t, t + 1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
                out[sl] = agg[sl] / cnt[sl].clamp_min(1e-12)
                if down is not None and last[t] == n:
                    down.frame(out, t)
    if down is None:
        return back(to_host(out, x))
    for t in range(T):
        if t not in last:
            down.put(t, x[:, t])
    return back(down.result())
