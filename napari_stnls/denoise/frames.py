"""The denoisers' view of their input: any array or tensor as (N, T, H, W, C) videos, and the
frames spread over them that the statistics (range, noise) are read from."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..video.axes import Layout

__all__ = ["as_videos", "spread_frames", "sample_frames"]


def as_videos(video, axes: str | None):
    """``video`` as (N, T, H, W, C): an array in the layout ``axes`` names (inferred when None),
    or a (B, T, C, H, W) tensor (``axes=None``); a view where the input allows.

    Raises
    ------
    TypeError
        Naming ``video``, for anything but an array or a tensor.
    ValueError
        Naming ``video`` (a tensor of another shape) or ``axes``.
    """
    if isinstance(video, torch.Tensor):
        if axes is None:
            if video.ndim != 5:
                raise ValueError(f"video: expected a tensor of shape (B, T, C, H, W) (or pass axes), got "
                                 f"{tuple(video.shape)}")
            return video.permute(0, 1, 3, 4, 2)
        return Layout.of(video.shape, axes).to_video(video)
    if not (hasattr(video, "shape") and hasattr(video, "dtype") and hasattr(video, "__array__")):
        raise TypeError(f"video: expected a torch.Tensor (B, T, C, H, W) or a NumPy array (any layout "
                        f"named by axes), got {type(video).__name__}")
    return Layout.of(video.shape, axes).to_video(video)


def spread_frames(count: int, n: int = 16) -> list[int]:
    """Up to ``n`` of ``count`` frame indices, evenly spread (first and last included)."""
    return [int(i) for i in np.unique(np.linspace(0, count - 1, min(count, n)).round())]


def sample_frames(videos, n: int = 16) -> Iterator[np.ndarray]:
    """The frames (H, W, C) of (N, T, H, W, C) ``videos`` at :func:`spread_frames` of N*T (frame
    ``t`` of video ``i`` is number ``i*T + t``), as NumPy."""
    T = videos.shape[1]
    for i in spread_frames(videos.shape[0] * T, n):
        f = videos[i // T, i % T]
        yield f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
