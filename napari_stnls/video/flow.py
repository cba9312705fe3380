"""Optical flow between consecutive frames, in the layout search expects.

``fflow[t]`` moves frame t to t+1 and ``bflow[t]`` moves frame t to t-1, channel 0 = dx and
channel 1 = dy: a point p of frame t is at p + fflow[t](p) in frame t+1.

Methods: scikit-image's TV-L1 (``"tvl1"``) and iterative Lucas-Kanade (``"ilk"``), and
OpenCV's DIS (``"dis"``, listed in :data:`METHODS` only when ``opencv-python-headless`` is
installed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import torch

from .._util import Steps

__all__ = ["compute_flows", "METHODS"]

HAS_OPENCV = importlib.util.find_spec("cv2") is not None
METHODS: tuple[str, ...] = ("tvl1", "ilk") + (("dis",) if HAS_OPENCV else ())


def _dis(preset: str = "medium") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """OpenCV DIS as a function ``(reference, moving) -> v`` with scikit-image's convention
    (``moving(p + v(p)) ~ reference(p)``, ``v = (rows, cols)``)."""
    import cv2

    dis = cv2.DISOpticalFlow_create(
        {"fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
         "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST}[preset])

    def to_u8(f: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(f * 255), 0, 255).astype(np.uint8)

    def fn(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
        f = dis.calc(to_u8(ref), to_u8(mov), None)  # (H, W, 2): dx, dy with mov(p + f) ~ ref(p)
        return np.stack([f[..., 1], f[..., 0]])

    return fn


def compute_flows(
    video: np.ndarray,
    method: str = "tvl1",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward flows of a video.

    Parameters
    ----------
    video : ndarray, shape (T, H, W) or (T, H, W, C)
        Frames with values in [0, 1]; colour frames are converted to grey first.
    method : str
        One of :data:`METHODS`: ``"tvl1"`` (scikit-image TV-L1, accurate), ``"ilk"``
        (scikit-image iterative Lucas-Kanade, faster) or ``"dis"`` (OpenCV DIS, medium
        preset, fastest; needs ``opencv-python-headless``).
    progress : callable, optional
        ``progress(done, total)`` after each flow field (``total = 2 * (T - 1)``).
    should_stop : callable, optional
        Polled before each flow field; :class:`~napari_stnls._util.Cancelled` is
        raised when it returns True.

    Returns
    -------
    (fflow, bflow) : Tensor, each (1, T, 2, H, W) float32
        ``fflow[:, T-1]`` and ``bflow[:, 0]`` are zero (never read by search).

    Examples
    --------
    >>> import numpy as np
    >>> f, b = compute_flows(np.zeros((3, 16, 20), np.float32), "ilk")
    >>> tuple(f.shape), tuple(b.shape)
    ((1, 3, 2, 16, 20), (1, 3, 2, 16, 20))
    """
    from skimage.color import rgb2gray
    from skimage.registration import optical_flow_ilk, optical_flow_tvl1

    if method == "dis" and not HAS_OPENCV:
        raise ValueError("method: 'dis' needs OpenCV; install it with `pip install opencv-python-headless` "
                         "or use 'tvl1' or 'ilk'")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    video = np.asarray(video, dtype=np.float32)
    if video.ndim == 4:
        frames = rgb2gray(video[..., :3]) if video.shape[-1] >= 3 else video[..., 0]
    elif video.ndim == 3:
        frames = video
    else:
        raise ValueError(f"video: expected (T, H, W) or (T, H, W, C), got {video.shape}")
    fn = {"tvl1": optical_flow_tvl1, "ilk": optical_flow_ilk}.get(method) or _dis()
    T, H, W = frames.shape
    steps = Steps(2 * max(T - 1, 0), progress, should_stop)
    fflow = np.zeros((T, 2, H, W), np.float32)
    bflow = np.zeros((T, 2, H, W), np.float32)
    for t in range(T - 1):
        # moving(p + v(p)) ~ reference(p), v = (rows, cols)
        steps.check()
        v = fn(frames[t], frames[t + 1])
        fflow[t, 0], fflow[t, 1] = v[1], v[0]
        steps.advance()
        steps.check()
        v = fn(frames[t + 1], frames[t])
        bflow[t + 1, 0], bflow[t + 1, 1] = v[1], v[0]
        steps.advance()
    return torch.from_numpy(fflow)[None], torch.from_numpy(bflow)[None]
