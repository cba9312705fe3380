"""Region, query_coords, grid_view and backend selection."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch

from napari_stnls.ops import Region, backend_info, grid_shape, grid_view, query_coords, search


@pytest.mark.parametrize("stride0", [1, 2, 3, 5])
@pytest.mark.parametrize("region", [None, (0, 2, 0, 7, 0, 9), (1, 3, 2, 7, 3, 4), Region(2, 3, 6, 7, 0, 9)])
def test_query_coords_match_oracle(region, stride0):
    shape = (1, 3, 1, 7, 9)
    c = query_coords(shape, region, stride0)
    assert c.dtype == torch.int64
    np.testing.assert_array_equal(c.numpy(), oracle.query_coords(shape, region, stride0))
    assert c.shape[0] == int(np.prod(grid_shape(shape, region, stride0)))


def test_region_accepts_tuples_numpy_ints_and_tensors():
    shape = (1, 4, 1, 8, 8)
    a = query_coords(shape, (1, 2, 0, 8, 0, 8))
    b = query_coords(shape, tuple(np.int64(v) for v in (1, 2, 0, 8, 0, 8)))
    c = query_coords(shape, torch.tensor([1, 2, 0, 8, 0, 8]))
    d = query_coords(shape, Region(1, 2, 0, 8, 0, 8))
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert Region(1, 2, 0, 8, 0, 8).shape == (1, 8, 8)
    assert str(Region(1, 2, 0, 8, 0, 4)) == "1:2,0:8,0:4"


def test_grid_view_round_trip():
    shape = (2, 3, 1, 7, 9)
    region = (1, 3, 1, 6, 2, 9)
    x = torch.arange(2 * 2 * 3 * 4 * 5).reshape(2, 1, 2 * 3 * 4, 5)
    g = grid_view(x, shape, region, stride0=2)
    assert g.shape == (2, 1, 2, 3, 4, 5)
    assert torch.equal(g.reshape(x.shape), x)
    # batch and head axes of the same size as Q are not mistaken for it
    d = torch.zeros(4, 1, 4, 1)
    assert grid_view(d, (4, 1, 1, 2, 2)).shape == (4, 1, 1, 2, 2, 1)
    with pytest.raises(ValueError, match="no axis of size Q"):
        grid_view(torch.zeros(5), shape, region, 2)
    with pytest.raises(ValueError, match="axis 0 has size"):
        grid_view(torch.zeros(5, 24), shape, region, 2, dim=0)


@pytest.mark.parametrize(
    "region,exc,match",
    [
        ((0, 0, 0, 8, 0, 8), ValueError, "t range 0:0"),
        ((0, 5, 0, 8, 0, 8), ValueError, "t range 0:5"),
        ((0, 1, -1, 8, 0, 8), ValueError, "y range -1:8"),
        ((0, 1, 0, 8, 3, 2), ValueError, "x range 3:2"),
        ((0, 1, 0, 8, 0), ValueError, "expected 6 values"),
        ((0, 1, 0, 8, 0, "8"), TypeError, "expected integers"),
        ((0, 1, 0, 8, 0, True), TypeError, "expected integers"),
        (5, TypeError, "expected None, a Region"),
    ],
)
def test_bad_regions(region, exc, match):
    with pytest.raises(exc, match=match):
        query_coords((1, 4, 1, 8, 8), region)


def test_bad_stride_and_shape():
    with pytest.raises(ValueError, match="stride0"):
        query_coords((1, 4, 1, 8, 8), None, 0)
    with pytest.raises(ValueError, match="shape: expected the video's"):
        query_coords((4, 8, 8))


def test_backend_info_and_environment_default(monkeypatch):
    info = backend_info()
    assert set(info) == {"search", "refine", "iunfold", "ifold", "gather", "scatter", "aggregate"}
    assert all(set(v) == {"cpu", "cuda"} for v in info.values())
    v = torch.rand(1, 2, 1, 6, 6)
    ref = search(v, v, ps=3, ws=3, wt=1, k=2, backend="reference")
    monkeypatch.setenv("NAPARI_STNLS_BACKEND", "reference")
    out = search(v, v, ps=3, ws=3, wt=1, k=2)
    assert torch.equal(out[0], ref[0])
    monkeypatch.setenv("NAPARI_STNLS_BACKEND", "tpu")
    with pytest.raises(ValueError, match="NAPARI_STNLS_BACKEND"):
        search(v, v, ps=3, ws=3, wt=1, k=2)


def test_ops_never_import_napari_or_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_stnls.ops as o, torch; v = torch.rand(1,2,1,6,6);"
        "o.search(v, v, ps=3, ws=3, k=2);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2',"
        " 'PySide6', 'magicgui', 'vispy')]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
