"""The viewer most widget tests drive: napari's ViewerModel with the sample's layers.

The widgets only use the viewer's model (layers, dims, mouse callbacks, events), so their tests
drive them on napari's own ViewerModel, without the Qt window and its OpenGL canvas (about 1 s
per test under Xvfb to build and tear down). The tests that need the window itself (docking,
closing the viewer mid-job, the plugin's registration, the reader, screenshots, the layouts
suite) use napari's ``make_napari_viewer``.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def viewer_model(qapp):
    """``viewer_model(T, H, W)``: a ViewerModel holding the astronaut sample's layers."""
    from napari.components import ViewerModel

    from napari_stnls.plugin._sample import astronaut

    def make(n_frames: int, height: int, width: int) -> ViewerModel:
        v = ViewerModel()
        for data, kw, kind in astronaut(n_frames=n_frames, size=(height, width)):
            getattr(v, f"add_{kind}")(data, **kw)
        return v

    return make
