"""The reference iunfold and ifold, on validated arguments: advanced indexing with zeros
outside the video, and its adjoint with ``index_add_``."""

from __future__ import annotations

import torch

from .._region import Region, query_coords

__all__ = ["ifold", "iunfold"]


def _pixel_index(coords: torch.Tensor, shape, ps: int, pt: int, dilation: int):
    """Flat (t, y, x) index (Q, pt, ps, ps) into T*H*W of every patch pixel, and its validity."""
    _, T, _, H, W = shape
    dev = coords.device
    offs = dilation * (torch.arange(ps, device=dev) - ps // 2)
    t = coords[:, 0, None] + torch.arange(pt, device=dev)  # (Q, pt)
    y = coords[:, 1, None] + offs  # (Q, ps)
    x = coords[:, 2, None] + offs
    t, y, x = t[:, :, None, None], y[:, None, :, None], x[:, None, None, :]
    valid = (t < T) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    flat = (t * H + y.clamp(0, H - 1)) * W + x.clamp(0, W - 1)
    return torch.where(valid, flat, 0), valid


def iunfold(video, region: Region, stride: int, ps: int, pt: int, dilation: int) -> torch.Tensor:
    """Patches (B, Q, pt*C*ps*ps) of the query grid of ``region``."""
    B, T, C, H, W = video.shape
    coords = query_coords(video.shape, region, stride, device=video.device)
    Q = coords.shape[0]
    flat, valid = _pixel_index(coords, video.shape, ps, pt, dilation)
    v = video.permute(0, 2, 1, 3, 4).reshape(B, C, T * H * W)
    out = v[:, :, flat.reshape(-1)].reshape(B, C, Q, pt, ps, ps)
    out = out * valid.to(out.dtype)
    return out.permute(0, 2, 3, 1, 4, 5).reshape(B, Q, pt * C * ps * ps)


def ifold(patches, region: Region, stride: int, out, ps: int, pt: int, dilation: int) -> torch.Tensor:
    """Add ``patches`` (B, Q, pt*C*ps*ps) back into ``out`` (B, T, C, H, W), in place."""
    B, T, C, H, W = out.shape
    coords = query_coords(out.shape, region, stride, device=out.device)
    Q = coords.shape[0]
    flat, valid = _pixel_index(coords, out.shape, ps, pt, dilation)
    p = patches.reshape(B, Q, pt, C, ps, ps).permute(0, 3, 1, 2, 4, 5)  # (B, C, Q, pt, ps, ps)
    p = (p * valid.to(p.dtype)).reshape(B, C, -1)
    acc = torch.zeros(B, C, T * H * W, dtype=out.dtype, device=out.device)
    acc.index_add_(2, flat.reshape(-1), p.to(out.dtype))
    out.add_(acc.reshape(B, C, T, H, W).permute(0, 2, 1, 3, 4))
    return out
