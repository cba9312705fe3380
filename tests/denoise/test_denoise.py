"""nl_means: restores real images, region mode equals the whole video inside and leaves the
outside untouched, NumPy and torch layouts, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_stnls.denoise import nl_means
from napari_stnls.video.synthetic import sample_video


@pytest.fixture(scope="module")
def sample():
    return sample_video(n_frames=4, size=(48, 64), sigma=20 / 255, seed=1)


def test_denoises_a_real_sequence_along_the_flow(sample):
    fflow, bflow = (torch.from_numpy(f)[None] for f in (sample.fflow, sample.bflow))
    noisy = sample.noisy.copy()
    out = nl_means(sample.noisy, 20 / 255, flows=(fflow, bflow), device="cpu")
    assert np.array_equal(sample.noisy, noisy)  # input untouched
    assert out.shape == sample.noisy.shape and out.dtype == sample.noisy.dtype
    before = psnr(sample.clean, sample.noisy, data_range=1.0)
    after = psnr(sample.clean, np.clip(out, 0, 1), data_range=1.0)
    assert after > before + 5.0, (before, after)


def test_region_mode_equals_whole_video_inside_and_keeps_outside(sample):
    whole = nl_means(sample.noisy, 20 / 255, device="cpu")
    regions = [(1, 3, 5, 30, 10, 40), (2, 4, 20, 48, 30, 64)]  # overlapping in frame 2
    calls = []
    part = nl_means(sample.noisy, 20 / 255, region=regions, device="cpu",
                    progress=lambda d, t: calls.append((d, t)))
    mask = np.zeros(sample.noisy.shape[:3], bool)
    for t0, t1, y0, y1, x0, x1 in regions:
        mask[t0:t1, y0:y1, x0:x1] = True
    np.testing.assert_allclose(part[mask], whole[mask], rtol=1e-5, atol=1e-6)
    assert np.array_equal(part[~mask], sample.noisy[~mask])
    one_by_one = sample.noisy.copy()
    for r in regions:
        single = nl_means(sample.noisy, 20 / 255, region=r, device="cpu", band_rows=7)
        t0, t1, y0, y1, x0, x1 = r
        one_by_one[t0:t1, y0:y1, x0:x1] = single[t0:t1, y0:y1, x0:x1]
    np.testing.assert_allclose(part, one_by_one, rtol=1e-5, atol=1e-6)
    assert calls and calls[-1][0] == calls[-1][1]


def test_integer_positions(sample):
    # without flows every window centre is a whole pixel: both position types find the same
    # neighbours; along the flow, whole-pixel centres give another (still denoised) result
    a = nl_means(sample.noisy, 20 / 255, device="cpu", ws=7, k=8)
    b = nl_means(sample.noisy, 20 / 255, device="cpu", ws=7, k=8, itype="int")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    flows = tuple(torch.from_numpy(f)[None] for f in (sample.fflow, sample.bflow))
    f = nl_means(sample.noisy, 20 / 255, flows=flows, device="cpu", ws=7, k=8)
    i = nl_means(sample.noisy, 20 / 255, flows=flows, device="cpu", ws=7, k=8, itype="int")
    assert not np.allclose(f, i, atol=1e-4)
    before = psnr(sample.clean, sample.noisy, data_range=1.0)
    assert psnr(sample.clean, np.clip(i, 0, 1), data_range=1.0) > before + 5.0


def test_torch_layout_and_gray_arrays(sample):
    gray = sample.noisy.mean(-1)
    out = nl_means(gray, 20 / 255, device="cpu", ws=7, k=8)
    assert out.shape == gray.shape
    v = torch.from_numpy(sample.noisy).permute(0, 3, 1, 2)[None].double()
    o = nl_means(v, 20 / 255, device="cpu", ws=7, k=8)
    assert isinstance(o, torch.Tensor) and o.shape == v.shape and o.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(video=np.zeros((4, 8, 8), bool)), TypeError, "video: expected real pixel values"),
        (dict(video=np.zeros((4, 8, 8), np.complex64)), TypeError, "video: expected real pixel values"),
        (dict(video=np.zeros(8, np.float32)), ValueError, "axes: cannot infer"),
        (dict(video=np.zeros((4, 8, 8), np.float32), axes="TYXX"), ValueError, "axes:"),
        (dict(video=np.zeros((0, 8, 8), np.float32)), ValueError, "video: empty"),
        (dict(video=[1, 2]), TypeError, "video: expected a torch.Tensor"),
        (dict(video=torch.zeros(4, 8, 8)), ValueError, "video: expected a tensor of shape"),
        (dict(sigma=0), ValueError, "sigma"),
        (dict(sigma="20"), ValueError, "sigma"),
        (dict(sigma=float("inf")), ValueError, "sigma: expected a finite number"),
        (dict(sigma=float("nan")), ValueError, "sigma"),
        (dict(data_range=(1, 1)), ValueError, "data_range"),
        (dict(data_range="x"), ValueError, "data_range"),
        (dict(h=-1), ValueError, "h:"),
        (dict(region=(0, 9, 0, 8, 0, 8)), ValueError, "region: t range"),
        (dict(band_rows=0), ValueError, "band_rows"),
        (dict(ws=9), ValueError, "ws"),
        (dict(itype="half"), ValueError, "itype: expected 'float' or 'int'"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(video=np.zeros((4, 8, 8), np.float32), sigma=0.1, ws=5, k=4, device="cpu")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        nl_means(args.pop("video"), args.pop("sigma"), **args)


def test_nl_bayes_beats_nl_means_on_a_real_sequence(sample):
    from napari_stnls.denoise import nl_bayes

    # the default parameters, on a 32 x 48 crop (the whole 48 x 64 frames cost twice as much)
    crop = (slice(None), slice(0, 32), slice(0, 48))
    clean, noisy = sample.clean[crop], np.ascontiguousarray(sample.noisy[crop])
    flows = tuple(torch.from_numpy(np.ascontiguousarray(f[:, :, :32, :48]))[None]
                  for f in (sample.fflow, sample.bflow))
    before = noisy.copy()
    calls = []
    nlb = nl_bayes(noisy, 20 / 255, flows=flows, device="cpu", ws=9,
                   progress=lambda d, t: calls.append((d, t)))
    nlm = nl_means(noisy, 20 / 255, flows=flows, device="cpu")
    assert np.array_equal(noisy, before)
    p_noisy = psnr(clean, noisy, data_range=1.0)
    p_nlb = psnr(clean, np.clip(nlb, 0, 1), data_range=1.0)
    p_nlm = psnr(clean, np.clip(nlm, 0, 1), data_range=1.0)
    assert p_nlb > p_noisy + 8 and p_nlb > p_nlm, (p_noisy, p_nlm, p_nlb)
    assert calls[-1][0] == calls[-1][1]


def test_nl_bayes_regions_leave_the_outside_untouched(sample):
    from napari_stnls.denoise import nl_bayes

    r = (1, 3, 10, 30, 20, 50)
    # 3x3 patches and small groups: four times cheaper than the defaults, as good here
    out = nl_bayes(sample.noisy, 20 / 255, region=r, device="cpu", band_rows=8, ws=9, wt=1, ps=3, ps2=3, k=24,
                   k2=60)
    mask = np.zeros(sample.noisy.shape[:3], bool)
    mask[1:3, 10:30, 20:50] = True
    assert np.array_equal(out[~mask], sample.noisy[~mask])
    assert psnr(sample.clean[mask], np.clip(out[mask], 0, 1), data_range=1.0) > psnr(
        sample.clean[mask], sample.noisy[mask], data_range=1.0) + 6
    with pytest.raises(ValueError, match="band_rows"):
        nl_bayes(sample.noisy, 0.1, band_rows=0)


def test_nl_bayes_regions_together_equal_one_by_one(sample):
    """Inside each region the result is the same whether the regions are restored together
    or one at a time (the two regions here are close enough for their searches to overlap)."""
    from napari_stnls.denoise import nl_bayes

    r1, r2 = (1, 3, 4, 20, 6, 30), (0, 2, 24, 44, 26, 60)
    # grey, 3x3 patches two frames deep and small groups: what is checked does not depend on
    # the patch size, and large groups' eigen-decompositions would cost most of the time
    gray = sample.noisy.mean(-1)
    kw = dict(device="cpu", band_rows=8, ws=9, wt=1, ps=3, ps2=3, pt=2, k=20, k2=30)
    both = nl_bayes(gray, 20 / 255, region=[r1, r2], **kw)
    for r in (r1, r2):
        alone = nl_bayes(gray, 20 / 255, region=r, **kw)
        sl = (slice(r[0], r[1]), slice(r[2], r[3]), slice(r[4], r[5]))
        assert np.array_equal(both[sl], alone[sl])


@pytest.mark.parametrize("name", ["nlm", "nlb", "skimage"])
def test_cancel_raises_and_leaves_the_input_unchanged(sample, name):
    from napari_stnls._util import Cancelled
    from napari_stnls.denoise import METHODS

    polls, calls = [], []

    def stop():
        polls.append(1)
        return len(polls) > 2  # stop at the third check, after some work was done

    noisy = sample.noisy.copy()
    extra = {} if name == "skimage" else dict(band_rows=8)  # several bands, checked one by one
    with pytest.raises(Cancelled):
        METHODS[name](sample.noisy, 20 / 255, device="cpu", progress=lambda d, t: calls.append(d),
                      should_stop=stop, **extra)
    assert np.array_equal(sample.noisy, noisy) and calls == [1, 2]
    v = torch.from_numpy(sample.noisy).permute(0, 3, 1, 2)[None]
    v0 = v.clone()
    with pytest.raises(Cancelled):
        METHODS[name](v, 20 / 255, should_stop=lambda: True)
    assert torch.equal(v, v0)


# the 3-D baseline (5 s on 2 cores) runs in `make test-slow`; the 2-D one takes the same path
@pytest.mark.parametrize("mode", ["2d", pytest.param("3d", marks=pytest.mark.slow)])
def test_skimage_baseline_beats_noisy_and_keeps_regions(sample, mode):
    from napari_stnls.denoise import skimage_nl_means

    noisy = sample.noisy.copy()
    out = skimage_nl_means(sample.noisy, 20 / 255, mode=mode)
    assert np.array_equal(sample.noisy, noisy) and out.shape == noisy.shape and out.dtype == noisy.dtype
    before = psnr(sample.clean, sample.noisy, data_range=1.0)
    assert psnr(sample.clean, np.clip(out, 0, 1), data_range=1.0) > before + 4
    regions = [(1, 3, 14, 30, 16, 40), (0, 2, 20, 34, 30, 48)]
    part = skimage_nl_means(sample.noisy, 20 / 255, mode=mode, region=regions)
    mask = np.zeros(sample.noisy.shape[:3], bool)
    for t0, t1, y0, y1, x0, x1 in regions:
        mask[t0:t1, y0:y1, x0:x1] = True
    assert np.array_equal(part[~mask], sample.noisy[~mask])
    if mode == "2d":  # far enough from the border: the same neighbourhood as the whole frame
        np.testing.assert_allclose(part[mask], out[mask], atol=1e-5)
    assert psnr(sample.clean[mask], np.clip(part[mask], 0, 1), data_range=1.0) > psnr(
        sample.clean[mask], sample.noisy[mask], data_range=1.0) + 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="4d"), "mode"), (dict(h=0), "h:"), (dict(patch_size=0), "patch_size"),
    (dict(region=(0, 9, 0, 8, 0, 8)), "region"), (dict(sigma=-1), "sigma"),
])
def test_skimage_bad_arguments(kwargs, match):
    from napari_stnls.denoise import skimage_nl_means

    args = dict(video=np.zeros((4, 8, 8), np.float32), sigma=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        skimage_nl_means(args.pop("video"), args.pop("sigma"), **args)


def test_nl_bayes_params_follow_sigma_and_are_overridable(sample):
    from napari_stnls.denoise import NLB_SIGMAS, NLB_TABLE, nl_bayes, nl_bayes_params

    for i, s in enumerate(NLB_SIGMAS):  # the table's rows, exactly
        p = nl_bayes_params(s / 255)
        assert p["thresh"] == pytest.approx(NLB_TABLE["thresh"][i])
        assert p["ws"] % 2 == 1 and p["ps"] % 2 == 1 and p["k"] > p["pt"] * p["ps"] ** 2
    lo, hi = nl_bayes_params(NLB_SIGMAS[0] / 255), nl_bayes_params(NLB_SIGMAS[-1] / 255)
    assert nl_bayes_params(1 / 255) == lo and nl_bayes_params(200 / 255) == hi  # clamped
    mid = nl_bayes_params((NLB_SIGMAS[1] + NLB_SIGMAS[2]) / 2 / 255)["thresh2"]
    assert min(NLB_TABLE["thresh2"][1:3]) <= mid <= max(NLB_TABLE["thresh2"][1:3])
    # explicit values win over the table (a tiny window makes the call cheap and still valid)
    out = nl_bayes(sample.noisy[:2, :24, :24], 20 / 255, ws=5, wt=1, k=30, k2=30, pt=1, ps=3, ps2=3,
                   stride0=3, thresh=0.5, thresh2=0.0, device="cpu")
    assert out.shape == (2, 24, 24, 3)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(ps=0), ValueError, "ps:"), (dict(k2=2.5), ValueError, "k2:"),
    (dict(thresh=-1), ValueError, "thresh:"),
    (dict(stride0=True), ValueError, "stride0:"), (dict(should_stop=1), TypeError, "should_stop"),
])
def test_nl_bayes_bad_arguments(kwargs, exc, match):
    from napari_stnls.denoise import nl_bayes

    with pytest.raises(exc, match=match):
        nl_bayes(np.zeros((3, 8, 8), np.float32), 0.1, device="cpu", **kwargs)


def test_nl_bayes_gray_and_opponent_switch(sample):
    from napari_stnls.denoise import nl_bayes

    small = sample.noisy[:3, :32, :40]
    clean = sample.clean[:3, :32, :40]
    kw = dict(ws=7, wt=1, device="cpu")
    gray = nl_bayes(small.mean(-1), 20 / 255, **kw)
    assert gray.shape == small.shape[:3]
    assert psnr(clean.mean(-1), gray, data_range=1) > psnr(clean.mean(-1), small.mean(-1), data_range=1) + 4
    rgb = nl_bayes(small, 20 / 255, opponent=False, ps=3, ps2=3, **kw)  # 3x3: 27 values, not 75, per group
    assert psnr(clean, np.clip(rgb, 0, 1), data_range=1) > psnr(clean, small, data_range=1) + 4


def test_nl_means_defaults_follow_sigma(sample):
    from napari_stnls.denoise import NLM_TABLE

    small = sample.noisy[:3, :24, :32]
    for s, i in ((10, 0), (50, 4)):
        ps, k = int(NLM_TABLE["ps"][i]), int(NLM_TABLE["k"][i])
        default = nl_means(small, s / 255, ws=7, wt=1, device="cpu")
        np.testing.assert_array_equal(default, nl_means(small, s / 255, ws=7, wt=1, ps=ps, k=k, device="cpu"))
    # so the two calls above differ in what they check
    assert (NLM_TABLE["ps"][0], NLM_TABLE["k"][0]) != (NLM_TABLE["ps"][4], NLM_TABLE["k"][4])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_transfers_through_page_locked_memory_keep_every_bit(sample):
    from napari_stnls.denoise._prep import prepare, to_host

    x, _, xd, _, _ = prepare(sample.noisy, 0.1, "cuda", None, None, None)
    assert xd.is_cuda and torch.equal(xd.cpu(), x.float())
    res = xd * 3 + 1  # channels-last in memory, as the denoisers' results
    host = to_host(res, x)
    assert host.device.type == "cpu" and torch.equal(host, res.cpu())
    u16 = np.round(sample.noisy * 4000).astype(np.uint16)
    np.testing.assert_array_equal(nl_means(u16, 80, ws=5, k=4, device="cuda"),
                                  nl_means(u16, 80, ws=5, k=4, device="cuda", band_rows=5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_frames_streamed_to_and_from_the_gpu_keep_every_bit(sample):
    """nl_means on a CPU video and a GPU (frames going up as the bands need them and coming
    back as they are finished, on streams of their own) gives the bits of the same work on a
    video already on the GPU: the whole video, overlapping regions with frames outside every
    region, several bands a frame, along flows; the input is never modified and the result
    holds no page-locked or shared memory."""
    fl = tuple(torch.from_numpy(f)[None] for f in (sample.fflow, sample.bflow))
    noisy = sample.noisy.copy()
    x = torch.from_numpy(noisy).permute(0, 3, 1, 2)[None]
    for kw in (dict(), dict(region=[(1, 3, 5, 30, 10, 40), (2, 4, 20, 48, 30, 64)], band_rows=7),
               dict(region=(3, 4, 0, 48, 0, 64), wt=1)):
        got = nl_means(noisy, 20 / 255, flows=fl, device="cuda", data_range=1.0, **kw)
        ref = nl_means(x.cuda(), 20 / 255, flows=tuple(f.cuda() for f in fl), device="cuda",
                       data_range=1.0, **kw)
        np.testing.assert_array_equal(got, ref[0].permute(0, 2, 3, 1).cpu().numpy())
        assert np.array_equal(noisy, sample.noisy) and not np.may_share_memory(got, noisy)
        assert not torch.from_numpy(got).is_pinned()


def test_page_locked_buffers_fall_back_where_the_host_cannot_lock():
    # without a GPU runtime (or past the host's locked-memory limit) no buffer comes back and
    # the transfers take the pageable copy
    from napari_stnls.denoise._prep import _pinned

    buf = _pinned((2, 3), torch.float32)
    assert buf is None if not torch.cuda.is_available() else buf.is_pinned()
