"""refine: values against the loop oracle, repeated positions, ties, gradients, batching, a real
image, the compiled operator (opcheck, torch.compile), bad input."""

from __future__ import annotations

import functools

import numpy as np
import oracle
import pytest
import torch
from conftest import assert_knn_match

from napari_stnls.ops import _library, query_coords, refine, search

needs_ext = pytest.mark.skipif(_library.LOAD_ERROR is not None, reason=f"not built: {_library.LOAD_ERROR}")


def _positions(gen, B, nh, Q, K, T, H, W, itype, dtype=torch.float64):
    """Random positions (B, nh, Q, K, 3) inside the video: whole pixels, or multiples of 1/4
    (so that windows of different positions meet on the same sub-pixel positions, and float32
    holds them exactly), with a position repeated and some on the frame's border."""
    t = torch.randint(0, T, (B, nh, Q, K), generator=gen).to(dtype)
    if itype == "int":
        y = torch.randint(0, H, (B, nh, Q, K), generator=gen).to(dtype)
        x = torch.randint(0, W, (B, nh, Q, K), generator=gen).to(dtype)
    else:
        y = torch.randint(0, 4 * (H - 1) + 1, (B, nh, Q, K), generator=gen).to(dtype) / 4
        x = torch.randint(0, 4 * (W - 1) + 1, (B, nh, Q, K), generator=gen).to(dtype) / 4
    p = torch.stack([t, y, x], -1)
    if K > 1:
        p[..., 1, :] = torch.where(torch.rand(B, nh, Q, 1, generator=gen) < 0.3, p[..., 0, :], p[..., 1, :])
    return p


def _random_case(seed):
    """A small random configuration spanning every option of refine."""
    r = np.random.default_rng(seed)
    B = int(r.integers(1, 3))
    T = int(r.integers(1, 4))
    nheads = int(r.choice([1, 2]))
    C = nheads * int(r.integers(1, 3))
    H, W = int(r.integers(5, 9)), int(r.integers(5, 9))
    itype = str(r.choice(["float", "int"]))
    wr = int(r.choice([1, 3, 5]))
    K_in = int(r.integers(1, 4))
    exclude_self = bool(r.integers(0, 2)) and K_in * wr * wr > 1
    k = int(r.integers(1, min(7, K_in * wr * wr - int(exclude_self)) + 1))
    stride0 = int(r.integers(1, 4))
    t0 = int(r.integers(0, T))
    y0, x0 = int(r.integers(0, H - 2)), int(r.integers(0, W - 2))
    region = (t0, int(r.integers(t0 + 1, T + 1)), y0, int(r.integers(y0 + 1, H + 1)), x0,
              int(r.integers(x0 + 1, W + 1)))
    if r.integers(0, 3) == 0:
        region = None
    kw = dict(ps=int(r.choice([1, 2, 3])), wr=wr, k=k, dist=str(r.choice(["l2", "prod"])),
              pt=int(r.integers(1, 3)), dilation=int(r.integers(1, 3)), nheads=nheads, stride0=stride0,
              region=region, itype=itype, exclude_self=exclude_self)
    in_heads = nheads if r.integers(0, 3) else 1  # one head's positions for every head
    inds_itype = itype if r.integers(0, 2) else "float"
    return (B, T, C, H, W), K_in, in_heads, inds_itype, kw


@functools.cache
def _oracle_case(seed):
    """Random case ``seed``: videos, given positions, refine's arguments and the oracle's answer
    with a rank more where there is one (computed once for every backend)."""
    shape, K_in, in_heads, inds_itype, kw = _random_case(seed)
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(shape, generator=gen, dtype=torch.float64)
    k = torch.rand(shape, generator=gen, dtype=torch.float64)
    Q = query_coords(shape, kw["region"], kw["stride0"]).shape[0]
    inds = _positions(gen, B, in_heads, Q, K_in, T, H, W, inds_itype)
    more = min(kw["k"] + 1, K_in * kw["wr"] ** 2 - int(kw["exclude_self"]))
    return q, k, inds, kw, oracle.refine(q.numpy(), k.numpy(), inds.numpy(), **dict(kw, k=more))


def _check(d, i, rd, ri, **tol):
    """``(d, i)`` hold the oracle's answer: tie-aware where the oracle's distances are finite,
    exactly (the worst distance, candidate 0's position) past a query's distinct candidates."""
    k = d.shape[-1]
    d, i = d.detach().cpu().double().numpy(), i.detach().cpu().double().numpy()
    tail = np.isinf(rd[..., :k])
    np.testing.assert_array_equal(d[tail], rd[..., :k][tail])
    np.testing.assert_array_equal(i[tail], ri[..., :k, :][tail])
    live = ~np.isinf(rd).any(-1)  # queries with a full list (one rank more, where there is one)
    if live.any():
        assert_knn_match(torch.from_numpy(d[live]), torch.from_numpy(i[live]), rd[live], ri[live], **tol)


@pytest.mark.parametrize("seed", range(30))
def test_refine_matches_oracle(seed, impl):
    backend, device = impl
    q, k, inds, kw, (rd, ri) = _oracle_case(seed)
    d, i = refine(q.to(device), k.to(device), inds.to(device), backend=backend, **kw)
    assert d.shape == rd.shape[:3] + (kw["k"],) and i.shape == d.shape + (3,)
    assert i.dtype == (torch.int32 if kw["itype"] == "int" else torch.float64)
    _check(d, i, rd, ri)
    step = d[..., 1:] - d[..., :-1]  # returned distances are exactly sorted, best first
    assert bool((step[~step.isnan()] >= 0).all() if kw["dist"] == "l2" else (step[~step.isnan()] <= 0).all())


@pytest.mark.parametrize("dist", ["l2", "prod"])
def test_refine_float32_matches_oracle(dist, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(1)
    v = torch.rand(1, 3, 3, 9, 10, generator=gen)
    inds = _positions(gen, 1, 1, 90, 3, 3, 9, 10, "float", torch.float32)
    kw = dict(ps=3, wr=3, k=6, dist=dist, region=(1, 2, 0, 9, 0, 10))
    rd, ri = oracle.refine(v.double().numpy(), v.double().numpy(), inds.double().numpy(), **dict(kw, k=7))
    d, i = refine(v.to(device), v.to(device), inds.to(device), backend=backend, **kw)
    assert d.dtype == torch.float32 and i.dtype == torch.float32
    _check(d, i, rd, ri, rtol=1e-5, atol=1e-5)


def test_ties_are_ordered_by_position_and_repeats_count_once(impl):
    """On a constant video every candidate ties: the order is (t, y, x) ascending, over the
    union of overlapping windows (each position once)."""
    backend, device = impl
    v = torch.full((1, 2, 1, 8, 8), 0.5, dtype=torch.float64)
    # windows around (1, 2.5, 3.5) and (1, 3.5, 4.5) share four positions; (0, 0, 0) moves to (0, 1, 1)
    inds = torch.tensor([[1, 2.5, 3.5], [1, 3.5, 4.5], [0, 0, 0]], dtype=torch.float64)
    inds = inds.expand(1, 1, 128, 3, 3)
    d, i = refine(v.to(device), v.to(device), inds.to(device), ps=3, wr=3, k=23, backend=backend)
    rd, ri = oracle.refine(v.numpy(), v.numpy(), inds.numpy(), ps=3, wr=3, k=23)
    assert torch.equal(i.cpu(), torch.from_numpy(ri)) and torch.equal(d.cpu(), torch.from_numpy(rd))
    got = [tuple(p) for p in i[0, 0, 0].tolist()]
    assert got == sorted(got) and len(set(got)) == 23  # 3 * 9 candidates, 4 of them repeats
    assert got[:9] == [(0.0, y, x) for y in (0.0, 1.0, 2.0) for x in (0.0, 1.0, 2.0)]


def test_wr1_returns_the_given_positions_with_their_distances(impl):
    """wr=1 recomputes the distances at the given positions: refining a search's own output
    gives it back (same positions, same order, same distances)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(2)
    v = torch.rand(1, 3, 2, 11, 12, generator=gen, dtype=torch.float64).to(device)
    kw = dict(ps=3, stride0=2, region=(0, 3, 1, 10, 2, 12))
    d0, i0 = search(v, v, ws=5, wt=1, k=5, backend=backend, **kw)
    d, i = refine(v, v, i0, wr=1, backend=backend, **kw)
    assert torch.equal(i, i0)
    torch.testing.assert_close(d, d0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("itype", ["float", "int"])
def test_refine_around_the_queries_is_a_search_in_their_frame(itype, impl):
    """A window of side ws around each query's own position holds search's candidates with
    wt=0 and no flow (both move the window inside the frame the same way): the same answer,
    for the oracles and for the ops."""
    backend, device = impl
    gen = torch.Generator().manual_seed(15)
    v = torch.rand(1, 2, 2, 7, 8, generator=gen, dtype=torch.float64)
    kw = dict(ps=3, k=6, dist="prod", stride0=2, itype=itype, exclude_self=True)
    coords = query_coords(v.shape, None, 2).view(1, 1, -1, 1, 3)
    sd, si = oracle.search(v.numpy(), v.numpy(), ws=5, wt=0, **kw)
    rd, ri = oracle.refine(v.numpy(), v.numpy(), coords.numpy(), wr=5, **kw)
    np.testing.assert_array_equal(ri, si)
    np.testing.assert_allclose(rd, sd, rtol=1e-12)
    d, i = refine(v.to(device), v.to(device), coords.to(device), wr=5, backend=backend, **kw)
    d0, i0 = search(v.to(device), v.to(device), ws=5, wt=0, backend=backend, **kw)
    assert torch.equal(i, i0)
    torch.testing.assert_close(d, d0, rtol=1e-12, atol=1e-12)


def test_refine_never_loses_a_given_whole_pixel_position(impl):
    """Whole-pixel positions stay among the candidates (the window holds its centre, moved in
    by at most wr//2), so the best distance never gets worse, and a larger window finds
    better matches than the first stage's."""
    backend, device = impl
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(1, 3, 1, 12, 12, generator=gen, dtype=torch.float64).to(device)
    d0, i0 = search(v, v, ps=3, ws=3, wt=1, k=4, exclude_self=True, backend=backend)
    d, i = refine(v, v, i0, ps=3, wr=5, exclude_self=True, backend=backend)
    assert bool((d <= d0 + 1e-12).all()) and bool((d < d0 - 1e-9).any())


def test_fewer_distinct_candidates_than_k_get_the_worst_distance_and_no_gradient(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(4)
    v = torch.rand(1, 2, 1, 7, 7, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    inds = torch.tensor([1.0, 2.25, 3.5], dtype=torch.float64).expand(1, 1, 98, 3, 3).to(device)
    inds = inds.clone().requires_grad_()
    for dist, worst in (("l2", float("inf")), ("prod", float("-inf"))):
        d, i = refine(v, v, inds, ps=3, wr=1, dist=dist, backend=backend)
        assert bool(torch.isfinite(d[..., 0]).all()) and bool((d[..., 1:] == worst).all())
        assert torch.equal(i, inds.detach()[..., :1, :].expand_as(i))
        w = torch.softmax(-d if dist == "l2" else d, -1)
        gv, gi = torch.autograd.grad((w[..., 0] * d[..., 0]).sum() + d[..., 0].sum(), [v, inds])
        assert bool(torch.isfinite(gv).all()) and bool(torch.isfinite(gi).all()) and gv.abs().sum() > 0


@pytest.mark.parametrize("itype", ["float", "int"])
def test_batching_gives_identical_results_and_gradients(itype, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(5)
    q = torch.rand(1, 3, 2, 10, 9, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    k = torch.rand(1, 3, 2, 10, 9, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    kw = dict(ps=3, wr=3, k=5, itype=itype, region=(0, 3, 1, 9, 2, 8), stride0=2, nheads=2)
    inds = _positions(gen, 1, 2, 36, 3, 3, 10, 9, "float")
    inds[..., 1:] = (inds[..., 1:] + 0.1).clamp(max=8)
    inds = inds.to(device).requires_grad_()
    outs = []
    for bs in (None, 1, 7, 1000):
        d, i = refine(q, k, inds, batch_size=bs, backend=backend, **kw)
        loss = (d * torch.linspace(0, 1, d.shape[-1], dtype=d.dtype, device=device)).sum()
        grads = torch.autograd.grad(loss, [q, k, inds], allow_unused=True)
        outs.append((d, i, grads))
    gi = outs[0][2][2]  # whole-pixel windows: the positions are rounded, with no gradient
    assert bool((gi == 0).all()) if itype == "int" else bool(gi.abs().sum() > 0)
    for d, i, grads in outs[1:]:
        assert torch.equal(d, outs[0][0]) and torch.equal(i, outs[0][1])
        for g, g0 in zip(grads, outs[0][2], strict=True):
            assert (g is None) == (g0 is None)
            if g is not None:
                torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-12)


def test_one_head_of_positions_serves_every_head(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(6)
    v = torch.rand(2, 2, 4, 8, 8, generator=gen, dtype=torch.float64).to(device)
    inds = _positions(gen, 2, 1, 128, 2, 2, 8, 8, "float").to(device)
    a = refine(v, v, inds, ps=3, nheads=2, k=4, backend=backend)
    b = refine(v, v, inds.expand(2, 2, 128, 2, 3), ps=3, nheads=2, k=4, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _gradcheck_refine(dist, nheads, backend, device):
    """gradcheck of dists and positions w.r.t. both videos and the given positions (away from
    whole pixels and the frame's border, where bilinear reading and the clamp have kinks)."""
    gen = torch.Generator().manual_seed(7)
    B, T, C, H, W = 1, 2, 2, 8, 8
    q = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    k = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    region = (0, 2, 3, 5, 3, 5)
    t = torch.randint(0, T, (B, nheads, 8, 2), generator=gen).double()
    yx = 2 + torch.randint(0, 3, (B, nheads, 8, 2, 2), generator=gen) + 0.2 + 0.6 * torch.rand(
        B, nheads, 8, 2, 2, generator=gen, dtype=torch.float64)
    t, yx = t[..., None].to(device), yx.to(device).requires_grad_()
    kw = dict(ps=3, wr=3, k=4, dist=dist, nheads=nheads, region=region, pt=2, backend=backend)

    def fn(q, k, yx):  # the frames stay whole (a fractional t is an error)
        d, i = refine(q, k, torch.cat([t, yx], -1), **kw)
        return d, i[..., 1:]

    nondet = 1e-12 if torch.device(device).type == "cuda" else 0.0
    return torch.autograd.gradcheck(fn, (q, k, yx), eps=1e-6, atol=1e-6, fast_mode=True, nondet_tol=nondet)


@pytest.mark.parametrize(("dist", "nheads"), [("l2", 1), ("prod", 2)])
def test_gradcheck_videos_and_positions(dist, nheads, impl):
    backend, device = impl
    assert _gradcheck_refine(dist, nheads, backend, device)


def test_backends_agree_with_gradients(impl_held_to_reference):
    """Values and gradients of every backend match the float64 reference on the CPU."""
    backend, device = impl_held_to_reference
    gen = torch.Generator().manual_seed(8)
    v = torch.rand(1, 3, 3, 16, 18, generator=gen, dtype=torch.float64)
    d0, i0 = search(v, v, ps=3, ws=3, wt=1, k=6, stride0=2, backend="reference")
    i0 = (i0 + 0.3 * torch.rand(i0.shape, generator=gen, dtype=torch.float64)).clamp(max=15)
    i0[..., 0] = i0[..., 0].round()
    out = []
    for be, dev in ((backend, device), ("reference", torch.device("cpu"))):
        vv, ii = v.to(dev).requires_grad_(), i0.to(dev).requires_grad_()
        d, i = refine(vv, vv, ii, ps=5, wr=3, k=8, stride0=2, backend=be)
        gv, gi = torch.autograd.grad((d * torch.linspace(0, 1, 8, dtype=d.dtype, device=dev)).sum(), [vv, ii])
        out.append([t.detach().cpu() for t in (d, i, gv, gi)])
    (d, i, gv, gi), (rd, ri, rgv, rgi) = out
    assert_knn_match(d, i, rd.numpy(), ri.numpy())
    torch.testing.assert_close(gv, rgv, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gi, rgi, rtol=1e-9, atol=1e-9)


def test_non_contiguous_and_half_inputs(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(9)
    v = torch.rand(1, 2, 8, 9, 3, generator=gen).permute(0, 1, 4, 2, 3).to(device)  # non-contiguous
    inds = _positions(gen, 1, 1, 144, 2, 2, 8, 9, "float", torch.float32).to(device)
    d32, i32 = refine(v, v, inds, ps=3, backend=backend)
    d16, i16 = refine(v.half(), v.half(), inds, ps=3, backend=backend)
    assert d16.dtype == torch.float32 and i16.dtype == torch.float32
    ref = refine(v.contiguous().double(), v.contiguous().double(), inds, ps=3, backend="reference")
    torch.testing.assert_close(d32.double(), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d16, d32, rtol=2e-2, atol=2e-2)


def test_refine_finds_a_known_shift_on_a_real_image(impl):
    """A real image moved by (3, 5) pixels between two frames: a first guess 1 to 2 pixels
    off (a window of 5 around it holds the true match) is refined to the exact shift, with
    distance 0, and the result holds the oracle's answer."""
    skimage_data = pytest.importorskip("skimage.data")
    backend, device = impl
    img = torch.from_numpy(skimage_data.camera()[100:140, 200:240].astype(np.float64) / 255)
    v = torch.stack([img[3:27, 5:29], img[:24, :24]])[None, :, None]  # frame 1 = frame 0 moved by (3, 5)
    region, s0 = (0, 1, 4, 20, 4, 20), 4
    coords = query_coords(v.shape, region, s0).double()
    rng = torch.Generator().manual_seed(10)
    off = torch.randint(-2, 3, coords.shape, generator=rng) * torch.tensor([0.0, 1.0, 1.0])
    guess = coords + torch.tensor([1.0, 3.0, 5.0]) + off
    inds = guess[None, None, :, None]
    d, i = refine(v.to(device), v.to(device), inds.to(device), ps=5, wr=5, k=3, region=region, stride0=s0,
                  backend=backend)
    torch.testing.assert_close(i[0, 0, :, 0].cpu(), coords + torch.tensor([1.0, 3.0, 5.0]))
    assert bool((d[..., 0].abs() < 1e-12).all())
    rd, ri = oracle.refine(v.numpy(), v.numpy(), inds.numpy(), ps=5, wr=5, k=4, region=region, stride0=s0)
    _check(d, i, rd, ri)


@needs_ext
def test_opcheck(compiled):
    backend, device = compiled
    gen = torch.Generator().manual_seed(11)
    q = torch.rand(1, 2, 7, 8, 4, generator=gen, dtype=torch.float64).to(device)
    k = torch.rand(1, 2, 7, 8, 4, generator=gen, dtype=torch.float64).to(device)
    coords = torch.tensor([[0, 2, 3], [1, 4, 4], [1, 6, 7]], device=device)
    centres = torch.tensor([[0, 1.5, 2.25], [1, 3.0, 4.0]], dtype=torch.float64).expand(1, 2, 3, 2, 3)
    args = (q, k, coords, centres.contiguous().to(device), 3, 3, 2, 1, 5, True, False)
    torch.library.opcheck(torch.ops.napari_stnls.refine_topk.default, args)
    torch.library.opcheck(torch.ops.napari_stnls.refine_topk.default, args[:-2] + (False, True))


@needs_ext
def test_torch_compile_fullgraph(compiled):
    backend, device = compiled
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(12)
    v = torch.rand(1, 3, 2, 10, 10, generator=gen).to(device)
    inds = _positions(gen, 1, 1, 300, 3, 3, 10, 10, "float", torch.float32).to(device)

    def run(v, inds):
        d, i = refine(v, v, inds, ps=3, wr=3, k=5, backend=backend)
        return d.sum() + i.sum()

    eager = run(v, inds)
    compiled_run = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_run(v, inds), eager)


@needs_ext
def test_torch_compile_dynamic_does_not_recompile_for_another_video_size(compiled):
    """One graph for every video size (the sizes differ from each other and from every other
    size of the inputs, so that Dynamo ties none of them to another)."""
    import torch._dynamo.testing

    backend, device = compiled
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def run(v, inds):
        return refine(v, v, inds, ps=3, wr=5, k=4, stride0=2, backend=backend)

    fn = torch.compile(run, fullgraph=True, dynamic=True, backend=counter)
    gen = torch.Generator().manual_seed(14)
    for T, H, W in [(6, 9, 11), (7, 13, 10)]:
        v = torch.rand(1, T, 2, H, W, generator=gen).to(device)
        Q = query_coords(v.shape, None, 2).shape[0]
        inds = _positions(gen, 1, 1, Q, 2, T, H, W, "float", torch.float32).to(device)
        got, want = fn(v, inds), run(v, inds)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0])
    assert counter.frame_count == 1


def test_backend_info_lists_refine():
    assert set(_library.backend_info()["refine"]) == {"cpu", "cuda"}
    assert _library.OPERATORS["refine"][0] == "refine_topk"


_V = torch.zeros(1, 2, 2, 6, 7)
_I = torch.zeros(1, 1, 84, 2, 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((_V, _V, _I), dict(wr=2), ValueError, "wr: expected an odd window side"),
        ((_V, _V, _I), dict(wr=0), ValueError, "wr: expected an int >= 1"),
        ((_V, _V, _I), dict(wr=7), ValueError, "wr: the window"),
        ((_V, _V, _I), dict(wr=1.0), TypeError, "wr: expected an int"),
        ((_V, _V, _I[0]), {}, ValueError, r"inds: expected shape \(B, nheads, Q, K_in, 3\)"),
        ((_V, _V, _I[..., :2]), {}, ValueError, r"inds: expected shape \(B, nheads, Q, K_in, 3\)"),
        ((_V, _V, _I[:, :, :80]), {}, ValueError, "inds: expected the Q=84 queries"),
        ((_V, _V, _I), dict(stride0=2), ValueError, "inds: expected the Q=24 queries"),
        ((_V, _V, _I.expand(1, 3, 84, 2, 3)), dict(nheads=2), ValueError, "inds: expected 1 or nheads=2"),
        ((_V, _V, _I.expand(2, 1, 84, 2, 3)), {}, ValueError, "inds: batch size 2"),
        ((_V, _V, _I[..., :0, :]), {}, ValueError, "inds: expected at least one position"),
        ((_V, _V, _I + torch.tensor([0, 0, 6.5])), {}, ValueError, "inds: position .* lies outside the"),
        ((_V, _V, _I + torch.tensor([2, 0, 0])), {}, ValueError, "inds: position .* lies outside the"),
        ((_V, _V, _I + torch.tensor([0.5, 0, 0])), {}, ValueError, "inds: the t column must hold integer"),
        ((_V, _V, _I.bool()), {}, TypeError, "inds: expected an integer or floating tensor"),
        ((_V, _V, [[0, 0, 0]]), {}, TypeError, "inds: expected a torch.Tensor"),
        ((_V, _V, _I), dict(k=19), ValueError, r"k: expected at most the 18 candidates"),
        ((_V, _V, _I), dict(k=18, exclude_self=True), ValueError, r"k: expected at most the 17 candidates"),
        ((_V, _V, _I), dict(wr=1, k=3), ValueError, r"k: expected at most the 2 candidates"),
        ((_V, _V, _I), dict(k=0), ValueError, "k: expected an int >= 1"),
        ((_V, _V, _I), dict(exclude_self=1), TypeError, "exclude_self: expected a bool"),
        ((_V, _V, _I), dict(itype="long"), ValueError, "itype: expected one of"),
        ((_V, _V, _I), dict(dist="l1"), ValueError, "dist: expected one of"),
        ((_V, _V[:, :1], _I), {}, ValueError, "keys: expected the same shape"),
        ((_V, _V, _I), dict(nheads=3), ValueError, "nheads: must divide"),
        ((_V, _V, _I), dict(backend="gpu"), ValueError, "backend: expected None or one of"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        refine(*args, **kwargs)


def test_deterministic_mode_repeats_values_and_gradients(device):
    """Under torch.use_deterministic_algorithms(True) refine's results and gradients repeat bit
    for bit (on CUDA its atomic backward steps run on the CPU)."""
    gen = torch.Generator().manual_seed(13)
    v = torch.rand(1, 3, 2, 12, 12, generator=gen).to(device)
    inds = _positions(gen, 1, 1, 432, 4, 3, 12, 12, "float", torch.float32).to(device)
    inds[..., 1:] = (inds[..., 1:] + 0.3).clamp(max=11)

    def run():
        vv, ii = v.clone().requires_grad_(), inds.clone().requires_grad_()
        d, i = refine(vv, vv, ii, ps=3, wr=3, k=6)
        (d * torch.linspace(0, 1, 6, device=device)).sum().backward()
        return [d, i, vv.grad, ii.grad]

    torch.use_deterministic_algorithms(True)
    try:
        first = run()
        for _ in range(2):
            assert all(torch.equal(a, b) for a, b in zip(run(), first, strict=True))
    finally:
        torch.use_deterministic_algorithms(False)
    assert bool(first[3].abs().sum() > 0)
