"""What the plugin's Denoise widget computes, without Qt: methods, noise estimate, denoising, quality.

Wraps :mod:`napari_stnls.denoise` for layers of any layout (an ``axes`` string, default
(T, H, W[, C])) and pixel type: ``sigma`` is in the data's own units, the input is never
modified and the result is a new array of the input's shape and type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from ..._util import Cancelled, resolve_device
from ...denoise import METHODS, NOISE_MODELS, calibrate, estimate_noise
from ...denoise.convert import check_sigma
from ...stream import denoise_dask
from .layout import VideoView
from .lazy import BackgroundFrames
from .regions import validate_regions
from .search import as_float_video, check_flows

__all__ = ["denoise_methods", "method_defaults", "estimate_noise_sigma", "denoise_video", "denoise_lazy",
           "denoise_background", "calibrate_video", "check_noise", "LAZY_METHODS", "LAZY_AXES",
           "NOISE_MODELS", "quality", "describe_quality"]


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


def estimate_noise_sigma(video, axes: str | None = None, model: str = "gaussian"):
    """The noise of a video in its own units (:func:`napari_stnls.denoise.estimate_noise`):
    ``sigma``, or ``(gain, sigma)`` for ``model="poisson-gaussian"``.

    Examples
    --------
    >>> import numpy as np
    >>> noisy = np.random.default_rng(0).normal(1000, 40, (3, 64, 64)).astype(np.uint16)
    >>> round(estimate_noise_sigma(noisy) / 10)
    4
    """
    return estimate_noise(video, axes, model)


def check_noise(noise: str, sigma, gain) -> dict:
    """The denoisers' noise keywords, checked (``sigma`` > 0 for Gaussian noise, >= 0 as the read
    noise of Poisson-Gaussian noise, with ``gain`` > 0)."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise: expected one of {NOISE_MODELS}, got {noise!r}")
    if noise == "gaussian":
        check_sigma(sigma)
        if gain is not None:
            raise ValueError("gain: goes with noise='poisson-gaussian'")
        return {}
    def number(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | float | np.number) and bool(np.isfinite(v))

    if not (number(sigma) and sigma >= 0):
        raise ValueError(f"sigma: expected the read noise, a finite number >= 0 in the data's units, "
                         f"got {sigma!r}")
    if not (number(gain) and gain > 0):
        raise ValueError(f"gain: expected a finite number > 0 (the data's units per photon), got {gain!r}")
    return {"noise": noise, "gain": float(gain)}


def _layout(video, axes: str | None) -> VideoView:
    shape = getattr(video, "shape", None)
    if shape is None:
        raise TypeError(f"video: expected an array, got {type(video).__name__}")
    return VideoView(tuple(shape), axes if axes is not None else _default(shape))


def _default(shape) -> str:
    from ...video.axes import infer_axes

    return infer_axes(tuple(shape))


def denoise_video(
    video,
    method: str = "nlb",
    sigma: float = 20.0,
    *,
    axes: str | None = None,
    noise: str = "gaussian",
    gain: float | None = None,
    regions: Sequence | None = None,
    flows=None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params,
) -> np.ndarray:
    """Denoise a layer's data, whole or only in ``regions``.

    Parameters
    ----------
    video : array, any real type, in the layout ``axes`` names
        Never modified; read whole (a lazy array is computed).
    method : str
        A key of :func:`denoise_methods` (``"nlb"``, ``"nlm"``, ``"skimage"``).
    sigma : float
        Noise standard deviation in the data's units (the read noise with
        ``noise="poisson-gaussian"``).
    axes : str, optional
        ``"YX"``, ``"TYX"``, ``"TYXC"``, ``"ZYX"``, ``"TZYX"``, ...; default (T, H, W[, C]).
        With T and Z, every z-slice's time series is denoised.
    noise, gain
        ``"gaussian"``, or ``"poisson-gaussian"`` with ``gain`` (variance ``gain*x + sigma^2``).
    regions : list of Region or 6-tuples, optional
        Restore only these (pixels outside are copied), in the frames (T, or Z without T)
        and pixels of the video; with T and Z, in every z-slice. None is the whole video.
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
    ndarray, the shape and type of ``video``
        A new array (integers rounded and clipped to their type's range).

    Raises
    ------
    Cancelled
        When ``should_stop()`` returned True; nothing is returned.
    """
    fn = _method(method)
    noise_kw = check_noise(noise, sigma, gain)
    view = _layout(video, axes)
    shape = view.video_shape
    regs = None if regions is None else validate_regions(regions, shape)
    if regs is not None and not regs:
        raise ValueError("regions: empty list; pass None for the whole video")
    fl = check_flows(flows, shape)
    dev = resolve_device(device)
    sig = inspect.signature(fn).parameters
    unknown = [p for p in params if p not in sig]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a parameter of the {method!r} denoiser")
    x = np.asarray(video)
    if fl is not None:
        import torch

        fl = tuple(torch.from_numpy(np.ascontiguousarray(f))[None] for f in fl)
    kw = dict(axes=view.axes, flows=fl, region=regs, device=dev, progress=progress, **noise_kw, **params)
    out = fn(x, float(sigma), should_stop=should_stop, **kw)
    if should_stop is not None and should_stop():
        raise Cancelled("stopped by the caller")
    return out


def calibrate_video(video, method: str = "nlb", sigma: float | None = None, *, axes: str | None = None,
                    noise: str = "gaussian", gain: float | None = None, device: str = "auto",
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, **params):
    """:func:`napari_stnls.denoise.calibrate` for a layer's data: the denoising strength (``sigma``
    from 0.5 to 2 times the noise's) chosen by the J-invariant loss on a central crop.

    Returns
    -------
    Calibration
        ``.params["sigma"]`` is the chosen sigma in the data's units; ``str()`` says what was
        chosen and the losses.
    """
    _method(method)
    if sigma is not None:
        check_noise(noise, sigma, gain)
    view = _layout(video, axes)
    dev = str(resolve_device(device))
    return calibrate(np.asarray(video), method, sigma, axes=view.axes, noise=noise, gain=gain, device=dev,
                     progress=progress, should_stop=should_stop, **params)


LAZY_METHODS = ("nlb", "nlm")  # the denoisers napari_stnls.stream can tile
LAZY_AXES = ("TYX", "TYXC", "ZYX", "ZYXC")  # layouts whose data is one video (T, H, W[, C]) as it is


def _unit(dtype) -> float:
    """The value the stream maps to 1: an integer type's maximum, 1 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


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
        Noise standard deviation on the [0, 1] scale (integers divided by their type's maximum).
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

    Each frame is frame t of :func:`denoise_lazy`, computed when it is first read (the frame
    read last first, then the ``prefetch`` frames after it), in the video's units and type;
    until then it reads as zeros. Unlike :func:`denoise_lazy`, ``sigma`` is in the video's own
    units (as for :func:`denoise_video`). ``on_ready(t)`` / ``on_error(t, exc)`` are called
    from the background thread. ``paused``: nothing is computed until ``resume()`` (see
    ``BackgroundFrames``).

    Returns
    -------
    BackgroundFrames, the shape and type of ``video``
    """
    check_sigma(sigma)
    dtype = np.dtype(video.dtype)
    unit = _unit(dtype)
    lazy = denoise_lazy(video, method, float(sigma) / unit, flows=flows, device=device, **params)
    from dask.local import get_sync  # named ("synchronous"), dask would import dask.distributed

    def compute(t: int) -> np.ndarray:
        y = np.asarray(lazy[t].compute(scheduler=get_sync), dtype=np.float32)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(y.astype(np.float64) * unit), info.min, info.max).astype(dtype)
        return y.astype(dtype, copy=False)

    return BackgroundFrames(compute, lazy.shape, dtype, prefetch=prefetch, on_ready=on_ready,
                            on_error=on_error, paused=paused)


def quality(result, clean, regions: Sequence | None = None, data_range=None) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``result`` against ``clean``, over ``regions`` (default everywhere).

    Both are (T, H, W[, C]), mapped to [0, 1] by ``data_range`` ``(lo, hi)`` (e.g. the layer's
    contrast limits; default: integers divided by their type's maximum, floats as they are),
    so PSNR's peak is ``hi - lo``. PSNR is over all pixels of the regions; SSIM is
    scikit-image's per frame and region crop, averaged weighted by pixel count (windows
    shrink to fit small crops; NaN below 3 pixels).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 16, 16), np.float32); b = a + 0.1
    >>> round(quality(b, a)["psnr"], 3)
    20.0
    """
    from skimage.metrics import structural_similarity

    a = as_float_video(result, data_range=data_range)
    b = as_float_video(clean, data_range=data_range)
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
