"""The compiled CPU search backward (``search_dists_backward``) against the number of threads.

The kernel runs one task per (batch, head) where there are at least a quarter as many pairs
as threads, and otherwise splits the queries (see csrc/cpu/search/dists.cpp). This times it on
one pair, 48x48 queries of frame 2 of a 5x3x256x256 video, K = 10, ps = 7, neighbours within
10 pixels, with integer and with sub-pixel positions (the latter also gives the position
gradients), for each thread count, in one process: the ratio to 1 thread is the speed-up.

    python benchmarks/bench_backward_cpu.py --threads 1,2,4,8,16 --out out/bench_backward_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(sub: bool, gen: torch.Generator):
    T, H, W, C, K = 5, 256, 256, 3, 10
    qv = torch.rand(1, T, H, W, C, generator=gen)
    kv = torch.rand(1, T, H, W, C, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(104, 152), torch.arange(104, 152), indexing="ij")
    coords = torch.stack([torch.full_like(yy, 2), yy, xx], -1).reshape(-1, 3)
    Q = coords.shape[0]
    t = torch.randint(0, T, (1, 1, Q, K), generator=gen)
    y = coords[:, 1].view(1, 1, Q, 1) + (torch.rand(1, 1, Q, K, generator=gen) - 0.5) * 20
    x = coords[:, 2].view(1, 1, Q, 1) + (torch.rand(1, 1, Q, K, generator=gen) - 0.5) * 20
    if sub:
        kpos = torch.stack([t.float(), y, x], -1)
    else:
        kpos = torch.stack([t, y.round().long(), x.round().long()], -1)
    grad = torch.randn(1, 1, Q, K, generator=gen)
    return grad, qv, kv, coords, kpos, [True, True, sub]


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    values = _positive_ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=_positive_ints, default=[1, 2], help="comma-separated thread counts")
    ap.add_argument("--repeats", type=_positive_int, default=15, help="timed calls; the minimum is kept")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    import napari_stnls._C  # noqa: F401  (the compiled kernels are what is timed)

    op = torch.ops.napari_stnls.search_dists_backward
    before = torch.get_num_threads()
    results = []
    try:
        for name, sub in (("integer", False), ("sub-pixel", True)):
            grad, qv, kv, coords, kpos, needs = _inputs(sub, torch.Generator().manual_seed(0))
            base = None
            for n in args.threads:
                torch.set_num_threads(n)
                op(grad, qv, kv, coords, kpos, 7, 1, 1, True, needs)  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    op(grad, qv, kv, coords, kpos, 7, 1, 1, True, needs)
                    times.append(time.perf_counter() - t0)
                best = min(times)
                base = best if base is None else base
                results.append({"positions": name, "threads": n, "seconds": best,
                                "speedup_vs_first": base / best, "queries": int(coords.shape[0])})
                print(f"{name:9s} {n:3d} threads: {best * 1e3:7.2f} ms", file=sys.stderr)
    finally:
        torch.set_num_threads(before)
    report = {"device": "cpu", "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "torch": torch.__version__, "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return report


if __name__ == "__main__":
    main()
