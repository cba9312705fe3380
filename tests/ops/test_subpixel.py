"""The sub-pixel search through whole-pixel distances and key-only pair sums
(``napari_stnls.ops._subpixel``, the CUDA kernel ``search_topk_subpix``): the pair sums
against their definition, the expansion against the bilinear distance of the loop oracle,
and the search that uses them against the float64 reference."""

from __future__ import annotations

import math
import types

import numpy as np
import oracle
import pytest
import torch
from conftest import assert_knn_match
from test_search import _smooth_flow, assert_rows_match_reference

from napari_stnls.ops import search
from napari_stnls.ops._subpixel import SHIFTS, pair_sums


def _pair_sums_oracle(v: np.ndarray, ps: int, pt: int, nheads: int, margin: int) -> np.ndarray:
    """Loops over the definition: (B, T, H, W, C) -> (B, nheads, T, 4, H + 2m, W + 2m)."""
    B, T, H, W, C = v.shape
    Ch, r, ref = C // nheads, ps // 2, oracle.reflect
    out = np.zeros((B, nheads, T, 4, H + 2 * margin, W + 2 * margin))
    for b, h, s, e in np.ndindex(B, nheads, T, 4):
        dy, dx = SHIFTS[e]
        for y in range(-margin, H + margin):
            for x in range(-margin, W + margin):
                acc = 0.0
                for dt in range(pt):
                    f = ref(s + dt, T)
                    for a in range(ps):
                        for bb in range(ps):
                            py, px = y + a - r, x + bb - r
                            p = v[b, f, ref(py, H), ref(px, W), h * Ch:(h + 1) * Ch]
                            n = v[b, f, ref(py + dy, H), ref(px + dx, W), h * Ch:(h + 1) * Ch]
                            acc += float(((p - n) ** 2).sum())
                out[b, h, s, e, y + margin, x + margin] = acc
    return out


@pytest.mark.parametrize(("ps", "pt", "nheads", "margin"), [(3, 1, 1, 1), (5, 2, 2, 4), (1, 1, 1, 7)])
def test_pair_sums_match_their_definition(ps, pt, nheads, margin):
    """Every map entry, positions outside the frame (mirrored) included, a margin wider than
    the frame too."""
    gen = torch.Generator().manual_seed(ps + pt + margin)
    v = torch.rand(2, 3, 5, 6, 2 * nheads, generator=gen, dtype=torch.float64)
    got = pair_sums(v, ps, pt, nheads, margin)
    assert got.dtype == torch.float64 and got.shape == (2, nheads, 3, 4, 5 + 2 * margin, 6 + 2 * margin)
    np.testing.assert_allclose(got.numpy(), _pair_sums_oracle(v.numpy(), ps, pt, nheads, margin),
                               rtol=1e-12, atol=1e-12)


def test_pair_sums_of_some_frames_are_those_of_the_whole_video():
    """Maps asked for some frames (a search's windows) equal the whole video's there, frames
    of patches of two frames mirrored past the end included; the others are 0."""
    gen = torch.Generator().manual_seed(9)
    v = torch.rand(1, 5, 6, 7, 3, generator=gen, dtype=torch.float64)
    full = pair_sums(v, 3, 2, 1, 2)
    some = pair_sums(v, 3, 2, 1, 2, frames=[1, 4])
    torch.testing.assert_close(some[:, :, [1, 4]], full[:, :, [1, 4]], rtol=0, atol=0)
    assert not some[:, :, [0, 2, 3]].any()


def test_the_expansion_is_the_bilinear_distance():
    """sum_c w_c M_c - sum_{c<c'} w_c w_c' S_cc' equals the L2 distance between a query patch
    and the bilinear key patch of the loop oracle, at random sub-pixel positions inside and
    past the borders, with two frames a patch and two heads."""
    rng = np.random.default_rng(3)
    T, H, W, C, ps, pt, nh, m = 4, 9, 11, 4, 5, 2, 2, 6
    v = rng.random((1, T, H, W, C))
    S = pair_sums(torch.from_numpy(v), ps, pt, nh, m).numpy()
    vb = v[0].transpose(0, 3, 1, 2)  # (T, C, H, W), the oracle's layout
    for _ in range(60):
        t, s, h = int(rng.integers(T)), int(rng.integers(T)), int(rng.integers(nh))
        qy, qx = int(rng.integers(H)), int(rng.integers(W))
        y, x = rng.uniform(-m, H + m - 2), rng.uniform(-m, W + m - 2)
        chans = range(h * C // nh, (h + 1) * C // nh)
        qp = oracle.read_patch(vb, t, qy, qx, ps, pt, 1, chans)

        def dist(yy, xx, qp=qp, s=s, chans=chans):
            return float(((qp - oracle.read_patch(vb, s, yy, xx, ps, pt, 1, chans)) ** 2).sum())

        y0, x0 = math.floor(y), math.floor(x)
        fy, fx = y - y0, x - x0
        w = {(0, 0): (1 - fy) * (1 - fx), (0, 1): (1 - fy) * fx, (1, 0): fy * (1 - fx), (1, 1): fy * fx}
        M = {c: dist(y0 + c[0], x0 + c[1]) for c in w}

        def pairs(e, yy, xx, h=h, s=s):
            return S[0, h, s, e, yy + m, xx + m]

        got = sum(w[c] * M[c] for c in w) - (
            w[0, 0] * w[0, 1] * pairs(0, y0, x0) + w[1, 0] * w[1, 1] * pairs(0, y0 + 1, x0)
            + w[0, 0] * w[1, 0] * pairs(1, y0, x0) + w[0, 1] * w[1, 1] * pairs(1, y0, x0 + 1)
            + w[0, 0] * w[1, 1] * pairs(2, y0, x0) + w[0, 1] * w[1, 0] * pairs(3, y0, x0 + 1))
        assert got == pytest.approx(dist(y, x), rel=1e-12, abs=1e-12)


@pytest.fixture(autouse=True)
def _subpix_everywhere(monkeypatch):
    """The kernel takes its calls on the CPU too (by default only on CUDA)."""
    monkeypatch.setenv("NAPARI_STNLS_SUBPIX", "1")


def _random_subpix_case(seed):
    """A small random search the sub-pixel kernel takes: every other option at random."""
    r = np.random.default_rng(seed)
    B, T, nheads = int(r.integers(1, 3)), int(r.integers(1, 5)), int(r.choice([1, 2]))
    C, H, W = nheads * int(r.integers(1, 4)), int(r.integers(5, 12)), int(r.integers(5, 12))
    ws = int(r.choice([1, 3, 5]))
    wt, pt, ps = int(r.integers(0, 3)), int(r.integers(1, 3)), int(r.choice([1, 2, 3, 5]))
    nt = min(T, 2 * wt + 1)
    exclude_self = bool(r.integers(0, 2)) and nt * ws * ws > 1
    k = int(r.integers(1, min(12, nt * ws * ws - int(exclude_self)) + 1))
    t0, y0, x0 = int(r.integers(0, T)), int(r.integers(0, H - 2)), int(r.integers(0, W - 2))
    region = (t0, int(r.integers(t0 + 1, T + 1)), y0, int(r.integers(y0 + 1, H + 1)), x0,
              int(r.integers(x0 + 1, W + 1))) if r.integers(0, 3) else None
    return (B, T, C, H, W), dict(ps=ps, ws=ws, wt=wt, k=k, pt=pt, nheads=nheads, region=region,
                                 exclude_self=exclude_self)


@pytest.mark.parametrize("seed", range(12))
def test_subpixel_search_matches_the_oracle(seed, compiled):
    """float64 (CPU) and float32 (CUDA) searches along sub-pixel flows against the loop
    oracle: every option the kernel takes (heads, frames per patch, exclude_self, regions,
    windows at the borders)."""
    backend, device = compiled
    shape, kw = _random_subpix_case(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    q, k = (torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    flows = tuple(_smooth_flow(gen, shape[0], shape[1], shape[3], shape[4], 1.9) for _ in range(2))
    nt = min(shape[1], 2 * kw["wt"] + 1)
    more = dict(kw, k=min(kw["k"] + 1, nt * kw["ws"] ** 2 - int(kw["exclude_self"])))
    rd, ri = oracle.search(q.numpy(), k.numpy(), flows=[f.numpy() for f in flows], **more)
    d, i = search(q.to(device, dtype), k.to(device, dtype), flows=tuple(f.to(device, dtype) for f in flows),
                  backend=backend, **kw)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4, pos_atol=1e-4)
    assert_knn_match(d.double(), i.double(), rd, ri, min_untied=0.3, **tol)


@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        # two heads, two-frame patches, exclude_self, a region; k past 32 (lists of 64)
        ((1, 4, 4, 30, 37), dict(ps=5, ws=7, wt=1, k=40, pt=2, nheads=2, exclude_self=True,
                                 region=(0, 4, 1, 29, 2, 37))),
        # nl_means' search (ps 7, ws 9, k 24) over more than one 16-row tile, two videos
        ((2, 3, 3, 40, 45), dict(ps=7, ws=9, wt=1, k=24, region=(0, 3, 0, 40, 0, 45))),
        # a frame hardly taller than the window: windows pressed against its borders
        ((1, 3, 1, 10, 40), dict(ps=3, ws=9, wt=1, k=10, region=(0, 3, 0, 10, 0, 40))),
        # one channel, ps 5, ws 7, k 16 (the sliding variant's one-channel tile)
        ((1, 4, 1, 33, 50), dict(ps=5, ws=7, wt=1, k=16, region=(0, 4, 0, 33, 0, 50))),
        # ws 21 (the tile of 2 rows)
        ((1, 3, 3, 24, 40), dict(ps=7, ws=21, wt=1, k=10, region=(0, 3, 0, 24, 0, 40))),
    ],
)
def test_float32_subpixel_search_against_the_reference(device, shape, kw, monkeypatch):
    """float32 searches along a smooth sub-pixel flow of the shapes the CUDA kernel
    ``search_topk_subpix`` takes (on the CPU the window path: the same neighbours), against
    the float64 reference search; query batches change no bit. On CUDA both ways to the
    whole-pixel distances: the sliding kernel's (where it applies) and the tile's box sums."""
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(H * W + C)
    v = torch.rand(shape, generator=gen)
    flows = tuple(_smooth_flow(gen, B, T, H, W, 2.7, torch.float32) for _ in range(2))
    fd = tuple(f.to(device) for f in flows)
    for slide in ("1", "0") if device.type == "cuda" else ("1",):
        monkeypatch.setenv("NAPARI_STNLS_CUDA_SUBPIX_SLIDE", slide)
        d, i = search(v.to(device), v.to(device), flows=fd, **kw)
        assert d.shape[-1] == kw["k"] and bool(torch.isfinite(d).all())
        assert_rows_match_reference(d, i, v, flows, kw, rtol=1e-5, atol=1e-4, min_untied=0.9, pos_atol=1e-4)
        d2, i2 = search(v.to(device), v.to(device), flows=fd, batch_size=3 * W + 5, **kw)
        assert torch.equal(d2, d) and torch.equal(i2, i)


def test_the_sliding_variants_rule():
    """Which sub-pixel searches the sliding variant takes (search.py's copy of subpix.cu's
    rule): nl_means' ps 7 / ws 9 / k 24 on three channels, not wider grids, larger k, other
    channel counts or even patches."""
    from napari_stnls.ops.search import _subpix_slide

    def rule(C=3, **kw):
        base = dict(ps=7, ws=9, k=24, pt=1, nheads=1)
        return _subpix_slide(C, types.SimpleNamespace(**(base | kw)))

    assert rule() and rule(ps=3, k=32) and rule(C=1, ps=5, ws=7) and rule(C=6, nheads=2)
    assert not rule(ws=11) and not rule(k=33) and not rule(C=2) and not rule(ps=4)
    assert not rule(C=1, ps=7, ws=9)  # one channel: taller tile, grid past the budget
    assert not rule(pt=2)  # 6 frames x channels


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        # nl_means' search: ps 7, ws 9, k 24, three channels
        ((1, 3, 3, 40, 45), dict(ps=7, ws=9, wt=1, k=24, region=(0, 3, 0, 40, 0, 45))),
        # ps 7, ws 7, k 10, one channel, 2 videos, a frame narrower than the window
        ((2, 3, 1, 20, 9), dict(ps=7, ws=7, wt=1, k=10, region=(0, 3, 0, 20, 0, 9))),
    ],
)
def test_the_window_kernels_variants_change_no_bit(shape, kw, monkeypatch):
    """CUDA's window kernel with 3, 4, 6 or 7 candidates a lane (``NAPARI_STNLS_CUDA_WINNC``),
    the patch side as a constant or not (``NAPARI_STNLS_CUDA_WINPS``): the same bits, along a
    smooth sub-pixel flow and without one, and the float64 reference's neighbours."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, T, C, H, W = shape
    gen = torch.Generator().manual_seed(H * W + C)
    v = torch.rand(shape, generator=gen)
    flows = tuple(_smooth_flow(gen, B, T, H, W, 2.7, torch.float32) for _ in range(2))
    monkeypatch.setenv("NAPARI_STNLS_SUBPIX", "0")
    vd = v.cuda()
    for fl in (flows, None):
        fd = None if fl is None else tuple(f.cuda() for f in fl)
        first = None
        for nc in "3467":
            for const in "01":
                monkeypatch.setenv("NAPARI_STNLS_CUDA_WINNC", nc)
                monkeypatch.setenv("NAPARI_STNLS_CUDA_WINPS", const)
                d, i = search(vd, vd, flows=fd, backend="cuda", **kw)
                if first is None:
                    first = (d, i)
                    assert_rows_match_reference(d, i, v, fl, kw, rtol=1e-5, atol=1e-4, min_untied=0.9,
                                                pos_atol=1e-4)
                assert torch.equal(d, first[0]) and torch.equal(i, first[1]), (nc, const)
