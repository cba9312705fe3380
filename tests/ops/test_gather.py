"""gather / scatter: oracle, adjointness, consistency with search, gradients, bad input."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch

from napari_stnls.ops import gather, scatter, search


def _case(seed, device="cpu"):
    r = np.random.default_rng(200 + seed)
    nheads = int(r.choice([1, 2]))
    B, T, C = int(r.integers(1, 3)), int(r.integers(1, 4)), nheads * int(r.integers(1, 3))
    H, W = int(r.integers(2, 9)), int(r.integers(2, 9))
    Q, K = int(r.integers(1, 5)), int(r.integers(1, 4))
    kw = dict(ps=int(r.integers(1, 5)), pt=int(r.integers(1, 3)), dilation=int(r.integers(1, 3)))
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (B, nheads, Q, K), generator=gen)
    if r.integers(0, 2):
        y = torch.randint(0, H, (B, nheads, Q, K), generator=gen)
        x = torch.randint(0, W, (B, nheads, Q, K), generator=gen)
        inds = torch.stack([t, y, x], -1).to(torch.int64 if r.integers(0, 2) else torch.int32)
    else:
        y = torch.rand(B, nheads, Q, K, generator=gen, dtype=torch.float64) * (H - 1)
        x = torch.rand(B, nheads, Q, K, generator=gen, dtype=torch.float64) * (W - 1)
        inds = torch.stack([t.double(), y, x], -1)
    v = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64)
    return v.to(device), inds.to(device), kw


@pytest.mark.parametrize("seed", range(30))
def test_gather_and_scatter_match_oracle(seed, device):
    v, inds, kw = _case(seed, device)
    p = gather(v, inds, **kw)
    ref = oracle.gather(v.cpu().numpy(), inds.cpu().numpy().astype(np.float64), **kw)
    np.testing.assert_allclose(p.cpu().numpy(), ref, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(seed)
    pr = torch.rand(p.shape, generator=gen, dtype=torch.float64).to(device)
    w = torch.rand(inds.shape[:4], generator=gen, dtype=torch.float64).to(device)
    for weights in (None, w):
        out, counts = scatter(pr, inds, shape=v.shape, weights=weights, **kw)
        ro, rc = oracle.scatter(pr.cpu().numpy(), inds.cpu().numpy().astype(np.float64), v.shape,
                                weights=None if weights is None else weights.cpu().numpy(), **kw)
        np.testing.assert_allclose(out.cpu().numpy(), ro, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(counts.cpu().numpy(), rc, rtol=1e-12, atol=1e-12)
    # adjoint identity <scatter(p), x> == <p, gather(x)>
    torch.testing.assert_close((scatter(pr, inds, shape=v.shape, **kw)[0] * v).sum(), (pr * p).sum())


def test_gathered_patches_are_the_ones_search_compared():
    gen = torch.Generator().manual_seed(11)
    q = torch.rand(1, 3, 4, 9, 9, generator=gen, dtype=torch.float64)
    k = torch.rand(1, 3, 4, 9, 9, generator=gen, dtype=torch.float64)
    flows = (0.8 * torch.randn(1, 3, 2, 9, 9, generator=gen, dtype=torch.float64),
             0.8 * torch.randn(1, 3, 2, 9, 9, generator=gen, dtype=torch.float64))
    kw = dict(ps=3, pt=2, dilation=2)
    d, i = search(q, k, ws=3, wt=1, k=4, nheads=2, flows=flows, stride1=0.5, **kw)
    from napari_stnls.ops import query_coords

    c = query_coords(q.shape).double().view(1, 1, -1, 1, 3).expand(1, 2, -1, 1, 3)
    qp = gather(q, c, **kw)  # (1, 2, Q, 1, ...)
    kp = gather(k, i, **kw)
    recomputed = ((qp - kp) ** 2).flatten(4).sum(-1)
    torch.testing.assert_close(recomputed, d, rtol=1e-12, atol=1e-12)


def test_scatter_of_gather_normalises_back():
    """Every pixel covered by whole-pixel patches: video/counts recovers the video exactly."""
    gen = torch.Generator().manual_seed(12)
    v = torch.rand(1, 2, 3, 6, 6, generator=gen, dtype=torch.float64)
    _, i = search(v, v, ps=3, ws=3, wt=1, k=3, itype="int")
    agg, counts = scatter(gather(v, i, ps=3), i, shape=v.shape, ps=3)
    assert counts.shape == (1, 2, 1, 6, 6)
    # each value goes back to the pixel it was read from, so the normalised aggregate is v itself
    torch.testing.assert_close(agg / counts, v)
    # with heads, counts has one channel per head
    _, i2 = search(v[:, :, :2], v[:, :, :2], ps=3, ws=3, wt=1, k=3, nheads=2)
    _, c2 = scatter(gather(v[:, :, :2], i2, ps=3), i2, shape=(1, 2, 2, 6, 6), ps=3)
    assert c2.shape == (1, 2, 2, 6, 6)


def test_scatter_out_accumulates_in_place():
    v, inds, kw = _case(3)
    p = gather(v, inds, **kw)
    once, c1 = scatter(p, inds, shape=v.shape, **kw)
    buf = (torch.zeros_like(once), torch.zeros_like(c1))
    for _ in range(2):
        res = scatter(p, inds, out=buf, **kw)
    assert res[0] is buf[0] and res[1] is buf[1]
    torch.testing.assert_close(buf[0], 2 * once)
    torch.testing.assert_close(buf[1], 2 * c1)


def test_gradcheck_gather_and_scatter():
    gen = torch.Generator().manual_seed(13)
    v = torch.rand(1, 2, 2, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    # fractional positions away from whole pixels (bilinear is piecewise linear)
    y = 0.2 + 0.6 * torch.rand(1, 2, 3, 2, generator=gen, dtype=torch.float64) + torch.tensor([1.0, 3.0])
    x = 0.2 + 0.6 * torch.rand(1, 2, 3, 2, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 4.0])
    t = torch.randint(0, 2, (1, 2, 3, 2), generator=gen).double()
    yx = torch.stack([y, x], -1).requires_grad_()
    kw = dict(ps=3, pt=2, dilation=1)
    # t is integer-valued (no gradient); the gradient to positions is checked on (y, x)
    assert torch.autograd.gradcheck(lambda v, yx: gather(v, torch.cat([t[..., None], yx], -1), **kw), (v, yx))
    pos = torch.cat([t[..., None], yx.detach()], -1)
    patches = gather(v, pos, **kw).detach().requires_grad_()
    w = torch.rand(1, 2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda pa, w: scatter(pa, pos.detach(), shape=v.shape, weights=w, **kw), (patches, w)
    )


def test_inputs_are_not_modified():
    v, inds, kw = _case(4)
    vc, ic = v.clone(), inds.clone()
    p = gather(v, inds, **kw)
    pc = p.clone()
    scatter(p, inds, shape=v.shape, **kw)
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
