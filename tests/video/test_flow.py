"""compute_flows: every method follows a known motion, cancellation, OpenCV DIS optional."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stnls._util import Cancelled
from napari_stnls.video import flow
from napari_stnls.video.flow import compute_flows
from napari_stnls.video.synthetic import sample_video


@pytest.fixture(scope="module")
def sample():
    return sample_video(n_frames=3, size=(48, 64), sigma=20 / 255, seed=2)


@pytest.mark.parametrize("method", flow.METHODS)
def test_every_method_follows_the_known_motion_on_noisy_frames(sample, method):
    calls = []
    fflow, bflow = compute_flows(sample.noisy, method, progress=lambda d, t: calls.append((d, t)))
    assert fflow.shape == bflow.shape == (1, 3, 2, 48, 64)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    err = np.abs(fflow[0, 0].numpy()[inner] - sample.fflow[0][inner])
    errb = np.abs(bflow[0, 2].numpy()[inner] - sample.bflow[2][inner])
    assert np.median(err) < 0.3 and np.median(errb) < 0.3, (np.median(err), np.median(errb))
    assert np.median(np.abs(sample.fflow[0][inner])) > 0.5  # the motion is not trivially small
    assert not fflow[0, 2].any() and not bflow[0, 0].any()
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_raises_before_any_result(sample):
    seen = []

    def stop():
        seen.append(1)
        return len(seen) > 2

    noisy = sample.noisy.copy()
    with pytest.raises(Cancelled):
        compute_flows(sample.noisy, "ilk", should_stop=stop)
    assert len(seen) == 3 and np.array_equal(noisy, sample.noisy)


def test_dis_without_opencv_is_a_clear_error(sample, monkeypatch):
    monkeypatch.setattr(flow, "HAS_OPENCV", False)
    monkeypatch.setattr(flow, "METHODS", ("tvl1", "ilk"))
    with pytest.raises(ValueError, match="pip install opencv-python-headless"):
        compute_flows(sample.noisy, "dis")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="farneback"), ValueError, "method: expected one of"),
    (dict(video=np.zeros((3, 4), np.float32)), ValueError, "video: expected"),
    (dict(should_stop=True), TypeError, "should_stop"),
])
def test_bad_arguments(sample, kwargs, exc, match):
    args = dict(video=sample.noisy, method="ilk")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compute_flows(args.pop("video"), **args)


def _constant_flows(T, H, W, dx, dy):
    """Flows of a whole-frame translation by (dx, dy) pixels a frame, as torch tensors."""
    import torch

    f = torch.zeros(1, T, 2, H, W)
    b = torch.zeros(1, T, 2, H, W)
    f[:, :-1, 0], f[:, :-1, 1] = dx, dy
    b[:, 1:, 0], b[:, 1:, 1] = -dx, -dy
    return f, b


def test_flow_consistency_of_a_known_translation_and_an_occlusion():

    from napari_stnls.video.flow import flow_consistency

    T, H, W, dx, dy = 3, 20, 24, 3.0, -2.0
    f, b = _constant_flows(T, H, W, dx, dy)
    err = flow_consistency(f, b)
    assert err.shape == (1, T, H, W)
    # from the definition: a round trip from frame t to t+1 returns to p; the content of the
    # last 3 columns and the first 2 rows leaves frame t+1 (infinite); backward the opposite
    out_fwd = np.zeros((H, W), bool)
    out_fwd[:, W - 3:] = True
    out_fwd[:2] = True
    out_bwd = np.zeros((H, W), bool)
    out_bwd[:, :3] = True
    out_bwd[H - 2:] = True
    e = err[0].numpy()
    assert np.isinf(e[0][out_fwd]).all() and (e[0][~out_fwd] < 1e-5).all()
    assert np.isinf(e[2][out_bwd]).all() and (e[2][~out_bwd] < 1e-5).all()
    assert np.isinf(e[1][out_fwd | out_bwd]).all() and (e[1][~(out_fwd | out_bwd)] < 1e-5).all()
    # a wrong backward flow in a block of frame 1: the forward errors of frame 0 whose round
    # trip lands in the block (whole pixels: no interpolation) are exactly the error,
    # |(1.5, 2)| = 2.5 pixels; the others stay 0
    b[0, 1, 0, 8:16, 8:16] += 1.5
    b[0, 1, 1, 8:16, 8:16] += 2.0
    e0 = flow_consistency(f, b)[0, 0].numpy()
    land = np.zeros((H, W), bool)  # p + (3, -2) in rows 8..15 and columns 8..15
    land[10:18, 5:13] = True
    np.testing.assert_allclose(e0[land], 2.5, atol=1e-5)
    assert (e0[~land & ~out_fwd] < 1e-5).all()


def test_flow_consistency_of_the_exact_flows_of_a_rotating_zooming_scene():
    from napari_stnls.video.flow import flow_consistency

    vid = sample_video(n_frames=4, size=(32, 40), sigma=0, shift=(2.2, -1.3), rotation=1.0, zoom=1.01)
    _, _, (f, b) = vid.to_torch()
    err = flow_consistency(f, b)[0]
    inner = err[:, 6:-6, 6:-6]
    # the motion is affine and read bilinearly: the round trip is exact up to the field's curvature
    assert float(inner.max()) < 1e-2


@pytest.mark.parametrize("kwargs,match", [(dict(fflow=np.zeros((1, 2, 2, 4, 4))), "fflow"),
                                          (dict(bflow="x"), "bflow"), (dict(shape=(1, 2, 3, 4, 4)), "fflow")])
def test_flow_consistency_bad_arguments(kwargs, match):
    import torch

    from napari_stnls.video.flow import flow_consistency

    shape = kwargs.pop("shape", (1, 2, 2, 4, 4))
    args = dict(fflow=torch.zeros(shape), bflow=torch.zeros(1, 2, 2, 4, 4)) | kwargs
    with pytest.raises(ValueError, match=match):
        flow_consistency(**args)
