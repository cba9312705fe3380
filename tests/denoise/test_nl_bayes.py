"""nl_bayes' internals: the group filter against float64 ``eigh``, and the skipping of
references (fewer groups, deterministic, regions untouched outside, batches independent)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_stnls.denoise import nl_bayes
from napari_stnls.denoise.params import nl_bayes_params
from napari_stnls.video.synthetic import sample_video

NLB = sys.modules["napari_stnls.denoise.nl_bayes"]  # the module (the package exports the function)


def _reference_filter(yn, yb, var, thresh):
    """The thresholded Wiener filter of every group, in float64, from its definition:
    ``m + U diag(g) U^T (y - m)`` with the full eigen-decomposition."""
    yn = yn.double()
    m = yn.mean(1, keepdim=True)
    c = yn - m if yb is None else yb.double() - yb.double().mean(1, keepdim=True)
    ev, U = torch.linalg.eigh(c.mT @ c / (yn.shape[1] - 1))
    lam = ev - var if yb is None else ev
    g = torch.where(lam > thresh * var, lam / (lam + var), torch.zeros_like(lam))
    return m + (yn - m) @ U @ torch.diag_embed(g) @ U.mT, lam


def _groups(n, k, d, rank, var, seed):
    """``n`` groups of ``k`` patches: a low-rank signal (variances 4 to 40 var) plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, d, d, generator=g, dtype=torch.float64))[0][..., :rank]
    amp = torch.linspace(2, 6.3, rank, dtype=torch.float64) * var**0.5
    signal = (torch.randn(n, k, rank, generator=g, dtype=torch.float64) * amp) @ basis.mT
    clean = 0.5 + signal
    return clean, clean + var**0.5 * torch.randn(n, k, d, generator=g, dtype=torch.float64)


def _mid_gap(lam, near):
    """A threshold (in units of var) between two eigenvalues, near ``near``: no eigenvalue
    is within rounding of it, so float32 and float64 keep the same directions."""
    v = torch.sort(lam.flatten()).values
    i = int(torch.searchsorted(v, torch.tensor(near, dtype=v.dtype)))
    lo, hi = max(1, i - 20), min(len(v) - 1, i + 20)
    gaps = v[lo:hi + 1] - v[lo - 1:hi]
    j = int(gaps.argmax()) + lo
    assert gaps.max() > 1e-3
    return float((v[j - 1] + v[j]) / 2)


@pytest.mark.parametrize("step", [1, 2])
def test_group_filter_matches_float64_eigh(step):
    var = (20 / 255) ** 2
    clean, noisy = _groups(24, 60, 50, 6, var, seed=step)
    guide = None if step == 1 else clean + 0.3 * (noisy - clean)  # a basic estimate: some noise left
    _, lam = _reference_filter(noisy, guide, var, 0.0)
    thresh = _mid_gap(lam[10:] / var, 1.0 if step == 1 else 1.2)
    if step == 2:
        # flat groups keep no direction (their estimate is their mean, without eigh); faint
        # ones keep one, although their covariance's norm is close to the threshold
        g = torch.Generator().manual_seed(7)
        guide[:5] = guide[:5].mean(1, keepdim=True)
        z = torch.randn(5, 60, 1, generator=g, dtype=torch.float64)
        z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)
        u = torch.nn.functional.normalize(torch.randn(5, 1, 50, generator=g, dtype=torch.float64), dim=-1)
        guide[5:10] = guide[5:10].mean(1, keepdim=True) + (1.6 * thresh * var) ** 0.5 * z * u
    ref, lam = _reference_filter(noisy, guide, var, thresh)
    # the eigenvalues the float32 solver sees (but for the flat groups: on covariances of
    # about 1e-31, MKL's float32 eigh can return NaN, which the filter never asks it for)
    c = noisy - noisy.mean(1, keepdim=True) if guide is None else guide - guide.mean(1, keepdim=True)
    cov = c.mT @ c / 59
    ev32, _ = NLB._eigh(cov[5:].float())
    np.testing.assert_allclose(ev32.double() - (var if step == 1 else 0), lam[5:], atol=2e-5)
    kept = (lam > thresh * var).sum(-1)
    assert int(kept.max()) < 50 and int(kept[10:].min()) > 0  # the low-rank product drops directions
    if step == 2:
        assert int(kept[:5].max()) == 0 and kept[5:10].tolist() == [1] * 5
        assert float(cov[5:10].flatten(1).norm(dim=1).max()) < 2 * thresh * var  # what a looser bound drops
    out = NLB._group_filter(noisy.float(), None if guide is None else guide.float(), var, thresh)
    assert out.dtype == torch.float32 and out.shape == noisy.shape and bool(out.isfinite().all())
    np.testing.assert_allclose(out.double(), ref, atol=2e-5)
    # the filter does what it is for: closer to the clean patches than the noisy ones are
    err, noise = float(((out[10:].double() - clean[10:]) ** 2).mean()), float(((noisy - clean) ** 2).mean())
    assert err < 0.5 * noise, (err, noise)


def test_group_filter_with_nothing_kept_returns_the_group_mean():
    clean, noisy = _groups(4, 30, 12, 2, 0.01, seed=3)
    out = NLB._group_filter(noisy.float(), None, 0.01, 1e6)
    torch.testing.assert_close(out, noisy.float().mean(1, keepdim=True).expand_as(out))


def test_chunked_filter_is_the_same_on_any_number_of_threads():
    clean, noisy = _groups(700, 40, 27, 4, 0.01, seed=4)  # several chunks
    yn, yb = noisy.float(), clean.float()
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = NLB._filter(yn, yb, 0.01, 0.5)
        torch.set_num_threads(2)
        two = NLB._filter(yn, yb, 0.01, 0.5)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(n0)
    assert torch.equal(one, two)
    torch.testing.assert_close(one, NLB._group_filter(yn, yb, 0.01, 0.5), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def sample():
    return sample_video(n_frames=4, size=(32, 40), sigma=20 / 255, seed=2)


# small patches and groups: what is checked does not depend on their size
KW = dict(device="cpu", data_range=1.0, ws=7, wt=1, ps=3, ps2=3, pt=2, k=20, k2=30, stride0=2)


def test_skipping_processes_fewer_groups_at_little_cost(sample, monkeypatch):
    seen = _count_groups(monkeypatch)
    full = nl_bayes(sample.noisy, 20 / 255, skip=0, skip2=0, **KW)
    n_full = sum(seen)
    seen.clear()
    fast = nl_bayes(sample.noisy, 20 / 255, skip=1, skip2=1, **KW)
    n_fast = sum(seen)
    assert n_fast < 0.6 * n_full, (n_fast, n_full)
    p_full = psnr(sample.clean, np.clip(full, 0, 1), data_range=1.0)
    p_fast = psnr(sample.clean, np.clip(fast, 0, 1), data_range=1.0)
    assert p_fast > p_full - 0.3, (p_full, p_fast)
    # the first frame runs every reference: only the later ones can skip
    assert not np.array_equal(full[1:], fast[1:])


def test_skipping_is_deterministic_and_independent_of_the_bands(sample):
    kw = dict(KW, skip=1, skip2=1)
    a = nl_bayes(sample.noisy, 20 / 255, **kw)
    assert np.array_equal(a, nl_bayes(sample.noisy, 20 / 255, **kw))
    # bands of 3 rows (rounded up to 4, whole grid rows): the same references run
    np.testing.assert_allclose(nl_bayes(sample.noisy, 20 / 255, band_rows=3, **kw), a, atol=1e-5)


def test_skipping_keeps_regions_and_their_outside(sample):
    kw = dict(KW, skip=1, skip2=1, band_rows=4)
    regions = [(1, 4, 4, 20, 6, 30), (0, 2, 18, 32, 20, 40)]
    both = nl_bayes(sample.noisy, 20 / 255, region=regions, **kw)
    mask = np.zeros(sample.noisy.shape[:3], bool)
    for t0, t1, y0, y1, x0, x1 in regions:
        mask[t0:t1, y0:y1, x0:x1] = True
    assert np.array_equal(both[~mask], sample.noisy[~mask])
    for r in regions:
        alone = nl_bayes(sample.noisy, 20 / 255, region=r, **kw)
        sl = (slice(r[0], r[1]), slice(r[2], r[3]), slice(r[4], r[5]))
        if r is regions[-1]:  # the last one listed gives the overlap
            assert np.array_equal(both[sl], alone[sl])
        outside = np.ones(mask.shape, bool)
        outside[sl] = False
        assert np.array_equal(alone[outside], sample.noisy[outside])
    assert psnr(sample.clean[mask], np.clip(both[mask], 0, 1), data_range=1.0) > psnr(
        sample.clean[mask], sample.noisy[mask], data_range=1.0) + 5


def test_skipping_in_a_batch_treats_each_video_on_its_own(sample):
    # nl_bayes hands its core one video at a time; the core itself takes batches, whose
    # videos skip references each on its own coverage
    other = sample_video(n_frames=4, size=(32, 40), sigma=20 / 255, seed=5, shift=(-0.7, 1.1))
    v = torch.stack([torch.from_numpy(s.noisy).permute(0, 3, 1, 2) for s in (sample, other)])
    kw = {k: v for k, v in KW.items() if k != "data_range"} | dict(skip=1, skip2=1)
    both = NLB._nl_bayes(v, 20 / 255, **kw)
    for b in range(2):
        alone = NLB._nl_bayes(v[b:b + 1], 20 / 255, **kw)
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,match", [(dict(skip=-1), "skip:"), (dict(skip2="1"), "skip2:"),
                                          (dict(skip=True), "skip:")])
def test_skip_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nl_bayes(np.zeros((3, 8, 8), np.float32), 0.1, device="cpu", **kwargs)


def test_skipping_gives_the_same_result_on_any_number_of_threads(sample):
    kw = dict(KW, skip=1, skip2=1)
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nl_bayes(sample.noisy, 20 / 255, **kw)
        torch.set_num_threads(2)
        two = nl_bayes(sample.noisy, 20 / 255, **kw)
    finally:
        torch.set_num_threads(n0)
    assert np.array_equal(one, two)


def test_skipping_reports_every_band_and_cancel_leaves_nothing_behind(sample):
    import threading

    from napari_stnls._util import Cancelled

    kw = dict(KW, skip=1, skip2=1, band_rows=4)  # several bands per frame, some skipped whole
    calls = []
    nl_bayes(sample.noisy, 20 / 255, progress=lambda d, t: calls.append((d, t)), **kw)
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > len(calls) // 2  # in the middle of step 1 or 2, after skipped bands

    noisy, n0, threads = sample.noisy.copy(), torch.get_num_threads(), threading.active_count()
    with pytest.raises(Cancelled):
        nl_bayes(sample.noisy, 20 / 255, should_stop=stop, **kw)
    assert np.array_equal(sample.noisy, noisy)
    assert torch.get_num_threads() == n0 and threading.active_count() == threads


@pytest.fixture(scope="module")
def moving():
    """A scene translating 4 px a frame with its exact flows: every reference is fast at a
    threshold of 3 px, none at 6 (beyond the round trips that leave the frame)."""
    v = sample_video(n_frames=3, size=(24, 32), sigma=20 / 255, seed=3, shift=(4.0, 0.0), rotation=0, zoom=1)
    return v, (torch.from_numpy(v.fflow)[None], torch.from_numpy(v.bflow)[None])


def test_fast_references_follow_the_flow_length_and_consistency(moving):
    v, flows = moving
    assert NLB._fast_refs(None, 3.0) is None and NLB._fast_refs(flows, float("inf")) is None
    assert bool(NLB._fast_refs(flows, 3.0).all())
    slow = NLB._fast_refs(flows, 6.0)[0]
    # only the content that leaves the frame (the last 4 columns going forward, the first 4
    # going backward) fails the forward-backward check
    expect = torch.zeros(3, 24, 32, dtype=torch.bool)
    expect[:2, :, -4:] = True
    expect[1:, :, :4] = True
    assert torch.equal(slow, expect)


def test_fast_references_with_the_same_patches_change_nothing(moving):
    # which references are fast only picks their patches: with the same patches for both, the
    # result is the one without any fast reference (up to the order of the sums)
    v, flows = moving
    kw = dict(KW, flows=flows, skip=1, skip2=1)
    off = nl_bayes(v.noisy, 20 / 255, fast_motion=float("inf"), **kw)
    same = nl_bayes(v.noisy, 20 / 255, fast_motion=5.0, ps_fast=3, pt_fast=2, **kw)
    np.testing.assert_allclose(same, off, atol=1e-5)
    other = nl_bayes(v.noisy, 20 / 255, fast_motion=3.0, ps_fast=5, pt_fast=1, **kw)
    assert not np.allclose(other, off, atol=1e-3)
    assert psnr(v.clean, np.clip(other, 0, 1), data_range=1.0) > psnr(v.clean, v.noisy, data_range=1.0) + 5


def test_fast_references_keep_the_outside_of_a_region(moving):
    v, flows = moving
    r = (1, 2, 4, 20, 6, 26)
    out = nl_bayes(v.noisy, 20 / 255, region=r, flows=flows, fast_motion=3.0, ps_fast=5, pt_fast=1, **KW)
    outside = np.ones(v.noisy.shape[:3], bool)
    outside[1:2, 4:20, 6:26] = False
    assert np.array_equal(out[outside], v.noisy[outside])


@pytest.mark.parametrize("kwargs,match", [(dict(fast_motion=-1), "fast_motion:"),
                                          (dict(ps_fast=0), "ps_fast:"), (dict(pt_fast=1.5), "pt_fast:")])
def test_fast_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nl_bayes(np.zeros((3, 8, 8), np.float32), 0.1, device="cpu", **kwargs)


def _still_oracle(noisy, t):
    """The two statistics that tell still pixels of frame ``t``, from the definition, in
    float64: the sample variance over frames ``t - 1 .. t + 1`` (those there are), averaged
    over the channels and the window (cut at the borders); and the spatial variance over the
    window of those frames' mean, averaged over the channels, less the noise's share
    ``var / n`` (added by the caller). Still where the first is under ``STILL_RATIO * var``
    and the second under ``STILL_FLAT * var``."""
    T, H, W, C = noisy.shape
    v = noisy[t - 1:t + 2].astype(np.float64)
    d, mu = v.var(0, ddof=1).mean(-1), v.mean(0)
    r = NLB.STILL_WIN // 2
    temporal, spatial = np.zeros((H, W)), np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            temporal[y, x] = d[win].mean()
            spatial[y, x] = mu[win].reshape(-1, C).var(0).mean()
    return temporal, spatial, len(v)


def _texture_video(T, shift, sigma, seed):
    """(T, 24, 32, 3): a high-contrast random texture moved by a whole ``shift`` (dy, dx) a
    frame (np.roll: exact), plus white noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (24, 32, 3)).astype(np.float32)
    clean = np.stack([np.roll(base, (shift[0] * t, shift[1] * t), (0, 1)) for t in range(T)])
    return clean, (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)


@pytest.mark.parametrize("flat", [float("inf"), 0.1])
def test_still_pixels_follow_the_definition(flat, monkeypatch):
    monkeypatch.setattr(NLB, "STILL_FLAT", flat)  # inf: the default, no flatness test
    var = (20 / 255) ** 2
    # 4 frames of 48 x 64, each with its own noise: flat on the right, a still texture on the
    # left, and in frame 2 the bottom right quarter replaced by the texture (it moves there:
    # frames 1, 2 and 3 see it, through their next, own or previous frame)
    rng = np.random.default_rng(3)
    clean = np.full((4, 48, 64, 3), 0.5, np.float32)
    clean[:, :, :32] = rng.uniform(0, 1, (48, 32, 3))
    clean[2, 24:, 32:] = clean[2, 24:, :32]
    v = (clean + rng.normal(0, 20 / 255, clean.shape)).astype(np.float32)
    x = torch.from_numpy(v).permute(0, 3, 1, 2)[None]
    assert not bool(NLB._still_refs(x, 0, var).any())  # the first frame has no earlier one
    lt, ls = NLB.STILL_RATIO * var, NLB.STILL_FLAT * var
    for t in (1, 2, 3):
        got = NLB._still_refs(x, t, var)[0].numpy()
        temporal, spatial, n = _still_oracle(v, t)
        spatial -= var / n
        want = (temporal < lt) & (spatial < ls)
        # float32 rounding decides the pixels at a threshold
        clear = np.abs(temporal - lt) > 1e-5 * lt
        clear &= np.isinf(ls) | (np.abs(spatial - ls) > 1e-5 * ls + 1e-7)
        assert clear.mean() > 0.99
        assert np.array_equal(got[clear], want[clear]), (t, (got[clear] != want[clear]).sum())
        if t == 2:  # all three kinds of pixels are there
            assert want[:12, 50:].all()  # still and flat
            # still and textured: still without the flatness test, not with it
            assert (temporal[:, :20] < lt).mean() > 0.5 and want[:, :20].any() == (flat == float("inf"))
            assert not want[36:, 44:].any() and (temporal[36:, 44:] >= lt).all()  # moving
    # cut to rows and columns with the window's margin (what a region computes): the same answer
    m, full = NLB.STILL_WIN // 2, NLB._still_refs(x, 2, var)
    part = NLB._still_refs(x[..., 1:48, 2:61], 2, var)  # rows 1..47 (the bottom border), columns 2..60
    assert torch.equal(part[:, m:, m:59 - m], full[:, 1 + m:, 2 + m:61 - m])
    assert bool(full.any()) and not bool(full.all())


def _count_groups(monkeypatch):
    seen = []
    inner = NLB._group_filter

    def counting(yn, *args):
        seen.append(yn.shape[0])
        return inner(yn, *args)

    monkeypatch.setattr(NLB, "_group_filter", counting)
    return seen


def _flat_video(T, seed):
    """(T, 24, 32, 3): a flat grey under fixed noise of 10/255 (half the sigma the tests pass):
    every pixel stands still and is flat for the rule."""
    rng = np.random.default_rng(seed)
    return (0.5 + rng.normal(0, 10 / 255, (T, 24, 32, 3))).astype(np.float32)


def test_still_video_skips_nothing(monkeypatch):
    # every pixel stands still: with the default (still=inf) every reference runs (the groups
    # and the result of no skipping), and with still=1 (the former rule) some are skipped
    v = _flat_video(4, seed=1)
    x = torch.from_numpy(v).permute(0, 3, 1, 2)[None]
    assert all(bool(NLB._still_refs(x, t, (20 / 255) ** 2).all()) for t in range(1, 4))
    seen = _count_groups(monkeypatch)
    none = nl_bayes(v, 20 / 255, skip=0, skip2=0, **KW)
    n_none = sum(seen)
    seen.clear()
    kept = nl_bayes(v, 20 / 255, skip=1, skip2=1, still=float("inf"), **KW)
    assert sum(seen) == n_none
    np.testing.assert_allclose(kept, none, atol=1e-6)
    seen.clear()
    nl_bayes(v, 20 / 255, skip=1, skip2=1, still=1.0, **KW)  # the former rule
    n_one = sum(seen)
    assert n_one < 0.8 * n_none
    seen.clear()
    nl_bayes(v, 20 / 255, skip=1, skip2=1, still=3.0, **KW)  # 3x the estimates where still
    assert n_one < sum(seen) < n_none
    # the defaults: still = 3 up to sigma 30, inf (nothing skipped where still) from 40 on
    assert nl_bayes_params(20 / 255)["still"] == 3.0
    assert nl_bayes_params(45 / 255)["still"] == float("inf")
    seen.clear()
    nl_bayes(v, 20 / 255, skip=1, skip2=1, **KW)
    assert n_one < sum(seen) < n_none
    seen.clear()
    none50 = nl_bayes(v, 50 / 255, skip=0, skip2=0, **KW)
    n_none50 = sum(seen)
    seen.clear()
    kept50 = nl_bayes(v, 50 / 255, skip=1, skip2=1, **KW)
    assert sum(seen) == n_none50
    np.testing.assert_allclose(kept50, none50, atol=1e-6)


def test_moving_video_skips_as_without_the_rule(monkeypatch):
    # a high-contrast texture moving 2 px a frame: no pixel stands still, so the rule changes
    # nothing (the same groups, the same result)
    clean, v = _texture_video(4, (1, 2), 20 / 255, seed=2)
    x = torch.from_numpy(v).permute(0, 3, 1, 2)[None]
    assert not any(bool(NLB._still_refs(x, t, (20 / 255) ** 2).any()) for t in range(4))
    seen = _count_groups(monkeypatch)
    today = nl_bayes(v, 20 / 255, skip=1, skip2=1, still=1.0, **KW)
    n_today = sum(seen)
    seen.clear()
    ruled = nl_bayes(v, 20 / 255, skip=1, skip2=1, still=float("inf"), **KW)
    assert sum(seen) == n_today
    assert np.array_equal(ruled, today)
    seen.clear()
    nl_bayes(v, 20 / 255, skip=0, skip2=0, **KW)
    assert n_today < sum(seen)  # skipping does act on this video


def test_still_rule_is_independent_of_the_bands_and_keeps_the_outside(sample):
    v = _flat_video(4, seed=4)
    v[:, :, :12] = sample.noisy[:, :24, :12]  # moving content on the left, still and flat on the right
    kw = dict(KW, skip=1, skip2=1, still=3.0)
    a = nl_bayes(v, 20 / 255, **kw)
    np.testing.assert_allclose(nl_bayes(v, 20 / 255, band_rows=3, **kw), a, atol=1e-5)
    assert not np.allclose(a, nl_bayes(v, 20 / 255, **dict(kw, still=1.0)), atol=1e-4)  # it acts here
    r = (1, 4, 4, 20, 6, 30)
    out = nl_bayes(v, 20 / 255, region=r, band_rows=4, **kw)
    outside = np.ones(v.shape[:3], bool)
    outside[1:4, 4:20, 6:30] = False
    assert np.array_equal(out[outside], v[outside])


@pytest.mark.parametrize("kwargs,match", [(dict(still=-1), "still:"), (dict(still="2"), "still:")])
def test_still_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nl_bayes(np.zeros((3, 8, 8), np.float32), 0.1, device="cpu", **kwargs)
