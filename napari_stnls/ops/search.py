"""Space-time K-nearest-neighbour patch search, guided by optical flow.

Reference backend: pure PyTorch, batched over queries so memory is bounded. See
docs/api.md for the full definition (window, flow chaining, borders, ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.utils.checkpoint

from . import _ext
from . import _validate as V
from ._dispatch import register, resolve
from ._patches import channels_last, patch_taps, read, reflect, write
from ._region import as_region, grid_shape, query_coords

__all__ = ["search", "search_memory_per_query"]

_BUDGET = 256 * 2**20  # bytes of working set per batch when batch_size is None


@dataclass(frozen=True)
class _Params:
    shape: tuple[int, int, int, int, int]
    ps: int
    ws: int
    wt: int
    k: int
    dist: str
    stride1: float
    dilation: int
    pt: int
    nheads: int
    exclude_self: bool
    itype: str
    stride0: int = 1
    grid: tuple[int, int, int, int, int, int] | None = None  # (t0, y0, x0, T_r, nH, nW)

    @property
    def thw(self) -> tuple[int, int, int]:
        return (self.shape[1], self.shape[3], self.shape[4])

    @property
    def nt(self) -> int:
        return min(self.shape[1], 2 * self.wt + 1)

    @property
    def patch_size(self) -> int:
        return self.pt * (self.shape[2] // self.nheads) * self.ps * self.ps


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
    return max(1, min(Q, _BUDGET // max(1, budget_per_query)))


def _sample_flow(flow: torch.Tensor, frame: torch.Tensor, p: torch.Tensor, H: int, W: int):
    """Bilinear read of ``flow`` (B, T*H*W, 2) at frame (Qb,), position p (B, Qb, 2) = (y, x).

    The position is clamped into the frame; returns the displacement as (dy, dx).
    """
    py = p[..., 0].clamp(0, H - 1)
    px = p[..., 1].clamp(0, W - 1)
    y0, x0 = torch.floor(py), torch.floor(px)
    fy, fx = (py - y0).unsqueeze(-1), (px - x0).unsqueeze(-1)
    y0, x0 = y0.long(), x0.long()
    y1, x1 = (y0 + 1).clamp(max=H - 1), (x0 + 1).clamp(max=W - 1)
    B = flow.shape[0]
    b = torch.arange(B, device=flow.device).view(B, 1)
    base = frame.view(1, -1) * H

    def at(yy, xx):
        return flow[b, (base + yy) * W + xx]

    v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * (
        (1 - fx) * at(y1, x0) + fx * at(y1, x1)
    )
    return v.flip(-1)  # (dx, dy) -> (dy, dx)


def _window(t: torch.Tensor, P: _Params) -> torch.Tensor:
    """Candidate frames (Qb, nt) for queries in frames t (Qb,)."""
    T, nt = P.shape[1], P.nt
    s0 = (t - P.wt).clamp(0, T - nt)
    return s0.unsqueeze(-1) + torch.arange(nt, device=t.device)


def _centres(coords: torch.Tensor, flows, P: _Params, dtype: torch.dtype):
    """Search-grid centres (B, Qb, nt, 2) = (y, x) and frames (Qb, nt) of queries ``coords`` (Qb, 3)."""
    B = P.shape[0]
    T, H, W = P.thw
    nt = P.nt
    t = coords[:, 0]
    frames = _window(t, P)
    p0 = coords[:, 1:].to(dtype).unsqueeze(0).expand(B, -1, -1)
    if flows is None:
        p = p0.unsqueeze(2).expand(-1, -1, nt, -1)
    else:
        fflow, bflow = flows
        fwd, bwd = [p0], [p0]
        for d in range(1, nt):
            fwd.append(fwd[-1] + _sample_flow(fflow, (t + d - 1).clamp(max=T - 1), fwd[-1], H, W))
            bwd.append(bwd[-1] + _sample_flow(bflow, (t - d + 1).clamp(min=0), bwd[-1], H, W))
        chain = torch.stack(bwd[:0:-1] + fwd, dim=2)  # (B, Qb, 2nt-1, 2), delta = -(nt-1)..nt-1
        delta = frames - t.unsqueeze(-1) + (nt - 1)  # (Qb, nt)
        idx = delta.view(1, -1, nt, 1).expand(B, -1, -1, 2)
        p = torch.gather(chain, 2, idx)
    lim = torch.tensor([H - 1, W - 1], dtype=dtype, device=coords.device)
    c = torch.minimum(p.clamp(min=0), lim)
    if P.itype == "int":
        c = torch.round(c)
    r = P.stride1 * (P.ws // 2)
    c = torch.minimum(c.clamp(min=r), lim - r)
    return c, frames


def _centres_for_grad(coords: torch.Tensor, flows, P: _Params, dtype: torch.dtype):
    """:func:`_centres`, where the flows need a gradient, as a checkpoint: the backward
    recomputes the flow chain instead of keeping its intermediates. Kept, they were about
    1 KB per query for workload A with flows (5.1 GB, 7.7x dists+inds, measured on an
    H200); the recomputation costs one more chain per chunk, small next to the search."""
    if flows is None or not torch.is_grad_enabled() or not any(f.requires_grad for f in flows):
        return _centres(coords, flows, P, dtype)
    return torch.utils.checkpoint.checkpoint(_centres, coords, flows, P, dtype, use_reentrant=False)


def _offsets(P: _Params, dtype, device) -> torch.Tensor:
    return P.stride1 * (torch.arange(P.ws, device=device, dtype=dtype) - P.ws // 2)


def _distance(qp: torch.Tensor, kp: torch.Tensor, dist: str) -> torch.Tensor:
    if dist == "l2":
        return ((qp - kp) ** 2).sum(-1)
    return (qp * kp).sum(-1)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _query_patches(flat: torch.Tensor, coords: torch.Tensor, P: _Params) -> torch.Tensor:
    """(B, nheads, Qb, P) patches at integer query positions, in the accumulation dtype."""
    taps = patch_taps(coords.view(1, 1, -1, 3), P.thw, P.ps, P.pt, P.dilation)
    qp = read(flat, taps, _acc_dtype(flat.dtype))
    return qp.reshape(*qp.shape[:3], -1)


def _window_patches(k_flat, centres, frames, P: _Params, acc) -> torch.Tensor:
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


def _select(q_flat, k_flat, coords, flows, P: _Params) -> torch.Tensor:
    """Top-k candidate ids (B, nheads, Qb, k) = (slot*ws + i)*ws + j, best first."""
    B, nh, ws, Qb = P.shape[0], P.nheads, P.ws, coords.shape[0]
    acc = _acc_dtype(q_flat.dtype)
    pdtype = torch.int64 if P.itype == "int" else acc
    centres, frames = _centres(coords, flows, P, acc)
    qp = _query_patches(q_flat, coords, P).unsqueeze(3)  # (B, nh, Qb, 1, P)
    off = _offsets(P, acc, coords.device)
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


def _positions(centres, frames, ids, P: _Params) -> torch.Tensor:
    """Positions (B, nheads, Q, k, 3) of candidate ids, differentiable w.r.t. centres.

    This glue runs on every chunk of the compiled search, so it is written for memory: the
    ids are split in int32, centres and frames are read with ``index_select`` on flat views
    (int32 indices), and each intermediate is freed as soon as it is used. A chunk of
    workload A holds 10 M ids; int64 intermediates of that size would dominate the memory
    the search needs beyond its outputs.
    """
    ws = P.ws
    B, nh, Q, k = ids.shape
    nt = centres.shape[2]
    # ids < nt * ws^2 (the kernels' ids are ints); flat centre indices < Q * nt
    itype = torch.int32 if Q * nt < 2**31 else torch.int64
    small = ids.to(itype)
    slot = torch.div(small, ws * ws, rounding_mode="floor")
    ij = small - slot * (ws * ws)
    del small
    row = torch.div(ij, ws, rounding_mode="floor")
    col = ij - row * ws
    del ij
    off = _offsets(P, centres.dtype, centres.device)
    if P.itype == "int":
        centres, off = centres.long(), off.long()
    flat = slot + (torch.arange(Q, device=ids.device, dtype=itype) * nt).view(Q, 1)
    del slot
    frames_v = frames.to(off.dtype).reshape(-1)
    out = []
    for b in range(B):
        fb = flat[b].reshape(-1)
        t = frames_v.index_select(0, fb)
        c = centres[b].reshape(Q * nt, 2).index_select(0, fb)
        del fb
        y = c[:, 0] + off.index_select(0, row[b].reshape(-1))
        x = c[:, 1] + off.index_select(0, col[b].reshape(-1))
        del c
        out.append(torch.stack([t, y, x], dim=-1).view(nh, Q, k, 3))
        del t, y, x
    del flat, row, col
    return out[0].unsqueeze(0) if B == 1 else torch.stack(out, 0)


class _SearchDists(torch.autograd.Function):
    """Distances between query patches and the patches at given positions, in batches.

    Backward (also batched) adds the patch gradients into one buffer per video, so
    its memory does not grow with the number of batches; gradients to the positions
    come from the bilinear weights.
    """

    @staticmethod
    def forward(ctx, q_flat, k_flat, coords, kpos, P: _Params, batch: int):
        ctx.save_for_backward(q_flat, k_flat, coords, kpos)
        ctx.P, ctx.batch = P, batch
        out = []
        for s in range(0, coords.shape[0], batch):
            out.append(_batch_dists(q_flat, k_flat, coords[s : s + batch], kpos[:, :, s : s + batch], P))
        return torch.cat(out, dim=2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q_flat, k_flat, coords, kpos = ctx.saved_tensors
        P, batch = ctx.P, ctx.batch
        need_q, need_k, _, need_pos = ctx.needs_input_grad[:4]
        gq = torch.zeros(q_flat.shape, dtype=q_flat.dtype, device=q_flat.device) if need_q else None
        gk = torch.zeros(k_flat.shape, dtype=k_flat.dtype, device=k_flat.device) if need_k else None
        gpos = torch.zeros_like(kpos) if need_pos else None
        acc = _acc_dtype(q_flat.dtype)
        B, nh = P.shape[0], P.nheads
        for s in range(0, coords.shape[0], batch):
            c = coords[s : s + batch]
            Qb = c.shape[0]
            g = grad[:, :, s : s + batch].to(acc).unsqueeze(-1)  # (B, nh, Qb, k, 1)
            qtaps = patch_taps(c.view(1, 1, -1, 3), P.thw, P.ps, P.pt, P.dilation)
            qp = read(q_flat, qtaps, acc).reshape(B, nh, Qb, 1, -1)
            with torch.enable_grad():
                kp_pos = kpos[:, :, s : s + batch].detach().requires_grad_(need_pos)
                ktaps = patch_taps(kp_pos.reshape(B, nh, -1, 3), P.thw, P.ps, P.pt, P.dilation)
                kraw = read(k_flat.detach(), ktaps, acc)
                kp = kraw.reshape(B, nh, Qb, P.k, -1)
                if P.dist == "l2":
                    diff = qp - kp.detach()
                    g_q, g_k = 2 * g * diff, -2 * g * diff
                else:
                    g_q, g_k = g * kp.detach(), g * qp
                if need_pos:
                    (gp,) = torch.autograd.grad(kp, kp_pos, g_k)
                    gpos[:, :, s : s + batch] = gp
            if need_q:
                write(gq, qtaps, g_q.sum(3).reshape(B, nh, Qb, *kraw.shape[3:]))
            if need_k:
                ktaps = ktaps._replace(
                    wy=[None if w is None else w.detach() for w in ktaps.wy],
                    wx=[None if w is None else w.detach() for w in ktaps.wx],
                )
                write(gk, ktaps, g_k.reshape(kraw.shape))
        return gq, gk, None, gpos, None, None


def _batch_dists(q_flat, k_flat, coords, kpos, P: _Params) -> torch.Tensor:
    B, nh, Qb, k, _ = kpos.shape
    acc = _acc_dtype(q_flat.dtype)
    qp = _query_patches(q_flat, coords, P).unsqueeze(3)
    kp = read(k_flat, patch_taps(kpos.reshape(B, nh, -1, 3), P.thw, P.ps, P.pt, P.dilation), acc)
    return _distance(qp, kp.reshape(B, nh, Qb, k, -1), P.dist)


def _flat_flows(flows, P: _Params, acc):
    if flows is None:
        return None
    B, T, C, H, W = P.shape
    return tuple(f.to(acc).permute(0, 1, 3, 4, 2).reshape(B, T * H * W, 2) for f in flows)


def _search_reference(queries, keys, flows, coords, P: _Params, batch_size):
    acc = _acc_dtype(queries.dtype)
    Q = coords.shape[0]
    q_flat = channels_last(queries, P.nheads)
    k_flat = q_flat if keys is queries else channels_last(keys, P.nheads)
    flat_flows = _flat_flows(flows, P, acc)
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
    centres, frames = _centres_for_grad(coords, flat_flows, P, acc)
    kpos = _positions(centres, frames, ids, P)
    dists = _SearchDists.apply(q_flat, k_flat, coords, kpos, P, dist_batch)
    inds = kpos.to(torch.int32) if P.itype == "int" else kpos
    return dists, inds


def _compiled_chunks(P: _Params, Q: int, batch_size: int | None) -> list[tuple[int, int, _Params]]:
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
    n = batch_size if batch_size is not None else max(_BUDGET // per_query, -(-Q // 4))
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


def _search_compiled(queries, keys, flows, coords, P: _Params, batch_size):
    """Compiled kernels (csrc/): a streaming top-k over all candidates, which also returns the
    distances it selected by, made differentiable by search_dists' backward kernel. Queries go
    in chunks of whole grid rows (:func:`_compiled_chunks`), so the memory beyond the outputs
    stays bounded; flows are chained here, in PyTorch, so that their gradient is autograd's."""
    acc = _acc_dtype(queries.dtype)
    q_cl = queries.permute(0, 1, 3, 4, 2).contiguous()
    k_cl = q_cl if keys is queries else keys.permute(0, 1, 3, 4, 2).contiguous()
    flat = _flat_flows(flows, P, acc)
    # Under torch.use_deterministic_algorithms on CUDA, the flow chaining and the id -> position
    # gathers run on the CPU: PyTorch's CUDA backward of their indexing adds with atomics
    # (measured: the flows' gradient then differs run to run).
    det = _ext.deterministic_cuda(queries)
    Q = coords.shape[0]
    chunks = _compiled_chunks(P, Q, batch_size)
    dists = inds = None
    for start, stop, Pc in chunks:
        crd = coords[start:stop]
        if det and flat is not None:
            centres, frames = _ext.on_cpu(lambda c, f, b, Pc=Pc: _centres(c, (f, b), Pc, acc), crd, *flat)
        else:
            centres, frames = _centres_for_grad(crd, flat, Pc, acc)
        args = (Pc.ps, Pc.pt, Pc.dilation, Pc.nheads, Pc.k, Pc.dist == "l2", Pc.exclude_self)
        if Pc.grid is not None and float(Pc.stride1).is_integer() and (Pc.itype == "int" or flows is None):
            # whole-pixel centres on a regular query grid: tiles of queries share box sums
            off = _offsets(Pc, acc, coords.device)
            found, ids = _ext.ops.search_topk_box(
                q_cl, k_cl, crd, centres.detach(), frames, off, [*Pc.grid, int(Pc.stride1)],
                Pc.stride0, *args,
            )
        else:
            # the offsets go on the CPU: the kernels pick their path from them without a sync
            off = _offsets(Pc, acc, torch.device("cpu"))
            found, ids = _ext.ops.search_topk(q_cl, k_cl, crd, centres.detach(), frames, off, *args)
        if det:
            kpos = _ext.on_cpu(lambda c, f, i, Pc=Pc: _positions(c, f, i, Pc), centres, frames, ids)
        else:
            kpos = _positions(centres, frames, ids, Pc)
        del ids, centres, frames
        # the top-k kernels' own distances, differentiable as search_dists at kpos
        d = _ext.ops.search_dists(q_cl, k_cl, crd, kpos, P.ps, P.pt, P.dilation, P.dist == "l2", found)
        del found
        i = kpos.to(torch.int32) if P.itype == "int" else kpos
        if len(chunks) == 1:
            return d, i
        if dists is None:  # written chunk by chunk (differentiably), never concatenated
            dists = d.new_empty(d.shape[:2] + (Q,) + d.shape[3:])
            inds = i.new_empty(i.shape[:2] + (Q,) + i.shape[3:])
        dists[:, :, start:stop] = d
        inds[:, :, start:stop] = i
    return dists, inds


def _compiled_supports(P: _Params, device: torch.device) -> bool:
    return P.ps <= 32 and P.pt <= 8 and (device.type != "cuda" or P.k <= 128)


register("search", "reference", _search_reference)
for _dev in ("cpu", "cuda"):
    if _ext.available(_dev):
        register("search", _dev, _search_compiled)


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
    backend : str, optional
        "reference" (this implementation), a compiled backend, or None (automatic).

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
    P = _Params(
        (B, T, C, H, W), ps, ws, wt, k, dist, stride1, dilation, pt, nheads, exclude_self, itype,
        stride0, (region.t0, region.y0, region.x0, T_r, nH, nW),
    )
    impl = resolve("search", backend, queries.device)
    if impl is _search_compiled and not _compiled_supports(P, queries.device):
        if backend is not None:
            raise ValueError(
                f"backend: the compiled search takes ps <= 32 and pt <= 8, and k <= 128 on CUDA "
                f"(got ps={ps}, pt={pt}, k={k}); use backend='reference'"
            )
        impl = _search_reference
    return impl(queries, keys, flows, coords, P, batch_size)
