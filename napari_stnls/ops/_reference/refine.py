"""The reference refine: pure PyTorch, batched over queries so memory is bounded, and the
window glue that the compiled refine shares (window centres, candidate ids -> positions).

Like the reference search, two stages: the selection reads every candidate patch of a batch
of queries and keeps the k best ids, with no gradient; the distances at the k chosen
positions are then computed again, differentiably, each batch as a checkpoint.

Candidate ids number the candidates of a query's K_in windows: window ``j``, row ``i``,
column ``jj`` is ``(j * wr + i) * wr + jj``, at ``(t_j, c_j.y + i - wr//2, c_j.x + jj - wr//2)``
with ``c_j`` the window's centre (:func:`window_centres`).
"""

from __future__ import annotations

import math

import torch

from .. import _window
from .._validate import acc_dtype
from .search import _auto_batch, _batch_dists, _dists, search_memory_per_query
from .taps import channels_last

__all__ = ["positions", "refine", "window_centres"]


def window_centres(inds: torch.Tensor, P: _window.Params, dtype: torch.dtype) -> torch.Tensor:
    """Window centres ``(B, nheads, Q, K_in, 3)`` = (t, y, x) in ``dtype`` of the given positions
    ``inds`` (B, nheads, Q, K_in, 3), differentiable w.r.t. float ``inds``.

    As search's window: the position is clamped into the frame, rounded to the nearest pixel
    with ``itype="int"`` (half to even), then clamped into ``[r, H-1-r] x [r, W-1-r]``,
    ``r = wr//2`` (``P.ws`` holds wr), so that the window stays inside the frame.
    """
    _, H, W = P.thw
    p = inds.to(dtype)
    t = torch.round(p[..., :1])
    lim = torch.tensor([H - 1, W - 1], dtype=dtype, device=inds.device)
    c = torch.minimum(p[..., 1:].clamp(min=0), lim)
    if P.itype == "int":
        c = torch.round(c)
    r = P.ws // 2
    c = torch.minimum(c.clamp(min=r), lim - r)
    return torch.cat([t, c], dim=-1)


def positions(centres: torch.Tensor, ids: torch.Tensor, P: _window.Params) -> torch.Tensor:
    """Positions ``(B, nheads, Q, k, 3)`` in the centres' dtype of candidate ids ``(B, nheads, Q,
    k)``, differentiable w.r.t. the centres (the same additions the kernels make, so that the
    positions are theirs bit for bit)."""
    wr = P.ws
    j = torch.div(ids, wr * wr, rounding_mode="floor")
    ij = ids - j * (wr * wr)
    i = torch.div(ij, wr, rounding_mode="floor")
    off = torch.stack([torch.zeros_like(i), i - wr // 2, ij - i * wr - wr // 2], dim=-1).to(centres.dtype)
    c = torch.gather(centres, 3, j.unsqueeze(-1).expand(*j.shape, 3))
    return c + off


def _candidates(centres: torch.Tensor, wr: int) -> torch.Tensor:
    """Every candidate position ``(B, nheads, Qb, K_in * wr * wr, 3)`` in id order."""
    r = wr // 2
    off = torch.arange(wr, dtype=centres.dtype, device=centres.device) - r
    shift = torch.stack(
        [torch.zeros(wr, wr, dtype=centres.dtype, device=centres.device),
         off[:, None].expand(wr, wr), off[None, :].expand(wr, wr)], dim=-1
    )  # (wr, wr, 3)
    pos = centres[..., None, None, :] + shift
    return pos.reshape(*centres.shape[:3], -1, 3)


def _select(q_flat, k_flat, coords, centres, P: _window.Params):
    """The k best candidate ids ``(B, nheads, Qb, k)`` of queries ``coords`` (Qb, 3) and their
    distances, by (distance, t, y, x); a position that several windows reach counts once (as
    the first window's candidate). Entries past a query's distinct candidates get id 0 and
    the worst distance."""
    pos = _candidates(centres, P.ws)  # (B, nh, Qb, N, 3)
    d = _batch_dists(q_flat, k_flat, coords, pos, P)  # (B, nh, Qb, N)
    drop = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    if P.exclude_self:
        cq = coords.to(pos.dtype).view(1, 1, -1, 1, 3)
        drop = (
            (pos[..., 0] == cq[..., 0])
            & ((pos[..., 1] - cq[..., 1]).abs() < 1e-4)
            & ((pos[..., 2] - cq[..., 2]).abs() < 1e-4)
        )
    # candidates in position order (t, then y, then x), equal positions in id order: stable
    # sorts by x, then y, then t; a position equal to the one before it is a repeat
    order = torch.arange(pos.shape[3], device=d.device).expand(d.shape)
    for col in (2, 1, 0):
        key = torch.gather(pos[..., col], -1, order)
        order = torch.gather(order, -1, torch.sort(key, dim=-1, stable=True).indices)
    sp = torch.gather(pos, 3, order.unsqueeze(-1).expand(*order.shape, 3))
    repeat = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    repeat[..., 1:] = (sp[..., 1:, :] == sp[..., :-1, :]).all(-1)
    drop = torch.gather(drop, -1, order) | repeat
    descending = P.dist == "prod"
    worst = -math.inf if descending else math.inf
    ds = torch.gather(d, -1, order).masked_fill(drop, worst)
    # a stable sort by distance of the candidates in position order: ties by position
    ds, rank = torch.sort(ds, dim=-1, descending=descending, stable=True)
    ids = torch.gather(order, -1, rank[..., : P.k])
    empty = torch.gather(drop, -1, rank[..., : P.k])
    return ds[..., : P.k].masked_fill(empty, worst), ids.masked_fill(empty, 0)


def refine(queries, keys, inds, coords, P: _window.Params, batch_size: int | None):
    """The reference twin of :func:`napari_stnls.ops.refine`, on validated arguments: ``inds``
    (B, nheads, Q, K_in, 3), ``coords`` (Q, 3) the queries, ``P`` the parameters (``P.ws`` is
    wr). Returns (dists, inds)."""
    acc = acc_dtype(queries.dtype)
    Q = coords.shape[0]
    q_flat = channels_last(queries, P.nheads)
    k_flat = q_flat if keys is queries else channels_last(keys, P.nheads)
    centres = window_centres(inds, P, acc)
    n_cand = centres.shape[3] * P.ws * P.ws
    per_patch = search_memory_per_query(P.shape, P.ps, 1, P.pt)
    if batch_size is None:
        sel_batch = _auto_batch(per_patch * n_cand, Q)
        dist_batch = _auto_batch(per_patch * P.k, Q)
    else:
        sel_batch = dist_batch = batch_size
    with torch.no_grad():
        cen = centres.detach()
        sel = [_select(q_flat, k_flat, coords[s : s + sel_batch], cen[:, :, s : s + sel_batch], P)
               for s in range(0, Q, sel_batch)]
    found = torch.cat([f for f, _ in sel], dim=2)
    ids = torch.cat([i for _, i in sel], dim=2)
    kpos = positions(centres, ids, P)
    dists = _dists(q_flat, k_flat, coords, kpos, P, dist_batch)
    # entries past a query's distinct candidates keep the worst distance, with no gradient
    dists = torch.where(torch.isinf(found), found, dists)
    return dists, (kpos.to(torch.int32) if P.itype == "int" else kpos)
