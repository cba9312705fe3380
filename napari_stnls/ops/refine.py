"""Multi-stage search: the k best patches in small windows around given positions.

``refine`` validates its arguments, asks the guard (:func:`._library.use_compiled`) whether the
compiled kernels take the call, and runs them (:func:`_refine_compiled`: the window centres
in PyTorch, ``torch.ops.napari_stnls.refine_topk`` for the chosen ids, then ``search_dists``
for differentiable distances) or the reference twin (:mod:`._reference.refine`). See
docs/api.md for the definition (windows, repeated positions, ties).
"""

from __future__ import annotations

import torch

from . import _determinism, _window
from . import _validate as V
from ._library import use_compiled
from ._reference import refine as _reference
from ._region import as_region, grid_shape, query_coords

__all__ = ["refine"]


def _unsupported(ps: int, pt: int, k: int, device: torch.device) -> str | None:
    """Why the compiled refine cannot take this call, or None."""
    if ps > 32 or pt > 8 or (device.type == "cuda" and k > 128):
        return (f"the compiled refine takes ps <= 32 and pt <= 8, and k <= 128 on CUDA "
                f"(got ps={ps}, pt={pt}, k={k})")
    return None


def _refine_compiled(queries, keys, inds, coords, P: _window.Params, batch_size):
    """The compiled refine: ``refine_topk`` returns the ids of the k best candidates and the
    distances it selected by, made differentiable by ``search_dists`` at their positions
    (which are differentiable w.r.t. float ``inds`` through the window centres)."""
    acc = V.acc_dtype(queries.dtype)
    q_cl = queries.permute(0, 1, 3, 4, 2).contiguous()
    k_cl = q_cl if keys is queries else keys.permute(0, 1, 3, 4, 2).contiguous()
    centres = _reference.window_centres(inds, P, acc)
    l2 = P.dist == "l2"

    def chunk(crd, cen):
        found, ids = torch.ops.napari_stnls.refine_topk(
            q_cl, k_cl, crd, cen.detach().contiguous(), P.ws, P.ps, P.pt, P.dilation, P.k, l2, P.exclude_self)
        kpos = _determinism.call("refine_positions", cen, ids, P, fn=_reference.positions)
        del ids
        d = torch.ops.napari_stnls.search_dists(q_cl, k_cl, crd, kpos, P.ps, P.pt, P.dilation, l2, found)
        # entries past a query's distinct candidates keep the worst distance, with no gradient
        d = torch.where(torch.isinf(found), found, d)
        return d, (kpos.to(torch.int32) if P.itype == "int" else kpos)

    if batch_size is None:  # one call (no loop over a size: torch.compile keeps it symbolic)
        return chunk(coords, centres)
    Q = coords.shape[0]
    dists = out = None
    for start in range(0, Q, batch_size):
        stop = min(Q, start + batch_size)
        d, i = chunk(coords[start:stop], centres[:, :, start:stop])
        if dists is None:  # written chunk by chunk (differentiably), never concatenated
            dists = d.new_empty(d.shape[:2] + (Q,) + d.shape[3:])
            out = i.new_empty(i.shape[:2] + (Q,) + i.shape[3:])
        dists[:, :, start:stop] = d
        out[:, :, start:stop] = i
    return dists, out


def refine(
    queries: torch.Tensor,
    keys: torch.Tensor,
    inds: torch.Tensor,
    *,
    ps: int = 7,
    wr: int = 3,
    k: int | None = None,
    dist: str = "l2",
    pt: int = 1,
    dilation: int = 1,
    nheads: int = 1,
    stride0: int = 1,
    region=None,
    itype: str = "float",
    batch_size: int | None = None,
    exclude_self: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best patches in a ``wr x wr`` window around each of the given positions of every
    query: the second stage of a multi-stage search.

    For each query and each of its ``K_in`` given positions ``(t, y, x)``, the candidates are
    ``(t, c_y + dy, c_x + dx)`` for ``dy, dx`` in ``-(wr//2) .. wr//2``, where the centre ``c``
    is the position moved inside the frame as search moves its window (clamped into
    ``[wr//2, H-1-wr//2] x [wr//2, W-1-wr//2]``; rounded to whole pixels first with
    ``itype="int"``). A position that several windows reach counts once.

    Parameters
    ----------
    queries, keys : Tensor, shape (B, T, C, H, W)
        Floating-point videos of the same shape, dtype and device. Queries are read from
        ``queries`` on the grid of ``region`` (stride ``stride0``); candidates from ``keys``.
    inds : Tensor, shape (B, nheads or 1, Q, K_in, 3)
        Positions (t, y, x) inside the video for the same query grid, e.g. an earlier
        ``search``'s output; integer or float (with integer-valued t). One head's positions
        serve every head.
    ps, pt, dilation, nheads, dist, stride0, region, exclude_self
        As in :func:`napari_stnls.ops.search`.
    wr : int
        Side of the (odd) window around each given position; ``wr=1`` recomputes the
        distances at the given positions.
    k : int, optional
        Neighbours returned per query, at most ``K_in * wr * wr`` (minus one with
        ``exclude_self``); default ``K_in``.
    itype : {"float", "int"}
        Sub-pixel positions (bilinear patches, gradients through the positions to float
        ``inds``), or windows centred on whole pixels.
    batch_size : int, optional
        The most queries processed at once; None picks it from a 256 MiB budget.
    backend : {None, "reference", "cpu", "cuda"}
        As in :func:`napari_stnls.ops.search`.

    Returns
    -------
    dists : Tensor, shape (B, nheads, Q, k)
        Best first; ties ordered by position (t, then y, then x). Where a query's windows
        hold fewer than k distinct positions (repeated given positions, or windows moved
        onto each other at a border), its last entries have the worst distance (+inf for
        "l2", -inf for "prod"), no gradient, and the position of candidate 0 (the first
        window's first row and column).
    inds : Tensor, shape (B, nheads, Q, k, 3)
        Absolute (t, y, x) positions in ``keys``: float32 (float64 for float64 videos)
        with ``itype="float"``, int32 with ``itype="int"``.

    Examples
    --------
    >>> from napari_stnls.ops import search
    >>> video = torch.rand(1, 3, 1, 16, 16)
    >>> d0, i0 = search(video, video, ps=3, ws=5, wt=1, k=4, stride0=2)
    >>> dists, inds = refine(video, video, i0, ps=5, wr=3, k=4, stride0=2)
    >>> dists.shape, inds.shape
    (torch.Size([1, 1, 192, 4]), torch.Size([1, 1, 192, 4, 3]))
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
    wr = V.pos_int(wr, "wr")
    if wr % 2 == 0:
        raise ValueError(f"wr: expected an odd window side, got {wr}")
    if wr > min(H, W):
        raise ValueError(f"wr: the window ({wr} x {wr}) does not fit in the frame (H={H}, W={W})")
    stride0 = V.pos_int(stride0, "stride0")
    dilation = V.pos_int(dilation, "dilation")
    pt = V.pos_int(pt, "pt")
    nheads = V.heads(C, nheads)
    dist = V.choice(dist, "dist", ("l2", "prod"))
    itype = V.choice(itype, "itype", ("float", "int"))
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self: expected a bool, got {exclude_self!r}")
    if batch_size is not None:
        batch_size = V.pos_int(batch_size, "batch_size")
    region = as_region(region, queries.shape)
    T_r, nH, nW = grid_shape(queries.shape, region, stride0)
    Q = T_r * nH * nW
    V.tensor(inds, "inds")
    if inds.ndim != 5 or inds.shape[-1] != 3:
        raise ValueError(f"inds: expected shape (B, nheads, Q, K_in, 3), got {tuple(inds.shape)}")
    if inds.shape[1] not in (1, nheads):
        raise ValueError(f"inds: expected 1 or nheads={nheads} heads (axis 1), got {inds.shape[1]}")
    if inds.shape[2] != Q:
        raise ValueError(
            f"inds: expected the Q={Q} queries of the grid of region {tuple(region)} with stride0={stride0} "
            f"(axis 2), got {inds.shape[2]}"
        )
    if inds.shape[3] < 1:
        raise ValueError("inds: expected at least one position per query (axis 3 is empty)")
    if inds.device != queries.device:
        raise ValueError(f"inds: expected device {queries.device}, got {inds.device}")
    V.inds(inds, queries.shape)
    K_in = inds.shape[3]
    ncand = K_in * wr * wr - (1 if exclude_self else 0)
    k = K_in if k is None else V.pos_int(k, "k")
    if k > ncand:
        raise ValueError(
            f"k: expected at most the {ncand} candidates of the windows (K_in={K_in} x wr*wr={wr * wr}"
            f"{' - 1 for exclude_self' if exclude_self else ''}), got {k}"
        )
    inds = inds.expand(B, nheads, *inds.shape[2:])
    coords = query_coords(queries.shape, region, stride0, device=queries.device)
    P = _window.Params(
        (B, T, C, H, W), ps, wr, 0, k, dist, 1.0, dilation, pt, nheads, exclude_self, itype,
        stride0, (region.t0, region.y0, region.x0, T_r, nH, nW),
    )
    if use_compiled("refine", backend, queries.device, _unsupported(ps, pt, k, queries.device)):
        return _refine_compiled(queries, keys, inds, coords, P, batch_size)
    return _reference.refine(queries, keys, inds, coords, P, batch_size)
