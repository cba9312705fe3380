"""The dock widgets driven as a user would, under Xvfb (pytest-xvfb): on napari's ViewerModel
(conftest.py), and in a real viewer where the window matters."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stnls.plugin._qt import DenoiseWidget, FlowWidget, NeighboursWidget, RegionsWidget, SearchWidget  # noqa: E402
from napari_stnls.plugin._qt._common import RESULTS_KEY  # noqa: E402
from napari_stnls.plugin._qt.neighbours import ON_OWN_FRAME, ON_QUERY_FRAME  # noqa: E402
from napari_stnls.plugin._sample import FLOWS_KEY  # noqa: E402
from napari_stnls.plugin.model import search as model_search  # noqa: E402
from napari_stnls.plugin.model.regions import Region  # noqa: E402
from napari_stnls.plugin.model.search import SearchParams, search_regions  # noqa: E402

T, H, W = 5, 40, 48
REGION = Region(1, 3, 8, 28, 10, 34)


@pytest.fixture
def viewer(viewer_model):
    return viewer_model(T, H, W)


def layer_names(viewer):
    return [layer.name for layer in viewer.layers]


def wait_done(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)


def with_regions(viewer, qtbot, regions=(REGION,)):
    w = RegionsWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.set_regions(list(regions))
    return w


def small_search(viewer, qtbot, flow="computed"):
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.regions.setCurrentText("regions")
    w.flow.setCurrentText(flow)
    w.ps.setValue(3)
    w.ws.setValue(5)
    w.wt.setValue(1)
    w.k.setValue(6)
    w.stride0.setValue(2)
    w.device.setCurrentText("cpu")
    return w


def test_plugin_widgets_and_sample_registered(make_napari_viewer):
    v = make_napari_viewer()
    v.open_sample("napari-stnls", "astronaut")
    assert {"clean", "noisy", "true flow (x3)"} <= set(layer_names(v))
    assert FLOWS_KEY in v.layers["noisy"].metadata
    assert v.dims.axis_labels == ("t", "y", "x")  # not napari's default "-3", read as a frame number
    kinds = {"Regions": RegionsWidget, "Optical flow": FlowWidget, "Patch search": SearchWidget,
             "Neighbours": NeighboursWidget, "Denoise": DenoiseWidget}
    for name, cls in kinds.items():
        _, widget = v.window.add_plugin_dock_widget("napari-stnls", name)
        assert isinstance(widget, cls)


def test_regions_table_layer_and_files(viewer, qtbot, tmp_path):
    w = RegionsWidget(viewer)
    qtbot.addWidget(w)
    viewer.dims.set_current_step(0, 2)
    w.add_button.click()
    assert "regions" in viewer.layers and w.table.rowCount() == 1
    assert w.regions() == [Region(2, 3, 10, 30, 12, 36)]
    # a rectangle drawn on frame 4 joins the table with a one-frame range
    layer = viewer.layers["regions"]
    layer.add_rectangles(np.array([[4, 1.5, 2], [4, 1.5, 9.2], [4, 6, 9.2], [4, 6, 2]]))
    assert w.table.rowCount() == 2 and w.table.item(1, 0).text() == "4" and w.table.item(1, 3).text() == "6"
    # editing the table moves the rectangle and sets the frame range
    w.table.item(0, 1).setText("5")
    assert w.regions()[0] == Region(2, 5, 10, 30, 12, 36)
    # the frame-range control, on the selected row
    w.table.selectRow(1)
    w.t0.setValue(0)
    w.t1.setValue(3)
    w.apply_button.click()
    assert w.regions()[1] == Region(0, 3, 1, 6, 2, 10)
    # each region is drawn, dimmed, on the other frames of its range (display only)
    shown = viewer.layers["regions (other frames)"]
    assert sorted(int(r[0, 0]) for r in shown.data) == [1, 2, 3, 4]
    s = SearchWidget(viewer)
    qtbot.addWidget(s)
    assert [s.regions.itemText(i) for i in range(s.regions.count())] == ["(whole video)", "regions"]
    # a region outside the video: a clear message, nothing changes
    before = [d.copy() for d in layer.data]
    w.table.item(0, 3).setText(str(H + 5))
    assert w.status.kind == "error" and f"y1={H + 5} is outside the video (height {H})" in w.status.text()
    assert w.table.item(0, 3).text() == "30"
    assert all(np.array_equal(a, b) for a, b in zip(before, layer.data, strict=True))
    w.save(tmp_path / "r.json")
    saved = w.regions()
    w.table.selectRow(0)
    w.remove_button.click()
    assert len(w.regions()) == 1
    w.load(tmp_path / "r.json")
    assert w.regions() == saved
    w.load(tmp_path / "missing.json")
    assert w.status.kind == "error" and "no such file" in w.status.text() and w.regions() == saved


def test_regions_without_video(make_napari_viewer, qtbot):
    v = make_napari_viewer()
    w = RegionsWidget(v)
    qtbot.addWidget(w)
    w.add_button.click()
    assert w.status.kind == "error" and "no video layer" in w.status.text()
    assert len(v.layers) == 0


def test_search_with_flow_keeps_results_per_region(viewer, qtbot):
    with_regions(viewer, qtbot, [REGION, Region(4, 5, 0, 6, 0, 8)])
    w = small_search(viewer, qtbot)
    w.runner.run_button.click()
    qtbot.waitUntil(lambda: "noisy search" in viewer.layers, timeout=60_000)
    wait_done(qtbot, w)
    results = viewer.layers["noisy"].metadata[RESULTS_KEY]
    assert [r.region for r in results] == [REGION, Region(4, 5, 0, 6, 0, 8)]
    assert results[0].flow == "true"
    meta = viewer.layers["noisy"].metadata[FLOWS_KEY]
    want = search_regions(viewer.layers["noisy"].data, [REGION], SearchParams(3, 5, 1, 6, 2, device="cpu"),
                          flows=(meta["fflow"], meta["bflow"]))
    np.testing.assert_allclose(results[0].dists, want[0].dists, rtol=1e-6)
    np.testing.assert_array_equal(results[0].inds, want[0].inds)
    dmap = viewer.layers["noisy search"].data
    assert dmap.shape == (T, H, W)
    assert dmap[2, 8, 10] == results[0].dists[1, 0, 0, -1] and dmap[0].max() == 0
    assert w.status.kind == "info" and "queries in 2 region(s)" in w.status.text()
    assert w.runner.run_button.isEnabled() and not w.runner.cancel_button.isEnabled()
    # a second run on REGION alone (other settings) replaces REGION's results and keeps the other's
    other = results[1]
    viewer.layers["regions"].data = viewer.layers["regions"].data[:1]
    w.k.setValue(4)
    w.runner.run_button.click()
    wait_done(qtbot, w)
    merged = viewer.layers["noisy"].metadata[RESULTS_KEY]
    assert [r.region for r in merged] == [Region(4, 5, 0, 6, 0, 8), REGION]
    assert merged[0] is other and merged[1].dists.shape[-1] == 4
    assert viewer.layers["noisy search"].metadata[RESULTS_KEY] is merged
    dmap = viewer.layers["noisy search"].data
    assert dmap[2, 8, 10] == merged[1].dists[1, 0, 0, -1] and dmap[4, 0, 0] == other.dists[0, 0, 0, -1]
    assert "kept the results of 1 other region(s)" in w.status.text()


def test_a_finished_job_leaves_no_activity_in_napari(viewer, qtbot):
    """Progress ticks queued behind the first once made more activities in napari's dock
    (its widgets process Qt's events), never closed: the activity indicator kept animating."""
    from napari.utils import progress

    with_regions(viewer, qtbot, [Region(0, T, 0, H, 0, W)])
    w = small_search(viewer, qtbot, flow="none")
    w.stride0.setValue(1)
    w.runner.run_button.click()
    wait_done(qtbot, w)
    assert RESULTS_KEY in viewer.layers["noisy"].metadata and w.runner._activity is None
    assert [str(p) for p in progress._all_instances] == []


def test_search_cancel_leaves_no_layer(viewer, qtbot, monkeypatch):
    with_regions(viewer, qtbot, [Region(0, T, 0, H, 0, W)])
    real = model_search.search

    def slow(*a, **k):  # 5 bands of 0.3 s: time to press Cancel after the first
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(model_search, "search", slow)
    w = small_search(viewer, qtbot, flow="none")
    w.stride0.setValue(1)
    names = layer_names(viewer)
    w.runner.run_button.click()
    assert w.runner.running and w.runner.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: w.runner.bar.value() >= 1, timeout=20_000)  # some bands done
    assert w.runner.bar.value() < w.runner.bar.maximum()
    assert w.runner._activity.n == w.runner.bar.value()  # also in napari's activity dock
    w.runner.cancel_button.click()
    wait_done(qtbot, w)
    assert w.runner._activity is None and w.runner.bar.value() == 0
    assert layer_names(viewer) == names and RESULTS_KEY not in viewer.layers["noisy"].metadata
    assert "cancelled" in w.status.text()


@pytest.mark.parametrize(
    "setup, match",
    [
        ("no_video", "no video layer"),
        ("k_too_big", "k: 1000 neighbours asked for but the window holds only 75"),
        ("region_outside", "t1=9 is outside the video (frame count 5)"),
        ("empty_regions", "regions layer is empty"),
        ("no_flow", "no flow computed"),
    ],
)
def test_search_bad_input_changes_nothing(viewer, qtbot, setup, match):
    with_regions(viewer, qtbot)
    w = small_search(viewer, qtbot)
    if setup == "no_video":
        for name in ("noisy", "clean"):
            viewer.layers.remove(name)
    elif setup == "k_too_big":
        w.k.setValue(1000)
    elif setup == "region_outside":
        viewer.layers["regions"].features = {"t0": [1], "t1": [9]}
    elif setup == "empty_regions":
        viewer.layers["regions"].data = []
    else:
        viewer.layers["noisy"].metadata.pop(FLOWS_KEY)
    names = layer_names(viewer)
    w.runner.run_button.click()
    assert not w.runner.running
    assert w.status.kind == "error" and match in w.status.text()
    assert layer_names(viewer) == names
    if "noisy" in viewer.layers:
        assert RESULTS_KEY not in viewer.layers["noisy"].metadata


def test_flow_widget_caches_flow_for_search(viewer, qtbot):
    viewer.layers["noisy"].metadata.pop(FLOWS_KEY)
    w = FlowWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.method.setCurrentText("ilk")
    w.step.setValue(8)
    w.runner.run_button.click()
    qtbot.waitUntil(lambda: "noisy flow" in viewer.layers, timeout=60_000)
    wait_done(qtbot, w)
    meta = viewer.layers["noisy"].metadata[FLOWS_KEY]
    assert meta["method"] == "ilk" and meta["fflow"].shape == (T, 2, H, W)
    vec = viewer.layers["noisy flow"].data
    assert vec.shape == (T * 5 * 6, 2, 3)
    np.testing.assert_allclose(vec[0, 1], [0, 3 * meta["fflow"][0, 1, 4, 4], 3 * meta["fflow"][0, 0, 4, 4]],
                               rtol=1e-5)
    # the search widget now finds it
    with_regions(viewer, qtbot)
    s = small_search(viewer, qtbot)
    s.runner.run_button.click()
    wait_done(qtbot, s)
    assert viewer.layers["noisy"].metadata[RESULTS_KEY][0].flow == "ilk"


def test_flow_widget_cancel_and_no_video(viewer, qtbot):
    meta = viewer.layers["noisy"].metadata[FLOWS_KEY]
    w = FlowWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.method.setCurrentText("tvl1")
    names = layer_names(viewer)
    w.runner.run_button.click()
    w.runner.cancel_button.click()
    wait_done(qtbot, w)
    assert "cancelled" in w.status.text() and layer_names(viewer) == names
    assert viewer.layers["noisy"].metadata[FLOWS_KEY] is meta  # the cached flow is untouched
    for name in ("noisy", "clean"):
        viewer.layers.remove(name)
    w.runner.run_button.click()
    assert not w.runner.running and "no video layer" in w.status.text()


def test_reader_through_napari(make_napari_viewer, tmp_path):
    pytest.importorskip("av")
    from napari_stnls.video.io import write_video

    v = np.random.default_rng(0).integers(0, 256, (6, 16, 20, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", v)
    np.save(tmp_path / "gray.npy", v[..., 0])
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-stnls")
    viewer.open(str(tmp_path / "gray.npy"), plugin="napari-stnls")
    clip, gray = viewer.layers["clip"], viewer.layers["gray"]
    assert clip.rgb and clip.data.shape == (6, 16, 20, 3) and clip.data.dtype == np.uint8
    assert not gray.rgb and gray.data.shape == (6, 16, 20)
    assert clip.axis_labels == gray.axis_labels == ("t", "y", "x")
    np.testing.assert_array_equal(np.asarray(gray.data), v[..., 0])


def test_neighbours_click_gallery_and_map(viewer, qtbot):
    with_regions(viewer, qtbot)
    s = small_search(viewer, qtbot)
    s.runner.run_button.click()
    wait_done(qtbot, s)
    w = NeighboursWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.t.setValue(2)
    w.y.setValue(15)
    w.x.setValue(21)
    w.show_button.click()
    res = viewer.layers["noisy"].metadata[RESULTS_KEY][0]
    it, iy, ix = res.query_index(2, 15, 21)
    assert (w.t.value(), w.y.value(), w.x.value()) == (2, 16, 22)
    pts = viewer.layers["neighbours"]
    own = (pts.features["drawn"] == ON_OWN_FRAME).to_numpy()
    assert own.tolist() == [True] * 6 + [False] * 6  # the matches on their frames, then on the query's
    np.testing.assert_array_equal(pts.data[own], res.inds[it, iy, ix])
    np.testing.assert_array_equal(pts.features["distance"][own], res.dists[it, iy, ix])
    assert list(pts.features["rank"][own]) == [1, 2, 3, 4, 5, 6]
    assert np.all(np.diff(pts.size[own]) < 0)  # best match biggest
    assert not np.allclose(pts.face_color[0], pts.face_color[5])  # coloured by distance
    assert [str(s) for s in pts.symbol] == ["disc"] * 6 + ["ring"] * 6
    vec = viewer.layers["neighbour vectors"]
    assert not vec.visible  # the arrows wait until they are shown, then are the last click's
    vec.visible = True
    np.testing.assert_allclose(vec.data[:, 0], np.broadcast_to([2, 16, 22], (6, 3)))
    np.testing.assert_allclose(vec.data[:, 0] + vec.data[:, 1], res.inds[it, iy, ix])
    # all K matches also on the query's frame, labelled and coloured by their frame offset
    ring = ~own
    matches = res.inds[it, iy, ix]
    np.testing.assert_array_equal(pts.data[ring, 0], np.full(6, 2.0))
    np.testing.assert_array_equal(pts.data[ring, 1:], matches[:, 1:])
    offsets = (matches[:, 0] - 2).astype(int)
    assert list(pts.features["offset"][ring]) == list(offsets) and set(offsets) == {-1, 0, 1}
    assert list(pts.features["label"][ring]) == ["t" if d == 0 else f"t{d:+d}" for d in offsets]
    assert list(pts.features["label"][own]) == [""] * 6
    assert list(pts.text.values) == list(pts.features["label"])
    assert (pts.features["drawn"][ring] == ON_QUERY_FRAME).all()
    blue, orange = pts.face_color[ring][offsets < 0], pts.face_color[ring][offsets > 0]
    assert (blue[:, 2] > blue[:, 0]).all() and (orange[:, 0] > orange[:, 2]).all()
    # per frame: on the query's frame all K rings (and the discs of that frame); on another
    # frame no ring, and exactly the matches of that frame
    for t in (1, 2, 3):
        viewer.dims.set_current_step(0, t)
        shown = pts._view_indices
        assert int(ring[shown].sum()) == (6 if t == 2 else 0)
        assert int(own[shown].sum()) == int((matches[:, 0] == t).sum())
    # the time slider covers exactly the video's frames, and is named t
    assert tuple(viewer.dims.range[0]) == (0, T - 1, 1) and viewer.dims.axis_labels[0] == "t"
    for layer in viewer.layers:
        assert 0 <= layer.extent.world[0, 0] <= layer.extent.world[1, 0] <= T - 1, layer.name
    caps = w.gallery_captions()
    assert len(caps) == 6 and caps[0].startswith("#1  d=0")
    # a mouse click on the canvas picks the pixel under it
    event = SimpleNamespace(type="mouse_press", position=(1, 9.2, 30.6))
    for cb in viewer.mouse_drag_callbacks:
        cb(viewer, event)
    assert (w.t.value(), w.y.value(), w.x.value()) == (1, 10, 30)
    picked = res.inds[res.query_index(1, 9.2, 30.6)]
    np.testing.assert_array_equal(viewer.layers["neighbours"].data[:6], picked)
    arrows = viewer.layers["neighbour vectors"].data  # shown: kept up with the clicks
    np.testing.assert_allclose(arrows[:, 0, 1:], [[10, 30]] * 6)
    # a pixel outside every region: a message, nothing changes
    before = viewer.layers["neighbours"].data.copy()
    w.t.setValue(0)
    w.show_button.click()
    assert w.status.kind == "error" and "in no searched region" in w.status.text()
    np.testing.assert_array_equal(viewer.layers["neighbours"].data, before)
    # per-pixel map
    w.stat.setCurrentText("mean")
    w.map_button.click()
    m = viewer.layers["noisy map (mean)"].data
    assert m.shape == (T, H, W) and m[1, 8, 10] == pytest.approx(res.dists[0, 0, 0].mean())


def test_neighbours_before_search(viewer, qtbot):
    w = NeighboursWidget(viewer)
    qtbot.addWidget(w)
    names = layer_names(viewer)
    w.show_button.click()
    assert w.status.kind == "error" and "run the Search widget first" in w.status.text()
    w.map_button.click()
    assert layer_names(viewer) == names


def test_denoise_regions_new_layer_and_metrics(viewer, qtbot):
    with_regions(viewer, qtbot)
    noisy = viewer.layers["noisy"].data.copy()
    w = DenoiseWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    assert w.sigma.value() == pytest.approx(20 / 255, abs=1e-4)  # the sample's metadata, its units
    w.sigma.setValue(0.02)
    w.estimate_button.click()
    qtbot.waitUntil(lambda: not w.estimating, timeout=20_000)
    assert abs(w.sigma.value() - 20 / 255) < 6 / 255 and "estimated noise: sigma" in w.status.text()
    w.sigma.setValue(20 / 255)
    w.method.setCurrentText("nlm")
    w.regions.setCurrentText("regions")
    w.flow.setCurrentText("computed")
    w.tunables["ws"].setValue(5)
    w.tunables["k"].setValue(8)
    w.device.setCurrentText("cpu")
    w.clean.setCurrentText("clean")
    w.runner.run_button.click()
    qtbot.waitUntil(lambda: "noisy denoised (nlm)" in viewer.layers, timeout=60_000)
    wait_done(qtbot, w)
    out = viewer.layers["noisy denoised (nlm)"].data
    np.testing.assert_array_equal(viewer.layers["noisy"].data, noisy)  # input never modified
    inside = np.zeros((T, H, W), bool)
    inside[REGION.t0:REGION.t1, REGION.y0:REGION.y1, REGION.x0:REGION.x1] = True
    np.testing.assert_array_equal(out[~inside], noisy[~inside])
    clean = viewer.layers["clean"].data
    assert np.abs(out[inside] - clean[inside]).mean() < 0.8 * np.abs(noisy[inside] - clean[inside]).mean()
    text = w.metrics.text()
    assert "PSNR" in text and "SSIM" in text
    before, after = (float(s.split()[0]) for s in text.split("PSNR ")[1].split(" dB")[0].split(" -> "))
    assert after > before + 1


def test_denoise_cancel_and_bad_input(viewer, qtbot):
    w = DenoiseWidget(viewer)
    qtbot.addWidget(w)
    w.video.setCurrentText("noisy")
    w.regions.setCurrentText("(whole video)")
    w.method.setCurrentText("nlb")
    w.device.setCurrentText("cpu")
    names = layer_names(viewer)
    w.runner.run_button.click()
    w.runner.cancel_button.click()  # at once: stops at the next band
    wait_done(qtbot, w)
    assert layer_names(viewer) == names and "cancelled" in w.status.text()
    w.tunables["ps"].setValue(4)
    w.runner.run_button.click()
    assert not w.runner.running and "ps: expected an odd" in w.status.text()
    w.tunables["ps"].setValue(0)
    w.clean.setCurrentText("clean")
    viewer.add_image(np.zeros((2, 4, 4)), name="small")
    w.clean.setCurrentText("small")
    w.runner.run_button.click()
    assert not w.runner.running and "clean reference" in w.status.text()
    assert layer_names(viewer) == names + ["small"]


def test_closed_widgets_stop_following_the_viewer(viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    widgets = [SearchWidget(viewer), NeighboursWidget(viewer), RegionsWidget(viewer), DenoiseWidget(viewer)]
    widgets[2].add_button.click()
    n_callbacks = len(viewer.mouse_drag_callbacks)
    for w in widgets:
        w.deleteLater()
    for _ in range(3):
        QApplication.processEvents()
        qtbot.wait(20)
    viewer.add_image(np.zeros((T, H, W)), name="later")  # combos of deleted widgets: no error
    viewer.layers["regions"].add_rectangles(np.array([[0, 1, 1], [0, 1, 5], [0, 5, 5], [0, 5, 1]]))
    event = SimpleNamespace(type="mouse_press", position=(0, 1, 1))
    for cb in list(viewer.mouse_drag_callbacks):
        cb(viewer, event)
    assert len(viewer.mouse_drag_callbacks) < n_callbacks  # the deleted widget's picker is gone
    viewer.layers.remove("later")  # and again, once disconnected


def test_denoise_lazy_layer_computes_frames_in_the_background(viewer, qtbot, monkeypatch):
    """The lazy layer is added at once; the frame shown is denoised first, in a background thread,
    then the next ones (prefetch); the layer is redrawn as each is ready."""
    import threading

    from napari_stnls.plugin.model.lazy import BackgroundFrames
    from napari_stnls.stream import methods as stream_methods

    seen, threads = [], set()
    real = stream_methods.compute_tile

    def counting(kind, method, p, crop, tile, *a, **k):
        seen.append(tile.t0)
        threads.add(threading.current_thread().name)
        return real(kind, method, p, crop, tile, *a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", counting)
    noisy = viewer.layers["noisy"].data.copy()
    w = DenoiseWidget(viewer)
    qtbot.addWidget(w)
    w.prefetch = 1
    w.video.setCurrentText("noisy")
    w.method.setCurrentText("nlm")
    w.flow.setCurrentText("computed")  # the sample's cached flow
    w.tunables["ps"].setValue(3)
    w.tunables["ws"].setValue(5)
    w.tunables["k"].setValue(4)
    w.device.setCurrentText("cpu")
    w.lazy.setChecked(True)
    assert not w.regions.isEnabled() and not w.clean.isEnabled()
    viewer.dims.set_point(0, 2)
    w.runner.run_button.click()
    name = "noisy denoised (nlm, lazy)"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=10_000)
    wait_done(qtbot, w)
    layer = viewer.layers[name]
    frames = layer.data
    assert isinstance(frames, BackgroundFrames) and frames.shape == noisy.shape and layer.rgb
    assert layer.metadata["stnls_lazy"] and "denoised in the background when shown" in w.status.text()
    qtbot.waitUntil(lambda: frames.is_ready(2) and frames.is_ready(3), timeout=30_000)
    assert seen[:2] == [2, 3]  # the frame shown first, then the next one
    assert threading.current_thread().name not in threads  # never in the GUI thread
    qtbot.waitUntil(lambda: "frame 3 ready" in w.status.text(), timeout=10_000)
    # what napari shows is the denoised frame once it is ready (the layer was redrawn)
    np.testing.assert_allclose(layer.get_value((2, 10, 12), world=True), np.asarray(frames[2])[10, 12])
    assert np.asarray(frames[2])[10, 12].any()
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: frames.is_ready(0) and frames.is_ready(1), timeout=30_000)
    assert sorted(seen) == [0, 1, 2, 3]  # frame 0 asked, then 1; 4 never shown nor next: not computed
    viewer.dims.set_point(0, 2)
    qtbot.wait(100)
    assert sorted(seen) == [0, 1, 2, 3]  # frame 2 again: kept
    np.testing.assert_array_equal(viewer.layers["noisy"].data, noisy)  # input never modified
    viewer.layers.remove(name)
    assert frames.closed  # a removed layer's frames are no longer computed
    w.method.setCurrentText("skimage")
    names = layer_names(viewer)
    w.runner.run_button.click()
    assert not w.runner.running and "lazy: supports" in w.status.text() and layer_names(viewer) == names
