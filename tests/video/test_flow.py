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
