"""Regions for training and inference: a sampler that draws training regions by patch rarity,
and region-by-region inference that gives the whole-video result.

* :func:`patch_rarity` scores every query patch by its distance to its k-th nearest other
  patch in its space-time window: near 0 in flat or repetitive areas, large in textured and
  rare ones (where a restoration network has most to learn).
* :class:`RaritySampler` draws regions of a fixed size with probability growing with their
  mean rarity (with a floor, so that every region may be drawn).
* :func:`by_regions` runs a function that computes one region of its output (such as
  :class:`~napari_stnls.nn.NonLocalAttention` with ``region=``) over a tiling of the video and
  assembles the tiles: the same as one call on the whole video, with the memory of a tile's
  queries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..ops import Region, as_region, grid_shape, grid_view, search
from . import _checks as V

__all__ = ["RaritySampler", "by_regions", "patch_rarity", "tile_regions"]


def patch_rarity(video: torch.Tensor, *, ps: int = 7, ws: int = 9, wt: int = 1, k: int = 8, stride0: int = 4,
                 flows=None, batch_size: int | None = None, backend: str | None = None) -> torch.Tensor:
    """The rarity of every patch of the query grid: the L2 distance, per patch value, to its
    ``k``-th nearest other patch in its window (:func:`napari_stnls.ops.search` with
    ``exclude_self=True``).

    Parameters
    ----------
    video : Tensor, shape (B, T, C, H, W)
    ps, ws, wt, k, stride0, flows, batch_size, backend
        As for :func:`napari_stnls.ops.search`.

    Returns
    -------
    Tensor, shape (B, T, nH, nW)
        On the query grid of spacing ``stride0`` (``nH = ceil(H / stride0)``), float32
        (float64 for float64 videos), no gradient.
    """
    with torch.no_grad():
        d, _ = search(video, video, ps=ps, ws=ws, wt=wt, k=k, flows=flows, stride0=stride0, exclude_self=True,
                      batch_size=batch_size, backend=backend)
        r = d[:, 0, :, -1] / (video.shape[2] * ps * ps)
        return grid_view(r, video.shape, None, stride0, dim=1)


def tile_regions(shape, tile) -> list[Region]:
    """Regions of at most ``tile`` = (t, h, w) that tile a video of ``shape`` (B, T, C, H, W), in
    raster order (the last ones along each axis may be smaller)."""
    _, T, _, H, W = shape
    st, sh, sw = (V.pos_int(v, "tile") for v in tile)
    return [Region(t, min(T, t + st), y, min(H, y + sh), x, min(W, x + sw))
            for t in range(0, T, st) for y in range(0, H, sh) for x in range(0, W, sw)]


def by_regions(fn: Callable[..., torch.Tensor], x: torch.Tensor, tile, *args, **kwargs) -> torch.Tensor:
    """``fn(x, *args, region=r, **kwargs)`` for the regions ``r`` of :func:`tile_regions`, each
    giving the (B, t1-t0, C', y1-y0, x1-x0) output of its region, assembled into the
    (B, T, C', H, W) output.

    The result is the whole-video call's wherever ``fn`` computes a region's pixels as the
    whole call does, with no seam at the tiles' borders: :class:`~napari_stnls.nn.NonLocalAttention`
    does, searching only the queries whose patches reach the region (its :meth:`attend` gives
    the same bits; the 1x1 projections of its ``forward`` may round differently on another
    number of pixels), and so does one such block with pixel-wise layers after it (a block
    after another reads the first one's output everywhere in its windows: run the first on
    the whole video). The queries searched at once are a tile's, not the video's.

    Examples
    --------
    >>> from napari_stnls.nn import NonLocalAttention
    >>> block = NonLocalAttention(4, ws=3, k=4)
    >>> x = torch.rand(1, 2, 4, 12, 12)
    >>> with torch.no_grad():
    ...     bool(torch.equal(by_regions(block.attend, x, (1, 5, 5)), block.attend(x)))
    True
    """
    out = None
    for r in tile_regions(x.shape, tile):
        y = fn(x, *args, region=r, **kwargs)
        if out is None:
            out = y.new_empty((x.shape[0], x.shape[1], y.shape[2], x.shape[3], x.shape[4]))
        out[:, r.t0 : r.t1, :, r.y0 : r.y1, r.x0 : r.x1] = y
    return out


class RaritySampler:
    """Draws training regions of a fixed size, rare and textured ones more often.

    A region's score is the mean :func:`patch_rarity` of the queries it covers; it is drawn
    with probability proportional to ``(score / mean score) ** power + floor``: ``power=0``
    draws uniformly, larger powers favour rare regions more, and ``floor`` keeps every
    region possible.

    Parameters
    ----------
    video : Tensor, shape (B, T, C, H, W)
        The training video(s) (the rarity is computed once, here).
    size : (int, int, int)
        The regions' (frames, rows, columns); at most the video's.
    power, floor : float
        As above.
    generator : torch.Generator, optional
        For reproducible draws.
    ps, ws, wt, k, stride0, flows, backend
        As for :func:`patch_rarity`. Region origins lie on the grid of ``stride0``.

    Examples
    --------
    >>> video = torch.rand(2, 4, 1, 32, 32)
    >>> gen = torch.Generator().manual_seed(0)
    >>> sampler = RaritySampler(video, (2, 16, 16), ps=3, ws=5, k=4, generator=gen)
    >>> [(b in (0, 1), r.shape) for b, r in sampler.sample(2)]
    [(True, (2, 16, 16)), (True, (2, 16, 16))]
    """

    def __init__(self, video: torch.Tensor, size, *, power: float = 1.0, floor: float = 0.05,
                 generator: torch.Generator | None = None, ps: int = 7, ws: int = 9, wt: int = 1, k: int = 8,
                 stride0: int = 4, flows=None, backend: str | None = None) -> None:
        _, T, _, H, W = video.shape
        st, sh, sw = (V.pos_int(v, "size") for v in size)
        if st > T or sh > H or sw > W:
            raise ValueError(f"size: expected at most the video's (T, H, W) = {(T, H, W)}, got {tuple(size)}")
        if not (power >= 0 and floor >= 0):
            raise ValueError(f"power, floor: expected numbers >= 0, got {power}, {floor}")
        self.size, self.generator, self.stride0 = (st, sh, sw), generator, stride0
        self.rarity = patch_rarity(video, ps=ps, ws=ws, wt=wt, k=k, stride0=stride0, flows=flows,
                                   backend=backend)  # (B, T, nH, nW)
        _, nH, nW = grid_shape(video.shape, None, stride0)
        # origins (t, i*s, j*s) of regions inside the video; the region covers the queries
        # i .. i + ceil(sh/s) - 1 of its rows (the same for columns)
        kh, kw = -(-sh // stride0), -(-sw // stride0)
        score = F.avg_pool3d(self.rarity.unsqueeze(1).float(), (st, kh, kw), stride=1).squeeze(1)
        ni, nj = (H - sh) // stride0 + 1, (W - sw) // stride0 + 1
        score = score[:, :, :ni, :nj]
        rel = score / score.mean().clamp_min(1e-12)
        self.weights = rel.clamp_min(0) ** power + floor  # (B, T - st + 1, ni, nj)
        if not bool(self.weights.sum() > 0):  # a flat video with floor=0: uniform
            self.weights = torch.ones_like(self.weights)
        self.shape = tuple(video.shape)

    def probabilities(self) -> torch.Tensor:
        """The probability of each region origin, (B, T - t + 1, ni, nj) for origins
        (b, t0, i * stride0, j * stride0)."""
        return self.weights / self.weights.sum()

    def sample(self, n: int) -> list[tuple[int, Region]]:
        """``n`` draws (with replacement) of (batch index, region)."""
        n = V.pos_int(n, "n")
        flat = torch.multinomial(self.weights.flatten().cpu(), n, replacement=True, generator=self.generator)
        B, nt, ni, nj = self.weights.shape
        st, sh, sw = self.size
        s = self.stride0
        out = []
        for f in flat.tolist():
            b, rest = divmod(f, nt * ni * nj)
            t, rest = divmod(rest, ni * nj)
            i, j = divmod(rest, nj)
            out.append((b, as_region((t, t + st, i * s, i * s + sh, j * s, j * s + sw), self.shape)))
        return out
