"""Quick self-checks of the NumPy oracle in tests/oracle.py (against docs/api.md)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import oracle  # noqa: E402


def test_reflect_doc_examples() -> None:
    H = 7
    assert oracle.reflect(-1, H) == 1
    assert oracle.reflect(-2, H) == 2
    assert oracle.reflect(H, H) == H - 2
    assert oracle.reflect(H + 1, H) == H - 3
    for i in range(H):
        assert oracle.reflect(i, H) == i
    for i in range(-30, 30):
        assert oracle.reflect(i, H) == oracle.reflect(i + 2 * (H - 1), H)
        assert 0 <= oracle.reflect(i, H) < H
        assert oracle.reflect(i, 1) == 0
    # time: T -> T-2, T+1 -> T-3
    assert oracle.reflect(4, 4) == 2
    assert oracle.reflect(5, 4) == 1
    assert oracle.reflect(2, 2) == 0


def test_query_coords() -> None:
    shape = (1, 3, 2, 7, 6)
    q = oracle.query_coords(shape, (1, 3, 1, 6, 0, 6), stride0=2)
    assert q.dtype == np.int64
    # T_r=2, nH=ceil(5/2)=3, nW=ceil(6/2)=3
    assert q.shape == (18, 3)
    assert tuple(q[0]) == (1, 1, 0)
    assert tuple(q[1]) == (1, 1, 2)
    assert tuple(q[3]) == (1, 3, 0)
    assert tuple(q[-1]) == (2, 5, 4)
    assert oracle.query_coords(shape).shape == (3 * 7 * 6, 3)


def test_read_patch_integer_interior() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 2, 9, 10))
    p = oracle.read_patch(v, 0, 4, 5, ps=3, pt=2, dilation=2, chans=[1])
    expect = v[0:2, 1:2, 2:7:2, 3:8:2]
    np.testing.assert_array_equal(p, expect)


def test_read_patch_mirror_border() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(2, 1, 5, 6))
    p = oracle.read_patch(v, 1, 0, 5, ps=3, pt=2, dilation=1, chans=[0])
    # row -1 -> 1, column 6 -> 4, frame 2 -> 0
    assert p[0, 0, 0, 0] == v[1, 0, 1, 4]
    assert p[0, 0, 0, 2] == v[1, 0, 1, 4]
    assert p[0, 0, 1, 1] == v[1, 0, 0, 5]
    assert p[1, 0, 1, 1] == v[0, 0, 0, 5]


def test_bilinear_half_pixel() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(1, 1, 5, 6))
    p = oracle.read_patch(v, 0, 3, 2.5, ps=1, pt=1, dilation=1, chans=[0])
    assert p[0, 0, 0, 0] == pytest.approx(0.5 * (v[0, 0, 3, 2] + v[0, 0, 3, 3]))
    p = oracle.read_patch(v, 0, 1.25, 2.0, ps=1, pt=1, dilation=1, chans=[0])
    assert p[0, 0, 0, 0] == pytest.approx(0.75 * v[0, 0, 1, 2] + 0.25 * v[0, 0, 2, 2])
    # reading past the last column at W-1+0.5 mirrors the corner: W -> W-2
    p = oracle.read_patch(v, 0, 0, 5.5, ps=1, pt=1, dilation=1, chans=[0])
    assert p[0, 0, 0, 0] == pytest.approx(0.5 * (v[0, 0, 0, 5] + v[0, 0, 0, 4]))


def test_chain_flow_constant_and_clamped_read() -> None:
    T, H, W = 4, 5, 6
    ff = np.zeros((T, 2, H, W))
    bf = np.zeros((T, 2, H, W))
    ff[:, 0] = 1.0  # dx = +1
    ff[:, 1] = 0.5  # dy = +0.5
    bf[:, 0] = -2.0
    assert oracle.chain_flow(ff, bf, 0, 2, 5, 3, H, W) == pytest.approx((3.5, 8.0))
    assert oracle.chain_flow(ff, bf, 3, 2, 1, 1, H, W) == pytest.approx((2.0, -3.0))
    assert oracle.chain_flow(ff, bf, 2, 2, 1, 2, H, W) == (2.0, 1.0)
    assert oracle.chain_flow(None, None, 0, 2, 1, 3, H, W) == (2.0, 1.0)
    # flow varying in x: position leaves the frame, read happens at the clamp
    ff2 = np.zeros((T, 2, H, W))
    ff2[:, 0] = np.arange(W)[None, None, :] * 1.0  # dx = column index
    py, px = oracle.chain_flow(ff2, bf, 0, 1, 3, 2, H, W)
    # step 1: x=3 -> 3+3=6 (outside); step 2 reads at clamped x=5 -> 6+5=11
    assert (py, px) == pytest.approx((1.0, 11.0))


def test_search_known_match_and_tie_order() -> None:
    H = W = 7
    keys = np.zeros((1, 1, 1, H, W))
    keys[0, 0, 0, 3, 4] = 1.0
    queries = np.zeros((1, 1, 1, H, W))
    queries[0, 0, 0, 2, 2] = 1.0
    region = (0, 1, 2, 3, 2, 3)  # the single query (0, 2, 2)
    d, i = oracle.search(queries, keys, ps=1, ws=7, wt=0, k=3, region=region)
    assert d.shape == (1, 1, 1, 3) and i.shape == (1, 1, 1, 3, 3)
    np.testing.assert_allclose(d[0, 0, 0], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(i[0, 0, 0], [[0, 3, 4], [0, 0, 0], [0, 0, 1]])
    d, i = oracle.search(queries, keys, ps=1, ws=7, wt=0, k=3, region=region, dist="prod")
    np.testing.assert_allclose(d[0, 0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(i[0, 0, 0], [[0, 3, 4], [0, 0, 0], [0, 0, 1]])


def test_search_self_and_exclude_self() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(1, 2, 2, 6, 6))
    d, i = oracle.search(v, v, ps=3, ws=3, wt=1, k=2, region=(1, 2, 2, 4, 1, 3), nheads=2)
    q = oracle.query_coords(v.shape, (1, 2, 2, 4, 1, 3))
    for h in range(2):
        np.testing.assert_allclose(d[0, h, :, 0], 0.0)
        np.testing.assert_allclose(i[0, h, :, 0], q.astype(float))
        assert np.all(d[0, h, :, 1] > 0)
    d2, i2 = oracle.search(
        v, v, ps=3, ws=3, wt=1, k=2, region=(1, 2, 2, 4, 1, 3), nheads=2, exclude_self=True
    )
    np.testing.assert_allclose(d2[..., 0], d[..., 1])
    np.testing.assert_allclose(i2[..., 0, :], i[..., 1, :])
    # full lists: exclude_self == all candidates minus exactly the self match
    kall = 2 * 3 * 3  # nt = min(T=2, 3) = 2
    d, i = oracle.search(v, v, ps=3, ws=3, wt=1, k=kall - 1, region=(1, 2, 2, 4, 1, 3))
    d2, i2 = oracle.search(
        v, v, ps=3, ws=3, wt=1, k=kall - 1, region=(1, 2, 2, 4, 1, 3), exclude_self=True
    )
    for qi in range(q.shape[0]):
        assert not any((row == q[qi]).all() for row in i2[0, 0, qi])
        np.testing.assert_allclose(i2[0, 0, qi, :-1], i[0, 0, qi, 1:])
        np.testing.assert_allclose(d2[0, 0, qi, :-1], d[0, 0, qi, 1:])


def test_search_temporal_window_and_centre_clamp() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(size=(1, 4, 1, 5, 5))
    k = 3 * 3 * 3
    # query at t=3, corner (0, 0): window frames 1..3, centre clamped to (1, 1)
    d, i = oracle.search(v, v, ps=1, ws=3, wt=1, k=k, region=(3, 4, 0, 1, 0, 1))
    got = {tuple(int(a) for a in row) for row in i[0, 0, 0]}
    expect = {(s, y, x) for s in (1, 2, 3) for y in range(3) for x in range(3)}
    assert got == expect
    assert np.all(np.diff(d[0, 0, 0]) >= 0)


def test_search_itype_int_rounds_half_even() -> None:
    rng = np.random.default_rng(5)
    B, T, C, H, W = 1, 2, 1, 7, 7
    v = rng.normal(size=(B, T, C, H, W))
    ff = np.zeros((B, T, 2, H, W))
    bf = np.zeros((B, T, 2, H, W))
    ff[:, :, 0] = 0.5  # dx = 0.5: x=3 -> 3.5 -> rounds to 4; x=2 -> 2.5 -> 2
    ff[:, :, 1] = 0.5  # dy = 0.5: same for rows
    region = (0, 1, 2, 4, 2, 4)  # queries (0,2,2), (0,2,3), (0,3,2), (0,3,3)
    d, i = oracle.search(v, v, ps=1, ws=1, wt=1, k=2, flows=(ff, bf), region=region, itype="int")
    got = [(int(r[1]), int(r[2])) for r in i[0, 0].reshape(-1, 3) if r[0] == 1]
    assert sorted(got) == [(2, 2), (2, 4), (4, 2), (4, 4)]
    df, iff = oracle.search(v, v, ps=1, ws=1, wt=1, k=2, flows=(ff, bf), region=region)
    got = [(float(r[1]), float(r[2])) for r in iff[0, 0].reshape(-1, 3) if r[0] == 1]
    assert sorted(got) == [(2.5, 2.5), (2.5, 3.5), (3.5, 2.5), (3.5, 3.5)]
    # float distance is the bilinear read at the flowed position
    q = oracle.query_coords(v.shape, region)
    for qi in range(4):
        for kk in range(2):
            t, y, x = iff[0, 0, qi, kk]
            kp = oracle.read_patch(v[0], int(t), y, x, 1, 1, 1, [0])
            qp = oracle.read_patch(v[0], *q[qi], 1, 1, 1, [0])
            assert df[0, 0, qi, kk] == pytest.approx(float(np.sum((kp - qp) ** 2)))


def test_iunfold_interior_and_zeros() -> None:
    rng = np.random.default_rng(6)
    v = rng.normal(size=(1, 2, 2, 5, 5))
    p = oracle.iunfold(v, ps=3, pt=2)
    assert p.shape == (1, 2 * 25, 2 * 2 * 9)
    q = oracle.query_coords(v.shape)
    qi = int(np.where((q == [0, 2, 2]).all(1))[0][0])
    np.testing.assert_array_equal(p[0, qi].reshape(2, 2, 3, 3), v[0, 0:2, :, 1:4, 1:4])
    # last frame: second temporal slice is zero; corner: zeros outside
    qi = int(np.where((q == [1, 0, 0]).all(1))[0][0])
    pp = p[0, qi].reshape(2, 2, 3, 3)
    assert np.all(pp[1] == 0)
    assert np.all(pp[0, :, 0, :] == 0) and np.all(pp[0, :, :, 0] == 0)
    np.testing.assert_array_equal(pp[0, :, 1:, 1:], v[0, 1, :, 0:2, 0:2])


@pytest.mark.parametrize(
    "ps,stride,dilation,pt,region",
    [(3, 1, 1, 1, None), (3, 2, 2, 2, (1, 3, 1, 5, 0, 4)), (1, 1, 1, 2, None)],
)
def test_ifold_adjoint(ps: int, stride: int, dilation: int, pt: int, region) -> None:
    rng = np.random.default_rng(7)
    shape = (2, 3, 2, 5, 6)
    x = rng.normal(size=shape)
    u = oracle.iunfold(x, region, ps=ps, stride=stride, dilation=dilation, pt=pt)
    p = rng.normal(size=u.shape)
    f = oracle.ifold(p, shape, region, ps=ps, stride=stride, dilation=dilation, pt=pt)
    assert f.shape == shape
    assert np.sum(u * p) == pytest.approx(np.sum(x * f), rel=1e-12, abs=1e-12)


def test_ifold_counts_interior() -> None:
    shape = (1, 1, 1, 5, 5)
    ones = np.ones((1, 25, 9))
    f = oracle.ifold(ones, shape, ps=3)
    assert f[0, 0, 0, 2, 2] == 9 and f[0, 0, 0, 0, 0] == 4 and f[0, 0, 0, 0, 2] == 6


@pytest.mark.parametrize("nheads,pt,dilation", [(1, 1, 1), (2, 2, 2)])
def test_scatter_gather_adjoint(nheads: int, pt: int, dilation: int) -> None:
    rng = np.random.default_rng(8)
    B, T, C, H, W = 1, 3, 4, 5, 6
    Q, K, ps = 3, 2, 3
    x = rng.normal(size=(B, T, C, H, W))
    inds = np.stack(
        [
            rng.integers(0, T, size=(B, nheads, Q, K)).astype(float),
            rng.uniform(0, H - 1, size=(B, nheads, Q, K)),
            rng.uniform(0, W - 1, size=(B, nheads, Q, K)),
        ],
        axis=-1,
    )
    g = oracle.gather(x, inds, ps=ps, pt=pt, dilation=dilation)
    assert g.shape == (B, nheads, Q, K, pt, C // nheads, ps, ps)
    p = rng.normal(size=g.shape)
    s, counts = oracle.scatter(p, inds, (B, T, C, H, W), ps=ps, pt=pt, dilation=dilation)
    assert counts.shape == (B, T, 1 if nheads == 1 else nheads, H, W)
    assert np.sum(g * p) == pytest.approx(np.sum(s * x), rel=1e-12, abs=1e-12)
    # counts hold total weight: one unit per (patch, dt, a, b)
    assert counts.sum() == pytest.approx(B * nheads * Q * K * pt * ps * ps)
    # scattering ones with weights gives counts (per head channel)
    w = rng.uniform(0.5, 2, size=(B, nheads, Q, K))
    s1, c1 = oracle.scatter(np.ones_like(p), inds, (B, T, C, H, W), weights=w, ps=ps, pt=pt,
                            dilation=dilation)
    Ch = C // nheads
    for h in range(nheads):
        for c in range(h * Ch, (h + 1) * Ch):
            np.testing.assert_allclose(s1[:, :, c], c1[:, :, h if nheads > 1 else 0])


def test_gather_matches_search_patches_and_rejects_outside() -> None:
    rng = np.random.default_rng(9)
    v = rng.normal(size=(1, 2, 2, 6, 6))
    d, i = oracle.search(v, v + 0.1, ps=3, ws=3, wt=1, k=4, region=(0, 1, 0, 2, 0, 2))
    g = oracle.gather(v + 0.1, i, ps=3)
    q = oracle.query_coords(v.shape, (0, 1, 0, 2, 0, 2))
    for qi in range(q.shape[0]):
        qp = oracle.read_patch(v[0], *q[qi], 3, 1, 1, [0, 1])
        for ki in range(4):
            assert np.sum((g[0, 0, qi, ki] - qp) ** 2) == pytest.approx(d[0, 0, qi, ki])
    bad = np.array([0.0, -0.5, 1.0]).reshape(1, 1, 1, 1, 3)
    with pytest.raises(ValueError):
        oracle.gather(v, bad, ps=3)
