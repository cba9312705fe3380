"""Regions without Qt: validation, rectangles, JSON files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_stnls.plugin.model.regions import (
    Region,
    load_regions,
    rectangle_from_region,
    region_from_rectangle,
    save_regions,
    validate_regions,
)

SHAPE = (5, 40, 60, 3)


def test_validate_accepts_tuples_dicts_regions():
    regs = validate_regions([(0, 2, 0, 10, 0, 10), Region(1, 5, 5, 40, 0, 60),
                             dict(t0=4, t1=5, y0=0, y1=1, x0=59, x1=60)], SHAPE)
    assert regs == [Region(0, 2, 0, 10, 0, 10), Region(1, 5, 5, 40, 0, 60), Region(4, 5, 0, 1, 59, 60)]
    assert all(isinstance(r, Region) for r in regs)
    assert validate_regions([(0, 9, 0, 900, 0, 900)]) == [Region(0, 9, 0, 900, 0, 900)]  # no shape: no bound


@pytest.mark.parametrize(
    "bad, match",
    [
        ((0, 6, 0, 10, 0, 10), r"regions\[0\]: t1=6 is outside the video \(frame count 5\)"),
        ((0, 2, 0, 41, 0, 10), r"y1=41 is outside the video \(height 40\)"),
        ((0, 2, 0, 10, 0, 61), r"x1=61 is outside the video \(width 60\)"),
        ((0, 2, -1, 10, 0, 10), r"y0=-1 is negative"),
        ((2, 2, 0, 10, 0, 10), r"empty frames"),
        ((0, 2, 5, 4, 0, 10), r"empty rows"),
        ((0, 2, 0, 10, 0, 1.5), r"whole number"),
        (dict(t0=0, t1=1), r"missing y0"),
    ],
)
def test_validate_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_regions([(0, 1, 0, 1, 0, 1), bad] if "regions\\[0\\]" not in match else [bad], SHAPE)


def test_validate_types():
    with pytest.raises(TypeError, match="regions: expected a list"):
        validate_regions("0,1,0,1,0,1")
    with pytest.raises(TypeError, match=r"regions\[0\]: expected \(t0, t1"):
        validate_regions([(0, 1, 2)])
    with pytest.raises(TypeError, match=r"regions\[0\].t0: expected an int"):
        validate_regions([("a", 1, 0, 1, 0, 1)])


def test_rectangle_roundtrip_and_clipping():
    r = Region(2, 4, 10, 31, 5, 20)
    v = rectangle_from_region(r)
    assert v.shape == (4, 3) and (v[:, 0] == 2).all()
    assert region_from_rectangle(v, t1=4) == r
    assert region_from_rectangle(v) == Region(2, 3, 10, 31, 5, 20)  # one frame by default
    # fractional vertices cover every touched pixel; clipped to the frame
    v = np.array([[1, -3.5, 50.2], [1, -3.5, 70], [1, 12.1, 70], [1, 12.1, 50.2]])
    assert region_from_rectangle(v, shape=SHAPE) == Region(1, 2, 0, 13, 50, 60)
    with pytest.raises(ValueError, match="vertices"):
        region_from_rectangle(np.zeros((4, 2)))


def test_save_load_roundtrip(tmp_path):
    regs = [Region(0, 2, 0, 10, 0, 10), Region(1, 5, 5, 40, 0, 60)]
    p = save_regions(tmp_path / "r.json", regs, SHAPE)
    doc = json.loads(p.read_text())
    assert doc["format"] == "napari-stnls-regions" and doc["shape"] == [5, 40, 60]
    assert doc["regions"][1] == dict(t0=1, t1=5, y0=5, y1=40, x0=0, x1=60)
    assert load_regions(p, SHAPE) == regs
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]  # no temporary left
    # a bare list is read too, and is checked against the shape
    (tmp_path / "bare.json").write_text("[[0, 1, 0, 50, 0, 10]]")
    assert load_regions(tmp_path / "bare.json") == [Region(0, 1, 0, 50, 0, 10)]
    with pytest.raises(ValueError, match="y1=50 is outside the video"):
        load_regions(tmp_path / "bare.json", SHAPE)


def test_save_is_atomic_and_checks_first(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    with pytest.raises(ValueError, match="outside the video"):
        save_regions(p, [(0, 9, 0, 1, 0, 1)], SHAPE)
    assert p.read_text() == "old"  # untouched by a failed save
    with pytest.raises(ValueError, match="folder does not exist"):
        save_regions(tmp_path / "no" / "r.json", [(0, 1, 0, 1, 0, 1)])


def test_load_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_regions(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_regions(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"format": "other", "regions": []}')
    with pytest.raises(ValueError, match="not a regions file"):
        load_regions(tmp_path / "y.json")


def test_rectangle_outside_the_frame_is_refused():
    v = np.array([[1, 70, 5], [1, 70, 9], [1, 90, 9], [1, 90, 5]], np.float64)  # below a 60-row frame
    with pytest.raises(ValueError, match="rows 70..89, columns 5..8 lie outside the 60 x 60 frame"):
        region_from_rectangle(v, shape=(4, 60, 60))
    v[:, 1] -= 100
    with pytest.raises(ValueError, match="outside"):
        region_from_rectangle(v, shape=(4, 60, 60))
    assert region_from_rectangle(v) == Region(1, 2, -30, -10, 5, 9)  # without a shape: not checked
