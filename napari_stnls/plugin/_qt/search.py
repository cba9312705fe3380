"""Search dock widget: K nearest space-time patches of every query of the chosen regions.

A layer of any layout is searched as the video its axes make of it (a z-stack slice to slice,
a TZYX stack in the z-slice shown; see :mod:`napari_stnls.plugin.model.layout`), with its
values mapped to [0, 1] by the layer's contrast limits, whatever its pixel type."""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np
from napari.layers import Shapes
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..model.search import SearchParams, distance_map, merge_results, search_regions
from ._common import (
    RESULTS_KEY,
    VIEW_KEY,
    WHOLE_VIDEO,
    AxesBox,
    LayerCombo,
    Runner,
    Status,
    flows_of,
    in_turns,
    is_regions_layer,
    regions_of,
    select_layer,
    set_layer,
    transforms_of,
    video_combo,
    view_of,
)

FLOW_CHOICES = ("none", "computed")


def _show(layer) -> None:
    layer.visible = True


def _spin(lo: int, hi: int, value: int, step: int = 1, tip: str = "") -> QSpinBox:
    sb = QSpinBox()
    sb.setRange(lo, hi)
    sb.setSingleStep(step)
    sb.setValue(value)
    sb.setToolTip(tip)
    return sb


class SearchWidget(QWidget):
    """Run search on a video's regions in a worker thread; results are kept per region in the video
    layer's metadata (a region searched again is replaced, the others are kept) and shown as a map
    of the distance to the k-th neighbour."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.video = video_combo(self.viewer)
        self.axes = AxesBox(self.video)
        self.regions = LayerCombo(self.viewer, kinds=(Shapes,), extra=(WHOLE_VIDEO,),
                                  predicate=is_regions_layer)
        self.flow = QComboBox()
        self.flow.addItems(FLOW_CHOICES)
        self.flow.setToolTip("'computed': the flow of the Flow widget (or the sample's true flow)")
        self.ps = _spin(1, 31, 7, 2, "patch side (odd)")
        self.ws = _spin(1, 99, 11, 2, "search window side (odd)")
        self.wt = _spin(0, 20, 2, 1, "frames before and after")
        self.k = _spin(1, 1000, 8, 1, "neighbours per query")
        self.stride0 = _spin(1, 64, 2, 1, "query spacing, pixels")
        self.stride1 = QDoubleSpinBox()
        self.stride1.setRange(0.05, 16)
        self.stride1.setSingleStep(0.25)
        self.stride1.setValue(1.0)
        self.stride1.setToolTip("window spacing, pixels (fractional: sub-pixel search)")
        self.dist = QComboBox()
        self.dist.addItems(("l2", "prod"))
        self.exclude_self = QCheckBox("exclude the query's own patch")
        self.device = QComboBox()
        self.device.addItems(("auto", "cpu", "cuda"))
        self.status = Status()
        self.runner = Runner(self.status, "Search", viewer=self.viewer)
        self.runner.run_button.clicked.connect(self.run)

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("axes", self.axes)
        form.addRow("", self.axes.note)
        form.addRow("regions", self.regions)
        form.addRow("flow", self.flow)
        for name in ("ps", "ws", "wt", "k", "stride0", "stride1", "dist"):
            form.addRow(name, getattr(self, name))
        form.addRow("", self.exclude_self)
        form.addRow("device", self.device)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.runner.row())
        lay.addWidget(self.runner.bar)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def params(self) -> SearchParams:
        return SearchParams(ps=self.ps.value(), ws=self.ws.value(), wt=self.wt.value(), k=self.k.value(),
                            stride0=self.stride0.value(), stride1=float(self.stride1.value()),
                            dist=self.dist.currentText(), exclude_self=self.exclude_self.isChecked(),
                            device=self.device.currentText())

    def run(self) -> None:
        layer = self.video.layer()
        try:
            view = view_of(layer, self.viewer, self.axes.axes())
            shape = view.video_shape
            regs = None
            if self.regions.currentText() != WHOLE_VIDEO:
                regs = regions_of(self.regions.layer(), layer, view)
                if not regs:
                    raise ValueError("regions: the regions layer is empty; draw a rectangle "
                                     f"or choose {WHOLE_VIDEO}")
            params = self.params()
            params.check(shape)
            flows = None
            if self.flow.currentText() == "computed":
                flows = flows_of(layer, view)
                if flows is None:
                    raise ValueError(f"flow: no flow computed for {layer.name!r}; run the Flow widget "
                                     "first or choose 'none'")
        except (ValueError, TypeError) as e:
            self.status.error(str(e))
            return
        data = view.video(layer.data)
        limits = tuple(float(v) for v in layer.contrast_limits)
        flow_name = (layer.metadata.get("stnls_flows") or {}).get("method", "flow")

        def fn(progress, should_stop):
            return search_regions(data, regs, params, flows=flows, flow_name=flow_name, data_range=limits,
                                  progress=progress, should_stop=should_stop)

        def done(new):
            # a region searched again replaces its results; the other regions' are kept (those of
            # the same view: another z-slice's or layout's results are dropped)
            old = layer.metadata.get(VIEW_KEY)
            same = old is not None and (old.axes, old.z) == (view.axes, view.z)
            results = merge_results(layer.metadata.get(RESULTS_KEY) if same else None, new)
            dmap, offset = view.embed(distance_map(results, shape, "kth"))
            layer.metadata[RESULTS_KEY] = results
            layer.metadata[VIEW_KEY] = view
            vals = np.concatenate([r.dists[..., -1].ravel() for r in results])
            lo, hi = (float(v) for v in np.percentile(vals, [2, 98]))
            name = f"{layer.name} search"
            added = name not in self.viewer.layers
            out = set_layer(self.viewer, name, dmap, "image", once=dict(visible=not added),
                            keep_selection=True, colormap="magma", opacity=0.7, blending="additive",
                            contrast_limits=(lo, hi if hi > lo else lo + 1e-6),
                            metadata={RESULTS_KEY: results, "stnls_video": layer.name},
                            **transforms_of(layer, offset))
            # a new map is added hidden and unselected, then the video selected (unless it is) and
            # the map shown, each in its own turn of the event loop: adding a layer (its controls
            # and row in the layer list), changing the selected layer and the first draw of a
            # layer are each ~0.1 s here (software OpenGL), and together they froze the viewer
            # for up to half a second
            selected = self.viewer.layers.selection.active is layer
            steps = [] if selected else [partial(select_layer, self.viewer, weakref.ref(layer))]
            if added:
                steps.append(partial(_show, out))
            in_turns(steps, self)
            nq = sum(r.dists.shape[0] * r.dists.shape[1] * r.dists.shape[2] for r in new)
            kept = len(results) - len(new)
            self.status.info(f"{nq} queries in {len(new)} region(s) of {view.axes} ({view.describe()}), "
                             f"flow: {new[0].flow}; map: distance to the k-th neighbour"
                             + (f"; kept the results of {kept} other region(s)" if kept else ""))

        self.runner.start(fn, done, "searching")
