#!/usr/bin/env python
"""Benchmarks for napari_stnls.ops: search, gather/scatter, iunfold/ifold.

Run ``python benchmarks/bench_ops.py --help``; docs/benchmarks.md describes the workloads
and holds measured numbers. The script prints one JSON object (device, torch version,
threads and a list of results) on stdout and writes it to ``--out`` when given. Progress
goes to stderr.

Timing: fixed seeds, ``--warmup`` untimed calls, then the median of ``--repeats`` timed
calls (``torch.cuda.synchronize`` around each call on GPU).

Memory: on CUDA, ``max_memory_allocated`` during one call minus what was allocated
before it (the inputs); on CPU, the peak RSS of a fresh spawned process during one call
minus its RSS once the inputs were allocated (the peak is reset with
``/proc/self/clear_refs`` when Linux allows it, else ``getrusage(RUSAGE_SELF).ru_maxrss``
is used). ``peak_bytes`` includes the outputs; ``peak_extra_bytes`` excludes them.

Contention: ``other_cpu_load`` is the CPU time other processes used during a result's
timed calls, as a fraction of the machine (from /proc/stat); timings with a high value
are not trustworthy.

Backends: ``--backends reference,cpu,cuda`` times every op on each backend that is
available for the device (probed with a tiny call); the others are recorded as skipped.
Plain-PyTorch baselines carry ``backend="torch"``. ``ratio_vs_reference`` is a result's
time divided by the time of the ``backend="reference"`` result it is compared with, in
the same run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from napari_stnls.ops import aggregate, gather, ifold, iunfold, scatter, search  # noqa: E402

WORKLOADS = ("small", "a", "b", "gather_scatter", "gather_scatter_a", "fold", "memory_scaling", "baselines",
             "w1", "w2", "w3", "w4")
OPS = ("search", "gather", "scatter", "iunfold", "ifold")
MIB = 2**20
MALLOC_MMAP_THRESHOLD = 128 * 1024  # set in the CPU memory child so freed blocks leave RSS

_CACHE_DIR: str | None = None  # shared by the parent and the memory children


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_state() -> dict:
    """The git commit, whether the tree is dirty, and a hash of napari_stnls/ops/*.py as run."""
    import hashlib
    import subprocess

    h = hashlib.sha256()
    for f in sorted((ROOT / "napari_stnls" / "ops").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    state = {"ops_sha256": h.hexdigest()[:16]}
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(
            git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        state["git_commit"] = commit if len(commit) == 40 else None
        dirty = subprocess.run(
            git + ["status", "--porcelain", "--", "napari_stnls"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        state["napari_stnls_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def report_header(name: str, device: torch.device, quick: bool) -> dict:
    """The first keys of a benchmark's JSON: what ran, when, and on which machine."""
    return {
        "benchmark": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": quick,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def make_video(shape, device, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(shape, generator=g).to(device)
    return v.requires_grad_(requires_grad)


def make_flows(shape, device, seed: int = 1, magnitude: float = 3.0, cell: int = 64):
    """A random smooth (fflow, bflow) pair: coarse noise upsampled bilinearly, |v| <~ magnitude px."""
    B, T, _, H, W = shape
    g = torch.Generator().manual_seed(seed)
    h, w = max(2, H // cell), max(2, W // cell)
    coarse = torch.randn(B * T, 2, h, w, generator=g)
    fine = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)
    fine = magnitude * fine / fine.abs().amax().clamp_min(1e-6)
    fflow = fine.reshape(B, T, 2, H, W).to(device)
    bflow = (-fflow).contiguous()
    return fflow, bflow


def centre_region(T: int, H: int, W: int, t: int, h: int, w: int):
    """Region (t, t+1, rows, cols) of h x w queries centred in frame t."""
    y0, x0 = (H - h) // 2, (W - w) // 2
    return (t, t + 1, y0, y0 + h, x0, x0 + w)


def region_queries(region, shape, stride0: int = 1) -> int:
    if region is None:
        return shape[1] * math.ceil(shape[3] / stride0) * math.ceil(shape[4] / stride0)
    t0, t1, y0, y1, x0, x1 = region
    return (t1 - t0) * math.ceil((y1 - y0) / stride0) * math.ceil((x1 - x0) / stride0)


def cached(key: str, fn: Callable[[], Any]):
    """Compute ``fn()`` once per run; the memory children load the parent's result."""
    if _CACHE_DIR is None:
        return fn()
    path = Path(_CACHE_DIR) / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    val = fn()
    torch.save(val, path)
    return val


# --------------------------------------------------------------------------------------
# cases: something to time (and measure), rebuilt from its JSON params in any process
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    fn: Callable[[], Any]  # one call of the op; returns its outputs
    check: dict = field(default_factory=dict)  # extra result fields (e.g. matches_reference)


@dataclass
class Case:
    workload: str
    op: str  # name reported in the results (e.g. "search", "search_fwd_bwd", "F.unfold")
    api_op: str | None  # the napari_stnls op whose backends are looped over; None: plain torch
    builder: str
    params: dict
    compare: str  # results with the same compare key are ratioed against backend="reference"
    extrapolate_to: int | None = None  # full number of queries, when a region stands for it


def _search_kwargs(p: dict) -> dict:
    keys = ("ps", "ws", "wt", "k", "dist", "stride0", "itype", "batch_size")
    kw = {k: p[k] for k in keys if k in p}
    kw["region"] = None if p.get("region") is None else tuple(p["region"])
    return kw


def build_search(p: dict, device: torch.device, backend: str) -> Prepared:
    grad = p.get("mode") == "fwd_bwd"
    video = make_video(p["video_shape"], device, seed=p["seed"], requires_grad=grad)
    flows = None
    if p.get("flow") == "smooth":
        flows = make_flows(p["video_shape"], device, seed=p["seed"] + 1)
        if grad:
            flows = tuple(f.requires_grad_(True) for f in flows)
    kw = _search_kwargs(p)
    leaves = [video] + (list(flows) if (grad and flows is not None) else [])

    def run():
        dists, inds = search(video, video, flows=flows, backend=backend, **kw)
        if not grad:
            return dists, inds
        dists.sum().backward()
        grads = [x.grad for x in leaves]
        for x in leaves:
            x.grad = None
        return dists.detach(), inds.detach(), grads

    return Prepared(run)


def _search_inds(p: dict, device: torch.device):
    """Search output for the gather/scatter workload (computed once, cached)."""
    key = f"inds_{p['flow']}_{'x'.join(map(str, p['video_shape']))}_{p['region']}_{device.type}"

    def compute():
        video = make_video(p["video_shape"], device, seed=p["seed"])
        flows = make_flows(p["video_shape"], device, seed=p["seed"] + 1) if p["flow"] == "smooth" else None
        region = None if p["region"] is None else tuple(p["region"])
        with torch.no_grad():
            dists, inds = search(
                video,
                video,
                ps=p["ps"],
                ws=p["ws"],
                wt=p["wt"],
                k=p["k"],
                flows=flows,
                region=region,
                backend=p.get("inds_backend", "reference"),
            )
        weights = torch.softmax(-dists / 10.0, dim=-1)
        return inds.cpu(), weights.cpu()

    inds, weights = cached(key.replace(" ", "").replace(",", "_"), compute)
    return inds.to(device), weights.to(device)


def build_gather(p: dict, device: torch.device, backend: str) -> Prepared:
    video = make_video(p["video_shape"], device, seed=p["seed"])
    inds, _ = _search_inds(p, device)
    return Prepared(lambda: gather(video, inds, ps=p["ps"], backend=backend))


def build_scatter(p: dict, device: torch.device, backend: str) -> Prepared:
    video = make_video(p["video_shape"], device, seed=p["seed"])
    inds, weights = _search_inds(p, device)
    patches = gather(video, inds, ps=p["ps"])
    del video
    shape = tuple(p["video_shape"])
    return Prepared(lambda: scatter(patches, inds, shape=shape, weights=weights, ps=p["ps"], backend=backend))


def build_gather_then_scatter(p: dict, device: torch.device, backend: str) -> Prepared:
    """gather then weighted scatter at the same inds: what aggregate fuses."""
    video = make_video(p["video_shape"], device, seed=p["seed"])
    inds, weights = _search_inds(p, device)
    shape = tuple(p["video_shape"])

    def run():
        return scatter(gather(video, inds, ps=p["ps"], backend=backend), inds, shape=shape,
                       weights=weights, ps=p["ps"], backend=backend)

    return Prepared(run)


def build_aggregate(p: dict, device: torch.device, backend: str) -> Prepared:
    video = make_video(p["video_shape"], device, seed=p["seed"])
    inds, weights = _search_inds(p, device)
    return Prepared(lambda: aggregate(video, inds, weights=weights, ps=p["ps"], backend=backend))


def build_aggregate_queries(p: dict, device: torch.device, backend: str) -> Prepared:
    """aggregate at the queries' own positions (non-local means): the fold-form kernels."""
    video = make_video(p["video_shape"], device, seed=p["seed"])
    inds, weights = _search_inds(p, device)
    region = None if p["region"] is None else tuple(p["region"])
    return Prepared(lambda: aggregate(video, inds, "queries", region=region, weights=weights,
                                      ps=p["ps"], backend=backend))


def _frame(p: dict, device) -> torch.Tensor:
    return make_video(p["video_shape"], device, seed=p["seed"])


def build_iunfold(p: dict, device: torch.device, backend: str) -> Prepared:
    video = _frame(p, device)
    ps, stride = p["ps"], p["stride"]
    check = {}
    if p.get("check"):
        mine = iunfold(video, ps=ps, stride=stride, backend=backend)
        ref = F.unfold(video[:, 0], ps, padding=ps // 2, stride=stride)
        check = {"matches_torch": bool(torch.equal(mine.transpose(1, 2), ref))}
        del mine, ref
    return Prepared(lambda: iunfold(video, ps=ps, stride=stride, backend=backend), check)


def build_ifold(p: dict, device: torch.device, backend: str) -> Prepared:
    video = _frame(p, device)
    ps, stride, shape = p["ps"], p["stride"], tuple(p["video_shape"])
    patches = iunfold(video, ps=ps, stride=stride)
    del video
    check = {}
    if p.get("check"):
        mine = ifold(patches, shape=shape, ps=ps, stride=stride, backend=backend)
        ref = F.fold(patches.transpose(1, 2), shape[-2:], ps, padding=ps // 2, stride=stride)
        check = {
            "matches_torch": bool(torch.allclose(mine[:, 0], ref, rtol=1e-5, atol=1e-5)),
            "max_abs_diff_vs_torch": float((mine[:, 0] - ref).abs().max()),
        }
        del mine, ref
    return Prepared(lambda: ifold(patches, shape=shape, ps=ps, stride=stride, backend=backend), check)


def build_torch_unfold(p: dict, device: torch.device, backend: str) -> Prepared:
    frame = _frame(p, device)[:, 0]
    ps, stride = p["ps"], p["stride"]
    return Prepared(lambda: F.unfold(frame, ps, padding=ps // 2, stride=stride))


def build_torch_fold(p: dict, device: torch.device, backend: str) -> Prepared:
    frame = _frame(p, device)[:, 0]
    ps, stride = p["ps"], p["stride"]
    cols = F.unfold(frame, ps, padding=ps // 2, stride=stride)
    size = tuple(frame.shape[-2:])
    del frame
    return Prepared(lambda: F.fold(cols, size, ps, padding=ps // 2, stride=stride))


# ---- plain-PyTorch search baselines (integer offsets, no flow, L2, interior queries) ----


def _window_frames(t: int, T: int, wt: int) -> range:
    nt = min(T, 2 * wt + 1)
    s0 = min(max(t - wt, 0), T - nt)
    return range(s0, s0 + nt)


def _check_interior(region, H: int, W: int, ws: int) -> None:
    t0, t1, y0, y1, x0, x1 = region
    r = ws // 2
    if not (y0 >= r and y1 - 1 <= H - 1 - r and x0 >= r and x1 - 1 <= W - 1 - r):
        raise ValueError(f"baselines need interior queries (>= ws//2 = {r} from the border), got {region}")


def baseline_unfold_cdist(video, region, ps, ws, wt, k, tile=16, stride0=1):
    """Top-k L2 distances by unfolding candidate blocks and a matmul per query tile.

    For each tile of query rows/cols (queries ``stride0`` apart) and each window frame: unfold
    the candidate patches the tile's windows cover, distances ||q||^2 + ||c||^2 - 2 q.c, mask
    candidates outside each query's own ws x ws window, then top-k over all frames. Mirrored
    padding, as search.
    """
    v = video[0]
    T, C, H, W = v.shape
    _check_interior(region, H, W, ws)
    t0, t1, y0, y1, x0, x1 = region
    p, r, s = ps // 2, ws // 2, stride0
    vpad = F.pad(v, (p, p, p, p), mode="reflect")
    masks: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for t in range(t0, t1):
        rows = []
        frames = _window_frames(t, T, wt)
        for ty in range(y0, y1, tile * s):
            th = min(tile, -(-(y1 - ty) // s))
            cols = []
            for tx in range(x0, x1, tile * s):
                tw = min(tile, -(-(x1 - tx) // s))
                if (th, tw) not in masks:
                    i = torch.arange(th, device=v.device) * s
                    j = torch.arange(tw, device=v.device) * s
                    a = torch.arange((th - 1) * s + 2 * r + 1, device=v.device)
                    b = torch.arange((tw - 1) * s + 2 * r + 1, device=v.device)
                    my = (a[None, :] >= i[:, None]) & (a[None, :] <= i[:, None] + 2 * r)
                    mx = (b[None, :] >= j[:, None]) & (b[None, :] <= j[:, None] + 2 * r)
                    masks[(th, tw)] = ~(my[:, None, :, None] & mx[None, :, None, :]).reshape(th * tw, -1)
                mask = masks[(th, tw)]
                hq, wq = (th - 1) * s + 1, (tw - 1) * s + 1
                qblk = vpad[t : t + 1, :, ty : ty + hq + 2 * p, tx : tx + wq + 2 * p]
                q = F.unfold(qblk, ps, stride=s)[0].T
                qn = (q * q).sum(1)
                ds = []
                for f in frames:
                    blk = vpad[f : f + 1, :, ty - r : ty + hq + r + 2 * p, tx - r : tx + wq + r + 2 * p]
                    c = F.unfold(blk, ps)[0].T
                    d = (qn[:, None] + (c * c).sum(1)[None, :]).addmm_(q, c.T, alpha=-2).clamp_min_(0)
                    ds.append(d.masked_fill_(mask, math.inf))
                d = torch.cat(ds, 1).topk(k, dim=1, largest=False).values  # (th*tw, k)
                cols.append(d.view(th, tw, k))
            rows.append(torch.cat(cols, 1))
        out.append(torch.cat(rows, 0).reshape(-1, k))
    return torch.cat(out, 0)


def baseline_shift_boxfilter(video, region, ps, ws, wt, k, stride0=1):
    """Top-k L2 distances by shifting: for each integer offset (dt, dy, dx) of the window,
    the squared-difference image of the query frame and the shifted key frame, summed
    over ps x ps by a box filter (avg_pool2d with divisor 1, stride ``stride0``: the queries'
    grid), merged into a running top-k (one merge per (frame, dy) with all ws dx offsets at
    once). Mirrored padding."""
    v = video[0]
    T, C, H, W = v.shape
    _check_interior(region, H, W, ws)
    t0, t1, y0, y1, x0, x1 = region
    p, r = ps // 2, ws // 2
    P = p + r
    vpad = F.pad(v, (P, P, P, P), mode="reflect")
    out = []
    for t in range(t0, t1):
        qc = vpad[t, :, y0 - p + P : y1 + p + P, x0 - p + P : x1 + p + P]  # (C, hr+2p, wr+2p)
        best = None
        for s in _window_frames(t, T, wt):
            for dy in range(-r, r + 1):
                ys = slice(y0 - p + P + dy, y1 + p + P + dy)
                kc = torch.stack(
                    [vpad[s, :, ys, x0 - p + P + dx : x1 + p + P + dx] for dx in range(-r, r + 1)]
                )  # (ws, C, hr+2p, wr+2p)
                d2 = ((kc - qc) ** 2).sum(1, keepdim=True)
                box = F.avg_pool2d(d2, ps, stride=stride0, divisor_override=1)  # (ws, 1, nh, nw)
                d = box.reshape(ws, -1).T
                best = d if best is None else torch.cat([best, d], 1)
                if best.shape[1] > k:
                    best = best.topk(k, dim=1, largest=False).values
        out.append(best.sort(dim=1).values)
    return torch.cat(out, 0)


_BASELINES = {"unfold+cdist": baseline_unfold_cdist, "shift+boxfilter": baseline_shift_boxfilter}


def build_baseline(p: dict, device: torch.device, backend: str) -> Prepared:
    video = make_video(p["video_shape"], device, seed=p["seed"])
    region = tuple(p["region"])
    fn = _BASELINES[p["method"]]
    kw = {"ps": p["ps"], "ws": p["ws"], "wt": p["wt"], "k": p["k"], "stride0": p.get("stride0", 1)}
    if "tile" in p:
        kw["tile"] = p["tile"]
    check = {}
    if p.get("check"):
        with torch.no_grad():
            ref, _ = search(video, video, region=region, backend=p.get("check_backend", "reference"),
                            **kw_search(p))
            mine = fn(video, region, **kw)
        ref = ref[0, 0]
        diff = float((mine - ref).abs().max())
        check = {
            "matches_reference": bool(torch.allclose(mine, ref, rtol=1e-4, atol=1e-3)),
            "max_abs_diff_vs_reference": diff,
        }
    return Prepared(lambda: fn(video, region, **kw), check)


def kw_search(p: dict) -> dict:
    return {"ps": p["ps"], "ws": p["ws"], "wt": p["wt"], "k": p["k"], "stride0": p.get("stride0", 1)}


BUILDERS: dict[str, Callable[[dict, torch.device, str], Prepared]] = {
    "search": build_search,
    "gather": build_gather,
    "scatter": build_scatter,
    "gather_then_scatter": build_gather_then_scatter,
    "aggregate": build_aggregate,
    "aggregate_queries": build_aggregate_queries,
    "iunfold": build_iunfold,
    "ifold": build_ifold,
    "torch_unfold": build_torch_unfold,
    "torch_fold": build_torch_fold,
    "baseline": build_baseline,
}


# --------------------------------------------------------------------------------------
# the workloads
# --------------------------------------------------------------------------------------


def _aggregate_cases(name: str, p: dict, flow: str, full: int | None = None) -> list[Case]:
    """gather then weighted scatter, and aggregate (the same without storing the patches), at
    inds and at the queries' own positions."""
    return [
        Case(name, "gather+scatter", "scatter", "gather_then_scatter", dict(p),
             f"gather_scatter_{flow}", full),
        Case(name, "aggregate", "aggregate", "aggregate", dict(p), f"aggregate_{flow}", full),
        Case(name, "aggregate at queries", "aggregate", "aggregate_queries",
             dict(p, at="each query's own position (non-local means): fold form"),
             f"aggregate_queries_{flow}", full),
    ]


# issue 25's workloads: (video shape, search arguments, whether the flow case and the L2
# baselines apply); every one with B=1 and no flow unless stated
ISSUE25 = {
    "w1": ((1, 3, 3, 512, 512), dict(ps=7, ws=21, wt=1, k=10, dist="l2", stride0=4), False, True),
    "w2": ((1, 5, 3, 256, 256), dict(ps=7, ws=21, wt=2, k=10, dist="l2", stride0=1), False, True),
    "w3": ((1, 5, 3, 540, 960), dict(ps=7, ws=21, wt=2, k=10, dist="l2", stride0=1), True, True),
    "w4": ((1, 5, 64, 256, 256), dict(ps=1, ws=9, wt=2, k=10, dist="prod", stride0=1), False, False),
}


def _issue25_cases(name: str, quick: bool, crop: bool) -> list[Case]:
    """Issue 25's workload ``name``: search with ``itype`` "int" and "float", forward and
    forward+backward (``dists.sum()``, gradients to the video, and to the flows where there
    are flows), without flow (and, for w3, with the smooth sub-pixel flow), then the two
    plain-PyTorch baselines where they apply (L2, no flow) on the interior queries (at least
    ``ws//2`` from the border, every frame). With ``crop`` (the CPU default), queries are a
    centre region of 32x32 queries of the middle frame (8x8 with ``quick``), for the
    baselines too."""
    shape, S, with_flow, baselines = ISSUE25[name]
    _, T, _, H, W = shape
    s0, r = S["stride0"], S["ws"] // 2
    region = None
    interior = (0, T, r, H - r, r, W - r)
    if crop:
        n = (8 if quick else 32) * s0
        region = interior = centre_region(T, H, W, T // 2, n, n)
    full = region_queries(None, shape, s0)
    cases: list[Case] = []
    for flow in ("none", "smooth") if with_flow else ("none",):
        for itype in ("int", "float"):
            for mode in ("fwd", "fwd_bwd"):
                p = dict(S, seed=0, video_shape=shape, region=region, flow=flow, itype=itype, mode=mode,
                         n_queries=region_queries(region, shape, s0), full_queries=full)
                if flow == "smooth":
                    p["flow_desc"] = "bilinear upsampling of Gaussian noise (64-pixel cells), max |v| = 3 px"
                if mode == "fwd_bwd":
                    p["loss"] = "dists.sum(), grads to video" + (" and flows" if flow == "smooth" else "")
                op = "search" if mode == "fwd" else "search_fwd_bwd"
                cases.append(Case(name, op, "search", "search", p, f"{op}_{flow}_{itype}",
                                  full if crop else None))
    if baselines:
        base = dict(S, seed=0, video_shape=shape, region=interior,
                    n_queries=region_queries(interior, shape, s0),
                    comparison="top-k distances vs the compiled search (backend=None), interior queries",
                    check_backend=None, check=True)
        cases.append(Case(name, "unfold+cdist", None, "baseline",
                          dict(base, method="unfold+cdist", tile=16 if crop else 32), "baseline"))
        cases.append(Case(name, "shift+boxfilter", None, "baseline",
                          dict(base, method="shift+boxfilter"), "baseline"))
    return cases


def workload_cases(name: str, device: torch.device, quick: bool, crop: bool) -> list[Case]:
    """Cases of a workload. ``crop``: restrict queries to a region (CPU default)."""
    S = dict(ps=7, ws=21, wt=2, k=10, seed=0)
    cases: list[Case] = []
    if name == "small":
        shape = (1, 5, 3, 256, 256)
        region = None
        if crop:
            n = 16 if quick else 48
            region = centre_region(5, 256, 256, 2, n, n)
        p = dict(
            S,
            video_shape=shape,
            region=region,
            dist="l2",
            stride0=1,
            mode="fwd",
            n_queries=region_queries(region, shape),
            full_queries=region_queries(None, shape),
        )
        if crop:
            p["note"] = (
                "queries restricted to region (queries/s is size-independent); "
                "extrapolated_full_seconds = full_queries / queries_per_s"
            )
        cases.append(
            Case(
                name, "search", "search", "search", p, "search", region_queries(None, shape) if crop else None
            )
        )
    elif name == "a":
        shape = (1, 8, 3, 540, 960)
        region = None
        if crop:
            region = (4, 5, 270, 271, 448, 512) if quick else (4, 5, 269, 271, 0, 960)
        for flow in ("none", "smooth"):
            for mode in ("fwd", "fwd_bwd"):
                p = dict(
                    S,
                    video_shape=shape,
                    region=region,
                    dist="l2",
                    stride0=1,
                    flow=flow,
                    mode=mode,
                    n_queries=region_queries(region, shape),
                    full_queries=region_queries(None, shape),
                )
                if flow == "smooth":
                    p["flow_desc"] = (
                        "bilinear upsampling of 8x15 Gaussian noise, max |v| = 3 px; bflow = -fflow"
                    )
                if mode == "fwd_bwd":
                    p["loss"] = "dists.sum(), grads to video" + (" and flows" if flow == "smooth" else "")
                if crop:
                    p["note"] = "queries restricted to a few rows; full-frame time is extrapolated"
                op = "search" if mode == "fwd" else "search_fwd_bwd"
                cases.append(
                    Case(
                        name,
                        op,
                        "search",
                        "search",
                        p,
                        f"{op}_{flow}",
                        region_queries(None, shape) if crop else None,
                    )
                )
    elif name == "b":
        B = dict(ps=1, ws=9, wt=2, k=10, seed=0, dist="prod", stride0=1, mode="fwd")
        for shape in ((1, 5, 64, 256, 256), (1, 8, 64, 540, 960)):
            T, H, W = shape[1], shape[3], shape[4]
            region = None
            if crop:
                if H == 256:
                    region = centre_region(T, H, W, T // 2, 16 if quick else 32, 16 if quick else 32)
                else:
                    rows = (270, 271) if quick else (268, 272)
                    region = (T // 2, T // 2 + 1, *rows, 0, 960)
            p = dict(
                B,
                video_shape=shape,
                region=region,
                n_queries=region_queries(region, shape),
                full_queries=region_queries(None, shape),
            )
            if crop:
                p["note"] = (
                    "queries restricted to a region; time includes the per-call O(video) "
                    "channels-last copy; full-video time is extrapolated"
                )
            cases.append(
                Case(
                    name,
                    "search",
                    "search",
                    "search",
                    p,
                    f"search_{T}x{H}x{W}",
                    region_queries(None, shape) if crop else None,
                )
            )
    elif name == "gather_scatter":
        shape = (1, 5, 3, 256, 256)
        region = None
        if crop:
            region = centre_region(5, 256, 256, 2, 16, 32) if quick else centre_region(5, 256, 256, 2, 32, 64)
        for flow in ("none", "smooth"):
            q = region_queries(region, shape)
            p = dict(
                ps=7,
                ws=21,
                wt=2,
                k=10,
                seed=0,
                video_shape=shape,
                region=region,
                flow=flow,
                n_queries=q,
                n_patches=q * 10,
                inds=(
                    "search output, float positions: integer-valued (one tap)"
                    if flow == "none"
                    else "search output with smooth flow: sub-pixel (bilinear, four taps)"
                ),
            )
            cases.append(Case(name, "gather", "gather", "gather", dict(p), f"gather_{flow}"))
            p = dict(p, weights="softmax(-dists/10) over K")
            cases.append(Case(name, "scatter", "scatter", "scatter", p, f"scatter_{flow}"))
            cases += _aggregate_cases(name, p, flow)
    elif name == "gather_scatter_a":
        # workload A's whole search output (8x540x960 queries, K=10): the inds come from the
        # automatic backend (the reference search would take minutes at this size)
        shape = (1, 8, 3, 540, 960)
        region = (4, 5, 269, 271, 0, 960) if crop else None
        for flow in ("none", "smooth"):
            q = region_queries(region, shape)
            p = dict(
                ps=7, ws=21, wt=2, k=10, seed=0, video_shape=shape, region=region, flow=flow,
                inds_backend=None, n_queries=q, n_patches=q * 10,
                full_queries=region_queries(None, shape),
            )
            full = region_queries(None, shape) if crop else None
            cases.append(Case(name, "gather", "gather", "gather", dict(p), f"gather_{flow}", full))
            p = dict(p, weights="softmax(-dists/10) over K")
            cases.append(Case(name, "scatter", "scatter", "scatter", p, f"scatter_{flow}", full))
            cases += _aggregate_cases(name, p, flow, full)
    elif name == "fold":
        size = 1024 if quick else 2048
        stride = 4 if (crop or quick) else 1
        shape = (1, 1, 3, size, size)
        p = dict(
            video_shape=shape,
            ps=7,
            stride=stride,
            seed=0,
            check=True,
            n_patches=math.ceil(size / stride) ** 2,
        )
        if stride != 1:
            p["note"] = f"stride={stride} on CPU (stride 1 is heavy); patches on a stride-{stride} grid"
        cases.append(Case(name, "iunfold", "iunfold", "iunfold", dict(p), "unfold"))
        cases.append(Case(name, "F.unfold", None, "torch_unfold", dict(p, check=False), "unfold"))
        cases.append(Case(name, "ifold", "ifold", "ifold", dict(p), "fold"))
        cases.append(Case(name, "F.fold", None, "torch_fold", dict(p, check=False), "fold"))
    elif name == "memory_scaling":
        sizes = (128, 256, 512) if quick else (128, 256, 512, 1024)
        for s in sizes:
            shape = (1, 3, 3, s, s)
            region = centre_region(3, s, s, 1, 32, 32)
            p = dict(
                S,
                video_shape=shape,
                region=region,
                dist="l2",
                stride0=1,
                mode="fwd",
                batch_size=256,
                n_queries=region_queries(region, shape),
                video_bytes=4 * math.prod(shape),
            )
            cases.append(Case(name, "search", "search", "search", p, f"search_{s}"))
    elif name == "baselines":
        shape = (1, 5, 3, 256, 256)
        if crop:
            n = 16 if quick else 48
            region = centre_region(5, 256, 256, 2, n, n)
        else:
            region = (0, 5, 10, 246, 10, 246)  # every interior query (>= ws//2 from the border)
        base = dict(
            S,
            video_shape=shape,
            region=region,
            dist="l2",
            n_queries=region_queries(region, shape),
            comparison="top-k distances vs search(backend='reference'), interior queries",
        )
        cases.append(Case(name, "search", "search", "search", dict(base, mode="fwd", stride0=1), "search"))
        cases.append(
            Case(
                name,
                "unfold+cdist",
                None,
                "baseline",
                dict(base, method="unfold+cdist", tile=16 if crop else 32, check=True),
                "search",
            )
        )
        cases.append(
            Case(
                name,
                "shift+boxfilter",
                None,
                "baseline",
                dict(base, method="shift+boxfilter", check=True),
                "search",
            )
        )
    elif name in ISSUE25:
        cases += _issue25_cases(name, quick, crop)
    else:
        raise ValueError(f"unknown workload {name!r}; expected one of {WORKLOADS}")
    return cases


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(obj, allocated: bool = True) -> int:
    """Bytes held by the tensors in ``obj`` (nested tuples/lists), each storage counted once.

    ``allocated``: the storages' full size (what an allocator holds); else the bytes the
    tensors span (what was written, hence resident: F.fold, for one, returns a tensor on
    a storage three times its size).
    """
    seen: dict[int, int] = {}

    def visit(o):
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            n = st.nbytes() if allocated else o.numel() * o.element_size()
            seen[st.data_ptr()] = max(n, seen.get(st.data_ptr(), 0))
        elif isinstance(o, (tuple, list)):
            for x in o:
                visit(x)

    visit(obj)
    return sum(seen.values())


def _machine_busy() -> float | None:
    """Seconds of CPU time used by the whole machine so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = f[0] + f[1] + f[2] + sum(f[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_fn(fn, device, warmup: int, repeats: int, long_call: float, cuda_mem: bool):
    """Warm up, then time up to ``repeats`` calls. Returns (times, memory dict).

    When a warm-up call or the first timed call takes longer than ``long_call`` seconds,
    that first timed call is the only one. On CUDA with ``cuda_mem``, the peak memory is
    read during the first timed call (no extra call).
    """
    slow = False
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        sync(device)
        slow = slow or time.perf_counter() - t > long_call
    times, mem = [], {}
    busy0, own0, wall0 = _machine_busy(), _own_cpu(), time.perf_counter()
    for i in range(repeats):
        first = cuda_mem and i == 0
        if first:
            gc.collect()
            sync(device)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if first:
            peak = torch.cuda.max_memory_allocated(device)
            ob = tensor_bytes(out)
            mem = {
                "peak_bytes": peak - base,
                "peak_extra_bytes": peak - base - ob,
                "output_bytes": ob,
                "input_bytes": base,
                "memory_method": "torch.cuda.max_memory_allocated during the first timed call minus "
                "memory_allocated before it (inputs); extra = minus the outputs' storages",
            }
        del out
        if slow or times[0] > long_call:
            break
    busy1, own1, wall1 = _machine_busy(), _own_cpu(), time.perf_counter()
    if busy0 is not None and busy1 is not None:
        # CPU time of other processes during the timed calls, as a fraction of the machine
        mem["other_cpu_load"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / (
            (os.cpu_count() or 1) * (wall1 - wall0)
        )
    return times, mem


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _tiny_warmup() -> None:
    """Touch every op once on tiny inputs so lazy initialisation is not counted as the op's memory."""
    v = torch.rand(1, 3, 2, 24, 24, requires_grad=True)
    fl = make_flows(v.shape, "cpu", cell=8)
    fl = tuple(f.requires_grad_(True) for f in fl)
    d, i = search(v, v, ps=3, ws=5, wt=1, k=3, flows=fl, batch_size=64)
    d.sum().backward()
    d, i = search(v.detach(), v.detach(), ps=1, ws=5, wt=1, k=3, dist="prod", itype="int")
    p = gather(v.detach(), i, ps=3)
    scatter(p, i, shape=v.shape, ps=3)
    ifold(iunfold(v.detach(), ps=3, stride=2), shape=v.shape, ps=3, stride=2)
    f = F.unfold(v.detach()[:, 0], 3, padding=1)
    F.fold(f, (24, 24), 3, padding=1)
    baseline_unfold_cdist(v.detach(), (1, 2, 3, 8, 3, 8), 3, 5, 1, 3, tile=4)
    baseline_shift_boxfilter(v.detach(), (1, 2, 3, 8, 3, 8), 3, 5, 1, 3)
    gc.collect()


def _memory_child(conn, builder: str, params: dict, backend: str, threads: int, cache_dir) -> None:
    global _CACHE_DIR
    _CACHE_DIR = cache_dir
    try:
        torch.set_num_threads(threads)
        _tiny_warmup()
        params = dict(params, check=False)  # correctness checks run in the parent only
        prep = BUILDERS[builder](params, torch.device("cpu"), backend)
        gc.collect()
        reset = _reset_peak_rss()
        rss_inputs = _status_kib("VmRSS") * 1024
        if not reset:
            rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = prep.fn()
        if reset:
            peak = _status_kib("VmHWM") * 1024
            method = "VmHWM after clear_refs reset, minus VmRSS after inputs (fresh spawned process)"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            method = "ru_maxrss during the call minus ru_maxrss after inputs (fresh spawned process)"
        ob = tensor_bytes(out, allocated=False)
        conn.send(
            {
                "peak_bytes": peak - rss_inputs,
                "peak_extra_bytes": peak - rss_inputs - ob,
                "output_bytes": ob,
                "rss_after_inputs_bytes": rss_inputs,
                "memory_method": method + f"; MALLOC_MMAP_THRESHOLD_={MALLOC_MMAP_THRESHOLD}",
            }
        )
    except Exception:  # report, don't hang the parent
        conn.send({"memory_error": traceback.format_exc(limit=4)})
    finally:
        conn.close()


def run_child(target, args: tuple) -> tuple[dict | None, int | None]:
    """Run ``target(conn, *args)`` in a spawned process whose glibc returns freed memory at once
    (``MALLOC_MMAP_THRESHOLD_``, so that its peak RSS is the case's own); returns what it sent
    through ``conn`` (None if it died first) and its exit code."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    old = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    try:
        proc = ctx.Process(target=target, args=(send, *args))
        proc.start()
    finally:
        if old is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = old
    send.close()
    try:
        res = recv.recv()
    except EOFError:
        res = None
    proc.join()
    return res, proc.exitcode


def cpu_memory(case: Case, backend: str, threads: int) -> dict:
    res, code = run_child(_memory_child, (case.builder, case.params, backend, threads, _CACHE_DIR))
    if res is None:
        res = {"memory_error": "memory child exited without a result"}
    if code not in (0, None):
        res.setdefault("memory_error", f"memory child exit code {code}")
    return res


_AVAILABLE: dict[tuple[str, str], str | None] = {}


def backend_unavailable(op: str, backend: str, device: torch.device) -> str | None:
    """None when ``backend`` runs ``op`` on ``device`` (probed with a tiny call), else why not."""
    key = (op, backend)
    if key in _AVAILABLE:
        return _AVAILABLE[key]
    v = torch.rand(1, 2, 1, 8, 8, device=device)
    inds = torch.tensor([[[[[0, 4, 4]]]]], device=device)
    try:
        if op == "search":
            search(v, v, ps=3, ws=3, wt=0, k=1, backend=backend)
        elif op == "gather":
            gather(v, inds, ps=3, backend=backend)
        elif op == "scatter":
            scatter(
                torch.rand(1, 1, 1, 1, 1, 1, 3, 3, device=device), inds, shape=v.shape, ps=3, backend=backend
            )
        elif op == "aggregate":
            aggregate(v, inds, ps=3, backend=backend)
        elif op == "iunfold":
            iunfold(v, ps=3, backend=backend)
        elif op == "ifold":
            ifold(torch.rand(1, 128, 9, device=device), shape=v.shape, ps=3, backend=backend)
        reason = None
    except (ValueError, RuntimeError, NotImplementedError) as e:
        reason = f"{type(e).__name__}: {e}"
    _AVAILABLE[key] = reason
    return reason


def run_case(case: Case, backend: str, device: torch.device, args) -> dict:
    res: dict[str, Any] = {
        "workload": case.workload,
        "op": case.op,
        "backend": backend,
        "device": str(device),
        "device_name": device_name(device),
        "params": case.params,
    }
    if case.api_op is not None:
        why = backend_unavailable(case.api_op, backend, device)
        if why is not None:
            res.update(status="skipped", reason=why)
            log(f"{case.workload}/{case.op}/{backend}: skipped ({why})")
            return res
    t_start = time.perf_counter()
    try:
        mem = {}
        if not args.no_memory and device.type == "cpu":
            mem = cpu_memory(case, backend, args.threads)  # before the parent builds anything
        torch.manual_seed(0)
        prep = BUILDERS[case.builder](case.params, device, backend)
        res.update(prep.check)
        times, cmem = time_fn(
            prep.fn,
            device,
            args.warmup,
            args.repeats,
            args.long_call,
            cuda_mem=not args.no_memory and device.type == "cuda",
        )
        load = cmem.pop("other_cpu_load", None)
        mem = mem or cmem
        mem["other_cpu_load"] = load
        del prep
        gc.collect()
    except Exception as e:
        res.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
        log(f"{case.workload}/{case.op}/{backend}: ERROR {e}")
        return res
    sec = statistics.median(times)
    res.update(
        status="ok", seconds=sec, min_seconds=min(times), times=times, warmup=args.warmup, repeats=len(times)
    )
    if len(times) != args.repeats:
        res["repeats_note"] = f"a call took over --long-call={args.long_call:g} s: one timed call"
    res.update(mem)
    res.setdefault("peak_bytes", None)
    res.setdefault("peak_extra_bytes", None)
    nq = case.params.get("n_queries")
    if nq and case.op.startswith("search"):
        res["queries_per_s"] = nq / sec
    if case.extrapolate_to:
        res["extrapolated"] = True
        res["extrapolated_full_seconds"] = case.extrapolate_to * sec / nq
    if "video_bytes" in case.params and res.get("peak_extra_bytes") is not None:
        res["peak_extra_minus_video_bytes"] = res["peak_extra_bytes"] - case.params["video_bytes"]
    pk = res.get("peak_extra_bytes")
    log(
        f"{case.workload}/{case.op}/{backend}: {sec:.4g} s"
        + (f", {res['queries_per_s']:.4g} q/s" if "queries_per_s" in res else "")
        + (f", peak extra {pk / MIB:.1f} MiB" if pk is not None else "")
        + (f", other procs {res['other_cpu_load']:.0%} CPU" if res.get("other_cpu_load") is not None else "")
        + f" ({time.perf_counter() - t_start:.1f} s wall)"
    )
    return res


def add_ratios(results: list[dict], cases_of: dict[int, Case]) -> None:
    ref: dict[tuple[str, str], float] = {}
    for i, r in enumerate(results):
        if r.get("status") == "ok" and r["backend"] == "reference":
            ref[(r["workload"], cases_of[i].compare)] = r["seconds"]
    for i, r in enumerate(results):
        key = (r["workload"], cases_of[i].compare)
        if r.get("status") == "ok" and key in ref:
            r["ratio_vs_reference"] = r["seconds"] / ref[key]


def summarise_memory_scaling(results: list[dict]) -> dict:
    """Per backend: peak extra memory per video size, and whether it stayed flat."""
    out = {}
    for b in dict.fromkeys(r["backend"] for r in results if r["workload"] == "memory_scaling"):
        rows = [
            r
            for r in results
            if r["workload"] == "memory_scaling"
            and r["backend"] == b
            and r.get("status") == "ok"
            and r.get("peak_extra_bytes") is not None
        ]
        if len(rows) < 2:
            continue
        ws = [r["peak_extra_minus_video_bytes"] for r in rows]
        lo, hi = min(ws), max(ws)
        out[b] = {
            "sizes": [r["params"]["video_shape"][-1] for r in rows],
            "video_bytes": [r["params"]["video_bytes"] for r in rows],
            "peak_extra_bytes": [r["peak_extra_bytes"] for r in rows],
            "peak_extra_minus_video_bytes": ws,
            "flat": bool(hi - lo <= max(16 * MIB, 0.25 * abs(hi))),
            "criterion": "peak extra minus one video-sized buffer varies by <= max(16 MiB, 25%) across sizes",
        }
    return out


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}"
    )
    ap.add_argument(
        "--backends",
        default="reference",
        help="comma-separated backends to time (reference,cpu,cuda); unavailable ones are skipped",
    )
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--quick", action="store_true", help="scaled-down sizes (a short smoke run)")
    ap.add_argument(
        "--crop", action="store_true", help="restrict queries to regions on CUDA too (always on for CPU)"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--long-call",
        type=float,
        default=20.0,
        help="time a case once when its warm-up call or first timed call takes longer than this (seconds)",
    )
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    global _CACHE_DIR
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build")
    if args.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in names:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown {w!r}; expected a subset of {','.join(WORKLOADS)}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    crop = device.type == "cpu" or args.crop
    _CACHE_DIR = tempfile.mkdtemp(prefix="bench_ops_")
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        **report_header("napari_stnls.ops", device, args.quick),
        "cropped_regions": crop,
        "backends_requested": backends,
        "code": code_state(),
        "load_average_start": list(os.getloadavg()),
        "results": [],
    }
    log(f"device {device} ({report['device_name']}), torch {torch.__version__}, {report['threads']} threads")
    results: list[dict] = []
    cases_of: dict[int, Case] = {}
    try:
        for w in names:
            for case in workload_cases(w, device, args.quick, crop):
                for b in backends if case.api_op is not None else ["torch"]:
                    cases_of[len(results)] = case
                    results.append(run_case(case, b, device, args))
    finally:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
    add_ratios(results, cases_of)
    report["results"] = results
    ms = summarise_memory_scaling(results)
    if ms:
        report["memory_scaling_summary"] = ms
    report["load_average_end"] = list(os.getloadavg())
    report["total_seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    log(f"done in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
