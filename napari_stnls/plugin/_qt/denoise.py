"""Denoise dock widget: restore a layer of any layout and pixel type, whole or in its regions,
into a new layer of the same type, contrast limits and colormap; sigma in the data's units
(estimated on the chosen layer, or calibrated); PSNR/SSIM.

Lazy mode: a new layer backed by a dask array whose frames are denoised as napari displays
them (:func:`napari_stnls.plugin.model.denoise.denoise_lazy`), for videos too large to restore at once."""

from __future__ import annotations

import atexit
import sys
import time
import weakref
from functools import cache, partial

# dask's array graphs, and dask.distributed (which dask imports to build such a graph when
# it is installed), are imported with the plugin: ~250 modules, ~50,000 long-lived objects
# that, imported by the first lazy Denoise job, set off a full garbage collection (0.15-0.4 s
# holding the GIL: the viewer stops) just as the job ended and its layer was added
import dask.array
import numpy as np
from napari.layers import Shapes
from napari.qt.threading import create_worker
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
    LAZY_AXES,
    LAZY_METHODS,
    NOISE_MODELS,
    calibrate_video,
    check_noise,
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
    AXES_KEY,
    NONE,
    WHOLE_VIDEO,
    AxesBox,
    LayerCombo,
    Runner,
    Status,
    alive,
    flows_of,
    in_turns,
    is_regions_layer,
    regions_of,
    select_layer,
    set_layer,
    settle_heap,
    transforms_of,
    video_combo,
    view_of,
)


@cache
def _load_dask_schedulers() -> None:
    """dask imports dask.distributed (where installed) the first time it resolves a scheduler
    by name: a one-element compute does it when the first Denoise widget is made, rather than
    in its first lazy job (whose end would then set off a full garbage collection)."""
    dask.array.zeros(1, chunks=1).sum().compute(scheduler="synchronous")

TUNABLE = ("ps", "ws", "k")


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"



# Noise estimates still running, referenced here rather than by their widget: a widget closed
# (or the viewer quitting) while its estimate runs must not let the worker, and the Qt object
# its thread signals through, be collected before the thread is done with them.
# Closing the viewer removes its layers, which may start one more estimate as the widget goes:
# the interpreter's exit waits for those threads (at exit, before the set above is cleared).
_RUNNING_ESTIMATES: set = set()


@atexit.register
def _wait_for_estimates() -> None:
    if _RUNNING_ESTIMATES:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(60_000)

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


def _show(layer_ref) -> None:
    layer = layer_ref()
    if layer is not None:
        try:
            layer.visible = True
        except RuntimeError:  # the viewer was closed
            pass


def _frame_failed(widget_ref, name: str, t: int, msg: str) -> None:
    widget = widget_ref()
    if widget is not None and alive(widget.status):
        widget.status.error(f"{name}: frame {t} failed: {msg}")


class DenoiseWidget(QWidget):
    """Method, sigma (with Estimate), regions or whole video -> a new Image layer; the input is
    never modified. With a clean layer chosen, PSNR and SSIM before and after."""

    def __init__(self, napari_viewer):
        super().__init__()
        _load_dask_schedulers()
        self.viewer = napari_viewer
        self.video = video_combo(self.viewer)
        self.axes = AxesBox(self.video)
        self.method = QComboBox()
        self.method.addItems(tuple(denoise_methods()))
        self.noise = QComboBox()
        self.noise.addItems(NOISE_MODELS)
        self.noise.setToolTip("gaussian: the same noise everywhere; poisson-gaussian: photon noise, variance "
                              "gain * value + sigma^2 (fluorescence, low light)")
        self.sigma = QDoubleSpinBox()
        self.sigma.setRange(0.0, 1e9)
        self.sigma.setDecimals(4)
        self.sigma.setValue(20.0)
        self.sigma.setToolTip("noise standard deviation in the data's units (counts for integer data); "
                              "the read noise with poisson-gaussian")
        self.gain = QDoubleSpinBox()
        self.gain.setRange(1e-6, 1e9)
        self.gain.setDecimals(4)
        self.gain.setValue(1.0)
        self.gain.setToolTip("poisson-gaussian: the data's units per photon "
                             "(variance = gain * value + sigma^2)")
        self.noise_note = QLabel("")
        self.noise_note.setWordWrap(True)
        self.noise_note.setStyleSheet("color: #909090;")
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.setToolTip("estimate the noise of the layer (no clean reference needed)")
        self.estimate_button.clicked.connect(lambda: self.estimate(auto=False))
        self.calibrate_button = QPushButton("Calibrate")
        self.calibrate_button.setToolTip("pick the strength (sigma, 0.5 to 2 times the noise's) for this "
                                         "method by a self-supervised (J-invariant) loss on a crop")
        self.calibrate_button.clicked.connect(self.calibrate)
        self._estimating = None  # the latest background noise estimate, while it runs
        self._sigma_source = None  # the layer whose noise the sigma shown was set from
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
        self.runner = Runner(self.status, "Denoise", viewer=self.viewer)
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
        self.axes.changed.connect(self._video_changed)
        self.noise.currentTextChanged.connect(self._noise_changed)

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("axes", self.axes)
        form.addRow("", self.axes.note)
        form.addRow("method", self.method)
        form.addRow("noise", self.noise)
        srow = QHBoxLayout()
        srow.addWidget(self.sigma)
        srow.addWidget(self.estimate_button)
        srow.addWidget(self.calibrate_button)
        form.addRow("sigma", srow)
        form.addRow("gain", self.gain)
        form.addRow("", self.noise_note)
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
        self._noise_changed()
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

    def _noise_changed(self, *_):
        self.gain.setEnabled(self.noise.currentText() == "poisson-gaussian")
        self._video_changed()  # the noise of the other model (unless set by hand since)

    def _video_changed(self, *_):
        """A new layer (or axes): its noise, from its metadata (the sample's known sigma) or
        estimated in the background, becomes the sigma shown."""
        layer = self.video.layer()
        if layer is None:
            return
        key = (layer.name, self.axes.currentText(), self.noise.currentText())
        if key == self._sigma_source:
            return
        if SIGMA_KEY in layer.metadata and self.noise.currentText() == "gaussian":
            self._sigma_source = key
            self.sigma.setValue(float(layer.metadata[SIGMA_KEY]))
            self.noise_note.setText(f"sigma {self.sigma.value():.4g} from the layer's metadata")
            return
        self.estimate(auto=True)

    @property
    def estimating(self) -> bool:
        """Whether a noise estimate is running (in a background thread)."""
        return self._estimating is not None

    def estimate(self, auto: bool = False) -> None:
        """Estimate the chosen layer's noise in a background thread (see
        :func:`napari_stnls.denoise.estimate_noise`) and set sigma (and gain) to it. ``auto``: on a
        change of layer; a failure then only shows in the note under sigma."""
        layer = self.video.layer()
        model = self.noise.currentText()
        try:
            view = view_of(layer, None, self.axes.axes())
        except ValueError as e:
            if not auto:
                self.status.error(str(e))
            return
        key = (layer.name, view.axes, model)
        data, axes = layer.data, view.axes

        def job():
            try:
                return "ok", estimate_noise_sigma(data, axes, model)
            except (ValueError, ImportError) as e:  # reported in the widget, not raised in Qt's loop
                return "error", e

        def returned(out):
            kind, value = out
            if kind == "error":
                errored(value)
                return
            if not alive(self.sigma) or self.video.layer() is not layer or \
                    self.noise.currentText() != model or self._estimating is not worker:
                return  # another layer or model was chosen since: its own estimate follows
            self._sigma_source = key
            if model == "gaussian":
                sigma, gain = float(value), None
            else:
                gain, sigma = (float(v) for v in value)
                self.gain.setValue(gain)
            self.sigma.setValue(sigma)
            text = f"estimated noise: sigma {sigma:.4g}" + ("" if gain is None else f", gain {gain:.4g}") + \
                   f" ({model}, the layer's units)"
            self.noise_note.setText(text)
            if not auto:
                self.status.info(text)

        def errored(e):
            if not alive(self.sigma) or self._estimating is not worker:
                return
            msg = f"noise estimate: {e}"
            self.noise_note.setText(msg)
            if not auto:
                self.status.error(msg)

        def finished():
            _RUNNING_ESTIMATES.discard(worker)  # referenced until its thread is done with it
            if self._estimating is worker:
                self._estimating = None

        worker = create_worker(job, _start_thread=False)
        worker.returned.connect(returned)
        worker.finished.connect(finished)
        _RUNNING_ESTIMATES.add(worker)
        self._estimating = worker
        self.noise_note.setText("estimating the noise...")
        worker.start()

    def _noise_kw(self) -> dict:
        """noise, sigma and gain from the widget, checked (ValueError naming the one at fault)."""
        noise = self.noise.currentText()
        sigma = float(self.sigma.value())
        gain = float(self.gain.value()) if noise == "poisson-gaussian" else None
        check_noise(noise, sigma, gain)
        return {"noise": noise, "sigma": sigma, "gain": gain}

    def calibrate(self) -> None:
        """Choose sigma for the method by the J-invariant loss, in the worker (progress, Cancel);
        the sigma chosen is set in the widget and the status says what was chosen."""
        layer = self.video.layer()
        try:
            view = view_of(layer, self.viewer, self.axes.axes())
            nk = self._noise_kw()
            method = self.method.currentText()
            params = self._params(method)
        except ValueError as e:
            self.status.error(str(e))
            return
        data, device = layer.data, self.device.currentText()

        def fn(progress, should_stop):
            return calibrate_video(data, method, nk["sigma"], axes=view.axes, noise=nk["noise"],
                                   gain=nk["gain"], device=device, progress=progress, should_stop=should_stop,
                                   **params)

        def done(c):
            chosen = float(c.params["sigma"])
            self.sigma.setValue(chosen)
            losses = ", ".join(f"{cand['sigma']:.4g}: {loss:.4g}" for cand, loss in c.losses)
            self.status.info(f"calibrated {method}: sigma {chosen:.4g} ({chosen / nk['sigma']:.2g} x "
                             f"{nk['sigma']:.4g}), the lowest J-invariant loss of sigma {losses}")

        self.runner.start(fn, done, f"calibrating ({method})")

    def _params(self, method: str) -> dict:
        defaults = method_defaults(method)
        params = {n: sb.value() for n, sb in self.tunables.items() if sb.value() and n in defaults}
        if "ps" in params and params["ps"] % 2 == 0:
            raise ValueError(f"ps: expected an odd patch size, got {params['ps']}")
        if "ws" in params and params["ws"] % 2 == 0:
            raise ValueError(f"ws: expected an odd window size, got {params['ws']}")
        return params

    def _output_style(self, layer) -> dict:
        """The input's look for an output layer: contrast limits and colormap (not for RGB)."""
        style = {"contrast_limits": tuple(float(v) for v in layer.contrast_limits)}
        if not layer.rgb:
            style["colormap"] = layer.colormap
        return style

    def run(self) -> None:
        self._start(preview=False)

    def preview(self) -> None:
        """Denoise the frame shown only (within the regions, when regions are chosen) into the
        layer ``<video> preview (<method>)``, and say how long the whole run would take."""
        self._start(preview=True)

    def _start(self, preview: bool) -> None:
        layer = self.video.layer()
        try:
            view = view_of(layer, self.viewer, self.axes.axes())
            regs = None
            lazy = self.lazy.isChecked() and not preview  # a preview is one frame, computed now
            if lazy and self.method.currentText() not in LAZY_METHODS:
                raise ValueError(f"lazy: supports the methods {', '.join(LAZY_METHODS)}; uncheck it for "
                                 f"{self.method.currentText()!r}")
            if lazy and view.axes not in LAZY_AXES:
                raise ValueError(f"lazy: supports the layouts {', '.join(LAZY_AXES)}; uncheck it for "
                                 f"{view.axes}")
            if lazy and self.noise.currentText() != "gaussian":
                raise ValueError("lazy: supports gaussian noise only; uncheck it for poisson-gaussian")
            if not lazy and self.regions.currentText() != WHOLE_VIDEO:
                regs = regions_of(self.regions.layer(), layer, view)
                if not regs:
                    raise ValueError("regions: the regions layer is empty; draw a rectangle or choose "
                                     f"{WHOLE_VIDEO}")
            flows = None
            if self.flow.currentText() == "computed":
                flows = flows_of(layer, view)
                if flows is None:
                    raise ValueError(f"flow: no flow computed for {layer.name!r}; run the Flow widget first "
                                     "or choose 'none'")
                if not view.whole and not preview:
                    raise ValueError(f"flow: {view.axes} is denoised z-slice by z-slice and the flow is of "
                                     "one z-slice; choose 'none' (or Preview: it restores the slice shown)")
            clean = None if lazy else self.clean.layer()
            if clean is not None and tuple(clean.data.shape) != tuple(layer.data.shape):
                raise ValueError(f"clean reference: {clean.name!r} has shape {tuple(clean.data.shape)}, "
                                 f"the video {tuple(layer.data.shape)}")
            method = self.method.currentText()
            params = self._params(method)
            nk = self._noise_kw()
        except ValueError as e:
            self.status.error(str(e))
            return
        device = self.device.currentText()
        if preview:
            self._run_preview(layer, view, method, nk, regs, flows, device, params)
            return
        if lazy:
            self._run_lazy(layer, method, nk["sigma"], flows, device, params)
            return
        data = layer.data
        clean_data = None if clean is None else clean.data
        limits = tuple(float(v) for v in layer.contrast_limits)

        def fn(progress, should_stop):
            out = denoise_video(data, method, nk["sigma"], axes=view.axes, noise=nk["noise"], gain=nk["gain"],
                                regions=regs, flows=flows, device=device, progress=progress,
                                should_stop=should_stop, **params)
            q = None
            if clean_data is not None:  # on the video the widgets show (a TZYX stack: the z-slice shown)
                c = view.video(np.asarray(clean_data))
                q = (quality(view.video(np.asarray(data)), c, regs, limits),
                     quality(view.video(out), c, regs, limits))
            return out, q

        def done(res):
            out, q = res
            where = "whole video" if regs is None else f"{len(regs)} region(s)"
            self.last_output = (layer.name, f"{layer.name} denoised ({method})")
            set_layer(self.viewer, self.last_output[1], out, "image",
                      once=dict(rgb=layer.rgb), **self._output_style(layer),
                      metadata={"stnls_denoised_from": layer.name, "stnls_method": method,
                                "stnls_sigma": nk["sigma"], "stnls_noise": nk["noise"],
                                "stnls_gain": nk["gain"], AXES_KEY: view.axes},
                      **transforms_of(layer))
            if q is not None:
                on = "" if view.whole else f" (z-slice {view.z})"
                self.metrics.setText(describe_quality(q[0], q[1], f"{where}{on} vs {clean.name!r}: "))
            else:
                self.metrics.setText("")
            self.status.info(f"denoised {where} of {view.axes} with {method} ({self._noise_text(nk)})")

        self.runner.start(fn, done, f"denoising ({method})")

    @staticmethod
    def _noise_text(nk: dict) -> str:
        if nk["noise"] == "gaussian":
            return f"sigma {nk['sigma']:.4g}"
        return f"poisson-gaussian, gain {nk['gain']:.4g}, sigma {nk['sigma']:.4g}"

    def _run_preview(self, layer, view, method, nk, regs, flows, device, params) -> None:
        """The frame shown (of the z-slice shown) only, within the regions if any."""
        T, H, W = view.video_shape[:3]
        t = int(min(max(round(float(view.from_layer(self._position(layer))[0, 0])), 0), T - 1))
        full = [(0, T, 0, H, 0, W)] if regs is None else [tuple(r) for r in regs]
        part = []  # the job's pixels on frame t
        for t0, t1, y0, y1, x0, x1 in full:
            if t0 <= t < t1:
                part.append((t, t + 1, y0, y1, x0, x1))
        if not part:
            self.status.error(f"preview: no region on frame {t}; go to a frame a region covers")
            return
        pixels = lambda rs: sum((r[1] - r[0]) * (r[3] - r[2]) * (r[5] - r[4]) for r in rs)  # noqa: E731
        scale = pixels(full) / pixels(part) * view.layout.size(view.batch)
        data = view.video(layer.data)
        axes = "TYXC" if data.ndim == 4 else "TYX"

        def fn(progress, should_stop):
            start = time.perf_counter()
            out = denoise_video(data, method, nk["sigma"], axes=axes, noise=nk["noise"], gain=nk["gain"],
                                regions=part, flows=flows, device=device, progress=progress,
                                should_stop=should_stop, **params)
            return out, time.perf_counter() - start

        def done(res):
            out, seconds = res
            name = f"{layer.name} preview ({method})"
            img, offset = view.embed(out)
            set_layer(self.viewer, name, img, "image", once=dict(rgb=layer.rgb), **self._output_style(layer),
                      metadata={"stnls_denoised_from": layer.name, "stnls_method": method,
                                "stnls_sigma": nk["sigma"], "stnls_preview_frame": t},
                      **transforms_of(layer, offset))
            self.last_output = (layer.name, name)
            whole = "the whole video" if regs is None else f"the {len(regs)} region(s)"
            if not view.whole:
                whole += f" of all {view.layout.size(view.batch)} z-slices"
            self.status.info(f"preview of frame {t} in {seconds:.1f} s; {whole} would take about "
                             f"{_duration(seconds * scale)}")

        self.runner.start(fn, done, f"preview ({method}, frame {t})")

    def _position(self, layer) -> np.ndarray:
        return np.asarray(layer.world_to_data(self.viewer.dims.point), np.float64)[-layer.ndim:]

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

    def _run_lazy(self, layer, method, sigma, flows, device, params) -> None:  # sigma: the data's units
        """Add the lazily denoised layer. Building it reads no pixel (only the flows' bound), so
        it is quick; then each frame is denoised in a background thread when it is shown (the
        frame shown first, then the next ``prefetch`` ones), and the layer redrawn when it is
        ready: the viewer never waits for a frame."""
        data = layer.data
        name = f"{layer.name} denoised ({method}, lazy)"
        events = _FrameEvents()
        prefetch = self.prefetch

        def fn(progress, should_stop):
            modules = len(sys.modules)
            failed = lambda t, e: events.failed.emit(t, f"{type(e).__name__}: {e}")  # noqa: E731
            frames = denoise_background(data, method, sigma, flows=flows, device=device, prefetch=prefetch,
                                        on_ready=events.ready.emit, on_error=failed, paused=True, **params)
            if len(sys.modules) > modules + 50:
                # a build that imported many modules (tens of thousands of long-lived objects)
                # would set off a full garbage collection of the whole heap (0.1-0.4 s holding
                # the GIL: the viewer stops) just as the viewer adds and first draws the layer
                settle_heap()
            return frames

        def done(frames):
            frames.events = events  # kept alive as long as the frames that emit through it
            self._lazy_frames.append(frames)
            new = name not in self.viewer.layers
            old = None if new else self.viewer.layers[name].data
            meta = {"stnls_denoised_from": layer.name, "stnls_method": method, "stnls_sigma": sigma,
                    "stnls_lazy": True}
            # a new layer is added hidden and unselected, then shown and selected a moment later:
            # napari adding it, then painting its row, then swapping the layer controls shown,
            # then drawing it on the canvas for the first time (a texture and shaders, in
            # software OpenGL here) are each ~0.1 s; together they froze the viewer for over 0.2 s
            out = set_layer(self.viewer, name, frames, "image", once=dict(rgb=layer.rgb, visible=not new),
                            keep_selection=True, **self._output_style(layer), metadata=meta,
                            **transforms_of(layer))
            if new:
                ref = weakref.ref(out)
                in_turns([partial(_show, ref), partial(select_layer, self.viewer, ref)], self)
            if isinstance(old, BackgroundFrames) and old is not frames:
                old.close()
            me = weakref.ref(self)
            events.ready.connect(partial(_frame_ready, weakref.ref(out), me, frames))
            events.failed.connect(partial(_frame_failed, me, name))
            frames.resume()  # the layer is in place: its current frame first
            self.last_output = (layer.name, name)
            self.metrics.setText("")
            self.status.info(f"lazy {method} layer added (sigma {sigma:.4g}): frames are denoised "
                             "in the background when shown, black until ready")

        self.runner.start(fn, done, f"building the lazy {method} layer")
