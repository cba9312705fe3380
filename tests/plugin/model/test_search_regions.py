"""The plugin's Qt-free search model: search per region, neighbours, maps, flows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stnls.ops import Region, search
from napari_stnls.plugin.model.search import (
    Cancelled,
    SearchParams,
    as_float_video,
    compute_video_flows,
    distance_map,
    flow_vectors,
    gather_patches,
    merge_results,
    mosaic,
    neighbours_at,
    search_regions,
)
from napari_stnls.video.synthetic import sample_video

P = SearchParams(ps=3, ws=5, wt=1, k=4, stride0=2, device="cpu")


@pytest.fixture(scope="module")
def vid():
    return sample_video(n_frames=6, size=(32, 40))


def test_as_float_video_scales_and_copies():
    u8 = np.full((2, 4, 5), 255, np.uint8)
    f = as_float_video(u8)
    assert f.shape == (2, 4, 5, 1) and f.dtype == np.float32 and f.max() == 1.0
    x = np.ones((3, 4, 5, 3), np.float32)
    y = as_float_video(x, 1, 3)
    y[:] = 0
    assert x.min() == 1 and y.shape == (2, 4, 5, 3)  # a copy
    with pytest.raises(ValueError, match="video"):
        as_float_video(np.zeros((4, 5)))


@pytest.mark.parametrize("region", [(0, 2, 3, 17, 5, 24), (2, 4, 0, 32, 0, 40), (4, 6, 10, 11, 0, 9)])
def test_search_regions_equals_one_search_call(vid, region):
    """Bands, frame cutting and reassembly give exactly search's answer on the whole video."""
    _, noisy, flows = vid.to_torch()
    fl = (vid.fflow, vid.bflow)
    p = SearchParams(ps=3, ws=5, wt=2, k=5, stride0=2, device="cpu")
    (res,) = search_regions(vid.noisy, [region], p, flows=fl, band_queries=7)
    d, i = search(noisy, noisy, ps=3, ws=5, wt=2, k=5, stride0=2, flows=flows, region=region)
    r = Region(*region)
    nH, nW = -(-(r.y1 - r.y0) // 2), -(-(r.x1 - r.x0) // 2)
    assert res.dists.shape == (r.t1 - r.t0, nH, nW, 5) and res.flow == "flow"
    np.testing.assert_allclose(res.dists.reshape(-1, 5), d[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.inds.reshape(-1, 5, 3), i[0, 0].numpy(), atol=1e-4)


def test_search_regions_progress_and_cancel(vid):
    seen = []
    res = search_regions(vid.noisy, [(0, 2, 0, 8, 0, 8), (3, 4, 0, 32, 0, 40)], P, band_queries=20,
                         progress=lambda d, t: seen.append((d, t)))
    assert len(res) == 2 and res[1].flow == "none"
    total = seen[-1][1]
    assert seen == [(n, total) for n in range(1, total + 1)] and total == 2 + 16  # bands
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        search_regions(vid.noisy, None, P, band_queries=20, should_stop=stop)


@pytest.mark.parametrize(
    "params, match",
    [
        (SearchParams(ps=3, ws=5, wt=0, k=26, device="cpu"), r"k: 26 neighbours .* only 25 candidates"),
        (SearchParams(ps=3, ws=5, wt=0, k=25, exclude_self=True, device="cpu"), "only 24 candidates"),
        (SearchParams(ps=4, device="cpu"), "ps: expected an odd"),
        (SearchParams(ws=41, device="cpu"), "ws: a window of 41"),
        (SearchParams(dist="l1", device="cpu"), "dist"),
        (SearchParams(stride0=0, device="cpu"), "stride0"),
        (SearchParams(device="tpu"), "device"),
    ],
)
def test_search_params_errors(vid, params, match):
    with pytest.raises(ValueError, match=match):
        search_regions(vid.noisy, [(0, 1, 0, 8, 0, 8)], params)


def test_search_regions_bad_regions_and_flows(vid):
    with pytest.raises(ValueError, match=r"regions\[0\]: x1=50 is outside"):
        search_regions(vid.noisy, [(0, 1, 0, 8, 0, 50)], P)
    with pytest.raises(ValueError, match="flows: expected arrays of shape"):
        search_regions(vid.noisy, [(0, 1, 0, 8, 0, 8)], P, flows=(vid.fflow[:2], vid.bflow[:2]))


def test_flow_guided_search_finds_the_true_match(vid):
    """With the true flow, the best match in frame t+1 of a query lies where the flow carries it."""
    p = SearchParams(ps=7, ws=5, wt=1, k=3, stride0=4, device="cpu", exclude_self=True)
    (res,) = search_regions(vid.clean, [(2, 3, 8, 24, 8, 32)], p, flows=(vid.fflow, vid.bflow))
    hits = 0
    for iy in range(res.dists.shape[1]):
        for ix in range(res.dists.shape[2]):
            t, y, x = res.query_position(0, iy, ix)
            pos = res.inds[0, iy, ix]
            nxt = pos[pos[:, 0] == t + 1]
            want = np.array([y + vid.fflow[t, 1, y, x], x + vid.fflow[t, 0, y, x]])
            hits += bool(len(nxt)) and np.abs(nxt[0, 1:] - want).max() < 1.0
    assert hits >= 0.8 * res.dists.shape[1] * res.dists.shape[2]


def test_neighbours_patches_mosaic(vid):
    res = search_regions(vid.noisy, [(1, 2, 4, 12, 8, 16), (3, 5, 20, 32, 0, 40)], P)
    nb = neighbours_at(res, 3.2, 25, 6.9)  # rounded to frame 3, nearest query (24, 6)
    assert nb.query == (3, 24, 6) and nb.result is res[1]
    assert nb.positions.shape == (4, 3) and nb.dists.shape == (4,)
    assert nb.positions[0].tolist() == [3, 24, 6] and nb.dists[0] == 0  # itself
    assert np.all(np.diff(nb.dists) >= 0)
    nb.positions[:] = -1  # a copy: results unchanged
    assert res[1].inds.min() >= 0
    with pytest.raises(ValueError, match="in no searched region"):
        neighbours_at(res, 0, 0, 0)
    nb = neighbours_at(res, 1, 8, 12)
    patches = gather_patches(vid.noisy, nb.positions, ps=3)
    assert patches.shape == (4, 3, 3, 3)
    np.testing.assert_allclose(patches[0], vid.noisy[1, 7:10, 11:14], atol=1e-6)
    # the distance search reported is the squared difference of the gathered patches
    np.testing.assert_allclose(((patches - patches[0]) ** 2).sum((1, 2, 3)), nb.dists, rtol=1e-4, atol=1e-5)
    img = mosaic(patches, zoom=4, gap=2)
    assert img.dtype == np.uint8 and img.shape == (2 + 3 * 4 + 2, 4 * (3 * 4 + 2) + 2, 3)
    assert (img[:2] == 255).all()
    np.testing.assert_array_equal(img[2:14, 2:14], np.clip(np.rint(patches[0] * 255), 0, 255)
                                  .astype(np.uint8).repeat(4, 0).repeat(4, 1))
    assert mosaic(patches[..., 0], zoom=1, gap=0, columns=2).shape == (6, 6, 3)


def test_distance_map(vid):
    res = search_regions(vid.noisy, [(1, 2, 4, 11, 8, 16)], P)
    m = distance_map(res, vid.noisy.shape)
    assert m.shape == (6, 32, 40) and m.dtype == np.float32
    assert (m[0] == 0).all() and (m[:, :4] == 0).all() and (m[:, 11:] == 0).all()
    assert (m[1, 4:11, 8:16] > 0).all()
    assert m[1, 5, 9] == res[0].dists[0, 0, 0, -1]  # pixel (5, 9) belongs to query (4, 8)
    assert m[1, 10, 15] == res[0].dists[0, 3, 3, -1]
    mean = distance_map(res, vid.noisy.shape, "mean")
    np.testing.assert_allclose(mean[1, 4, 8], res[0].dists[0, 0, 0].mean())
    first = distance_map(res, vid.noisy.shape, "first")
    assert first[1, 4, 8] == res[0].dists[0, 0, 0, 1]  # rank 0 is the query itself
    assert distance_map(res, vid.noisy.shape, "kth", kth=2)[1, 4, 8] == res[0].dists[0, 0, 0, 1]
    with pytest.raises(ValueError, match="kth"):
        distance_map(res, vid.noisy.shape, "kth", kth=9)
    with pytest.raises(ValueError, match="stat"):
        distance_map(res, vid.noisy.shape, "max")


def test_merge_results_per_region_later_wins(vid):
    a, b = Region(1, 2, 4, 12, 8, 16), Region(3, 4, 0, 8, 0, 8)
    first = search_regions(vid.noisy, [a, b], P)
    k2 = SearchParams(ps=3, ws=5, wt=1, k=2, stride0=2, device="cpu")
    again = search_regions(vid.noisy, [a], k2)
    merged = merge_results(first, again)  # a replaced, b kept
    assert [r.region for r in merged] == [b, a] and merged[0] is first[1] and merged[1] is again[0]
    assert merge_results(None, again) == again and merge_results(merged, []) == merged
    m = distance_map(merged, vid.noisy.shape)
    assert m[1, 4, 8] == again[0].dists[0, 0, 0, -1] and m[3, 0, 0] == first[1].dists[0, 0, 0, -1]
    # overlapping regions: the later result is the one shown, in the map and by neighbours_at
    c = Region(1, 2, 8, 16, 12, 20)  # overlaps a on rows 8..11, columns 12..15
    merged = merge_results(merged, search_regions(vid.noisy, [c], P))
    assert [r.region for r in merged] == [b, a, c]
    nb = neighbours_at(merged, 1, 8, 12)
    assert nb.result is merged[-1] and len(nb.dists) == 4
    assert distance_map(merged, vid.noisy.shape)[1, 8, 12] == merged[-1].dists[0, 0, 0, -1]
    assert neighbours_at(merged, 1, 4, 8).result is merged[1]  # only in a


def test_flow_vectors_and_flows(vid):
    v = flow_vectors(vid.fflow, step=8)
    assert v.shape == (6 * 4 * 5, 2, 3)
    t, y, x = v[7, 0].astype(int)
    np.testing.assert_allclose(v[7, 1], [0, vid.fflow[t, 1, y, x], vid.fflow[t, 0, y, x]])
    v = flow_vectors(torch.from_numpy(vid.fflow)[None], step=16, scale=2)
    assert v.shape == (6 * 2 * 2, 2, 3)
    ff, bf = compute_video_flows(vid.clean[:3], "ilk")
    assert ff.shape == bf.shape == (3, 2, 32, 40) and isinstance(ff, np.ndarray)
    inner = (slice(None), slice(8, 24), slice(8, 32))
    err = np.abs(ff[0][inner[0]][:, inner[1], inner[2]] - vid.fflow[0][:, inner[1], inner[2]]).mean()
    assert err < 0.5  # close to the true motion away from the borders
    with pytest.raises(Cancelled):
        compute_video_flows(vid.clean[:3], "ilk", should_stop=lambda: True)
    with pytest.raises(ValueError, match="method"):
        compute_video_flows(vid.clean[:3], "farneback")


def test_search_regions_on_a_lazy_video_reads_only_the_frames_needed(vid):
    da = pytest.importorskip("dask.array")
    u8 = np.clip(np.rint(vid.clean * 255), 0, 255).astype(np.uint8)
    lazy = da.from_array(u8, chunks=(1, 32, 40, 3))
    read = []
    lazy = lazy.map_blocks(lambda b, block_info=None: read.append(block_info[0]["chunk-location"][0]) or b,
                           dtype=np.uint8)
    p = SearchParams(ps=3, ws=5, wt=1, k=4, stride0=2, device="cpu")
    (a,) = search_regions(lazy, [(4, 5, 0, 16, 0, 16)], p)
    (b,) = search_regions(u8, [(4, 5, 0, 16, 0, 16)], p)
    np.testing.assert_array_equal(a.dists, b.dists)
    assert sorted(set(read)) == [3, 4, 5]  # frame 4 and its window, not the whole video


@pytest.mark.parametrize("ps", [3, 7])
def test_gather_patches_reads_a_crop_with_the_frames_mirroring(vid, ps):
    from napari_stnls.ops import gather

    # at the borders (mirrored), fractional, inside, over three frames
    pos = np.array([[0, 0, 0], [1, 31, 39], [2, 0.4, 38.6], [2, 15.5, 20.25], [1, 30.7, 1.2]], np.float32)
    got = gather_patches(vid.noisy, pos, ps=ps)
    full = torch.from_numpy(vid.noisy[:3]).permute(0, 3, 1, 2)[None]
    want = gather(full, torch.from_numpy(pos).view(1, 1, -1, 1, 3), ps=ps)[0, 0, :, 0, 0].permute(0, 2, 3, 1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    # one patch reads only its neighbourhood of its frame
    reads = []

    class Spy:
        shape, dtype = vid.noisy.shape, vid.noisy.dtype

        def __getitem__(self, key):
            reads.append(key)
            return vid.noisy[key]

    gather_patches(Spy(), np.array([[4, 16, 20]], np.float32), ps=ps)
    (key,) = reads
    assert key[0] == slice(4, 5)
    assert key[1].stop - key[1].start <= ps + 6 and key[2].stop - key[2].start <= ps + 6
