"""Tile-by-tile processing (napari_stnls.stream) equals the in-memory computation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from napari_stnls import stream
from napari_stnls._util import Cancelled
from napari_stnls.denoise import nl_bayes, nl_means
from napari_stnls.ops import Region, gather, search
from napari_stnls.stream import methods as stream_methods

NLM = dict(sigma=0.1, ps=3, ws=7, wt=1, k=4)


def _video(T=5, H=24, W=28, C=1, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 0.7, W, dtype=np.float32)[None, None, :, None]
    return (rng.random((T, H, W, C), dtype=np.float32) * 0.3 + ramp).astype(np.float32)


def _flows(T, H, W, dx=2.5, dy=-1.5, noise=0.5, seed=1):
    """Flows that carry queries across tile borders: a constant shift plus noise."""
    rng = np.random.default_rng(seed)
    ff = np.empty((T, 2, H, W), np.float32)
    bf = np.empty_like(ff)
    ff[:, 0], ff[:, 1] = dx + rng.normal(0, noise, (T, H, W)), dy + rng.normal(0, noise, (T, H, W))
    bf[:, 0], bf[:, 1] = -dx + rng.normal(0, noise, (T, H, W)), -dy + rng.normal(0, noise, (T, H, W))
    return ff, bf


def _torch_flows(ff, bf):
    return torch.from_numpy(ff)[None], torch.from_numpy(bf)[None]


def _as_array(out):
    return np.load(out) if isinstance(out, (str, os.PathLike)) else out[:]


# ----------------------------------------------------------------------------- halo


@pytest.mark.parametrize("n,r,pr,d", [(40, 3, 1, 0), (40, 5, 2, 3), (23, 7, 0, 2), (15, 7, 3, 4)])
def test_read_span_holds_every_pixel_read(n, r, pr, d):
    """Brute force over queries, chained positions, clamped centres and mirrored patches."""
    def reflect(i):
        period = 2 * (n - 1)
        i = abs(i) % period
        return period - i if i > n - 1 else i

    for a0 in range(0, n, 3):
        for a1 in range(a0 + 1, min(n, a0 + 9) + 1, 4):
            lo, hi = stream.read_span(a0, a1, n, r, pr, d)
            seen = set()
            for q in range(a0, a1):
                for p in np.arange(q - d + 1, q + d - 1 + 1e-9, 0.5):  # d includes one pixel of rounding
                    c = min(max(min(max(p, 0), n - 1), r), n - 1 - r)
                    for j in range(int(np.floor(c - r - pr)), int(np.floor(c + r + pr)) + 2):
                        seen.add(reflect(j))
                seen.update(reflect(q + j) for j in range(-pr, pr + 1))
            assert min(seen) >= lo and max(seen) < hi, (a0, a1, lo, hi, min(seen), max(seen))


def test_contrib_span_inverts_read_span():
    n, r, pr, d = 50, 4, 2, 3
    for a0 in range(0, n, 5):
        a1 = min(n, a0 + 6)
        lo, hi = stream.contrib_span(a0, a1, n, r, pr, d)
        for q in range(n):
            reaches = stream.read_span(q, q + 1, n, r, pr, d)
            touches = reaches[0] < a1 and reaches[1] > a0
            if touches and not lo <= q < hi:
                # read_span is a superset; the writes are the candidates' patches (within r + pr + 1 + d)
                c = min(max(q, r), n - 1 - r)
                assert c + r + pr + 1 + d < a0 or c - r - pr - 1 - d >= a1


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("tile", [(2, 8, 8), (5, 4, 4), (3, 10, 13)], ids=str)
def test_nl_means_tiled_equals_whole_video_with_flows(tmp_path, tile):
    v = _video()
    ff, bf = _flows(*v.shape[:3])
    ref = nl_means(v, flows=_torch_flows(ff, bf), device="cpu", **NLM)
    out = stream.process(v, tmp_path / "o.npy", "nl_means", tile=tile, flows=(ff, bf), device="cpu", **NLM)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    # some crops are strictly inside the frame, so the interior-border logic is exercised
    plan = [stream.tile_crop(stream.HaloSpec("nlm", 3, 7, 1), t, v.shape[:3], (4, 7))
            for t in stream.plan_tiles(v.shape[:3], tile)]
    assert any(c.y0 > 0 or c.x0 > 0 for c in plan) and any(c.y1 < 24 or c.x1 < 28 for c in plan)


def test_nl_means_tiled_rgb_zarr_without_flows(tmp_path):
    v = _video(T=3, H=20, W=22, C=3)
    ref = nl_means(v, device="cpu", **NLM)
    out = stream.process(v, tmp_path / "o.zarr", "nlm", tile=(2, 6, 9), device="cpu", **NLM)
    assert out.shape == v.shape and out.chunks == (2, 6, 9, 3)
    np.testing.assert_allclose(out[:], ref, atol=1e-5)


def test_nl_bayes_tiled_equals_whole_video_with_flows(tmp_path):
    v = _video(T=3, H=64, W=64)
    ff, bf = (np.clip(f, -1, 1) for f in _flows(3, 64, 64, dx=0.5, dy=-0.5, noise=0.2))
    kw = dict(sigma=0.1, ps=3, ps2=5, pt=1, ws=5, wt=1, k=10, k2=26, stride0=2)
    ref = nl_bayes(v, flows=_torch_flows(ff, bf), device="cpu", skip=0, skip2=0,
                   fast_motion=float("inf"), **kw)  # the stream turns both off
    tiles = stream.plan_tiles((3, 64, 64), (3, 32, 32))
    spec = stream.HaloSpec("nlb", 3, 5, 1, 2, ps2=5)
    crops = [stream.tile_crop(spec, t, (3, 64, 64), (3, 3)) for t in tiles]
    assert crops[0].y1 < 64 and crops[-1].y0 > 0  # the halo does not cover the whole frame
    out = stream.process(v, tmp_path / "o.zarr", "nl_bayes", tile=(3, 32, 32), flows=(ff, bf), max_flow=1.0,
                         device="cpu", **kw)
    np.testing.assert_allclose(out[:], ref, atol=1e-5)


def test_nl_bayes_tiled_in_time_with_patch_depth(tmp_path):
    """Crops strictly inside the video in time; patches two frames deep (pt=2), the default
    parameters of nl_bayes for everything not given."""
    v = _video(T=12, H=12, W=12)
    kw = dict(sigma=0.1, ps=3, ps2=3, pt=2, ws=5, wt=1, k=19, k2=19)
    ref = nl_bayes(v, device="cpu", skip=0, skip2=0, **kw)  # the stream skips no reference
    tiles = stream.plan_tiles((12, 12, 12), (2, 12, 12))
    spec = stream.HaloSpec("nlb", 3, 5, 1, 2, ps2=3, pt=2)
    assert any(0 < stream.tile_crop(spec, t, (12, 12, 12), (0, 0)).t0 for t in tiles)
    assert any(stream.tile_crop(spec, t, (12, 12, 12), (0, 0)).t1 < 12 for t in tiles)
    out = stream.process(v, tmp_path / "o.npy", "nl_bayes", tile=(2, 12, 12), device="cpu", **kw)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


def test_search_function_tiled_equals_whole_video(tmp_path):
    v = _video(T=4, H=20, W=24)
    ff, bf = _flows(4, 20, 24, dx=1.5, dy=1.0)

    def fn(patches, inds, dists):
        centre = patches[:, 0, :, :, 0, :, 1, 1].mean(2)  # (1, Q, C): mean of the neighbours' centres
        where = inds[:, 0, :, :, :].float().mean(2)  # (1, Q, 3): mean absolute position
        w = torch.softmax(-dists[:, 0] / 0.01, -1)  # (1, Q, k)
        return torch.cat([centre, where, w[..., :1]], -1)

    m = stream.SearchFunction(fn, channels=5, ps=3, ws=5, wt=1, k=4, stride0=2)
    tfl = _torch_flows(ff, bf)
    x = torch.from_numpy(v).permute(0, 3, 1, 2)[None]
    d, i = search(x, x, ps=3, ws=5, wt=1, k=4, stride0=2, flows=tfl)
    ref = fn(gather(x, i, ps=3), i, d)[0].reshape(4, 10, 12, 5).numpy()
    out = stream.process(v, tmp_path / "f.npy", m, tile=(3, 6, 8), flows=(ff, bf), device="cpu")
    got = np.load(out)
    assert got.shape == (4, 10, 12, 5)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_inputs_zarr_dask_uint8_and_video_file(tmp_path):
    import dask.array as da
    import zarr

    from napari_stnls.video.io import read_video, write_video

    v8 = (_video(T=3, H=16, W=18, C=3) * 255).astype(np.uint8)
    ref = nl_means(v8.astype(np.float32) / 255, device="cpu", **NLM)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=v8.shape, chunks=(1, 8, 8, 3),
                        dtype=np.uint8)
    z[:] = v8
    np.save(tmp_path / "in.npy", v8)
    for src in (tmp_path / "in.zarr", tmp_path / "in.npy", da.from_array(v8, chunks=(1, 8, 9, 3))):
        out = stream.process(src, tmp_path / "o.npy", "nlm", tile=(2, 8, 9), device="cpu", overwrite=True,
                             **NLM)
        np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    out = stream.process(v8, tmp_path / "o8.npy", "nlm", tile=(2, 8, 9), device="cpu", dtype=np.uint8, **NLM)
    assert np.abs(np.load(out).astype(int) - np.rint(ref * 255)).max() <= 1
    write_video(tmp_path / "in.mp4", v8)
    decoded, _ = read_video(tmp_path / "in.mp4")
    ref = nl_means(decoded, device="cpu", **NLM)
    out = stream.process(tmp_path / "in.mp4", tmp_path / "v.npy", "nlm", tile=(2, 8, 9), device="cpu",
                         cache_dir=tmp_path, **NLM)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("stnls-decode")] == []


def test_input_is_not_modified(tmp_path):
    v = _video(T=2, H=12, W=12)
    before = v.copy()
    stream.process(v, tmp_path / "o.npy", "nlm", tile=(1, 6, 6), device="cpu", **NLM)
    np.testing.assert_array_equal(v, before)


# ----------------------------------------------------------------------------- resume


def test_resume_after_interruption_keeps_written_tiles(tmp_path, monkeypatch):
    v = _video(T=3, H=24, W=28)
    ref = nl_means(v, device="cpu", **NLM)
    out = tmp_path / "o.zarr"
    tiles = stream.plan_tiles((3, 24, 28), (1, 12, 14))
    seen = []
    with pytest.raises(Cancelled):
        stream.process(v, out, "nlm", tile=(1, 12, 14), device="cpu", progress=lambda d, t: seen.append(d),
                       should_stop=lambda: len(seen) >= 5, **NLM)
    rec = json.loads((tmp_path / "o.zarr.tiles.json").read_text())
    assert rec["done"] == [0, 1, 2, 3, 4]
    import zarr

    assert not out.exists()  # an unfinished output never has the final name
    part = zarr.open_array(str(tmp_path / "o.zarr.partial"), mode="r")[:]
    for n in rec["done"]:  # what was written is there
        t = tiles[n]
        sl = (slice(t.t0, t.t1), slice(t.y0, t.y1), slice(t.x0, t.x1))
        np.testing.assert_allclose(part[sl], ref[sl], atol=1e-5)

    computed = []
    real = stream_methods.compute_tile

    def counting(kind, method, p, crop, tile, *a, **k):
        computed.append(tile)
        return real(kind, method, p, crop, tile, *a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", counting)
    progress = []
    res = stream.process(v, out, "nlm", tile=(1, 12, 14), device="cpu",
                         progress=lambda d, t: progress.append((d, t)), **NLM)
    assert computed == tiles[5:]
    assert progress[0] == (5, 12) and progress[-1] == (12, 12)
    np.testing.assert_allclose(res[:], ref, atol=1e-5)
    assert out.exists() and not (tmp_path / "o.zarr.partial").exists()  # renamed when complete
    np.testing.assert_allclose(zarr.open_array(str(out), mode="r")[:], ref, atol=1e-5)
    computed.clear()
    stream.process(v, out, "nlm", tile=(1, 12, 14), device="cpu", **NLM)  # finished: nothing to do
    assert computed == []


def test_other_parameters_do_not_resume(tmp_path):
    v = _video(T=2, H=12, W=12)
    out = stream.process(v, tmp_path / "o.npy", "nlm", tile=(1, 6, 6), device="cpu", **NLM)
    with pytest.raises(ValueError, match="another run's output.*overwrite"):
        stream.process(v, out, "nlm", tile=(1, 6, 6), device="cpu", **{**NLM, "k": 5})
    stream.process(v, out, "nlm", tile=(1, 6, 6), device="cpu", overwrite=True, **{**NLM, "k": 5})
    (tmp_path / "x.npy").write_bytes(b"not mine")
    with pytest.raises(ValueError, match="not an unfinished output"):
        stream.process(v, tmp_path / "x.npy", "nlm", tile=(1, 6, 6), device="cpu", **NLM)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def no_work(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("work was done before the error")

    monkeypatch.setattr(stream_methods, "compute_tile", fail)


def test_missing_or_read_only_output_fails_before_work(tmp_path, no_work):
    import zarr

    v = _video(T=2, H=12, W=12)
    with pytest.raises(ValueError, match="folder does not exist"):
        stream.process(v, tmp_path / "nope" / "o.zarr", "nlm", device="cpu", **NLM)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            stream.process(v, ro / "o.npy", "nlm", device="cpu", **NLM)
    finally:
        ro.chmod(0o755)
    z = zarr.open_array(str(tmp_path / "z.zarr"), mode="w", shape=v.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="read-only"):
        stream.process(v, zarr.open_array(str(tmp_path / "z.zarr"), mode="r"), "nlm", device="cpu", **NLM)
    (tmp_path / "f.npy").write_bytes(b"")
    (tmp_path / "f.npy").chmod(0o444)
    with pytest.raises(ValueError, match="read-only"):
        stream.process(v, tmp_path / "f.npy", "nlm", device="cpu", overwrite=True, **NLM)
    np.save(tmp_path / "in.npy", v)
    with pytest.raises(ValueError, match="is the input video"):
        stream.process(tmp_path / "in.npy", tmp_path / "in.npy", "nlm", overwrite=True, device="cpu", **NLM)
    np.testing.assert_array_equal(np.load(tmp_path / "in.npy"), v)
    with pytest.raises(ValueError, match="out: expected a .zarr or .npy"):
        stream.process(v, tmp_path / "o.tif", "nlm", device="cpu", **NLM)
    assert z.shape == v.shape


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile=(0, 4, 4)), "tile: expected three positive ints"),
    (dict(tile=(1, 4)), "tile: expected three positive ints"),
    (dict(method="bm3d"), "method: expected one of"),
    (dict(ws=13), "ws: the search window"),
    (dict(ws=4), "ws: expected an odd"),
    (dict(sigma=-1), "sigma: expected a positive"),
    (dict(flows="tvl1"), "max_flow: needed"),
    (dict(flows=(np.zeros((2, 2, 12, 11)), np.zeros((2, 2, 12, 12)))), r"flows \(fflow\): expected shape"),
    (dict(max_flow=-1.0), "max_flow: expected"),
    (dict(video=np.zeros((2, 12), np.float32)), "video: expected"),
])
def test_bad_arguments(tmp_path, no_work, kwargs, match):
    kw = dict(video=_video(T=2, H=12, W=12), method="nlm", **NLM) | kwargs
    with pytest.raises(ValueError, match=match):
        stream.process(kw.pop("video"), tmp_path / "o.npy", kw.pop("method"), device="cpu", **kw)
    assert not (tmp_path / "o.npy").exists()


def test_bad_types(tmp_path, no_work):
    v = _video(T=2, H=12, W=12)
    with pytest.raises(TypeError, match="missing the keyword argument sigma"):
        stream.process(v, tmp_path / "o.npy", "nlm")
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        stream.process(v, tmp_path / "o.npy", "nlm", sigma=0.1, stride0=2)
    with pytest.raises(TypeError, match="fn: expected a callable"):
        stream.SearchFunction(None, channels=1)
    with pytest.raises(TypeError, match="video: expected"):
        stream.process([[1.0]], tmp_path / "o.npy", "nlm", sigma=0.1)


def test_flows_above_the_given_bound_fail(tmp_path):
    v = _video(T=3, H=16, W=16)
    ff, bf = _flows(3, 16, 16, dx=3.0)
    with pytest.raises(ValueError, match=r"max_flow: flows \(fflow\) reaches"):
        stream.process(v, tmp_path / "o.npy", "nlm", tile=(3, 8, 8), flows=(ff, bf), max_flow=1.0,
                       device="cpu", **NLM)


def test_search_function_checks_its_output(tmp_path):
    m = stream.SearchFunction(lambda p, i, d: d, channels=1, ps=3, ws=5, k=2)
    with pytest.raises(ValueError, match=r"fn: expected a tensor of shape \(1, \d+, 1\)"):
        stream.process(_video(T=1, H=8, W=8), tmp_path / "o.npy", m, tile=(1, 4, 4), device="cpu")


def test_tile_crop_is_the_whole_video_for_one_tile():
    spec = stream.HaloSpec("nlb", 5, 11, 2, 2, ps2=5, pt=2)
    whole = Region(0, 8, 0, 64, 0, 64)
    assert stream.tile_crop(spec, whole, (8, 64, 64), (3, 3)) == whole


def test_per_tile_flows_are_computed_on_the_crop_and_clipped(tmp_path):
    from napari_stnls.video.flow import compute_flows

    v = _video(T=3, H=16, W=18)
    fl = tuple(f.clamp(-0.75, 0.75) for f in compute_flows(v[..., 0], "ilk"))
    ref = nl_means(v, flows=fl, device="cpu", **NLM)  # one tile: its crop is the whole video
    out = stream.process(v, tmp_path / "o.npy", "nlm", tile=None, flows="ilk", max_flow=0.75, device="cpu",
                         **NLM)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    tiled = np.load(stream.process(v, tmp_path / "t.npy", "nlm", tile=(3, 8, 9), flows="ilk", max_flow=0.75,
                                   device="cpu", **NLM))
    assert np.abs(tiled - ref).mean() < 0.05  # approximate: each crop has its own flow


def test_nl_means_defaults_follow_sigma_as_in_memory(tmp_path):
    """Without ps and k, the tiles use nl_means' sigma-tuned values, resolved on the whole
    video (at 40/255: 7x7 patches and 32 neighbours, not the 5x5 and 16 of low noise)."""
    v = _video(T=4, H=20, W=24)
    sigma = 40 / 255
    ref = nl_means(v, sigma, ws=5, wt=1, device="cpu")
    out = stream.process(v, tmp_path / "o.npy", "nlm", tile=(2, 10, 12), sigma=sigma, ws=5, wt=1,
                         device="cpu")
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    low = nl_means(v, sigma, ps=5, k=16, ws=5, wt=1, device="cpu")
    assert np.abs(low - ref).max() > 1e-3  # the defaults do matter here
