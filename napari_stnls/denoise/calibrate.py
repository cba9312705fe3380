"""Self-calibration of a denoiser without a clean reference: the J-invariant (Noise2Self) loss.

A denoiser made *J-invariant*, whose output at a pixel does not see that pixel's noisy value,
has ``E|f(y) - y|^2 = E|f(y) - x|^2 + E|noise|^2``: its error against the noisy video itself
ranks parameters as the error against the unknown clean one would (Batson and Royer, 2019;
scikit-image's ``calibrate_denoiser``). :func:`calibrate` makes any of the denoisers
J-invariant by masking: the pixels of one grid of spacing ``stride`` (in every frame and
channel) are replaced by the mean of their four neighbours, the video is denoised, and the
output is compared with the noisy video on those pixels only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._util import Steps
from .convert import check_sigma, resolve_range
from .frames import as_videos
from .noise import NOISE_MODELS, estimate_noise

__all__ = ["calibrate", "Calibration", "SIGMA_FACTORS"]

SIGMA_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0)  # the default grid: these times the noise's sigma


@dataclass
class Calibration:
    """What :func:`calibrate` chose and why.

    Attributes
    ----------
    method : str
        The denoiser's name (a key of :data:`~napari_stnls.denoise.METHODS`) or its function name.
    params : dict
        The keyword arguments to denoise the whole video with: the chosen candidate, with
        ``sigma`` (and ``gain``, ``noise``) and the fixed parameters.
    losses : list of (dict, float)
        Every candidate of the grid and its J-invariant loss (mean squared difference to the
        noisy video on the masked pixels, in the video's units squared), in grid order.
    noise : dict
        The noise model used: ``{"model": ..., "sigma": ...}`` (and ``"gain"``), with
        ``"estimated": True`` where it was estimated.
    """

    method: str
    params: dict
    losses: list = field(default_factory=list)
    noise: dict = field(default_factory=dict)

    @property
    def best(self) -> dict:
        """The chosen candidate (the grid's names only)."""
        return min(self.losses, key=lambda c: c[1])[0]

    def __str__(self) -> str:
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best.items())
        tried = "; ".join(", ".join(f"{k}={_fmt(v)}" for k, v in c.items()) + f": {loss:.4g}"
                          for c, loss in self.losses)
        how = "estimated" if self.noise.get("estimated") else "given"
        noise = ", ".join(f"{k} {_fmt(v)}" for k, v in self.noise.items() if k not in ("model", "estimated"))
        model = self.noise.get("model")
        return (f"{self.method}: chose {best} by the J-invariant loss ({model} noise, {noise} {how}); "
                f"tried {tried}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _crop(video, axes, max_frames: int, max_side: int):
    """A central sub-video (T', H', W', C) of the first video of ``video`` (a z-slice's time
    series for TZYX), at most ``max_frames`` frames and ``max_side`` rows and columns."""
    v = as_videos(video, axes)
    n = v.shape[0] // 2
    T, H, W = v.shape[1:4]
    t0 = max(0, (T - max_frames) // 2)
    y0, x0 = max(0, (H - max_side) // 2), max(0, (W - max_side) // 2)
    c = v[n, t0:t0 + max_frames, y0:y0 + max_side, x0:x0 + max_side]
    if hasattr(c, "detach"):
        c = c.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(c))


def _masks(stride: int, count: int) -> list[tuple[int, int]]:
    """``count`` of the ``stride**2`` grid offsets (row, column), spread over them: the diagonal
    first ((0, 0), (1, 1), ...), then shifted diagonals."""
    n = stride * stride
    return [divmod((k * (stride + 1)) % n, stride) for k in range(min(count, n))]


def _masked(v: np.ndarray, i: int, j: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``v`` (T, H, W, C) float64 with the pixels ``y % stride == i, x % stride == j`` replaced by
    the mean of their four neighbours (mirrored at the border), and the mask."""
    p = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    nb = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]) / 4
    mask = np.zeros(v.shape[1:3], bool)
    mask[i::stride, j::stride] = True
    out = v.copy()
    out[:, mask] = nb[:, mask]
    return out, mask


def calibrate(
    video,
    method: str | Callable = "nlb",
    sigma: float | None = None,
    *,
    axes: str | None = None,
    noise: str = "gaussian",
    gain: float | None = None,
    grid: dict | None = None,
    stride: int = 4,
    masks: int = 4,
    max_frames: int = 5,
    max_side: int = 96,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params,
) -> Calibration:
    """Pick a denoiser's parameters by the J-invariant (Noise2Self) loss, without a clean video.

    Every candidate of ``grid`` denoises a central crop of the video (at most ``max_frames``
    frames of ``max_side`` x ``max_side`` pixels) ``masks`` times, each time with the pixels of
    one grid of spacing ``stride`` replaced by their neighbours' mean; the loss is the mean
    squared difference between the output and the noisy video on those pixels. The candidate
    with the lowest loss wins: it estimates the lowest error against the clean video.

    Parameters
    ----------
    video : ndarray or Tensor
        Any real type, range and layout (``axes``), as for the denoisers.
    method : str or callable
        A key of :data:`~napari_stnls.denoise.METHODS` (``"nlb"``, ``"nlm"``, ``"skimage"``) or a
        denoiser with their signature.
    sigma : float, optional
        The noise's standard deviation in the video's units (the read noise with
        ``noise="poisson-gaussian"``); None estimates it (:func:`estimate_noise`).
    axes, noise, gain
        As for the denoisers; ``gain`` None with ``"poisson-gaussian"`` is estimated too.
    grid : dict of str to sequence, optional
        Candidates: every combination of the values given for each parameter (``sigma``
        among them). Default: ``sigma`` at :data:`SIGMA_FACTORS` times the noise's (0.5 to 2).
    stride, masks : int
        Spacing of the masked grid, and how many of its ``stride**2`` offsets are used (each
        one a denoising per candidate): 4 and 4, a quarter of the pixels scored.
    max_frames, max_side : int
        Size of the crop calibrated on.
    progress, should_stop : callable, optional
        ``progress(done, total)`` after each denoising; ``should_stop()`` polled before each.
    **params
        Fixed parameters of the denoiser (``ws``, ``k``, ``device``, ...).

    Returns
    -------
    Calibration
        ``.params`` to denoise the whole video with (``method(video, **c.params)``),
        ``.losses`` of every candidate; ``str(c)`` says what was chosen.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = np.tile(np.sin(np.linspace(0, 6, 40)), (3, 32, 1))
    >>> noisy = clean + rng.normal(0, 0.2, clean.shape)
    >>> c = calibrate(noisy, "nlm", 0.2, grid={"sigma": [0.02, 0.2]}, ws=5, k=8, device="cpu")
    >>> c.best                                  # 0.02 would leave most of the noise
    {'sigma': 0.2}
    """
    from . import METHODS

    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method: expected one of {tuple(METHODS)} or a denoiser, got {method!r}")
        fn, name = METHODS[method], method
    elif callable(method):
        fn, name = method, getattr(method, "__name__", type(method).__name__)
    else:
        raise TypeError(f"method: expected a name or a callable, got {type(method).__name__}")
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise: expected one of {NOISE_MODELS}, got {noise!r}")
    for nm, v, lo in (("stride", stride, 2), ("masks", masks, 1), ("max_frames", max_frames, 1),
                      ("max_side", max_side, 8)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{nm}: expected an int >= {lo}, got {v!r}")
    info: dict = {"model": noise}
    if noise == "poisson-gaussian":
        if sigma is None or gain is None:
            g, s = estimate_noise(video, axes, "poisson-gaussian")
            gain, sigma = (g if gain is None else gain), (s if sigma is None else sigma)
            info["estimated"] = True
        info.update(gain=float(gain), sigma=float(sigma))
        params = {**params, "noise": noise, "gain": float(gain)}
    else:
        if sigma is None:
            sigma = estimate_noise(video, axes, "gaussian")
            info["estimated"] = True
        sigma = check_sigma(sigma)
        info["sigma"] = float(sigma)
    if grid is None:
        grid = {"sigma": [float(f) * float(sigma) for f in SIGMA_FACTORS]}
    if not isinstance(grid, dict) or not grid or any(not len(list(v)) for v in grid.values()):
        raise ValueError(f"grid: expected a dict of parameter names to non-empty sequences, got {grid!r}")
    keys = list(grid)
    values = itertools.product(*[list(grid[k]) for k in keys])
    combos = [dict(zip(keys, vals, strict=True)) for vals in values]
    crop = _crop(video, axes, max_frames, max_side)
    v = crop.astype(np.float64)
    if min(v.shape[1:3]) < stride + 1:
        raise ValueError(f"video: frames of {v.shape[1]}x{v.shape[2]} pixels are too small for stride "
                         f"{stride}")
    dr = params.pop("data_range", None)
    dr = resolve_range(dr, v[None]) if noise == "gaussian" or dr is not None else None  # one mapping
    offsets = _masks(stride, masks)
    steps = Steps(len(combos) * len(offsets), progress, should_stop)
    losses = []
    for cand in combos:
        kw = {**params, "sigma": sigma, **cand}
        s = kw.pop("sigma")
        err = count = 0.0
        for i, j in offsets:
            steps.check()
            x, mask = _masked(v, i, j, stride)
            out = np.asarray(fn(x, s, axes="TYXC", data_range=dr, **kw), np.float64)
            err += float(((out - v)[:, mask] ** 2).sum())
            count += float(v[:, mask].size)
            steps.advance()
        losses.append(({k: _plain(val) for k, val in cand.items()}, err / count))
    best = min(losses, key=lambda c: c[1])[0]
    chosen = {"sigma": float(sigma), **params, **best}
    return Calibration(name, chosen, losses, info)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
