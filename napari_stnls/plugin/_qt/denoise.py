"""Denoise dock widget: restore a video, whole or in its regions, into a new layer; PSNR/SSIM.

Lazy mode: a new layer backed by a dask array whose frames are denoised as napari displays
them (:func:`napari_stnls.plugin.model.denoise.denoise_lazy`), for videos too large to restore at once."""

from __future__ import annotations

from napari.layers import Image, Shapes
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
    denoise_lazy,
    denoise_methods,
    denoise_video,
    estimate_noise_sigma,
    method_defaults,
    quality,
)
from ._common import (
    NONE,
    WHOLE_VIDEO,
    LayerCombo,
    Runner,
    Status,
    flows_of,
    is_regions_layer,
    is_video,
    regions_of,
    set_layer,
)
from ._common import video_shape as _video_shape

TUNABLE = ("ps", "ws", "k")


class DenoiseWidget(QWidget):
    """Method, sigma (with Estimate), regions or whole video -> a new Image layer; the input is
    never modified. With a clean layer chosen, PSNR and SSIM before and after."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.video = LayerCombo(self.viewer, predicate=is_video)
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
        self.clean = LayerCombo(self.viewer, kinds=(Image,), extra=(NONE,), predicate=is_video)
        self.clean.setCurrentText(NONE)
        self.lazy = QCheckBox("lazy (compute frames on view)")
        self.lazy.setToolTip("add a layer at once whose frames are denoised when napari shows them "
                             f"(whole video; {', '.join(LAZY_METHODS)}); for large videos")
        self.lazy.toggled.connect(self._lazy_changed)
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        self.status = Status()
        self.runner = Runner(self.status, "Denoise")
        self.runner.run_button.clicked.connect(self.run)
        self.method.currentTextChanged.connect(self._method_changed)
        self.video.currentTextChanged.connect(self._video_changed)

        form = QFormLayout()
        form.addRow("video", self.video)
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
        layer = self.video.layer()
        try:
            shape = _video_shape(layer)
            regs = None
            lazy = self.lazy.isChecked()
            if lazy and self.method.currentText() not in LAZY_METHODS:
                raise ValueError(f"lazy: supports the methods {', '.join(LAZY_METHODS)}; uncheck it for "
                                 f"{self.method.currentText()!r}")
            if not lazy and self.regions.currentText() != WHOLE_VIDEO:
                regs = regions_of(self.regions.layer(), shape)
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
            set_layer(self.viewer, f"{layer.name} denoised ({method})", out, "image", rgb=layer.rgb,
                      contrast_limits=(0.0, 1.0), metadata={"stnls_denoised_from": layer.name,
                                                             "stnls_method": method, "stnls_sigma": sigma})
            if q is not None:
                self.metrics.setText(
                    f"{where} vs {clean.name!r}: PSNR {q[0]['psnr']:.2f} -> {q[1]['psnr']:.2f} dB, "
                    f"SSIM {q[0]['ssim']:.3f} -> {q[1]['ssim']:.3f}")
            else:
                self.metrics.setText("")
            self.status.info(f"denoised {where} with {method} (sigma {sigma * 255:.1f})")

        self.runner.start(fn, done, f"denoising ({method})")

    def _run_lazy(self, layer, method, sigma, flows, device, params) -> None:
        """Add the lazily denoised layer: building the graph reads no pixel (only the flows'
        bound), so it is quick; napari computes a frame when it displays it."""
        data = layer.data

        def fn(progress, should_stop):
            return denoise_lazy(data, method, sigma, flows=flows, device=device, **params)

        def done(lazy):
            set_layer(self.viewer, f"{layer.name} denoised ({method}, lazy)", lazy, "image", rgb=layer.rgb,
                      contrast_limits=(0.0, 1.0), metadata={"stnls_denoised_from": layer.name,
                                                             "stnls_method": method, "stnls_sigma": sigma,
                                                             "stnls_lazy": True})
            self.metrics.setText("")
            self.status.info(f"lazy {method} layer added (sigma {sigma * 255:.1f}): each frame is denoised "
                             "when shown")

        self.runner.start(fn, done, f"building the lazy {method} layer")
