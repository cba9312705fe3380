"""The plugin's Qt-free denoise model: denoise_video, the noise estimate and quality, and
denoise_lazy, the lazily denoised video (a dask array, one task per frame)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stnls._util import Cancelled
from napari_stnls.plugin.model import denoise as model_denoise
from napari_stnls.plugin.model.denoise import denoise_methods, denoise_video, estimate_noise_sigma, quality
from napari_stnls.stream import methods as stream_methods
from napari_stnls.video.synthetic import sample_video

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def vid():
    return sample_video(n_frames=6, size=(32, 40))


def _video(T=4, H=20, W=24, C=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (T, H, W) if C is None else (T, H, W, C)
    ramp = np.linspace(0, 0.6, W, dtype=np.float32)
    ramp = ramp[:, None] if C else ramp
    return (rng.random(shape, dtype=np.float32) * 0.3 + ramp).astype(np.float32)


@pytest.fixture
def counted(monkeypatch):
    """The frames (t0 of each tile) that stream computes, in order."""
    seen = []
    real = stream_methods.compute_tile

    def counting(kind, method, p, crop, tile, *a, **k):
        seen.append(tile.t0)
        return real(kind, method, p, crop, tile, *a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", counting)
    return seen


@pytest.mark.parametrize("method, kw, C", [("nlm", dict(ws=5), None), ("nlm", {}, 3),
                                           ("nlb", dict(ps=3, ws=5, k=8), None)])
def test_lazy_equals_eager_and_computes_only_what_is_read(counted, method, kw, C):
    v = _video(C=C)
    before = v.copy()
    rng = np.random.default_rng(1)
    ff = rng.normal(0, 0.8, (4, 2, 20, 24)).astype(np.float32)
    flows = (ff, -ff) if method == "nlm" else None
    lazy = model_denoise.denoise_lazy(v, method, 0.1, flows=flows, device="cpu", **kw)
    assert counted == []  # building the graph computes nothing
    assert isinstance(lazy, da.Array) and lazy.shape == v.shape and lazy.dtype == np.float32
    assert lazy.chunks[0] == (1,) * 4 and lazy.chunks[1:3] == ((20,), (24,))
    got = lazy[2].compute(scheduler="synchronous")
    assert counted == [2]  # one frame read, one frame computed
    # lazy frames are streamed tiles, which skip no nl_bayes reference (napari_stnls.stream)
    eager_kw = dict(kw, skip=0, skip2=0) if method == "nlb" else kw
    ref = model_denoise.denoise_video(v, method, 0.1, flows=flows, device="cpu", **eager_kw)
    np.testing.assert_allclose(got, ref[2], atol=1e-5)
    np.testing.assert_allclose(lazy[[0, 3]].compute(scheduler="synchronous"), ref[[0, 3]], atol=1e-5)
    assert sorted(counted) == [0, 2, 3]
    np.testing.assert_array_equal(v, before)  # the input is never modified


def test_lazy_dask_input_uint8_and_errors(counted):
    v8 = (_video() * 255).astype(np.uint8)
    lazy = model_denoise.denoise_lazy(da.from_array(v8, chunks=(1, 20, 24)), "nlm", 0.1, device="cpu", ws=5)
    ref = model_denoise.denoise_video(v8, "nlm", 0.1 * 255, device="cpu", ws=5)  # the data's units
    assert ref.dtype == np.uint8
    got = lazy[1].compute(scheduler="synchronous") * 255  # the lazy stream is on the [0, 1] scale
    assert np.abs(got - ref[1].astype(np.float64)).max() <= 0.51  # the same, rounded to integers
    assert counted == [1]
    with pytest.raises(ValueError, match="lazy mode supports"):
        model_denoise.denoise_lazy(v8, "skimage", 0.1)
    with pytest.raises(ValueError, match="sigma"):
        model_denoise.denoise_lazy(v8, "nlm", 0)
    with pytest.raises(ValueError, match="bogus: not a parameter"):
        model_denoise.denoise_lazy(v8, "nlm", 0.1, bogus=3)
    with pytest.raises(ValueError, match="flows: expected arrays"):
        model_denoise.denoise_lazy(v8, "nlm", 0.1, flows=(np.zeros((4, 2, 5, 5)),) * 2)
    with pytest.raises(ValueError, match="video: expected"):
        model_denoise.denoise_lazy(np.zeros((4, 4)), "nlm", 0.1)


def test_denoise_video_regions_input_untouched(vid):
    noisy = vid.noisy.copy()
    assert set(denoise_methods()) >= {"nlb", "nlm"}
    region = (1, 3, 8, 24, 10, 30)
    out = denoise_video(noisy, "nlm", vid.sigma, regions=[region], flows=(vid.fflow, vid.bflow),
                        device="cpu", ws=5, k=8)
    np.testing.assert_array_equal(noisy, vid.noisy)  # input never modified
    assert out.shape == noisy.shape and out.dtype == np.float32
    mask = np.zeros(noisy.shape[:3], bool)
    mask[1:3, 8:24, 10:30] = True
    np.testing.assert_array_equal(out[~mask], noisy[~mask])  # outside: unchanged
    q_in, q_out = quality(noisy, vid.clean, [region]), quality(out, vid.clean, [region])
    assert q_out["psnr"] > q_in["psnr"] + 2 and q_out["ssim"] > q_in["ssim"]
    with pytest.raises(Cancelled):
        denoise_video(noisy, "nlm", vid.sigma, regions=[region], device="cpu", ws=5, k=8,
                      should_stop=lambda: True)
    with pytest.raises(ValueError, match="method"):
        denoise_video(noisy, "bm3d", 0.1)
    with pytest.raises(ValueError, match="sigma"):
        denoise_video(noisy, "nlm", 0)
    with pytest.raises(ValueError, match="wx: not a parameter"):
        denoise_video(noisy, "nlm", 0.1, wx=3)
    with pytest.raises(ValueError, match=r"regions\[0\]"):
        denoise_video(noisy, "nlm", 0.1, regions=[(0, 1, 0, 99, 0, 1)])


def test_estimate_sigma_and_quality(vid):
    s = estimate_noise_sigma(vid.noisy)
    assert abs(s - vid.sigma) < 0.3 * vid.sigma
    u8 = (np.clip(vid.clean, 0, 1) * 255).round().astype(np.uint8)
    q = quality(u8, vid.clean)
    assert q["psnr"] > 45 and q["ssim"] > 0.99
    assert type(q["psnr"]) is float and type(q["ssim"]) is float
    assert quality(vid.clean, vid.clean)["psnr"] == float("inf")
    with pytest.raises(ValueError, match="clean: shape"):
        quality(vid.clean, vid.clean[:2])


def test_quality_on_tiny_regions_is_a_number_or_a_reason(vid):
    from napari_stnls.plugin.model.denoise import describe_quality

    noisy = vid.noisy
    one = [(1, 2, 5, 6, 7, 8)]  # one pixel
    q0, q1 = quality(noisy, vid.clean, one), quality(vid.clean, vid.clean, one)
    assert np.isfinite(q0["psnr"]) and q1["psnr"] == float("inf") and np.isnan(q0["ssim"])
    text = describe_quality(q0, q1, "1 region(s): ")
    assert "nan" not in text.lower() and text.startswith(f"1 region(s): PSNR {q0['psnr']:.2f} -> inf dB")
    assert "SSIM: none (every region is narrower than 3 pixels" in text
    q2 = quality(noisy, vid.clean, [(1, 2, 5, 8, 7, 10)])  # 3 x 3: SSIM has a number
    assert "SSIM 0." in describe_quality(q2, q2) or "SSIM 1." in describe_quality(q2, q2)


def test_denoise_background_frames_equal_the_lazy_ones(vid):
    from napari_stnls.plugin.model.denoise import denoise_background, denoise_lazy

    kw = dict(ps=3, ws=5, k=4, device="cpu")
    lazy = denoise_lazy(vid.noisy, "nlm", vid.sigma, **kw)
    ready = []
    frames = denoise_background(vid.noisy, "nlm", vid.sigma, prefetch=0, on_ready=ready.append, **kw)
    try:
        assert frames.shape == vid.noisy.shape and frames.dtype == np.float32
        assert frames.wait(2, timeout=60) and ready == [2]
        np.testing.assert_array_equal(frames[2], np.asarray(lazy[2]))
    finally:
        frames.close()


@pytest.mark.parametrize("dtype, scale, offset", [(np.uint16, 4000, 300), (np.float32, 500, -200)])
def test_denoise_video_keeps_type_and_units_any_layout(dtype, scale, offset):
    """sigma in the data's units: the same as the [0, 1] video's result mapped (equivariance), in
    the input's type, for a TYX time-lapse and the same frames as a ZYX stack or a TZYX stack."""
    v = _video(T=3, H=16, W=20)
    x = (v * scale + offset).astype(dtype)
    kw = dict(device="cpu", ws=5, k=6)
    unit = ((x.astype(np.float64) - offset) / scale).astype(np.float32)  # the same values on [0, 1]
    ref = denoise_video(unit, "nlm", 0.1, **kw).astype(np.float64) * scale + offset
    for axes, data in (("TYX", x), ("ZYX", x), ("TZYX", np.stack([x, x], 1))):
        out = denoise_video(data, "nlm", 0.1 * scale, axes=axes, **kw)
        assert out.dtype == dtype and out.shape == data.shape
        got = out if axes != "TZYX" else out[:, 1]
        np.testing.assert_allclose(got.astype(np.float64), ref, atol=0.51 if dtype == np.uint16 else 1e-2)
    with pytest.raises(ValueError, match="axes"):
        denoise_video(x, "nlm", 10.0, axes="TYXC")
    with pytest.raises(ValueError, match="gain"):
        denoise_video(x, "nlm", 10.0, noise="poisson-gaussian")


def test_background_frames_in_the_data_units(vid):
    from napari_stnls.plugin.model.denoise import denoise_background

    u16 = (np.clip(vid.noisy[:3], 0, 1) * 60000).astype(np.uint16)
    frames = denoise_background(u16, "nlm", vid.sigma * 60000, prefetch=0, ps=3, ws=5, k=4, device="cpu")
    try:
        assert frames.dtype == np.uint16 and frames.wait(1, timeout=60)
        ref = denoise_video(u16, "nlm", vid.sigma * 60000, ps=3, ws=5, k=4, device="cpu")
        assert np.abs(frames[1].astype(np.int64) - ref[1]).max() <= 1
    finally:
        frames.close()


def test_calibrate_video_picks_a_sigma_in_the_data_units():
    from napari_stnls.plugin.model.denoise import calibrate_video

    rng = np.random.default_rng(0)
    clean = np.tile(np.sin(np.linspace(0, 6, 24)) * 1000 + 2000, (3, 24, 1))
    noisy = (clean + rng.normal(0, 200, clean.shape)).astype(np.uint16)
    c = calibrate_video(noisy, "nlm", 200.0, axes="ZYX", ws=5, k=8, device="cpu", masks=2)
    assert 100 <= c.params["sigma"] <= 400 and len(c.losses) == 5
