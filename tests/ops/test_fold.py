"""iunfold / ifold: oracle, F.unfold/F.fold equality, adjointness, region independence, bad input."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
import torch.nn.functional as F

from napari_stnls.ops import ifold, iunfold, query_coords


def _case(seed):
    r = np.random.default_rng(100 + seed)
    B, T, C = int(r.integers(1, 3)), int(r.integers(1, 4)), int(r.integers(1, 4))
    H, W = int(r.integers(3, 10)), int(r.integers(3, 10))
    t0, y0, x0 = int(r.integers(0, T)), int(r.integers(0, H)), int(r.integers(0, W))
    region = (t0, int(r.integers(t0 + 1, T + 1)), y0, int(r.integers(y0 + 1, H + 1)), x0,
              int(r.integers(x0 + 1, W + 1)))
    return (B, T, C, H, W), dict(
        ps=int(r.integers(1, 5)), stride=int(r.integers(1, 4)), dilation=int(r.integers(1, 3)),
        pt=int(r.integers(1, 3)), region=None if r.integers(0, 4) == 0 else region,
    )


@pytest.mark.parametrize("seed", range(25))
def test_iunfold_ifold_match_oracle(seed, impl):
    backend, device = impl
    shape, kw = _case(seed)
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(shape, generator=gen, dtype=torch.float64)
    p = iunfold(v.to(device), backend=backend, **kw)
    np.testing.assert_allclose(p.cpu().numpy(), oracle.iunfold(v.numpy(), **kw), rtol=0, atol=0)
    pr = torch.rand(p.shape, generator=gen, dtype=torch.float64)
    f = ifold(pr.to(device), shape=shape, backend=backend, **kw)
    np.testing.assert_allclose(f.cpu().numpy(), oracle.ifold(pr.numpy(), shape, **kw), rtol=1e-12, atol=1e-12)
    # adjoint identity <iunfold(x), p> == <x, ifold(p)>
    lhs = (p.cpu() * pr).sum()
    rhs = (v * f.cpu()).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "ps,stride,dilation", [(1, 1, 1), (3, 1, 1), (5, 2, 1), (3, 3, 2), (7, 1, 3), (4, 2, 1)]
)
def test_whole_frame_equals_torch_unfold_and_fold(ps, stride, dilation, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(ps)
    B, T, C, H, W = 2, 3, 2, 11, 13
    v = torch.rand(B, T, C, H, W, generator=gen, dtype=torch.float64).to(device)
    pad = dilation * (ps // 2)
    p = iunfold(v, ps=ps, stride=stride, dilation=dilation, backend=backend)
    Q = p.shape[1] // T
    folded = ifold(p, shape=v.shape, ps=ps, stride=stride, dilation=dilation, backend=backend)
    if ps % 2 == 0:  # F.unfold has no padding that centres even patches: compare with the oracle
        kw = dict(ps=ps, stride=stride, dilation=dilation)
        np.testing.assert_array_equal(p.cpu().numpy(), oracle.iunfold(v.cpu().numpy(), **kw))
        np.testing.assert_allclose(folded.cpu().numpy(), oracle.ifold(p.cpu().numpy(), v.shape, **kw),
                                   rtol=1e-12, atol=1e-12)
        return
    for t in range(T):
        ref = F.unfold(v[:, t], ps, dilation=dilation, padding=pad, stride=stride)  # (B, C*ps*ps, L)
        assert ref.shape[-1] == Q
        torch.testing.assert_close(p[:, t * Q : (t + 1) * Q].transpose(1, 2), ref, rtol=0, atol=0)
    for t in range(T):
        ref = F.fold(p[:, t * Q : (t + 1) * Q].transpose(1, 2), (H, W), ps, dilation=dilation,
                     padding=pad, stride=stride)
        torch.testing.assert_close(folded[:, t], ref, rtol=1e-12, atol=1e-12)


def test_region_by_region_fold_equals_whole_video(impl):
    """Tile a video into regions (tiles aligned to the stride), process each, fold into one
    output: identical to one call on the whole video, no edge effects."""
    backend, device = impl
    gen = torch.Generator().manual_seed(9)
    v = torch.randint(0, 10, (1, 4, 2, 12, 12), generator=gen).double().to(device)  # exact arithmetic
    kw = dict(ps=5, stride=2, dilation=1, pt=2, backend=backend)
    whole = ifold(iunfold(v, **kw) * 3, shape=v.shape, **kw)
    acc = torch.zeros_like(v)
    for t0 in (0, 2):
        for y0 in (0, 6):
            for x0 in (0, 4, 8):
                r = (t0, t0 + 2, y0, y0 + 6, x0, x0 + 4)
                out = ifold(iunfold(v, r, **kw) * 3, r, out=acc, **kw)
                assert out is acc
    assert torch.equal(acc, whole)


def test_gradcheck(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(10)
    v = torch.rand(1, 2, 2, 5, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    kw = dict(ps=3, stride=2, dilation=1, pt=2, region=(0, 2, 1, 5, 0, 6), backend=backend)
    assert torch.autograd.gradcheck(lambda x: iunfold(x, **kw), (v,))
    assert torch.autograd.gradgradcheck(lambda x: iunfold(x, **kw), (v,))
    p = iunfold(v.detach(), **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ifold(x, shape=v.shape, **kw), (p,))
    assert torch.autograd.gradgradcheck(lambda x: ifold(x, shape=v.shape, **kw), (p,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(dtype, impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(15)
    v = torch.rand(1, 3, 2, 9, 10, generator=gen, dtype=torch.float64).to(device)
    kw = dict(ps=3, stride=1, dilation=2, pt=2, region=(0, 3, 2, 7, 1, 9), backend=backend)
    ref = dict(kw, backend="reference")
    p = iunfold(v.to(dtype), **kw)
    assert p.dtype == dtype
    torch.testing.assert_close(p, iunfold(v, **ref).to(dtype), rtol=0, atol=0)
    f = ifold(p, shape=v.shape, **kw)
    assert f.dtype == dtype
    tol = {torch.float32: 1e-6, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    torch.testing.assert_close(f.double(), ifold(p.double(), shape=v.shape, **ref), rtol=tol, atol=tol)


def test_cpu_fold_is_deterministic():
    gen = torch.Generator().manual_seed(16)
    p = torch.rand(1, 2 * 30 * 30, 2 * 3 * 7 * 7, generator=gen)
    kw = dict(ps=7, pt=2, shape=(1, 2, 3, 30, 30), backend="cpu")
    first = ifold(p, **kw)
    threads = torch.get_num_threads()
    try:
        for n in (threads, 1, 3):
            torch.set_num_threads(n)
            assert torch.equal(ifold(p, **kw), first)
    finally:
        torch.set_num_threads(threads)


def test_patch_order_is_pt_c_ps_ps(impl):
    backend, device = impl
    v = torch.arange(2 * 2 * 3 * 3, dtype=torch.float64).reshape(1, 2, 2, 3, 3).to(device)
    p = iunfold(v, (0, 1, 1, 2, 1, 2), ps=3, pt=2, backend=backend)  # one query at the centre of frame 0
    assert torch.equal(p.reshape(2, 2, 3, 3), v[0])
    assert query_coords(v.shape, (0, 1, 1, 2, 1, 2)).tolist() == [[0, 1, 1]]


def test_empty_spots_read_zero_and_inputs_unchanged(impl):
    backend, device = impl
    v = torch.ones(1, 1, 1, 4, 4, device=device)
    keep = v.clone()
    p = iunfold(v, ps=3, pt=2, backend=backend)
    assert p.reshape(-1, 2, 3, 3)[:, 1].abs().sum() == 0  # past the last frame: zeros
    assert p.reshape(16, 2, 3, 3)[0, 0, 0].tolist() == [0, 0, 0]  # above the frame: zeros
    assert torch.equal(v, keep)
    pc = p.clone()
    ifold(p, shape=v.shape, ps=3, pt=2, backend=backend)
    assert torch.equal(p, pc)


def test_non_contiguous_input(impl):
    backend, device = impl
    gen = torch.Generator().manual_seed(17)
    base = torch.rand(1, 2, 7, 8, 3, generator=gen, dtype=torch.float64).to(device)
    v = base.permute(0, 1, 4, 2, 3)
    p = iunfold(v, ps=3, backend=backend)
    assert torch.equal(p, iunfold(v.contiguous(), ps=3, backend=backend))
    f = ifold(p.transpose(0, 1).contiguous().transpose(0, 1), shape=v.shape, ps=3, backend=backend)
    assert torch.equal(f, ifold(p, shape=v.shape, ps=3, backend=backend))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda v: iunfold(v[0], ps=3), ValueError, "video: expected a video"),
        (lambda v: iunfold(v.long(), ps=3), TypeError, "video: expected a floating-point"),
        (lambda v: iunfold(v, ps=0), ValueError, "ps"),
        (lambda v: iunfold(v, ps=3, stride=0), ValueError, "stride"),
        (lambda v: iunfold(v, ps=3, dilation=0), ValueError, "dilation"),
        (lambda v: iunfold(v, ps=3, pt=0), ValueError, "pt"),
        (lambda v: iunfold(v, (0, 1, 0, 9, 0, 4), ps=3), ValueError, "region: y range"),
        (lambda v: iunfold(v, (0, 1, 2, 2, 0, 4), ps=3), ValueError, "region: y range"),
        (lambda v: ifold(torch.zeros(1, 16, 9), ps=3), ValueError, "give exactly one"),
        (lambda v: ifold(torch.zeros(1, 16, 9), ps=3, shape=v.shape, out=v), ValueError, "give exactly one"),
        (lambda v: ifold(torch.zeros(1, 15, 9), shape=v.shape, ps=3), ValueError, "patches: expected shape"),
        (lambda v: ifold(torch.zeros(1, 32, 9).long(), shape=v.shape, ps=3), TypeError, "patches"),
        (lambda v: ifold(torch.zeros(1, 32, 9), shape=(1, 2, 4), ps=3), ValueError, "shape"),
        (lambda v: ifold("x", shape=v.shape, ps=3), TypeError, "patches: expected a torch.Tensor"),
    ],
)
def test_bad_input(call, exc, match):
    v = torch.zeros(1, 2, 1, 4, 4)
    with pytest.raises(exc, match=match):
        call(v)
