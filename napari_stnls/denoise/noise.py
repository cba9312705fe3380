"""Noise models: the generalised Anscombe transform and its exact unbiased inverse, and the
estimation of a video's noise (Gaussian, or Poisson-Gaussian: variance ``gain*x + sigma^2``).

Poisson-Gaussian noise, ``y = gain * Poisson(x / gain) + N(0, sigma^2)`` (photon counts times
the camera's gain, plus read noise), has a variance that grows with the signal. The
generalised Anscombe transform (GAT) :func:`anscombe` makes it close to Gaussian of variance 1,
the Gaussian denoisers run on that, and :func:`anscombe_inverse` takes the result back with
the *exact unbiased* inverse (Makitalo and Foi, 2013): the inverse of ``x -> E[GAT(y) | x]``,
computed here from the distribution itself (a Poisson sum and Gauss-Hermite quadrature), not
the algebraic inverse, which is biased at low counts.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .frames import as_videos, sample_frames

__all__ = ["anscombe", "anscombe_inverse", "estimate_noise", "NOISE_MODELS"]

NOISE_MODELS = ("gaussian", "poisson-gaussian")
_TABLE_MAX = 300.0  # normalised signal (x / gain) above which the closed form is used


def _check(gain, sigma) -> tuple[float, float]:
    for name, v, low in (("gain", gain, "> 0"), ("sigma", sigma, ">= 0")):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)) or not (float(v) > 0 if name == "gain" else float(v) >= 0):
            raise ValueError(f"{name}: expected a finite number {low}, got {v!r}")
    return float(gain), float(sigma)


def anscombe(y, gain: float, sigma: float) -> np.ndarray:
    """The generalised Anscombe transform ``2 * sqrt(max(y / gain + 3/8 + (sigma / gain)^2, 0))``.

    Poisson-Gaussian data of mean ``x`` (variance ``gain*x + sigma^2``) comes out with a
    variance close to 1 (within 1% from ``x / gain`` of about 3 on).

    Parameters
    ----------
    y : array-like
        Noisy values, in the data's units.
    gain, sigma : float
        The noise model: variance ``gain * x + sigma^2`` at mean ``x``.

    Returns
    -------
    ndarray of float64, the shape of ``y``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = 2.0 * rng.poisson(50 / 2.0, 200_000) + rng.normal(0, 3, 200_000)
    >>> round(float(anscombe(y, 2.0, 3.0).std()), 2)
    1.0
    """
    gain, sigma = _check(gain, sigma)
    s = (sigma / gain) ** 2
    return 2.0 * np.sqrt(np.maximum(np.asarray(y, np.float64) / gain + 0.375 + s, 0.0))


def _closed_form(d: np.ndarray, s2: float) -> np.ndarray:
    """Makitalo and Foi's closed-form approximation of the exact unbiased inverse (normalised)."""
    d = np.maximum(d, 1e-3)
    r = math.sqrt(1.5)
    return d**2 / 4 + r / 4 / d - 11 / 8 / d**2 + 5 * r / 8 / d**3 - 1 / 8 - s2


@functools.lru_cache(maxsize=32)
def _expectation_table(s: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, E[GAT(y) | x])`` for normalised signals ``x`` in [0, _TABLE_MAX] and read noise ``s``
    (both divided by the gain): the Poisson sum exact, the Gaussian by 60-point Gauss-Hermite."""
    x = np.concatenate([np.linspace(0, 2, 81), np.geomspace(2, _TABLE_MAX, 400)[1:]])
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    kmax = int(_TABLE_MAX + 12 * math.sqrt(_TABLE_MAX) + 30)
    k = np.arange(kmax + 1, dtype=np.float64)
    # E over the Gaussian of 2 sqrt(max(k + n + 3/8 + s^2, 0)), n ~ N(0, s^2), for every k
    inner = 2.0 * np.sqrt(np.maximum(k[:, None] + s * nodes[None, :] + 0.375 + s * s, 0.0)) @ weights
    from scipy.stats import poisson

    pmf = poisson.pmf(k[None, :], x[:, None])  # (len(x), kmax + 1)
    return x, pmf @ inner


def anscombe_inverse(d, gain: float, sigma: float) -> np.ndarray:
    """The exact unbiased inverse of :func:`anscombe`: the signal ``x`` with ``E[GAT(y) | x] = d``.

    For ``x / gain`` up to 300 it is read from the expectation computed from the noise's
    distribution (interpolated), above from Makitalo and Foi's closed form (which differs
    from it by 3e-5 relative there, and is shifted to meet it); values below
    ``E[GAT(y) | 0]`` give 0.

    Parameters
    ----------
    d : array-like
        Denoised values in the transformed domain (estimates of ``E[GAT(y) | x]``).
    gain, sigma : float
        As for :func:`anscombe`.

    Returns
    -------
    ndarray of float64, ``x`` in the data's units, >= 0.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = 2.0 * rng.poisson(3 / 2.0, 400_000) + rng.normal(0, 1, 400_000)  # mean 3: low counts
    >>> round(float(anscombe_inverse(anscombe(y, 2.0, 1.0).mean(), 2.0, 1.0)), 1)
    3.0
    """
    gain, sigma = _check(gain, sigma)
    s = sigma / gain
    xs, es = _expectation_table(round(s, 12))
    d = np.asarray(d, np.float64)
    out = np.interp(d, es, xs, left=0.0)
    hi = d > es[-1]
    if np.any(hi):  # the closed form, shifted to meet the table (by 0.008 at x / gain = 300)
        shift = float(_closed_form(es[-1:], s * s)[0]) - xs[-1]
        out = np.where(hi, _closed_form(d, s * s) - shift, out)
    return out * gain


def _details(frames):
    """At every pixel of every frame and channel, 3 pixels from the border or more: (local
    means, details, activity). The detail is the 3 x 3 neighbourhood weighted by
    ``[1, -2, 1]`` outer ``[1, -2, 1]`` over 6: white noise keeps its variance, and a smooth
    signal (any sum of terms ``x^a y^b`` with ``a < 2`` or ``b < 2``: planes, ramps,
    parabolas along one axis) gives 0. The activity is what the four 3 x 3 neighbourhoods
    next to it show of structure (their means' differences and their own details): it does
    not depend on the pixel's own neighbourhood's noise."""
    k = np.array([1.0, -2.0, 1.0])
    kk = np.outer(k, k) / 6.0
    means, details, activity = [], [], []
    for f in frames:
        H, W = f.shape[:2]
        d = sum(kk[a, b] * f[a:H - 2 + a, b:W - 2 + b] for a in range(3) for b in range(3))
        m = sum(f[a:H - 2 + a, b:W - 2 + b] for a in range(3) for b in range(3)) / 9.0
        ad = np.abs(d)
        c = (slice(3, -3), slice(3, -3))
        g = (np.abs(m[6:, 3:-3] - m[:-6, 3:-3]) + np.abs(m[3:-3, 6:] - m[3:-3, :-6])
             + ad[6:, 3:-3] + ad[:-6, 3:-3] + ad[3:-3, 6:] + ad[3:-3, :-6])
        means.append(m[c].ravel())
        details.append(d[c].ravel())
        activity.append(g.ravel())
    return np.concatenate(means), np.concatenate(details), np.concatenate(activity)


def _smooth(idx: np.ndarray, activity: np.ndarray, keep: float = 0.3) -> np.ndarray:
    """The ``keep`` fraction of ``idx`` whose activity is lowest (flat parts: texture and edges,
    which leak into the details, left out)."""
    if len(idx) < 8:
        return idx
    cut = np.quantile(activity[idx], keep)
    return idx[activity[idx] <= cut]


def _mad_sigma(v: np.ndarray) -> float:
    """A robust standard deviation: the median absolute deviation gives a first one, then the
    values within 3 of it give the standard deviation of a normal truncated there (about twice
    as efficient as the median absolute deviation alone)."""
    med = np.median(v)
    s0 = 1.4826 * np.median(np.abs(v - med))
    if not s0 > 0:
        return float(s0)
    inner = v[np.abs(v - med) < 3 * s0]
    return float(np.sqrt(np.mean((inner - med) ** 2) / 0.97333))


def estimate_noise(video, axes: str | None = None, model: str = "gaussian"):
    """The noise of a video, from the finest details of its flat parts (no clean reference).

    Read from up to 16 frames spread over the video. The 3 x 3 neighbourhood of each pixel
    gives a detail that keeps white noise's variance and is 0 on smooth signals, and its
    mean. The pixels are grouped by that mean into 24 groups of equal size, and in each group
    the 30% whose surroundings show the least structure are kept (texture and edges would leak into
    the details). ``"gaussian"``: ``sigma`` is the median absolute deviation of the kept
    details, scaled to a standard deviation. ``"poisson-gaussian"``: each group's variance is
    estimated that way, and ``variance = gain * mean + sigma^2`` is fitted to them by weighted
    least squares (after Foi et al., 2008). Strong fine texture leaks in at low noise: on
    natural scenes the Gaussian estimate is about 13% high at sigma 5/255 (1% at 20/255), and
    the Poisson-Gaussian gain up to 20% high; on smooth content (fluorescence spots, ramps) both
    are within a few percent.

    Parameters
    ----------
    video : ndarray or Tensor
        Any real type and layout (``axes``, as for the denoisers), in the data's units.
    axes : str, optional
        The array's layout; None infers it from the number of dimensions.
    model : {"gaussian", "poisson-gaussian"}

    Returns
    -------
    float or (float, float)
        ``sigma``, or ``(gain, sigma)``, in the data's units.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = np.tile(np.linspace(100, 2000, 64), (4, 64, 1))
    >>> noisy = 1.5 * rng.poisson(clean / 1.5) + rng.normal(0, 20, clean.shape)
    >>> gain, sigma = estimate_noise(noisy, model="poisson-gaussian")
    >>> bool(abs(gain - 1.5) < 0.15 and abs(sigma - 20) < 2)
    True
    """
    if model not in NOISE_MODELS:
        raise ValueError(f"model: expected one of {NOISE_MODELS}, got {model!r}")
    frames = [f.astype(np.float64) for f in sample_frames(as_videos(video, axes), 16)]
    H, W = frames[0].shape[:2]
    if min(H, W) < 10:
        raise ValueError(f"video: frames of {H}x{W} pixels are too small to estimate the noise")
    means, details, activity = _details(frames)
    order = np.argsort(means)
    groups = [_smooth(g, activity) for g in np.array_split(order, 24)]
    if model == "gaussian":
        return _mad_sigma(details[np.concatenate(groups)])
    groups = [g for g in groups if len(g) >= 16]
    lev = np.array([means[g].mean() for g in groups])
    var = np.array([_mad_sigma(details[g]) ** 2 for g in groups])
    n = np.array([len(g) for g in groups], np.float64)
    w = n / np.maximum(var, 1e-30) ** 2  # the variance of a variance estimate grows as its square
    A = np.stack([lev, np.ones_like(lev)], 1) * np.sqrt(w)[:, None]
    (gain, s2), *_ = np.linalg.lstsq(A, var * np.sqrt(w), rcond=None)
    if not gain > 0:
        raise ValueError("video: no signal-dependent noise found (fitted gain <= 0); use model='gaussian'")
    return float(gain), float(math.sqrt(max(s2, 0.0)))
