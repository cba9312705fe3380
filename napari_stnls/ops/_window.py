"""The search window of each query, in PyTorch, shared by the compiled search and its reference
twin: the window centres carried along the chained flow, the candidate offsets, and candidate
ids -> positions. Both paths use these functions, so the flows' gradient is autograd's in both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

BUDGET = 256 * 2**20  # bytes of working set per batch of queries when batch_size is None


@dataclass(frozen=True)
class Params:
    """The validated arguments of one search."""

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


def flat_flows(flows, P: Params, acc: torch.dtype):
    """(fflow, bflow), each (B, T, 2, H, W), as (B, T*H*W, 2) in ``acc``; None stays None."""
    if flows is None:
        return None
    B, T, C, H, W = P.shape
    return tuple(f.to(acc).permute(0, 1, 3, 4, 2).reshape(B, T * H * W, 2) for f in flows)


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


def window_frames(t: torch.Tensor, P: Params) -> torch.Tensor:
    """Candidate frames (Qb, nt) for queries in frames t (Qb,)."""
    T, nt = P.shape[1], P.nt
    s0 = (t - P.wt).clamp(0, T - nt)
    return s0.unsqueeze(-1) + torch.arange(nt, device=t.device)


def centres(coords: torch.Tensor, fflow, bflow, P: Params, dtype: torch.dtype):
    """Search-grid centres (B, Qb, nt, 2) = (y, x) and frames (Qb, nt) of queries ``coords``
    (Qb, 3); ``fflow``, ``bflow`` as :func:`flat_flows` gives them, or None."""
    B = P.shape[0]
    T, H, W = P.thw
    nt = P.nt
    t = coords[:, 0]
    frames = window_frames(t, P)
    p0 = coords[:, 1:].to(dtype).unsqueeze(0).expand(B, -1, -1)
    if fflow is None:
        p = p0.unsqueeze(2).expand(-1, -1, nt, -1)
    else:
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


def centres_for_grad(coords: torch.Tensor, fflow, bflow, P: Params, dtype: torch.dtype):
    """:func:`centres`, where the flows need a gradient, as a checkpoint: the backward
    recomputes the flow chain instead of keeping its intermediates. Kept, they were about
    1 KB per query for workload A with flows (5.1 GB, 7.7x dists+inds, measured on an
    H200); the recomputation costs one more chain per chunk, small next to the search."""
    if fflow is None or not torch.is_grad_enabled() or not (fflow.requires_grad or bflow.requires_grad):
        return centres(coords, fflow, bflow, P, dtype)
    return torch.utils.checkpoint.checkpoint(centres, coords, fflow, bflow, P, dtype, use_reentrant=False,
                                             preserve_rng_state=False)


# Whether search_centres and search_positions replace the PyTorch glue by default, per device
# type: on both (the same bits as the glue; on an H100 nl_means' 540p search took 121 ms
# against 146 ms with the glue, docs/benchmarks.md).
GLUE_KERNELS_DEFAULT = {"cpu": True, "cuda": True}


def torch_glue(device: torch.device) -> bool:
    """Whether the search keeps the PyTorch glue on ``device`` even where ``search_centres``
    and ``search_positions`` could replace it: ``NAPARI_STNLS_TORCH_GLUE`` (read on every call,
    for timing) ``1`` keeps it, ``0`` takes the kernels; unset, :data:`GLUE_KERNELS_DEFAULT`."""
    env = os.environ.get("NAPARI_STNLS_TORCH_GLUE", "")
    if env in ("0", "1"):
        return env == "1"
    return not GLUE_KERNELS_DEFAULT.get(device.type, False)


def centres_compiled(coords: torch.Tensor, fflow, bflow, P: Params, dtype: torch.dtype):
    """:func:`centres` through the compiled ``search_centres`` where the flows need no
    gradient (one kernel, the same bits: the glue's dozens of small ones per chunk took
    about a tenth of ``nl_means``' GPU time), else :func:`centres_for_grad`."""
    grad = torch.is_grad_enabled() and fflow is not None and (fflow.requires_grad or bflow.requires_grad)
    if fflow is None or grad or torch_glue(coords.device):
        return centres_for_grad(coords, fflow, bflow, P, dtype)
    T, H, W = P.thw
    frames = window_frames(coords[:, 0], P)
    c = torch.ops.napari_stnls.search_centres(coords, frames, fflow, bflow, T, H, W, P.itype == "int",
                                              float(P.stride1 * (P.ws // 2)))
    return c, frames


def offsets(P: Params, dtype, device) -> torch.Tensor:
    """The ws offsets of the search grid from its centre, ``stride1`` apart."""
    return P.stride1 * (torch.arange(P.ws, device=device, dtype=dtype) - P.ws // 2)


def positions(centres: torch.Tensor, frames: torch.Tensor, ids: torch.Tensor, P: Params) -> torch.Tensor:
    """Positions (B, nheads, Q, k, 3) of candidate ids ``(slot*ws + i)*ws + j``, differentiable
    w.r.t. the centres.

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
    off = offsets(P, centres.dtype, centres.device)
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
