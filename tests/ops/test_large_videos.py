"""Videos of more than 2**31 elements: the kernels index them with 64-bit offsets.

A search (and a gather) of queries in the far corner of such a video must give what the
same search gives on a crop of that corner, bit for bit, with positions shifted by the
crop's origin: the crop reaches the video's bottom and right edges (mirrored the same way)
and leaves every window and patch room from its top and left edges.

These tests allocate several GB, so they run on CUDA (in `pytest -m cuda`) and on the CPU
only where NAPARI_STNLS_BIG=1 (about 9 GB of RAM; not in CI).
"""

from __future__ import annotations

import os

import pytest
import torch

from napari_stnls.ops import gather, search

CROP = 64


def _big_video(shape, dtype, device, gen):
    """A channels-last (B, T, C, H, W) view of zeros, random in the bottom-right CROP x CROP."""
    B, T, C, H, W = shape
    v = torch.zeros(B, T, H, W, C, dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
    corner = torch.rand(B, T, C, CROP, CROP, generator=gen).to(dtype)
    v[..., H - CROP:, W - CROP:] = corner.to(device)
    return v


def _check_corner(v, flows=None, **kw):
    """search on v and on its corner crop agree bit for bit; so does gather at the results."""
    B, T, C, H, W = v.shape
    assert v.numel() > 2**31
    y0, x0 = H - CROP, W - CROP
    region = (0, T, H - 40, H - 8, W - 44, W - 4)  # windows + patches stay >= 8 px inside the crop
    crop = v[..., y0:, x0:]
    cflows = None if flows is None else tuple(f[..., y0:, x0:] for f in flows)
    d, i = search(v, v, flows=flows, region=region, **kw)
    shifted = (0, T, region[2] - y0, region[3] - y0, region[4] - x0, region[5] - x0)
    cd, ci = search(crop, crop, flows=cflows, region=shifted, **kw)
    origin = torch.tensor([0, y0, x0], dtype=i.dtype, device=i.device)
    assert torch.equal(d, cd)
    assert torch.equal(i, ci + origin)
    assert bool((i[..., 1] >= y0 + 8).all() and (i[..., 2] >= x0 + 8).all())  # room from the crop's edges
    p = gather(v, i, ps=kw["ps"])
    assert torch.equal(p, gather(crop, ci, ps=kw["ps"]))
    assert p.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize(
    ("flow", "itype", "dist"), [(False, "float", "l2"), (True, "float", "l2"), (True, "int", "prod")]
)
def test_cuda_search_and_gather_past_2_31_elements(flow, itype, dist):
    gen = torch.Generator().manual_seed(7)
    shape = (1, 2, 3, 20000, 20000)  # 2.4e9 elements, 4.8 GB in float16
    v = _big_video(shape, torch.float16, "cuda", gen)
    flows = None
    if flow:
        # smooth sub-pixel flows: a constant plus a gentle ramp, in multiples of 1/64 so that a
        # centre is exact in float32 both near x = 20000 and in the crop (float32 spaces values
        # near 20000 by 1/512: other fractions would round differently in the two searches)
        B, T, _, H, W = shape
        ramp = torch.round(torch.linspace(-0.6, 0.6, W, device="cuda") * 64) / 64
        flows = tuple(torch.full((B, T, 2, H, W), s * 1.296875, device="cuda") + ramp for s in (1, -1))
    _check_corner(v, flows=flows, ps=7, ws=9, wt=1, k=5, dist=dist, itype=itype)


BIG = os.environ.get("NAPARI_STNLS_BIG") == "1"


@pytest.mark.skipif(not BIG, reason="needs ~9 GB of RAM: set NAPARI_STNLS_BIG=1")
def test_cpu_search_and_gather_past_2_31_elements():
    gen = torch.Generator().manual_seed(8)
    v = _big_video((1, 1, 1, 46400, 46400), torch.float32, "cpu", gen)  # 2.15e9 elements
    _check_corner(v, ps=5, ws=7, wt=0, k=4, backend="cpu")
