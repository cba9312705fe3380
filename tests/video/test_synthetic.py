"""The sample video: shapes, dtypes, noise, and flows that agree with the warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_stnls.video.synthetic import SampleVideo, sample_video

SIZE = (48, 64)


@pytest.fixture(scope="module")
def vid() -> SampleVideo:
    return sample_video(n_frames=4, size=SIZE, seed=3)


def _warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """frame (H, W, 3) read at p + flow(p), flow (2, H, W) = (dx, dy); cubic like the sampler."""
    H, W = frame.shape[:2]
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    coords = np.stack([yy + flow[1], xx + flow[0]])
    return np.stack(
        [ndimage.map_coordinates(frame[..., c], coords, order=3, mode="reflect") for c in range(3)], -1
    )


def test_shapes_and_dtypes(vid):
    T, (H, W) = 4, SIZE
    assert vid.clean.shape == vid.noisy.shape == (T, H, W, 3)
    assert vid.fflow.shape == vid.bflow.shape == (T, 2, H, W)
    for a in (vid.clean, vid.noisy, vid.fflow, vid.bflow):
        assert a.dtype == np.float32
        assert np.isfinite(a).all()
    assert vid.shape == (T, H, W, 3)
    assert vid.sigma == pytest.approx(20 / 255)
    assert vid.clean.min() >= 0 and vid.clean.max() <= 1
    assert vid.clean.std() > 0.05  # a real scene, not a flat image


def test_defaults():
    v = sample_video()
    assert v.clean.shape == (5, 128, 160, 3)
    assert v.fflow.shape == (5, 2, 128, 160)


def test_flow_ends_are_zero_and_motion_is_subpixel(vid):
    assert not vid.fflow[-1].any()
    assert not vid.bflow[0].any()
    f = vid.fflow[:-1]
    # about (1.3, 0.6) px per frame plus a small rotation/zoom: smooth, non-uniform, not integer
    assert abs(float(f[:, 0].mean()) - 1.3) < 0.2 and abs(float(f[:, 1].mean()) - 0.6) < 0.2
    assert float(f.std(axis=(2, 3)).min()) > 0.01
    assert np.abs(f - np.round(f)).mean() > 0.1


@pytest.mark.parametrize("t", [0, 1, 2])
def test_fflow_matches_the_warp(vid, t):
    """Frame t+1 read at p + fflow[t](p) is frame t (interior; cubic resampling error only)."""
    back = _warp(vid.clean[t + 1], vid.fflow[t])
    m = 6
    err = np.abs(back - vid.clean[t])[m:-m, m:-m]
    no_motion = np.abs(vid.clean[t + 1] - vid.clean[t])[m:-m, m:-m]
    assert err.mean() < 0.01, err.mean()
    assert err.mean() < 0.25 * no_motion.mean()
    # the flow is right to well under half a pixel: a 0.5 px error in it is clearly worse
    off = np.abs(_warp(vid.clean[t + 1], vid.fflow[t] + 0.5) - vid.clean[t])[m:-m, m:-m]
    assert err.mean() < 0.5 * off.mean()


@pytest.mark.parametrize("t", [1, 2, 3])
def test_bflow_matches_the_warp(vid, t):
    back = _warp(vid.clean[t - 1], vid.bflow[t])
    m = 6
    err = np.abs(back - vid.clean[t])[m:-m, m:-m]
    assert err.mean() < 0.01, err.mean()


def test_fflow_and_bflow_are_inverse(vid):
    """Going forward then backward returns to the start: p + f(p) + b_{t+1}(p + f(p)) = p."""
    t = 1
    H, W = SIZE
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    y1, x1 = yy + vid.fflow[t, 1], xx + vid.fflow[t, 0]
    by = ndimage.map_coordinates(vid.bflow[t + 1, 1], [y1, x1], order=1, mode="nearest")
    bx = ndimage.map_coordinates(vid.bflow[t + 1, 0], [y1, x1], order=1, mode="nearest")
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(y1 + by - yy)[inner].max() < 1e-3
    assert np.abs(x1 + bx - xx)[inner].max() < 1e-3


def test_noise(vid):
    n = vid.noisy - vid.clean
    assert abs(float(n.std()) - vid.sigma) < 0.03 * vid.sigma
    assert abs(float(n.mean())) < 0.1 * vid.sigma
    assert vid.noisy.min() < 0 or vid.noisy.max() > 1  # not clipped


def test_seed_and_zero_sigma():
    a = sample_video(n_frames=2, size=(16, 16), seed=1)
    b = sample_video(n_frames=2, size=(16, 16), seed=1)
    c = sample_video(n_frames=2, size=(16, 16), seed=2)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    np.testing.assert_array_equal(a.clean, c.clean)
    assert not np.array_equal(a.noisy, c.noisy)
    z = sample_video(n_frames=2, size=(16, 16), sigma=0)
    np.testing.assert_array_equal(z.noisy, z.clean)


def test_one_frame():
    v = sample_video(n_frames=1, size=(16, 20))
    assert v.clean.shape == (1, 16, 20, 3)
    assert not v.fflow.any() and not v.bflow.any()


def test_to_torch(vid):
    clean, noisy, (fflow, bflow) = vid.to_torch()
    T, (H, W) = 4, SIZE
    assert clean.shape == noisy.shape == (1, T, 3, H, W)
    assert fflow.shape == bflow.shape == (1, T, 2, H, W)
    assert clean.dtype == torch.float32
    assert torch.equal(clean[0, 2, 1], torch.from_numpy(vid.clean[2, :, :, 1]))
    assert torch.equal(fflow[0, 1], torch.from_numpy(vid.fflow[1]))
    c64, _, flows64 = vid.to_torch(dtype=torch.float64)
    assert c64.dtype == flows64[0].dtype == torch.float64


def test_flows_guide_search_to_the_true_position():
    """On the clean video with the true flow, the best match in frame t+1 is (mostly) the true position.

    Not always: in flat areas a neighbour read bilinearly can be as close.
    """
    from napari_stnls.ops import Region, query_coords, search

    v = sample_video(n_frames=3, size=(32, 40), sigma=0)
    clean, _, flows = v.to_torch()
    region = Region(1, 2, 8, 24, 8, 32)
    ws = 5
    d, i = search(clean, clean, ps=5, ws=ws, wt=1, k=3 * ws * ws, flows=flows, region=region, stride0=4)
    inds = i[0, 0].numpy()
    q = query_coords(clean.shape, region, 4).numpy()
    first = np.argmax(inds[..., 0] == 2, axis=1)  # best-ranked match in frame 2, per query
    best = inds[np.arange(len(q)), first]
    ty = q[:, 1] + v.fflow[1, 1, q[:, 1], q[:, 2]]
    tx = q[:, 2] + v.fflow[1, 0, q[:, 1], q[:, 2]]
    err = np.hypot(best[:, 1] - ty, best[:, 2] - tx)
    assert (err < 1e-3).mean() > 0.75, err  # by chance: 1 in ws*ws = 25


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_frames=0), "n_frames"),
        (dict(n_frames=2.5), "n_frames"),
        (dict(n_frames=True), "n_frames"),
        (dict(size=(4, 20)), "size"),
        (dict(size=(20,)), "size"),
        (dict(size="ab"), "size"),
        (dict(size=(20.0, 20)), "size"),
        (dict(size=(2000, 2000)), "size"),
        (dict(sigma=-0.1), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(sigma="0.1"), "sigma"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(shift=(1, 2, 3)), "shift"),
        (dict(rotation=float("inf")), "rotation"),
        (dict(zoom=0), "zoom"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample_video(**kwargs)
