#!/usr/bin/env python
"""Where the CUDA search's time goes: forward and forward+backward of issue 25's ``w3``
(1x5x3x540x960, ps7 ws21 wt2 k10) per case, timed with CUDA events (median of ``--repeats``
after a warm-up), then one forward+backward under ``torch.profiler`` whose CUDA kernels are
listed by total time.

Cases: ``itype`` int and float without flow; float with a zero flow (the flow path's
window kernel on whole-pixel centres: what the sub-pixel interpolation adds is the
difference to the next case); int and float with the smooth sub-pixel flow of
``bench_ops.make_flows``. With ``--modes warp,thread`` each case runs once per backward
kernel (``NAPARI_STNLS_CUDA_BWD``), in the same process.

Prints one JSON object (and writes it to ``--out``); the kernel tables go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
from bench_eigh import cuda_time  # noqa: E402
from bench_ops import make_flows, make_video  # noqa: E402

from napari_stnls.ops import search  # noqa: E402

CASES = {
    "int": ("int", None),
    "float": ("float", None),
    "float_zero_flow": ("float", "zero"),
    "int_flow": ("int", "smooth"),
    "float_flow": ("float", "smooth"),
}


def _events_ms(fn, repeats: int) -> float:
    """Median milliseconds of fn() by CUDA events, after a warm-up (bench_eigh.cuda_time)."""
    return cuda_time(fn, repeats) * 1000


def run_case(shape, itype: str, flow: str | None, repeats: int, top: int) -> dict:
    video = make_video(shape, "cuda", seed=0)
    flows = None
    if flow == "smooth":
        flows = make_flows(shape, "cuda", seed=1)
    elif flow == "zero":
        z = torch.zeros(shape[0], shape[1], 2, *shape[3:], device="cuda")
        flows = (z, z.clone())
    kw = dict(ps=7, ws=21, wt=2, k=10, dist="l2", itype=itype, backend="cuda")

    def fwd():
        with torch.no_grad():
            return search(video, video, flows=flows, **kw)

    leaves = [video.detach().clone().requires_grad_()]
    gflows = None if flows is None else tuple(f.detach().clone().requires_grad_() for f in flows)
    if gflows is not None and flow == "smooth":
        leaves += list(gflows)

    def fwd_bwd():
        d, _ = search(leaves[0], leaves[0], flows=gflows, **kw)
        d.sum().backward()
        for x in leaves:
            x.grad = None

    out = {"fwd_ms": _events_ms(fwd, repeats), "fwd_bwd_ms": _events_ms(fwd_bwd, repeats)}
    out["ratio"] = out["fwd_bwd_ms"] / out["fwd_ms"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fwd_bwd()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = e.cuda_time_total
        if t > 0:
            rows.append((t / 1e3, e.count, e.key))
    rows.sort(reverse=True)
    out["kernels"] = [{"ms": round(t, 3), "calls": n, "name": k[:120]} for t, n, k in rows[:top]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--modes", default="warp",
                    help="backward kernels: warp (the default), thread, v4 (16-byte atomics)")
    ap.add_argument("--shape", default="1,5,3,540,960")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": shape, "runs": []}
    for mode in args.modes.split(","):
        os.environ["NAPARI_STNLS_CUDA_BWD"] = mode
        for name in args.cases.split(","):
            r = run_case(shape, *CASES[name], args.repeats, args.top)
            result["runs"].append({"mode": mode, "case": name, **r})
            print(f"{mode:6s} {name:16s} fwd {r['fwd_ms']:8.2f} ms  fwd+bwd {r['fwd_bwd_ms']:8.2f} ms  "
                  f"({r['ratio']:.2f}x)", file=sys.stderr)
            for k in r["kernels"]:
                print(f"    {k['ms']:9.3f} ms {k['calls']:4d}x  {k['name']}", file=sys.stderr)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
