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
    return video.permute(0, 1, 3, 4, 2).reshape(B, T * H * W, nheads, C // nheads)


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
    """Flat pixel indices (..., pt, ps, ps) and their weights (..., 1, 1, 1, 1) or None (=1)."""

    index: list[torch.Tensor]
    weight: list[torch.Tensor | None]


def _axis(start: torch.Tensor, n: int, ps: int, dilation: int) -> torch.Tensor:
    offs = dilation * (torch.arange(ps, device=start.device) - ps // 2)
    return reflect(start.unsqueeze(-1) + offs, n)


def patch_taps(
    pos: torch.Tensor, shape3: tuple[int, int, int], ps: int, pt: int, dilation: int
) -> Taps:
    """Taps of the patches at ``pos`` (..., 3) = (t, y, x) in a video of (T, H, W).

    Integer ``pos`` gives one tap. Float ``pos`` gives bilinear taps; a corner whose
    weight is exactly zero everywhere is skipped when no gradient to ``pos`` is needed.
    """
    T, H, W = shape3
    t = pos[..., 0].round().long() if pos.is_floating_point() else pos[..., 0].long()
    frames = reflect(t.unsqueeze(-1) + torch.arange(pt, device=pos.device), T)
    frames = frames[..., :, None, None] * H
    if not pos.is_floating_point():
        rows = _axis(pos[..., 1].long(), H, ps, dilation)
        cols = _axis(pos[..., 2].long(), W, ps, dilation)
        idx = (frames + rows[..., None, :, None]) * W + cols[..., None, None, :]
        return Taps([idx], [None])

    y, x = pos[..., 1], pos[..., 2]
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.long(), x0.long()
    grad = pos.requires_grad and torch.is_grad_enabled()
    use_y1 = grad or bool((fy != 0).any())
    use_x1 = grad or bool((fx != 0).any())
    rows = [(_axis(y0, H, ps, dilation), 1 - fy)]
    if use_y1:
        rows.append((_axis(y0 + 1, H, ps, dilation), fy))
    cols = [(_axis(x0, W, ps, dilation), 1 - fx)]
    if use_x1:
        cols.append((_axis(x0 + 1, W, ps, dilation), fx))
    index, weight = [], []
    for r, wy in rows:
        for c, wx in cols:
            index.append((frames + r[..., None, :, None]) * W + c[..., None, None, :])
            if len(rows) == 1 and len(cols) == 1:
                weight.append(None)
            else:
                weight.append((wy * wx)[..., None, None, None, None])
    return Taps(index, weight)


def _batch_head_index(flat: torch.Tensor, idx: torch.Tensor):
    """Index tuple for ``flat[b, idx, h]`` with idx (B|1, nh|1, N, pt, ps, ps)."""
    B, _, nh, _ = flat.shape
    bidx = torch.arange(B, device=flat.device).view(B, 1, 1, 1, 1, 1)
    hidx = torch.arange(nh, device=flat.device).view(1, nh, 1, 1, 1, 1)
    return bidx, idx, hidx


def read(flat: torch.Tensor, taps: Taps, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read patches: returns (B, nheads, N, pt, ps, ps, C/nheads).

    ``flat`` is a channels-last video (B, T*H*W, nheads, Ch); tap indices are
    (B|1, nheads|1, N, pt, ps, ps). Values are computed in ``dtype`` (default: flat's).
    """
    out = None
    for idx, w in zip(taps.index, taps.weight, strict=False):
        v = flat[_batch_head_index(flat, idx)]
        if dtype is not None:
            v = v.to(dtype)
        if w is not None:
            v = w.to(v.dtype) * v
        out = v if out is None else out + v
    return out


def write(flat: torch.Tensor, taps: Taps, values: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`read`: add ``weight * values`` into ``flat`` in place and return it.

    ``values`` is (B, nheads, N, pt, ps, ps, Ch) (or broadcastable to it).
    """
    for idx, w in zip(taps.index, taps.weight, strict=False):
        v = values if w is None else w.to(values.dtype) * values
        index = _batch_head_index(flat, idx)
        shape = torch.broadcast_shapes(*(i.shape for i in index)) + flat.shape[3:]
        flat.index_put_(index, v.expand(shape).to(flat.dtype), accumulate=True)
    return flat
