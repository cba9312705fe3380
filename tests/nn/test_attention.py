"""NonLocalAttention: shapes, gradients to every parameter, a float64 gradcheck, equivalence
with a plain-PyTorch attention over the same candidates, torch.compile and autocast."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.func import functional_call

from napari_stnls.nn import NonLocalAttention, rescale_flows
from napari_stnls.ops import _library

CUDA = torch.cuda.is_available()

needs_ext = pytest.mark.skipif(_library.LOAD_ERROR is not None, reason=f"not built: {_library.LOAD_ERROR}")


def _flows(gen, B, T, H, W, amp=0.8, dtype=torch.float32):
    return tuple((amp * torch.randn(B, T, 2, H, W, generator=gen)).to(dtype) for _ in range(2))


def _bilinear(frame: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """(C,) value of a (C, H, W) frame at (y, x) inside it; corners past the last row or
    column have weight 0."""
    _, H, W = frame.shape
    y0, x0 = int(y // 1), int(x // 1)
    fy, fx = y - y0, x - x0
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    return ((1 - fy) * ((1 - fx) * frame[:, y0, x0] + fx * frame[:, y0, x1])
            + fy * ((1 - fx) * frame[:, y1, x0] + fx * frame[:, y1, x1]))


def _plain_attention(block: NonLocalAttention, x: torch.Tensor, cands) -> torch.Tensor:
    """The block (ps=1, stride0=1) written plainly: for every pixel and head, a softmax over the
    scaled dot products (or minus squared distances) of its query with the keys at the
    candidate positions ``cands(b, h, t, y, x)`` (a list of (s, y, x)), and the weighted sum
    of the values there."""
    B, T, C, H, W = x.shape
    nh, Ch = block.nheads, C // block.nheads
    qkv = torch.nn.functional.conv2d(x.flatten(0, 1), block.to_qkv.weight, block.to_qkv.bias)
    q, k, v = qkv.unflatten(0, (B, T)).chunk(3, dim=2)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(nh):
            ch = slice(h * Ch, (h + 1) * Ch)
            for t in range(T):
                for y in range(H):
                    for xx in range(W):
                        pos = cands(b, h, t, y, xx)
                        keys = torch.stack([_bilinear(k[b, s, ch], py, px) for s, py, px in pos])
                        vals = torch.stack([_bilinear(v[b, s, ch], py, px) for s, py, px in pos])
                        qv = q[b, t, ch, y, xx]
                        prod = block.search_kwargs["dist"] == "prod"
                        sim = keys @ qv if prod else -((keys - qv) ** 2).sum(-1)
                        w = torch.softmax(sim * block.log_scale[h].exp(), 0)
                        out[b, t, ch, y, xx] = w @ vals
    out = torch.nn.functional.conv2d(out.flatten(0, 1), block.proj.weight, block.proj.bias)
    return out.unflatten(0, (B, T))


def _window(T, H, W, ws, wt):
    """Every candidate of search's window (no flow), as the docs define it."""
    nt, r = min(T, 2 * wt + 1), ws // 2

    def cands(b, h, t, y, x):
        s0 = min(max(t - wt, 0), T - nt)
        cy, cx = min(max(y, r), H - 1 - r), min(max(x, r), W - 1 - r)
        return [(s, cy + i, cx + j)
                for s in range(s0, s0 + nt) for i in range(-r, r + 1) for j in range(-r, r + 1)]

    return cands


def _block(*args, seed=0, **kwargs) -> NonLocalAttention:
    """A block with the weights of torch's default initialisation seeded with ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return NonLocalAttention(*args, **kwargs)


@functools.cache
def _whole_window_case(dist, nheads):
    """The block of the whole-window test, its input and the plain attention's output."""
    gen = torch.Generator().manual_seed(0)
    T, H, W, ws, wt = 3, 6, 7, 3, 1
    kw = dict(ws=ws, wt=wt, k=3 * ws * ws, dist=dist)
    x = torch.rand(1, T, 4, H, W, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = _plain_attention(_block(4, nheads, **kw).double(), x, _window(T, H, W, ws, wt))
    return kw, x, ref


@pytest.mark.parametrize(("dist", "nheads"), [("prod", 1), ("l2", 2)])
def test_equals_plain_attention_over_the_whole_window(dist, nheads, impl):
    """With k = every candidate of the window, the block is plain windowed attention: no
    selection is involved, so this holds the block to an independent implementation."""
    backend, device = impl
    kw, x, ref = _whole_window_case(dist, nheads)
    out = _block(4, nheads, backend=backend, **kw).double().to(device)(x.to(device))
    torch.testing.assert_close(out.detach().cpu(), ref, rtol=1e-10, atol=1e-10)


def test_equals_plain_attention_over_the_chosen_neighbours_along_the_flow(impl):
    """With k < the window and sub-pixel flows: the same as plain attention over the positions
    the block's search chose (read bilinearly)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(1)
    B, T, H, W = 2, 3, 6, 6
    block = NonLocalAttention(4, 2, ws=3, wt=1, k=5, backend=backend).double()
    x = torch.rand(B, T, 4, H, W, generator=gen, dtype=torch.float64)
    flows = _flows(gen, B, T, H, W, dtype=torch.float64)
    from napari_stnls.ops import search

    q, k, _ = block.to_qkv(x.flatten(0, 1)).unflatten(0, (B, T)).chunk(3, dim=2)
    # the block's own search, on its device (its backend may run only there)
    dev_flows = tuple(f.to(device) for f in flows)
    _, inds = search(q.to(device), k.to(device), flows=dev_flows, **block.search_kwargs)
    inds = inds.cpu()
    assert bool((inds[..., 1:] != inds[..., 1:].round()).any())  # sub-pixel positions

    def cands(b, h, t, y, x):
        return [(int(s), py, px) for s, py, px in inds[b, h, (t * H + y) * W + x].tolist()]

    ref = _plain_attention(block, x, cands)
    out = block.to(device)(x.to(device), tuple(f.to(device) for f in flows))
    torch.testing.assert_close(out.cpu(), ref.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(ps=3, stride0=2, pt=2, dist="l2"), dict(ps=3, nheads=4, itype="int", wt=0),
     dict(ws=5, k=3)],
)
def test_shapes_and_every_parameter_gets_a_gradient(kwargs, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(2)
    kw = dict(dict(nheads=2, ws=3, k=4), **kwargs)
    block = NonLocalAttention(8, backend=backend, **kw).to(device)
    x = torch.rand(2, 3, 8, 9, 10, generator=gen).to(device).requires_grad_()
    flows = tuple(f.to(device).requires_grad_() for f in _flows(gen, 2, 3, 9, 10))
    y = block(x, flows)
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * torch.rand(y.shape, generator=gen).to(device)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert bool(x.grad.abs().sum() > 0)
    if kw.get("itype", "float") == "float":  # whole-pixel windows have no flow gradient
        assert all(bool(f.grad.abs().sum() > 0) for f in flows)


def test_gradcheck_of_a_tiny_block(impl):
    """float64 gradcheck w.r.t. the input, the flows and every parameter (fast mode)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(3)
    block = NonLocalAttention(4, 2, ps=3, ws=3, wt=1, k=3, dist="prod", backend=backend).double().to(device)
    x = torch.rand(1, 2, 4, 5, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    flows = tuple((0.3 * f).to(device).requires_grad_() for f in _flows(gen, 1, 2, 5, 5, dtype=torch.float64))
    names = [n for n, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]

    def fn(x, ff, bf, *params):
        return functional_call(block, dict(zip(names, params, strict=True)), (x, (ff, bf)))

    nondet = 1e-12 if torch.device(device).type == "cuda" else 0.0
    assert torch.autograd.gradcheck(fn, (x, *flows, *params), eps=1e-6, atol=1e-6, fast_mode=True,
                                    nondet_tol=nondet)


def test_flows_are_rescaled_to_the_features():
    f = torch.stack([torch.full((4, 5), 1.0), torch.full((4, 5), 2.0)])[None, None].expand(1, 3, 2, 4, 5)
    ff, bf = rescale_flows((f, -f), 8, 15)
    assert ff.shape == (1, 3, 2, 8, 15)
    torch.testing.assert_close(ff[:, :, 0], torch.full((1, 3, 8, 15), 3.0))  # dx * 15/5
    torch.testing.assert_close(ff[:, :, 1], torch.full((1, 3, 8, 15), 4.0))  # dy * 8/4
    torch.testing.assert_close(bf, -ff)
    assert rescale_flows((f, f), 4, 5)[0] is f and rescale_flows(None, 4, 5) is None
    # the block at half resolution sees the flows of the full resolution halved
    gen = torch.Generator().manual_seed(4)
    block = NonLocalAttention(4, ws=3, k=4)
    x = torch.rand(1, 3, 4, 6, 6, generator=gen)
    flows = _flows(gen, 1, 3, 6, 6)
    big = rescale_flows(flows, 12, 12)
    torch.testing.assert_close(block(x, big), block(x, rescale_flows(big, 6, 6)))


@needs_ext
@pytest.mark.slow  # 4 s on 2 cores; the ops' own fullgraph compiles run in `make test` (test_ext.py)
def test_torch_compile_fullgraph_forward_and_backward(compiled):
    backend, device = compiled
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(5)
    block = NonLocalAttention(8, 2, ps=3, ws=3, k=4, backend=backend).to(device)
    x = torch.rand(1, 3, 8, 8, 8, generator=gen).to(device)
    flows = _flows(gen, 1, 3, 8, 8)

    def run(fn):
        xx = x.clone().requires_grad_()
        y = fn(xx, tuple(f.to(device) for f in flows))
        y.square().sum().backward()
        grads = [xx.grad] + [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        return y.detach(), grads

    y0, g0 = run(block)
    y1, g1 = run(torch.compile(block, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(y1, y0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


AUTOCAST = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16), ("cuda", torch.bfloat16)] if CUDA else [])


@pytest.mark.parametrize("case", AUTOCAST, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}")
def test_autocast(case):
    """Under autocast (bf16 on the CPU; fp16 and bf16 on CUDA) the projections and patches are in
    the low precision and the output is the fp32 block's to that precision (k = the whole
    window, so the neighbours are the same); gradients reach every parameter."""
    device, dtype = case
    gen = torch.Generator().manual_seed(6)
    block = NonLocalAttention(8, 2, ps=3, ws=3, wt=1, k=27).to(device)
    x = torch.rand(1, 3, 8, 8, 8, generator=gen).to(device)
    flows = tuple(f.to(device) for f in _flows(gen, 1, 3, 8, 8))
    ref = block(x, flows)
    with torch.autocast(device, dtype=dtype):
        y = block(x, flows)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    y.float().square().sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.abs().sum() > 0)
               for p in block.parameters())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(dim=6, nheads=4), ValueError, "nheads: must divide dim=6"),
        (dict(dim=4, ws=2), ValueError, "ws: expected an odd"),
        (dict(dim=4, dist="cos"), ValueError, "dist: expected one of"),
        (dict(dim=0), ValueError, "dim: expected an int >= 1"),
    ],
)
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NonLocalAttention(**kwargs)


def test_bad_input():
    block = NonLocalAttention(4)
    with pytest.raises(ValueError, match=r"x: expected \(B, T, dim=4, H, W\)"):
        block(torch.rand(1, 3, 5, 8, 8))
    with pytest.raises(TypeError, match="flows: expected None or a pair"):
        block(torch.rand(1, 3, 4, 8, 8), torch.rand(1, 3, 2, 8, 8))
