"""File > Save through the plugin's writer, in a headless viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stnls.video.io import open_video  # noqa: E402


def test_viewer_saves_a_layer_with_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).integers(0, 4096, (3, 12, 16), dtype=np.uint16)
    viewer.add_image(data, name="cells", scale=(1, 0.5, 0.5))
    for suffix in (".tif", ".zarr"):
        path = tmp_path / f"cells{suffix}"
        assert viewer.layers.save(str(path), selected=False, plugin="napari-stnls") == [str(path)]
        back = np.asarray(open_video(path))
        assert back.dtype == np.uint16 and np.array_equal(back, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.tif", "cells.zarr"]
