"""Pieces shared by the dock widgets: layer pickers, messages, a cancellable worker runner."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Layer, Points, Shapes, Vectors
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QColor
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
    """A combo box of the viewer's layers of some types, kept in sync with the layer list.

    ``problem(layer)`` (optional) returns why a listed layer cannot be used, or None: such
    layers are still listed (greyed), and :attr:`note` (a QLabel to place under the combo)
    shows the reason of the current one.
    """

    def __init__(self, viewer, kinds=(Image,), extra: tuple[str, ...] = (), predicate=None, parent=None,
                 problem=None):
        super().__init__(parent)
        self.viewer, self.kinds, self.extra, self.predicate = viewer, kinds, extra, predicate
        self.problem = problem
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #d0a040;")
        self.note.setVisible(False)
        self.currentTextChanged.connect(self._show_note)
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

    def usable(self) -> list[str]:
        """The listed layers that can be used (all of them without ``problem``)."""
        return [n for n in self.names()
                if self.problem is None or self.problem(self.viewer.layers[n]) is None]

    def refresh(self, event=None) -> None:
        try:
            current = self.currentText()
        except RuntimeError:  # the dock widget was closed and deleted
            self._disconnect()
            return
        items = list(self.extra) + self.names()
        if items == [self.itemText(i) for i in range(self.count())]:
            self._show_note()
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        for i, name in enumerate(items):
            why = None
            if name not in self.extra and self.problem is not None:
                why = self.problem(self.viewer.layers[name])
            if why is not None:
                self.setItemData(i, QColor("#888888"), Qt.ItemDataRole.ForegroundRole)
                self.setItemData(i, why, Qt.ItemDataRole.ToolTipRole)
        names, usable = self.names(), self.usable()
        active = self.viewer.layers.selection.active
        if current in items:
            self.setCurrentText(current)
        elif names:  # the selected layer if it fits, else the topmost usable one (over "(none)" too)
            pick = usable or names
            self.setCurrentText(active.name if active is not None and active.name in pick else pick[-1])
        self.blockSignals(False)
        self.currentTextChanged.emit(self.currentText())

    def _show_note(self, *_):
        layer = self.layer()
        why = None if layer is None or self.problem is None else self.problem(layer)
        self.note.setText("" if why is None else f"{layer.name!r} cannot be used yet: {why}")
        self.note.setVisible(why is not None)

    def layer(self) -> Layer | None:
        name = self.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def video_combo(viewer, extra: tuple[str, ...] = ()) -> LayerCombo:
    """A combo box of every Image layer; those that are not videos yet are greyed, with the reason."""
    return LayerCombo(viewer, kinds=(Image,), extra=extra, problem=video_problem)


def is_regions_layer(layer) -> bool:
    """A Shapes layer the user draws regions on (not one a widget draws for display)."""
    return isinstance(layer, Shapes) and not layer.metadata.get(DISPLAY_ONLY)


def video_problem(layer) -> str | None:
    """Why an image layer cannot be used as a (T, Y, X[, C]) video, in one line; None when it can."""
    if not isinstance(layer, Image):
        return "not an image layer"
    if getattr(layer, "multiscale", False):
        return "multiscale (pyramid) layers are not supported"
    shape = tuple(int(s) for s in layer.data.shape)
    dtype = np.dtype(layer.data.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        return f"{dtype} pixels are not supported (integers or floats)"
    if layer.ndim == 2:
        kind = f"an RGB image {shape}" if layer.rgb else f"a 2-D image {shape}"
        return f"{kind} has no time axis; a video is (T, Y, X) or RGB (T, Y, X, C)"
    if layer.ndim > 3:
        return (f"{layer.ndim}-D data {shape} (e.g. (T, Z, Y, X) or channels first): only (T, Y, X) and "
                "RGB (T, Y, X, C) layers for now")
    if min(shape[1:3]) < 2:
        return f"frames of {shape[1]} x {shape[2]} pixels are too small"
    return None


def is_video(layer) -> bool:
    """An Image layer holding (T, H, W) or (T, H, W, C) frames."""
    return isinstance(layer, Image) and video_problem(layer) is None


def video_shape(layer) -> tuple[int, ...]:
    """napari's (T, H, W[, C]) shape of a video layer (ValueError if it is not one)."""
    if layer is None:
        raise ValueError("video: no video layer; open a video (File > Open) or a sample "
                         "(File > Open Sample > napari-stnls)")
    why = video_problem(layer)
    if why is not None:
        raise ValueError(f"video: layer {layer.name!r} cannot be used: {why}")
    return tuple(int(s) for s in layer.data.shape)


def transforms_of(layer) -> dict:
    """The keyword arguments that give a new layer ``layer``'s placement in the world (scale,
    translate, rotate, shear, affine and units), so that its data coordinates are ``layer``'s."""
    if layer is None:
        return {}
    out = {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
           "rotate": np.asarray(layer.rotate), "shear": np.asarray(layer.shear),
           "affine": np.asarray(layer.affine.affine_matrix)}
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(units)
    return out


def to_layer(src, dst, points) -> np.ndarray:
    """Data coordinates of ``src`` (N, ndim) -> data coordinates of ``dst``, through the world."""
    pts = np.asarray(points, dtype=np.float64)
    if src is dst or pts.size == 0:
        return pts.copy()
    return np.array([dst.world_to_data(src.data_to_world(p)) for p in pts], dtype=np.float64)


def flows_of(layer):
    """The (fflow, bflow) cached in a video layer's metadata, or None."""
    f = layer.metadata.get(FLOWS_KEY) if layer is not None else None
    return None if not f else (f["fflow"], f["bflow"])


SHAPE_NOTES = {"ellipse": "an ellipse", "polygon": "a polygon", "path": "a path", "line": "a line"}


@dataclass
class ShapeRegion:
    """One shape of a regions layer as a region of the video.

    ``region`` is None when the shape cannot be used (``error`` says why); ``note`` says when
    a shape that is not a rectangle was taken as its bounding box; ``bounds`` are the shape's
    own bounds in the video's pixels (t0, t1, y0, y1, x0, x1), unclipped, for display.
    """

    region: Region | None
    bounds: tuple[int, ...]
    error: str | None = None
    note: str | None = None


def shape_regions(layer, video) -> list[ShapeRegion]:
    """Every shape of the Shapes ``layer`` as a region of the video layer ``video``.

    A shape's vertices are carried from the Shapes layer's data coordinates to the video's
    pixels through the world (so scale, translate and affine of both layers are honoured);
    the region is their bounding box on the shape's frame, over the frame range stored in
    the layer's features (t0, t1; default one frame), clipped to the frame. A shape outside
    the video gets an ``error``, the others are unaffected.
    """
    if layer is None:
        return []
    if not isinstance(layer, Shapes):
        raise ValueError(f"regions: layer {layer.name!r} is not a Shapes layer")
    if layer.ndim < 3:
        raise ValueError(f"regions: layer {layer.name!r} is 2D; draw the rectangles on the video's frames")
    shape = video_shape(video)
    feats = layer.features
    out = []
    for n, (v, kind) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        v = to_layer(layer, video, np.asarray(v)[:, -3:] if layer.ndim == 3 else np.asarray(v))[:, -3:]
        t = int(round(float(v[0, 0])))
        t0, t1 = t, t + 1
        if "t0" in feats and n < len(feats):
            a, b = feats["t0"].iloc[n], feats["t1"].iloc[n]
            if a >= 0 and b > a:
                t0, t1 = int(a), int(b)
        lo, hi = np.floor(v[:, 1:].min(0)).astype(int), np.ceil(v[:, 1:].max(0)).astype(int)
        bounds = (t0, t1, int(lo[0]), int(max(hi[0], lo[0] + 1)), int(lo[1]), int(max(hi[1], lo[1] + 1)))
        note = None if kind == "rectangle" else f"{SHAPE_NOTES.get(kind, kind)}: its bounding box is used"
        try:
            reg = region_from_rectangle(v, t1=t1, t0=t0, shape=shape)
            (reg,) = validate_regions([reg], shape)
        except ValueError as e:
            msg = str(e).replace("regions[0]", f"regions[{n}]").replace("rectangle:", f"regions[{n}]:")
            if not msg.startswith(f"regions[{n}]"):
                msg = f"regions[{n}]: {msg}"
            out.append(ShapeRegion(None, bounds, msg))
            continue
        out.append(ShapeRegion(reg, bounds, None, note))
    return out


def regions_of(layer, video) -> list[Region]:
    """The regions drawn on a Shapes layer (see :func:`shape_regions`), as the video's pixels;
    ValueError naming the first shape that cannot be used."""
    items = shape_regions(layer, video)
    for it in items:
        if it.error is not None:
            raise ValueError(it.error)
    return [it.region for it in items]


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


def alive(widget) -> bool:
    """Whether the Qt object behind ``widget`` still exists (a closed dock widget is deleted)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


class Runner(QObject):
    """Runs ``fn(progress=, should_stop=)`` in a napari worker thread, with a progress bar and a
    Cancel button; ``on_done(result)`` is called in the GUI thread only when it completes.

    The job stops at its next check (``should_stop()`` is True) when Cancel is pressed, when
    napari closes the window (which asks every worker to quit) or when the widget holding the
    progress bar is deleted; then nothing is applied and no deleted widget is touched.
    """

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
        self.bar.destroyed.connect(self._widget_gone)
        self.progressed.connect(self._progress)
        self.worker = None
        self._complete = False
        self._activity = None
        self._label = ""
        self._stop = threading.Event()
        self._gone = False

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

    def _widget_gone(self, *_):
        self._gone = True
        self._stop.set()

    def _alive(self) -> bool:
        return not self._gone and alive(self.bar) and alive(self.status)

    def _progress(self, done: int, total: int) -> None:
        if not self._alive():
            return
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
        worker = None

        def should_stop() -> bool:  # Cancel, the widget deleted, or napari closing the window
            return stop.is_set() or (worker is not None and worker.abort_requested)

        def job():
            try:
                return "ok", fn(progress=self.progressed.emit, should_stop=should_stop)
            except Cancelled:
                return "cancelled", None
            except Exception as e:  # reported in the widget, never half-applied
                return "error", e

        def returned(out):
            if not self._alive():  # the widget was closed while its job ran: nothing to show
                return
            kind, value = out
            if kind == "ok" and should_stop():
                kind = "cancelled"  # finished just as it was asked to stop: not applied either
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

        worker = self.worker = create_worker(job, _start_thread=False)
        worker.returned.connect(returned)
        worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)  # busy until the first tick
        self.status.info(f"{label}...")
        worker.start()

    def cancel(self) -> None:
        if self.running:
            self._stop.set()
            self.status.info("cancelling...")

    def _finished(self) -> None:
        self.worker = None
        if self._activity is not None:
            try:
                self._activity.close()
            except RuntimeError:  # napari's activity dock is gone with the window
                pass
            self._activity = None
        if not self._alive():
            return
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self._complete else 0)  # full when done, empty when cancelled or failed
        self._complete = False


KINDS = {"image": Image, "points": Points, "vectors": Vectors, "shapes": Shapes}
# set when a layer is made, never changed on an existing one
_CONSTRUCTOR_ONLY = ("rgb", "name")


def set_layer(viewer, name: str, data, kind: str, once: dict | None = None, inside: bool = False, **kwargs):
    """Update layer ``name`` (of that kind) in place, or add it; returns the layer.

    An existing layer keeps its place, its visibility and the user's changes to anything
    not given here; only its data and the properties in ``kwargs`` are set (``once`` only
    when the layer is made). Removing and adding a layer again would cost napari a garbage
    collection (about half a second) each time. ``inside``: the new data lies within the
    extent of the layers already shown (overlays of a video), so the viewer's sliders need no
    update (see :func:`update_layer`). Every layer the widgets draw is (t, y, x), and is
    labelled so (``AXIS_LABELS``).
    """
    once = dict(once or {})
    once.setdefault("axis_labels", AXIS_LABELS)
    cls = KINDS[kind]
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and type(layer) is cls and _updatable(layer, data, {**once, **kwargs}):
        update_layer(layer, data, inside=inside, **kwargs)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return getattr(viewer, f"add_{kind}")(data, name=name, **once, **kwargs)


def _updatable(layer, data, kwargs) -> bool:
    if isinstance(layer, Image):
        rgb = kwargs.get("rgb", layer.rgb)
        return bool(rgb) == bool(layer.rgb) and len(data.shape) == len(layer.data.shape)
    return np.ndim(data) == np.ndim(layer.data) or len(layer.data) == 0


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    try:
        a, b = np.asarray(a), np.asarray(b)
        numeric = a.dtype.kind in "fiub" and b.dtype.kind in "fiub"
        return a.shape == b.shape and numeric and np.array_equal(a, b)
    except (TypeError, ValueError):
        return False


def update_layer(layer, data, inside: bool = False, **kwargs) -> None:
    """Set ``layer``'s data, then each property in ``kwargs`` that differs from the layer's
    (features first, so that properties naming a feature find it).

    ``inside``: the new data lies within the extent of the other layers, so the viewer's
    dimensions (slider ranges) cannot change; the layer's ``data`` event, on which napari
    recomputes them (about a third of the time of a click's update), is not sent.
    """
    if inside:
        with layer.events.data.blocker():
            layer.data = data
    else:
        layer.data = data
    if "features" in kwargs:
        layer.features = kwargs["features"]
    for key, value in kwargs.items():
        if key in _CONSTRUCTOR_ONLY or key == "features":
            continue
        if key == "metadata":
            layer.metadata.update(value)
            continue
        if key in ("scale", "translate", "rotate", "shear", "affine", "units", "opacity", "blending",
                   "contrast_limits", "colormap", "size") and _same_prop(layer, key, value):
            continue
        setattr(layer, key, value)


def _same_prop(layer, key, value) -> bool:
    cur = getattr(layer, key)
    if key == "affine":
        cur = cur.affine_matrix
    elif key == "colormap":
        return isinstance(value, str) and cur.name == value
    elif key == "units":
        return tuple(str(u) for u in cur) == tuple(str(u) for u in value)
    return _same(cur, value)
