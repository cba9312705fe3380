"""Axes strings: parsing, inference from the shape, and the round trip to (N, T, H, W, C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stnls.video.axes import Layout, infer_axes, parse_axes, to_video


@pytest.mark.parametrize("axes,shape,video_shape", [
    ("YX", (5, 6), (1, 1, 5, 6, 1)),
    ("YXC", (5, 6, 2), (1, 1, 5, 6, 2)),
    ("TYX", (3, 5, 6), (1, 3, 5, 6, 1)),
    ("TYXC", (3, 5, 6, 7), (1, 3, 5, 6, 7)),
    ("ZYX", (4, 5, 6), (1, 4, 5, 6, 1)),  # z searched like time
    ("TZYX", (3, 4, 5, 6), (4, 3, 5, 6, 1)),  # one video per z-slice
    ("TZYXC", (3, 4, 5, 6, 2), (4, 3, 5, 6, 2)),
    ("ZTCYX", (4, 3, 2, 5, 6), (4, 3, 5, 6, 2)),
    ("CTYX", (2, 3, 5, 6), (1, 3, 5, 6, 2)),
    ("XY", (6, 5), (1, 1, 5, 6, 1)),  # transposed image: Y is still the row axis
])
def test_round_trip_and_placement(axes, shape, video_shape):
    a = np.arange(int(np.prod(shape))).reshape(shape)
    v, back = to_video(a, axes)
    assert v.shape == video_shape
    assert np.array_equal(back(v), a)
    lay = Layout.of(shape, axes)
    # every element lands where its letters say
    idx = tuple(s - 1 for s in shape)  # the last element along every axis
    pos = dict(zip(lay.axes, idx, strict=True))
    n = pos.get(lay.batch, 0) if lay.batch else 0
    t = pos.get(lay.time, 0) if lay.time else 0
    assert v[n, t, pos["Y"], pos["X"], pos.get("C", 0)] == a[idx]
    vt, back_t = to_video(torch.from_numpy(a), axes)  # torch too
    assert torch.equal(vt, torch.from_numpy(np.ascontiguousarray(v)))
    assert torch.equal(back_t(vt), torch.from_numpy(a))


def test_inference_and_lower_case():
    assert infer_axes((5, 6)) == "YX"
    assert infer_axes((3, 5, 6)) == "TYX"
    assert infer_axes((3, 5, 6, 4)) == "TYXC"
    assert parse_axes("tzyx", (1, 2, 3, 4)) == "TZYX"
    assert parse_axes(None, (3, 5, 6, 2)) == "TYXC"
    with pytest.raises(ValueError, match="axes: cannot infer"):
        infer_axes((3, 5, 6, 40))  # 40 channels or a z-stack? it must be said
    with pytest.raises(ValueError, match="axes: cannot infer"):
        infer_axes((2, 3, 5, 6, 2))


@pytest.mark.parametrize("axes,shape,match", [
    ("TYXQ", (1, 2, 3, 4), "letters"),
    ("TYY", (1, 2, 3), "repeats"),
    ("TZX", (1, 2, 3), "must contain Y and X"),
    ("TYX", (1, 2, 3, 4), "names 3 axes but the array has 4"),
    ("", (2, 3), "must contain Y and X"),
])
def test_bad_axes_name_the_argument(axes, shape, match):
    with pytest.raises(ValueError, match=f"axes: .*{match}"):
        parse_axes(axes, shape)


def test_bad_types_and_shapes():
    with pytest.raises(TypeError, match="axes: expected a string"):
        parse_axes(3, (2, 3))
    with pytest.raises(TypeError, match="array: expected an array"):
        to_video([[1, 2]], "YX")
    lay = Layout.of((3, 4, 5), "TYX")
    with pytest.raises(ValueError, match="array: expected shape"):
        lay.to_video(np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match=r"video: expected shape \(1, 3, 4, 5, 1\)"):
        lay.from_video(np.zeros((1, 3, 4, 5, 2)))
