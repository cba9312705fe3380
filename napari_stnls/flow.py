"""Optical flow between consecutive frames, in the layout search expects.

``fflow[t]`` moves frame t to t+1 and ``bflow[t]`` moves frame t to t-1, channel 0 = dx and
channel 1 = dy: a point p of frame t is at p + fflow[t](p) in frame t+1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["compute_flows", "METHODS"]

METHODS = ("tvl1", "ilk")


def compute_flows(
    video: np.ndarray, method: str = "tvl1", progress: Callable[[int, int], None] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward flows of a (T, H, W[, C]) video with scikit-image.

    Returns
    -------
    (fflow, bflow) : Tensor, each (1, T, 2, H, W) float32
        ``fflow[:, T-1]`` and ``bflow[:, 0]`` are zero (never read by search).
    """
    from skimage.color import rgb2gray
    from skimage.registration import optical_flow_ilk, optical_flow_tvl1

    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    video = np.asarray(video, dtype=np.float32)
    if video.ndim == 4:
        frames = rgb2gray(video[..., :3]) if video.shape[-1] >= 3 else video[..., 0]
    elif video.ndim == 3:
        frames = video
    else:
        raise ValueError(f"video: expected (T, H, W) or (T, H, W, C), got {video.shape}")
    fn = optical_flow_tvl1 if method == "tvl1" else optical_flow_ilk
    T, H, W = frames.shape
    fflow = np.zeros((T, 2, H, W), np.float32)
    bflow = np.zeros((T, 2, H, W), np.float32)
    total = 2 * (T - 1)
    for t in range(T - 1):
        # skimage: moving(p + v(p)) ~ reference(p), v = (rows, cols)
        v = fn(frames[t], frames[t + 1])
        fflow[t, 0], fflow[t, 1] = v[1], v[0]
        v = fn(frames[t + 1], frames[t])
        bflow[t + 1, 0], bflow[t + 1, 1] = v[1], v[0]
        if progress is not None:
            progress(2 * (t + 1), total)
    return torch.from_numpy(fflow)[None], torch.from_numpy(bflow)[None]
