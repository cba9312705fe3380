"""Unfold and fold on arbitrary rectangular space-time regions.

``iunfold`` reads the patches of a region's query grid with zeros outside the video,
exactly like ``F.unfold`` with ``padding=dilation*(ps//2)``; ``ifold`` is its adjoint.
Because patches near a region's border read (and fold into) pixels outside it, a video
can be processed region by region with no edge effects.

Each op validates its arguments, asks the guard (:func:`._library.use_compiled`) whether the
compiled kernels run, and calls ``torch.ops.napari_stnls.*`` or the reference twin
(:mod:`._reference.fold`).
"""

from __future__ import annotations

import torch

from . import _validate as V
from ._library import use_compiled
from ._reference import fold as _reference
from ._region import as_region, grid_shape

__all__ = ["iunfold", "ifold"]


def _check_common(ps, stride, dilation, pt):
    return (
        V.pos_int(ps, "ps"),
        V.pos_int(stride, "stride"),
        V.pos_int(dilation, "dilation"),
        V.pos_int(pt, "pt"),
    )


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
    backend : {None, "reference", "cpu", "cuda"}
        As for :func:`~napari_stnls.ops.search` (the compiled kernels have no limits).

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
    if use_compiled("iunfold", backend, video.device):
        return torch.ops.napari_stnls.iunfold_patches(video, list(region), stride, ps, pt, dilation)
    return _reference.iunfold(video, region, stride, ps, pt, dilation)


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
    ps, stride, dilation, pt, backend
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
        shape = tuple(s if isinstance(s, (int, torch.SymInt)) else int(s) for s in shape)
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
    if use_compiled("ifold", backend, patches.device):
        # a gather over the patches covering each pixel (no atomics), over the box they reach
        return out.add_(torch.ops.napari_stnls.ifold_patches(patches, list(region), stride, T, H, W, ps, pt,
                                                             dilation))
    return _reference.ifold(patches, region, stride, out, ps, pt, dilation)
