"""Pieces shared by the dock widgets: layer pickers, messages, a cancellable worker runner."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from napari.layers import Image, Layer, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from ..._util import Cancelled
from .._reader import AXIS_LABELS
from .._sample import FLOWS_KEY
from ..model.regions import Region, region_from_rectangle, validate_regions

DISPLAY_ONLY = "stnls_display_only"  # layer metadata: drawn by a widget for display, not input
RESULTS_KEY = "stnls_search"  # video layer metadata: list of RegionResult, one per region searched
WHOLE_VIDEO = "(whole video)"
NONE = "(none)"


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some types, kept in sync with the layer list."""

    def __init__(self, viewer, kinds=(Image,), extra: tuple[str, ...] = (), predicate=None, parent=None):
        super().__init__(parent)
        self.viewer, self.kinds, self.extra, self.predicate = viewer, kinds, extra, predicate
        self.refresh()
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed,
                   viewer.layers.events.moved):
            ev.connect(self.refresh)
        viewer.layers.events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

    def _watch_name(self, event=None):
        if event is not None:
            event.value.events.name.connect(self.refresh)

    def _disconnect(self) -> None:
        """Stop following the viewer (the Qt widget is gone)."""
        layers = self.viewer.layers
        for ev in (layers.events.inserted, layers.events.removed, layers.events.moved):
            ev.disconnect(self.refresh)
        layers.events.inserted.disconnect(self._watch_name)
        for layer in layers:
            layer.events.name.disconnect(self.refresh)

    def names(self) -> list[str]:
        return [layer.name for layer in self.viewer.layers if isinstance(layer, self.kinds)
                and (self.predicate is None or self.predicate(layer))]

    def refresh(self, event=None) -> None:
        try:
            current = self.currentText()
        except RuntimeError:  # the dock widget was closed and deleted
            self._disconnect()
            return
        items = list(self.extra) + self.names()
        if items == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        names = self.names()
        active = self.viewer.layers.selection.active
        if current in items:
            self.setCurrentText(current)
        elif names:  # the selected layer if it fits, else the topmost one (over "(none)" too)
            self.setCurrentText(active.name if active is not None and active.name in names else names[-1])
        self.blockSignals(False)
        self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Layer | None:
        name = self.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def is_regions_layer(layer) -> bool:
    """A Shapes layer the user draws regions on (not one a widget draws for display)."""
    return isinstance(layer, Shapes) and not layer.metadata.get(DISPLAY_ONLY)


def is_video(layer) -> bool:
    """An Image layer holding (T, H, W) or (T, H, W, C) frames."""
    return isinstance(layer, Image) and (layer.ndim == 3) and not getattr(layer, "multiscale", False)


def video_shape(layer) -> tuple[int, ...]:
    """napari's (T, H, W[, C]) shape of a video layer (ValueError if it is not one)."""
    if layer is None:
        raise ValueError("video: no video layer; open a video (File > Open) or a sample "
                         "(File > Open Sample > napari-stnls)")
    if not is_video(layer):
        raise ValueError(f"video: layer {layer.name!r} is not a video (T, H, W[, C]): "
                         f"shape {layer.data.shape}")
    return tuple(int(s) for s in layer.data.shape)


def flows_of(layer):
    """The (fflow, bflow) cached in a video layer's metadata, or None."""
    f = layer.metadata.get(FLOWS_KEY) if layer is not None else None
    return None if not f else (f["fflow"], f["bflow"])


def regions_of(layer, shape) -> list[Region]:
    """The regions drawn on a Shapes layer: each shape's bounding box on its frame, over the
    frame range stored in the layer's features (t0, t1), default one frame."""
    if layer is None:
        return []
    if not isinstance(layer, Shapes):
        raise ValueError(f"regions: layer {layer.name!r} is not a Shapes layer")
    feats = layer.features
    out = []
    for n, v in enumerate(layer.data):
        v = np.asarray(v)
        if v.shape[1] < 3:
            raise ValueError(f"regions: layer {layer.name!r} is 2D; draw the rectangles on the "
                             "video's frames")
        t0 = t1 = None
        if "t0" in feats and n < len(feats):
            a, b = feats["t0"].iloc[n], feats["t1"].iloc[n]
            if a >= 0 and b > a:
                t0, t1 = int(a), int(b)
        out.append(region_from_rectangle(v, t1=t1, t0=t0, shape=shape))
    return validate_regions(out, shape)


class Status(QLabel):
    """One line of feedback: errors in red (also sent to napari's notifications), info in grey."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.kind = "info"

    def error(self, msg: str) -> None:
        self.kind = "error"
        self.setStyleSheet("color: #e05050;")
        self.setText(msg)
        show_error(msg)

    def info(self, msg: str, notify: bool = False) -> None:
        self.kind = "info"
        self.setStyleSheet("")
        self.setText(msg)
        if notify:
            show_info(msg)


class Runner(QObject):
    """Runs ``fn(progress=, should_stop=)`` in a napari worker thread, with a progress bar and a
    Cancel button; ``on_done(result)`` is called in the GUI thread only when it completes."""

    progressed = Signal(int, int)

    def __init__(self, status: Status, run_text: str = "Run", parent=None):
        super().__init__(parent)
        self.status = status
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.progressed.connect(self._progress)
        self.worker = None
        self._complete = False
        self._activity = None
        self._label = ""
        self._stop = threading.Event()

    def row(self) -> QWidget:
        w = QWidget()
        lay = QHBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.run_button)
        lay.addWidget(self.cancel_button)
        return w

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(1, total))
        self.bar.setValue(done)
        if self._activity is None:  # the same progress in napari's activity dock
            from napari.utils import progress

            self._activity = progress(total=max(1, total), desc=self._label)
        self._activity.update(done - self._activity.n)

    def start(self, fn: Callable, on_done: Callable, label: str = "working") -> None:
        if self.running:
            self.status.error("busy: wait for the running job or cancel it")
            return
        self._stop = threading.Event()
        self._label = label
        stop = self._stop

        def job():
            try:
                return "ok", fn(progress=self.progressed.emit, should_stop=stop.is_set)
            except Cancelled:
                return "cancelled", None
            except Exception as e:  # reported in the widget, never half-applied
                return "error", e

        def returned(out):
            try:
                self.status.text()
            except RuntimeError:  # the widget was closed while its job ran: nothing to show
                return
            kind, value = out
            if kind == "ok":
                self._complete = True
                try:
                    on_done(value)
                except Exception as e:
                    self.status.error(f"{type(e).__name__}: {e}")
            elif kind == "cancelled":
                self.status.info("cancelled: nothing was added")
            else:
                self.status.error(f"{label} failed: {value}")

        self.worker = create_worker(job, _start_thread=False)
        self.worker.returned.connect(returned)
        self.worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)  # busy until the first tick
        self.status.info(f"{label}...")
        self.worker.start()

    def cancel(self) -> None:
        if self.running:
            self._stop.set()
            self.status.info("cancelling...")

    def _finished(self) -> None:
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self._complete else 0)  # full when done, empty when cancelled or failed
        self._complete = False


def set_layer(viewer, name: str, data, kind: str, **kwargs):
    """Replace the data of layer ``name`` (of that kind), or add it; returns the layer.

    Every layer the widgets draw is (t, y, x), and is labelled so (``AXIS_LABELS``).
    """
    kwargs.setdefault("axis_labels", AXIS_LABELS)
    if name in viewer.layers and viewer.layers[name]._type_string == kind:
        viewer.layers.remove(name)
    return getattr(viewer, f"add_{kind}")(data, name=name, **kwargs)
