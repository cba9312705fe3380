#!/usr/bin/env python
"""One training step of ``NonLocalAttention`` against the unfold (N3Net) approach: time and peak memory.

A training step is the forward and backward of ``y.square().mean()`` for ``y = block(x)``, ``x``
(1, T, dim, S, S) needing its gradient, the gradients reaching every parameter. Two blocks
with the same weights:

``napari_stnls``
    :class:`napari_stnls.nn.NonLocalAttention` with a fixed query batch (``--batch-size``):
    the search keeps the k best of each query's candidates, and the backward holds the k
    gathered value patches per query.
``unfold``
    the same attention in plain PyTorch, as N3Net computes it: ``F.unfold`` of the search
    window of every key and value frame (all ``nt * ws * ws`` candidates of every query held
    at once), dot products (or squared distances), ``topk``, the softmax over
    the k best and their weighted sum (:class:`UnfoldAttention`; ``ps=1``, one head).
    Candidates outside the frame are masked (ours moves the window inside instead: the two
    agree away from the borders, which the benchmark checks on a small case before timing).

Grid: frames of 256x256 to 1024x1024, T = 4 to 32 (``--quick``: 64x64 and 128x128, T = 4 and 8;
or ``--sizes`` and ``--frames``). Timing: a warm-up call, then the median of ``--repeats``
calls (one when a call takes over ``--long-call`` seconds), synchronised on CUDA.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the first timed step minus
``memory_allocated`` before it (the input and the weights); out of memory is caught
(``torch.cuda.OutOfMemoryError``) and recorded as ``"failed"``. On the CPU every case runs in
a fresh spawned process: the peak resident set size during the first timed step (``VmHWM``
after a reset through ``/proc/self/clear_refs``, else ``ru_maxrss``) minus the resident size
before it, with glibc returning freed blocks (``MALLOC_MMAP_THRESHOLD_``). That process's
address space is limited (``--cpu-mem-limit`` GiB above its size before the step), so a case
that needs more fails with an allocation error, recorded as ``"failed"``, instead of waking
the kernel's OOM killer; a case whose unfolded candidates alone would exceed the limit is
recorded as failed without running.

Prints one JSON object (device, versions, every case) and writes it atomically to ``--out``.

    python benchmarks/bench_nn.py --quick --out out/bench_nn_cpu.json
    python benchmarks/bench_nn.py --device cuda --out out/bench_nn_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_ops import (  # noqa: E402
    MALLOC_MMAP_THRESHOLD,
    _reset_peak_rss,
    _status_kib,
    code_state,
    report_header,
    run_child,
    time_fn,
)
from torch import nn  # noqa: E402

from napari_stnls._util import atomic_path  # noqa: E402
from napari_stnls.nn import NonLocalAttention  # noqa: E402

GIB = 2**30
IMPLS = ("napari_stnls", "unfold")


class UnfoldAttention(nn.Module):
    """The attention of ``ref`` (a :class:`NonLocalAttention` with ``ps=1``, one head, ``stride0=1``,
    no flow), written as N3Net does: every candidate unfolded.

    Shares ``ref``'s weights. For a query at frame t the candidate frames are
    ``s0 .. s0 + nt - 1``, ``nt = min(T, 2 wt + 1)``, ``s0 = clamp(t - wt, 0, T - nt)`` (as search's);
    in each, the ``ws x ws`` pixels centred on the query (those outside the frame masked).

    Examples
    --------
    >>> ref = NonLocalAttention(4, ws=3, wt=1, k=4)
    >>> UnfoldAttention(ref)(torch.rand(1, 3, 4, 8, 8)).shape
    torch.Size([1, 3, 4, 8, 8])
    """

    def __init__(self, ref: NonLocalAttention) -> None:
        super().__init__()
        kw = ref.search_kwargs
        if kw["ps"] != 1 or ref.nheads != 1 or kw["stride0"] != 1 or kw["pt"] != 1 or kw["dilation"] != 1:
            raise ValueError("ref: UnfoldAttention needs ps=1, nheads=1, stride0=1, pt=1, dilation=1")
        self.to_qkv, self.proj, self.log_scale = ref.to_qkv, ref.proj, ref.log_scale
        self.ws, self.wt, self.k, self.dist = kw["ws"], kw["wt"], kw["k"], kw["dist"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W)
        B, T, C, H, W = x.shape
        ws, L = self.ws, H * W
        q, k, v = self.to_qkv(x.flatten(0, 1)).unflatten(0, (B, T)).chunk(3, dim=2)
        nt = min(T, 2 * self.wt + 1)
        s0 = (torch.arange(T) - self.wt).clamp(0, T - nt)

        def unfold(z):  # (B, T, C, H, W) -> (B*T, C, nt * ws * ws, L): every candidate of every query
            cols = [F.unfold(z[:, s0 + j].flatten(0, 1), ws, padding=ws // 2).view(B * T, C, ws * ws, L)
                    for j in range(nt)]
            return torch.cat(cols, dim=2)

        keys, values = unfold(k), unfold(v)
        qf = q.flatten(0, 1).flatten(2)  # (B*T, C, L)
        sim = (qf.unsqueeze(2) * keys).sum(1)  # (B*T, N, L): 3x faster on CPU than einsum
        if self.dist == "l2":
            sim = 2 * sim - keys.square().sum(1) - qf.square().sum(1, keepdim=True)
        inside = F.unfold(torch.ones(1, 1, H, W, device=x.device), ws, padding=ws // 2) > 0  # (1, ws*ws, L)
        sim = sim.masked_fill(~inside.repeat(1, nt, 1), float("-inf"))
        top, idx = sim.topk(self.k, dim=1)  # (B*T, k, L)
        w = torch.softmax(top * self.log_scale.exp(), dim=1)
        picked = values.gather(2, idx.unsqueeze(1).expand(-1, C, -1, -1))  # (B*T, C, k, L)
        out = (picked * w.unsqueeze(1)).sum(2).view(B * T, C, H, W)
        return self.proj(out).unflatten(0, (B, T))


def unfolded_bytes(p: dict) -> int:
    """Bytes of the unfolded keys and values alone (float32): a lower bound of the baseline's peak."""
    nt = min(p["T"], 2 * p["wt"] + 1)
    return 2 * p["T"] * p["dim"] * nt * p["ws"] ** 2 * p["size"] ** 2 * 4


def make_case(impl: str, p: dict, device: torch.device):
    """The block, its input and the step function of one case (seeded)."""
    torch.manual_seed(0)
    ref = NonLocalAttention(p["dim"], ws=p["ws"], wt=p["wt"], k=p["k"], dist=p["dist"],
                            batch_size=p["batch_size"]).to(device)
    block = ref if impl == "napari_stnls" else UnfoldAttention(ref)
    x = torch.rand(1, p["T"], p["dim"], p["size"], p["size"], device=device, requires_grad=True)

    def step():
        y = block(x)
        y.square().mean().backward()
        x.grad = None
        block.zero_grad(set_to_none=True)

    return block, x, step


def check_agreement(p: dict, device: torch.device) -> float:
    """Largest difference between the two blocks' outputs on a small video, away from the borders,
    with k = every candidate (no selection, so no ties): they compute the same attention."""
    nt = 3
    small = dict(p, T=4, size=2 * p["ws"] + 4, k=nt * p["ws"] ** 2, wt=1, batch_size=None)
    ours, x, _ = make_case("napari_stnls", small, device)
    theirs = UnfoldAttention(ours)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    h = p["ws"] // 2
    return float((a - b)[..., h:-h, h:-h].abs().max())


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e)))


def run_cuda(impl: str, p: dict, device, args) -> dict:
    res = None
    try:
        _, _, step = make_case(impl, p, device)
        times, mem = time_fn(step, device, args.warmup, args.repeats, args.long_call, cuda_mem=True)
        res = {"status": "ok", "times": times, **mem}
    except Exception as e:
        if not _is_oom(e):
            raise
        res = {"status": "failed", "reason": f"out of memory: {type(e).__name__}: {str(e).splitlines()[0]}"}
    step = None
    # outside the except block: the exception's frames, which hold the case's tensors, are gone
    gc.collect()
    torch.cuda.empty_cache()
    return res


def _cpu_child(conn, impl: str, p: dict, args: dict) -> None:
    try:
        torch.set_num_threads(args["threads"])
        device = torch.device("cpu")
        tiny = dict(p, T=2, size=12)  # lazy initialisation outside the measured step
        make_case(impl, tiny, device)[2]()
        block, x, step = make_case(impl, p, device)
        gc.collect()
        size = _status_kib("VmSize") * 1024
        limit = size + int(args["cpu_mem_limit"] * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        if args["warmup"]:
            step()
            gc.collect()
        reset = _reset_peak_rss()
        before = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before *= 1024
        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        if reset:
            peak = _status_kib("VmHWM") * 1024
            method = "VmHWM after a clear_refs reset minus VmRSS before the step (fresh spawned process)"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            method = "ru_maxrss during the step minus ru_maxrss before it (fresh spawned process)"
        method += f"; MALLOC_MMAP_THRESHOLD_={MALLOC_MMAP_THRESHOLD}"
        times, mem = [first], {}
        if first <= args["long_call"] and args["repeats"] > 1:
            times, mem = time_fn(step, device, 0, args["repeats"], args["long_call"], cuda_mem=False)
        conn.send({"status": "ok", "times": times, "peak_bytes": peak - before, "memory_method": method,
                   "rss_before_bytes": before, **mem})
    except BaseException as e:  # report, never hang the parent
        if _is_oom(e):
            conn.send({"status": "failed", "reason": f"out of memory (limit {args['cpu_mem_limit']:g} GiB "
                       f"above the process's size): {type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        else:
            conn.send({"status": "error", "error": traceback.format_exc(limit=5)})
    finally:
        conn.close()


def run_cpu(impl: str, p: dict, args) -> dict:
    if impl == "unfold" and unfolded_bytes(p) > args.cpu_mem_limit * GIB:
        return {"status": "failed", "reason": f"not run: the unfolded candidates alone need "
                f"{unfolded_bytes(p) / GIB:.1f} GiB > --cpu-mem-limit {args.cpu_mem_limit:g} GiB"}
    names = ("threads", "cpu_mem_limit", "warmup", "repeats", "long_call")
    res, code = run_child(_cpu_child, (impl, p, {k: getattr(args, k) for k in names}))
    if res is None:
        res = {"status": "failed",
               "reason": "the case's process died without a result (killed: out of memory?)"}
    if code not in (0, None) and res.get("status") == "ok":
        res = {"status": "failed", "reason": f"the case's process exited with code {code}"}
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="a small grid: 64 and 128 px, T = 4 and 8")
    ap.add_argument("--sizes", default=None, help="comma-separated frame sides (default 256,512,1024)")
    ap.add_argument("--frames", default=None, help="comma-separated T (default 4,8,16,32)")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--ws", type=int, default=9)
    ap.add_argument("--wt", type=int, default=1)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--dist", default="prod", choices=("prod", "l2"))
    ap.add_argument("--batch-size", type=int, default=16384, help="queries per search batch (ours)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-call", type=float, default=20.0,
                    help="one timed step when a step takes over this many seconds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cpu-mem-limit", type=float, default=4.0,
                    help="GiB a CPU case may allocate above its process's size before failing")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    def ints(text, name):
        try:
            vals = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            vals = []
        if not vals or min(vals) < 1:
            ap.error(f"--{name}: expected comma-separated ints >= 1, got {text!r}")
        return vals

    args.sizes = ints(args.sizes or ("64,128" if args.quick else "256,512,1024"), "sizes")
    args.frames = ints(args.frames or ("4,8" if args.quick else "4,8,16,32"), "frames")
    args.impls = [v.strip() for v in args.impls.split(",") if v.strip()]
    if not args.impls or any(v not in IMPLS for v in args.impls):
        ap.error(f"--impls: expected a subset of {','.join(IMPLS)}")
    for name in ("dim", "ws", "k", "batch_size", "threads", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.ws % 2 == 0:
        ap.error(f"--ws: expected an odd int, got {args.ws}")
    if args.wt < 0 or args.warmup < 0 or not args.cpu_mem_limit > 0:
        ap.error("--wt, --warmup: expected ints >= 0; --cpu-mem-limit: a number > 0")
    if args.k > (2 * args.wt + 1) * args.ws ** 2:
        ap.error(f"--k: at most the {(2 * args.wt + 1) * args.ws ** 2} candidates of a window")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available in this torch build")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = dict(dim=args.dim, ws=args.ws, wt=args.wt, k=args.k, dist=args.dist, batch_size=args.batch_size)
    agreement = check_agreement(base, device)
    if not agreement < 1e-3:
        raise SystemExit(f"bench_nn: the two blocks disagree by {agreement:.3g} on a small case; "
                         "not timing them")
    report: dict[str, Any] = {
        **report_header("napari_stnls.nn: one training step of NonLocalAttention vs the unfold approach",
                        device, args.quick),
        "code": code_state(),
        "params": base,
        "agreement_max_abs_diff": agreement,
        "load_average_start": list(os.getloadavg()),
        "results": [],
    }
    print(f"[bench_nn] {report['device_name']}, torch {torch.__version__}, {report['threads']} threads; "
          f"the blocks agree to {agreement:.1e}", file=sys.stderr, flush=True)
    for size in args.sizes:
        for T in args.frames:
            p = dict(base, size=size, T=T)
            row: dict[str, Any] = {"size": size, "T": T, "queries": T * size * size,
                                   "unfolded_bytes": unfolded_bytes(p)}
            for impl in args.impls:
                t = time.perf_counter()
                r = run_cuda(impl, p, device, args) if device.type == "cuda" else run_cpu(impl, p, args)
                if r.get("status") == "ok":
                    r["seconds"] = statistics.median(r["times"])
                row[impl] = r
                peak = r.get("peak_bytes")
                what = f"{r['seconds']:.3g} s/step" if "seconds" in r else r.get("reason", r.get("error", ""))
                print(f"[bench_nn] {size}x{size} T={T} {impl}: {r.get('status')} {what}"
                      + (f", peak {peak / GIB:.3f} GiB" if peak is not None else "")
                      + f" ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
            ours, theirs = row.get("napari_stnls", {}), row.get("unfold", {})
            if ours.get("status") == "ok" and theirs.get("status") == "ok":
                row["time_ratio_unfold_over_ours"] = theirs["seconds"] / ours["seconds"]
                if ours.get("peak_bytes") and theirs.get("peak_bytes"):
                    row["memory_ratio_unfold_over_ours"] = theirs["peak_bytes"] / ours["peak_bytes"]
            report["results"].append(row)
    report["load_average_end"] = list(os.getloadavg())
    report["total_seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
