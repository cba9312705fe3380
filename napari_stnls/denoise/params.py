"""The denoisers' default parameters per noise level, and the functions that read them."""

from __future__ import annotations

import numpy as np

__all__ = ["COUPLED_CHANNELS", "NLB_SIGMAS", "NLB_TABLE", "NLM_TABLE", "SKIMAGE_H",
           "nl_bayes_params", "nl_means_params", "skimage_h"]

# nl_bayes filters the channels of a group jointly up to this many (but 3, which it takes to
# an opponent colour space and filters one by one in step 1), one by one above.
COUPLED_CHANNELS = 4

# Default parameters of nl_bayes per noise level (sigma relative to the signal's range, times
# 255: sigma on the 0-255 scale for 8-bit data that fills its range), tuned on
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
    # references every 3 pixels, and VNLB's skipping of references already covered by a
    # patch's worth of estimates, at every sigma: on generated videos (tune_nlb.py --whole, 4
    # scenes of 6 frames) 0.16-0.18 dB above every 4 pixels with or without skipping, and above
    # every 2 pixels without skipping, in about the time of every 4 pixels without skipping
    # (docs/benchmarks.md); every 2 pixels with skipping adds 0.07 dB for 1.5x the time
    "stride0": (3, 3, 3, 3, 3),
    "skip": (1.0, 1.0, 1.0, 1.0, 1.0),
    "skip2": (1.0, 1.0, 1.0, 1.0, 1.0),
    # where the frame stands still (its noisy values vary over 3 frames no more than the noise
    # does), still * skip patches' worth of estimates are needed (inf: such references are
    # never skipped). Still texture (bikes' pavement) lost 0.1-0.28 dB to the skipping; moving
    # texture (the generated scenes) keeps its gain. 3 up to sigma 30 holds bikes within 0.1 dB
    # of its table as inf does (-0.02 / -0.06 / -0.08 dB at 10 / 20 / 30) in less time (at 540p on
    # an H100, sigma 20: 2.46 frames/s against 1.95); sigma 50 needs inf (docs/benchmarks.md)
    "still": (3.0, 3.0, 3.0, float("inf"), float("inf")),
    # references where the flow is longer than fast_motion pixels a frame or fails the
    # forward-backward check use one-frame patches of side ps_fast (both steps). Off by
    # default: 3 px gained 0.13-0.21 dB on crops of real fast motion and 0.10-0.18 dB on
    # bunny_pan, but lost 0.19 dB on bikes at sigma 30, whose TV-L1 flows on the noisy frames
    # exceed 3 px even where the scene stands still (docs/benchmarks.md)
    "fast_motion": (float("inf"),) * 5,
    "ps_fast": (7, 7, 7, 7, 7),
    "pt_fast": (1, 1, 1, 1, 1),
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

# skimage_nl_means' default h / sigma per noise level (NLB_SIGMAS), tuned on generated
# videos with benchmarks/tune_nlb.py (--method skimage2d / skimage3d).
SKIMAGE_H: dict[str, tuple[float, ...]] = {
    "2d": (0.75, 0.6, 0.55, 0.5, 0.5),
    "3d": (0.5, 0.4, 0.35, 0.3, 0.3),
}


def nl_means_params(sigma: float, frames: int, ws: int = 9, wt: int = 2) -> dict:
    """The patch side ``ps`` and neighbour count ``k`` that ``nl_means`` uses for ``sigma``
    relative to the signal's range (``sigma / (hi - lo)``).

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


def nl_bayes_params(sigma: float, channels: int = 3) -> dict:
    """The default parameters of ``nl_bayes`` for noise ``sigma`` relative to the signal's range
    (``sigma / (hi - lo)``: the [0, 1] scale), for a video of ``channels`` channels.

    Interpolated linearly (in sigma*255) between the rows of :data:`NLB_TABLE`, tuned on
    generated videos (see ``benchmarks/tune_nlb.py``); clamped outside 10..50.

    Examples
    --------
    >>> p = nl_bayes_params(20 / 255)
    >>> sorted(p)  # doctest: +NORMALIZE_WHITESPACE
    ['fast_motion', 'k', 'k2', 'ps', 'ps2', 'ps_fast', 'pt', 'pt_fast', 'skip', 'skip2', 'still', 'stride0',
     'thresh', 'thresh2', 'ws', 'wt']
    """
    s = min(max(float(sigma) * 255, NLB_SIGMAS[0]), NLB_SIGMAS[-1])
    out = {}
    for name, values in NLB_TABLE.items():
        v = float(np.interp(s, NLB_SIGMAS, values))
        out[name] = v if name.startswith(("thresh", "skip", "fast", "still")) else int(round(v))
    for name in ("ps", "ps2", "ps_fast", "ws"):  # odd sides
        out[name] += 1 - out[name] % 2
    joint = channels if channels <= COUPLED_CHANNELS else 1  # values per pixel of a filtered patch
    d = out["pt"] * out["ps"] ** 2 * (1 if channels == 3 else joint)
    d_fast = out["pt_fast"] * out["ps_fast"] ** 2
    out["k"] = max(out["k"], d + 1, d_fast * (1 if channels == 3 else joint) + 1)
    out["k2"] = max(out["k2"], max(out["pt"] * out["ps2"] ** 2, d_fast) * joint + 1)
    return out


def skimage_h(sigma: float, mode: str = "2d") -> float:
    """The filtering strength ``h`` :func:`~napari_stnls.denoise.skimage_nl_means` uses for ``sigma``.

    ``f * sigma``, with ``f`` interpolated in sigma*255 from :data:`SKIMAGE_H` (``mode`` "2d"
    or "3d"), clamped outside 10..50.

    Examples
    --------
    >>> round(skimage_h(20 / 255, "2d") * 255, 6)
    12.0
    """
    if mode not in SKIMAGE_H:
        raise ValueError(f"mode: expected one of {tuple(SKIMAGE_H)}, got {mode!r}")
    return float(np.interp(float(sigma) * 255, NLB_SIGMAS, SKIMAGE_H[mode])) * float(sigma)
