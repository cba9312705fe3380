"""scikit-image's NL-means behind the denoisers' interface: the baseline they are compared with."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._util import Steps
from ..ops import Region
from ._prep import dilate, prepare
from .convert import run
from .params import skimage_h

__all__ = ["skimage_nl_means"]


def skimage_nl_means(
    video,
    sigma: float,
    *,
    mode: str = "2d",
    h: float | None = None,
    patch_size: int = 5,
    patch_distance: int = 6,
    axes: str | None = None,
    data_range=None,
    noise: str = "gaussian",
    gain: float | None = None,
    region=None,
    flows=None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """scikit-image's NL-means per frame (``"2d"``) or on the space-time volume (``"3d"``).

    The baseline the other denoisers are compared with: :func:`skimage.restoration.denoise_nl_means`
    in fast mode, with the noise variance subtracted from the patch distances
    (``sigma`` passed on), all channels searched together (any number).

    Parameters
    ----------
    video, sigma, axes, data_range, noise, gain
        As for :func:`~napari_stnls.denoise.nl_means`: any real type, range and layout,
        ``sigma`` in the video's units (``h`` too; with ``noise="poisson-gaussian"``, ``h`` is
        in the stabilised units, where the noise is 1).
    mode : {"2d", "3d"}
        ``"2d"``: every frame on its own (square patches and windows); ``"3d"``: the
        (T, H, W) volume, with cubic patches and windows reaching ``patch_distance`` frames
        before and after (no motion compensation).
    h : float, optional
        Filtering strength, in the video's units; default ``f * sigma`` with ``f``
        interpolated in ``sigma / (hi - lo) * 255`` from
        :data:`~napari_stnls.denoise.params.SKIMAGE_H` (tuned on generated videos: 0.75 at
        sigma 10 down to 0.5 at 40 in 2-D, 0.5 down to 0.3 in 3-D).
    patch_size, patch_distance : int
        Side of the patches and radius of the search window, as in scikit-image.
    region : Region or 6-tuple or list of them, optional
        Restore only these regions; pixels outside every region are returned unchanged.
        Each region is denoised from its own crop, dilated by ``patch_size + patch_distance``
        (in time too for ``"3d"``), so pixels inside it see the same neighbourhood as when
        the whole video is processed except within that distance of the video's border.
    flows, device
        Accepted so that every entry of :data:`~napari_stnls.denoise.METHODS` is called the same way; ignored
        (scikit-image neither follows the motion nor runs on a GPU).
    progress, should_stop : callable, optional
        As for :func:`~napari_stnls.denoise.nl_means`; one unit per frame (``"2d"``) or per video (``"3d"``).

    Returns
    -------
    The type, dtype, shape and layout of ``video`` (integers rounded and clipped).

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = skimage_nl_means(noisy, 0.1, mode="3d")
    >>> out.shape, bool(np.abs(out - clean).mean() < np.abs(noisy - clean).mean())
    ((3, 24, 32), True)
    """
    if h is not None and (isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0):
        raise ValueError(f"h: expected a positive number, got {h!r}")
    return run(_skimage_nl_means, video, sigma, noise=noise, gain=gain, axes=axes, data_range=data_range,
               flows=flows, region=region, progress=progress, should_stop=should_stop, units=("h",),
               mode=mode, h=h, patch_size=patch_size, patch_distance=patch_distance, device=device)


def _skimage_nl_means(
    video,
    sigma: float,
    *,
    mode: str = "2d",
    h=None,
    patch_size: int = 5,
    patch_distance: int = 6,
    region=None,
    flows=None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """:func:`skimage_nl_means` on a float (B, T, C, H, W) tensor (or (T, H, W[, C]) float
    array) whose signal spans about [0, 1], ``sigma`` and ``h`` on that scale."""
    from skimage.restoration import denoise_nl_means

    x, back, _, _, regions = prepare(video, sigma, "cpu", region, None, None)
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode: expected '2d' or '3d', got {mode!r}")
    if h is None:
        h = skimage_h(sigma, mode)
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
        q = dilate(r, pad, x.shape)
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
