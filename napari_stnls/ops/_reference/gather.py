"""The reference gather, scatter and aggregate (gather then scatter), on validated arguments."""

from __future__ import annotations

import torch

from .taps import channels_last, from_channels_last, patch_taps, read, write

__all__ = ["aggregate", "gather", "scatter"]


def gather(video, inds, ps: int, pt: int, dilation: int) -> torch.Tensor:
    """Patches (B, nheads, Q, K, pt, C/nheads, ps, ps) of ``video`` at ``inds`` (B, nheads, Q, K, 3)."""
    B, T, C, H, W = video.shape
    _, nh, Q, K, _ = inds.shape
    flat = channels_last(video, nh)
    taps = patch_taps(inds.reshape(B, nh, Q * K, 3), (T, H, W), ps, pt, dilation)
    p = read(flat, taps).to(video.dtype)  # (B, nh, Q*K, pt, ps, ps, Ch)
    return p.reshape(B, nh, Q, K, pt, ps, ps, -1).permute(0, 1, 2, 3, 4, 7, 5, 6)


def scatter(patches, inds, weights, out, counts, ps: int, pt: int, dilation: int):
    """Add weight * patch at ``inds`` into ``out`` (B, T, C, H, W) and the weights into
    ``counts`` (B, T, nheads|1, H, W), in place; returns both."""
    B, T, C, H, W = out.shape
    _, nh, Q, K, _ = inds.shape
    taps = patch_taps(inds.reshape(B, nh, Q * K, 3), (T, H, W), ps, pt, dilation)
    vals = patches.permute(0, 1, 2, 3, 4, 6, 7, 5).reshape(B, nh, Q * K, pt, ps, ps, -1)
    if weights is None:
        w = torch.ones(B, nh, Q * K, 1, 1, 1, 1, dtype=out.dtype, device=out.device)
    else:
        w = weights.reshape(B, nh, Q * K, 1, 1, 1, 1)
    acc = torch.zeros(B, T * H * W, nh, C // nh, dtype=out.dtype, device=out.device)
    write(acc, taps, vals * w)
    cnt = torch.zeros(B, T * H * W, nh, 1, dtype=out.dtype, device=out.device)
    write(cnt, taps, w)
    out.add_(from_channels_last(acc, out.shape))
    counts.add_(from_channels_last(cnt, (B, T, nh, H, W)))
    return out, counts


def aggregate(video, inds, at, weights, out, counts, ps: int, pt: int, dilation: int):
    """The patches of ``video`` at ``inds``, weighted, added at ``at`` into ``out`` and
    ``counts``: :func:`scatter` of :func:`gather`."""
    return scatter(gather(video, inds, ps, pt, dilation), at, weights, out, counts, ps, pt, dilation)
