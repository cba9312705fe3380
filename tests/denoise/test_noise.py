"""Noise models: the generalised Anscombe transform and its exact unbiased inverse, noise
estimation on generated Gaussian and Poisson-Gaussian videos, denoising with
noise="poisson-gaussian", and calibration by the J-invariant loss."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stnls.denoise import (
    anscombe,
    anscombe_inverse,
    calibrate,
    estimate_noise,
    nl_bayes,
    nl_means,
)
from napari_stnls.video.synthetic import sample_video


def _blobs(T=6, H=72, W=96, seed=3, background=100.0):
    """A fluorescence-like time-lapse: Gaussian spots of 200-2000 counts drifting over a background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    centres = rng.uniform(0, 1, (25, 2)) * [H, W]
    radii, amps = rng.uniform(3, 8, 25), rng.uniform(200, 2000, 25)
    clean = np.full((T, H, W), background)
    for t in range(T):
        for (cy, cx), r, a in zip(centres, radii, amps, strict=True):
            clean[t] += a * np.exp(-((yy - cy - t) ** 2 + (xx - cx - 0.5 * t) ** 2) / (2 * r * r))
    return clean


def _poisson_gaussian(clean, gain, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return gain * rng.poisson(clean / gain) + rng.normal(0, sigma, clean.shape)


@pytest.mark.parametrize("x", [0.5, 3.0, 30.0, 2000.0])
def test_exact_unbiased_inverse_recovers_the_mean(x):
    """inverse(E[GAT(y) | x]) == x, with E estimated from 10^6 draws; the algebraic inverse is
    biased at low counts."""
    gain, sigma = 2.0, 1.0
    d = anscombe(_poisson_gaussian(np.full(1_000_000, x), gain, sigma), gain, sigma)
    exact = float(anscombe_inverse(d.mean(), gain, sigma))
    se = 2 * d.std() / 1e3 * (np.sqrt(gain * x + sigma**2) + 1)  # the Monte Carlo error, taken to x
    assert abs(exact - x) < max(0.02 * x, se), (x, exact)
    algebraic = gain * ((d.mean() / 2) ** 2 - 3 / 8 - (sigma / gain) ** 2)
    if x <= 3:
        assert abs(algebraic - x) > 5 * abs(exact - x)
    if x >= 30:  # stabilised: unit variance
        assert abs(d.std() - 1) < 0.02


def test_anscombe_round_trip_and_arguments():
    x = np.array([0.0, 1.0, 10.0, 500.0, 1e4, 1e6])
    d = anscombe(x, 3.0, 2.0)
    assert np.all(np.diff(d) > 0)
    inv = anscombe_inverse(d, 3.0, 2.0)  # of a noiseless value: x where the noise's Jensen gap vanishes
    np.testing.assert_allclose(inv[3:], x[3:], rtol=0.002)
    assert inv[2] > x[2]  # at 3 counts E[GAT(y)] < GAT(x): the exact inverse of GAT(x) is above x
    # continuous where the table hands over to the closed form (x / gain = 300)
    e = np.linspace(anscombe(850.0, 3.0, 2.0), anscombe(950.0, 3.0, 2.0), 2001)
    assert np.all(np.diff(anscombe_inverse(e, 3.0, 2.0)) > 0)
    assert anscombe_inverse(-5.0, 3.0, 2.0) == 0.0
    with pytest.raises(ValueError, match="gain"):
        anscombe(x, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        anscombe_inverse(x, 1.0, float("nan"))


def test_estimate_gaussian_noise_within_ten_percent():
    rng = np.random.default_rng(0)
    natural = sample_video(n_frames=6, size=(64, 96), sigma=0, seed=1).clean.astype(np.float64)
    for sigma in (20 / 255, 50 / 255):
        noisy = natural + rng.normal(0, sigma, natural.shape)
        assert abs(estimate_noise(noisy) / sigma - 1) < 0.1
        # in any units and layout: scaled with the data, shifted not at all
        got = estimate_noise(np.moveaxis(1000 * noisy - 3, -1, 0), axes="CTYX")
        assert got == pytest.approx(1000 * estimate_noise(noisy), rel=1e-9)
    blobs = _blobs()
    for sigma in (10.0, 40.0):
        noisy = np.clip(np.rint(blobs + rng.normal(0, sigma, blobs.shape)), 0, None).astype(np.uint16)
        assert abs(estimate_noise(noisy) / sigma - 1) < 0.1


@pytest.mark.parametrize("gain,sigma", [(2.0, 10.0), (5.0, 30.0)])
def test_estimate_poisson_gaussian_noise_within_ten_percent(gain, sigma):
    noisy = _poisson_gaussian(_blobs(T=8, H=96, W=128), gain, sigma)
    g, s = estimate_noise(noisy, model="poisson-gaussian")
    assert abs(g / gain - 1) < 0.1 and abs(s / sigma - 1) < 0.1, (g, s)
    with pytest.raises(ValueError, match="model"):
        estimate_noise(noisy, model="poisson")
    with pytest.raises(ValueError, match="too small"):
        estimate_noise(noisy[:, :5, :5])


def test_poisson_gaussian_denoising_beats_one_gaussian_sigma():
    clean = _blobs(T=4, H=48, W=64)
    gain, sigma = 4.0, 5.0
    noisy = np.clip(np.rint(_poisson_gaussian(clean, gain, sigma)), 0, 65535).astype(np.uint16)
    kw = dict(ws=7, wt=1, ps=3, ps2=3, k=20, k2=30, device="cpu")
    pg = nl_bayes(noisy, sigma, noise="poisson-gaussian", gain=gain, **kw)
    assert pg.dtype == np.uint16 and pg.shape == noisy.shape
    flat = nl_bayes(noisy, float(np.sqrt(gain * clean.mean() + sigma**2)), **kw)  # one sigma for all levels

    def mse(a):
        return float(((a.astype(np.float64) - clean) ** 2).mean())

    assert mse(pg) < 0.35 * mse(noisy) and mse(pg) < 0.9 * mse(flat), (mse(noisy), mse(flat), mse(pg))
    # regions: the outside bit for bit, in every noise model
    part = nl_means(noisy, sigma, noise="poisson-gaussian", gain=gain, region=(1, 3, 8, 30, 10, 40), ws=5,
                    k=8, device="cpu")
    mask = np.zeros(noisy.shape, bool)
    mask[1:3, 8:30, 10:40] = True
    assert np.array_equal(part[~mask], noisy[~mask]) and not np.array_equal(part[mask], noisy[mask])
    with pytest.raises(ValueError, match="gain: needed"):
        nl_means(noisy, sigma, noise="poisson-gaussian")
    with pytest.raises(ValueError, match="gain: goes with"):
        nl_means(noisy, sigma, gain=2.0)
    with pytest.raises(ValueError, match="noise: expected"):
        nl_means(noisy, sigma, noise="poisson")


def test_calibration_picks_the_best_of_a_grid():
    """The J-invariant loss picks the candidate with the lowest error against the clean video
    (which it never sees), and is that error plus the noise's variance, about."""
    v = sample_video(n_frames=3, size=(40, 48), sigma=20 / 255, seed=2)
    clean, noisy = v.clean.mean(-1), v.noisy.mean(-1)
    s = 20 / 255 / np.sqrt(3)  # the grey mean of three channels with independent noise
    kw = dict(ws=5, k=16, device="cpu")
    grid = {"sigma": [0.25 * s, 1.5 * s, 8 * s]}  # too little, about right, too much
    true = [float(((nl_means(noisy, c, **kw) - clean) ** 2).mean()) for c in grid["sigma"]]
    seen = []
    c = calibrate(noisy, "nlm", s, grid=grid, progress=lambda d, t: seen.append((d, t)), **kw)
    losses = [loss for _, loss in c.losses]
    assert int(np.argmin(losses)) == int(np.argmin(true)) == 1
    assert c.best == {"sigma": grid["sigma"][1]} and c.params["sigma"] == grid["sigma"][1]
    assert c.params["ws"] == 5 and c.params["k"] == 16 and seen[-1] == (12, 12)  # 3 candidates x 4 masks
    assert all(loss > s**2 for loss in losses) and min(losses) - s**2 < 3 * min(true)
    assert "chose sigma=" in str(c) and "given" in str(c)
    # sigma estimated when not given, and said so
    c2 = calibrate(noisy, "nlm", grid={"k": [4, 12]}, ws=5, device="cpu")
    assert c2.noise["estimated"] and abs(c2.params["sigma"] / s - 1) < 0.3 and set(c2.best) == {"k"}
    with pytest.raises(ValueError, match="method"):
        calibrate(noisy, "bm3d", s)
    with pytest.raises(ValueError, match="grid"):
        calibrate(noisy, "nlm", s, grid={"sigma": []})
