"""The denoisers on any pixel type, value range and layout: dtype round trips, sigma in the
data's units (equivariance to a*x + b), axes strings, any number of channels, data_range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stnls.denoise import METHODS, nl_bayes, nl_means, signal_range, skimage_nl_means
from napari_stnls.denoise.nl_means import _nl_means

# small, fast parameters per method (what is checked does not depend on them)
FAST = {"nlm": dict(ws=5, k=6, device="cpu"), "nlb": dict(ws=5, wt=1, ps=3, ps2=3, k=12, k2=20, device="cpu"),
        "skimage": dict(patch_size=3, patch_distance=2)}


def _clean(T=3, H=16, W=20, C=None, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = 0.5 + 0.4 * np.sin(x / 3.0) * np.cos(y / 4.0)
    v = np.stack([np.roll(base, t, axis=1) for t in range(T)])
    if C:
        v = np.stack([v * (0.6 + 0.4 * c / max(C - 1, 1)) for c in range(C)], -1)
    return v + 0.01 * rng.standard_normal(v.shape)


def _noisy(clean, sigma, seed=1):
    return clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)


@pytest.mark.parametrize("name", ["nlm", "nlb", "skimage"])
def test_equivariant_to_scale_and_offset(name):
    """f(a*x + b, a*sigma) == a*f(x, sigma) + b for float input (here a=1000, b=-3)."""
    x = _noisy(_clean(), 0.08)
    f = METHODS[name]
    ref = f(x, 0.08, **FAST[name])
    got = f(1000 * x - 3, 1000 * 0.08, **FAST[name])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, 1000 * ref - 3, rtol=0, atol=1e-6 * 1000)
    # and it denoises
    assert np.abs(ref - _clean()).mean() < 0.8 * np.abs(x - _clean()).mean()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32])
def test_dtype_round_trip(dtype):
    """The result has the input's dtype; integers are the float result rounded and clipped."""
    clean = _clean()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = (max(info.min, -200), min(info.max, 4000))
        a = np.clip(np.rint(lo + (hi - lo) * _noisy(clean, 0.08)), info.min, info.max).astype(dtype)
        sigma = 0.08 * (hi - lo)
    else:
        a = _noisy(clean, 0.08).astype(dtype)
        sigma = 0.08
    out = nl_means(a, sigma, **FAST["nlm"])
    assert out.dtype == a.dtype and out.shape == a.shape
    as_float = nl_means(a.astype(np.float64), sigma, **FAST["nlm"])  # the same values, in float64
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.testing.assert_array_equal(out, np.clip(np.rint(as_float), info.min, info.max).astype(dtype))
        assert np.abs(out.astype(float) - (lo + (hi - lo) * clean)).mean() < \
            0.8 * np.abs(a.astype(float) - (lo + (hi - lo) * clean)).mean()
    else:
        tol = 1e-3 if dtype == np.float16 else 1e-6
        np.testing.assert_allclose(out.astype(np.float64), as_float, atol=tol)


def test_integer_results_are_clipped_to_the_type():
    rng = np.random.default_rng(0)
    a = np.where(rng.random((3, 16, 20)) < 0.5, 0, 255).astype(np.uint8)  # saturated both ways
    a[:, :, :10] = 255
    out = nl_bayes(a, 60, **FAST["nlb"])
    assert out.dtype == np.uint8 and out.min() >= 0 and out.max() == 255  # no wrap-around


def test_data_range_one_is_the_computation_on_the_values_as_they_are():
    """data_range=1.0: the algorithm on the array itself (the behaviour before data_range, for
    data in [0, 1] and sigma on that scale); the default maps to the estimated range."""
    x = _noisy(_clean(), 0.08).astype(np.float32)
    direct = _nl_means(x, 0.08, **FAST["nlm"])
    assert np.array_equal(nl_means(x, 0.08, data_range=1.0, **FAST["nlm"]), direct)
    t = torch.from_numpy(x)[None, :, None]
    assert torch.equal(nl_means(t, 0.08, data_range=1.0, **FAST["nlm"]), _nl_means(t, 0.08, **FAST["nlm"]))
    lo, hi = signal_range(x)
    np.testing.assert_allclose(nl_means(x, 0.08, data_range=(lo, hi), **FAST["nlm"]),
                               nl_means(x, 0.08, **FAST["nlm"]), atol=1e-6)


def test_signal_range_follows_the_signal_not_the_noise():
    clean = _clean(T=4, H=32, W=32)
    lo0, hi0 = clean.min(), clean.max()
    for sigma in (0.02, 0.1):
        lo, hi = signal_range(_noisy(clean, sigma))
        assert abs((hi - lo) - (hi0 - lo0)) < 0.15 * (hi0 - lo0), (sigma, lo, hi)
    lo, hi = signal_range(3.5 * clean - 7)
    np.testing.assert_allclose((lo, hi), 3.5 * np.array(signal_range(clean)) - 7)
    assert signal_range(np.full((2, 8, 8), 5.0)) == (5.0, 10.0)  # constant: still a range
    assert signal_range(np.zeros((2, 8, 8), np.uint8)) == (0.0, 1.0)
    # a constant video comes back unchanged
    assert np.array_equal(nl_bayes(np.full((3, 12, 12), 7, np.uint16), 2.0, **FAST["nlb"]),
                          np.full((3, 12, 12), 7, np.uint16))


@pytest.mark.parametrize("name", ["nlm", "nlb", "skimage"])
def test_axes_layouts_are_the_same_video(name):
    """ZYX is TYX; CTYX is TYXC; TZYX denoises each z-slice's time series on its own; YX is a
    one-frame video; the result comes back in the input's layout."""
    f, kw = METHODS[name], FAST[name]
    x = _noisy(_clean(C=2), 0.08)  # (T, H, W, C)
    ref = f(x, 0.08, axes="TYXC", data_range=1.0, **kw)
    np.testing.assert_array_equal(f(np.moveaxis(x, -1, 0), 0.08, axes="CTYX", data_range=1.0, **kw),
                                  np.moveaxis(ref, -1, 0))
    g = x[..., 0]
    ref_g = f(g, 0.08, data_range=1.0, **kw)
    np.testing.assert_array_equal(f(g, 0.08, axes="ZYX", data_range=1.0, **kw), ref_g)
    stack = np.stack([g, g[:, ::-1]], axis=1)  # (T, Z=2, H, W)
    out = f(stack, 0.08, axes="TZYX", data_range=1.0, **kw)
    assert out.shape == stack.shape
    np.testing.assert_array_equal(out[:, 0], ref_g)
    np.testing.assert_array_equal(out[:, 1], f(g[:, ::-1], 0.08, data_range=1.0, **kw))
    img = f(g[1], 0.08, data_range=1.0, **kw)  # "YX", inferred
    assert img.shape == g[1].shape
    np.testing.assert_array_equal(img, f(g[1:2], 0.08, data_range=1.0, **kw)[0])


@pytest.mark.parametrize("C", [2, 5])
def test_any_number_of_channels(C):
    clean = _clean(C=C)
    x = _noisy(clean, 0.06)
    for name in ("nlm", "nlb", "skimage"):
        out = METHODS[name](x, 0.06, axes="TYXC", **FAST[name])
        assert out.shape == x.shape
        assert np.abs(out - clean).mean() < 0.8 * np.abs(x - clean).mean(), name


def test_tzyx_progress_flows_and_regions():
    g = _noisy(_clean(T=3, H=12, W=14), 0.08)
    stack = np.stack([g, g + 0.1, g - 0.1], axis=1)  # (T, Z=3, H, W)
    seen = []
    ff = torch.zeros(3, 3, 2, 12, 14)  # one per z-slice
    region = (1, 3, 2, 9, 3, 12)
    out = nl_means(stack, 0.08, axes="TZYX", flows=(ff, ff), region=region,
                   progress=lambda d, t: seen.append((d, t)), **FAST["nlm"])
    assert seen[-1][0] == seen[-1][1] and all(t == seen[0][1] for _, t in seen)
    assert [d for d, _ in seen] == list(range(1, seen[-1][1] + 1))
    mask = np.zeros(stack.shape, bool)
    mask[1:3, :, 2:9, 3:12] = True
    assert np.array_equal(out[~mask], stack[~mask])  # outside the region, bit for bit
    assert not np.array_equal(out[mask], stack[mask])
    shared = nl_means(stack, 0.08, axes="TZYX", flows=(ff[0], ff[0]), region=region, **FAST["nlm"])
    np.testing.assert_array_equal(out, shared)  # (T, 2, H, W) flows: the same for every slice
    with pytest.raises(ValueError, match=r"flows \(fflow\)"):
        nl_means(stack, 0.08, axes="TZYX", flows=(ff[:2], ff[:2]), **FAST["nlm"])


def test_uint16_regions_keep_the_outside_and_tensors_keep_their_type():
    a = np.clip(np.rint(200 + 3000 * _noisy(_clean(), 0.05)), 0, None).astype(np.uint16)
    out = nl_bayes(a, 150, region=(0, 2, 4, 12, 5, 15), **FAST["nlb"])
    mask = np.zeros(a.shape, bool)
    mask[0:2, 4:12, 5:15] = True
    assert out.dtype == np.uint16 and np.array_equal(out[~mask], a[~mask])
    t = torch.from_numpy(a.astype(np.int32))[None, :, None]  # (B, T, C, H, W) integer tensor
    o = nl_bayes(t, 150, **FAST["nlb"])
    assert o.dtype == torch.int32 and o.shape == t.shape
    np.testing.assert_array_equal(o[0, :, 0].numpy(), nl_bayes(a.astype(np.int32), 150, **FAST["nlb"]))
    s = skimage_nl_means(a, 150, h=120, **FAST["skimage"])  # h in the data's units, like sigma
    s2 = skimage_nl_means(a.astype(np.float64) / 10, 15, h=12, **FAST["skimage"])
    np.testing.assert_array_equal(s, np.clip(np.rint(s2 * 10), 0, 65535).astype(np.uint16))
