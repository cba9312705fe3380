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

__all__ = ["compute_flows", "flow_consistency", "METHODS"]

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


def _sample(field: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``field`` (N, 2, H, W) read bilinearly at the positions ``at`` (N, 2, H, W) (channel
    0 = x, 1 = y, in pixels), and whether each position lies inside the frame."""
    N, _, H, W = field.shape
    x, y = at[:, 0], at[:, 1]
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    grid = torch.stack([2 * x / max(W - 1, 1) - 1, 2 * y / max(H - 1, 1) - 1], -1)  # (N, H, W, 2)
    out = torch.nn.functional.grid_sample(field, grid, mode="bilinear", padding_mode="border",
                                          align_corners=True)
    return out, inside


def flow_consistency(fflow: torch.Tensor, bflow: torch.Tensor) -> torch.Tensor:
    """Forward-backward inconsistency of a pair of flows: where the flow is wrong or the
    content is occluded in the next or previous frame.

    For a pixel p of frame t, the forward error is ``|fflow[t](p) + bflow[t+1](q)|`` with
    ``q = p + fflow[t](p)`` (going to frame t+1 and back should return to p; ``bflow`` read
    bilinearly at q), and the backward error ``|bflow[t](p) + fflow[t-1](p + bflow[t](p))|``.
    A round trip that leaves the frame counts as infinite (the content is not in the next
    frame). The result is the larger of the two (only the forward error in frame 0, only
    the backward one in frame T-1; 0 for a single frame).

    Parameters
    ----------
    fflow, bflow : Tensor, each (B, T, 2, H, W)
        Forward and backward flows in pixels, channel 0 = dx, as :func:`compute_flows`
        returns them.

    Returns
    -------
    Tensor, shape (B, T, H, W)
        The error in pixels (float32 or the flows' float dtype).

    Examples
    --------
    >>> from napari_stnls.video.synthetic import sample_video
    >>> vid = sample_video(n_frames=3, size=(24, 32), shift=(1.5, -0.5), rotation=0, zoom=1)
    >>> _, _, (f, b) = vid.to_torch()
    >>> err = flow_consistency(f, b)
    >>> tuple(err.shape), bool(err[:, :, 4:-4, 4:-4].max() < 1e-4)
    ((1, 3, 24, 32), True)
    """
    for name, f in (("fflow", fflow), ("bflow", bflow)):
        if not isinstance(f, torch.Tensor) or f.ndim != 5 or f.shape[2] != 2:
            raise ValueError(f"{name}: expected a tensor (B, T, 2, H, W), got "
                             f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    if fflow.shape != bflow.shape:
        raise ValueError(f"bflow: expected the shape of fflow {tuple(fflow.shape)}, got {tuple(bflow.shape)}")
    B, T, _, H, W = fflow.shape
    dtype = fflow.dtype if fflow.is_floating_point() else torch.float32
    f, b = fflow.to(dtype), bflow.to(dtype)
    err = torch.zeros(B, T, H, W, dtype=dtype, device=f.device)
    if T < 2:
        return err
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype, device=f.device),
                            torch.arange(W, dtype=dtype, device=f.device), indexing="ij")
    grid = torch.stack([xs, ys])  # (2, H, W), (x, y)

    def round_trip(there: torch.Tensor, back: torch.Tensor) -> torch.Tensor:  # (N, 2, H, W) each
        ret, inside = _sample(back, grid + there)
        e = (there + ret).norm(dim=1)
        return torch.where(inside, e, torch.full_like(e, float("inf")))

    fwd = round_trip(f[:, :-1].flatten(0, 1), b[:, 1:].flatten(0, 1)).view(B, T - 1, H, W)
    bwd = round_trip(b[:, 1:].flatten(0, 1), f[:, :-1].flatten(0, 1)).view(B, T - 1, H, W)
    err[:, :-1] = fwd
    err[:, 1:] = torch.maximum(err[:, 1:], bwd)
    return err
