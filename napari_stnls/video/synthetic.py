"""A small real-scene test video with known sub-pixel motion and known optical flow.

No napari or Qt here: :func:`sample_video` only needs numpy, scipy and scikit-image,
and :meth:`SampleVideo.to_torch` turns the result into the tensors the ops take.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["SampleVideo", "sample_video"]

# Where the crop is centred in the half-resolution astronaut (row, column): the face,
# the helmet ring, the suit and the shuttle, i.e. flat areas, edges and texture.
_SCENE_CENTRE = (104.0, 140.0)
_MARGIN = 3.0  # pixels kept between the sampled coordinates and the scene's border


@dataclass(frozen=True)
class SampleVideo:
    """A video, its noisy version and its exact optical flow (numpy, channels last).

    Attributes
    ----------
    clean : ndarray, float32, shape (T, H, W, 3)
        RGB frames in [0, 1].
    noisy : ndarray, float32, shape (T, H, W, 3)
        ``clean`` plus white Gaussian noise of standard deviation ``sigma`` (not clipped).
    fflow : ndarray, float32, shape (T, 2, H, W)
        Forward flow in pixels, channel 0 = dx (columns), channel 1 = dy (rows): the
        content at position p of frame t is at ``p + fflow[t](p)`` in frame t+1.
        ``fflow[T-1]`` is zero.
    bflow : ndarray, float32, shape (T, 2, H, W)
        Backward flow: the content at p of frame t is at ``p + bflow[t](p)`` in frame
        t-1. ``bflow[0]`` is zero.
    sigma : float
        Noise standard deviation (intensities in [0, 1]).
    """

    clean: np.ndarray
    noisy: np.ndarray
    fflow: np.ndarray
    bflow: np.ndarray
    sigma: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, C) of the frames."""
        return tuple(self.clean.shape)

    def to_torch(self, device=None, dtype=None):
        """The video as the ops expect it: ``(clean, noisy, (fflow, bflow))``.

        ``clean`` and ``noisy`` are (B=1, T, C=3, H, W) and each flow (1, T, 2, H, W),
        on ``device`` (default CPU) in ``dtype`` (default float32), ready for
        ``search(noisy, noisy, flows=(fflow, bflow))``.
        """
        import torch

        dtype = torch.float32 if dtype is None else dtype

        def conv(a):
            return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0).to(device=device, dtype=dtype)

        clean = conv(self.clean.transpose(0, 3, 1, 2))
        noisy = conv(self.noisy.transpose(0, 3, 1, 2))
        return clean, noisy, (conv(self.fflow), conv(self.bflow))


@lru_cache(maxsize=4)
def _scene(scale: float) -> np.ndarray:
    """The astronaut photograph as float32 RGB in [0, 1], rescaled by ``scale``."""
    from skimage import data
    from skimage.transform import rescale
    from skimage.util import img_as_float32

    img = img_as_float32(data.astronaut())
    if scale != 1.0:
        img = rescale(img, scale, channel_axis=-1, anti_aliasing=True, order=3, mode="reflect")
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    img.setflags(write=False)
    return img


def _rot(theta: float) -> np.ndarray:
    """Rotation matrix acting on (y, x) column vectors."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _check_number(v, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    v = float(v)
    if positive and v <= 0:
        raise ValueError(f"{name}: expected a positive number, got {v}")
    if nonneg and v < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {v}")
    return v


def _check_int(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def sample_video(
    n_frames: int = 5,
    size: tuple[int, int] = (128, 160),
    sigma: float = 20 / 255,
    seed: int = 0,
    *,
    shift: tuple[float, float] = (1.3, 0.6),
    rotation: float = 0.5,
    zoom: float = 1.005,
) -> SampleVideo:
    """A real scene (scikit-image's astronaut) moving with a known smooth motion, plus noise.

    Frame t shows the scene after t steps of one fixed similarity motion about the
    (moving) frame centre: a rotation by ``rotation`` degrees, a zoom by ``zoom`` and
    a translation by ``shift`` pixels per frame. Frames are resampled from the
    half-resolution photograph with cubic splines (``scipy.ndimage.map_coordinates``,
    ``order=3``) from a crop larger than the frame, so the borders hold real content.
    The flows are the exact (analytic) motion between consecutive frames, so the
    content at p in frame t is at ``p + fflow[t](p)`` in frame t+1 and at
    ``p + bflow[t](p)`` in frame t-1.

    Parameters
    ----------
    n_frames : int
        T, the number of frames (>= 1).
    size : (int, int)
        (H, W) of a frame, each >= 8. Large sizes or long videos use the
        full-resolution photograph; a ValueError says when even that is too small.
    sigma : float
        Standard deviation of the additive white Gaussian noise (intensities in
        [0, 1]); 0 gives ``noisy == clean``.
    seed : int
        Seed of the noise (numpy ``default_rng``).
    shift : (float, float)
        Translation per frame in pixels, (dx, dy).
    rotation : float
        Rotation per frame in degrees.
    zoom : float
        Scale factor per frame (> 0; 1 is none).

    Returns
    -------
    SampleVideo
        ``clean``/``noisy`` (T, H, W, 3) float32, ``fflow``/``bflow`` (T, 2, H, W)
        float32 with channel 0 = dx, 1 = dy, and ``sigma``.

    Examples
    --------
    >>> from napari_stnls.video.synthetic import sample_video
    >>> from napari_stnls.ops import search, Region
    >>> vid = sample_video(n_frames=3, size=(32, 40))
    >>> vid.clean.shape, vid.fflow.shape
    ((3, 32, 40, 3), (3, 2, 32, 40))
    >>> clean, noisy, flows = vid.to_torch()
    >>> noisy.shape
    torch.Size([1, 3, 3, 32, 40])
    >>> dists, inds = search(noisy, noisy, ps=5, ws=7, wt=1, k=4, flows=flows,
    ...                      region=Region(1, 2, 0, 32, 0, 40), stride0=4)
    >>> inds.shape  # (B, nheads, Q, k, 3): 8 x 10 queries in frame 1
    torch.Size([1, 1, 80, 4, 3])
    """
    T = _check_int(n_frames, "n_frames", 1)
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise ValueError(f"size: expected a pair (H, W) of ints, got {size!r}")
    H = _check_int(size[0], "size", 8)
    W = _check_int(size[1], "size", 8)
    sigma = _check_number(sigma, "sigma", nonneg=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__len__") or len(shift) != 2:
        raise ValueError(f"shift: expected a pair (dx, dy) of numbers, got {shift!r}")
    dx = _check_number(shift[0], "shift")
    dy = _check_number(shift[1], "shift")
    theta = math.radians(_check_number(rotation, "rotation"))
    z = _check_number(zoom, "zoom", positive=True)

    # Motion of frame-0 positions into frame t: G_t(p) = c + z^t R(t theta)(p - c) + t v.
    c = np.array([(H - 1) / 2.0, (W - 1) / 2.0])
    v = np.array([dy, dx])
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    grid = np.stack([yy, xx])  # (2, H, W), (y, x)

    def apply(A, q):  # A (2, 2) on (2, H, W)
        return np.einsum("ij,jhw->ihw", A, q)

    def source(q):  # frame t at q shows frame 0 at G_t^{-1}(q) = c + z^-t R(-t theta)(q - c - t v)
        return np.stack(
            [
                c[:, None, None] + apply(z ** (-t) * _rot(-t * theta), q - (c + t * v)[:, None, None])
                for t in range(T)
            ]
        )  # (T, 2, h, w), positions in frame-0 coordinates

    # the map is affine: its extremes over the frame are at the frame's corners, so the scene
    # is checked before the (T, 2, H, W) positions are computed
    corners = source(grid[:, :: H - 1, :: W - 1])
    lo = corners.reshape(T, 2, -1).min(axis=(0, 2))
    hi = corners.reshape(T, 2, -1).max(axis=(0, 2))
    for scale in (0.5, 1.0):
        scene = _scene(scale)
        Hs, Ws = scene.shape[:2]
        need = hi - lo + 2 * _MARGIN
        if need[0] <= Hs - 1 and need[1] <= Ws - 1:
            break
    else:
        raise ValueError(
            f"size: frames of {H}x{W} moving over {T} frames (n_frames) need a "
            f"{math.ceil(need[0])}x{math.ceil(need[1])} region of the {Hs}x{Ws} scene; "
            "use a smaller size, fewer frames or less motion"
        )
    # Frame-0 coordinates -> scene coordinates: centre the used box on the scene's subject
    # (scaled with the scene), then slide it to stay inside the scene.
    centre = np.array(_SCENE_CENTRE) * (scale / 0.5)
    off = centre - (lo + hi) / 2
    off = np.clip(off, _MARGIN - lo, np.array([Hs - 1, Ws - 1]) - _MARGIN - hi)

    src = source(grid)
    clean = np.empty((T, H, W, 3), np.float32)
    for t in range(T):
        coords = src[t] + off[:, None, None]
        for ch in range(3):
            clean[t, :, :, ch] = ndimage.map_coordinates(scene[:, :, ch], coords, order=3, mode="reflect")
    np.clip(clean, 0.0, 1.0, out=clean)

    # Flows between consecutive frames: with u = p - c - t v,
    # G_{t+1} G_t^{-1}(p) = c + z R(theta) u + (t+1) v,  G_{t-1} G_t^{-1}(p) = c + R(-theta) u / z + (t-1) v.
    fflow = np.zeros((T, 2, H, W), np.float32)
    bflow = np.zeros((T, 2, H, W), np.float32)
    fwd, bwd = z * _rot(theta), _rot(-theta) / z
    for t in range(T):
        u = grid - (c + t * v)[:, None, None]
        if t < T - 1:
            d = c[:, None, None] + apply(fwd, u) + ((t + 1) * v)[:, None, None] - grid
            fflow[t] = d[::-1]  # (dy, dx) -> (dx, dy)
        if t > 0:
            d = c[:, None, None] + apply(bwd, u) + ((t - 1) * v)[:, None, None] - grid
            bflow[t] = d[::-1]

    rng = np.random.default_rng(int(seed))
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32) if sigma > 0 else clean.copy()
    return SampleVideo(clean=clean, noisy=noisy.astype(np.float32), fflow=fflow, bflow=bflow, sigma=sigma)
