"""Space-time regions and the query grid laid on them."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["Region", "as_region", "grid_shape", "query_coords", "grid_view"]


class Region(NamedTuple):
    """A half-open space-time box: frames ``t0..t1-1``, rows ``y0..y1-1``, columns ``x0..x1-1``.

    A plain 6-tuple is accepted wherever a Region is. ``None`` means the whole video.

    Examples
    --------
    >>> r = Region(0, 2, 10, 20, 0, 8)
    >>> r.shape
    (2, 10, 8)
    """

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, rows, columns) covered by the region."""
        return (self.t1 - self.t0, self.y1 - self.y0, self.x1 - self.x0)

    def __str__(self) -> str:
        return f"{self.t0}:{self.t1},{self.y0}:{self.y1},{self.x0}:{self.x1}"


def _video_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 5:
        raise ValueError(f"shape: expected the video's (B, T, C, H, W), got {shape}")
    return shape[1], shape[3], shape[4]


def as_region(region, shape: Sequence[int], name: str = "region") -> Region:
    """Validate ``region`` against a video of ``shape`` (B, T, C, H, W) and return a Region.

    Raises
    ------
    TypeError
        If ``region`` is not None, a Region or a sequence of six integers.
    ValueError
        If the region is empty or reaches outside the video.
    """
    T, H, W = _video_dims(shape)
    if region is None:
        return Region(0, T, 0, H, 0, W)
    if isinstance(region, torch.Tensor):
        region = region.tolist()
    try:
        vals = tuple(region)
    except TypeError:
        raise TypeError(
            f"{name}: expected None, a Region or a 6-tuple (t0, t1, y0, y1, x0, x1), "
            f"got {type(region).__name__}"
        ) from None
    if len(vals) != 6:
        raise ValueError(
            f"{name}: expected 6 values (t0, t1, y0, y1, x0, x1), got {len(vals)}: {vals}"
        )
    out = []
    for v in vals:
        try:
            if isinstance(v, bool):
                raise TypeError
            # ints (and the sizes torch.compile(dynamic=True) traces as SymInt) are kept as they
            # are: operator.index would make torch.compile specialise on their values
            out.append(v if isinstance(v, (int, torch.SymInt)) else operator.index(v))
        except TypeError:
            raise TypeError(f"{name}: expected integers, got {vals}") from None
    r = Region(*out)
    for lo, hi, n, axis in ((r.t0, r.t1, T, "t"), (r.y0, r.y1, H, "y"), (r.x0, r.x1, W, "x")):
        if not (0 <= lo < hi <= n):
            raise ValueError(
                f"{name}: {axis} range {lo}:{hi} must be non-empty and inside 0:{n} "
                f"for a video of shape (T, H, W) = ({T}, {H}, {W}); got {tuple(r)}"
            )
    return r


def _check_stride(stride, name: str) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"{name}: expected a positive int, got {stride!r}")
    if stride <= 0:
        raise ValueError(f"{name}: expected a positive int, got {stride}")
    return stride


def grid_shape(shape: Sequence[int], region=None, stride0: int = 1) -> tuple[int, int, int]:
    """Return ``(T_r, nH, nW)``: the query grid's size for ``region`` and ``stride0``."""
    r = as_region(region, shape)
    _check_stride(stride0, "stride0")
    return (
        r.t1 - r.t0,
        -(-(r.y1 - r.y0) // stride0),
        -(-(r.x1 - r.x0) // stride0),
    )


def query_coords(
    shape: Sequence[int], region=None, stride0: int = 1, device=None
) -> torch.Tensor:
    """Positions of the queries of ``region``, in raster order (t, y, x).

    Parameters
    ----------
    shape : sequence of int
        The video's (B, T, C, H, W).
    region : Region or 6-tuple, optional
        Half-open (t0, t1, y0, y1, x0, x1); None is the whole video.
    stride0 : int
        Spacing of the query grid in y and x.

    Returns
    -------
    Tensor, shape (Q, 3), int64
        ``(t, y0 + i*stride0, x0 + j*stride0)`` for every frame of the region.

    Examples
    --------
    >>> query_coords((1, 2, 3, 4, 4), stride0=2)[:3].tolist()
    [[0, 0, 0], [0, 0, 2], [0, 2, 0]]
    """
    r = as_region(region, shape)
    _check_stride(stride0, "stride0")
    ts = torch.arange(r.t0, r.t1, device=device)
    ys = torch.arange(r.y0, r.y1, stride0, device=device)
    xs = torch.arange(r.x0, r.x1, stride0, device=device)
    grid = torch.meshgrid(ts, ys, xs, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=-1)


def grid_view(
    x: torch.Tensor, shape: Sequence[int], region=None, stride0: int = 1, dim: int | None = None
) -> torch.Tensor:
    """Reshape the Q axis of ``x`` to ``(T_r, nH, nW)``.

    Parameters
    ----------
    x : Tensor
        Any tensor with one axis of size Q (for example search's dists, (B, nheads, Q, k)).
    shape, region, stride0
        As for :func:`query_coords`.
    dim : int, optional
        The Q axis. By default axis 2 for tensors of 4 or more dims (search's
        ``(B, nheads, Q, ...)`` layout), else the first axis of size Q.

    Returns
    -------
    Tensor
        A view of ``x`` with the Q axis replaced by (T_r, nH, nW).

    Examples
    --------
    >>> d = torch.zeros(1, 1, 2 * 3 * 4, 5)  # dists (B, nheads, Q, k)
    >>> grid_view(d, (1, 2, 1, 3, 4)).shape
    torch.Size([1, 1, 2, 3, 4, 5])
    """
    gs = grid_shape(shape, region, stride0)
    q = gs[0] * gs[1] * gs[2]
    if dim is None and x.ndim >= 4:
        dim = 2  # search's layout: dists (B, nheads, Q, k), inds (B, nheads, Q, k, 3)
    if dim is None:
        dims = [i for i, n in enumerate(x.shape) if n == q]
        if not dims:
            raise ValueError(f"x: no axis of size Q={q} (grid {gs}) in shape {tuple(x.shape)}")
        dim = dims[0]
    dim = dim % x.ndim
    if x.shape[dim] != q:
        raise ValueError(f"x: axis {dim} has size {x.shape[dim]}, expected Q={q} (grid {gs})")
    return x.reshape(*x.shape[:dim], *gs, *x.shape[dim + 1 :])
