"""The reference search: pure PyTorch, batched over queries so memory is bounded.

Two stages. The selection reads every candidate patch of a batch of queries and keeps the k
best ids, with no gradient. The distances of the k selected positions are then computed
again, differentiably (w.r.t. both videos and, through the positions, the flows), each batch
as a checkpoint: the backward recomputes a batch's patches instead of keeping them, so
memory stays bounded by the batch in the backward too.
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint

from .. import _window
from .._validate import acc_dtype
from .taps import channels_last, patch_taps, read, reflect

__all__ = ["search", "search_memory_per_query"]


def search_memory_per_query(shape, ps: int, ws: int, pt: int = 1, itype: str = "float",
                            stride1: float = 1.0) -> int:
    """Bytes of working set per query in the candidate stage of the reference search.

    Integer ``stride1`` reads one window per query and frame and views the candidate
    patches in it: the patches, differences and squares (float32) dominate. Fractional
    ``stride1`` reads every candidate pixel through up to four bilinear taps, each with
    an int64 index and a value. Used to pick ``batch_size``.
    """
    C = shape[2]
    if float(stride1).is_integer():
        per_pixel = 4 * C * 3
    else:
        taps = 4 if itype == "float" else 1
        per_pixel = taps * 8 + 4 * C * (taps + 3)
    return ws * ws * pt * ps * ps * per_pixel


def _auto_batch(budget_per_query: int, Q: int) -> int:
    return max(1, min(Q, _window.BUDGET // max(1, budget_per_query)))


def _distance(qp: torch.Tensor, kp: torch.Tensor, dist: str) -> torch.Tensor:
    if dist == "l2":
        return ((qp - kp) ** 2).sum(-1)
    return (qp * kp).sum(-1)


def _query_patches(flat: torch.Tensor, coords: torch.Tensor, P: _window.Params) -> torch.Tensor:
    """(B, nheads, Qb, P) patches at integer query positions, in the accumulation dtype."""
    taps = patch_taps(coords.view(1, 1, -1, 3), P.thw, P.ps, P.pt, P.dilation)
    qp = read(flat, taps, acc_dtype(flat.dtype))
    return qp.reshape(*qp.shape[:3], -1)


def _window_patches(k_flat, centres, frames, P: _window.Params, acc) -> torch.Tensor:
    """Candidate patches (B, nheads, Qb, ws*ws, patch) of one frame slot, for integer stride1.

    All ws*ws candidates of a query share the fractional part of the window centre, so the
    window of pixels they cover is read once (mirrored), interpolated once (along x, then y,
    in the same order as :func:`read`) and the patches are strided views into it.
    """
    B, _, nh, Ch = k_flat.shape
    T, H, W = P.thw
    Qb = frames.shape[0]
    s, d, ws, ps = int(P.stride1), P.dilation, P.ws, P.ps
    lo = s * (ws // 2) + d * (ps // 2)
    L = s * (ws - 1) + d * (ps - 1) + 1
    dev = k_flat.device
    if P.itype == "int":
        base = centres.long() - lo  # (B, Qb, 2)
        fy = fx = None
        n = L
    else:
        start = centres - lo
        fl = torch.floor(start)
        f = start - fl
        base = fl.long()
        fy = f[..., 0] if bool((f[..., 0] != 0).any()) else None
        fx = f[..., 1] if bool((f[..., 1] != 0).any()) else None
        n = L + 1
    ar = torch.arange(n, device=dev)
    rows = reflect(base[..., 0, None] + ar, H)  # (B, Qb, n)
    cols = reflect(base[..., 1, None] + ar, W)
    tt = reflect(frames[:, None] + torch.arange(P.pt, device=dev), T)  # (Qb, pt)
    idx = (tt.view(1, Qb, P.pt, 1, 1) * H + rows[:, :, None, :, None]) * W + cols[:, :, None, None, :]
    idx = idx + (torch.arange(B, device=dev) * (T * H * W)).view(B, 1, 1, 1, 1)
    win = k_flat.reshape(-1, nh * Ch).index_select(0, idx.reshape(-1)).to(acc)
    win = win.view(B, Qb, P.pt, n, n, nh * Ch)
    if P.itype == "float":
        if fx is None:
            win = win[:, :, :, :, :L]
        else:
            w = fx.view(B, Qb, 1, 1, 1, 1)
            win = (1 - w) * win[:, :, :, :, :L] + w * win[:, :, :, :, 1:]
        if fy is None:
            win = win[:, :, :, :L]
        else:
            w = fy.view(B, Qb, 1, 1, 1, 1)
            win = (1 - w) * win[:, :, :, :L] + w * win[:, :, :, 1:]
    span = d * (ps - 1) + 1
    # (B, Qb, pt, ws, L, C, span) -> (B, Qb, pt, ws, ws, C, span, span), then every d-th pixel
    pat = win.unfold(3, span, s).unfold(4, span, s)[..., ::d, ::d]
    pat = pat.permute(0, 1, 3, 4, 2, 6, 7, 5)  # (B, Qb, ws, ws, pt, ps, ps, C)
    pat = pat.reshape(B, Qb, ws * ws, P.pt, ps, ps, nh, Ch).permute(0, 6, 1, 2, 3, 4, 5, 7)
    return pat.reshape(B, nh, Qb, ws * ws, -1)


def _select(q_flat, k_flat, coords, flows, P: _window.Params) -> torch.Tensor:
    """Top-k candidate ids (B, nheads, Qb, k) = (slot*ws + i)*ws + j, best first."""
    B, nh, ws, Qb = P.shape[0], P.nheads, P.ws, coords.shape[0]
    acc = acc_dtype(q_flat.dtype)
    pdtype = torch.int64 if P.itype == "int" else acc
    centres, frames = _window.centres(coords, *(flows or (None, None)), P, acc)
    qp = _query_patches(q_flat, coords, P).unsqueeze(3)  # (B, nh, Qb, 1, P)
    off = _window.offsets(P, acc, coords.device)
    if P.itype == "int":
        centres, off = centres.long(), off.long()
    window = float(P.stride1).is_integer()
    best_d = best_id = None
    descending = P.dist == "prod"
    worst = -math.inf if descending else math.inf
    for f in range(P.nt):
        ys = centres[:, :, f, 0, None] + off  # (B, Qb, ws)
        xs = centres[:, :, f, 1, None] + off
        tt = frames[:, f].view(1, Qb, 1, 1).expand(B, Qb, ws, ws)
        pos = torch.stack(
            [tt.to(pdtype), ys[..., :, None].expand(-1, -1, ws, ws), xs[..., None, :].expand(-1, -1, ws, ws)],
            dim=-1,
        )  # (B, Qb, ws, ws, 3)
        if window:
            kp = _window_patches(k_flat, centres[:, :, f], frames[:, f], P, acc)
        else:
            taps = patch_taps(pos.view(B, 1, -1, 3), P.thw, P.ps, P.pt, P.dilation)
            kp = read(k_flat, taps, acc).reshape(B, nh, Qb, ws * ws, -1)
        d = _distance(qp, kp, P.dist)
        if P.exclude_self:
            same = (
                (tt == coords[:, 0].view(1, Qb, 1, 1))
                & ((pos[..., 1] - coords[:, 1].view(1, Qb, 1, 1)).abs() < 1e-4)
                & ((pos[..., 2] - coords[:, 2].view(1, Qb, 1, 1)).abs() < 1e-4)
            )
            d = d.masked_fill(same.view(B, 1, Qb, ws * ws), worst)
        ids = (f * ws * ws + torch.arange(ws * ws, device=d.device)).expand_as(d)
        if best_d is not None:
            d, ids = torch.cat([best_d, d], -1), torch.cat([best_id, ids], -1)
        d, order = torch.sort(d, dim=-1, descending=descending, stable=True)
        best_d, best_id = d[..., : P.k], torch.gather(ids, -1, order[..., : P.k])
    return best_id


def _batch_dists(q_flat, k_flat, coords, kpos, P: _window.Params) -> torch.Tensor:
    """Distances (B, nheads, Qb, k) between the patches of queries ``coords`` (Qb, 3) and the
    patches at ``kpos`` (B, nheads, Qb, k, 3): differentiable PyTorch."""
    B, nh, Qb, k, _ = kpos.shape
    acc = acc_dtype(q_flat.dtype)
    qp = _query_patches(q_flat, coords, P).unsqueeze(3)
    kp = read(k_flat, patch_taps(kpos.reshape(B, nh, -1, 3), P.thw, P.ps, P.pt, P.dilation), acc)
    return _distance(qp, kp.reshape(B, nh, Qb, k, -1), P.dist)


def _dists(q_flat, k_flat, coords, kpos, P: _window.Params, batch: int) -> torch.Tensor:
    """:func:`_batch_dists` over batches of queries; where a gradient is needed, each batch is a
    checkpoint (the backward reads its patches again rather than keeping them)."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q_flat, k_flat, kpos))
    out = []
    for s in range(0, coords.shape[0], batch):
        args = (q_flat, k_flat, coords[s : s + batch], kpos[:, :, s : s + batch], P)
        if grad:
            out.append(torch.utils.checkpoint.checkpoint(_batch_dists, *args, use_reentrant=False,
                                                         preserve_rng_state=False))
        else:
            out.append(_batch_dists(*args))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def search(queries, keys, flows, coords, P: _window.Params, batch_size: int | None):
    """The reference twin of :func:`napari_stnls.ops.search`, on validated arguments: ``coords``
    (Q, 3) the queries, ``P`` the parameters. Returns (dists, inds)."""
    acc = acc_dtype(queries.dtype)
    Q = coords.shape[0]
    q_flat = channels_last(queries, P.nheads)
    k_flat = q_flat if keys is queries else channels_last(keys, P.nheads)
    flat_flows = _window.flat_flows(flows, P, acc)
    if batch_size is None:
        sel_batch = _auto_batch(
            search_memory_per_query(P.shape, P.ps, P.ws, P.pt, P.itype, P.stride1), Q
        )
        # The second stage reads k patches per query instead of ws*ws per frame.
        dist_batch = _auto_batch(
            search_memory_per_query(P.shape, P.ps, 1, P.pt, P.itype) * P.k, Q
        )
    else:
        sel_batch = dist_batch = batch_size
    with torch.no_grad():
        ids = torch.cat(
            [
                _select(q_flat, k_flat, coords[s : s + sel_batch], flat_flows, P)
                for s in range(0, Q, sel_batch)
            ],
            dim=2,
        )
    centres, frames = _window.centres_for_grad(coords, *(flat_flows or (None, None)), P, acc)
    kpos = _window.positions(centres, frames, ids, P)
    dists = _dists(q_flat, k_flat, coords, kpos, P, dist_batch)
    inds = kpos.to(torch.int32) if P.itype == "int" else kpos
    return dists, inds
