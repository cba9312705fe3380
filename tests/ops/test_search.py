"""search: values against the loop oracle, ties, gradients, batching, real images, bad input."""

from __future__ import annotations

import functools
import math

import numpy as np
import oracle
import pytest
import torch
from conftest import assert_knn_match

from napari_stnls.ops import Region, grid_shape, grid_view, query_coords, search


def _smooth_flow(gen, B, T, H, W, amp, dtype=torch.float64):
    """A random smooth sub-pixel flow (B, T, 2, H, W): a random affine field plus a low-frequency wave."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    c = torch.rand(B, T, 2, 5, generator=gen, dtype=dtype) * 2 - 1
    f = (
        c[..., 0, None, None]
        + c[..., 1, None, None] * yy / H
        + c[..., 2, None, None] * xx / W
        + c[..., 3, None, None] * torch.sin(2 * math.pi * (yy + xx) / (H + W) + 3 * c[..., 4, None, None])
    )
    return amp * f


def _random_case(seed):
    """A small random configuration spanning every option of search."""
    r = np.random.default_rng(seed)
    B = int(r.integers(1, 3))
    T = int(r.integers(1, 5))
    nheads = int(r.choice([1, 2]))
    C = nheads * int(r.integers(1, 3))
    H, W = int(r.integers(5, 10)), int(r.integers(5, 10))
    itype = str(r.choice(["float", "int"]))
    stride1 = float(r.choice([1.0, 2.0] if itype == "int" else [1.0, 0.5, 1.5, 0.75]))
    ws = int(r.choice([1, 3, 5]))
    while (ws - 1) * stride1 > min(H, W) - 1:
        ws -= 2
    wt = int(r.integers(0, 3))
    pt = int(r.integers(1, 3))
    ps = int(r.choice([1, 2, 3]))
    dilation = int(r.integers(1, 3))
    stride0 = int(r.integers(1, 4))
    exclude_self = bool(r.integers(0, 2))
    nt = min(T, 2 * wt + 1)
    exclude_self = exclude_self and nt * ws * ws > 1
    k = int(r.integers(1, min(6, nt * ws * ws - int(exclude_self)) + 1))
    t0 = int(r.integers(0, T))
    y0, x0 = int(r.integers(0, H - 2)), int(r.integers(0, W - 2))
    region = (t0, int(r.integers(t0 + 1, T + 1)), y0, int(r.integers(y0 + 1, H + 1)), x0,
              int(r.integers(x0 + 1, W + 1)))
    if r.integers(0, 3) == 0:
        region = None
    return dict(
        shape=(B, T, C, H, W), ps=ps, ws=ws, wt=wt, k=k, dist=str(r.choice(["l2", "prod"])),
        stride0=stride0, stride1=stride1, dilation=dilation, pt=pt, nheads=nheads,
        region=region, exclude_self=exclude_self, itype=itype, flow=bool(r.integers(0, 3)),
    )


def _whole_pixel(flow: torch.Tensor) -> torch.Tensor:
    """``flow`` in multiples of 1/64: a query carried along it lands on the same position in
    float32 and in float64, so whole-pixel windows round the same way in both."""
    return torch.round(flow * 64) / 64


def assert_rows_match_reference(d, i, v, flows, kw, **tol):
    """``(d, i)``, a search of ``v`` along ``flows`` with the arguments ``kw`` (``region`` and
    ``stride0`` among them), hold what the float64 reference finds, with a rank more so that a
    tie at the k-th place is seen (tie-aware: :func:`assert_knn_match`). Checked on the first
    and last frame of the query grid, on its first and last rows and the two rows either side
    of the CUDA kernels' 16-row tiles, each across the whole width (border tiles included)."""
    region, s0 = Region(*kw["region"]), kw.get("stride0", 1)
    T_r, nH, _ = grid_shape(v.shape, region, s0)
    k = d.shape[-1]
    nt = min(v.shape[1], 2 * kw["wt"] + 1)
    more = min(k + 1, nt * kw["ws"] ** 2 - int(kw.get("exclude_self", False)))
    dg, ig = grid_view(d.cpu(), v.shape, region, s0), grid_view(i.cpu(), v.shape, region, s0)
    vd = v.detach().cpu().double()
    fd = None if flows is None else tuple(f.detach().cpu().double() for f in flows)
    for t in sorted({0, T_r - 1}):
        for r in sorted({0, min(15, nH - 1), min(16, nH - 1), nH - 1}):
            y = region.y0 + r * s0
            row = (region.t0 + t, region.t0 + t + 1, y, y + 1, region.x0, region.x1)
            rd, ri = search(vd, vd, flows=fd, backend="reference", **{**kw, "region": row, "k": more})
            assert_knn_match(dg[:, :, t, r], ig[:, :, t, r], rd.numpy(), ri.double().numpy(), **tol)


@functools.cache
def _oracle_case(seed):
    """Random case ``seed``: its search arguments, videos and flows, and the oracle's answer
    with a rank more (computed once for every backend)."""
    case = _random_case(seed)
    gen = torch.Generator().manual_seed(seed)
    shape = case.pop("shape")
    B, T, C, H, W = shape
    q = torch.rand(shape, generator=gen, dtype=torch.float64)
    k = torch.rand(shape, generator=gen, dtype=torch.float64)
    flows = None
    if case.pop("flow"):
        flows = (_smooth_flow(gen, B, T, H, W, 1.7), _smooth_flow(gen, B, T, H, W, 1.7))
    ref_flows = None if flows is None else tuple(f.numpy() for f in flows)
    nt = min(T, 2 * case["wt"] + 1)
    more = dict(case, k=min(case["k"] + 1, nt * case["ws"] ** 2 - int(case["exclude_self"])))
    return case, q, k, flows, oracle.search(q.numpy(), k.numpy(), flows=ref_flows, **more)


@pytest.mark.parametrize("seed", range(40))
def test_search_matches_oracle(seed, impl):
    backend, device = impl
    case, q, k, flows, (rd, ri) = _oracle_case(seed)
    dev_flows = None if flows is None else tuple(f.to(device) for f in flows)
    d, i = search(q.to(device), k.to(device), flows=dev_flows, backend=backend, **case)
    assert i.dtype == (torch.int32 if case["itype"] == "int" else torch.float64)
    assert_knn_match(d, i, rd, ri)
    step = d[..., 1:] - d[..., :-1]  # returned distances are exactly sorted, best first
    assert bool((step >= 0).all() if case["dist"] == "l2" else (step <= 0).all())


@functools.cache
def _float32_case(dist):
    gen = torch.Generator().manual_seed(1)
    q = torch.rand(1, 3, 3, 9, 9, generator=gen)
    flows = tuple(_smooth_flow(gen, 1, 3, 9, 9, 1.2, torch.float32) for _ in range(2))
    kw = dict(ps=3, ws=5, wt=1, k=5, dist=dist)
    qn = q.double().numpy()
    return q, flows, kw, oracle.search(qn, qn, flows=[f.double().numpy() for f in flows], **kw)


@pytest.mark.parametrize("dist", ["l2", "prod"])
def test_search_float32_matches_oracle(dist, impl):
    backend, device = impl
    q, flows, kw, (rd, ri) = _float32_case(dist)
    d, i = search(q.to(device), q.to(device), flows=tuple(f.to(device) for f in flows), backend=backend, **kw)
    assert d.dtype == torch.float32 and i.dtype == torch.float32
    assert_knn_match(d, i, rd, ri, rtol=1e-5, atol=1e-5)


def test_ties_are_ordered_by_position(impl):
    """On a constant video every candidate ties: the order must be (t, y, x) ascending."""
    backend, device = impl
    v = torch.full((1, 3, 1, 7, 7), 0.5, dtype=torch.float64)
    kw = dict(ps=3, ws=3, wt=1, k=12, stride1=2.0)
    d, i = search(v.to(device), v.to(device), backend=backend, **kw)
    i = i.cpu()
    rd, ri = oracle.search(v.numpy(), v.numpy(), **kw)
    assert torch.equal(i, torch.from_numpy(ri))
    flat = i[0, 0].long()
    key = (flat[..., 0] * 100 + flat[..., 1]) * 100 + flat[..., 2]
    assert bool((key[:, 1:] > key[:, :-1]).all())


def test_self_is_found_first_and_exclude_self_drops_it():
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(2, 3, 2, 8, 8, generator=gen)
    d, i = search(v, v, ps=3, ws=5, wt=1, k=3)
    coords = query_coords(v.shape).float()
    assert torch.equal(d[..., 0], torch.zeros_like(d[..., 0]))
    assert torch.equal(i[..., 0, :], coords.expand(2, 1, -1, -1))
    d2, i2 = search(v, v, ps=3, ws=5, wt=1, k=3, exclude_self=True)
    assert bool((d2 > 0).all())
    assert not bool((i2 == coords[None, None, :, None]).all(-1).any())
    assert torch.equal(d2[..., :2], d[..., 1:])


@pytest.mark.parametrize("itype", ["float", "int"])
def test_batching_gives_identical_results_and_gradients(itype, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(4)
    q = torch.rand(1, 3, 2, 10, 9, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    k = torch.rand(1, 3, 2, 10, 9, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    f = [_smooth_flow(gen, 1, 3, 10, 9, 1.3).to(device).requires_grad_() for _ in range(2)]
    kw = dict(ps=3, ws=5, wt=1, k=4, itype=itype, region=(0, 3, 1, 9, 2, 8), stride0=2)
    outs = []
    for bs in (None, 1, 7, 1000):
        d, i = search(q, k, flows=f, batch_size=bs, backend=backend, **kw)
        loss = (d * torch.linspace(0, 1, d.shape[-1], dtype=d.dtype, device=device)).sum()
        if itype == "float":
            loss = loss + (i[..., 1:] ** 2).sum()
        grads = torch.autograd.grad(loss, [q, k, *f], allow_unused=True)
        outs.append((d, i, grads))
    for d, i, grads in outs[1:]:
        assert torch.equal(d, outs[0][0])
        assert torch.equal(i, outs[0][1])
        for g, g0 in zip(grads, outs[0][2], strict=False):
            assert (g is None) == (g0 is None)
            if g is not None:
                torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-12)


def test_flow_search_keeps_little_for_backward(impl):
    """With flows that need a gradient, what the graph keeps for the backward stays near the
    size of dists + inds: the flow chain is recomputed in the backward, not kept (it was
    7.6x dists + inds), and so are the reference's patches. Same gradients as a plain autograd
    graph (checked by the gradchecks). What is kept grows with the queries, k and the window's
    frames, not with ws or ps (kept small here for speed)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(5)
    shape = (1, 6, 3, 24, 40)
    v = torch.rand(shape, generator=gen).to(device).requires_grad_()
    flows = [(0.8 * torch.randn(shape[:2] + (2,) + shape[3:], generator=gen)).to(device).requires_grad_()
             for _ in range(2)]
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        d, i = search(v, v, ps=3, ws=5, wt=2, k=8, flows=flows, backend=backend, batch_size=600)
    out = d.numel() * d.element_size() + i.numel() * i.element_size()
    assert sum(kept.values()) <= 1.6 * out
    d.sum().backward()
    assert flows[0].grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def _gradcheck_search(dist, nheads, backend, device, fast_mode):
    """gradcheck of dists and positions w.r.t. both videos and both flows."""
    gen = torch.Generator().manual_seed(5)
    B, T, C, H, W = 1, 3, 2, 9, 9
    q = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    k = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    # Small flows keep every window away from the frame border, where the clamp has a kink.
    f = [(0.3 * _smooth_flow(gen, B, T, H, W, 1.0)).to(device).requires_grad_() for _ in range(2)]
    kw = dict(ps=3, ws=3, wt=1, k=3, dist=dist, nheads=nheads, region=(0, 3, 3, 6, 3, 6), pt=2,
              backend=backend)

    def fn(q, k, ff, bf):
        d, i = search(q, k, flows=(ff, bf), **kw)
        return d, i[..., 1:]

    # On CUDA the backward adds with atomics, in an order that varies run to run: gradcheck's
    # second backward may differ in the last bits (fast mode's random projection sums many
    # terms into each entry). Deterministic mode is tested on its own.
    nondet = 1e-12 if torch.device(device).type == "cuda" else 0.0
    return torch.autograd.gradcheck(fn, (q, k, *f), eps=1e-6, atol=1e-6, fast_mode=fast_mode,
                                    nondet_tol=nondet)


@pytest.mark.parametrize("dist", ["l2", "prod"])
@pytest.mark.parametrize("nheads", [1, 2])
def test_gradcheck_videos_and_flows(dist, nheads, impl):
    """Fast gradcheck (a random projection of the Jacobian, against its finite difference)."""
    backend, device = impl
    assert _gradcheck_search(dist, nheads, backend, device, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["l2", "prod"])
def test_gradcheck_videos_and_flows_every_entry(dist, impl):
    """The whole Jacobian, entry by entry (about 40 s a case on 2 cores)."""
    backend, device = impl
    assert _gradcheck_search(dist, 2, backend, device, fast_mode=False)


@pytest.mark.parametrize(("B", "nheads", "itype"), [(1, 1, "float"), (1, 1, "int"), (2, 2, "float")])
def test_cpu_backward_gives_the_same_bits_for_any_thread_count(B, nheads, itype):
    """The compiled CPU backward runs one task per (batch, head) when there are enough of
    them for the threads, and otherwise splits the queries (with bands of video rows for the
    additions); both give the bits of a serial loop. Many threads on few queries force the
    split, over several chunks of queries here (576 queries, K = 10, ps = 7, C = 4)."""
    gen = torch.Generator().manual_seed(11)
    q = torch.rand(B, 3, 4, 24, 24, generator=gen)
    k = torch.rand(B, 3, 4, 24, 24, generator=gen)
    f = [1.5 * _smooth_flow(gen, B, 3, 24, 24, 1.0) for _ in range(2)]

    def run():
        qq, kk, ff, bf = (a.clone().requires_grad_() for a in (q, k, *f))
        d, i = search(qq, kk, ps=7, ws=5, wt=1, k=10, nheads=nheads, flows=(ff, bf), itype=itype,
                      region=(1, 2, 0, 24, 0, 24), backend="cpu")
        (d * torch.linspace(-1, 2, d.numel()).view(d.shape)).sum().backward()
        return [d, qq.grad, kk.grad, ff.grad, bf.grad]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = run()
        assert all(bool(g.abs().sum() > 0) for g in first[1:3])
        for n in (2, 3, 8, 17):
            torch.set_num_threads(n)
            for a, b in zip(run(), first, strict=True):
                assert (a is None and b is None) or torch.equal(a, b), n  # int: no flow grad
    finally:
        torch.set_num_threads(threads)


def test_cpu_backward_split_over_queries_passes_gradcheck():
    """gradcheck with more threads than (batch, head) pairs: the split path of the backward."""
    gen = torch.Generator().manual_seed(12)
    q, k = (torch.rand(1, 3, 2, 9, 9, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    f = [(0.3 * _smooth_flow(gen, 1, 3, 9, 9, 1.0)).double().requires_grad_() for _ in range(2)]

    def fn(q, k, ff, bf):
        d, i = search(q, k, flows=(ff, bf), ps=3, ws=3, wt=1, k=3, region=(0, 3, 3, 6, 3, 6),
                      backend="cpu")
        return d, i[..., 1:]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert torch.autograd.gradcheck(fn, (q, k, *f), eps=1e-6, atol=1e-6, fast_mode=True)
    finally:
        torch.set_num_threads(threads)


def test_gradient_flows_to_flow_through_dists():
    """Moving the flow changes the matched patches: the flow gradient is non-zero and right."""
    gen = torch.Generator().manual_seed(6)
    img = torch.rand(1, 2, 1, 12, 12, generator=gen, dtype=torch.float64)
    ff = torch.full((1, 2, 2, 12, 12), 0.35, dtype=torch.float64, requires_grad=True)
    bf = torch.zeros(1, 2, 2, 12, 12, dtype=torch.float64)
    d, _ = search(img, img, ps=3, ws=1, wt=1, k=2, flows=(ff, bf), region=(0, 1, 4, 8, 4, 8))
    (g,) = torch.autograd.grad(d.sum(), ff)
    assert g.abs().sum() > 0
    assert g[:, 1:].abs().sum() == 0  # fflow of the last frame is never read


def test_grid_view_and_query_order():
    v = torch.rand(1, 4, 1, 9, 11)
    region = Region(1, 3, 2, 9, 1, 10)
    d, i = search(v, v, ps=1, ws=3, wt=0, k=1, region=region, stride0=3)
    g = grid_view(i[0, 0, :, 0], v.shape, region, 3)
    assert g.shape == (2, 3, 3, 3)
    assert g[1, 2, 0].tolist() == [2.0, 8.0, 1.0]
    coords = query_coords(v.shape, region, 3)
    assert coords.dtype == torch.int64 and coords[0].tolist() == [1, 2, 1]


def test_window_is_shifted_at_the_ends():
    v = torch.rand(1, 6, 1, 5, 5, dtype=torch.float64)
    _, i = search(v, v, ps=1, ws=5, wt=2, k=125, region=(0, 1, 0, 1, 0, 1))
    assert sorted(set(i[0, 0, 0, :, 0].tolist())) == [0, 1, 2, 3, 4]
    _, i = search(v, v, ps=1, ws=5, wt=2, k=125, region=(5, 6, 0, 1, 0, 1))
    assert sorted(set(i[0, 0, 0, :, 0].tolist())) == [1, 2, 3, 4, 5]
    _, i = search(v, v, ps=1, ws=5, wt=9, k=150, region=(2, 3, 0, 1, 0, 1))
    assert sorted(set(i[0, 0, 0, :, 0].tolist())) == [0, 1, 2, 3, 4, 5]


# --- real images --------------------------------------------------------------------------------


def test_disparity_as_flow_finds_true_matches_on_stereo_pair(impl):
    """Middlebury motorcycle pair: left(x) ~ right(x - d). With the true disparity as flow, a
    small window finds the true match; the same window without flow cannot reach it."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    left, right, disp = skimage_data.stereo_motorcycle()
    s = 0.25
    left = rescale(rgb2gray(left), s, anti_aliasing=True)
    right = rescale(rgb2gray(right), s, anti_aliasing=True)
    disp = rescale(np.nan_to_num(disp, nan=0.0, posinf=0.0), s, order=0) * s
    H, W = left.shape
    video = torch.from_numpy(np.stack([left, right])[None, :, None]).float()
    fflow = torch.zeros(1, 2, 2, H, W)
    fflow[0, 0, 0] = -torch.from_numpy(disp).float()  # frame 0 -> 1 moves x by -d
    flows = (fflow, torch.zeros_like(fflow))
    m = 12  # away from the borders
    region = (0, 1, m, H - m, m, W - m)
    backend, device = impl
    kw = dict(ps=7, ws=3, wt=1, k=1, region=region, exclude_self=True, itype="float", backend=backend)
    video, flows = video.to(device), tuple(f.to(device) for f in flows)
    # Compare against frame 1 only: the window holds frames 0 and 1; restrict to frame 1 by
    # giving frame 0 a huge offset so it never wins.
    q = video.clone()
    keys = video.clone()
    keys[:, 0] += 100.0
    coords = query_coords(video.shape, region).numpy()
    dtrue = disp[coords[:, 1], coords[:, 2]]
    valid = (dtrue > 0) & (coords[:, 2] - dtrue > m)
    assert valid.mean() > 0.5
    for use_flow, lo, hi in ((True, 0.8, 1.01), (False, 0.0, 0.1)):
        _, inds = search(q, keys, flows=flows if use_flow else None, **kw)
        x_found = inds[0, 0, :, 0, 2].cpu().numpy()
        ok = np.abs(x_found - (coords[:, 2] - dtrue)) <= 1.0
        frac = ok[valid].mean()
        assert lo <= frac < hi, (use_flow, frac)


def test_flow_guided_search_recovers_a_known_subpixel_shift():
    """A real scene panned by a known sub-pixel shift: the matches sit at exactly that shift."""
    skimage_data = pytest.importorskip("skimage.data")
    from scipy.ndimage import shift as nd_shift

    img = skimage_data.camera()[200:280, 200:280].astype(np.float64) / 255
    dy, dx = 0.4, 1.3
    frames = [nd_shift(img, (n * dy, n * dx), order=3, mode="reflect") for n in range(3)]
    video = torch.from_numpy(np.stack(frames)[None, :, None])
    T, H, W = 3, 80, 80
    fflow = torch.zeros(1, T, 2, H, W, dtype=torch.float64)
    fflow[:, :, 0], fflow[:, :, 1] = dx, dy
    bflow = -fflow
    region = (1, 2, 20, 60, 20, 60)
    # ws=5 at stride 0.5 around the flow-predicted position: the true shift sits at offset 0.
    # The query's own frame is made unmatchable so every match lies in frames 0 and 2.
    keys = video.clone()
    keys[:, 1] += 100.0
    _, inds = search(video, keys, ps=7, ws=5, wt=1, k=50, stride1=0.5, flows=(fflow, bflow), region=region)
    i = inds[0, 0].numpy()
    c = query_coords(video.shape, region).numpy()
    assert set(np.unique(i[..., 0])) == {0.0, 2.0}
    for frame, n in ((0, -1), (2, 1)):
        first = np.argmax(i[..., 0] == frame, axis=1)  # best match in that frame
        best = i[np.arange(len(c)), first]
        hit = (np.abs(best[:, 1] - c[:, 1] - n * dy) < 0.01) & (np.abs(best[:, 2] - c[:, 2] - n * dx) < 0.01)
        assert hit.mean() > 0.85, (frame, hit.mean())  # bilinear reading blurs flat areas
    # Without the flow the window centre sits at the query, and the exact shift is off the grid.
    _, inds = search(video, keys, ps=7, ws=5, wt=1, k=50, stride1=0.5, region=region)
    i = inds[0, 0].numpy()
    first = np.argmax(i[..., 0] == 2, axis=1)
    best = i[np.arange(len(c)), first]
    hit = (np.abs(best[:, 1] - c[:, 1] - dy) < 0.01) & (np.abs(best[:, 2] - c[:, 2] - dx) < 0.01)
    assert hit.mean() < 0.05


# --- bad input ----------------------------------------------------------------------------------


V5 = torch.zeros(1, 2, 2, 8, 8)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((V5[0], V5[0]), {}, ValueError, "queries: expected a video"),
        ((V5, V5[:, :1]), {}, ValueError, "keys: expected the same shape"),
        ((V5, V5.double()), {}, TypeError, "keys: expected dtype"),
        ((V5.long(), V5.long()), {}, TypeError, "queries: expected a floating-point"),
        (([0], V5), {}, TypeError, "queries: expected a torch.Tensor"),
        ((V5, V5), dict(ps=0), ValueError, "ps: expected an int >= 1"),
        ((V5, V5), dict(ps=2.5), TypeError, "ps"),
        ((V5, V5), dict(ws=0), ValueError, "ws"),
        ((V5, V5), dict(ws=4), ValueError, "ws: expected an odd"),
        ((V5, V5), dict(ws=9), ValueError, "ws: the search grid"),
        ((V5, V5), dict(ws=5, stride1=2.0), ValueError, "ws: the search grid"),
        ((V5, V5), dict(ws=3, k=0), ValueError, "k: expected an int >= 1"),
        ((V5, V5), dict(ws=3, k=19), ValueError, "k: expected at most the 18"),
        ((V5, V5), dict(ws=3, k=18, exclude_self=True), ValueError, "k: expected at most the 17"),
        ((V5, V5), dict(ws=3, k=2, stride0=0), ValueError, "stride0"),
        ((V5, V5), dict(ws=3, k=2, stride1=0.0), ValueError, "stride1"),
        ((V5, V5), dict(ws=3, k=2, stride1=1.5, itype="int"), ValueError, "stride1: must be an integer"),
        ((V5, V5), dict(ws=3, k=2, wt=-1), ValueError, "wt"),
        ((V5, V5), dict(ws=3, k=2, nheads=3), ValueError, "nheads: must divide"),
        ((V5, V5), dict(ws=3, k=2, dist="l1"), ValueError, "dist: expected one of"),
        ((V5, V5), dict(ws=3, k=2, itype="half"), ValueError, "itype"),
        ((V5, V5), dict(ws=3, k=2, region=(0, 3, 0, 8, 0, 8)), ValueError, "region: t range"),
        ((V5, V5), dict(ws=3, k=2, region=(0, 1, 4, 4, 0, 8)), ValueError, "region: y range"),
        ((V5, V5), dict(ws=3, k=2, region=(0, 1, 0, 8)), ValueError, "region: expected 6"),
        ((V5, V5), dict(ws=3, k=2, region=(0, 1, 0, 8, 0, 8.5)), TypeError, "region: expected integers"),
        ((V5, V5), dict(ws=3, k=2, flows=torch.zeros(1, 2, 2, 8, 8)), TypeError, "flows: expected None or"),
        ((V5, V5), dict(ws=3, k=2, flows=(torch.zeros(1, 2, 2, 8, 7),) * 2), ValueError, "flows \\(fflow\\)"),
        ((V5, V5), dict(ws=3, k=2, flows=(torch.zeros(1, 2, 2, 8, 8).long(),) * 2), TypeError, "floating"),
        ((V5, V5), dict(ws=3, k=2, batch_size=0), ValueError, "batch_size"),
        ((V5, V5), dict(ws=3, k=2, exclude_self=1), TypeError, "exclude_self"),
        ((V5, V5), dict(ws=3, k=2, backend="cuda"), ValueError, "backend"),
        ((V5, V5), dict(ws=3, k=2, ps=33, backend="cpu"), ValueError, "backend: the compiled search takes"),
        ((V5, V5), dict(ws=3, k=2, backend="gpu"), ValueError, "backend: expected None or one of"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        search(*args, **kwargs)


def test_empty_video_is_an_error():
    e = torch.zeros(1, 0, 1, 8, 8)
    with pytest.raises(ValueError, match="queries: video is empty"):
        search(e, e)


def test_inputs_are_not_modified():
    gen = torch.Generator().manual_seed(7)
    q = torch.rand(1, 2, 1, 8, 8, generator=gen)
    f = (torch.rand(1, 2, 2, 8, 8, generator=gen), torch.rand(1, 2, 2, 8, 8, generator=gen))
    copies = [q.clone(), f[0].clone(), f[1].clone()]
    search(q, q, ps=3, ws=3, wt=1, k=2, flows=f)
    for a, b in zip([q, *f], copies, strict=False):
        assert torch.equal(a, b)


def test_non_contiguous_and_half_inputs(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(8)
    base = torch.rand(1, 3, 8, 8, 2, generator=gen).to(device)
    v = base.permute(0, 1, 4, 2, 3)  # non-contiguous (B, T, C, H, W)
    kw = dict(ps=3, ws=3, wt=1, k=3, backend=backend)
    d, i = search(v, v, **kw)
    d2, i2 = search(v.contiguous(), v.contiguous(), **kw)
    assert torch.equal(d, d2) and torch.equal(i, i2)
    dh, ih = search(v.half(), v.half(), **kw)
    assert dh.dtype == torch.float32
    assert torch.equal(ih[..., 0, :], i[..., 0, :])


@pytest.mark.parametrize("itype,use_flow,stride0", [("float", False, 1), ("int", True, 1), ("int", False, 2)])
def test_backends_agree_on_a_larger_video(impl_held_to_reference, itype, use_flow, stride0):
    """Many tiles of queries, border tiles and a region: every backend finds the neighbours
    of the float64 reference (the CUDA kernel shares box sums across a tile of queries for
    whole-pixel grids, so this exercises tiles fully and partly inside the grid)."""
    backend, device = impl_held_to_reference
    gen = torch.Generator().manual_seed(21)
    v = torch.rand(1, 4, 3, 37, 45, generator=gen, dtype=torch.float64)
    flows = None
    if use_flow:
        flows = tuple(_smooth_flow(gen, 1, 4, 37, 45, 2.5) for _ in range(2))
    kw = dict(ps=5, ws=7, wt=1, k=6, itype=itype, stride0=stride0, region=(1, 3, 2, 35, 0, 45),
              exclude_self=True, pt=2)
    dev_flows = None if flows is None else tuple(f.to(device) for f in flows)
    d, i = search(v.to(device), v.to(device), flows=dev_flows, backend=backend, **kw)
    assert_rows_match_reference(d, i, v, flows, kw, min_untied=0.9)


@pytest.mark.parametrize(
    ("ps", "C", "pt", "dist", "dtype", "k"),
    [(7, 3, 1, "l2", torch.float32, 7), (5, 1, 1, "l2", torch.float32, 7),
     (3, 3, 1, "prod", torch.float32, 7), (7, 1, 3, "l2", torch.float32, 7),
     (5, 3, 1, "l2", torch.float16, 7), (7, 3, 1, "prod", torch.bfloat16, 7),
     # lists of 32 (nl_means's k = 24 at sigma 20): k just past 16, and the largest
     (7, 3, 1, "l2", torch.float32, 24), (5, 1, 1, "l2", torch.float32, 17),
     (3, 3, 1, "prod", torch.float16, 32),
     # past the sliding kernel's lists: on CUDA a warp per query for this window of 9
     (7, 3, 1, "l2", torch.float32, 48)],
)
def test_single_precision_whole_pixel_search(device, ps, C, pt, dist, dtype, k):
    """float32/float16/bfloat16 videos on whole-pixel grids (on CUDA, 1 or 3 frames x channels
    per head and k <= 32 take the sliding kernel): many tiles, border tiles whose windows
    differ, a region and exclude_self, against the float64 reference search of the same
    (rounded) video; and splitting the queries into batches (tiles then start on other rows)
    changes no bit."""
    gen = torch.Generator().manual_seed(ps * 10 + C + k)
    v = torch.rand(1, 5, C, 45, 70, generator=gen).to(dtype)
    kw = dict(ps=ps, ws=9, wt=1, k=k, pt=pt, dist=dist, exclude_self=True, region=(0, 5, 1, 44, 2, 69))
    vd = v.to(device)
    d, i = search(vd, vd, **kw)
    assert d.dtype == torch.float32
    assert_rows_match_reference(d, i, v, None, kw, rtol=1e-5, atol=1e-4, min_untied=0.9 if k < 32 else 0.5)
    for bs in (67 * 3, 67 * 11 + 5):
        d2, i2 = search(vd, vd, batch_size=bs, **kw)
        assert torch.equal(d2, d) and torch.equal(i2, i)


def test_single_precision_search_with_flows_that_spread_the_windows(device):
    """Whole-pixel flows that differ by tens of pixels within a tile of queries: the union of
    the tile's windows is staged in several runs (on CUDA), and each query still gets exactly
    its own window's best candidates (those of the float64 reference)."""
    gen = torch.Generator().manual_seed(5)
    v = torch.rand(1, 3, 3, 40, 60, generator=gen)
    flows = tuple((torch.rand(1, 3, 2, 40, 60, generator=gen) * 2 - 1) * 30 for _ in range(2))
    kw = dict(ps=7, ws=7, wt=1, k=5, itype="int")
    kw = dict(kw, region=(0, 3, 0, 40, 0, 60))
    d, i = search(v.to(device), v.to(device), flows=tuple(f.to(device) for f in flows), **kw)
    assert_rows_match_reference(d, i, v, flows, kw, rtol=1e-5, atol=1e-4, min_untied=0.9)


@pytest.mark.parametrize(
    ("ws", "k", "dist", "exclude_self"),
    [(5, 10, "l2", False), (9, 24, "l2", True), (21, 10, "prod", False), (7, 40, "l2", True),
     (13, 32, "prod", True), (3, 1, "l2", False)],
)
def test_single_precision_subpixel_search_keeps_the_k_best(device, ws, k, dist, exclude_self):
    """float32 search along sub-pixel flows (on CUDA a warp per query: one list for the warp
    up to k = 32, a list per lane merged at the end above; 4 or 7 candidates per lane and
    step depending on ws), against the float64 reference search; batching changes no bit."""
    gen = torch.Generator().manual_seed(ws * 100 + k)
    v = torch.rand(1, 4, 3, 26, 31, generator=gen)
    flows = tuple(_smooth_flow(gen, 1, 4, 26, 31, 2.3, torch.float32) for _ in range(2))
    kw = dict(ps=5, ws=ws, wt=1, k=k, dist=dist, exclude_self=exclude_self, region=(0, 4, 2, 24, 1, 30))
    d, i = search(v.to(device), v.to(device), flows=tuple(f.to(device) for f in flows), **kw)
    assert d.shape[-1] == k and bool(torch.isfinite(d).all())
    assert_rows_match_reference(d, i, v, flows, kw, rtol=1e-5, atol=1e-4, min_untied=0.9, pos_atol=1e-4)
    d2, i2 = search(v.to(device), v.to(device), flows=tuple(f.to(device) for f in flows), batch_size=97, **kw)
    assert torch.equal(d2, d) and torch.equal(i2, i)


@pytest.mark.parametrize("batch_size", [None, 1, 5, 13, 40, 41, 100, 10**6])
def test_compiled_chunks_partition_the_query_grid(batch_size):
    """The compiled search runs queries in chunks of whole grid rows or frames: they cover
    every query once, in order, and each chunk's grid gives exactly its queries."""
    from napari_stnls.ops._window import Params
    from napari_stnls.ops.search import _compiled_chunks

    shape = (1, 6, 2, 30, 41)
    region, s0 = Region(1, 5, 2, 29, 3, 40), 3
    coords = query_coords(shape, region, s0)
    T_r, nH, nW = grid_shape(shape, region, s0)
    P = Params(shape, 3, 5, 1, 4, "l2", 1.0, 1, 1, 1, False, "float", s0,
               (region.t0, region.y0, region.x0, T_r, nH, nW))
    chunks = _compiled_chunks(P, coords.shape[0], batch_size)
    assert chunks[0][0] == 0 and chunks[-1][1] == coords.shape[0]
    for (_, stop, _), (start, _, _) in zip(chunks, chunks[1:], strict=False):
        assert stop == start
    for start, stop, Pc in chunks:
        t0, y0, x0, tr, nh, nw = Pc.grid
        sub = Region(t0, t0 + tr, y0, y0 + (nh - 1) * s0 + 1, x0, x0 + (nw - 1) * s0 + 1)
        assert torch.equal(query_coords(shape, sub, s0), coords[start:stop])
        if batch_size is not None and batch_size >= nW:
            assert stop - start <= batch_size


@pytest.mark.parametrize(
    "C,nheads,dist,stride0,stride1,flow_amp",
    [
        (64, 1, "prod", 1, 1.0, 0.0),  # workload B's shape of search
        (70, 2, "l2", 2, 1.0, 0.0),  # 35 channels per head
        (5, 1, "prod", 1, 2.0, 2.5),  # flows within the staged margin
        (16, 1, "l2", 1, 1.0, 12.0),  # flows that vary past it: candidates read from memory
        (130, 1, "prod", 1, 1.0, 0.0),  # more channels than the single-pixel kernel holds
    ],
)
def test_single_pixel_patches_on_larger_videos(impl_held_to_reference, C, nheads, dist, stride0, stride1,
                                               flow_amp):
    """ps=1, pt=1 (attention-like search over feature maps): the CUDA backend stages the
    windows of a tile of queries in shared memory; every backend finds the neighbours of
    the float64 reference, with and without whole-pixel flows."""
    backend, device = impl_held_to_reference
    gen = torch.Generator().manual_seed(C)
    v = torch.rand(1, 4, C, 29, 70, generator=gen)
    flows = None
    if flow_amp:
        flows = tuple(_whole_pixel(_smooth_flow(gen, 1, 4, 29, 70, flow_amp, torch.float32))
                      for _ in range(2))
    kw = dict(ps=1, ws=7, wt=1, k=10, dist=dist, itype="int", stride0=stride0, stride1=stride1,
              nheads=nheads, exclude_self=True, region=(0, 4, 1, 29, 3, 70))
    dev_flows = None if flows is None else tuple(f.to(device) for f in flows)
    d, i = search(v.to(device), v.to(device), flows=dev_flows, backend=backend, **kw)
    assert_rows_match_reference(d, i, v, flows, kw, rtol=1e-5, atol=1e-5, min_untied=0.9)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "shape,kw,flow",
    [
        ((1, 3, 3, 23, 31), dict(ps=7, ws=7, wt=1, k=6, itype="int"), False),  # w3's patches
        ((2, 3, 3, 21, 26), dict(ps=5, ws=5, wt=1, k=5), True),  # sub-pixel: taps and positions
        ((1, 3, 8, 19, 24), dict(ps=3, ws=5, wt=1, k=4, nheads=2, dist="prod"), False),  # 4 a head
        ((1, 3, 64, 17, 20), dict(ps=1, ws=5, wt=1, k=10, dist="prod"), False),  # w4's features
        ((1, 4, 1, 22, 25), dict(ps=3, ws=7, wt=1, k=7, stride0=2, region=(1, 4, 2, 20, 1, 24)), True),
    ],
)
def test_the_vector_atomic_backward_gives_the_same_gradients(shape, kw, flow, monkeypatch):
    """CUDA's search backward with 16-byte atomic adds (``NAPARI_STNLS_CUDA_BWD=v4``, which
    the profiler shows running) gives the default backward's gradients to the queries, the
    keys and the flows, up to the order of the atomic additions."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(C * H + W)
    v = torch.rand(shape, generator=gen)
    u = torch.rand(shape, generator=gen)
    flows = None
    if flow:
        flows = tuple(_smooth_flow(gen, B, T, H, W, 1.7, torch.float32) for _ in range(2))
    wgt = torch.rand(B, kw.get("nheads", 1), 1, 1, generator=gen)
    grads = {}
    for mode in ("", "v4"):
        monkeypatch.setenv("NAPARI_STNLS_CUDA_BWD", mode)
        q, k = v.cuda().requires_grad_(), u.cuda().requires_grad_()
        fl = None if flows is None else tuple(f.cuda().requires_grad_() for f in flows)
        d, _ = search(q, k, flows=fl, backend="cuda", **kw)
        loss = (d * wgt.cuda()).sum()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            loss.backward()
            torch.cuda.synchronize()
        names = " ".join(e.key for e in prof.key_averages())
        assert ("dists_backward_v4_kernel" in names) == (mode == "v4"), names
        grads[mode] = [q.grad, k.grad] + ([] if fl is None else [f.grad for f in fl])
    for a, b in zip(grads[""], grads["v4"], strict=True):
        scale = float(a.abs().max())
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "shape,nheads,dist,k,flow_amp,feature",
    [
        ((1, 5, 64, 37, 52), 1, "prod", 10, 0.0, "rand"),  # workload B's search, border tiles
        ((1, 4, 70, 29, 45), 2, "l2", 16, 0.0, "randn"),  # 35 channels a head, k 16
        ((2, 3, 5, 26, 41), 1, "prod", 7, 2.5, "rand"),  # flows within the staging margin
        ((1, 3, 64, 30, 40), 1, "l2", 10, -12.0, "rand"),  # rough flows: blocks searched again
        ((1, 3, 8, 24, 40), 1, "l2", 10, 0.0, "near"),  # near-duplicates: unproven queries
    ],
)
def test_single_pixel_matrix_units_give_the_float32_bits(shape, nheads, dist, k, flow_amp, feature,
                                                          monkeypatch):
    """CUDA's single-pixel search on the matrix units (``NAPARI_STNLS_CUDA_PIX_TC=1``: TF32
    scores, the 2k best re-ranked in float32, a bound proving that nothing left out could
    reach the k best, the rest searched again) returns the float32 kernel's bits, and the
    float64 reference's neighbours. ``NAPARI_STNLS_CUDA_PIX_TC=2`` leaves the queries it would
    search again out (NaN distances): every other row already holds the float32 bits, and
    on near-duplicate features some rows are left out, so both paths are exercised. A negative
    ``flow_amp`` draws whole-pixel flows independently at every pixel: windows of one tile
    spread past the staging buffer."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(C * H + W)
    if feature == "near":  # values within 2^-16 of each other: TF32 cannot rank them
        v = 0.5 + torch.rand(shape, generator=gen) * 2.0**-16
    else:
        v = torch.rand(shape, generator=gen) if feature == "rand" else torch.randn(shape, generator=gen)
    flows = None
    if flow_amp > 0:
        flows = tuple(_whole_pixel(_smooth_flow(gen, B, T, H, W, flow_amp, torch.float32))
                      for _ in range(2))
    elif flow_amp < 0:
        flows = tuple(torch.round((torch.rand(B, T, 2, H, W, generator=gen) * 2 - 1) * flow_amp)
                      for _ in range(2))
    kw = dict(ps=1, ws=9, wt=2, k=k, dist=dist, nheads=nheads, exclude_self=True, itype="int",
              region=(0, T, 0, H, 0, W))  # (integer positions: whole-pixel kernels with flows too)
    vd = v.cuda()
    fd = None if flows is None else tuple(f.cuda() for f in flows)
    monkeypatch.setenv("NAPARI_STNLS_CUDA_PIX_TC", "0")
    d0, i0 = search(vd, vd, flows=fd, backend="cuda", **kw)
    monkeypatch.setenv("NAPARI_STNLS_CUDA_PIX_TC", "2")
    d2, i2 = search(vd, vd, flows=fd, backend="cuda", **kw)
    left = torch.isnan(d2).any(-1)
    assert torch.isnan(d2[left]).all()
    kept = ~left
    assert torch.equal(d2[kept], d0[kept]) and torch.equal(i2[kept], i0[kept])
    if feature == "near" or flow_amp < 0:
        assert bool(left.any()), "expected queries the matrix units leave to the float32 search"
    else:  # the bound holds for most queries of random features (a share, not bits)
        assert float(left.float().mean()) < 0.25
    monkeypatch.setenv("NAPARI_STNLS_CUDA_PIX_TC", "1")
    d1, i1 = search(vd, vd, flows=fd, backend="cuda", **kw)
    assert torch.equal(d1, d0) and torch.equal(i1, i0)
    assert_rows_match_reference(d1, i1, v, flows, kw, rtol=1e-5, atol=1e-5,
                                min_untied=0.0 if feature == "near" else 0.9)


@pytest.mark.parametrize(
    "dtype,ps,pt,stride0,dilation,k,flow_amp",
    [
        (torch.float32, 7, 1, 1, 1, 10, 0.0),  # workload A's shape of search
        (torch.float32, 5, 1, 1, 1, 10, 20.0),  # rough flows: windows spread past the key runs
        (torch.float64, 3, 2, 2, 2, 16, 9.0),
        (torch.float32, 3, 1, 1, 1, 17, 0.0),  # lists of 32 (the sliding kernel on CUDA)
        (torch.float64, 3, 1, 1, 1, 20, 0.0),  # float64 past 16: the box kernel
        (torch.float32, 5, 2, 4, 1, 60, 9.0),  # nl_bayes's groups (spaced queries, large k)
        (torch.float32, 5, 2, 4, 1, 160, 9.0),  # and its second step's (k past 128)
    ],
)
def test_whole_pixel_box_search_with_spread_windows(impl_held_to_reference, dtype, ps, pt, stride0,
                                                    dilation, k, flow_amp):
    """Whole-pixel grids with ps > 1 (the box-sum kernels on CUDA): with flows that differ from
    pixel to pixel, the windows of a tile of queries spread far apart, and the CUDA kernel
    stages their key pixels in several runs; every backend finds the float64 reference's
    neighbours."""
    backend, device = impl_held_to_reference
    gen = torch.Generator().manual_seed(ps * 10 + pt)
    v = torch.rand(1, 4, 3, 41, 53, generator=gen, dtype=dtype)
    flows = None
    if flow_amp:
        flows = tuple(_whole_pixel(torch.randn(1, 4, 2, 41, 53, generator=gen, dtype=dtype) * flow_amp)
                      for _ in range(2))
    kw = dict(ps=ps, pt=pt, ws=9, wt=1, k=k, itype="int", stride0=stride0, dilation=dilation,
              exclude_self=True, region=(0, 4, 2, 40, 0, 53))
    dev_flows = None if flows is None else tuple(f.to(device) for f in flows)
    d, i = search(v.to(device), v.to(device), flows=dev_flows, backend=backend, **kw)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    # with k in the tens, float32 distances of random patches lie within tol of a neighbour's
    # more often: fewer ranks are untied (the distances are checked at every rank)
    assert_rows_match_reference(d, i, v, flows, kw, rtol=tol, atol=tol, min_untied=0.9 if k < 32 else 0.5)


# Strided query grids (stride0 > 1): on CUDA a warp per query instead of the box kernels, on the
# CPU box sums over the rows and columns the strided patches cover. Each case against the loop
# oracle (with a rank more, tie-aware), for every backend.
STRIDED = {
    # W1's shape of search (issue 25), scaled down: float32, 3 channels, ps=7 > stride0=4
    "w1": dict(shape=(1, 1, 3, 18, 21), dtype=torch.float32, flow=None,
               kw=dict(ps=7, ws=5, wt=1, k=10, stride0=4, itype="int")),
    # whole-pixel flows, a region, two heads, dilation, exclude_self, batch of two, prod
    "flow_region": dict(shape=(2, 3, 2, 17, 18), dtype=torch.float64, flow="whole",
                        kw=dict(ps=3, ws=5, wt=1, k=6, stride0=3, nheads=2, dilation=2, dist="prod",
                                exclude_self=True, region=(1, 2, 2, 15, 1, 16), itype="int")),
    # stride0 > ps: rows and columns in no patch; pt=2; k past the warp's one list (per-lane lists)
    "sparse_k40": dict(shape=(1, 3, 2, 19, 22), dtype=torch.float64, flow=None,
                       kw=dict(ps=3, ws=5, wt=1, k=40, stride0=5, pt=2, exclude_self=True, itype="float")),
    # sub-pixel flows with strided queries (interpolated windows), float positions, stride1=2
    "subpixel": dict(shape=(1, 3, 1, 20, 21), dtype=torch.float32, flow="sub",
                     kw=dict(ps=5, ws=5, wt=1, k=8, stride0=2, stride1=2.0, region=(1, 2, 1, 19, 0, 21))),
    # float32, ws=7 and k <= 32: seven candidates per lane and step, summed sliding; flows
    "seven": dict(shape=(1, 2, 1, 16, 18), dtype=torch.float32, flow="whole",
                  kw=dict(ps=3, ws=7, wt=1, k=12, stride0=2, region=(0, 1, 0, 16, 0, 18), itype="int")),
}


@functools.cache
def _strided_oracle(name):
    c = STRIDED[name]
    gen = torch.Generator().manual_seed(len(name))
    B, T, C, H, W = c["shape"]
    v = torch.rand(c["shape"], generator=gen, dtype=torch.float64).to(c["dtype"])
    flows = None
    if c["flow"] is not None:
        flows = tuple(_smooth_flow(gen, B, T, H, W, 2.5) for _ in range(2))
        if c["flow"] == "whole":
            flows = tuple(_whole_pixel(f) for f in flows)
        flows = tuple(f.to(c["dtype"]) for f in flows)
    kw = c["kw"]
    nt = min(T, 2 * kw["wt"] + 1)
    more = dict(kw, k=min(kw["k"] + 1, nt * kw["ws"] ** 2 - int(kw.get("exclude_self", False))))
    ref_flows = None if flows is None else tuple(f.double().numpy() for f in flows)
    return v, flows, oracle.search(v.double().numpy(), v.double().numpy(), flows=ref_flows, **more)


@pytest.mark.parametrize("name", list(STRIDED))
def test_strided_queries_match_oracle(name, compiled):
    """Strided query grids with and without flows (whole-pixel and sub-pixel), regions,
    dilation, heads, pt, exclude_self and both distances: the compiled kernels find the k
    best of the loop oracle, the ties in its order; and the distances' gradient reaches the
    video."""
    backend, device = compiled
    v, flows, (rd, ri) = _strided_oracle(name)
    kw = STRIDED[name]["kw"]
    single = v.dtype == torch.float32
    vd = v.to(device).requires_grad_(True)
    dev_flows = None if flows is None else tuple(f.to(device) for f in flows)
    d, i = search(vd, vd, flows=dev_flows, backend=backend, **kw)
    assert i.dtype == (torch.int32 if kw.get("itype") == "int" else v.dtype)
    tol = dict(rtol=1e-5, atol=1e-4, pos_atol=1e-4) if single else {}
    assert_knn_match(d, i, rd, ri, min_untied=0.9, **tol)
    d.sum().backward()
    assert vd.grad is not None and bool(torch.isfinite(vd.grad).all()) and bool(vd.grad.abs().sum() > 0)


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("shape", "dtype", "flow_amp", "kw"),
    [
        # issue 25's w2/w3 shape of search, scaled down: ps 7, ws 21 (wider than the frame), k 10
        ((1, 5, 3, 37, 61), torch.float32, 0.0, dict(ps=7, ws=21, wt=2, k=10)),
        # one channel (8-row tiles), ps 5, exclude_self, a region, k 32 (the largest list)
        ((1, 3, 1, 50, 45), torch.float32, 0.0,
         dict(ps=5, ws=9, wt=1, k=32, exclude_self=True, region=(0, 3, 3, 47, 1, 44))),
        # two videos, two heads, prod, k 1, half precision
        ((2, 3, 6, 29, 40), torch.float16, 0.0, dict(ps=3, ws=5, wt=1, k=1, nheads=2, dist="prod")),
        # whole-pixel flows tens of pixels apart within a tile: windows staged in runs
        ((1, 3, 3, 40, 60), torch.float32, 30.0, dict(ps=7, ws=7, wt=1, k=5, itype="int")),
        # bfloat16, pt 3 with one channel (3 frames x channels), ps 7, k 17
        ((1, 4, 1, 33, 35), torch.bfloat16, 2.0, dict(ps=7, pt=3, ws=9, wt=1, k=17, itype="int",
                                                    exclude_self=True)),
        # four grey levels: many equal distances, so the lists' (distance, id) order decides
        ((1, 5, 3, 30, 70), torch.float32, -4.0, dict(ps=5, ws=11, wt=2, k=12)),
    ],
)
def test_the_sliding_kernels_lists_change_no_bit(shape, dtype, flow_amp, kw, monkeypatch):
    """CUDA's sliding kernel of whole-pixel grids with the lists kept by the warps that sum the
    distances (the default) or by the block's threads (``NAPARI_STNLS_CUDA_SLIDE_WARP=0``), and
    the warps' kernel visiting the offsets centre-first (the default) or in plain order
    (``NAPARI_STNLS_CUDA_SLIDE_ORDER=0``), each lane inserting its own distances (the default)
    or the warp's lanes sharing them in rounds by rank (``NAPARI_STNLS_CUDA_SLIDE_BAL=1``):
    the same bits, and the float64 reference's
    neighbours. A negative ``flow_amp`` quantises the video to that many levels instead."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(H * W + C)
    v = torch.rand(shape, generator=gen).to(dtype)
    quantised = flow_amp < 0
    if quantised:
        v = (v * -flow_amp).floor() / -flow_amp
        flow_amp = 0.0
    flows = None
    if flow_amp:
        flows = tuple(_whole_pixel((torch.rand(B, T, 2, H, W, generator=gen) * 2 - 1) * flow_amp)
                      for _ in range(2))
    kw = dict(kw, region=kw.get("region", (0, T, 0, H, 0, W)))
    fd = None if flows is None else tuple(f.cuda() for f in flows)
    monkeypatch.setenv("NAPARI_STNLS_CUDA_SLIDE_WARP", "0")
    d0, i0 = search(v.cuda(), v.cuda(), flows=fd, backend="cuda", **kw)
    monkeypatch.setenv("NAPARI_STNLS_CUDA_SLIDE_WARP", "1")
    for order in ("0", "1"):
        for bal in ("0", "1"):
            monkeypatch.setenv("NAPARI_STNLS_CUDA_SLIDE_ORDER", order)
            monkeypatch.setenv("NAPARI_STNLS_CUDA_SLIDE_BAL", bal)
            d1, i1 = search(v.cuda(), v.cuda(), flows=fd, backend="cuda", **kw)
            assert torch.equal(i1, i0) and torch.equal(d1, d0), (order, bal)
    assert_rows_match_reference(d1, i1, v, flows, kw, rtol=1e-5, atol=1e-4,
                                min_untied=0.0 if quantised else 0.9 if kw["k"] < 32 else 0.5)
