"""The tiles of a video and the crop each one's output depends on (its halo).

The crop is derived from the definitions in ``docs/api.md``, axis by axis:

The crop is derived from the definitions in ``docs/api.md``, axis by axis:

* **one search pass**, queries on rows ``[a0, a1)``: a query's position carried along the
  flow moves at most ``D = ceil((nt - 1) * max|flow|) + 1`` pixels (``nt - 1`` chained steps,
  ``+1`` for rounding), the window centre is clamped into ``[r, H-1-r]`` with
  ``r = ws // 2`` (monotone, so the centres of the queries lie between those of ``a0 - D``
  and ``a1 - 1 + D``), the candidates span ``+-r`` and their patches ``+-dilation*(ps//2)``,
  plus one pixel for bilinear reading. In time the window of frame ``t`` is
  ``s0 .. s0 + nt - 1`` with ``s0 = clamp(t - wt, 0, T - nt)``. A crop that holds all of
  this and ends either at the frame's border or strictly inside (so that its own window
  clamping never triggers) gives the same candidates as the whole video (:func:`read_span`).
* **NL-means** writes each query's weighted neighbours at the query's own patch, so a
  tile's output depends on the queries within ``ps // 2`` of it (run in region mode).
* **NL-Bayes** writes every patch of a group at the group member's position; the pixels a
  tile's output reads through step 2 (:func:`contrib_span` then :func:`read_span`) need the
  step-1 estimate, which needs a second such halo: the halo is doubled. The crop is run as
  a whole (``region=None``, its origin aligned to the reference grid ``stride0`` and to 2
  for round-half-to-even), with a margin so that the references at the crop's edges, whose
  windows the crop clamps differently, cannot reach the pixels that matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ops import Region

__all__ = ["read_span", "contrib_span", "HaloSpec", "tile_crop", "plan_tiles"]


def read_span(a0: int, a1: int, n: int, r: int, pr: int, d: int) -> tuple[int, int]:
    """Rows (or columns) ``[lo, hi)`` that one search pass reads for queries on ``[a0, a1)``.

    Parameters
    ----------
    a0, a1 : int
        Half-open range of query positions along the axis.
    n : int
        The axis' length (H or W).
    r : int
        Half-width of the search window, ``stride1 * (ws // 2)``.
    pr : int
        Patch radius, ``dilation * (ps // 2)``.
    d : int
        Bound on how far the flow chain moves a query (0 without flows).

    Returns
    -------
    (lo, hi) : int
        Every pixel the candidates, their patches (mirrored), the query patches and the
        flow reads touch lies in ``[lo, hi)``, clipped to ``[0, n)``.

    Examples
    --------
    >>> read_span(40, 48, 100, r=5, pr=2, d=0)   # interior: +-(r + pr + 1)
    (32, 56)
    >>> read_span(0, 4, 100, r=5, pr=2, d=0)     # the window clamped at the border reaches 2r + pr
    (0, 14)
    """
    def m(v: int) -> int:
        return min(max(v, r), n - 1 - r)

    lo = min(m(a0 - d) - r - pr - 1, a0 - pr)
    hi = max(m(a1 - 1 + d) + r + pr + 2, a1 + pr)
    return max(0, lo), min(n, hi)


def contrib_span(a0: int, a1: int, n: int, r: int, pr: int, d: int) -> tuple[int, int]:
    """Query positions ``[lo, hi)`` whose neighbours' patches can cover pixels ``[a0, a1)``.

    The inverse of :func:`read_span` for methods that write every neighbour patch back at
    the neighbour's own position (NL-Bayes groups). Same parameters.

    Examples
    --------
    >>> contrib_span(40, 48, 100, r=5, pr=2, d=0)
    (32, 56)
    """
    v = a0 - r - pr - 1
    lo = 0 if v <= r else max(0, v - d)
    u = a1 + r + pr
    hi = n if u >= n - 1 - r else min(n, u + d + 1)
    return lo, hi


def _window_start(t: int, T: int, wt: int) -> int:
    nt = min(T, 2 * wt + 1)
    return min(max(t - wt, 0), T - nt)


def _touched(t: int, T: int, wt: int, pt: int) -> tuple[int, int]:
    """Frames ``[lo, hi)`` a query in frame ``t`` reads, and a group of its writes:
    its window, ``pt - 1`` frames more for the patches' depth, mirrored past the end."""
    if T == 1:
        return 0, 1
    s0, nt, period = _window_start(t, T, wt), min(T, 2 * wt + 1), 2 * (T - 1)
    frames = [f % period for f in range(s0, s0 + nt + pt - 1)]
    frames = [period - f if f > T - 1 else f for f in frames]
    return min(frames), max(frames) + 1


def _read_frames(t0: int, t1: int, T: int, wt: int, pt: int = 1) -> tuple[int, int]:
    """Frames that queries in frames ``[t0, t1)`` read."""
    spans = [_touched(t, T, wt, pt) for t in range(t0, t1)]
    return min(a for a, _ in spans), max(b for _, b in spans)


def _contrib_frames(t0: int, t1: int, T: int, wt: int, pt: int = 1) -> tuple[int, int]:
    """Frames whose queries' groups can write into frames ``[t0, t1)``."""
    ts = [t for t in range(T) if _touched(t, T, wt, pt)[0] < t1 and _touched(t, T, wt, pt)[1] > t0]
    return ts[0], ts[-1] + 1


@dataclass(frozen=True)
class HaloSpec:
    """What the halo of a method depends on (``ps2``: NL-Bayes' step-2 patch side)."""

    kind: str  # "nlm", "nlb" or "fn"
    ps: int
    ws: int
    wt: int
    stride0: int = 1
    dilation: int = 1
    ps2: int | None = None
    pt: int = 1


def tile_crop(spec: HaloSpec, tile: Region, shape: tuple[int, int, int], d: tuple[int, int]) -> Region:
    """The crop of the video (and flows) that the output of ``tile`` depends on.

    Parameters
    ----------
    spec : HaloSpec
        The method and its window parameters.
    tile : Region
        The output tile (frames, rows, columns), half-open.
    shape : (T, H, W)
        The whole video's size.
    d : (dy, dx)
        Bounds on how far the flow chain moves a query along y and x (0 without flows).

    Returns
    -------
    Region
        The crop, in the whole video's coordinates.
    """
    T, H, W = shape
    r, pr = spec.ws // 2, spec.dilation * (spec.ps // 2)
    pr2 = spec.dilation * ((spec.ps2 or spec.ps) // 2)
    spans = []
    for (a0, a1), n, dd in (((tile.y0, tile.y1), H, d[0]), ((tile.x0, tile.x1), W, d[1])):
        if spec.kind == "nlb":
            b2 = read_span(*contrib_span(a0, a1, n, r, pr2, dd), n, r, pr2, dd)  # step 2 reads the basic here
            lo, hi = read_span(*contrib_span(*b2, n, r, pr, dd), n, r, pr, dd)  # step 1 for it reads this
            # references at the crop's edges (clamped differently there) must reach neither b2 in
            # step 1 nor the tile in step 2
            m1, m2 = 2 * r + pr + 4, 2 * r + pr2 + 4
            lo, hi = max(0, min(lo, b2[0] - m1, a0 - m2)), min(n, max(hi, b2[1] + m1, a1 + m2))
            align = math.lcm(2, spec.stride0)
            lo -= lo % align
        else:
            q0, q1 = (max(0, a0 - pr), min(n, a1 + pr)) if spec.kind == "nlm" else (a0, a1)
            lo, hi = read_span(q0, q1, n, r, pr, dd)
            lo -= lo % 2  # round-half-to-even of itype="int" is not shift-invariant for odd shifts
        spans.append((lo, hi))
    wt, pt = spec.wt, spec.pt
    if spec.kind == "nlb":
        b2 = _read_frames(*_contrib_frames(tile.t0, tile.t1, T, wt, pt), T, wt, pt)
        t0, t1 = _read_frames(*_contrib_frames(*b2, T, wt, pt), T, wt, pt)
        m = min(T, 2 * wt + 1) + pt
        t0, t1 = max(0, min(t0, b2[0] - m)), min(T, max(t1, b2[1] + m))
    else:
        t0, t1 = _read_frames(tile.t0, tile.t1, T, wt, pt)
    return Region(t0, t1, *spans[0], *spans[1])


def plan_tiles(shape: tuple[int, int, int], tile: tuple[int, int, int]) -> list[Region]:
    """Output tiles of size ``tile`` (frames, rows, columns) covering ``shape``, in raster order.

    Examples
    --------
    >>> plan_tiles((3, 10, 10), (2, 10, 6))
    [Region(t0=0, t1=2, y0=0, y1=10, x0=0, x1=6), Region(t0=0, t1=2, y0=0, y1=10, x0=6, x1=10), \
Region(t0=2, t1=3, y0=0, y1=10, x0=0, x1=6), Region(t0=2, t1=3, y0=0, y1=10, x0=6, x1=10)]
    """
    T, H, W = shape
    tt, th, tw = tile
    return [Region(t, min(T, t + tt), y, min(H, y + th), x, min(W, x + tw))
            for t in range(0, T, tt) for y in range(0, H, th) for x in range(0, W, tw)]
