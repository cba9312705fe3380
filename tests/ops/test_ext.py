"""The compiled kernels as PyTorch custom operators: opcheck, torch.compile, the guard that
picks them or the reference, the fallback when the compiled module is missing, and the
deterministic mode."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from napari_stnls.ops import (
    _determinism,
    _library,
    _window,
    backend_info,
    gather,
    ifold,
    iunfold,
    scatter,
    search,
)

needs_ext = pytest.mark.skipif(_library.LOAD_ERROR is not None, reason=f"not built: {_library.LOAD_ERROR}")


def _inputs(device, dtype=torch.float64, B=1, T=3, C=2, H=8, W=9, nheads=2, itype="float"):
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(B, T, H, W, C, generator=gen, dtype=dtype).to(device)
    k = torch.rand(B, T, H, W, C, generator=gen, dtype=dtype).to(device)
    P = _window.Params((B, T, C, H, W), 3, 3, 1, 4, "l2", 1.0, 1, 2, nheads, False, itype)
    coords = torch.tensor([[0, 2, 3], [1, 4, 4], [2, 7, 8]], device=device)
    flows = tuple(0.7 * torch.randn(B, T, 2, H, W, generator=gen, dtype=dtype).to(device) for _ in range(2))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    centres, frames = _window.centres(coords, *_window.flat_flows(flows, P, acc), P, acc)
    return q, k, coords, centres, frames, _window.offsets(P, acc, device), P


@needs_ext
def test_opcheck(compiled):
    backend, device = compiled
    q, k, coords, centres, frames, off, P = _inputs(device)
    args = (q, k, coords, centres, frames, off, P.ps, P.pt, P.dilation, P.nheads, P.k, True, False)
    torch.library.opcheck(torch.ops.napari_stnls.search_topk.default, args)
    found, ids = torch.ops.napari_stnls.search_topk(*args)
    grid = [0, 2, 3, 3, 1, 1, 1]  # three queries at (t, 2, 3), one per frame: a (3, 1, 1) grid
    c3 = torch.tensor([[0, 2, 3], [1, 2, 3], [2, 2, 3]], device=device)
    cen3, fr3 = centres.round(), frames
    torch.library.opcheck(
        torch.ops.napari_stnls.search_topk_box.default,
        (q, k, c3, cen3, fr3, off, grid, 1, P.ps, P.pt, P.dilation, P.nheads, P.k, True, False),
    )
    Pi = replace(P, itype="int")
    pos = torch.ops.napari_stnls.search_positions_int(ids, cen3, fr3, P.ws, 1)
    torch.library.opcheck(torch.ops.napari_stnls.search_positions_int.default, (ids, cen3, fr3, P.ws, 1))
    assert pos.dtype == torch.int32 and pos.shape == (*ids.shape, 3)
    assert torch.equal(pos.long(), _window.positions(cen3, fr3, ids, Pi))  # the PyTorch glue it replaces
    kpos = torch.stack([frames[:, :1].expand(-1, 4).float().double().expand(1, 2, 3, 4),
                        1.3 + ids.double() % 5, 2.6 + ids.double() % 4], -1).contiguous()
    qg, kg, pg = q.clone().requires_grad_(), k.clone().requires_grad_(), kpos.clone().requires_grad_()
    torch.library.opcheck(torch.ops.napari_stnls.search_dists.default, (qg, kg, coords, pg, 3, 2, 1, True))
    torch.library.opcheck(torch.ops.napari_stnls.search_dists.default, (qg, kg, coords, pg, 3, 2, 1, False))
    given = torch.rand(pg.shape[:4], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.napari_stnls.search_dists.default,
                          (qg, kg, coords, pg, 3, 2, 1, True, given))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride1", [1.0, 0.5, 1.7, 3.0])
def test_search_positions_match_the_glue(compiled, dtype, stride1):
    """``search_positions`` (float positions without a gradient) writes the bits of the
    PyTorch glue it replaces (``_window.positions``): sub-pixel centres of several frames,
    every id of the window, two batch items and two heads, fractional grid spacings."""
    backend, device = compiled
    gen = torch.Generator().manual_seed(int(stride1 * 10))
    B, nh, Q, K, nt, ws = 2, 2, 37, 6, 3, 5
    P = _window.Params((B, 4, 2, 20, 30), 3, ws, 1, K, "l2", stride1, 1, 1, nh, False, "float")
    centres = (torch.rand(B, Q, nt, 2, generator=gen, dtype=torch.float64) * 25 - 2).to(dtype)
    frames = torch.randint(0, 4, (Q, nt), generator=gen)
    ids = torch.randint(0, nt * ws * ws, (B, nh, Q, K), generator=gen)
    ids[0, 0, 0] = torch.tensor([0, ws * ws - 1, nt * ws * ws - 1, 1, ws, 2 * ws * ws])  # window corners
    args = tuple(a.to(device) for a in (ids, centres, frames)) + (ws, stride1)
    pos = torch.ops.napari_stnls.search_positions(*args)
    assert pos.dtype == dtype and pos.shape == (B, nh, Q, K, 3)
    glue = _window.positions(args[1], args[2], args[0], P)
    assert torch.equal(pos, glue)
    torch.library.opcheck(torch.ops.napari_stnls.search_positions.default, args)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("T", "wt", "ws", "stride1", "itype"),
                         [(6, 2, 5, 1.0, "float"), (4, 3, 7, 0.5, "float"), (5, 1, 3, 1.0, "int"),
                          (3, 0, 5, 1.5, "float"), (7, 2, 9, 2.0, "int")])
def test_search_centres_match_the_glue(compiled, dtype, T, wt, ws, stride1, itype, monkeypatch):
    """``search_centres`` (the flow chaining without a gradient) writes the bits of the
    PyTorch glue (``_window.centres``): flows of several pixels that carry positions out of
    the frame (clamped), queries in the first and last frames (one-sided windows), every
    pixel of a small video, two batch items, whole-pixel rounding (ties to even)."""
    backend, device = compiled
    monkeypatch.setenv("NAPARI_STNLS_TORCH_GLUE", "0")  # the kernel, whatever the device's default
    gen = torch.Generator().manual_seed(T * 100 + ws)
    B, H, W = 2, 9, 11
    P = _window.Params((B, T, 2, H, W), 3, ws, wt, 4, "l2", stride1, 1, 1, 1, False, itype)
    flows = [4 * torch.randn(B, T, 2, H, W, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]
    flows[0][0, 0, :, :2] = 0.5  # exact halves: round's ties
    tt, yy, xx = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([tt, yy, xx], -1).reshape(-1, 3).to(device)
    ff, bf = _window.flat_flows([f.to(device) for f in flows], P, dtype)
    c, fr = _window.centres_compiled(coords, ff, bf, P, dtype)
    c0, fr0 = _window.centres(coords, ff, bf, P, dtype)
    assert torch.equal(fr, fr0)
    assert c.dtype == dtype and torch.equal(c, c0)
    torch.library.opcheck(torch.ops.napari_stnls.search_centres.default,
                          (coords, fr, ff, bf, T, H, W, itype == "int", float(stride1 * (ws // 2))))


@needs_ext
def test_search_without_gradient_gives_the_positions_with_one(compiled, monkeypatch):
    """A search along flows that need no gradient takes ``search_positions``; one whose flows
    need it takes the differentiable glue: the same positions and distances."""
    backend, device = compiled
    monkeypatch.setenv("NAPARI_STNLS_TORCH_GLUE", "0")  # the kernels, whatever the device's default
    gen = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 2, 12, 13, generator=gen).to(device)
    flows = tuple((1.3 * torch.randn(1, 3, 2, 12, 13, generator=gen)).to(device) for _ in range(2))
    kw = dict(ps=3, ws=5, wt=1, k=6, backend=backend)
    with torch.no_grad():
        d0, i0 = search(video, video, flows=flows, **kw)
    d1, i1 = search(video, video, flows=tuple(f.clone().requires_grad_() for f in flows), **kw)
    assert i1.requires_grad and not i0.requires_grad
    assert torch.equal(i0, i1.detach()) and torch.equal(d0, d1.detach())


@needs_ext
@pytest.mark.parametrize(
    ("ps", "pt", "C", "nheads", "dil", "K", "dist", "itype"),
    [
        (3, 2, 2, 1, 1, 5, "l2", "float"),  # 36 values a patch: on CUDA two per lane
        (1, 1, 3, 1, 1, 10, "l2", "float"),  # 3 values: 8 neighbours at once, the last round partial
        (2, 1, 2, 2, 2, 7, "prod", "float"),  # one value a head, dilated
        (7, 1, 3, 1, 1, 10, "l2", "int"),
        (5, 2, 4, 2, 1, 4, "prod", "int"),
        (7, 1, 16, 1, 1, 3, "l2", "float"),  # 784 float64 values: more than CUDA's shared buffer
    ],
)
def test_search_dists_backward_matches_the_reference(compiled, ps, pt, C, nheads, dil, K, dist, itype):
    """The gradients of ``search_dists`` (to both videos and the float positions) against
    autograd through the reference's distances, at random positions: sub-pixel and whole,
    patches mirrored at every border, several queries sharing query and key pixels."""
    from napari_stnls.ops._reference.search import _batch_dists
    from napari_stnls.ops._reference.taps import channels_last

    backend, device = compiled
    gen = torch.Generator().manual_seed(ps * 1000 + C * 10 + K)
    B, T, H, W, Q = 2, 3, 9, 11, 13
    q, k = (torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64) for _ in range(2))
    coords = torch.stack([torch.randint(0, n, (Q,), generator=gen) for n in (T, H, W)], -1)
    t = torch.randint(0, T, (B, nheads, Q, K), generator=gen)
    if itype == "float":
        yx = torch.rand(B, nheads, Q, K, 2, generator=gen, dtype=torch.float64) * torch.tensor([H - 1, W - 1])
        yx[:, :, :3] = yx[:, :, :3].round()  # whole-pixel positions among the sub-pixel ones
        kpos = torch.cat([t.unsqueeze(-1).double(), yx], -1)
    else:
        kpos = torch.stack([t] + [torch.randint(0, n, t.shape, generator=gen) for n in (H, W)], -1).int()
    w = torch.randn(B, nheads, Q, K, generator=gen, dtype=torch.float64)
    fl = itype == "float"

    qc, kc = (v.permute(0, 1, 3, 4, 2).contiguous().to(device).requires_grad_() for v in (q, k))
    pc = kpos.to(device, copy=True).requires_grad_(fl)
    d = torch.ops.napari_stnls.search_dists(qc, kc, coords.to(device), pc, ps, pt, dil, dist == "l2")
    (d * w.to(device)).sum().backward()

    P = _window.Params((B, T, C, H, W), ps, 3, 1, K, dist, 1.0, dil, pt, nheads, False, itype)
    qr, kr, pr = q.clone().requires_grad_(), k.clone().requires_grad_(), kpos.clone().requires_grad_(fl)
    dr = _batch_dists(channels_last(qr, nheads), channels_last(kr, nheads), coords, pr, P)
    (dr * w).sum().backward()

    torch.testing.assert_close(d.cpu(), dr, rtol=1e-12, atol=1e-12)
    assert qr.grad.abs().sum() > 0 and kr.grad.abs().sum() > 0
    torch.testing.assert_close(qc.grad.cpu().permute(0, 1, 4, 2, 3), qr.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kc.grad.cpu().permute(0, 1, 4, 2, 3), kr.grad, rtol=1e-10, atol=1e-10)
    if fl:
        assert pr.grad[..., 1:].abs().sum() > 0
        torch.testing.assert_close(pc.grad.cpu(), pr.grad, rtol=1e-10, atol=1e-10)


@needs_ext
def test_search_dists_rejects_given_distances_of_another_search(compiled):
    """search_dists' ``given`` (the top-k's own distances) must be this search's
    (B, nheads, Q, k) distances in the accumulation dtype: anything else is a clear error,
    and the given tensor is left as it was."""
    backend, device = compiled
    q, k, coords, centres, frames, off, P = _inputs(device)
    found, ids = torch.ops.napari_stnls.search_topk(
        q, k, coords, centres, frames, off, P.ps, P.pt, P.dilation, P.nheads, P.k, True, False)
    kpos = torch.rand(ids.shape + (3,), dtype=torch.float64, device=device)
    args = (q, k, coords, kpos, P.ps, P.pt, P.dilation, True)
    got = torch.ops.napari_stnls.search_dists(*args, found)
    assert torch.equal(got, found) and got.data_ptr() != found.data_ptr()
    for bad, msg in ((found[..., :-1], "given: expected the"), (found.float(), "given: expected"),
                     (found.unsqueeze(0), "given: expected the")):
        before = bad.clone()
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.napari_stnls.search_dists(*args, bad)
        assert torch.equal(bad, before)


@needs_ext
def test_torch_compile_fullgraph(compiled):
    backend, device = compiled
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    v = torch.rand(1, 3, 2, 10, 10, generator=gen).to(device)
    f = tuple((0.5 * torch.randn(1, 3, 2, 10, 10, generator=gen)).to(device) for _ in range(2))

    def run(v, ff, bf):
        d, i = search(v, v, ps=3, ws=3, wt=1, k=4, flows=(ff, bf), backend=backend)
        return d.sum() + i.sum()

    eager = run(v, *f)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(v, *f)
    torch.testing.assert_close(compiled, eager)


def _patch_inputs(device, itype):
    gen = torch.Generator().manual_seed(2)
    B, T, H, W, nh, Q, K, ps, pt = 1, 3, 6, 7, 2, 3, 2, 3, 2
    video = torch.rand(B, T, H, W, 4, generator=gen, dtype=torch.float64).to(device)
    t = torch.randint(0, T, (B, nh, Q, K), generator=gen)
    if itype == "float":
        y = 0.1 + 0.8 * torch.rand(B, nh, Q, K, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 5.0])
        x = 0.1 + 0.8 * torch.rand(B, nh, Q, K, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 3.0])
        inds = torch.stack([t.double(), y, x], -1)
    else:
        inds = torch.stack([t, torch.randint(0, H, t.shape, generator=gen),
                            torch.randint(0, W, t.shape, generator=gen)], -1).to(getattr(torch, itype))
    patches = torch.rand(B, nh, Q, K, pt, 2, ps, ps, generator=gen, dtype=torch.float64).to(device)
    weights = torch.rand(B, nh, Q, K, generator=gen, dtype=torch.float64).to(device)
    return video, inds.to(device), patches, weights, (T, H, W, ps, pt, 1)


@needs_ext
@pytest.mark.parametrize("itype", ["float", "int32", "int64"])
def test_opcheck_gather_scatter(itype, compiled):
    backend, device = compiled
    video, inds, patches, weights, (T, H, W, ps, pt, dil) = _patch_inputs(device, itype)
    ops = torch.ops.napari_stnls
    fl = itype == "float"
    vg, ig = video.clone().requires_grad_(), inds.clone().requires_grad_(fl)
    pg, wg = patches.clone().requires_grad_(), weights.clone().requires_grad_()
    torch.library.opcheck(ops.gather_patches.default, (vg, ig, ps, pt, dil))
    torch.library.opcheck(ops.gather_patches_backward.default,
                          (patches, video, inds, ps, pt, dil, [True, fl]))
    for w in (wg, None):
        torch.library.opcheck(ops.scatter_patches.default, (pg, ig, w, T, H, W, ps, pt, dil))
    gv, gc = ops.scatter_patches(patches, inds, weights, T, H, W, ps, pt, dil)
    for args in ((gv, gc, weights), (gv, None, weights), (None, gc, None)):
        torch.library.opcheck(
            ops.scatter_patches_backward.default,
            (args[0], args[1], patches, inds, args[2], T, H, W, ps, pt, dil, [True, True, fl]),
        )
    at = inds.flip(3).contiguous()  # the fused aggregate (no autograd: inference)
    for w in (weights, None):
        torch.library.opcheck(ops.aggregate_patches.default, (video, inds, at, w, ps, pt, dil))
    # aggregate at the query grid: the Q = 3 queries of region (0, 1, 2, 3, 1, 7) at stride 2,
    # into the box they reach and into the whole video
    from napari_stnls.ops._region import Region
    from napari_stnls.ops.gather import _grid_box

    region = Region(0, 1, 2, 3, 1, 7)
    box = list(_grid_box((1, T, video.shape[4], H, W), region, 2, ps, pt, dil))
    for w, b in ((weights, box), (None, box), (weights, [0, T, 0, H, 0, W])):
        torch.library.opcheck(ops.aggregate_grid.default,
                              (video, inds, w, list(region), 2, b, ps, pt, dil))
    with pytest.raises(RuntimeError, match="box: .* must lie in the video and hold the pixels"):
        ops.aggregate_grid(video, inds, None, list(region), 2, [0, 1, 0, 1, 0, 1], ps, pt, dil)


@needs_ext
def test_opcheck_iunfold_ifold(compiled):
    backend, device = compiled
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(2, 3, 2, 7, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    region, stride, ps, pt, dil = [0, 2, 1, 6, 2, 8], 2, 3, 2, 2
    ops = torch.ops.napari_stnls
    torch.library.opcheck(ops.iunfold_patches.default, (v, region, stride, ps, pt, dil))
    p = ops.iunfold_patches(v.detach(), region, stride, ps, pt, dil).requires_grad_()
    torch.library.opcheck(ops.ifold_patches.default, (p, region, stride, 3, 7, 8, ps, pt, dil))


@needs_ext
def test_torch_compile_gather_scatter_fullgraph(compiled):
    backend, device = compiled
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    v = torch.rand(1, 3, 4, 10, 10, generator=gen).to(device)
    inds = torch.stack([torch.randint(0, 3, (1, 2, 6, 3), generator=gen).float(),
                        9 * torch.rand(1, 2, 6, 3, generator=gen),
                        9 * torch.rand(1, 2, 6, 3, generator=gen)], -1).to(device)
    w = torch.rand(1, 2, 6, 3, generator=gen).to(device)

    def run(v, inds, w):
        p = gather(v, inds, ps=3, pt=2, backend=backend)
        out, counts = scatter(p * 2, inds, shape=v.shape, weights=w, ps=3, pt=2, backend=backend)
        kw = dict(ps=3, stride=2, backend=backend)
        f = ifold(iunfold(out, **kw), shape=v.shape, **kw)
        return (f / (counts.sum(2, keepdim=True) + 1)).square().sum()

    args = [a.clone().requires_grad_() for a in (v, inds, w)]
    eager = run(*args)
    eager.backward()
    cargs = [a.clone().requires_grad_() for a in (v, inds, w)]
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(*cargs)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(cargs, args, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_fallback_when_the_compiled_module_is_missing():
    code = textwrap.dedent(
        """
        import importlib.abc, sys, warnings
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "napari_stnls._C":
                    raise ImportError("simulated: no compiled module")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import torch
            from napari_stnls.ops import backend_info, search
        msgs = [str(x.message) for x in w if "compiled kernels are not available" in str(x.message)]
        assert len(msgs) == 1, msgs
        info = backend_info()
        assert "aggregate" in info and "refine" in info and len(info) == 7, info
        assert all(v == {"cpu": "reference", "cuda": "reference"} for v in info.values())
        why = backend_info(reasons=True)["search"]["cpu"]["reason"]
        assert "compiled kernels failed to load" in why and "simulated" in why, why
        v = torch.rand(1, 2, 1, 6, 6)
        d, i = search(v, v, ps=3, ws=3, wt=1, k=2)
        from napari_stnls.ops import aggregate, gather, ifold, iunfold, refine, scatter
        refine(v, v, i, ps=3)
        p = gather(v, i, ps=3)
        scatter(p, i, shape=v.shape, ps=3)
        aggregate(v, i, ps=3)
        ifold(iunfold(v, ps=3), shape=v.shape, ps=3)
        v.requires_grad_()
        search(v, v, ps=3, ws=3, wt=1, k=2)[0].sum().backward()
        try:
            search(v, v, ps=3, ws=3, wt=1, k=2, backend="cpu")
        except ValueError as e:
            assert "compiled kernels failed to load" in str(e) and "simulated" in str(e), e
        else:
            raise AssertionError("backend='cpu' must fail without the build")
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


_ISA_CASES = textwrap.dedent(
    """
    import math, torch
    from napari_stnls.ops import search
    g = torch.Generator().manual_seed(4)
    out = []
    for dtype, kw in [
        (torch.float32, dict(ps=7, ws=9, wt=1, k=10)),  # integer spacing: the window path
        (torch.float32, dict(ps=3, ws=5, wt=2, k=5, dist="prod", nheads=2, pt=2)),
        (torch.float64, dict(ps=5, ws=7, wt=1, k=20, dilation=2, exclude_self=True)),
        (torch.float32, dict(ps=3, ws=5, wt=1, k=6, stride1=0.5)),  # fractional: per-candidate taps
        (torch.bfloat16, dict(ps=5, ws=5, wt=1, k=4)),
    ]:
        v = torch.rand(1, 4, 4, 23, 29, generator=g).to(dtype)
        f = tuple(1.9 * torch.sin(torch.rand(1, 4, 2, 23, 29, generator=g) * 6) for _ in range(2))
        out.append(search(v, v, flows=f, backend="cpu", **kw))
    """
)


def test_cpu_avx2_and_baseline_paths_give_the_same_bits(tmp_path):
    """The CPU search loop is compiled twice, for the baseline instruction set and for AVX2
    (picked at run time where the CPU has it; NAPARI_STNLS_CPU_AVX2=0 forces the baseline).
    Both must return the same distances and indices, bit for bit, on every path. (On a CPU
    without AVX2 both runs take the baseline and the test checks nothing more than that.)"""
    import os

    if not _library.has_kernel("search", "cpu"):
        pytest.fail(f"the compiled CPU kernels are not built: {_library.LOAD_ERROR}")
    res = {}
    if os.environ.get("NAPARI_STNLS_CPU_AVX2", "1") != "0":  # this process takes AVX2 where it can
        scope = {}
        exec(_ISA_CASES, scope)
        res["1"] = scope["out"]
    for flag in ("1", "0"):
        if flag in res:
            continue
        code = _ISA_CASES + f"torch.save(out, {str(tmp_path / flag)!r})\n"
        env = dict(os.environ, NAPARI_STNLS_CPU_AVX2=flag)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        res[flag] = torch.load(tmp_path / flag)
    for (d1, i1), (d0, i0) in zip(res["1"], res["0"], strict=True):
        assert torch.equal(d1, d0) and torch.equal(i1, i0)
        assert bool(torch.isfinite(d1).all())


_MESSAGE_CASES = textwrap.dedent(
    """
    import sys, torch
    import napari_stnls._C  # noqa: F401
    ops, dev = torch.ops.napari_stnls, sys.argv[1]
    video = torch.rand(1, 3, 6, 7, 4, dtype=torch.float64, device=dev)
    inds = torch.zeros(1, 2, 3, 2, 3, dtype=torch.int64, device=dev)
    region, whole = [0, 1, 2, 3, 1, 7], [0, 3, 0, 6, 0, 7]
    calls = {
        "ps: compiled kernels take 1 <= ps <= 32, got 99":
            lambda: ops.aggregate_grid(video, inds, None, region, 2, whole, 99, 1, 1),
        "got Q = 2": lambda: ops.aggregate_grid(video, inds[:, :, :2], None, region, 2, whole, 3, 1, 1),
        "[0, 1, 2, 3, 1, 70] is empty or not inside the video (T, H, W) = (3, 6, 7)":
            lambda: ops.aggregate_grid(video, inds, None, region[:5] + [70], 2, whole, 3, 1, 1),
        "nheads=2 must divide C=3": lambda: ops.gather_patches(video[..., :3].contiguous(), inds, 3, 1, 1),
    }
    for expected, call in calls.items():
        try:
            call()
        except RuntimeError as e:
            assert expected in str(e), (expected, str(e))
        else:
            raise AssertionError("no error for " + expected)
    print("ok")
    """
)


@needs_ext
def test_error_messages_with_numbers_raise_instead_of_crashing(compiled):
    """Formatting an integer into a kernel's error message must raise RuntimeError. With a
    static copy of the C++ runtime linked into the module beside torch's shared one, it
    crashed the interpreter (setup.py links the shared runtime; a subprocess keeps a crash
    from taking pytest down)."""
    backend, device = compiled
    r = subprocess.run([sys.executable, "-c", _MESSAGE_CASES, device.type], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout + r.stderr)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None,
                    reason="reads the module's shared libraries with ldd (Linux)")
@needs_ext
def test_module_links_the_shared_cxx_runtime():
    """The module must use the libstdc++ that torch loads, not a private static copy."""
    import napari_stnls._C as compiled

    r = subprocess.run(["ldd", compiled.__file__], capture_output=True, text=True)
    assert r.returncode == 0 and "libstdc++.so" in r.stdout, r.stdout + r.stderr


def test_backend_info_reports_the_build():
    info = backend_info()
    why = backend_info(reasons=True)
    assert set(info) == set(why) == {"search", "refine", "iunfold", "ifold", "gather", "scatter", "aggregate"}
    for op in info:
        for dev in ("cpu", "cuda"):
            built = _library.has_kernel(op, dev)
            assert info[op][dev] == (dev if built else "reference"), (op, dev)
            assert why[op][dev]["backend"] == info[op][dev]
            assert (why[op][dev]["reason"] is None) == built
    if not _library.has_kernel("search", "cuda"):
        assert why["aggregate"]["cuda"]["reason"] in (
            "this build has no cuda kernel for aggregate",
            f"the compiled kernels failed to load ({_library.LOAD_ERROR})",
        )


@needs_ext
def test_the_guard_gives_each_reason_and_raises_for_a_compiled_backend_that_cannot_run(monkeypatch):
    """One guard per call: the reference was asked for, no kernel for the device, or a case
    the kernels do not take; with an explicit compiled backend, each is a ValueError that says
    why. (The build failing to load is checked in a subprocess below.)"""
    reason, use = _library.reference_reason, _library.use_compiled
    assert use("search", None, "cpu") and use("aggregate", "cpu", torch.device("cpu"))
    assert reason("gather", "reference", "cpu") == "backend='reference' was asked for"
    assert reason("gather", None, "cpu", "ps too large") == "ps too large"
    assert reason("ifold", None, "mps") == "this build has no mps kernel for ifold"
    with pytest.raises(ValueError, match="backend: ps too large; use backend='reference'"):
        use("gather", "cpu", "cpu", "ps too large")
    with pytest.raises(ValueError, match="backend: 'cpu' cannot run search on tensors on meta"):
        use("search", "cpu", "meta")
    with pytest.raises(ValueError, match="backend: expected None or one of"):
        use("search", "gpu", "cpu")
    monkeypatch.setitem(_library._HAS_KERNEL, ("scatter", "cpu"), False)
    assert reason("scatter", None, "cpu") == "this build has no cpu kernel for scatter"
    with pytest.raises(ValueError, match="backend: 'cpu' is not available for scatter: this build has no"):
        use("scatter", "cpu", "cpu")
    assert backend_info(reasons=True)["scatter"]["cpu"] == {
        "backend": "reference", "reason": "this build has no cpu kernel for scatter"}
    v = torch.rand(1, 2, 2, 6, 6)
    i = torch.tensor([[[[[0, 2, 2]]]]])
    p = gather(v, i, ps=3)
    torch.testing.assert_close(scatter(p, i, shape=v.shape, ps=3), scatter(p, i, shape=v.shape, ps=3,
                                                                           backend="reference"))
    monkeypatch.setenv("NAPARI_STNLS_BACKEND", "cpu")
    assert backend_info()["search"] == {"cpu": "cpu", "cuda": "unavailable"}
    assert "cannot run search on tensors on cuda" in backend_info(reasons=True)["search"]["cuda"]["reason"]
    monkeypatch.setenv("NAPARI_STNLS_BACKEND", "reference")
    assert reason("search", None, "cpu") == "backend='reference' was asked for"


@needs_ext
def test_each_op_asks_the_guard_once(monkeypatch):
    """Every public op decides compiled or reference in one guard call, with its unsupported
    case: ps > 32 or pt > 8 (and k > 256 on CUDA for search)."""
    calls = []
    real = _library.reference_reason

    def spy(op, backend, device, unsupported=None):
        calls.append((op, unsupported))
        return real(op, backend, device, unsupported)

    monkeypatch.setattr(_library, "reference_reason", spy)
    from napari_stnls.ops import aggregate

    v = torch.rand(1, 3, 2, 9, 9)
    d, i = search(v, v, ps=3, ws=3, wt=1, k=2)
    p = gather(v, i, ps=3)
    scatter(p, i, shape=v.shape, ps=3)
    aggregate(v, i, ps=3)
    ifold(iunfold(v, ps=3), shape=v.shape, ps=3)
    gather(v, i, ps=33)
    assert [op for op, _ in calls] == ["search", "gather", "scatter", "aggregate", "iunfold", "ifold",
                                       "gather"]
    assert all(u is None for _, u in calls[:-1])
    assert calls[-1][1] == "the compiled gather takes ps <= 32 and pt <= 8 (got ps=33, pt=1)"


def _search_gather_scatter_grads(device):
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(1, 3, 3, 24, 28, generator=gen).to(device).requires_grad_()
    f = tuple(
        (0.7 * torch.randn(1, 3, 2, 24, 28, generator=gen)).to(device).requires_grad_() for _ in range(2)
    )
    d, i = search(v, v, ps=5, ws=5, wt=1, k=6, flows=f)
    from napari_stnls.ops import gather, scatter

    p = gather(v, i, ps=5)
    agg, cnt = scatter(p, i, shape=v.shape, ps=5, weights=torch.softmax(-d, -1))
    (d.sum() + (agg / cnt.clamp_min(1e-6)).sum()).backward()
    return [v.grad.clone(), f[0].grad.clone(), f[1].grad.clone()], agg.detach()


def test_deterministic_mode_gives_bit_identical_results(device):
    """Under torch.use_deterministic_algorithms(True), gradients (and scatter) repeat bit for
    bit (on CUDA the kernels that add with atomics then run on the CPU kernels)."""
    torch.use_deterministic_algorithms(True)
    try:
        g1, a1 = _search_gather_scatter_grads(device)
        g2, a2 = _search_gather_scatter_grads(device)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a1, a2)
    for x, y in zip(g1, g2, strict=True):
        assert torch.equal(x, y)


@needs_ext
@pytest.mark.parametrize(("batch_size", "itype"), [(None, "float"), (200, "float"), (None, "int")])
def test_deterministic_flow_glue_gives_the_same_gradients(monkeypatch, batch_size, itype):
    """Deterministic mode on CUDA runs the flow glue (centres, then positions) on the CPU, each
    step as one autograd node (_determinism._OnCpu). Forced here on the CPU, in one chunk and in
    several: the same dists, inds and gradients as the glue as ordinary autograd nodes."""
    gen = torch.Generator().manual_seed(7)
    v0 = torch.rand(1, 3, 3, 20, 22, generator=gen, dtype=torch.float64)
    f0 = [0.8 * torch.randn(1, 3, 2, 20, 22, generator=gen, dtype=torch.float64) for _ in range(2)]

    def run():
        v = v0.clone().requires_grad_()
        f = [x.clone().requires_grad_() for x in f0]
        d, i = search(v, v, ps=3, ws=5, wt=1, k=5, flows=f, backend="cpu", batch_size=batch_size,
                      itype=itype)
        agg, cnt = scatter(gather(v, i, ps=3), i, shape=v.shape, ps=3, weights=torch.softmax(-d, -1))
        (d.sum() + (agg / cnt.clamp_min(1e-6)).sum()).backward()
        return i, [d.detach(), i.detach(), v.grad, f[0].grad, f[1].grad]

    i_ref, ref = run()
    nodes = []

    def as_one_node(fn, *args):  # what on_cpu does with CUDA tensors, here on the CPU
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            nodes.append(1)
            out = _determinism._OnCpu.apply(fn, torch.device("cpu"), *args)
            return out[0] if len(out) == 1 else out
        return fn(*args)

    monkeypatch.setattr(_determinism, "on_cpu", as_one_node)
    monkeypatch.setattr(_determinism, "rerouted", lambda op, args: True)
    i_det, got = run()
    # centres and positions in each chunk (with itype="int" a kernel writes the positions: no
    # glue), then the scatter
    per_chunk = 2 if itype == "float" else 1
    n_chunks = 1 if batch_size is None else (len(nodes) - 1) // per_chunk
    assert len(nodes) == per_chunk * n_chunks + 1 and (batch_size is None or n_chunks > 1)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if itype == "float":
        assert got[3].abs().sum() > 0 and got[4].abs().sum() > 0
    else:  # whole-pixel positions do not depend on the flows' values
        assert got[3] is None and ref[3] is None


def test_on_cpu_node_gives_the_gradients_of_fn():
    """_determinism._OnCpu (on_cpu's one-node form): values and gradients of fn, gradients only to the
    arguments that need them, None for unused outputs, and a graph that may be run twice."""
    gen = torch.Generator().manual_seed(2)
    x0, y0 = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen,
                                                                                 dtype=torch.float64)

    def fn(x, y, scale):
        return (x * y).sin() * scale, x.sum(1), torch.arange(3)

    x, y = x0.clone().requires_grad_(), y0.clone()
    a, b, n = _determinism._OnCpu.apply(fn, torch.device("cpu"), x, y, 2.0)
    assert not n.requires_grad and torch.equal(n, torch.arange(3))
    (a.square().sum() + b[0]).backward(retain_graph=True)
    xr = x0.clone().requires_grad_()
    ar, br, _ = fn(xr, y0, 2.0)
    (ar.square().sum() + br[0]).backward()
    torch.testing.assert_close(a, ar.detach(), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-15, atol=1e-15)
    g = x.grad.clone()
    a.sum().backward()  # only the first output this time; the graph was kept
    torch.testing.assert_close(x.grad - g, (torch.cos(x0 * y0) * y0 * 2.0).detach())
    assert y.grad is None
    node = _determinism._OnCpu.apply
    assert torch.autograd.gradcheck(lambda t: node(fn, torch.device("cpu"), t, y0, 1.5)[:2],
                                    (x0.clone().requires_grad_(),))


def test_deterministic_aggregate_repeats_and_equals_the_cpu(device):
    """Under torch.use_deterministic_algorithms(True), aggregate (atomic adds on CUDA) runs
    the CPU kernel: bit-identical run to run and to the CPU's result."""
    from napari_stnls.ops import aggregate

    gen = torch.Generator().manual_seed(5)
    v = torch.rand(1, 3, 2, 16, 18, generator=gen)
    inds = torch.stack([torch.randint(0, 3, (1, 1, 40, 5), generator=gen).float(),
                        torch.rand(1, 1, 40, 5, generator=gen) * 15,
                        torch.rand(1, 1, 40, 5, generator=gen) * 17], -1)
    at = inds[:, :, torch.randperm(40, generator=gen)]
    w = torch.rand(1, 1, 40, 5, generator=gen)
    expect = aggregate(v, inds, at, weights=w, ps=5)
    torch.use_deterministic_algorithms(True)
    try:
        runs = [aggregate(v.to(device), inds.to(device), at.to(device), weights=w.to(device), ps=5)
                for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    for out, counts in runs:
        assert out.device == v.to(device).device
        assert torch.equal(out.cpu(), expect[0]) and torch.equal(counts.cpu(), expect[1])


def test_deterministic_fallback_is_for_cuda_tensors_only(device):
    x = torch.zeros(2, device=device)
    assert not _determinism.rerouted("scatter_patches", (x,))  # not requested
    torch.use_deterministic_algorithms(True)
    try:
        assert _determinism.rerouted("scatter_patches", (x, 3)) == (device.type == "cuda")
        assert not _determinism.rerouted("gather_patches", (x,))  # no atomics
        assert not _determinism.rerouted("aggregate_grid", (x,))  # fold form: no atomics
        if device.type == "cuda":
            y = _determinism.on_cpu(lambda a, s: (a + s, a.device.type), x, 1.0)
            assert y[0].device == x.device and y[1] == "cpu" and bool((y[0] == 1).all())
            z = _determinism.call("search_centres", x, fn=lambda a: a + float(a.device.type == "cpu"))
            assert z.device == x.device and bool((z == 1).all())
    finally:
        torch.use_deterministic_algorithms(False)


@needs_ext
def test_the_rerouted_operators_exist():
    """Every compiled name in the deterministic reroute is an operator of this build."""
    glue = {"search_centres", "search_positions", "refine_positions"}
    for op in _determinism.ATOMIC_ON_CUDA - glue:
        assert hasattr(torch.ops.napari_stnls, op), op
        assert any(op in ops for ops in _library.OPERATORS.values()), op


@needs_ext
def test_torch_compile_search_gather_scatter_fullgraph(compiled):
    """The whole non-local aggregation (search -> gather -> weighted scatter) traces as one
    graph, forward and backward, and matches eager mode."""
    backend, device = compiled
    from napari_stnls.ops import gather, scatter

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    v0 = torch.rand(1, 3, 3, 12, 14, generator=gen).to(device)
    f0 = tuple((0.5 * torch.randn(1, 3, 2, 12, 14, generator=gen)).to(device) for _ in range(2))

    def nl(v, ff, bf):
        d, i = search(v, v, ps=3, ws=3, wt=1, k=4, flows=(ff, bf), backend=backend)
        p = gather(v, i, ps=3, backend=backend)
        agg, cnt = scatter(p, i, shape=v.shape, ps=3, weights=torch.softmax(-d, -1), backend=backend)
        return agg / cnt.clamp_min(1e-6)

    results = []
    for fn in (nl, torch.compile(nl, fullgraph=True, backend="aot_eager")):
        v = v0.clone().requires_grad_()
        f = tuple(x.clone().requires_grad_() for x in f0)
        out = fn(v, *f)
        out.square().sum().backward()
        results.append((out.detach(), v.grad, f[0].grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_glue_kernels_switch(monkeypatch):
    """The glue kernels are the default on the CPU and CUDA; NAPARI_STNLS_TORCH_GLUE overrides."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("NAPARI_STNLS_TORCH_GLUE", raising=False)
    assert not _window.torch_glue(cpu) and not _window.torch_glue(cuda)
    monkeypatch.setenv("NAPARI_STNLS_TORCH_GLUE", "1")
    assert _window.torch_glue(cpu) and _window.torch_glue(cuda)
    monkeypatch.setenv("NAPARI_STNLS_TORCH_GLUE", "0")
    assert not _window.torch_glue(cpu) and not _window.torch_glue(cuda)
