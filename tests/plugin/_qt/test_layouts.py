"""Layers of every layout (YX, TYX, TYXC with 2 channels, ZYX, TZYX) and pixel type (uint8, uint16,
float outside [0, 1]) through the widgets, in a real napari viewer under Xvfb: denoised in their
own type, contrast limits and colormap; searched and clicked on a 16-bit z-stack; calibrated."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_stnls.plugin._qt import DenoiseWidget, NeighboursWidget, SearchWidget  # noqa: E402

H = W = 16
LAYOUTS = {"YX": (H, W), "TYX": (3, H, W), "TYXC": (3, H, W, 2), "ZYX": (3, H, W), "TZYX": (3, 2, H, W)}
# (dtype, the signal's range, the contrast limits the layer is shown with, the noise's sigma)
TYPES = {"uint8": (np.uint8, (40, 200), (10.0, 230.0), 12.0),
         "uint16": (np.uint16, (1000, 30000), (500.0, 32000.0), 1500.0),
         "float": (np.float32, (-50.0, 300.0), (-80.0, 330.0), 20.0)}


def noisy_layer(shape, dtype, span, sigma, seed=0):
    """A smooth ramp with Gaussian noise, in ``dtype`` (integers rounded, clipped)."""
    rng = np.random.default_rng(seed)
    two = len(shape) == 4 and shape[-1] == 2  # (T, Y, X, C)
    h, w = shape[-3:-1] if two else shape[-2:]
    clean = span[0] + (span[1] - span[0]) * np.broadcast_to(np.linspace(0, 1, w), (h, w))
    clean = np.broadcast_to(clean[..., None] if two else clean, shape)
    noisy = clean + rng.normal(0, sigma, shape)
    if np.issubdtype(dtype, np.integer):
        noisy = np.clip(np.rint(noisy), np.iinfo(dtype).min, np.iinfo(dtype).max)
    return noisy.astype(dtype), clean


@pytest.mark.parametrize("kind", list(TYPES))
def test_denoise_keeps_type_limits_colormap_and_placement_for_every_layout(make_napari_viewer, qtbot, kind):
    dtype, span, limits, sigma = TYPES[kind]
    v = make_napari_viewer()
    w = DenoiseWidget(v)
    qtbot.addWidget(w)
    w.method.setCurrentText("nlm")
    w.tunables["ws"].setValue(3)
    w.tunables["k"].setValue(4)
    w.device.setCurrentText("cpu")
    for n, (axes, shape) in enumerate(LAYOUTS.items()):
        data, clean = noisy_layer(shape, dtype, span, sigma, seed=n)
        scale = (2.0,) * (len(shape) - 2) + (0.5, 0.5)
        layer = v.add_image(data, name=axes, contrast_limits=limits, colormap="magma", scale=scale,
                            translate=(3.0,) * len(shape))
        w.video.setCurrentText(axes)
        assert w.axes.apply(axes) == axes  # TYXC with 2 channels and ZYX are not the guess
        qtbot.waitUntil(lambda: not w.estimating, timeout=20_000)
        assert w.sigma.value() == pytest.approx(sigma, rel=0.5), axes  # estimated (few pixels), in its units
        w.runner.run_button.click()
        name = f"{axes} denoised (nlm)"
        qtbot.waitUntil(lambda name=name: name in v.layers and not w.runner.running, timeout=30_000)
        out = v.layers[name]
        assert out.data.dtype == dtype and out.data.shape == shape, axes
        assert tuple(out.contrast_limits) == pytest.approx(limits) and out.colormap.name == "magma", axes
        assert tuple(out.scale) == pytest.approx(tuple(layer.scale)), axes
        assert tuple(out.translate) == pytest.approx(tuple(layer.translate)), axes
        err_in = np.abs(data.astype(np.float64) - clean).mean()
        err_out = np.abs(np.asarray(out.data, np.float64) - clean).mean()
        assert err_out < 0.8 * err_in, axes  # restored, in the input's units
        np.testing.assert_array_equal(layer.data, data)  # the input is never modified
        assert f"of {axes} with nlm" in w.status.text()


def test_search_and_click_on_a_16_bit_z_stack(make_napari_viewer, qtbot):
    v = make_napari_viewer()
    rng = np.random.default_rng(0)
    stack = (1500 + 800 * rng.random((4, 24, 28))).astype(np.uint16)  # (Z, Y, X): dark for uint16
    layer = v.add_image(stack, name="stack", contrast_limits=(1500, 2300))
    s = SearchWidget(v)
    qtbot.addWidget(s)
    s.video.setCurrentText("stack")
    assert s.axes.currentText() == "TYX"  # the guess for 3-D; this is a z-stack
    assert s.axes.apply("ZYX") == "ZYX" and "4 z-slices, searched like frames" in s.axes.note.text()
    s.regions.setCurrentText("(whole video)")
    s.flow.setCurrentText("none")
    for name, value in (("ps", 3), ("ws", 5), ("wt", 1), ("k", 4), ("stride0", 1)):
        getattr(s, name).setValue(value)
    s.device.setCurrentText("cpu")
    s.runner.run_button.click()
    qtbot.waitUntil(lambda: "stack search" in v.layers and not s.runner.running, timeout=30_000)
    assert v.layers["stack search"].data.shape == stack.shape
    n = NeighboursWidget(v)
    qtbot.addWidget(n)
    n.video.setCurrentText("stack")
    n._on_click(v, SimpleNamespace(type="mouse_press", position=(2.0, 11.0, 13.0)))
    assert n.status.kind == "info" and "query (t=2, y=11, x=13)" in n.status.text()
    pts = v.layers["neighbours"].data  # the matches on their own frames, then on the query's
    assert pts.shape == (8, 3) and tuple(pts[0]) == (2, 11, 13)  # itself first, on the stack's axes
    assert set(pts[:4, 0]) <= {1.0, 2.0, 3.0} and set(pts[4:, 0]) == {2.0}
    # the gallery shows the patches as napari shows the layer: its contrast limits, not black
    img = n._cells[0][0].pixmap().toImage()
    zoom = n.zoom.value()
    first = np.array([[img.pixelColor(zoom * j + zoom // 2, zoom * i + zoom // 2).red() for j in range(3)]
                      for i in range(3)], np.float64)
    expect = np.clip((stack[2, 10:13, 12:15].astype(np.float64) - 1500) / 800, 0, 1) * 255
    np.testing.assert_allclose(first, expect, atol=9)  # a pixmap may hold 5-6 bits per colour (Xvfb)
    assert first.mean() > 40
    # distances are on the scale shown: the query's match with itself is 0, others are of order 1
    d = n.neighbours.dists
    assert d[0] == pytest.approx(0, abs=1e-5) and 0.01 < d[-1] < 20
    assert layer.metadata["stnls_axes"] == "ZYX"


def test_a_tzyx_stack_is_searched_on_the_z_slice_shown(make_napari_viewer, qtbot):
    v = make_napari_viewer()
    rng = np.random.default_rng(1)
    v.add_image((rng.random((3, 4, 16, 16)) * 4000).astype(np.uint16), name="tz", contrast_limits=(0, 4000))
    v.dims.set_point(1, 2)  # z-slice 2
    s = SearchWidget(v)
    qtbot.addWidget(s)
    s.video.setCurrentText("tz")
    s.regions.setCurrentText("(whole video)")
    for name, value in (("ps", 3), ("ws", 3), ("wt", 1), ("k", 3), ("stride0", 2)):
        getattr(s, name).setValue(value)
    s.device.setCurrentText("cpu")
    s.runner.run_button.click()
    qtbot.waitUntil(lambda: "tz search" in v.layers and not s.runner.running, timeout=30_000)
    assert "z-slice 2" in s.status.text()
    m = v.layers["tz search"]
    assert m.data.shape == (3, 1, 16, 16) and tuple(m.translate) == (0, 2, 0, 0)  # on that slice
    n = NeighboursWidget(v)
    qtbot.addWidget(n)
    n.video.setCurrentText("tz")
    n._on_click(v, SimpleNamespace(type="mouse_press", position=(1.0, 2.0, 8.0, 8.0)))
    assert n.status.kind == "info" and set(v.layers["neighbours"].data[:, 1]) == {2.0}
    n._on_click(v, SimpleNamespace(type="mouse_press", position=(1.0, 0.0, 8.0, 8.0)))
    assert n.status.kind == "error" and "z-slice 2 of 'tz' was searched" in n.status.text()


def test_calibrate_button_sets_sigma(make_napari_viewer, qtbot):
    v = make_napari_viewer()
    data, _ = noisy_layer((3, 24, 24), np.uint16, (1000, 30000), 1500.0)
    v.add_image(data, name="cells")
    w = DenoiseWidget(v)
    qtbot.addWidget(w)
    w.video.setCurrentText("cells")
    qtbot.waitUntil(lambda: not w.estimating, timeout=20_000)
    w.method.setCurrentText("nlm")
    w.tunables["ws"].setValue(3)
    w.tunables["k"].setValue(4)
    w.device.setCurrentText("cpu")
    w.sigma.setValue(1000.0)
    w.calibrate_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    text = w.status.text()
    assert text.startswith("calibrated nlm: sigma"), text
    chosen = w.sigma.value()
    assert any(chosen == pytest.approx(f * 1000.0, rel=1e-3) for f in (0.5, 0.7, 1.0, 1.4, 2.0))
    assert f"{chosen:.4g}" in text
    w.noise.setCurrentText("poisson-gaussian")  # the gain is used, and the noise estimated again
    assert w.gain.isEnabled()
    qtbot.waitUntil(lambda: not w.estimating, timeout=20_000)
    w.noise.setCurrentText("gaussian")
    assert not w.gain.isEnabled()
    qtbot.waitUntil(lambda: not w.estimating, timeout=20_000)
    w.sigma.setValue(0.0)  # the read noise may be 0 with poisson-gaussian, not with gaussian
    w.runner.run_button.click()
    assert not w.runner.running and "sigma: expected a finite number > 0" in w.status.text()
