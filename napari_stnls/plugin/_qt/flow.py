"""Flow dock widget: optical flow of a video, shown as vectors and cached for Search and Denoise."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QSpinBox, QVBoxLayout, QWidget

from .._sample import FLOWS_KEY
from ..model.search import compute_video_flows, flow_methods, flow_vectors
from ._common import AxesBox, Runner, Status, set_layer, transforms_of, video_combo, view_of


class FlowWidget(QWidget):
    """Compute forward/backward flows (TV-L1, ILK, OpenCV DIS when installed) of a video layer."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.video = video_combo(self.viewer)
        self.axes = AxesBox(self.video)
        self.method = QComboBox()
        self.method.addItems(flow_methods())
        self.step = QSpinBox()
        self.step.setRange(2, 256)
        self.step.setValue(8)
        self.step.setToolTip("spacing of the displayed vectors, pixels")
        self.status = Status()
        self.runner = Runner(self.status, "Compute flow", viewer=self.viewer)
        self.runner.run_button.clicked.connect(self.run)

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("axes", self.axes)
        form.addRow("", self.axes.note)
        form.addRow("method", self.method)
        form.addRow("grid step", self.step)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.runner.row())
        lay.addWidget(self.runner.bar)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def run(self) -> None:
        layer = self.video.layer()
        try:
            view = view_of(layer, self.viewer, self.axes.axes())
            if view.video_shape[0] < 2:
                raise ValueError(f"video: optical flow needs at least 2 frames; {view.axes} gives "
                                 f"{view.describe()}")
        except ValueError as e:
            self.status.error(str(e))
            return
        method, step, data = self.method.currentText(), self.step.value(), view.video(layer.data)

        def fn(progress, should_stop):
            return compute_video_flows(data, method, progress=progress, should_stop=should_stop)

        def done(flows):
            fflow, bflow = flows
            layer.metadata[FLOWS_KEY] = {"fflow": fflow, "bflow": bflow, "method": method, "axes": view.axes,
                                         "z": view.z}
            v = flow_vectors(fflow, step=step, scale=3.0)
            v = np.stack([view.to_layer(v[:, 0]), view.to_layer(v[:, 1], displacement=True)], 1)
            set_layer(self.viewer, f"{layer.name} flow", v, "vectors",
                      edge_color="cyan", edge_width=0.5, vector_style="arrow", **transforms_of(layer))
            self.viewer.layers.selection.active = layer
            self.status.info(f"flow ({method}) cached for Search and Denoise; vectors shown x3")

        self.runner.start(fn, done, f"computing {method} flow")
