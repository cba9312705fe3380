#!/usr/bin/env python
"""A small run of the CUDA search's kernels, forward and backward, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 3 python benchmarks/memcheck_search_cuda.py

``itype`` int and float, without and with a sub-pixel flow, L2 and product distances, one
and two heads, deterministic mode off and on, and the backward with 16-byte atomics
(``NAPARI_STNLS_CUDA_BWD=v4``); then ``search_dists``' backward alone on
patches of 3, 36 and 784 values a head (one group of lanes per neighbour or several, and the
patch too large for the shared buffer), float32 and float64; then sub-pixel windows through
``search_topk_subpix`` (``NAPARI_STNLS_SUBPIX=1``), its sliding and box-sum variants, one and
three channels, at frame borders and in a region; the window kernel with nl_means' patches
(3 and 4 candidates a lane, the patch side constant or not); the sliding kernel of
whole-pixel grids, its lists kept by the warps (each lane inserting its own distances, or
the lanes sharing them: ``NAPARI_STNLS_CUDA_SLIDE_BAL=1``) or by the block; the single-pixel search on
the matrix units (``NAPARI_STNLS_CUDA_PIX_TC=1``); ``aggregate`` at the query grid through
the row-walking kernel (``NAPARI_STNLS_CUDA_AGG_ROWS=1``). Prints ``ok`` at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from napari_stnls.ops import search  # noqa: E402


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    B, T, C, H, W = 1, 4, 4, 23, 29
    for det in (False, True):
        torch.use_deterministic_algorithms(det)
        for itype in ("int", "float"):
            for flow in (False, True):
                for dist, nheads in (("l2", 1), ("prod", 2)):
                    v = torch.rand(B, T, C, H, W, generator=gen).cuda().requires_grad_()
                    flows = None
                    if flow:
                        flows = tuple((1.7 * torch.randn(B, T, 2, H, W, generator=gen)).cuda()
                                      .requires_grad_() for _ in range(2))
                    d, i = search(v, v, ps=5, ws=7, wt=1, k=6, flows=flows, itype=itype, dist=dist,
                                  nheads=nheads, backend="cuda")
                    (d * torch.rand(d.shape, generator=gen).cuda()).sum().backward()
                    torch.cuda.synchronize()
    torch.use_deterministic_algorithms(False)
    # the backward with 16-byte atomics: 3 channels padded to 4, heads of 4, sub-pixel taps
    os.environ["NAPARI_STNLS_CUDA_BWD"] = "v4"
    for C, nheads, flow in ((3, 1, False), (3, 1, True), (8, 2, True)):
        v = torch.rand(B, T, C, H, W, generator=gen).cuda().requires_grad_()
        flows = None
        if flow:
            flows = tuple((1.7 * torch.randn(B, T, 2, H, W, generator=gen)).cuda().requires_grad_()
                          for _ in range(2))
        d, i = search(v, v, ps=5, ws=7, wt=1, k=6, flows=flows, nheads=nheads, backend="cuda")
        d.sum().backward()
        torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_CUDA_BWD")
    for bwd, dtype in (("", torch.float32), ("", torch.float64), ("v4", torch.float32)):
        os.environ["NAPARI_STNLS_CUDA_BWD"] = bwd  # v4: 784 values a head, past the shared buffer
        for ps, C, nh in ((1, 3, 1), (3, 4, 2), (7, 16, 1)):
            q = torch.rand(2, 3, 9, 11, C, generator=gen, dtype=dtype).cuda().requires_grad_()
            coords = torch.stack([torch.randint(0, n, (13,), generator=gen) for n in (3, 9, 11)], -1).cuda()
            t = torch.randint(0, 3, (2, nh, 13, 5, 1), generator=gen).to(dtype)
            yx = torch.rand(2, nh, 13, 5, 2, generator=gen, dtype=dtype) * 8
            kpos = torch.cat([t, yx], -1).cuda().requires_grad_()
            d = torch.ops.napari_stnls.search_dists(q, q, coords, kpos, ps, 2, 1, True)
            d.sum().backward()
            torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_CUDA_BWD")
    # the window kernel on sub-pixel windows with nl_means' patches: 3 and 4 candidates a lane,
    # the patch side as a constant and not
    os.environ["NAPARI_STNLS_SUBPIX"] = "0"
    for nc, const in (("3", "1"), ("4", "1"), ("3", "0")):
        os.environ["NAPARI_STNLS_CUDA_WINNC"], os.environ["NAPARI_STNLS_CUDA_WINPS"] = nc, const
        v = torch.rand(1, 4, 3, 21, 37, generator=gen).cuda()
        flows = tuple((2.3 * torch.randn(1, 4, 2, 21, 37, generator=gen)).cuda() for _ in range(2))
        with torch.no_grad():
            search(v, v, ps=7, ws=9, wt=1, k=24, flows=flows, backend="cuda")
        torch.cuda.synchronize()
    for key in ("NAPARI_STNLS_CUDA_WINNC", "NAPARI_STNLS_CUDA_WINPS"):
        os.environ.pop(key)
    os.environ["NAPARI_STNLS_SUBPIX"] = "1"
    for slide in ("1", "0"):
        os.environ["NAPARI_STNLS_CUDA_SUBPIX_SLIDE"] = slide
        cases = ((3, 7, 9, 24, None, False), (1, 5, 7, 10, (1, 3, 2, 19, 3, 27), True),
                 (3, 3, 9, 32, None, True))
        for C, ps, ws, k, region, excl in cases:
            v = torch.rand(1, 4, C, 21, 37, generator=gen).cuda()
            flows = tuple((2.3 * torch.randn(1, 4, 2, 21, 37, generator=gen)).cuda() for _ in range(2))
            with torch.no_grad():
                search(v, v, ps=ps, ws=ws, wt=1, k=k, flows=flows, region=region, exclude_self=excl,
                       backend="cuda")
            torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_SUBPIX")
    # the sliding kernel of whole-pixel grids, its lists kept by the warps or by the block:
    # a window wider than the frame, one channel with a region and exclude_self, whole-pixel
    # flows spreading a tile's windows into runs
    for warp, bal in (("1", "0"), ("1", "1"), ("0", "0")):
        os.environ["NAPARI_STNLS_CUDA_SLIDE_WARP"], os.environ["NAPARI_STNLS_CUDA_SLIDE_BAL"] = warp, bal
        cases = ((3, 7, 21, 10, None, False, 0.0), (1, 5, 9, 32, (1, 3, 2, 19, 3, 27), True, 0.0),
                 (3, 7, 7, 5, None, True, 20.0))
        for C, ps, ws, k, region, excl, amp in cases:
            v = torch.rand(1, 4, C, 21, 37, generator=gen).cuda()
            flows = None
            if amp:
                flows = tuple(torch.round(amp * torch.randn(1, 4, 2, 21, 37, generator=gen)).cuda()
                              for _ in range(2))
            with torch.no_grad():
                search(v, v, ps=ps, ws=ws, wt=1, k=k, flows=flows, region=region, exclude_self=excl,
                       itype="int", backend="cuda")
            torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_CUDA_SLIDE_WARP")
    os.environ.pop("NAPARI_STNLS_CUDA_SLIDE_BAL")
    # the single-pixel search on the matrix units: 64 and 5 channels, a region, whole-pixel
    # flows that spread a tile's windows past the staging buffer, near-duplicate features
    # that leave queries to the float32 search
    os.environ["NAPARI_STNLS_CUDA_PIX_TC"] = "1"
    cases = ((64, "prod", 10, None, 0.0, False), (5, "l2", 16, (1, 3, 2, 19, 3, 27), 0.0, False),
             (16, "l2", 7, None, 12.0, False), (8, "l2", 10, None, 0.0, True))
    for C, dist, k, region, amp, near in cases:
        v = torch.rand(1, 4, C, 21, 37, generator=gen)
        v = (0.5 + v * 2.0**-16 if near else v).cuda()
        flows = None
        if amp:
            flows = tuple(torch.round(amp * torch.randn(1, 4, 2, 21, 37, generator=gen)).cuda()
                          for _ in range(2))
        with torch.no_grad():
            search(v, v, ps=1, ws=9, wt=2, k=k, dist=dist, flows=flows, region=region,
                   exclude_self=True, itype="int", backend="cuda")
        torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_CUDA_PIX_TC")
    # aggregate at the query grid through the row-walking kernel and the border strips:
    # whole-pixel and sub-pixel positions, ps 3 and 7, a region along two borders
    from napari_stnls.ops import aggregate

    os.environ["NAPARI_STNLS_CUDA_AGG_ROWS"] = "1"
    for ps, amp, region in ((7, 0.0, None), (7, 2.3, None), (3, 2.3, (0, 3, 0, 15, 11, 37))):
        v = torch.rand(2, 4, 3, 21, 37, generator=gen).cuda()
        flows = None
        if amp:
            flows = tuple((amp * torch.randn(2, 4, 2, 21, 37, generator=gen)).cuda() for _ in range(2))
        with torch.no_grad():
            d, i = search(v, v, ps=ps, ws=9, wt=1, k=6, flows=flows, region=region, backend="cuda")
            aggregate(v, i, "queries", weights=torch.exp(-d), ps=ps, region=region)
        torch.cuda.synchronize()
    os.environ.pop("NAPARI_STNLS_CUDA_AGG_ROWS")
    print("ok")


if __name__ == "__main__":
    main()
