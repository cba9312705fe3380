"""The widgets on layers as users bring them: any image layer, calibrated (scaled, translated)
layers, shapes that are not rectangles or lie outside the video, viewers closed mid-job."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.colormaps import ensure_colormap  # noqa: E402

from napari_stnls._util import Cancelled  # noqa: E402
from napari_stnls.plugin._qt import (  # noqa: E402
    DenoiseWidget,
    FlowWidget,
    NeighboursWidget,
    RegionsWidget,
    SearchWidget,
)
from napari_stnls.plugin._qt import denoise as qt_denoise  # noqa: E402
from napari_stnls.plugin._qt import flow as qt_flow  # noqa: E402
from napari_stnls.plugin._qt import search as qt_search  # noqa: E402
from napari_stnls.plugin._qt._common import RESULTS_KEY  # noqa: E402
from napari_stnls.plugin._qt.neighbours import OVERLAYS  # noqa: E402
from napari_stnls.plugin._sample import astronaut  # noqa: E402
from napari_stnls.plugin.model.regions import Region  # noqa: E402

T, H, W = 5, 40, 48
SCALE, SHIFT = (1.0, 0.5, 0.5), (0.0, 10.0, 20.0)


@pytest.fixture
def viewer(viewer_model):
    return viewer_model(T, H, W)


def rect(t, y0, y1, x0, x1):
    return np.array([[t, y0, x0], [t, y0, x1], [t, y1, x1], [t, y1, x0]], np.float64)


def small_search(viewer, qtbot, video="noisy", regions="regions"):
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText(video)
    w.regions.setCurrentText(regions)
    w.flow.setCurrentText("none")
    w.ps.setValue(3)
    w.ws.setValue(5)
    w.wt.setValue(1)
    w.k.setValue(4)
    w.stride0.setValue(1)
    w.device.setCurrentText("cpu")
    return w


# --- every image layer is offered ---------------------------------------------------------------
def test_every_image_layer_is_listed_with_a_reason(viewer, qtbot):
    viewer.add_image(np.zeros((H, W), np.float32), name="still")
    viewer.add_image(np.zeros((3, 4, H, W), np.uint16), name="zstack")
    viewer.add_image(np.zeros((2, 1, 2, 3, H, W), np.uint16), name="six")
    viewer.add_image(np.zeros((T, H, W), np.uint16), name="gray")
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    items = [w.video.itemText(i) for i in range(w.video.count())]
    assert items == ["clean", "noisy", "still", "zstack", "six", "gray"]  # none silently dropped
    assert w.video.currentText() == "gray" and not w.video.note.isVisibleTo(w)  # topmost usable
    assert w.axes.currentText() == "TYX"
    # the axes selector is pre-filled from the layer's dimensions
    for name, axes in (("still", "YX"), ("zstack", "TZYX"), ("noisy", "TYXC")):
        w.video.setCurrentText(name)
        assert w.axes.currentText() == axes and not w.video.note.isVisibleTo(w), name
    w.video.setCurrentText("zstack")
    assert "the time series of the z-slice shown (of 4" in w.axes.note.text()  # what is searched, said
    w.video.setCurrentText("six")
    assert w.video.note.isVisibleTo(w) and "6-D data" in w.video.note.text() and "type its axes" in \
        w.video.note.text()
    w.runner.run_button.click()
    assert w.status.kind == "error" and "axes" in w.status.text()
    assert w.axes.apply("TQYX") is None and "letters ['Q']" in w.axes.note.text()  # a clear message
    assert w.axes.apply("TZYX") is None and "6 dimensions" in w.axes.note.text()
    assert w.axes.apply("tzcayx".replace("a", "")) is None  # 5 letters for 6 dimensions
    viewer.layers["six"].data = np.zeros((2, 3, H, W), np.uint16)
    w.video.refresh()
    assert w.axes.apply("zcyx") == "ZCYX" and not w.video.note.isVisibleTo(w)  # kept in the layer
    assert viewer.layers["six"].metadata["stnls_axes"] == "ZCYX"
    for cls in (RegionsWidget, FlowWidget, NeighboursWidget, DenoiseWidget):
        other = cls(viewer)
        qtbot.addWidget(other)
        assert [other.video.itemText(i) for i in range(other.video.count())] == items, cls.__name__
        if hasattr(other, "axes"):
            other.video.setCurrentText("six")
            assert other.axes.currentText() == "ZCYX", cls.__name__  # every widget reads it
    # a layer added later is listed too, usable or not
    viewer.add_image(np.zeros((2, 8, 8, 3), np.uint8), name="later", rgb=True)
    assert w.video.findText("later") >= 0


# --- regions: outside, not rectangles, the message goes with the shape ---------------------------
def test_a_region_outside_marks_only_its_row(viewer, qtbot):
    w = RegionsWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.set_regions([Region(1, 2, 4, 20, 6, 30)])
    layer = viewer.layers["regions"]
    layer.add_rectangles(rect(2, 100, 120, 5, 9))  # below the 40-row frame
    layer.add_rectangles(rect(3, 2, 10, 3, 11))
    assert w.table.rowCount() == 3
    assert [w.table.item(0, j).text() for j in range(6)] == ["1", "2", "4", "20", "6", "30"]
    assert [w.table.item(2, j).text() for j in range(6)] == ["3", "4", "2", "10", "3", "11"]
    # the row at fault shows the shape's own bounds
    assert [w.table.item(1, j).text() for j in range(6)] == ["2", "3", "100", "120", "5", "9"]
    assert "outside the 40 x 48 frame" in w.table.item(1, 0).toolTip() and not w.table.item(0, 0).toolTip()
    assert w.table.item(1, 2).background().color().name() != w.table.item(0, 2).background().color().name()
    assert w.status.kind == "error" and w.status.text().startswith("regions[1]: rows 100..119")
    with pytest.raises(ValueError, match=r"regions\[1\]"):
        w.regions()
    s = small_search(viewer, qtbot)
    s.runner.run_button.click()
    assert not s.runner.running and "regions[1]" in s.status.text()
    # editing another row works and keeps the row at fault as it is
    w.table.item(2, 3).setText("12")
    assert w.shape_regions()[2].region == Region(3, 4, 2, 12, 3, 11) and w.shape_regions()[1].error
    # the shape removed: its message goes too
    layer.selected_data = {1}
    layer.remove_selected()
    assert w.table.rowCount() == 2 and w.status.kind == "info" and "regions[1]" not in w.status.text()
    assert w.regions() == [Region(1, 2, 4, 20, 6, 30), Region(3, 4, 2, 12, 3, 11)]
    # removing rows through the widget, and the frame range of one row, others untouched
    w.table.selectRow(0)
    w.t0.setValue(0)
    w.t1.setValue(4)
    w.apply_button.click()
    assert w.regions() == [Region(0, 4, 4, 20, 6, 30), Region(3, 4, 2, 12, 3, 11)]
    w.table.selectRow(1)
    w.remove_button.click()
    assert w.regions() == [Region(0, 4, 4, 20, 6, 30)]


def test_ellipses_and_polygons_are_their_bounding_box_with_a_message(viewer, qtbot):
    w = RegionsWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.set_regions([Region(1, 2, 4, 20, 6, 30)])
    layer = viewer.layers["regions"]
    layer.add_ellipses(rect(2, 10.2, 20.6, 5, 15))
    layer.add_polygons(np.array([[3, 5, 5], [3, 15, 9], [3, 8, 20]], np.float64))
    assert layer.shape_type == ["rectangle", "ellipse", "polygon"]
    assert w.regions()[1:] == [Region(2, 3, 10, 21, 5, 15), Region(3, 4, 5, 15, 5, 20)]
    assert w.status.kind == "info" and "regions[1]: an ellipse: its bounding box is used" in w.status.text()
    assert "regions[2]: a polygon: its bounding box is used" in w.status.text()
    assert "bounding box" in w.table.item(1, 0).toolTip()
    # typing new bounds makes it a rectangle, and the note goes
    w.table.item(1, 1).setText("4")
    assert layer.shape_type == ["rectangle", "rectangle", "polygon"]
    assert w.regions()[1] == Region(2, 4, 10, 21, 5, 15)


# --- calibrated layers ------------------------------------------------------------------------
@pytest.fixture
def scaled(viewer):
    """The noisy video with scale 0.5 and an offset: pixel (y, x) is at world (10 + y/2, 20 + x/2)."""
    layer = viewer.layers["noisy"]
    layer.scale, layer.translate = SCALE, SHIFT
    viewer.layers.remove("clean")
    viewer.layers.remove("true flow (x3)")
    return layer


def test_regions_drawn_on_a_scaled_layer_are_its_pixels(viewer, qtbot, scaled):
    # a Shapes layer of the user's, in world units: a rectangle over pixels 20..59 x 10..29
    viewer.add_shapes(rect(2, 10 + 20 / 2, 10 + 59.5 / 2, 20 + 10 / 2, 20 + 29.5 / 2), shape_type="rectangle",
                      ndim=3, name="mine")
    w = RegionsWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.shapes.setCurrentText("mine")
    assert w.regions() == [Region(2, 3, 20, 40, 10, 30)]  # clipped to the 40-row frame
    # a region typed in the table lands on those pixels; the layer the widget makes sits on the video
    w.shapes.setCurrentText("(none)") if w.shapes.findText("(none)") >= 0 else None
    viewer.layers.remove("mine")
    w.set_regions([Region(1, 3, 4, 20, 6, 30)])
    regions = viewer.layers["regions"]
    assert tuple(regions.scale) == SCALE and tuple(regions.translate) == SHIFT
    np.testing.assert_allclose(regions.data[0], rect(1, 4, 20, 6, 30))
    others = viewer.layers["regions (other frames)"]
    assert tuple(others.scale) == SCALE and tuple(others.translate) == SHIFT
    viewer.dims.set_point(0, 3)
    w.add_button.click()
    assert w.regions()[1] == Region(3, 4, 10, 30, 12, 36)


def test_search_click_and_outputs_on_a_scaled_layer(viewer, qtbot, scaled):
    r = RegionsWidget(viewer)
    qtbot.addWidget(r)
    r.video.setCurrentText("noisy")
    r.set_regions([Region(1, 3, 8, 28, 10, 34)])
    s = small_search(viewer, qtbot)
    s.runner.run_button.click()
    qtbot.waitUntil(lambda: not s.runner.running, timeout=60_000)
    res = scaled.metadata[RESULTS_KEY][0]
    smap = viewer.layers["noisy search"]
    assert tuple(smap.scale) == SCALE and tuple(smap.translate) == SHIFT
    nb = NeighboursWidget(viewer)
    qtbot.addWidget(nb)
    nb.video.setCurrentText("noisy")
    # a click at the world position of pixel (2, 20, 30) finds that pixel's query
    event = SimpleNamespace(type="mouse_press", position=(2.0, 10 + 20 / 2, 20 + 30 / 2))
    for cb in list(viewer.mouse_drag_callbacks):
        cb(viewer, event)
    assert (nb.t.value(), nb.y.value(), nb.x.value()) == (2, 20, 30), nb.status.text()
    pts = viewer.layers["neighbours"]
    np.testing.assert_array_equal(pts.data[:len(pts.data) // 2], res.inds[res.query_index(2, 20, 30)])
    for name in OVERLAYS:
        layer = viewer.layers[name]
        assert tuple(layer.scale) == SCALE and tuple(layer.translate) == SHIFT, name
    # the query's own patch is drawn where the video's pixel (20, 30) is in the world
    np.testing.assert_allclose(pts.data_to_world(pts.data[0]), scaled.data_to_world((2, 20, 30)))


def test_denoise_output_inherits_the_layer_placement(viewer, qtbot, scaled):
    r = RegionsWidget(viewer)
    qtbot.addWidget(r)
    r.video.setCurrentText("noisy")
    r.set_regions([Region(1, 2, 8, 16, 10, 20)])
    w = DenoiseWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.method.setCurrentText("nlm")
    w.regions.setCurrentText("regions")
    w.flow.setCurrentText("none")
    w.tunables["ws"].setValue(5)
    w.device.setCurrentText("cpu")
    w.runner.run_button.click()
    qtbot.waitUntil(lambda: "noisy denoised (nlm)" in viewer.layers, timeout=60_000)
    out = viewer.layers["noisy denoised (nlm)"]
    assert tuple(out.scale) == SCALE and tuple(out.translate) == SHIFT


# --- updates in place -------------------------------------------------------------------------
def test_neighbours_layers_and_gallery_are_updated_in_place(viewer, qtbot):
    r = RegionsWidget(viewer)
    qtbot.addWidget(r)
    r.video.setCurrentText("noisy")
    r.set_regions([Region(1, 3, 8, 28, 10, 34)])
    s = small_search(viewer, qtbot)
    s.runner.run_button.click()
    qtbot.waitUntil(lambda: not s.runner.running, timeout=60_000)
    assert gc.get_freeze_count() > 0  # the heap was frozen as the job started
    w = NeighboursWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    # the video has results: the overlays (empty, shown) and the gallery's cells are made
    # ahead of the first click, one per turn of the event loop, and the video stays selected
    qtbot.waitUntil(lambda: not w._preparing and len(w._cells) == 4, timeout=20_000)
    layers = [viewer.layers[n] for n in OVERLAYS]
    assert [la.visible for la in layers] == [True, False]  # the arrows only when asked for
    # and, as a click would, the matches of the region's centre on the frame shown (in the region)
    res = viewer.layers["noisy"].metadata[RESULTS_KEY][0]
    shown = int(viewer.dims.current_step[0])
    assert shown in (1, 2) and w.status.kind == "info"
    assert (w.t.value(), w.y.value(), w.x.value()) == (shown, 17, 21)
    np.testing.assert_array_equal(layers[0].data[:4], res.inds[res.query_index(shown, 17, 21)])
    assert len(layers[1].data) == 0  # hidden arrows are not drawn
    assert viewer.layers.selection.active is viewer.layers["noisy"]
    added, removed = [], []
    viewer.layers.events.inserted.connect(added.append)
    viewer.layers.events.removed.connect(removed.append)
    w.show_at(2, 15, 21)
    assert [viewer.layers[n] for n in OVERLAYS] == layers
    cells = [c[0] for c in w._cells]
    viewer.layers["neighbours"].visible = False  # the user's choices are kept
    w.show_at(1, 9, 30)
    assert [viewer.layers[n] for n in OVERLAYS] == layers
    assert not added and not removed and [c[0] for c in w._cells] == cells and not layers[0].visible
    res = viewer.layers["noisy"].metadata[RESULTS_KEY][0]
    K = len(layers[0].data) // 2  # the matches on their own frames, then on the query's
    np.testing.assert_array_equal(layers[0].data[:K], res.inds[res.query_index(1, 9, 30)])
    np.testing.assert_array_equal(layers[0].features["distance"][:K], res.dists[res.query_index(1, 9, 30)])
    # coloured over this query's distances (napari kept the first query's range)
    d = layers[0].features["distance"].to_numpy()[:K]
    ends = ensure_colormap("viridis").map(np.array([0.0, 1.0]))
    np.testing.assert_allclose(layers[0].face_color[[d.argmin(), d.argmax()]], ends, atol=1e-6)
    assert list(layers[0].text.values) == list(layers[0].features["label"])
    assert not layers[1].visible and len(layers[1].data) == 0  # hidden arrows are not drawn...
    layers[1].visible = True  # ...until shown: then they are the last click's
    np.testing.assert_allclose(layers[1].data[:, 0, 1:], [[9, 30]] * K)
    assert w.gallery_captions()[0].startswith("#1  d=0")
    viewer.layers.remove(viewer.layers["noisy search"])  # a removal unfreezes (napari collects then)
    assert gc.get_freeze_count() == 0


def test_in_turns_one_step_per_turn_until_the_window_closes(qtbot):
    from qtpy.QtWidgets import QWidget

    from napari_stnls.plugin._qt._common import in_turns

    w, seen = QWidget(), []
    qtbot.addWidget(w)
    in_turns([lambda: seen.append(1), lambda: seen.append(2)], w)
    in_turns([lambda: seen.append(3), lambda: 1 / 0, lambda: seen.append(4)], w)  # reported, not raised
    in_turns([lambda: (seen.append(5), w.close()), lambda: seen.append(6)], w)
    assert seen == []  # nothing at once
    qtbot.waitUntil(lambda: 5 in seen, timeout=5_000)
    qtbot.wait(100)
    assert seen == [1, 2, 3, 5]  # in order; a failed step ends its sequence; the window closed: no more


# --- closing the viewer during a job ----------------------------------------------------------
def slow_job(seen):
    """A model function that runs for up to 20 s in 0.02 s steps, stopping when asked."""

    def fn(*args, progress=None, should_stop=None, **kwargs):
        for i in range(1000):
            if should_stop is not None and should_stop():
                seen.append("stopped")
                raise Cancelled("stopped by the caller")
            if progress is not None:
                progress(i, 1000)
            time.sleep(0.02)
        seen.append("finished")
        raise AssertionError("the job was never asked to stop")

    return fn


@pytest.mark.parametrize("kind", ["Denoise", "Search", "Flow"])
def test_closing_the_viewer_during_a_job_cancels_it(make_napari_viewer, qtbot, monkeypatch, kind):
    viewer = make_napari_viewer()
    for data, kw, k in astronaut(n_frames=T, size=(H, W)):
        getattr(viewer, f"add_{k}")(data, **kw)
    seen = []
    module, attr, cls = {"Denoise": (qt_denoise, "denoise_video", DenoiseWidget),
                         "Search": (qt_search, "search_regions", SearchWidget),
                         "Flow": (qt_flow, "compute_video_flows", FlowWidget)}[kind]
    monkeypatch.setattr(module, attr, slow_job(seen))
    w = cls(viewer)
    viewer.window.add_dock_widget(w, name=kind)
    w.video.setCurrentText("noisy")
    if kind in ("Denoise", "Search"):
        w.regions.setCurrentText("(whole video)")
    if kind == "Denoise":
        w.method.setCurrentText("nlm")
    runner = w.runner
    added = []
    viewer.layers.events.inserted.connect(added.append)
    runner.run_button.click()
    qtbot.waitUntil(lambda: runner.bar.maximum() == 1000 and runner.bar.value() > 2, timeout=10_000)
    viewer.close()
    qtbot.waitUntil(lambda: bool(seen) and not runner.running, timeout=10_000)
    for _ in range(5):
        qtbot.wait(20)
    assert seen == ["stopped"] and not added  # stopped at its next check; nothing was added


def test_duration_text():
    from napari_stnls.plugin._qt.denoise import _duration

    assert [_duration(s) for s in (4.4, 89, 150, 7200)] == ["4 s", "89 s", "2.5 min", "2.0 h"]


# --- preview and before/after ---------------------------------------------------------------
def test_preview_of_the_frame_shown_and_before_after_grid(viewer, qtbot):
    r = RegionsWidget(viewer)
    qtbot.addWidget(r)
    r.video.setCurrentText("noisy")
    r.set_regions([Region(1, 4, 8, 24, 10, 30)])
    w = DenoiseWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.method.setCurrentText("nlm")
    w.regions.setCurrentText("regions")
    w.flow.setCurrentText("none")
    w.tunables["ws"].setValue(5)
    w.device.setCurrentText("cpu")
    w.compare_button.click()  # nothing to compare yet
    assert not w.compare_button.isChecked() and "no result to compare yet" in w.status.text()
    viewer.dims.set_point(0, 0)
    w.preview_button.click()
    assert "no region on frame 0" in w.status.text() and not w.runner.running
    viewer.dims.set_point(0, 2)
    w.preview_button.click()
    qtbot.waitUntil(lambda: "noisy preview (nlm)" in viewer.layers and not w.runner.running, timeout=60_000)
    noisy, out = viewer.layers["noisy"].data, viewer.layers["noisy preview (nlm)"].data
    changed = np.argwhere((out != noisy).any(-1))
    assert set(changed[:, 0]) == {2}  # only the frame shown, only inside the region
    assert changed[:, 1].min() >= 8 and changed[:, 1].max() < 24 and changed[:, 2].min() >= 10
    text = w.status.text()
    assert "preview of frame 2 in" in text and "the 1 region(s) would take about" in text
    took = float(w.status.text().split(" in ")[1].split(" s;")[0])
    estimate = w.status.text().split("about ")[1]
    if estimate.endswith(" s"):  # the region covers 3 frames: 3 times the preview
        assert abs(float(estimate[:-2]) - 3 * took) <= 0.5 + 3 * 0.05
    # before/after: only the input and the preview, side by side; then back as it was
    visible = {layer.name: layer.visible for layer in viewer.layers}
    w.compare_button.click()
    assert viewer.grid.enabled and tuple(viewer.grid.shape) == (1, 2)
    assert {layer.name for layer in viewer.layers if layer.visible} == {"noisy", "noisy preview (nlm)"}
    w.compare_button.click()
    assert not viewer.grid.enabled and {layer.name: layer.visible for layer in viewer.layers} == visible


def test_gallery_uses_the_layer_contrast_limits(make_napari_viewer):
    from napari_stnls.plugin._qt.neighbours import gallery_limits

    v = make_napari_viewer()
    u16 = v.add_image(np.zeros((2, 8, 8), np.uint16), contrast_limits=(0, 4095))  # 12-bit counts
    assert gallery_limits(u16) == (0, 4095)  # the data's units, as napari shows the layer
    f = v.add_image(np.zeros((2, 8, 8), np.float32), contrast_limits=(-1.0, 3.0))
    assert gallery_limits(f) == (-1.0, 3.0)


def test_combo_announces_only_a_change_of_the_chosen_layer(viewer, qtbot):
    from napari_stnls.plugin._qt._common import video_combo

    combo = video_combo(viewer)
    combo.setCurrentText("noisy")
    seen = []
    combo.currentTextChanged.connect(seen.append)
    viewer.add_image(np.zeros((T, H, W), np.float32), name="other")  # listed, the choice unchanged
    assert "other" in [combo.itemText(i) for i in range(combo.count())] and seen == []
    viewer.layers.remove("noisy")  # the chosen layer goes: announced
    assert seen == [combo.currentText()] and combo.currentText() != "noisy"


def test_a_layer_added_keeping_the_selection(viewer, qtbot):
    from napari_stnls.plugin._qt._common import set_layer

    video = viewer.layers["noisy"]
    viewer.layers.selection.active = video
    changes = []
    viewer.layers.selection.events.active.connect(changes.append)
    out = set_layer(viewer, "quiet", np.zeros((T, H, W), np.float32), "image", keep_selection=True)
    assert out in viewer.layers and viewer.layers.selection.active is video
    assert set(viewer.layers.selection) == {video} and changes == []
    out2 = set_layer(viewer, "loud", np.zeros((T, H, W), np.float32), "image")  # napari's way: selected
    assert viewer.layers.selection.active is out2 and changes
    viewer.layers.selection.clear()
    set_layer(viewer, "quiet2", np.zeros((T, H, W), np.float32), "image", keep_selection=True)
    assert len(viewer.layers.selection) == 0
