"""Unfold and fold on arbitrary rectangular space-time regions (reference backend).

``iunfold`` reads the patches of a region's query grid with zeros outside the video,
exactly like ``F.unfold`` with ``padding=dilation*(ps//2)``; ``ifold`` is its adjoint.
Because patches near a region's border read (and fold into) pixels outside it, a video
can be processed region by region with no edge effects.
"""

from __future__ import annotations

import torch

from . import _ext
from . import _validate as V
from ._dispatch import register, resolve
from ._region import as_region, grid_shape, query_coords

__all__ = ["iunfold", "ifold"]


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


def _check_common(ps, stride, dilation, pt):
    return (
        V.pos_int(ps, "ps"),
        V.pos_int(stride, "stride"),
        V.pos_int(dilation, "dilation"),
        V.pos_int(pt, "pt"),
    )


def _iunfold_reference(video, region, stride, ps, pt, dilation):
    B, T, C, H, W = video.shape
    coords = query_coords(video.shape, region, stride, device=video.device)
    Q = coords.shape[0]
    flat, valid = _pixel_index(coords, video.shape, ps, pt, dilation)
    v = video.permute(0, 2, 1, 3, 4).reshape(B, C, T * H * W)
    out = v[:, :, flat.reshape(-1)].reshape(B, C, Q, pt, ps, ps)
    out = out * valid.to(out.dtype)
    return out.permute(0, 2, 3, 1, 4, 5).reshape(B, Q, pt * C * ps * ps)


def _ifold_reference(patches, region, stride, out, ps, pt, dilation):
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


def _iunfold_compiled(video, region, stride, ps, pt, dilation):
    """Compiled kernels (csrc/fold.cpp): one pass over the output, no index tensors."""
    return _ext.ops.iunfold_patches(video, list(region), stride, ps, pt, dilation)


def _ifold_compiled(patches, region, stride, out, ps, pt, dilation):
    """Compiled kernels: a gather over the patches covering each pixel (deterministic, no
    atomics), over the box of pixels the region's patches reach."""
    B, T, C, H, W = out.shape
    out.add_(_ext.ops.ifold_patches(patches, list(region), stride, T, H, W, ps, pt, dilation))
    return out


register("iunfold", "reference", _iunfold_reference)
register("ifold", "reference", _ifold_reference)
for _dev in ("cpu", "cuda"):
    if _ext.available(_dev, "iunfold_patches"):
        register("iunfold", _dev, _iunfold_compiled)
        register("ifold", _dev, _ifold_compiled)


def iunfold(
    video: torch.Tensor,
    region=None,
    *,
    ps: int,
    stride: int = 1,
    dilation: int = 1,
    pt: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Patches of a space-time region's query grid, zeros outside the video.

    Parameters
    ----------
    video : Tensor, shape (B, T, C, H, W)
    region : Region or 6-tuple, optional
        Half-open (t0, t1, y0, y1, x0, x1) whose grid ``(t, y0 + i*stride, x0 + j*stride)``
        gives the patch centres; None is the whole video.
    ps : int
        Patch side; pixel offsets ``dilation*(a - ps//2)``.
    stride, dilation, pt : int
        Grid spacing, pixel spacing inside a patch, and frames per patch
        (frames t..t+pt-1; frames past the end read zeros).

    Returns
    -------
    Tensor, shape (B, Q, pt*C*ps*ps)
        Flattened in (pt, C, ps, ps) order; Q in raster order (t, y, x).

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> v = torch.rand(1, 1, 3, 8, 8)
    >>> p = iunfold(v, ps=3)
    >>> torch.equal(p[0, :64].T, F.unfold(v[0, 0:1], 3, padding=1)[0])
    True
    """
    V.video(video, "video")
    ps, stride, dilation, pt = _check_common(ps, stride, dilation, pt)
    region = as_region(region, video.shape)
    return resolve("iunfold", backend, video.device)(video, region, stride, ps, pt, dilation)


def ifold(
    patches: torch.Tensor,
    region=None,
    *,
    shape=None,
    out: torch.Tensor | None = None,
    ps: int,
    stride: int = 1,
    dilation: int = 1,
    pt: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Fold patches back into a video: the exact adjoint of :func:`iunfold`.

    Parameters
    ----------
    patches : Tensor, shape (B, Q, pt*C*ps*ps)
        As returned by :func:`iunfold` for the same region and parameters.
    region : Region or 6-tuple, optional
        The region the patches belong to; None is the whole video.
    shape : sequence of int, optional
        (B, T, C, H, W) of the full video; a new zero video is made.
    out : Tensor, shape (B, T, C, H, W), optional
        A video to add into, in place (exactly one of ``shape`` and ``out``).
    ps, stride, dilation, pt : int
        As for :func:`iunfold`.

    Returns
    -------
    Tensor, shape (B, T, C, H, W)
        Every patch value added into the pixel it was read from; values outside the
        video are dropped. ``out`` itself when given.

    Examples
    --------
    >>> v = torch.rand(1, 2, 1, 6, 6)
    >>> r1, r2 = (0, 2, 0, 3, 0, 6), (0, 2, 3, 6, 0, 6)
    >>> acc = torch.zeros_like(v)
    >>> for r in (r1, r2):
    ...     _ = ifold(iunfold(v, r, ps=3), r, out=acc, ps=3)
    >>> torch.allclose(acc, ifold(iunfold(v, ps=3), shape=v.shape, ps=3))
    True
    """
    V.tensor(patches, "patches")
    if (shape is None) == (out is None):
        raise ValueError("shape/out: give exactly one of shape (B, T, C, H, W) and out")
    if out is not None:
        V.video(out, "out")
        shape = tuple(out.shape)
    else:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5 or min(shape) <= 0:
            raise ValueError(f"shape: expected a non-empty (B, T, C, H, W), got {shape}")
    if not patches.is_floating_point():
        raise TypeError(f"patches: expected a floating-point tensor, got {patches.dtype}")
    ps, stride, dilation, pt = _check_common(ps, stride, dilation, pt)
    B, T, C, H, W = shape
    region = as_region(region, shape)
    nT, nH, nW = grid_shape(shape, region, stride)
    expected = (B, nT * nH * nW, pt * C * ps * ps)
    if tuple(patches.shape) != expected:
        raise ValueError(
            f"patches: expected shape (B, Q, pt*C*ps*ps) = {expected} for this region, "
            f"got {tuple(patches.shape)}"
        )
    if out is None:
        out = torch.zeros(shape, dtype=patches.dtype, device=patches.device)
    elif out.device != patches.device:
        raise ValueError(f"out: expected device {patches.device} like patches, got {out.device}")
    return resolve("ifold", backend, patches.device)(patches, region, stride, out, ps, pt, dilation)
