"""What the plugin's Denoise widget computes, without Qt: methods, noise estimate, denoising, quality.

Wraps :mod:`napari_stnls.denoise` for videos in napari's layout (T, H, W[, C]): the input is
never modified and the result is a new float32 array of the same shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from ..._util import Cancelled, Steps, resolve_device
from ...denoise import METHODS
from ...stream import denoise_dask
from .lazy import BackgroundFrames
from .regions import validate_regions
from .search import as_float_video, check_flows

__all__ = ["denoise_methods", "method_defaults", "estimate_noise_sigma", "denoise_video", "denoise_lazy",
           "denoise_background", "LAZY_METHODS", "quality", "describe_quality"]


def denoise_methods() -> dict[str, Callable]:
    """The denoisers by short name (a copy of :data:`napari_stnls.denoise.METHODS`)."""
    return dict(METHODS)


def method_defaults(method: str) -> dict[str, object]:
    """The keyword defaults of a denoiser (e.g. ``ps``, ``ws``, ``k``), from its signature."""
    fn = _method(method)
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


def _method(method: str) -> Callable:
    methods = denoise_methods()
    if method not in methods:
        raise ValueError(f"method: expected one of {tuple(methods)}, got {method!r}")
    return methods[method]


def estimate_noise_sigma(video, max_frames: int = 5) -> float:
    """Noise standard deviation of a video on the [0, 1] scale (scikit-image's ``estimate_sigma``,
    wavelet based), the median over up to ``max_frames`` frames spread over the video.

    Examples
    --------
    >>> import numpy as np
    >>> noisy = np.random.default_rng(0).normal(0.5, 0.1, (3, 64, 64)).astype(np.float32)
    >>> round(estimate_noise_sigma(noisy), 2)
    0.1
    """
    from skimage.restoration import estimate_sigma

    T = int(video.shape[0])
    ts = np.unique(np.linspace(0, T - 1, min(T, max(1, int(max_frames)))).round().astype(int))
    vals = []
    for t in ts:
        f = as_float_video(video, int(t), int(t) + 1)[0]
        vals.append(float(estimate_sigma(f, channel_axis=-1, average_sigmas=True)))
    return float(np.median(vals))


def denoise_video(
    video,
    method: str = "nlb",
    sigma: float = 20 / 255,
    *,
    regions: Sequence | None = None,
    flows=None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params,
) -> np.ndarray:
    """Denoise a napari video, whole or only in ``regions``.

    Parameters
    ----------
    video : array, shape (T, H, W) or (T, H, W, C)
        Integer data is scaled to [0, 1]; never modified.
    method : str
        A key of :func:`denoise_methods` (``"nlb"``, ``"nlm"``, ``"skimage"``).
    sigma : float
        Noise standard deviation on the [0, 1] scale.
    regions : list of Region or 6-tuples, optional
        Restore only these (pixels outside are copied); None is the whole video.
    flows : (fflow, bflow), optional
        Each (T, 2, H, W), channel 0 = dx.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress, should_stop
        See :mod:`napari_stnls._util`.
    **params
        Passed to the denoiser (``ps``, ``ws``, ``k``, ...).

    Returns
    -------
    ndarray float32, the shape of ``video``
        A new array.

    Raises
    ------
    Cancelled
        When ``should_stop()`` returned True; nothing is returned.
    """
    fn = _method(method)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number on the [0, 1] scale, got {sigma!r}")
    shape = getattr(video, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(f"video: expected an array (T, H, W) or (T, H, W, C), got shape {shape}")
    regs = None if regions is None else validate_regions(regions, shape)
    if regs is not None and not regs:
        raise ValueError("regions: empty list; pass None for the whole video")
    fl = check_flows(flows, shape)
    dev = resolve_device(device)
    sig = inspect.signature(fn).parameters
    unknown = [p for p in params if p not in sig]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a parameter of the {method!r} denoiser")
    frames = as_float_video(video)
    x = frames[..., 0] if len(shape) == 3 else frames
    if fl is not None:
        import torch

        fl = tuple(torch.from_numpy(np.ascontiguousarray(f))[None] for f in fl)
    kw = dict(flows=fl, region=regs, device=dev, progress=progress, **params)
    if "should_stop" in sig:
        return fn(x, sigma, should_stop=should_stop, **kw)
    # a denoiser without should_stop: one call per region, checking in between
    steps = Steps(len(regs or [None]), None, should_stop)
    out = x.copy()
    for r in regs or [None]:
        steps.check()
        res = fn(x, sigma, **{**kw, "region": r})
        sl = slice(None) if r is None else (slice(r.t0, r.t1), slice(r.y0, r.y1), slice(r.x0, r.x1))
        out[sl] = res[sl]
        steps.advance()
    if should_stop is not None and should_stop():
        raise Cancelled("stopped by the caller")
    return out


LAZY_METHODS = ("nlb", "nlm")  # the denoisers napari_stnls.stream can tile


def denoise_lazy(video, method: str = "nlb", sigma: float = 20 / 255, *, flows=None, device: str = "auto",
                 **params):
    """The whole video denoised as a lazy dask array: each frame is computed when it is read.

    One task per frame (:func:`napari_stnls.stream.denoise_dask` with tiles ``(1, H, W)``), so a
    napari layer of the result computes a frame when it is displayed, and nothing before.
    Each frame equals the same frame of :func:`denoise_video` (to float rounding): the task
    reads only the frames and flows the frame's search windows reach.

    Parameters
    ----------
    video : array (NumPy, memmap, zarr or dask), shape (T, H, W) or (T, H, W, C)
        Integer data is scaled to [0, 1]; never modified, and not read until a frame is.
    method : str
        One of :data:`LAZY_METHODS` (``"nlb"``, ``"nlm"``).
    sigma : float
        Noise standard deviation on the [0, 1] scale.
    flows : (fflow, bflow), optional
        Each (T, 2, H, W), channel 0 = dx; their bound is read once now.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``: where the frames are computed.
    **params
        The denoiser's parameters (``ps``, ``ws``, ``k``, ...). Those not given take the
        denoiser's defaults for ``sigma``, as in :func:`denoise_video`.

    Returns
    -------
    dask.array.Array, float32, the shape of ``video``, chunked one frame per block.
    """
    if method not in LAZY_METHODS:
        raise ValueError(f"method: the lazy mode supports {LAZY_METHODS}, got {method!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number on the [0, 1] scale, got {sigma!r}")
    shape = getattr(video, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(f"video: expected an array (T, H, W) or (T, H, W, C), got shape {shape}")
    defaults = method_defaults(method)
    unknown = [p for p in params if p not in defaults]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a parameter of the {method!r} denoiser")
    fl = check_flows(flows, shape)
    dev = resolve_device(device)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return denoise_dask(video, method, tile=(1, int(shape[1]), int(shape[2])), flows=fl,
                                   device=str(dev), sigma=float(sigma), **params)
    except TypeError as e:
        raise ValueError(str(e)) from e


def denoise_background(video, method: str = "nlb", sigma: float = 20 / 255, *, flows=None,
                       device: str = "auto", prefetch: int = 2, on_ready: Callable[[int], None] | None = None,
                       on_error: Callable[[int, BaseException], None] | None = None,
                       paused: bool = False, **params) -> BackgroundFrames:
    """The whole video denoised frame by frame in a background thread, as an array whose reads
    never wait (:class:`~napari_stnls.plugin.model.lazy.BackgroundFrames`).

    Each frame is frame t of :func:`denoise_lazy` (same arguments), computed when it is first
    read (the frame read last first, then the ``prefetch`` frames after it); until then it
    reads as zeros. ``on_ready(t)`` / ``on_error(t, exc)`` are called from the background
    thread. ``paused``: nothing is computed until ``resume()`` (see ``BackgroundFrames``).

    Returns
    -------
    BackgroundFrames, float32, the shape of ``video``
    """
    lazy = denoise_lazy(video, method, sigma, flows=flows, device=device, **params)

    def compute(t: int) -> np.ndarray:
        return np.asarray(lazy[t].compute(scheduler="synchronous"), dtype=np.float32)

    return BackgroundFrames(compute, lazy.shape, np.float32, prefetch=prefetch, on_ready=on_ready,
                            on_error=on_error, paused=paused)


def quality(result, clean, regions: Sequence | None = None) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``result`` against ``clean``, over ``regions`` (default everywhere).

    Both are (T, H, W[, C]) on the [0, 1] scale (integers are scaled). PSNR is over all
    pixels of the regions; SSIM is scikit-image's per frame and region crop, averaged
    weighted by pixel count (windows shrink to fit small crops; NaN below 3 pixels).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 16, 16), np.float32); b = a + 0.1
    >>> round(quality(b, a)["psnr"], 3)
    20.0
    """
    from skimage.metrics import structural_similarity

    a = as_float_video(result)
    b = as_float_video(clean)
    if a.shape != b.shape:
        raise ValueError(f"clean: shape {b.shape[:-1] if b.shape[-1] == 1 else b.shape} differs from the "
                         f"result's {a.shape[:-1] if a.shape[-1] == 1 else a.shape}")
    T, H, W = a.shape[:3]
    regs = validate_regions(regions, a.shape) if regions is not None else [(0, T, 0, H, 0, W)]
    mask = np.zeros((T, H, W), bool)
    for t0, t1, y0, y1, x0, x1 in regs:
        mask[t0:t1, y0:y1, x0:x1] = True
    mse = float(((a - b) ** 2)[mask].mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    num = den = 0.0
    for t0, t1, y0, y1, x0, x1 in regs:
        side = min(y1 - y0, x1 - x0)
        win = min(7, side if side % 2 else side - 1)
        if win < 3:
            continue
        for t in range(t0, t1):
            s = structural_similarity(a[t, y0:y1, x0:x1], b[t, y0:y1, x0:x1], data_range=1.0,
                                      channel_axis=-1, win_size=win)
            n = (y1 - y0) * (x1 - x0)
            num += float(s) * n
            den += n
    return {"psnr": psnr, "ssim": num / den if den else float("nan")}


SSIM_MIN_SIDE = 3  # SSIM needs a window of at least 3 x 3 pixels


def describe_quality(before: dict, after: dict, where: str = "") -> str:
    """One line: PSNR and SSIM before -> after, each a number or the reason there is none.

    ``before`` and ``after`` are :func:`quality` results. PSNR of identical images is
    written ``inf``; SSIM of regions all narrower than 3 pixels has no number, and says so.

    Examples
    --------
    >>> describe_quality({"psnr": 20.0, "ssim": float("nan")}, {"psnr": 25.5, "ssim": float("nan")})
    'PSNR 20.00 -> 25.50 dB, SSIM: none (every region is narrower than 3 pixels, its smallest window)'
    """
    def num(v, fmt):
        return "inf" if v == float("inf") else format(v, fmt)

    psnr = f"PSNR {num(before['psnr'], '.2f')} -> {num(after['psnr'], '.2f')} dB"
    if np.isnan(before["ssim"]) or np.isnan(after["ssim"]):
        ssim = (f"SSIM: none (every region is narrower than {SSIM_MIN_SIDE} pixels, its smallest "
                "window)")
    else:
        ssim = f"SSIM {before['ssim']:.3f} -> {after['ssim']:.3f}"
    return f"{where}{psnr}, {ssim}"
