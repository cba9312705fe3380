"""From any array to the denoisers' working form and back: layout, pixel type and units.

The public denoisers (:func:`~napari_stnls.denoise.nl_means`, :func:`~napari_stnls.denoise.nl_bayes`,
:func:`~napari_stnls.denoise.skimage_nl_means`) take a NumPy array of any real type (uint8,
uint16, other integers, float16/32/64) and any value range, in any layout an axes string
names (:mod:`napari_stnls.video.axes`), or a (B, T, C, H, W) tensor, with ``sigma`` in the
data's own units. :func:`run` does that for all of them:

1. the layout: the array becomes (N, T, H, W, C) (one video per z-slice of a ``TZYX`` stack);
2. the units: values are mapped to ``(x - lo) / (hi - lo)`` and ``sigma`` to
   ``sigma / (hi - lo)``, where ``(lo, hi)`` is the data's range (``data_range``, estimated by
   :func:`signal_range` when not given), so that the denoisers work on the scale their
   default parameters were tuned on (signal in about [0, 1]);
3. each video is denoised by the algorithm (a float32 (1, T, C, H, W) tensor in, the same
   out), and the result mapped back to the input's units, type (integers rounded and
   clipped to their type's range) and layout.

Because ``(lo, hi)`` moves with the data (``a*x + b`` has the range ``(a*lo + b, a*hi + b)``),
the results are equivariant: ``f(a*x + b, a*sigma) == a*f(x, sigma) + b`` to float rounding,
for ``a > 0``. ``data_range=1.0`` takes the data as it is (no mapping): old calls with values
in [0, 1] and ``sigma`` on that scale then compute exactly what they computed before
``data_range`` existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..ops import as_region
from ..video.axes import Layout
from .frames import as_videos, sample_frames, spread_frames
from .noise import NOISE_MODELS, anscombe, anscombe_inverse

__all__ = ["signal_range", "range_frames", "range_of_frames", "resolve_range", "check_sigma", "run",
           "run_gaussian",
           "RANGE_FRAMES", "RANGE_BLOCK",
           "RANGE_PERCENTILE"]

RANGE_FRAMES = 16  # frames (spread over the video) that signal_range reads
RANGE_BLOCK = 4  # side of the pixel blocks averaged before the percentiles (noise / 4)
RANGE_PERCENTILE = 0.1  # lo and hi: this percentile and 100 minus it of the block means


def check_sigma(sigma, name: str = "sigma") -> float:
    """``sigma`` as a float, checked: a finite number > 0 (in the data's units)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(sigma)) or not float(sigma) > 0:
        raise ValueError(f"{name}: expected a finite number > 0 in the video's units, got {sigma!r}")
    return float(sigma)


def range_frames(count: int) -> list[int]:
    """Which of ``count`` frames :func:`signal_range` reads: up to :data:`RANGE_FRAMES`, evenly
    spread (a video of N x T frames counts them n*T + t)."""
    return spread_frames(count, RANGE_FRAMES)


def range_of_frames(frames) -> tuple[float, float]:
    """:func:`signal_range` of the frames it reads, given as an iterable of (H, W, C) arrays
    (those :func:`range_frames` picks): for callers that read frames from a file one by one.
    """
    frames = [np.asarray(f) for f in frames]
    H, W = frames[0].shape[:2]
    b = RANGE_BLOCK if min(H, W) >= 2 * RANGE_BLOCK else 1
    means = []
    for f in frames:
        f = f[: H - H % b, : W - W % b].astype(np.float64)
        means.append(f.reshape(H // b, b, W // b, b, -1).mean((1, 3)).ravel())
    m = np.concatenate(means)
    lo, hi = np.percentile(m, [RANGE_PERCENTILE, 100 - RANGE_PERCENTILE])
    if not hi > lo:  # mostly flat: the extremes of the block means, then of the pixels
        lo, hi = m.min(), m.max()
    if not hi > lo:
        lo = min(float(np.min(f)) for f in frames)
        hi = max(float(np.max(f)) for f in frames)
    if not hi > lo:  # constant: any range will do (every denoiser returns a constant video as it is)
        hi = lo + max(1.0, abs(lo))
    return float(lo), float(hi)


def signal_range(video, axes: str | None = None) -> tuple[float, float]:
    """The range ``(lo, hi)`` of a video's signal, robust to noise, in the video's units.

    Read from up to :data:`RANGE_FRAMES` frames spread over the video: each frame's
    :data:`RANGE_BLOCK` x :data:`RANGE_BLOCK` pixel blocks are averaged (which divides white
    noise by 4), and ``lo`` and ``hi`` are the :data:`RANGE_PERCENTILE` and
    ``100 - RANGE_PERCENTILE`` percentiles of those means over every frame and channel. On
    natural videos in [0, 1] with noise up to sigma 50/255 it gives 0.95 to 1.17 (their clean
    range is 0.98 to 1); a signal that fills less of its type's range gets its own range.
    ``a*x + b`` (``a > 0``) gets ``(a*lo + b, a*hi + b)``.

    Parameters
    ----------
    video : ndarray or Tensor
        An array in the layout ``axes`` names (see :mod:`napari_stnls.video.axes`), or a
        (B, T, C, H, W) tensor (with ``axes=None``).
    axes : str, optional
        The array's axes; None infers them from its number of dimensions.

    Returns
    -------
    (lo, hi) : float
        ``hi > lo``; for a constant video ``(c, c + max(1, |c|))``.

    Examples
    --------
    >>> import numpy as np
    >>> ramp = np.tile(np.linspace(100, 4000, 64), (3, 64, 1)).astype(np.uint16)
    >>> lo, hi = signal_range(ramp, "TYX")
    >>> bool(100 <= lo < 200 and 3900 < hi <= 4000)
    True
    """
    return _signal_range(as_videos(video, axes))


def _signal_range(v) -> tuple[float, float]:
    """:func:`signal_range` of a (N, T, H, W, C) array or tensor."""
    return range_of_frames(sample_frames(v, RANGE_FRAMES))


def resolve_range(data_range, canon=None) -> tuple[float, float]:
    """``(lo, hi)`` from ``data_range``: None (estimated by :func:`signal_range` on ``canon``,
    a (N, T, H, W, C) array or tensor), a number ``r`` (the range ``(0, r)``) or a pair
    ``(lo, hi)``; checked.
    """
    if data_range is None:
        return _signal_range(canon)
    if isinstance(data_range, (tuple, list)) and len(data_range) == 2:
        lo, hi = data_range
    elif isinstance(data_range, (int, float, np.integer, np.floating)) and not isinstance(data_range, bool):
        lo, hi = 0.0, data_range
    else:
        raise ValueError(f"data_range: expected None, a number > 0 or a pair (lo, hi), got {data_range!r}")
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"data_range: expected numbers, got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range: expected finite values with hi > lo, got {data_range!r}")
    return lo, hi


def _check_dtype(dtype, name: str = "video") -> None:
    if isinstance(dtype, torch.dtype):
        ok = dtype.is_floating_point or (not dtype.is_complex and dtype != torch.bool)
    else:
        dtype = np.dtype(dtype)
        ok = np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    if not ok:
        raise TypeError(f"{name}: expected real pixel values (integers or floats), got {dtype}")


def _flows_for(flows, n: int, N: int, T: int, H: int, W: int):
    """The flows of video ``n`` of ``N``: (fflow, bflow) as float (1, T, 2, H, W) tensors."""
    if flows is None:
        return None
    if not isinstance(flows, (tuple, list)) or len(flows) != 2:
        raise TypeError("flows: expected a pair (fflow, bflow)")
    out = []
    for f, name in zip(flows, ("fflow", "bflow"), strict=True):
        t = f if isinstance(f, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(f))
        if t.ndim == 4:
            t = t[None]
        if t.ndim != 5 or t.shape[0] not in (1, N) or tuple(t.shape[1:]) != (T, 2, H, W):
            b = '1' if N == 1 else f'1 or {N}'
            raise ValueError(f"flows ({name}): expected shape ({b}, {T}, 2, {H}, "
                             f"{W}) or ({T}, 2, {H}, {W}), got {tuple(t.shape)}")
        out.append(t[n if t.shape[0] == N else 0][None])
    return tuple(out)


def _to_float(frames, lo: float, span: float) -> torch.Tensor:
    """(T, H, W, C) frames as a float32 (1, T, C, H, W) tensor of ``(x - lo) / span``."""
    if isinstance(frames, torch.Tensor):
        if (lo, span) == (0.0, 1.0) and frames.dtype == torch.float32:
            x = frames
        else:
            x = ((frames.to(torch.float64) - lo) / span).to(torch.float32)
        return x.permute(0, 3, 1, 2)[None]
    a = np.asarray(frames)
    if (lo, span) == (0.0, 1.0):
        x = a.astype(np.float32, copy=False)
    else:
        x = ((a.astype(np.float64) - lo) / span).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)[None]


def _from_float(y: torch.Tensor, lo: float, span: float, like):
    """A (1, T, C, H, W) result back to the units and type of ``like`` (T, H, W, C)."""
    y = y[0].permute(0, 2, 3, 1)
    if isinstance(like, torch.Tensor):
        out = y.to(like.device, torch.float64) * span + lo if (lo, span) != (0.0, 1.0) else y.to(like.device)
        if like.dtype.is_floating_point:
            return out.to(like.dtype)
        info = torch.iinfo(like.dtype)
        return out.round().clamp(info.min, info.max).to(like.dtype)
    y = y.detach().cpu()
    out = arr = y.numpy()
    dtype = np.dtype(like.dtype)
    if (lo, span) != (0.0, 1.0):
        out = out.astype(np.float64) * span + lo
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    out = out.astype(dtype, copy=False)
    # a page-locked result (to_host) is copied out, so that the caller never holds locked memory
    return out.copy() if y.is_pinned() and np.may_share_memory(out, arr) else out


def run(core: Callable, video, sigma, *, noise: str = "gaussian", gain: float | None = None, **kwargs):
    """Denoise ``video`` with ``core`` under a noise model: ``"gaussian"`` (:func:`run_gaussian`),
    or ``"poisson-gaussian"`` (variance ``gain * x + sigma^2``): the data is stabilised by the
    generalised Anscombe transform (noise of variance about 1), denoised as Gaussian with
    sigma 1, and taken back by the exact unbiased inverse
    (:mod:`napari_stnls.denoise.noise`). ``kwargs`` as for :func:`run_gaussian` (those named
    in ``units`` are then in the stabilised units, where the noise is 1).
    """
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise: expected one of {NOISE_MODELS}, got {noise!r}")
    if noise == "gaussian":
        if gain is not None:
            raise ValueError("gain: goes with noise='poisson-gaussian'")
        return run_gaussian(core, video, sigma, **kwargs)
    return _run_stabilised(core, video, sigma, gain, **kwargs)


def _run_stabilised(core, video, sigma, gain, *, axes=None, data_range=None, region=None, **kwargs):
    if gain is None:
        raise ValueError("gain: needed with noise='poisson-gaussian' (estimate_noise(video, "
                         "model='poisson-gaussian') gives gain and sigma)")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(sigma)) or not float(sigma) >= 0:
        raise ValueError(f"sigma: expected the read noise, a finite number >= 0 in the video's units, "
                         f"got {sigma!r}")
    is_tensor = isinstance(video, torch.Tensor)
    canon = as_videos(video, axes)  # the type's and layout's errors first
    _check_dtype(video.dtype)
    a = video.detach().cpu().numpy() if is_tensor else np.asarray(video)
    z = anscombe(a, gain, float(sigma))
    if data_range is not None:
        lo, hi = resolve_range(data_range)
        ends = anscombe(np.array([max(lo, 0.0), max(hi, 0.0)]), gain, float(sigma))
        data_range = (float(ends[0]), float(ends[1]))
        if not data_range[1] > data_range[0]:
            raise ValueError(f"data_range: expected a range above 0 with noise='poisson-gaussian', "
                             f"got {(lo, hi)}")
    zz = torch.from_numpy(z) if is_tensor else z
    out_z = run_gaussian(core, zz, 1.0, axes=axes, data_range=data_range, region=region, **kwargs)
    out = anscombe_inverse(out_z.numpy() if is_tensor else out_z, gain, float(sigma))
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(a.dtype)
    if region is not None:  # outside the regions: the input itself, bit for bit
        N, T, H, W, C = canon.shape
        keep = np.ones((N, T, H, W, C), bool)
        for r in region if isinstance(region, list) else [region]:
            r = as_region(r, (1, T, C, H, W))
            keep[:, r.t0:r.t1, r.y0:r.y1, r.x0:r.x1] = False
        keep = np.transpose(keep, (0, 1, 4, 2, 3)) if is_tensor and axes is None else \
            Layout.of(a.shape, axes).from_video(keep)
        out = np.where(keep, a, out)
    if is_tensor:
        return torch.from_numpy(np.ascontiguousarray(out)).to(video.device)
    return out


def run_gaussian(core: Callable, video, sigma, *, axes: str | None = None, data_range=None, flows=None,
                 region=None, progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, units: tuple[str, ...] = (), **kwargs):
    """Denoise ``video`` with ``core`` in the data's units, type and layout (Gaussian noise).

    ``core(x, sigma, flows=..., region=..., progress=..., should_stop=..., **kwargs)`` takes
    a float32 (1, T, C, H, W) tensor whose signal spans about [0, 1] and ``sigma`` on that
    scale, and returns the same shape. Each of the N videos of ``video``
    (:func:`~napari_stnls.video.axes.to_video`) is one call; ``progress`` counts over all of
    them. Pixels outside ``region`` come back bit for bit. The ``kwargs`` named in ``units``
    are in the video's units, like ``sigma``, and are divided by ``hi - lo`` too (None is
    passed on).

    Returns
    -------
    The type, dtype, shape and layout of ``video``.
    """
    sigma = check_sigma(sigma)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a callable progress(done, total), got {type(progress).__name__}")
    if should_stop is not None and not callable(should_stop):
        raise TypeError(f"should_stop: expected a callable returning bool, got {type(should_stop).__name__}")
    is_tensor = isinstance(video, torch.Tensor)
    if is_tensor and axes is None:
        layout = None
        canon = as_videos(video, None)
    else:
        if not is_tensor:
            as_videos(video, axes)  # the type's and layout's errors first
            video = np.asarray(video)
        layout = Layout.of(video.shape, axes)
        canon = layout.to_video(video)
    _check_dtype(video.dtype)
    N, T, H, W, C = canon.shape
    if min(N, T, H, W, C) == 0:
        raise ValueError(f"video: empty, shape {tuple(video.shape)}")
    regions = region if isinstance(region, list) else [region]
    regions = [as_region(r, (1, T, C, H, W)) for r in regions]  # checked before any work
    lo, hi = resolve_range(data_range, canon)
    span = hi - lo
    for name in units:
        if kwargs.get(name) is not None:
            kwargs[name] = kwargs[name] / span
    flows_n = [_flows_for(flows, n, N, T, H, W) for n in range(N)]
    totals: list[int] = []

    def prog_for(n: int):
        if progress is None:
            return None

        def p(done: int, total: int) -> None:
            if not totals:
                totals.append(total)
            progress(n * totals[0] + done, N * totals[0])

        return p

    outs = []
    for n in range(N):
        frames = canon[n]
        x = _to_float(frames, lo, span)
        y = core(x, sigma / span, flows=flows_n[n], region=region, progress=prog_for(n),
                 should_stop=should_stop, **kwargs)
        out = _from_float(y, lo, span, frames)
        if region is not None:  # outside the regions: the input itself, bit for bit
            keep = np.ones((T, H, W), bool) if not is_tensor else torch.ones(T, H, W, dtype=torch.bool)
            for r in regions:
                keep[r.t0:r.t1, r.y0:r.y1, r.x0:r.x1] = False
            if is_tensor:
                out = torch.where(keep[..., None].to(out.device), frames.to(out.device), out)
            else:
                out = np.where(keep[..., None], frames, out)
        outs.append(out)
    if is_tensor:
        res = torch.stack(outs)
        return res.permute(0, 1, 4, 2, 3) if layout is None else layout.from_video(res)
    # one video whose result is the core's own buffer (not a view of the input): no copy
    res = outs[0][None] if N == 1 and not np.may_share_memory(outs[0], video) else np.stack(outs)
    return np.ascontiguousarray(layout.from_video(res))
