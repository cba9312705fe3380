"""Reading and writing mirrored, possibly sub-pixel patches: the machinery shared by
search, gather and scatter (reference backend).

A video is handled channels-last and flattened, ``(B, T*H*W, nheads, C/nheads)``, so
that one advanced-indexing call reads every pixel of many patches. A patch position
becomes a list of *taps*: flat pixel indices ``(..., pt, ps, ps)`` and a bilinear
weight per tap (one tap for integer positions, up to four for sub-pixel ones).
Reading is ``sum_tap weight * video[index]``; writing (the adjoint) adds
``weight * value`` at the same indices.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["channels_last", "from_channels_last", "reflect", "Taps", "patch_taps", "read", "write"]



def channels_last(video: torch.Tensor, nheads: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T*H*W, nheads, C/nheads)."""
    B, T, C, H, W = video.shape
    return video.permute(0, 1, 3, 4, 2).reshape(B, T * H * W, nheads, C // nheads).contiguous()


def from_channels_last(flat: torch.Tensor, shape) -> torch.Tensor:
    """(B, T*H*W, nheads, C/nheads) -> (B, T, C, H, W)."""
    B, T, C, H, W = shape
    return flat.reshape(B, T, H, W, C).permute(0, 1, 4, 2, 3)


def reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror integer indices into ``0..n-1`` without repeating the border (-1->1, n->n-2)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = torch.remainder(idx, period)
    return torch.where(m >= n, period - m, m)


class Taps(NamedTuple):
    """Flat pixel indices ``index[ry][cx]`` (..., pt, ps, ps) of the bilinear corners, with the
    row weights ``wy[ry]`` and column weights ``wx[cx]`` (..., 1, 1, 1, 1), or None for weight 1."""

    index: list[list[torch.Tensor]]
    wy: list[torch.Tensor | None]
    wx: list[torch.Tensor | None]


def _axis(start: torch.Tensor, n: int, ps: int, dilation: int) -> torch.Tensor:
    offs = dilation * (torch.arange(ps, device=start.device) - ps // 2)
    return reflect(start.unsqueeze(-1) + offs, n)


def _w(w: torch.Tensor) -> torch.Tensor:
    return w[..., None, None, None, None]


def patch_taps(
    pos: torch.Tensor, shape3: tuple[int, int, int], ps: int, pt: int, dilation: int
) -> Taps:
    """Taps of the patches at ``pos`` (..., 3) = (t, y, x) in a video of (T, H, W).

    Integer ``pos`` gives one tap. Float ``pos`` gives bilinear taps; the second row (column)
    of corners is skipped when its weight is exactly zero everywhere and no gradient to
    ``pos`` is needed.
    """
    T, H, W = shape3
    t = pos[..., 0].round().long() if pos.is_floating_point() else pos[..., 0].long()
    frames = reflect(t.unsqueeze(-1) + torch.arange(pt, device=pos.device), T)
    frames = frames[..., :, None, None] * H
    if not pos.is_floating_point():
        rows = _axis(pos[..., 1].long(), H, ps, dilation)
        cols = _axis(pos[..., 2].long(), W, ps, dilation)
        return Taps([[(frames + rows[..., None, :, None]) * W + cols[..., None, None, :]]], [None], [None])

    y, x = pos[..., 1], pos[..., 2]
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.long(), x0.long()
    grad = pos.requires_grad and torch.is_grad_enabled()
    rows, wy = [_axis(y0, H, ps, dilation)], [_w(1 - fy)]
    if grad or bool((fy != 0).any()):
        rows.append(_axis(y0 + 1, H, ps, dilation))
        wy.append(_w(fy))
    else:
        wy = [None]
    cols, wx = [_axis(x0, W, ps, dilation)], [_w(1 - fx)]
    if grad or bool((fx != 0).any()):
        cols.append(_axis(x0 + 1, W, ps, dilation))
        wx.append(_w(fx))
    else:
        wx = [None]
    index = [
        [(frames + r[..., None, :, None]) * W + c[..., None, None, :] for c in cols] for r in rows
    ]
    return Taps(index, wy, wx)


def _linear(flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Linear index into ``flat.reshape(-1, Ch)`` for ``flat[b, idx, h]``, idx (B|1, nh|1, N, ...)."""
    B, L, nh, _ = flat.shape
    shape = (B, nh) + idx.shape[2:]
    b = torch.arange(B, device=flat.device).view(B, 1, *([1] * (idx.ndim - 2)))
    h = torch.arange(nh, device=flat.device).view(1, nh, *([1] * (idx.ndim - 2)))
    return ((b * L + idx) * nh + h).expand(shape)


def _combine(values: list[torch.Tensor], w: list[torch.Tensor | None]) -> torch.Tensor:
    """``w0*v0 + w1*v1`` (or ``v0`` alone for a single tap of weight 1)."""
    if w[0] is None:
        return values[0]
    out = w[0].to(values[0].dtype) * values[0]
    for wi, vi in zip(w[1:], values[1:], strict=True):
        out = out + wi.to(vi.dtype) * vi
    return out


def read(flat: torch.Tensor, taps: Taps, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read patches: returns (B, nheads, N, pt, ps, ps, C/nheads).

    ``flat`` is a channels-last video (B, T*H*W, nheads, Ch); tap indices are
    (B|1, nheads|1, N, pt, ps, ps). Values are computed in ``dtype`` (default: flat's) as
    ``wy0*(wx0*v00 + wx1*v01) + wy1*(wx0*v10 + wx1*v11)``: interpolate along x, then y.
    """
    rows = []
    table = flat.reshape(-1, flat.shape[-1])
    for row in taps.index:
        vals = []
        for idx in row:
            lin = _linear(flat, idx)
            v = table.index_select(0, lin.reshape(-1)).reshape(*lin.shape, -1)
            vals.append(v if dtype is None else v.to(dtype))
        rows.append(_combine(vals, taps.wx))
    return _combine(rows, taps.wy)


def write(flat: torch.Tensor, taps: Taps, values: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`read`: add ``weight * values`` into ``flat`` in place and return it.

    ``values`` is (B, nheads, N, pt, ps, ps, Ch) (or broadcastable to it).
    """
    table = flat.view(-1, flat.shape[-1])
    for row, wy in zip(taps.index, taps.wy, strict=True):
        for idx, wx in zip(row, taps.wx, strict=True):
            v = values
            for w in (wy, wx):
                v = v if w is None else w.to(v.dtype) * v
            lin = _linear(flat, idx)
            v = v.expand(*lin.shape, flat.shape[-1]).to(flat.dtype)
            table.index_add_(0, lin.reshape(-1), v.reshape(-1, flat.shape[-1]))
    return flat
