"""Read the K neighbour patches at an index tensor, and write (weighted) patches back.

Naming follows PyTorch: *gather* reads at indices, *scatter* writes. (The SNAP paper's
code uses the two words the other way round.) Patches are read exactly as search
compares them: mirrored at the borders, bilinear at sub-pixel positions.

Each op validates its arguments, asks the guard (:func:`._library.use_compiled`) whether the
compiled kernels take the call, and calls ``torch.ops.napari_stnls.*`` or the reference twin
(:mod:`._reference.gather`).
"""

from __future__ import annotations

import math

import torch

from . import _determinism
from . import _validate as V
from ._library import use_compiled
from ._reference import gather as _reference
from ._region import as_region, grid_shape, query_coords

__all__ = ["aggregate", "gather", "scatter"]


def _unsupported(op: str, ps: int, pt: int) -> str | None:
    """Why the compiled ``op`` cannot take patches of ``ps`` x ``ps`` x ``pt``, or None."""
    if ps > 32 or pt > 8:
        return f"the compiled {op} takes ps <= 32 and pt <= 8 (got ps={ps}, pt={pt})"
    return None


def _channels_last(video: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> contiguous (B, T, H, W, C), as the compiled kernels take videos."""
    return video.permute(0, 1, 3, 4, 2).contiguous()


def _pos(inds: torch.Tensor) -> torch.Tensor:
    """inds as the compiled kernels take them: int32/int64/float32/float64, contiguous."""
    if not inds.is_floating_point() and inds.dtype not in (torch.int32, torch.int64):
        inds = inds.long()
    return inds.contiguous()


def _gather_compiled(video, inds, ps, pt, dilation):
    return torch.ops.napari_stnls.gather_patches(_channels_last(video), _pos(inds), ps, pt, dilation)


def _scatter_compiled(patches, inds, weights, out, counts, ps, pt, dilation):
    """scatter_patches adds into new channels-last buffers (without atomics on the CPU, with
    them on CUDA); they are added into ``out`` and ``counts``."""
    B, T, C, H, W = out.shape
    if weights is not None and not weights.is_floating_point():
        weights = weights.to(patches.dtype)
    v_cl, c_cl = _determinism.call("scatter_patches", patches, _pos(inds), weights, T, H, W, ps, pt, dilation)
    out.add_(v_cl.permute(0, 1, 4, 2, 3))
    counts.add_(c_cl.permute(0, 1, 4, 2, 3))
    return out, counts


def _grid_box(shape, region, stride0: int, ps: int, pt: int, dilation: int) -> tuple[int, ...]:
    """(t0, t1, y0, y1, x0, x1): a box holding every pixel that the (mirrored) patches of the
    query grid of ``region`` and ``stride0`` reach.

    Per axis, the patches reach ``lo .. hi`` before mirroring. Mirroring maps ``-a`` to ``a``
    and ``n-1+a`` to ``n-1-a``, so every reached pixel lies in
    ``[min(lo, 2(n-1) - hi), max(hi, -lo)]`` clipped to the video (where a patch is mirrored
    more than once, that is the whole axis). Plain integer arithmetic, so that under
    ``torch.compile(dynamic=True)`` the box stays symbolic in the video's size.
    """
    _, T, _, H, W = shape
    r = dilation * (ps // 2)
    lo_off, hi_off = -r, dilation * (ps - 1) - r
    out = []
    for n, start, stop, step, a, b in ((T, region.t0, region.t1, 1, 0, pt - 1),
                                       (H, region.y0, region.y1, stride0, lo_off, hi_off),
                                       (W, region.x0, region.x1, stride0, lo_off, hi_off)):
        lo, hi = start + a, start + (stop - 1 - start) // step * step + b
        out += [torch.sym_max(torch.sym_min(lo, 2 * (n - 1) - hi), 0),
                torch.sym_min(torch.sym_max(hi, -lo), n - 1) + 1]
    return tuple(out)


def _check_patch_args(ps, pt, dilation):
    return V.pos_int(ps, "ps"), V.pos_int(pt, "pt"), V.pos_int(dilation, "dilation")


def _check_out(out) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(video, counts)`` pair of scatter's and aggregate's ``out``, checked as tensors."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("out: expected a (video, counts) pair of tensors")
    video, counts = out
    V.video(video, "out[0] (video)")
    V.tensor(counts, "out[1] (counts)")
    return video, counts


def _check_counts(counts, cshape) -> None:
    if tuple(counts.shape) != tuple(cshape):
        raise ValueError(f"out[1] (counts): expected shape {tuple(cshape)}, got {tuple(counts.shape)}")


def gather(
    video: torch.Tensor,
    inds: torch.Tensor,
    *,
    ps: int,
    pt: int = 1,
    dilation: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Read the patches at ``inds``, the way :func:`search` compared them.

    Parameters
    ----------
    video : Tensor, shape (B, T, C, H, W)
    inds : Tensor, shape (B, nheads, Q, K, 3)
        (t, y, x) centres, e.g. search's ``inds``. Integer tensors read whole pixels;
        float tensors read bilinearly in y and x (t must be integer-valued). Every
        centre must lie inside the video.
    ps, pt, dilation : int
        Patch side, frames per patch and pixel spacing, as in search.
    backend : {None, "reference", "cpu", "cuda"}
        As for :func:`~napari_stnls.ops.search`; the compiled kernels take ``ps <= 32`` and
        ``pt <= 8`` (beyond, None runs the reference and a compiled backend is a ValueError).

    Returns
    -------
    Tensor, shape (B, nheads, Q, K, pt, C/nheads, ps, ps)
        Head h reads channels h*C/nheads .. (h+1)*C/nheads-1. Differentiable w.r.t.
        ``video`` and float ``inds``.

    Examples
    --------
    >>> v = torch.rand(1, 2, 3, 8, 8)
    >>> inds = torch.tensor([[[[[1, 4, 4], [0, 2.5, 3]]]]])  # (1, 1, 1, 2, 3)
    >>> gather(v, inds, ps=3).shape
    torch.Size([1, 1, 1, 2, 1, 3, 3, 3])
    """
    V.video(video, "video")
    ps, pt, dilation = _check_patch_args(ps, pt, dilation)
    V.inds(inds, video.shape)
    if inds.device != video.device:
        raise ValueError(f"inds: expected device {video.device} like video, got {inds.device}")
    if inds.is_floating_point() and inds.dtype not in (torch.float32, torch.float64):
        inds = inds.float()
    if use_compiled("gather", backend, video.device, _unsupported("gather", ps, pt)):
        return _gather_compiled(video, inds, ps, pt, dilation)
    return _reference.gather(video, inds, ps, pt, dilation)


def scatter(
    patches: torch.Tensor,
    inds: torch.Tensor,
    *,
    shape=None,
    out=None,
    weights: torch.Tensor | None = None,
    ps: int,
    pt: int = 1,
    dilation: int = 1,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add (weighted) patches back at ``inds``: the adjoint of :func:`gather`.

    Parameters
    ----------
    patches : Tensor, shape (B, nheads, Q, K, pt, C/nheads, ps, ps)
    inds : Tensor, shape (B, nheads, Q, K, 3)
        Positions as for :func:`gather`.
    shape : sequence of int, optional
        (B, T, C, H, W) of the video to make (exactly one of ``shape`` and ``out``).
    out : (Tensor, Tensor), optional
        ``(video, counts)`` to add into, in place.
    weights : Tensor, shape (B, nheads, Q, K), optional
        Weight of each patch (default 1).
    ps, pt, dilation, backend
        As for :func:`gather`.

    Returns
    -------
    video : Tensor, shape (B, T, C, H, W)
        Sum of weight * patch, each value added with gather's bilinear weights into the
        (mirrored) pixels gather reads it from.
    counts : Tensor, shape (B, T, 1, H, W) for one head, (B, T, nheads, H, W) otherwise
        Sum of the weights at each pixel, so ``video / counts`` is the weighted mean.

    Examples
    --------
    >>> v = torch.rand(1, 2, 3, 8, 8)
    >>> inds = torch.tensor([[[[[1, 4, 4], [0, 2.5, 3]]]]])
    >>> agg, counts = scatter(gather(v, inds, ps=3), inds, shape=v.shape, ps=3)
    >>> torch.allclose(agg[0, 1, :, 3:6, 3:6], v[0, 1, :, 3:6, 3:6])
    True
    """
    V.tensor(patches, "patches")
    if not patches.is_floating_point():
        raise TypeError(f"patches: expected a floating-point tensor, got {patches.dtype}")
    ps, pt, dilation = _check_patch_args(ps, pt, dilation)
    if (shape is None) == (out is None):
        raise ValueError("shape/out: give exactly one of shape (B, T, C, H, W) and out")
    if out is not None:
        video, counts = _check_out(out)
        shape = tuple(video.shape)
    else:
        shape = tuple(s if isinstance(s, (int, torch.SymInt)) else int(s) for s in shape)
        if len(shape) != 5 or min(shape) <= 0:
            raise ValueError(f"shape: expected a non-empty (B, T, C, H, W), got {shape}")
    B, T, C, H, W = shape
    V.inds(inds, shape)
    nh = inds.shape[1]
    Q, K = inds.shape[2:4]
    expected = (B, nh, Q, K, pt, C // nh, ps, ps)
    if tuple(patches.shape) != expected:
        raise ValueError(
            f"patches: expected shape (B, nheads, Q, K, pt, C/nheads, ps, ps) = {expected}, "
            f"got {tuple(patches.shape)}"
        )
    for t, name in ((inds, "inds"), (weights, "weights")):
        if t is not None and t.device != patches.device:
            raise ValueError(f"{name}: expected device {patches.device} like patches, got {t.device}")
    if weights is not None:
        V.tensor(weights, "weights")
        if tuple(weights.shape) != (B, nh, Q, K):
            raise ValueError(
                f"weights: expected shape (B, nheads, Q, K) = {(B, nh, Q, K)}, got {tuple(weights.shape)}"
            )
    cshape = (B, T, 1 if nh == 1 else nh, H, W)
    if out is None:
        video = torch.zeros(shape, dtype=patches.dtype, device=patches.device)
        counts = torch.zeros(cshape, dtype=patches.dtype, device=patches.device)
    else:
        _check_counts(counts, cshape)
    if inds.is_floating_point() and inds.dtype not in (torch.float32, torch.float64):
        inds = inds.float()
    if use_compiled("scatter", backend, patches.device, _unsupported("scatter", ps, pt)):
        return _scatter_compiled(patches, inds, weights, video, counts, ps, pt, dilation)
    return _reference.scatter(patches, inds, weights, video, counts, ps, pt, dilation)


def aggregate(
    video: torch.Tensor,
    inds: torch.Tensor,
    at: torch.Tensor | str | None = None,
    *,
    weights: torch.Tensor | None = None,
    out=None,
    ps: int,
    pt: int = 1,
    dilation: int = 1,
    region=None,
    stride0: int = 1,
    backend: str | None = None,
    check_inds: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the (weighted) patches of ``video`` at ``inds`` into the patches at ``at``:
    ``scatter(gather(video, inds), at, weights=weights)`` without storing the patches.

    This is the core of non-local means: each query's K neighbour patches, weighted, are
    added at the query's own patch. The compiled kernels read each neighbour patch and add
    it straight into the output, so the ``B*nheads*Q*K*pt*C/nheads*ps*ps`` gathered values
    (24 GB for the K=10, ps=7 neighbours of a 540p, 8-frame video) never exist.

    With ``at="queries"`` the patches go to the queries' own positions on the grid of
    ``region`` and ``stride0`` (search's query grid, the non-local-means case). The compiled
    kernels then work in fold form: each output pixel sums the patch pixels that land on it,
    so there are no atomic additions and the results are the same bits on every run, on the
    CPU and on CUDA. With an ``at`` tensor they give the values of gather then scatter: bit
    for bit on the CPU; on CUDA the additions are atomic, so their order (and the last bits)
    may vary run to run, as for :func:`scatter` (under
    ``torch.use_deterministic_algorithms(True)`` the CPU kernel runs instead). Where a
    gradient is needed, or with the reference backend, it composes :func:`gather` and
    :func:`scatter` (same values, differentiable).

    Parameters
    ----------
    video : Tensor, shape (B, T, C, H, W)
    inds : Tensor, shape (B, nheads, Q, K, 3)
        Where the patches are read, as for :func:`gather` (e.g. search's ``inds``).
    at : Tensor of shape (B, nheads, Q, K, 3), or "queries", optional
        Where each patch is added, as for :func:`scatter`; default ``inds``. ``"queries"``:
        query q's K patches all go to q's position on the grid of ``region`` and
        ``stride0`` (:func:`query_coords`), which must have Q queries.
    weights : Tensor, shape (B, nheads, Q, K), optional
        Weight of each patch (default 1).
    out : (Tensor, Tensor), optional
        ``(video, counts)`` to add into, in place, as for :func:`scatter`.
    ps, pt, dilation : int
        As for :func:`gather`.
    region : Region or 6-tuple, optional
        With ``at="queries"``: the region search was called with (default the whole video).
    stride0 : int
        With ``at="queries"``: the query grid's spacing, as for search.
    backend : {None, "reference", "cpu", "cuda"}
        As for :func:`gather`. The compiled backends run the fused kernel where no gradient
        is needed, and their gather then scatter where one is.
    check_inds : bool
        Read ``inds``' values to check that they lie inside the video (one pass over them and,
        on a GPU, a wait for the work queued before). False skips only that, for positions
        that come straight from :func:`~napari_stnls.ops.search`, which lie inside by
        construction (the denoisers pass False: on a GPU their bands then queue one after
        another with no wait); shapes, types and devices are checked either way.

    Returns
    -------
    video : Tensor, shape (B, T, C, H, W)
    counts : Tensor, shape (B, T, 1, H, W) for one head, (B, T, nheads, H, W) otherwise
        As for :func:`scatter`.

    Examples
    --------
    >>> v = torch.rand(1, 2, 3, 8, 8)
    >>> inds = torch.tensor([[[[[1, 4, 4], [0, 2, 3]]]]])
    >>> at = torch.tensor([[[[[1, 4, 4], [1, 4, 4]]]]])
    >>> agg, cnt = aggregate(v, inds, at, ps=3)
    >>> a2, c2 = scatter(gather(v, inds, ps=3), at, shape=v.shape, ps=3)
    >>> torch.equal(agg, a2) and torch.equal(cnt, c2)
    True

    Non-local means on a search's query grid:

    >>> from napari_stnls.ops import search
    >>> d, i = search(v, v, ps=3, ws=3, wt=0, k=4, region=(0, 1, 2, 6, 2, 6))
    >>> agg, cnt = aggregate(v, i, "queries", weights=torch.exp(-d), ps=3, region=(0, 1, 2, 6, 2, 6))
    >>> agg.shape, bool(cnt[0, 0, 0, 4, 4] > 0), bool(cnt[0, 1].eq(0).all())
    (torch.Size([1, 2, 3, 8, 8]), True, True)
    """
    V.video(video, "video")
    ps, pt, dilation = _check_patch_args(ps, pt, dilation)
    if not isinstance(check_inds, bool):
        raise TypeError(f"check_inds: expected True or False, got {check_inds!r}")
    V.inds(inds, video.shape, values=check_inds)
    B, nh, Q, K, _ = inds.shape
    grid = isinstance(at, str)
    if grid:
        if at != "queries":
            raise ValueError(f"at: expected a tensor, None or 'queries', got {at!r}")
        region = as_region(region, video.shape)
        stride0 = V.pos_int(stride0, "stride0")
        nq = math.prod(grid_shape(video.shape, region, stride0))
        if Q != nq:
            raise ValueError(
                f"inds: expected the {nq} queries of the grid of region {region} and stride0 "
                f"{stride0} (at='queries'), got Q = {Q}"
            )
    elif region is not None or stride0 != 1:
        raise ValueError("region, stride0: only with at='queries' (they describe the query grid)")
    elif at is None:
        at = inds
    else:
        V.inds(at, video.shape, "at")
        if tuple(at.shape) != tuple(inds.shape):
            raise ValueError(f"at: expected the shape of inds {tuple(inds.shape)}, got {tuple(at.shape)}")
    for t, name in ((inds, "inds"), (None if grid else at, "at"), (weights, "weights")):
        if t is not None and t.device != video.device:
            raise ValueError(f"{name}: expected device {video.device} like video, got {t.device}")
    if weights is not None:
        V.tensor(weights, "weights")
        if tuple(weights.shape) != (B, nh, Q, K):
            raise ValueError(
                f"weights: expected shape (B, nheads, Q, K) = {(B, nh, Q, K)}, got {tuple(weights.shape)}"
            )
    cshape = (B, video.shape[1], 1 if nh == 1 else nh, *video.shape[3:])
    if out is not None:
        out = _check_out(out)
        if tuple(out[0].shape) != tuple(video.shape):
            raise ValueError(
                f"out[0] (video): expected shape {tuple(video.shape)}, got {tuple(out[0].shape)}")
        _check_counts(out[1], cshape)
    if inds.is_floating_point() and inds.dtype not in (torch.float32, torch.float64):
        inds = inds.float()
    if weights is not None and not weights.is_floating_point():
        weights = weights.to(video.dtype)
    compiled = use_compiled("aggregate", backend, video.device, _unsupported("aggregate", ps, pt))
    # the fused kernels have no backward: with a gradient, the compiled backends run their
    # (differentiable) gather then scatter
    fused = compiled and not (torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (video, inds, at, weights)))
    if grid and not fused:  # the grid's positions, for gather and scatter
        at = query_coords(video.shape, region, stride0, device=video.device).view(1, 1, Q, 1, 3)
        at = at.expand(B, nh, Q, K, 3)
    elif not grid and at.is_floating_point() and at.dtype not in (torch.float32, torch.float64):
        at = at.float()
    if out is None and not (fused and not grid):
        out = (video.new_zeros(video.shape), video.new_zeros(cshape))
    if not compiled:
        return _reference.aggregate(video, inds, at, weights, *out, ps, pt, dilation)
    if not fused:
        return _scatter_compiled(_gather_compiled(video, inds, ps, pt, dilation), at, weights, *out, ps, pt,
                                 dilation)
    v_cl = _channels_last(video)
    if grid:  # fold form: no atomics, deterministic on every device; only the reached box
        box = _grid_box(video.shape, region, stride0, ps, pt, dilation)
        o_cl, c_cl = torch.ops.napari_stnls.aggregate_grid(v_cl, _pos(inds), weights, list(region), stride0,
                                                           list(box), ps, pt, dilation)
        sl = (slice(None), slice(box[0], box[1]), slice(None), slice(box[2], box[3]),
              slice(box[4], box[5]))
        out[0][sl] += o_cl.permute(0, 1, 4, 2, 3)
        out[1][sl] += c_cl.permute(0, 1, 4, 2, 3)
        return out
    # one position dtype for both: float (bilinear) if either is, else int64
    if inds.is_floating_point() or at.is_floating_point():
        pdt = torch.float64 if torch.float64 in (inds.dtype, at.dtype) else torch.float32
    else:
        pdt = torch.int64
    o_cl, c_cl = _determinism.call("aggregate_patches", v_cl, inds.to(pdt).contiguous(),
                                   at.to(pdt).contiguous(), weights, ps, pt, dilation)
    if out is None:
        return o_cl.permute(0, 1, 4, 2, 3).contiguous(), c_cl.permute(0, 1, 4, 2, 3).contiguous()
    out[0].add_(o_cl.permute(0, 1, 4, 2, 3))
    out[1].add_(c_cl.permute(0, 1, 4, 2, 3))
    return out
