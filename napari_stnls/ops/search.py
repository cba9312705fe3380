"""Space-time K-nearest-neighbour patch search, guided by optical flow.

``search`` validates its arguments, asks the guard (:func:`._library.use_compiled`) whether
the compiled kernels take the call, and runs them (:func:`_search_compiled`: the queries in
chunks, the window centres chained along the flows in PyTorch, then
``torch.ops.napari_stnls.search_topk`` or ``search_topk_box``, ``search_positions_int`` for
``itype="int"``, and ``search_dists``) or the reference twin (:mod:`._reference.search`).
See docs/api.md for the full definition (window, flow chaining, borders, ties).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from . import _determinism, _subpixel, _window
from . import _validate as V
from ._library import use_compiled
from ._reference import search as _reference
from ._reference.search import search_memory_per_query
from ._region import as_region, grid_shape, query_coords

__all__ = ["search", "search_memory_per_query"]


def _unsupported(ps: int, pt: int, k: int, device: torch.device) -> str | None:
    """Why the compiled search cannot take this call, or None."""
    if ps > 32 or pt > 8 or (device.type == "cuda" and k > 256):
        return (f"the compiled search takes ps <= 32 and pt <= 8, and k <= 256 on CUDA "
                f"(got ps={ps}, pt={pt}, k={k})")
    return None


# Whether sub-pixel searches take search_topk_subpix by default, per device type: off on both
# (docs/benchmarks.md). On an H100 its box sums (a block-wide difference image per offset,
# three barriers each) cost as much as the window kernel's direct sums, 1.2x faster at ws 9
# and slower at ws 21 on a smooth flow, and twice as slow on real flows, whose spread inside
# a tile widens the offsets it covers; on the CPU about as fast as the window path.
# With the sliding kernel's box sums (topk_subpix_slide_kernel, :func:`_subpix_slide`) it was
# 122 against 142 ms at ws 9 on a smooth flow (H100), but no faster inside nl_means on real
# flows. "slide": only the calls that variant takes.
SUBPIX_DEFAULT: dict[str, bool | str] = {"cpu": False, "cuda": False}


def _subpix_slide(C: int, P: _window.Params) -> bool:
    """Whether ``search_topk_subpix`` on CUDA takes its whole-pixel distances from the sliding
    kernel's box sums (the rule of ``subpix_slide`` in csrc/cuda/search/subpix.cu): ps 3, 5
    or 7, 1 or 3 frames x channels a head, k <= 32, and each query's (ws+1)^2 grid of a tile
    of (33 - ps) x (8 or 6) queries within the shared memory of two blocks an SM."""
    pc = P.pt * (C // P.nheads)
    if P.k > 32 or P.ps not in (3, 5, 7) or pc not in (1, 3):
        return False
    n = (33 - P.ps) * (8 if pc == 1 else 6)
    return 4 * ((P.ws + 1) ** 2 * n + 8192 + 2 * n) <= 112 * 1024


def _subpix_kernel(queries: torch.Tensor, flows, P: _window.Params) -> bool:
    """Whether ``search_topk_subpix`` takes this call: sub-pixel windows (a flow, float
    positions) of a dense query grid, unit spacing and dilation, L2, k <= 64, ws <= 21;
    float32 on CUDA, float32 and float64 on the CPU. ``NAPARI_STNLS_SUBPIX`` (read on every
    call, to time the kernels against each other): ``1`` takes it, ``0`` never; unset, the
    default of the device (:data:`SUBPIX_DEFAULT`; ``"slide"``: where :func:`_subpix_slide`
    holds)."""
    env = os.environ.get("NAPARI_STNLS_SUBPIX", "")
    default = SUBPIX_DEFAULT[queries.device.type]
    if env == "0" or not (env == "1" or default):
        return False
    dtypes = (torch.float32,) if queries.is_cuda else (torch.float32, torch.float64)
    ok = (queries.dtype in dtypes and flows is not None and P.itype == "float" and P.grid is not None
          and P.stride0 == 1 and float(P.stride1) == 1.0 and P.dilation == 1 and P.dist == "l2"
          and P.k <= 64 and P.ws <= 21)
    if ok and env != "1" and default == "slide":
        return queries.is_cuda and _subpix_slide(queries.shape[2], P)
    return ok


def _compiled_chunks(P: _window.Params, Q: int,
                     batch_size: int | None) -> list[tuple[int, int, _window.Params]]:
    """Query ranges ``[start, stop)`` the compiled search runs at once, with their own grid.

    Chunks are whole frames or whole rows of the query grid (so each one is a grid the box
    kernel can tile), of at most ``batch_size`` queries where that is at least one row, else
    one row. By default a chunk holds a quarter of the queries, or more if the glue around
    the kernels (centres, ids and their positions, about ``nt*24 + nheads*k*64`` bytes per
    query) still fits the 256 MiB budget: few large launches keep the GPU full, and the
    memory beyond the outputs stays near the outputs' own size.
    """
    if P.grid is None:
        return [(0, Q, P)]
    t0, y0, x0, T_r, nH, nW = P.grid
    per_query = P.nt * 24 + P.nheads * P.k * 64
    n = batch_size if batch_size is not None else max(_window.BUDGET // per_query, -(-Q // 4))
    frame = nH * nW
    if n >= frame:
        step = n // frame
        return [
            (t * frame, min(T_r, t + step) * frame,
             replace(P, grid=(t0 + t, y0, x0, min(step, T_r - t), nH, nW)))
            for t in range(0, T_r, step)
        ]
    rows = max(1, n // nW)
    return [
        ((t * nH + r) * nW, (t * nH + min(nH, r + rows)) * nW,
         replace(P, grid=(t0 + t, y0 + r * P.stride0, x0, 1, min(rows, nH - r), nW)))
        for t in range(T_r)
        for r in range(0, nH, rows)
    ]


def _search_compiled(queries, keys, flows, coords, P: _window.Params, batch_size):
    """The compiled search: a streaming top-k over all candidates, which also returns the
    distances it selected by, made differentiable by ``search_dists`` (whose backward is its
    own operator). Queries go in chunks of whole grid rows (:func:`_compiled_chunks`), so the
    memory beyond the outputs stays bounded; flows are chained here, in PyTorch, so that
    their gradient is autograd's."""
    acc = V.acc_dtype(queries.dtype)
    q_cl = queries.permute(0, 1, 3, 4, 2).contiguous()
    k_cl = q_cl if keys is queries else keys.permute(0, 1, 3, 4, 2).contiguous()
    fflow, bflow = _window.flat_flows(flows, P, acc) or (None, None)
    l2 = P.dist == "l2"
    # whole-pixel centres on a regular query grid: tiles of queries share box sums
    box_kernel = P.grid is not None and float(P.stride1).is_integer() and (P.itype == "int" or flows is None)
    subpix = not box_kernel and _subpix_kernel(queries, flows, P)
    if subpix:
        # windows lie inside the frame (centres are clamped): a candidate's corners reach
        # one row and column past it
        margin = 1
        t0, T_r = P.grid[0], P.grid[3]  # the key frames this search's windows read
        read = _window.window_frames(torch.arange(t0, t0 + T_r), P).unique().tolist()
        with torch.no_grad():
            pairs = _subpixel.pair_sums(k_cl, P.ps, P.pt, P.nheads, margin, read)
    Q = coords.shape[0]
    chunks = _compiled_chunks(P, Q, batch_size)
    dists = inds = None
    for start, stop, Pc in chunks:
        crd = coords[start:stop]
        centres, frames = _determinism.call("search_centres", crd, fflow, bflow, Pc, acc,
                                            fn=_window.centres_compiled)
        args = (Pc.ps, Pc.pt, Pc.dilation, Pc.nheads, Pc.k, l2, Pc.exclude_self)
        if box_kernel:
            off = _window.offsets(Pc, acc, coords.device)
            found, ids = torch.ops.napari_stnls.search_topk_box(
                q_cl, k_cl, crd, centres.detach(), frames, off, [*Pc.grid, int(Pc.stride1)], Pc.stride0,
                *args)
        elif subpix:
            found, ids = torch.ops.napari_stnls.search_topk_subpix(
                q_cl, k_cl, crd, centres.detach(), frames, pairs, list(Pc.grid), Pc.ws, Pc.ps, Pc.pt,
                Pc.nheads, Pc.k, margin, Pc.exclude_self)
        else:
            # the offsets go on the CPU: the kernels pick their path from them without a sync
            off = _window.offsets(Pc, acc, torch.device("cpu"))
            found, ids = torch.ops.napari_stnls.search_topk(q_cl, k_cl, crd, centres.detach(), frames, off,
                                                            *args)
        if P.itype == "int":  # whole pixels, no gradient: one kernel writes the int32 positions
            kpos = torch.ops.napari_stnls.search_positions_int(ids, centres.detach(), frames, Pc.ws,
                                                               int(Pc.stride1))
        elif not centres.requires_grad and not _window.torch_glue(centres.device):  # one kernel, same bits
            kpos = torch.ops.napari_stnls.search_positions(ids, centres, frames, Pc.ws, float(Pc.stride1))
        else:
            kpos = _determinism.call("search_positions", centres, frames, ids, Pc, fn=_window.positions)
        del ids, centres, frames
        # the top-k kernels' own distances, differentiable as search_dists at kpos
        d = torch.ops.napari_stnls.search_dists(q_cl, k_cl, crd, kpos, P.ps, P.pt, P.dilation, l2, found)
        del found
        i = kpos
        if len(chunks) == 1:
            return d, i
        if dists is None:  # written chunk by chunk (differentiably), never concatenated
            dists = d.new_empty(d.shape[:2] + (Q,) + d.shape[3:])
            inds = i.new_empty(i.shape[:2] + (Q,) + i.shape[3:])
        dists[:, :, start:stop] = d
        inds[:, :, start:stop] = i
    return dists, inds


def search(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    ps: int = 7,
    ws: int = 21,
    wt: int = 2,
    k: int = 10,
    flows=None,
    dist: str = "l2",
    stride0: int = 1,
    stride1: float = 1.0,
    dilation: int = 1,
    pt: int = 1,
    nheads: int = 1,
    region=None,
    exclude_self: bool = False,
    itype: str = "float",
    batch_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K nearest patches of every query patch in a space-time window that follows the flow.

    Parameters
    ----------
    queries, keys : Tensor, shape (B, T, C, H, W)
        Floating-point videos of the same shape, dtype and device. Queries are read
        from ``queries`` on the grid of ``region``; candidates from all of ``keys``.
    ps : int
        Patch side; a patch holds ``ps x ps`` pixels centred on its position, spaced
        ``dilation`` apart, over ``pt`` frames, mirrored at the borders.
    ws : int
        Side of the (odd) search grid in each candidate frame.
    wt : int
        Temporal radius: candidate frames t-wt..t+wt, shifted at the video's ends to
        always hold ``min(T, 2*wt+1)`` frames.
    k : int
        Number of neighbours returned per query.
    flows : (Tensor, Tensor), optional
        ``(fflow, bflow)``, each (B, T, 2, H, W), channel 0 = dx, 1 = dy; ``fflow[:, t]``
        moves frame t to t+1 and ``bflow[:, t]`` frame t to t-1. Chained frame to frame.
    dist : {"l2", "prod"}
        Sum of squared differences (smallest first) or sum of products (largest first).
    stride0 : int
        Spacing of the query grid.
    stride1 : float
        Spacing of the search grid (may be fractional with ``itype="float"``).
    dilation, pt, nheads
        Patch dilation, frames per patch, and channel heads (each head searches on
        its own ``C/nheads`` contiguous channels).
    region : Region or 6-tuple, optional
        Half-open (t0, t1, y0, y1, x0, x1) restricting the queries. None: whole video.
    exclude_self : bool
        Drop the candidate at the query's own position.
    itype : {"float", "int"}
        Sub-pixel (bilinear) positions, or window centres rounded to whole pixels.
    batch_size : int, optional
        The most queries processed at once; None picks it from a 256 MiB budget.
    backend : {None, "reference", "cpu", "cuda"}
        None (automatic: the compiled kernels of the tensors' device where they are built
        and take the call, else the reference; ``NAPARI_STNLS_BACKEND`` sets the default),
        the pure-PyTorch reference, or a compiled backend (a ValueError says why where it
        cannot run).

    Returns
    -------
    dists : Tensor, shape (B, nheads, Q, k)
        Best first; ties are ordered by candidate position (t, then y, then x).
    inds : Tensor, shape (B, nheads, Q, k, 3)
        Absolute (t, y, x) positions in ``keys``: float32 (float64 for float64 videos)
        with ``itype="float"``, int32 with ``itype="int"``.

    Examples
    --------
    >>> video = torch.rand(1, 3, 1, 16, 16)
    >>> dists, inds = search(video, video, ps=3, ws=5, wt=1, k=4)
    >>> dists.shape, inds.shape
    (torch.Size([1, 1, 768, 4]), torch.Size([1, 1, 768, 4, 3]))
    >>> bool((dists[..., 0] == 0).all())  # every patch finds itself first
    True
    """
    V.video(queries, "queries")
    V.video(keys, "keys")
    if tuple(keys.shape) != tuple(queries.shape):
        raise ValueError(
            f"keys: expected the same shape as queries {tuple(queries.shape)}, got {tuple(keys.shape)}"
        )
    V.same_tensor_kind(queries, keys, "queries", "keys")
    B, T, C, H, W = queries.shape
    ps = V.pos_int(ps, "ps")
    ws = V.pos_int(ws, "ws")
    if ws % 2 == 0:
        raise ValueError(f"ws: expected an odd search-grid side, got {ws}")
    wt = V.pos_int(wt, "wt", minimum=0)
    k = V.pos_int(k, "k")
    stride0 = V.pos_int(stride0, "stride0")
    stride1 = V.pos_float(stride1, "stride1")
    dilation = V.pos_int(dilation, "dilation")
    pt = V.pos_int(pt, "pt")
    nheads = V.heads(C, nheads)
    dist = V.choice(dist, "dist", ("l2", "prod"))
    itype = V.choice(itype, "itype", ("float", "int"))
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self: expected a bool, got {exclude_self!r}")
    if itype == "int" and stride1 != int(stride1):
        raise ValueError(f"stride1: must be an integer with itype='int', got {stride1}")
    if (ws - 1) * stride1 > min(H, W) - 1:
        raise ValueError(
            f"ws: the search grid spans (ws-1)*stride1 = {(ws - 1) * stride1:g} pixels, more than "
            f"the frame allows ({min(H, W) - 1} for H={H}, W={W}); use a smaller ws or stride1"
        )
    nt = min(T, 2 * wt + 1)
    ncand = nt * ws * ws - (1 if exclude_self else 0)
    if k > ncand:
        raise ValueError(
            f"k: expected at most the {ncand} candidates of the window "
            f"(min(T, 2*wt+1)={nt} frames x ws*ws={ws * ws}"
            f"{' - 1 for exclude_self' if exclude_self else ''}), got {k}"
        )
    if batch_size is not None:
        batch_size = V.pos_int(batch_size, "batch_size")
    if flows is not None:
        if not isinstance(flows, (tuple, list)) or len(flows) != 2:
            raise TypeError("flows: expected None or a pair (fflow, bflow) of tensors")
        for f, name in zip(flows, ("fflow", "bflow"), strict=False):
            V.tensor(f, f"flows ({name})")
            if tuple(f.shape) != (B, T, 2, H, W):
                raise ValueError(
                    f"flows ({name}): expected shape (B, T, 2, H, W) = {(B, T, 2, H, W)}, "
                    f"got {tuple(f.shape)}"
                )
            if not f.is_floating_point():
                raise TypeError(f"flows ({name}): expected a floating-point tensor, got {f.dtype}")
            if f.device != queries.device:
                raise ValueError(f"flows ({name}): expected device {queries.device}, got {f.device}")
        flows = tuple(flows)
    region = as_region(region, queries.shape)
    coords = query_coords(queries.shape, region, stride0, device=queries.device)
    T_r, nH, nW = grid_shape(queries.shape, region, stride0)
    P = _window.Params(
        (B, T, C, H, W), ps, ws, wt, k, dist, stride1, dilation, pt, nheads, exclude_self, itype,
        stride0, (region.t0, region.y0, region.x0, T_r, nH, nW),
    )
    if use_compiled("search", backend, queries.device, _unsupported(ps, pt, k, queries.device)):
        return _search_compiled(queries, keys, flows, coords, P, batch_size)
    return _reference.search(queries, keys, flows, coords, P, batch_size)
