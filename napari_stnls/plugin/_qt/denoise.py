"""Denoise dock widget: restore a video, whole or in its regions, into a new layer; PSNR/SSIM.

Lazy mode: a new layer backed by a dask array whose frames are denoised as napari displays
them (:func:`napari_stnls.plugin.model.denoise.denoise_lazy`), for videos too large to restore at once."""

from __future__ import annotations

import time
import weakref
from functools import partial

from napari.layers import Shapes
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._sample import SIGMA_KEY
from ..model.denoise import (
    LAZY_METHODS,
    denoise_background,
    denoise_methods,
    denoise_video,
    describe_quality,
    estimate_noise_sigma,
    method_defaults,
    quality,
)
from ..model.lazy import BackgroundFrames
from ._common import (
    NONE,
    WHOLE_VIDEO,
    LayerCombo,
    Runner,
    Status,
    alive,
    flows_of,
    is_regions_layer,
    regions_of,
    set_layer,
    transforms_of,
    video_combo,
)
from ._common import video_shape as _video_shape

TUNABLE = ("ps", "ws", "k")


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _FrameEvents(QObject):
    """Carries a background frame's news from its thread to the GUI thread."""

    ready = Signal(int)
    failed = Signal(int, str)


def _close_frames(frames: list) -> None:
    for f in frames:
        f.close()
    frames.clear()


def _close_removed(event) -> None:
    """A lazy layer removed from the viewer: stop computing its frames."""
    data = getattr(event.value, "data", None)
    if isinstance(data, BackgroundFrames):
        data.close()


def _frame_ready(layer_ref, widget_ref, frames: BackgroundFrames, t: int) -> None:
    """Frame t of a lazy layer is ready (GUI thread): redraw the layer if it shows that frame."""
    layer = layer_ref()
    if layer is None or layer.data is not frames:
        frames.close()  # the layer is gone or holds other data: nothing to compute for
        return
    try:
        layer.refresh()
    except RuntimeError:  # the viewer was closed
        frames.close()
        return
    widget = widget_ref()
    if widget is not None and alive(widget.status):
        left = frames.pending() + ([frames.computing] if frames.computing is not None else [])
        widget.status.info(f"{layer.name}: frame {t} ready" + (
            f"; computing frame {sorted(left)[0] if frames.computing is None else frames.computing}"
            f" ({len(left)} queued)" if left else ""))


def _frame_failed(widget_ref, name: str, t: int, msg: str) -> None:
    widget = widget_ref()
    if widget is not None and alive(widget.status):
        widget.status.error(f"{name}: frame {t} failed: {msg}")


class DenoiseWidget(QWidget):
    """Method, sigma (with Estimate), regions or whole video -> a new Image layer; the input is
    never modified. With a clean layer chosen, PSNR and SSIM before and after."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.video = video_combo(self.viewer)
        self.method = QComboBox()
        self.method.addItems(tuple(denoise_methods()))
        self.sigma = QDoubleSpinBox()
        self.sigma.setRange(0.1, 255)
        self.sigma.setDecimals(2)
        self.sigma.setValue(20.0)
        self.sigma.setToolTip("noise standard deviation on the 0-255 scale")
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.clicked.connect(self.estimate)
        self.regions = LayerCombo(self.viewer, kinds=(Shapes,), extra=(WHOLE_VIDEO,),
                                  predicate=is_regions_layer)
        self.flow = QComboBox()
        self.flow.addItems(("none", "computed"))
        self.device = QComboBox()
        self.device.addItems(("auto", "cpu", "cuda"))
        self.tunables = {}
        for name in TUNABLE:
            sb = QSpinBox()
            sb.setRange(0, 999)
            sb.setSpecialValueText("default")
            self.tunables[name] = sb
        self.clean = video_combo(self.viewer, extra=(NONE,))
        self.clean.setCurrentText(NONE)
        self.lazy = QCheckBox("lazy (compute frames on view)")
        self.lazy.setToolTip("add a layer at once whose frames are denoised in the background when shown "
                             "(the frame shown first, then the next ones; whole video; "
                             f"{', '.join(LAZY_METHODS)}); black until ready; for large videos")
        self.prefetch = 2  # lazy layers: frames after the one shown computed ahead
        self._lazy_frames: list[BackgroundFrames] = []  # stopped when this widget is deleted
        self.destroyed.connect(partial(_close_frames, self._lazy_frames))
        self.viewer.layers.events.removed.connect(_close_removed)
        self.lazy.toggled.connect(self._lazy_changed)
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        self.status = Status()
        self.runner = Runner(self.status, "Denoise")
        self.runner.run_button.clicked.connect(self.run)
        self.preview_button = QPushButton("Preview frame")
        self.preview_button.setToolTip("denoise only the frame shown (within the regions, if any), into a "
                                       "preview layer, and estimate how long the whole run takes")
        self.preview_button.clicked.connect(self.preview)
        self.compare_button = QPushButton("Compare before/after")
        self.compare_button.setCheckable(True)
        self.compare_button.setToolTip("the input and the last result side by side (napari's grid: one "
                                       "camera, so zoom and pan are shared); click again to go back")
        self.compare_button.toggled.connect(self.compare)
        self.last_output: tuple[str, str] | None = None  # (input, output) layer names of the last run
        self._compare_state = None
        self.method.currentTextChanged.connect(self._method_changed)
        self.video.currentTextChanged.connect(self._video_changed)

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("method", self.method)
        srow = QHBoxLayout()
        srow.addWidget(self.sigma)
        srow.addWidget(self.estimate_button)
        form.addRow("sigma (0-255)", srow)
        form.addRow("regions", self.regions)
        form.addRow("flow", self.flow)
        for name, sb in self.tunables.items():
            form.addRow(name, sb)
        form.addRow("device", self.device)
        form.addRow("clean reference", self.clean)
        form.addRow("", self.lazy)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.runner.row())
        lay.addWidget(self.runner.bar)
        row = QHBoxLayout()
        row.addWidget(self.preview_button)
        row.addWidget(self.compare_button)
        lay.addLayout(row)
        lay.addWidget(self.metrics)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._method_changed()
        self._video_changed()

    def _method_changed(self, *_):
        defaults = method_defaults(self.method.currentText())
        for name, sb in self.tunables.items():
            sb.setEnabled(name in defaults)
            sb.setToolTip(f"default {defaults[name]}" if name in defaults else "not used by this method")

    def _lazy_changed(self, *_):
        lazy = self.lazy.isChecked()  # the lazy layer is the whole video, and has no metrics
        self.regions.setEnabled(not lazy)
        self.clean.setEnabled(not lazy)

    def _video_changed(self, *_):
        layer = self.video.layer()
        if layer is not None and SIGMA_KEY in layer.metadata:
            self.sigma.setValue(float(layer.metadata[SIGMA_KEY]) * 255)

    def estimate(self) -> None:
        try:
            _video_shape(self.video.layer())
            s = estimate_noise_sigma(self.video.layer().data)
        except (ValueError, ImportError) as e:  # ImportError: PyWavelets missing
            self.status.error(str(e))
            return
        self.sigma.setValue(max(0.1, s * 255))
        self.status.info(f"estimated sigma: {s * 255:.2f} / 255")

    def run(self) -> None:
        self._start(preview=False)

    def preview(self) -> None:
        """Denoise the frame shown only (within the regions, when regions are chosen) into the
        layer ``<video> preview (<method>)``, and say how long the whole run would take."""
        self._start(preview=True)

    def _current_frame(self, layer) -> int:
        return int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))

    def _start(self, preview: bool) -> None:
        layer = self.video.layer()
        try:
            shape = _video_shape(layer)
            regs = None
            lazy = self.lazy.isChecked() and not preview  # a preview is one frame, computed now
            if lazy and self.method.currentText() not in LAZY_METHODS:
                raise ValueError(f"lazy: supports the methods {', '.join(LAZY_METHODS)}; uncheck it for "
                                 f"{self.method.currentText()!r}")
            if not lazy and self.regions.currentText() != WHOLE_VIDEO:
                regs = regions_of(self.regions.layer(), layer)
                if not regs:
                    raise ValueError("regions: the regions layer is empty; draw a rectangle or choose "
                                     f"{WHOLE_VIDEO}")
            flows = None
            if self.flow.currentText() == "computed":
                flows = flows_of(layer)
                if flows is None:
                    raise ValueError(f"flow: no flow computed for {layer.name!r}; run the Flow widget first "
                                     "or choose 'none'")
            clean = None if lazy else self.clean.layer()
            if clean is not None and tuple(clean.data.shape) != shape:
                raise ValueError(f"clean reference: {clean.name!r} has shape {tuple(clean.data.shape)}, "
                                 f"the video {shape}")
            method = self.method.currentText()
            defaults = method_defaults(method)
            params = {n: sb.value() for n, sb in self.tunables.items() if sb.value() and n in defaults}
            if "ps" in params and params["ps"] % 2 == 0:
                raise ValueError(f"ps: expected an odd patch size, got {params['ps']}")
            if "ws" in params and params["ws"] % 2 == 0:
                raise ValueError(f"ws: expected an odd window size, got {params['ws']}")
        except ValueError as e:
            self.status.error(str(e))
            return
        sigma, device, data = self.sigma.value() / 255, self.device.currentText(), layer.data
        if preview:
            self._run_preview(layer, method, sigma, regs, flows, device, params, shape)
            return
        if lazy:
            self._run_lazy(layer, method, sigma, flows, device, params)
            return
        clean_data = None if clean is None else clean.data

        def fn(progress, should_stop):
            out = denoise_video(data, method, sigma, regions=regs, flows=flows, device=device,
                                progress=progress, should_stop=should_stop, **params)
            q = None
            if clean_data is not None:
                q = (quality(data, clean_data, regs), quality(out, clean_data, regs))
            return out, q

        def done(res):
            out, q = res
            where = "whole video" if regs is None else f"{len(regs)} region(s)"
            self.last_output = (layer.name, f"{layer.name} denoised ({method})")
            set_layer(self.viewer, self.last_output[1], out, "image",
                      once=dict(rgb=layer.rgb),
                      contrast_limits=(0.0, 1.0), metadata={"stnls_denoised_from": layer.name,
                                                             "stnls_method": method, "stnls_sigma": sigma},
                      **transforms_of(layer))
            if q is not None:
                self.metrics.setText(describe_quality(q[0], q[1], f"{where} vs {clean.name!r}: "))
            else:
                self.metrics.setText("")
            self.status.info(f"denoised {where} with {method} (sigma {sigma * 255:.1f})")

        self.runner.start(fn, done, f"denoising ({method})")

    def _run_preview(self, layer, method, sigma, regs, flows, device, params, shape) -> None:
        T, H, W = shape[:3]
        t = min(max(self._current_frame(layer), 0), T - 1)
        full = [(0, T, 0, H, 0, W)] if regs is None else [tuple(r) for r in regs]
        part = []  # the job's pixels on frame t
        for t0, t1, y0, y1, x0, x1 in full:
            if t0 <= t < t1:
                part.append((t, t + 1, y0, y1, x0, x1))
        if not part:
            self.status.error(f"preview: no region on frame {t}; go to a frame a region covers")
            return
        pixels = lambda rs: sum((r[1] - r[0]) * (r[3] - r[2]) * (r[5] - r[4]) for r in rs)  # noqa: E731
        scale = pixels(full) / pixels(part)
        data = layer.data

        def fn(progress, should_stop):
            start = time.perf_counter()
            out = denoise_video(data, method, sigma, regions=part, flows=flows, device=device,
                                progress=progress, should_stop=should_stop, **params)
            return out, time.perf_counter() - start

        def done(res):
            out, seconds = res
            name = f"{layer.name} preview ({method})"
            set_layer(self.viewer, name, out, "image", once=dict(rgb=layer.rgb), contrast_limits=(0.0, 1.0),
                      metadata={"stnls_denoised_from": layer.name, "stnls_method": method,
                                "stnls_sigma": sigma, "stnls_preview_frame": t},
                      **transforms_of(layer))
            self.last_output = (layer.name, name)
            whole = "the whole video" if regs is None else f"the {len(regs)} region(s)"
            self.status.info(f"preview of frame {t} in {seconds:.1f} s; {whole} would take about "
                             f"{_duration(seconds * scale)}")

        self.runner.start(fn, done, f"preview ({method}, frame {t})")

    def compare(self, on: bool) -> None:
        """Show the input and the last result side by side (napari's grid mode, one shared camera),
        every other layer hidden; off: back to the layers and the view as they were."""
        if on:
            pair = self.last_output
            if pair is None or not all(n in self.viewer.layers for n in pair):
                self.status.error("compare: no result to compare yet; run Denoise or Preview first")
                self.compare_button.blockSignals(True)
                self.compare_button.setChecked(False)
                self.compare_button.blockSignals(False)
                return
            grid = self.viewer.grid
            self._compare_state = ({layer.name: layer.visible for layer in self.viewer.layers},
                                   grid.enabled, tuple(grid.shape), grid.stride)
            for layer in self.viewer.layers:
                layer.visible = layer.name in pair
            grid.stride = 1
            grid.shape = (1, 2)
            grid.enabled = True
            self.status.info(f"before/after: {pair[0]!r} and {pair[1]!r}, zoom and pan shared")
            return
        state, self._compare_state = self._compare_state, None
        if state is None:
            return
        visible, enabled, shape, stride = state
        grid = self.viewer.grid
        grid.enabled, grid.shape, grid.stride = enabled, shape, stride
        for layer in self.viewer.layers:
            if layer.name in visible:
                layer.visible = visible[layer.name]
        self.status.info("back to the layers as they were")

    def _run_lazy(self, layer, method, sigma, flows, device, params) -> None:
        """Add the lazily denoised layer. Building it reads no pixel (only the flows' bound), so
        it is quick; then each frame is denoised in a background thread when it is shown (the
        frame shown first, then the next ``prefetch`` ones), and the layer redrawn when it is
        ready: the viewer never waits for a frame."""
        data = layer.data
        name = f"{layer.name} denoised ({method}, lazy)"
        events = _FrameEvents()
        prefetch = self.prefetch

        def fn(progress, should_stop):
            return denoise_background(data, method, sigma, flows=flows, device=device, prefetch=prefetch,
                                      on_ready=events.ready.emit,
                                      on_error=lambda t, e: events.failed.emit(t, f"{type(e).__name__}: {e}"),
                                      paused=True, **params)

        def done(frames):
            frames.events = events  # kept alive as long as the frames that emit through it
            self._lazy_frames.append(frames)
            old = self.viewer.layers[name].data if name in self.viewer.layers else None
            meta = {"stnls_denoised_from": layer.name, "stnls_method": method, "stnls_sigma": sigma,
                    "stnls_lazy": True}
            out = set_layer(self.viewer, name, frames, "image", once=dict(rgb=layer.rgb),
                            contrast_limits=(0.0, 1.0), metadata=meta, **transforms_of(layer))
            if isinstance(old, BackgroundFrames) and old is not frames:
                old.close()
            me = weakref.ref(self)
            events.ready.connect(partial(_frame_ready, weakref.ref(out), me, frames))
            events.failed.connect(partial(_frame_failed, me, name))
            frames.resume()  # the layer is in place: its current frame first
            self.last_output = (layer.name, name)
            self.metrics.setText("")
            self.status.info(f"lazy {method} layer added (sigma {sigma * 255:.1f}): frames are denoised "
                             "in the background when shown, black until ready")

        self.runner.start(fn, done, f"building the lazy {method} layer")
