"""gather / scatter: oracle, adjointness, consistency with search, gradients, bad input."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch

from napari_stnls.ops import aggregate, gather, scatter, search


def _random_inds(r, gen, shape, T, H, W):
    """Positions (shape..., 3) inside a (T, H, W) video: int64 or int32 whole pixels, or
    float64 sub-pixel rows and columns (r picks)."""
    t = torch.randint(0, T, shape, generator=gen)
    if r.integers(0, 2):
        y = torch.randint(0, H, shape, generator=gen)
        x = torch.randint(0, W, shape, generator=gen)
        return torch.stack([t, y, x], -1).to(torch.int64 if r.integers(0, 2) else torch.int32)
    y = torch.rand(*shape, generator=gen, dtype=torch.float64) * (H - 1)
    x = torch.rand(*shape, generator=gen, dtype=torch.float64) * (W - 1)
    return torch.stack([t.double(), y, x], -1)


def _case(seed, device="cpu"):
    r = np.random.default_rng(200 + seed)
    nheads = int(r.choice([1, 2]))
    B, T, C = int(r.integers(1, 3)), int(r.integers(1, 4)), nheads * int(r.integers(1, 3))
    H, W = int(r.integers(2, 9)), int(r.integers(2, 9))
    Q, K = int(r.integers(1, 5)), int(r.integers(1, 4))
    kw = dict(ps=int(r.integers(1, 5)), pt=int(r.integers(1, 3)), dilation=int(r.integers(1, 3)))
    gen = torch.Generator().manual_seed(seed)
    inds = _random_inds(r, gen, (B, nheads, Q, K), T, H, W)
    v = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64)
    return v.to(device), inds.to(device), kw


@pytest.mark.parametrize("seed", range(30))
def test_gather_and_scatter_match_oracle(seed, impl):
    backend, device = impl
    v, inds, kw = _case(seed, device)
    kw["backend"] = backend
    ref_kw = {k: kw[k] for k in ("ps", "pt", "dilation")}
    p = gather(v, inds, **kw)
    ref = oracle.gather(v.cpu().numpy(), inds.cpu().numpy().astype(np.float64), **ref_kw)
    np.testing.assert_allclose(p.cpu().numpy(), ref, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(seed)
    pr = torch.rand(p.shape, generator=gen, dtype=torch.float64).to(device)
    w = torch.rand(inds.shape[:4], generator=gen, dtype=torch.float64).to(device)
    for weights in (None, w):
        out, counts = scatter(pr, inds, shape=v.shape, weights=weights, **kw)
        ro, rc = oracle.scatter(pr.cpu().numpy(), inds.cpu().numpy().astype(np.float64), v.shape,
                                weights=None if weights is None else weights.cpu().numpy(), **ref_kw)
        np.testing.assert_allclose(out.cpu().numpy(), ro, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(counts.cpu().numpy(), rc, rtol=1e-12, atol=1e-12)
    # adjoint identity <scatter(p), x> == <p, gather(x)>
    torch.testing.assert_close((scatter(pr, inds, shape=v.shape, **kw)[0] * v).sum(), (pr * p).sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_matches_float64(seed, dtype, impl):
    """float32 / half videos: close to the float64 reference's result (the compiled kernels
    accumulate in float32; the reference computes in the video's dtype)."""
    backend, device = impl
    v, inds, kw = _case(seed, device)
    if inds.is_floating_point():
        inds = inds.float()
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    p = gather(v.to(dtype), inds, backend=backend, **kw)
    assert p.dtype == dtype
    ref = gather(v.to(dtype).double(), inds, backend="reference", **kw)
    torch.testing.assert_close(p.double(), ref, rtol=tol, atol=tol)
    out, counts = scatter(p, inds, shape=v.shape, backend=backend, **kw)
    assert out.dtype == counts.dtype == dtype
    ro, rc = scatter(p.double(), inds, shape=v.shape, backend="reference", **kw)
    scale = float(ro.abs().max()) + 1
    torch.testing.assert_close(out.double(), ro, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(counts.double(), rc, rtol=tol, atol=tol * scale)


def test_gathered_patches_are_the_ones_search_compared(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(11)
    q = torch.rand(1, 3, 4, 9, 9, generator=gen, dtype=torch.float64).to(device)
    k = torch.rand(1, 3, 4, 9, 9, generator=gen, dtype=torch.float64).to(device)
    flows = (0.8 * torch.randn(1, 3, 2, 9, 9, generator=gen, dtype=torch.float64).to(device),
             0.8 * torch.randn(1, 3, 2, 9, 9, generator=gen, dtype=torch.float64).to(device))
    kw = dict(ps=3, pt=2, dilation=2, backend=backend)
    d, i = search(q, k, ws=3, wt=1, k=4, nheads=2, flows=flows, stride1=0.5, **kw)
    from napari_stnls.ops import query_coords

    c = query_coords(q.shape, device=device).double().view(1, 1, -1, 1, 3).expand(1, 2, -1, 1, 3)
    qp = gather(q, c, **kw)  # (1, 2, Q, 1, ...)
    kp = gather(k, i, **kw)
    recomputed = ((qp - kp) ** 2).flatten(4).sum(-1)
    torch.testing.assert_close(recomputed, d, rtol=1e-12, atol=1e-12)


def test_scatter_of_gather_normalises_back(impl):
    """Every pixel covered by whole-pixel patches: video/counts recovers the video exactly."""
    backend, device = impl
    gen = torch.Generator().manual_seed(12)
    v = torch.rand(1, 2, 3, 6, 6, generator=gen, dtype=torch.float64).to(device)
    _, i = search(v, v, ps=3, ws=3, wt=1, k=3, itype="int")
    agg, counts = scatter(gather(v, i, ps=3, backend=backend), i, shape=v.shape, ps=3, backend=backend)
    assert counts.shape == (1, 2, 1, 6, 6)
    # each value goes back to the pixel it was read from, so the normalised aggregate is v itself
    torch.testing.assert_close(agg / counts, v)
    # with heads, counts has one channel per head
    _, i2 = search(v[:, :, :2], v[:, :, :2], ps=3, ws=3, wt=1, k=3, nheads=2)
    _, c2 = scatter(gather(v[:, :, :2], i2, ps=3, backend=backend), i2, shape=(1, 2, 2, 6, 6), ps=3,
                    backend=backend)
    assert c2.shape == (1, 2, 2, 6, 6)


def test_scatter_out_accumulates_in_place(impl):
    backend, device = impl
    v, inds, kw = _case(3, device)
    kw["backend"] = backend
    p = gather(v, inds, **kw)
    once, c1 = scatter(p, inds, shape=v.shape, **kw)
    buf = (torch.zeros_like(once), torch.zeros_like(c1))
    for _ in range(2):
        res = scatter(p, inds, out=buf, **kw)
    assert res[0] is buf[0] and res[1] is buf[1]
    torch.testing.assert_close(buf[0], 2 * once)
    torch.testing.assert_close(buf[1], 2 * c1)


def _grad_case(device, nheads=2):
    gen = torch.Generator().manual_seed(13)
    v = torch.rand(1, 2, 2, 6, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    # fractional positions away from whole pixels (bilinear is piecewise linear); some near the
    # border so that mirrored pixels are read
    y = 0.2 + 0.6 * torch.rand(1, nheads, 3, 2, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 4.0])
    x = 0.2 + 0.6 * torch.rand(1, nheads, 3, 2, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 4.0])
    t = torch.randint(0, 2, (1, nheads, 3, 2), generator=gen).double().to(device)
    yx = torch.stack([y, x], -1).to(device).requires_grad_()
    return v, t, yx, gen


@pytest.mark.parametrize("nheads", [1, 2])
def test_gradcheck_gather_and_scatter(nheads, impl):
    backend, device = impl
    v, t, yx, gen = _grad_case(device, nheads)
    kw = dict(ps=3, pt=2, dilation=1, backend=backend)
    # CUDA scatters add atomically: a backward run may differ from another in the last bits
    nd = 1e-12 if device.type == "cuda" else 0.0
    # t is integer-valued (no gradient); the gradient to positions is checked on (y, x)
    assert torch.autograd.gradcheck(lambda v, yx: gather(v, torch.cat([t[..., None], yx], -1), **kw), (v, yx),
                                    nondet_tol=nd)
    pos = torch.cat([t[..., None], yx.detach()], -1)
    patches = gather(v, pos, **kw).detach().requires_grad_()
    w = torch.rand(1, nheads, 3, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda pa, w, yx: scatter(pa, torch.cat([t[..., None], yx], -1), shape=v.shape, weights=w, **kw),
        (patches, w, yx), nondet_tol=nd,
    )
    assert torch.autograd.gradcheck(
        lambda pa, yx: scatter(pa, torch.cat([t[..., None], yx], -1), shape=v.shape, **kw)[0],
        (patches, yx), nondet_tol=nd,
    )


def test_gradients_match_the_reference(compiled):
    """Whole and fractional positions (the position gradient is the one-sided derivative
    towards the next pixel at whole pixels, as in the reference)."""
    backend, device = compiled
    v, t, yx, gen = _grad_case(device)
    yx = yx.detach().clone()
    yx[0, 0] = yx[0, 0].round()
    kw = dict(ps=3, pt=2, dilation=2)
    w = torch.rand(1, 2, 3, 2, generator=gen, dtype=torch.float64).to(device)
    grads = []
    for b in ("reference", backend):
        vv, pp, ww = (a.detach().clone().requires_grad_() for a in (v, yx, w))
        pos = torch.cat([t[..., None], pp], -1)
        p = gather(vv, pos, backend=b, **kw)
        out, counts = scatter(p * p, pos, shape=v.shape, weights=ww, backend=b, **kw)
        ramp = torch.arange(72.0, device=device).view(1, 2, 1, 6, 6)
        ((out * out).sum() + (counts * ramp).sum()).backward()
        grads.append((vv.grad, pp.grad, ww.grad))
    for g, gr in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-10)


def test_cpu_gradients_are_deterministic():
    """Scatters on the CPU are race-free: two runs, and runs with other thread counts, give
    bit-identical results and gradients."""
    gen = torch.Generator().manual_seed(14)
    v = torch.rand(1, 3, 4, 24, 24, generator=gen)
    inds = torch.stack([torch.randint(0, 3, (1, 2, 200, 5), generator=gen).float(),
                        23 * torch.rand(1, 2, 200, 5, generator=gen),
                        23 * torch.rand(1, 2, 200, 5, generator=gen)], -1)
    w = torch.rand(1, 2, 200, 5, generator=gen)

    def run():
        vv, ii, ww = (a.clone().requires_grad_() for a in (v, inds, w))
        p = gather(vv, ii, ps=5, pt=2, backend="cpu")
        out, counts = scatter(p.sin(), ii, shape=v.shape, weights=ww, ps=5, pt=2, backend="cpu")
        (out.square().sum() + counts.square().sum()).backward()
        return [out, counts, vv.grad, ii.grad, ww.grad]

    first = run()
    threads = torch.get_num_threads()
    try:
        for n in (threads, 1, 3):
            torch.set_num_threads(n)
            for a, b in zip(run(), first, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_compiled_limits(impl):
    backend, device = impl
    v = torch.rand(1, 9, 1, 5, 5, device=device)
    inds = torch.tensor([[[[[0, 2, 2]]]]], device=device)
    if backend == "reference":
        assert gather(v, inds, ps=3, pt=9, backend=backend).shape == (1, 1, 1, 1, 9, 1, 3, 3)
        return
    with pytest.raises(ValueError, match="ps <= 32 and pt <= 8"):
        gather(v, inds, ps=3, pt=9, backend=backend)
    with pytest.raises(ValueError, match="ps <= 32 and pt <= 8"):
        scatter(torch.zeros(1, 1, 1, 1, 1, 1, 33, 33, device=device), inds, shape=v.shape, ps=33,
                backend=backend)
    # backend=None falls back to the reference beyond the limits
    p = gather(v, inds, ps=33)
    torch.testing.assert_close(p, gather(v, inds, ps=33, backend="reference"))


def test_inputs_are_not_modified(impl):
    backend, device = impl
    v, inds, kw = _case(4, device)
    vc, ic = v.clone(), inds.clone()
    p = gather(v, inds, backend=backend, **kw)
    pc = p.clone()
    scatter(p, inds, shape=v.shape, backend=backend, **kw)
    assert torch.equal(v, vc) and torch.equal(inds, ic) and torch.equal(p, pc)


V = torch.zeros(1, 2, 2, 5, 5)
I = torch.tensor([[[[[0, 1, 1]]]]])  # (1, 1, 1, 1, 3)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: gather(V[0], I, ps=3), ValueError, "video: expected a video"),
        (lambda: gather(V.long(), I, ps=3), TypeError, "video: expected a floating-point"),
        (lambda: gather(V, I[0], ps=3), ValueError, "inds: expected shape"),
        (lambda: gather(V, I[..., :2], ps=3), ValueError, "inds: expected shape"),
        (lambda: gather(V, torch.cat([I, I]), ps=3), ValueError, "inds: batch size"),
        (lambda: gather(V, I.expand(1, 3, 1, 1, 3), ps=3), ValueError, "nheads: must divide"),
        (lambda: gather(V, torch.tensor([[[[[2, 1, 1]]]]]), ps=3), ValueError, "inds: position"),
        (lambda: gather(V, torch.tensor([[[[[0, -1, 1]]]]]), ps=3), ValueError, "outside the video"),
        (lambda: gather(V, torch.tensor([[[[[0, 1, 4.5]]]]]), ps=3), ValueError, "outside the video"),
        (lambda: gather(V, torch.tensor([[[[[0.5, 1, 1]]]]]), ps=3), ValueError, "t column"),
        (lambda: gather(V, torch.tensor([[[[[0, float("nan"), 1]]]]]), ps=3), ValueError, "NaN"),
        (lambda: gather(V, I.bool(), ps=3), TypeError, "inds: expected an integer or floating"),
        (lambda: gather(V, I, ps=0), ValueError, "ps"),
        (lambda: gather(V, I, ps=3, pt=0), ValueError, "pt"),
        (lambda: gather(V, "I", ps=3), TypeError, "inds: expected a torch.Tensor"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3), I, ps=3), ValueError, "exactly one"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 2), I, shape=V.shape, ps=3), ValueError,
         "patches: expected shape"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3).long(), I, shape=V.shape, ps=3), TypeError,
         "patches: expected a floating"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3), I, shape=V.shape, ps=3, weights=torch.ones(2)),
         ValueError, "weights: expected shape"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3), I, out=V, ps=3), TypeError, "out: expected"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3), I, out=(V, torch.zeros(1, 2, 2, 5, 5)), ps=3),
         ValueError, "counts"),
        (lambda: scatter(torch.zeros(1, 1, 1, 1, 1, 2, 3, 3), I, shape=(1, 2, 5), ps=3), ValueError, "shape"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _other_positions(inds, seed):
    """Write positions for aggregate: inds shuffled over K and Q, int or float like inds."""
    gen = torch.Generator().manual_seed(1000 + seed)
    perm = torch.randperm(inds.shape[2], generator=gen)
    return inds[:, :, perm].flip(3).contiguous()


@pytest.mark.parametrize("seed", range(20))
def test_aggregate_matches_oracle_and_gather_then_scatter(seed, impl):
    """aggregate(v, inds, at) == scatter(gather(v, inds), at): against the oracle on every
    backend, and against the same backend's gather then scatter (bit for bit on the CPU)."""
    backend, device = impl
    v, inds, kw = _case(seed, device)
    kw["backend"] = backend
    ref_kw = {k: kw[k] for k in ("ps", "pt", "dilation")}
    at = _other_positions(inds, seed)
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(inds.shape[:4], generator=gen, dtype=torch.float64).to(device)
    for weights in (None, w):
        out, counts = aggregate(v, inds, at, weights=weights, **kw)
        rp = oracle.gather(v.cpu().numpy(), inds.cpu().numpy().astype(np.float64), **ref_kw)
        ro, rc = oracle.scatter(rp, at.cpu().numpy().astype(np.float64), v.shape,
                                weights=None if weights is None else weights.cpu().numpy(), **ref_kw)
        np.testing.assert_allclose(out.cpu().numpy(), ro, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(counts.cpu().numpy(), rc, rtol=1e-12, atol=1e-12)
        o2, c2 = scatter(gather(v, inds, **kw), at, shape=v.shape, weights=weights, **kw)
        if device == "cpu":
            assert torch.equal(out, o2) and torch.equal(counts, c2)
        else:  # CUDA adds with atomics: the order of the additions varies
            torch.testing.assert_close(out, o2, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(counts, c2, rtol=1e-12, atol=1e-12)
    # at defaults to inds; out accumulates in place
    acc = (torch.ones_like(v), torch.ones_like(counts))
    res = aggregate(v, inds, out=acc, **kw)
    assert res[0] is acc[0] and res[1] is acc[1]
    o3, c3 = scatter(gather(v, inds, **kw), inds, shape=v.shape, **kw)
    torch.testing.assert_close(acc[0], o3 + 1, rtol=0, atol=1e-12)
    torch.testing.assert_close(acc[1], c3 + 1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_aggregate_low_precision_is_bit_identical_to_gather_then_scatter(dtype):
    """The fused CPU kernel rounds each read value to the video's dtype, as gather stores it."""
    gen = torch.Generator().manual_seed(5)
    v = torch.rand(1, 3, 4, 16, 17, generator=gen).to(dtype)
    d, i = search(v.float(), v.float(), ps=3, ws=5, wt=1, k=4, nheads=2)
    w = torch.softmax(-d, -1)
    at = _other_positions(i, 5)
    a = aggregate(v, i, at, weights=w, ps=3)
    b = scatter(gather(v, i, ps=3), at, shape=v.shape, weights=w, ps=3)
    assert a[0].dtype == dtype
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_aggregate_gradients_compose_gather_and_scatter():
    """With a gradient needed, aggregate is gather then scatter: gradcheck w.r.t. the video,
    the weights and sub-pixel positions."""
    gen = torch.Generator().manual_seed(6)
    v = torch.rand(1, 2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 2, (1, 1, 3, 3, 1), generator=gen).double()
    yx = (torch.rand(1, 1, 3, 3, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1
          + torch.randint(0, 5, (1, 1, 3, 3, 2), generator=gen)).requires_grad_()
    at = torch.randint(0, 6, (1, 1, 3, 3, 3), generator=gen)
    at[..., 0] = 1
    w = torch.rand(1, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda v, yx, w: aggregate(v, torch.cat([t, yx], -1), at, weights=w, ps=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v, yx, w))


def test_aggregate_without_gradients_never_stores_the_patches(monkeypatch):
    """On the CPU with no gradient needed, aggregate runs the fused kernel, not gather; with a
    gradient, the compiled gather then scatter (backend None or "cpu"), or the reference's."""
    import sys

    G = sys.modules["napari_stnls.ops.gather"]  # the module (the package exports the function)
    gathered = []
    for name, module in (("_gather_compiled", G), ("gather", G._reference)):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name: gathered.append(name) or real(*a))
    v = torch.rand(1, 2, 3, 9, 9)
    inds = torch.randint(0, 2, (1, 1, 4, 2, 3))
    with torch.no_grad():
        G.aggregate(v.requires_grad_(), inds, ps=3)
    G.aggregate(v.detach(), inds, ps=3, backend="cpu")
    G.aggregate(v.detach(), inds, "queries", region=(0, 1, 0, 2, 0, 2), ps=3)
    assert gathered == []
    G.aggregate(v, inds, ps=3)  # the video requires grad: composition
    G.aggregate(v, inds, ps=3, backend="cpu")
    G.aggregate(v.detach(), inds, ps=3, backend="reference")
    assert gathered == ["_gather_compiled", "_gather_compiled", "gather"]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(at=torch.zeros(1, 1, 4, 3, 3, dtype=torch.long)), ValueError, "at: expected the shape of inds"),
        (dict(at=torch.zeros(1, 1, 4, 2, 2, dtype=torch.long)), ValueError, r"at: expected shape \(B,"),
        (dict(at=torch.full((1, 1, 4, 2, 3), 20)), ValueError, "at:"),
        (dict(weights=torch.ones(1, 1, 4)), ValueError, r"weights: expected shape \(B, nheads, Q, K\)"),
        (dict(out=(torch.zeros(1, 2, 3, 9, 9),)), TypeError, "out: expected a"),
        (dict(out=(torch.zeros(1, 2, 3, 9, 8), torch.zeros(1, 2, 1, 9, 9))), ValueError, r"out\[0\]"),
        (dict(out=(torch.zeros(1, 2, 3, 9, 9), torch.zeros(1, 2, 3, 9, 9))), ValueError, r"out\[1\]"),
        (dict(ps=0), ValueError, "ps"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_aggregate_bad_input(kwargs, exc, match):
    v = torch.rand(1, 2, 3, 9, 9)
    inds = torch.randint(0, 2, (1, 1, 4, 2, 3))
    kw = dict(ps=3)
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        aggregate(v, inds, **kw)


def test_aggregate_leaves_its_inputs_untouched():
    gen = torch.Generator().manual_seed(9)
    v = torch.rand(1, 3, 2, 10, 11, generator=gen)
    inds = torch.rand(1, 2, 5, 3, 3, generator=gen) * torch.tensor([0.0, 9.0, 10.0])
    at = torch.randint(0, 3, (1, 2, 5, 3, 3), generator=gen)
    w = torch.rand(1, 2, 5, 3, generator=gen)
    copies = [x.clone() for x in (v, inds, at, w)]
    for backend in ("reference", "cpu"):
        aggregate(v, inds, at, weights=w, ps=3, backend=backend)
        # the query grid's form: the 5 queries of one row
        aggregate(v, inds, "queries", region=(0, 1, 4, 5, 3, 8), weights=w, ps=3, backend=backend)
    for x, c in zip((v, inds, at, w), copies, strict=True):
        assert torch.equal(x, c)


def _grid_case(seed, device="cpu"):
    """A random video, query grid (region, stride0) and neighbours of every grid query, some
    videos smaller than a patch (positions mirrored more than once)."""
    r = np.random.default_rng(500 + seed)
    nheads = int(r.choice([1, 2]))
    B, T, C = int(r.integers(1, 3)), int(r.integers(1, 4)), nheads * int(r.integers(1, 4))
    H, W = int(r.integers(2, 12)), int(r.integers(2, 12))
    kw = dict(ps=int(r.integers(1, 8)), pt=int(r.integers(1, 3)), dilation=int(r.integers(1, 3)))
    t0 = int(r.integers(0, T)); y0 = int(r.integers(0, H)); x0 = int(r.integers(0, W))  # noqa: E702
    region = (t0, int(r.integers(t0 + 1, T + 1)), y0, int(r.integers(y0 + 1, H + 1)),
              x0, int(r.integers(x0 + 1, W + 1)))
    stride0 = int(r.integers(1, 4))
    Q = int(oracle.query_coords((B, T, C, H, W), region, stride0).shape[0])
    K = int(r.integers(1, 4))
    gen = torch.Generator().manual_seed(seed)
    inds = _random_inds(r, gen, (B, nheads, Q, K), T, H, W)
    v = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.rand(B, nheads, Q, K, generator=gen, dtype=torch.float64)
    return v.to(device), inds.to(device), w.to(device), dict(kw, region=region, stride0=stride0)


def _grid_oracle(v, inds, weights, kw):
    """scatter(gather(v, inds), at) with at = each query's grid position, from the oracle."""
    pk = {k: kw[k] for k in ("ps", "pt", "dilation")}
    inds = inds.cpu().numpy().astype(np.float64)
    B, nh, Q, K, _ = inds.shape
    q = oracle.query_coords(v.shape, kw["region"], kw["stride0"]).astype(np.float64)
    at = np.broadcast_to(q[None, None, :, None, :], (B, nh, Q, K, 3))
    p = oracle.gather(v.cpu().numpy(), inds, **pk)
    return oracle.scatter(p, at, v.shape, weights=None if weights is None else weights.cpu().numpy(), **pk)


@pytest.mark.parametrize("seed", range(40))
def test_aggregate_at_the_query_grid_matches_oracle(seed, impl):
    """at='queries': every pixel gets the patch pixels of the grid queries that mirror onto it
    (the fold-form kernels), as the oracle's gather then scatter at the queries' positions;
    the compiled kernels give the same bits on a second run; out accumulates."""
    backend, device = impl
    v, inds, w, kw = _grid_case(seed, device)
    for weights in (None, w):
        out, counts = aggregate(v, inds, "queries", weights=weights, backend=backend, **kw)
        ro, rc = _grid_oracle(v, inds, weights, kw)
        np.testing.assert_allclose(out.cpu().numpy(), ro, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(counts.cpu().numpy(), rc, rtol=1e-12, atol=1e-12)
        if backend != "reference":  # (the reference adds with index_add_: atomic on CUDA)
            again = aggregate(v, inds, "queries", weights=weights, backend=backend, **kw)
            assert torch.equal(again[0], out) and torch.equal(again[1], counts)
    acc = (torch.ones_like(v), torch.ones_like(counts))
    res = aggregate(v, inds, "queries", weights=w, out=acc, backend=backend, **kw)
    assert res[0] is acc[0] and res[1] is acc[1]
    torch.testing.assert_close(acc[0], out + 1, rtol=0, atol=1e-12)
    torch.testing.assert_close(acc[1], counts + 1, rtol=0, atol=1e-12)


def test_aggregate_at_the_query_grid_is_the_same_bits_for_any_thread_count():
    """The CPU fold-form kernel sums each pixel in one fixed order."""
    v, inds, w, kw = _grid_case(3)
    v = torch.rand(2, 3, 6, 40, 37, dtype=torch.float32)
    d, i = search(v, v, ps=5, ws=7, wt=1, k=6, nheads=2, stride0=2)
    w = torch.exp(-d)
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(aggregate(v, i, "queries", weights=w, ps=5, stride0=2, backend="cpu"))
    finally:
        torch.set_num_threads(before)
    for o, c in runs[1:]:
        assert torch.equal(o, runs[0][0]) and torch.equal(c, runs[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_aggregate_at_the_query_grid_in_low_precision(dtype, device):
    """Half and single precision videos on the compiled kernels: close to float64, in the
    video's dtype; integer and sub-pixel positions of searches on the sample video (a real
    photograph moving), without and with its exact flow."""
    from napari_stnls.data import sample_video

    _, v, flows = sample_video(3, (48, 56)).to_torch()
    region = (0, 3, 4, 40, 6, 50)
    for fl in (None, flows):
        d, i = search(v, v, ps=5, ws=5, wt=1, k=5, region=region, flows=fl)
        w = torch.exp(-d / d.mean())
        ref = aggregate(v.double(), i, "queries", weights=w.double(), ps=5, region=region,
                        backend="reference")
        got = aggregate(v.to(device, dtype), i.to(device), "queries", weights=w.to(device),
                        ps=5, region=region)
        assert got[0].dtype == dtype
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        scale = ref[0].abs().max()
        torch.testing.assert_close(got[0].double().cpu() / scale, ref[0] / scale, rtol=0, atol=tol)
        torch.testing.assert_close(got[1].double().cpu() / ref[1].max(), ref[1] / ref[1].max(),
                                   rtol=0, atol=tol)


@pytest.mark.parametrize("channels,nheads", [(1, 1), (3, 1), (5, 1), (8, 2), (6, 2)])
def test_aggregate_at_the_query_grid_float32_channels_and_heads(channels, nheads, device):
    """Single precision on frames larger than the patches (the kernels' contiguous and
    vectorised paths, and mirrored patches at the borders): one or more heads, channel counts
    that are and are not multiples of 4, whole-pixel and sub-pixel neighbours (a random flow:
    positions with fractional rows, columns, both or neither), dense and strided grids; close
    to float64 from the reference."""
    gen = torch.Generator().manual_seed(channels * 10 + nheads)
    v = torch.rand(1, 3, channels, 21, 27, generator=gen)
    fl = torch.randn(1, 3, 2, 21, 27, generator=gen) * 2.3
    fl[..., :5, :] = fl[..., :5, :].round()  # whole-pixel flow on some rows
    fl[..., 0, 5:9, :] = fl[..., 0, 5:9, :].round()  # fractional rows only
    fl[..., 1, 9:13, :] = fl[..., 1, 9:13, :].round()  # fractional columns only
    for stride0 in (1, 2):
        for flows, itype in ((None, "int"), ((fl, -fl), "float")):
            d, i = search(v, v, ps=7, ws=7, wt=1, k=6, stride0=stride0, nheads=nheads, itype=itype,
                          flows=flows, backend="cpu")
            w = torch.exp(-d / d.mean())
            for weights in (None, w):
                ref = aggregate(v.double(), i, "queries", ps=7, stride0=stride0, backend="reference",
                                weights=None if weights is None else weights.double())
                got = aggregate(v.to(device), i.to(device), "queries", ps=7, stride0=stride0,
                                weights=None if weights is None else weights.to(device))
                assert got[0].dtype == torch.float32
                for g, r in zip(got, ref, strict=True):
                    scale = r.abs().max()
                    torch.testing.assert_close(g.double().cpu() / scale, r / scale, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "ps,C,K,region,flow,weighted",
    [
        (7, 3, 10, None, False, True),  # workload A's aggregate: whole-pixel neighbours
        (7, 3, 6, None, True, True),  # sub-pixel neighbours (fractional rows, columns, both)
        (5, 1, 4, (1, 3, 9, 30, 2, 41), True, False),  # a region off the borders, unweighted
        (3, 4, 3, (0, 2, 0, 37, 11, 45), False, True),  # a region along two borders, 4 channels
        (7, 2, 17, (0, 3, 0, 12, 0, 9), True, True),  # a region smaller than the border strips
    ],
)
def test_aggregate_rows_kernel_gives_the_grid4_bits(ps, C, K, region, flow, weighted, monkeypatch):
    """CUDA's aggregate at the query grid with the pixels no mirrored patch pixel reaches sent
    to the row-walking kernel (``NAPARI_STNLS_CUDA_AGG_ROWS=1``) gives the bits of the
    per-pixel kernel alone (``=0``), and the float64 reference's sums. ``=2`` leaves the
    border strips out: the pixels it writes are the per-pixel kernel's bits, so the row
    kernel wrote them, and the rest are zero."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(ps * 100 + C * 10 + K)
    B, T, H, W = 2, 3, 37, 45
    v = torch.rand(B, T, C, H, W, generator=gen)
    flows = None
    if flow:
        fl = torch.randn(B, T, 2, H, W, generator=gen) * 2.3
        fl[..., :9, :] = fl[..., :9, :].round()  # whole-pixel rows
        fl[..., 0, 9:17, :] = fl[..., 0, 9:17, :].round()  # fractional rows only
        fl[..., 1, 17:25, :] = fl[..., 1, 17:25, :].round()  # fractional columns only
        flows = (fl, -fl)
    kw = dict(ps=ps, region=region)
    d, i = search(v, v, ws=9, wt=1, k=K, flows=flows, backend="cpu", **kw)  # float positions
    w = torch.exp(-d / d.mean()) if weighted else None
    vd, idv, wd = v.cuda(), i.cuda(), None if w is None else w.cuda()
    got = {}
    for mode in "012":
        monkeypatch.setenv("NAPARI_STNLS_CUDA_AGG_ROWS", mode)
        got[mode] = aggregate(vd, idv, "queries", weights=wd, **kw)
    for g1, g0 in zip(got["1"], got["0"], strict=True):
        assert torch.equal(g1, g0)
    r = ps // 2
    inner = torch.zeros(H, W, dtype=torch.bool)
    inner[r + 1:H - 1 - r, r + 1:W - 1 - r] = True
    for g2, g0 in zip(got["2"], got["0"], strict=True):
        g2, g0 = g2.cpu(), g0.cpu()
        assert torch.equal(g2[..., inner], g0[..., inner])
        assert not bool(g2[..., ~inner].any())
        assert bool(g0[..., ~inner].any()) and bool(g0[..., inner].any())
    ref = aggregate(v.double(), i, "queries", weights=None if w is None else w.double(), backend="reference",
                    **kw)
    for g, rf in zip(got["1"], ref, strict=True):
        scale = rf.abs().max()
        torch.testing.assert_close(g.double().cpu() / scale, rf / scale, rtol=0, atol=1e-5)


def test_aggregate_at_the_query_grid_gradients_compose_gather_and_scatter():
    """With a gradient needed, at='queries' composes gather and scatter at the grid."""
    gen = torch.Generator().manual_seed(8)
    v = torch.rand(1, 2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    region, stride0 = (0, 2, 1, 5, 0, 7), 2
    Q = 2 * 2 * 4
    t = torch.randint(0, 2, (1, 1, Q, 2, 1), generator=gen).double()
    yx = (torch.rand(1, 1, Q, 2, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1
          + torch.randint(0, 5, (1, 1, Q, 2, 2), generator=gen)).requires_grad_()
    w = torch.rand(1, 1, Q, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(v, yx, w):
        return aggregate(v, torch.cat([t, yx], -1), "queries", weights=w, ps=3, region=region,
                         stride0=stride0)

    assert torch.autograd.gradcheck(fn, (v, yx, w))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(at="query"), "at: expected a tensor, None or 'queries'"),
        (dict(at="queries", region=(0, 2, 0, 9, 0, 8)), r"inds: expected the 144 queries"),
        (dict(at="queries", stride0=2), r"inds: expected the 50 queries"),
        (dict(at="queries", stride0=0), "stride0"),
        (dict(at="queries", region=(0, 3, 0, 9, 0, 9)), "region"),
        (dict(region=(0, 2, 0, 9, 0, 9)), "region, stride0: only with at='queries'"),
        (dict(stride0=2), "region, stride0: only with at='queries'"),
    ],
)
def test_aggregate_at_the_query_grid_bad_input(kwargs, match):
    v = torch.rand(1, 2, 3, 9, 9)
    inds = torch.randint(0, 2, (1, 1, 162, 2, 3))
    with pytest.raises(ValueError, match=match):
        aggregate(v, inds, ps=3, **kwargs)


def test_aggregate_check_inds_reads_positions_only_when_asked():
    """``check_inds=True`` (the default) rejects a position outside the video; False leaves
    only the value checks out (the same sums for valid positions; shapes still checked)."""
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(1, 2, 3, 9, 9, generator=gen)
    inds = torch.cat([torch.randint(0, 2, (1, 1, 162, 2, 1), generator=gen),
                      torch.rand(1, 1, 162, 2, 2, generator=gen) * 8], -1)
    w = torch.rand(1, 1, 162, 2, generator=gen)
    want = aggregate(v, inds, "queries", weights=w, ps=3)
    got = aggregate(v, inds, "queries", weights=w, ps=3, check_inds=False)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    bad = inds.clone()
    bad[0, 0, 5, 1, 2] = 8.5
    with pytest.raises(ValueError, match="outside the video"):
        aggregate(v, bad, "queries", ps=3)
    with pytest.raises(ValueError, match="inds: expected shape"):
        aggregate(v, inds[..., :2], "queries", ps=3, check_inds=False)
    with pytest.raises(TypeError, match="check_inds: expected True or False"):
        aggregate(v, inds, "queries", ps=3, check_inds=1)
