"""Pieces shared by the dock widgets: layer pickers, messages, a cancellable worker runner."""

from __future__ import annotations

import gc
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from napari.layers import Image, Layer, Points, Shapes, Vectors
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from napari.utils.transforms import Affine
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from ..._util import Cancelled
from .._reader import AXIS_LABELS
from .._sample import FLOWS_KEY
from ..model.layout import AXES_CHOICES, VideoView, check_axes, default_axes
from ..model.regions import Region, region_from_rectangle, validate_regions

DISPLAY_ONLY = "stnls_display_only"  # layer metadata: drawn by a widget for display, not input
RESULTS_KEY = "stnls_search"  # video layer metadata: list of RegionResult, one per region searched
VIEW_KEY = "stnls_search_view"  # video layer metadata: the VideoView the results are of
AXES_KEY = "stnls_axes"  # image layer metadata: its axes string, as set in a widget's axes selector
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
        self._chosen = None  # weak reference to the layer last announced as chosen
        self.currentTextChanged.connect(self._show_note)
        self.currentTextChanged.connect(self._remember)
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
        before = self._chosen() if self._chosen is not None else None  # the layer chosen until now
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
        if (self.currentText(), self.layer()) != (current, before):  # only a real change is announced
            self.currentTextChanged.emit(self.currentText())

    def _remember(self, *_):
        layer = self.layer()
        self._chosen = None if layer is None else weakref.ref(layer)

    def _show_note(self, *_):
        layer = self.layer()
        why = None if layer is None or self.problem is None else self.problem(layer)
        self.note.setText("" if why is None else f"{layer.name!r} cannot be used yet: {why}")
        self.note.setVisible(why is not None)

    def layer(self) -> Layer | None:
        name = self.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def video_combo(viewer, extra: tuple[str, ...] = ()) -> LayerCombo:
    """A combo box of every Image layer; those that cannot be used as a video are greyed, with the reason."""
    return LayerCombo(viewer, kinds=(Image,), extra=extra, problem=video_problem)


def is_regions_layer(layer) -> bool:
    """A Shapes layer the user draws regions on (not one a widget draws for display)."""
    return isinstance(layer, Shapes) and not layer.metadata.get(DISPLAY_ONLY)


def layer_axes(layer) -> str:
    """The axes string of an image layer: the one set in an axes selector (kept in its metadata),
    else guessed from its axis labels, number of dimensions and ``rgb`` flag
    (:func:`~napari_stnls.plugin.model.layout.default_axes`); ValueError naming ``axes``."""
    shape = tuple(int(s) for s in layer.data.shape)
    chosen = layer.metadata.get(AXES_KEY)
    if chosen:
        try:
            return check_axes(chosen, shape, bool(layer.rgb))
        except ValueError:
            pass  # the data changed shape: guess again
    return default_axes(shape, bool(layer.rgb), tuple(getattr(layer, "axis_labels", ()) or ()) or None)


def video_problem(layer, axes: str | None = None) -> str | None:
    """Why an image layer cannot be used as a video (with ``axes``, default :func:`layer_axes`), in
    one line; None when it can."""
    if not isinstance(layer, Image):
        return "not an image layer"
    if getattr(layer, "multiscale", False):
        return "multiscale (pyramid) layers are not supported"
    shape = tuple(int(s) for s in layer.data.shape)
    dtype = np.dtype(layer.data.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        return f"{dtype} pixels are not supported (integers or floats)"
    try:
        view = VideoView(shape, layer_axes(layer) if axes is None else axes, bool(layer.rgb))
    except ValueError as e:
        return str(e)
    H, W = view.video_shape[1:3]
    if min(H, W) < 2:
        return f"frames of {H} x {W} pixels are too small"
    return None


def is_video(layer) -> bool:
    """An Image layer that can be seen as a video (see :func:`video_problem`)."""
    return isinstance(layer, Image) and video_problem(layer) is None


def current_position(layer, viewer) -> np.ndarray | None:
    """The viewer's current point in ``layer``'s data coordinates (None without a viewer)."""
    if viewer is None or layer is None:
        return None
    return np.asarray(layer.world_to_data(viewer.dims.point), np.float64)[-layer.ndim:]


def view_of(layer, viewer=None, axes: str | None = None) -> VideoView:
    """The video a widget works on for ``layer`` (see :class:`~napari_stnls.plugin.model.layout.VideoView`):
    its layout is ``axes`` (default :func:`layer_axes`); with a viewer, a TZYX layer's view is
    the time series of the z-slice shown, and overlays go on the channel shown. ValueError
    naming the problem."""
    if layer is None:
        raise ValueError("video: no video layer; open a video (File > Open) or a sample "
                         "(File > Open Sample > napari-stnls)")
    why = video_problem(layer, axes)
    if why is not None:
        raise ValueError(f"video: layer {layer.name!r} cannot be used: {why}")
    view = VideoView(tuple(layer.data.shape), layer_axes(layer) if axes is None else axes, bool(layer.rgb))
    pos = current_position(layer, viewer)
    if pos is None:
        return view
    la = view.layer_axes
    z = view.z
    if view.batch is not None:
        z = int(np.clip(round(float(pos[la.index("Z")])), 0, view.layout.size("Z") - 1))
    c = int(round(float(pos[la.index("C")]))) if "C" in la else 0
    return VideoView(view.shape, view.axes, view.rgb, z=z, c=c)


def video_shape(layer, axes: str | None = None) -> tuple[int, ...]:
    """The (T, H, W[, C]) shape of a layer's video (see :func:`view_of`; ValueError if it has none)."""
    return view_of(layer, None, axes).video_shape


def transforms_of(layer, offset=None) -> dict:
    """The keyword arguments that give a new layer ``layer``'s placement in the world (scale,
    translate, rotate, shear, affine, units and axis labels), so that its data coordinates are
    ``layer``'s; ``offset`` (in ``layer``'s data coordinates) shifts it, e.g. to one z-slice."""
    if layer is None:
        return {}
    translate = np.asarray(layer.translate, np.float64)
    if offset is not None and np.any(offset):
        linear = Affine(scale=layer.scale, rotate=layer.rotate, shear=layer.shear).linear_matrix
        translate = translate + linear @ np.asarray(offset, np.float64)
    out = {"scale": tuple(layer.scale), "translate": tuple(float(v) for v in translate),
           "rotate": np.asarray(layer.rotate), "shear": np.asarray(layer.shear),
           "affine": np.asarray(layer.affine.affine_matrix)}
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(units)
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        out["axis_labels"] = tuple(str(a) for a in labels)
    return out


def to_layer(src, dst, points) -> np.ndarray:
    """Data coordinates of ``src`` (N, ndim) -> data coordinates of ``dst``, through the world."""
    pts = np.asarray(points, dtype=np.float64)
    if src is dst or pts.size == 0:
        return pts.copy()
    return np.array([dst.world_to_data(src.data_to_world(p)) for p in pts], dtype=np.float64)


class AxesBox(QComboBox):
    """The axes selector of a widget that takes a video: an editable list of layouts (``TYX``,
    ``ZYX``, ``TZYX``, ...), pre-filled from the chosen layer (:func:`layer_axes`).

    A string the user applies (Enter, or a pick from the list) is checked against the layer: a
    good one is kept in the layer's metadata (every widget then reads it) and :attr:`note` says
    what is searched; a bad one gets the reason in red and is not kept.
    """

    changed = Signal(str)  # a good axes string was applied (and kept in the layer's metadata)

    def __init__(self, combo: LayerCombo, parent=None):
        super().__init__(parent)
        self.combo = combo
        self.setEditable(True)
        self.addItems(AXES_CHOICES)
        self.setToolTip("the layer's axes, over T (time), Z (depth), Y, X, C (channels); T is searched, "
                        "or Z without T; TZYX: the time series of the z-slice shown")
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.ok = True
        self.activated.connect(lambda *_: self.apply(self.currentText()))
        self.lineEdit().editingFinished.connect(lambda: self.apply(self.currentText()))
        combo.currentTextChanged.connect(self.reload)
        self.reload()

    def _say(self, text: str, error: bool = False) -> None:
        self.ok = not error
        self.note.setStyleSheet("color: #e05050;" if error else "color: #909090;")
        self.note.setText(text)

    def reload(self, *_) -> None:
        """Show the chosen layer's axes (a new layer, or its axes set in another widget)."""
        try:
            layer = self.combo.layer()
        except RuntimeError:  # the dock widget was closed and deleted
            return
        if not isinstance(layer, Image):
            self.blockSignals(True)
            self.setEditText("")
            self.blockSignals(False)
            self._say("")
            return
        try:
            axes = layer_axes(layer)
        except ValueError as e:
            self._say(str(e), error=True)
            return
        self.blockSignals(True)
        self.setEditText(axes)
        self.blockSignals(False)
        self._describe(layer, axes)

    def _describe(self, layer, axes: str) -> None:
        try:
            view = VideoView(tuple(layer.data.shape), axes, bool(layer.rgb))
            self._say(f"searched: {view.describe(which=False)}")
        except ValueError as e:
            self._say(str(e), error=True)

    def apply(self, text: str) -> str | None:
        """Check ``text`` against the layer; keep it (returned) or say why not (None)."""
        layer = self.combo.layer()
        if not isinstance(layer, Image):
            return None
        try:
            axes = check_axes(text, tuple(layer.data.shape), bool(layer.rgb))
        except ValueError as e:
            self._say(str(e), error=True)
            return None
        layer.metadata[AXES_KEY] = axes
        self.blockSignals(True)
        self.setEditText(axes)
        self.blockSignals(False)
        self._describe(layer, axes)
        self.combo.refresh()
        self.changed.emit(axes)
        return axes

    def axes(self) -> str:
        """The axes typed, checked against the layer (ValueError naming ``axes``)."""
        layer = self.combo.layer()
        if layer is None:
            raise ValueError("video: no video layer")
        text = self.currentText()
        axes = check_axes(text, tuple(layer.data.shape), bool(layer.rgb))
        if layer.metadata.get(AXES_KEY) != axes:
            self.apply(axes)
        return axes


def flows_of(layer, view: VideoView | None = None):
    """The (fflow, bflow) cached in a video layer's metadata, or None; ValueError when they were
    computed for another view of the layer (other axes, another z-slice)."""
    f = layer.metadata.get(FLOWS_KEY) if layer is not None else None
    if not f:
        return None
    if view is not None:
        axes, z = f.get("axes"), f.get("z", 0)
        if (axes is not None and axes != view.axes) or (view.batch is not None and z != view.z):
            where = f"axes {axes}" + (f", z-slice {z}" if view.batch is not None else "")
            raise ValueError(f"flow: the cached flow of {layer.name!r} is for {where}; this is "
                             f"{view.axes}" + (f", z-slice {view.z}" if view.batch is not None else "")
                             + ": compute it again (Flow widget) or choose 'none'")
        T, H, W = view.video_shape[:3]
        if tuple(np.shape(f["fflow"])) != (T, 2, H, W):
            raise ValueError(f"flow: the cached flow {tuple(np.shape(f['fflow']))} does not fit the video "
                             f"{(T, H, W)}; compute it again or choose 'none'")
    return f["fflow"], f["bflow"]


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


def shape_regions(layer, video, view: VideoView | None = None) -> list[ShapeRegion]:
    """Every shape of the Shapes ``layer`` as a region of the video layer ``video`` (seen as
    ``view``, default :func:`view_of`).

    A shape's vertices are carried from the Shapes layer's data coordinates to the video
    layer's through the world (so scale, translate and affine of both layers are honoured),
    then to the view's (t, y, x) pixels;
    the region is their bounding box on the shape's frame, over the frame range stored in
    the layer's features (t0, t1; default one frame), clipped to the frame. A shape outside
    the video gets an ``error``, the others are unaffected.
    """
    if layer is None:
        return []
    if not isinstance(layer, Shapes):
        raise ValueError(f"regions: layer {layer.name!r} is not a Shapes layer")
    view = view_of(video) if view is None else view
    if layer.ndim < video.ndim:
        raise ValueError(f"regions: layer {layer.name!r} has {layer.ndim} dimensions, the video "
                         f"{video.name!r} {video.ndim} ({view.layer_axes}); draw the rectangles on a layer "
                         "made for it (Regions widget: Draw rectangles)")
    shape = view.video_shape
    feats = layer.features
    out = []
    for n, (v, kind) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        v = view.from_layer(to_layer(layer, video, np.asarray(v))[:, -video.ndim:])
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


def regions_of(layer, video, view: VideoView | None = None) -> list[Region]:
    """The regions drawn on a Shapes layer (see :func:`shape_regions`), as the video's pixels;
    ValueError naming the first shape that cannot be used."""
    items = shape_regions(layer, video, view)
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


TURN_GAP_MS = 30  # between the steps of in_turns: time for the repaint a step set off


class _CloseWatch(QObject):
    """Notes when a top-level window is closed (its close event), before Qt deletes it."""

    def __init__(self, window):
        super().__init__(window)
        self.closed = False
        window.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self.closed = True
        return False


def window_open(widget) -> bool:
    """Whether ``widget`` exists and its window (napari's, once docked) has not been closed."""
    if not alive(widget):
        return False
    window = widget.window()
    watch = window.findChild(_CloseWatch, "", Qt.FindChildOption.FindDirectChildrenOnly)
    if watch is None:
        _CloseWatch(window)
        return True
    return not watch.closed


_TURNS: deque = deque()  # (owner, iterator of steps): the sequences of in_turns, first come first run
_TURN_DUE = [False]  # whether the next step is scheduled


def in_turns(steps, owner) -> None:
    """Run each callable of ``steps`` in its own turn of Qt's event loop, while the widget
    ``owner`` and its window are open.

    Work that would block the viewer for longer than a frame when done at once (adding a
    layer makes its controls and its row in the layer list, and it is drawn for the first
    time in the next repaint, shaders compiled; each ~0.1 s in software OpenGL) is split so,
    and the viewer repaints and takes input between the steps. The steps of every sequence
    (of all the widgets) run one at a time, :data:`TURN_GAP_MS` after the previous one ended,
    the sequences in the order they came. A step that fails is reported (napari's
    notifications) and ends its sequence: an exception escaping a Qt timer would abort the
    process.
    """
    window_open(owner)  # watches the window from now on
    _TURNS.append((owner, iter(list(steps))))
    _next_turn()


def turns_pending() -> bool:
    """Whether steps of :func:`in_turns` are still to run (e.g. a search's map still to be shown)."""
    return bool(_TURNS)


def _next_turn() -> None:
    if _TURNS and not _TURN_DUE[0]:
        _TURN_DUE[0] = True
        QTimer.singleShot(TURN_GAP_MS, _run_turn)


def _run_turn() -> None:
    _TURN_DUE[0] = False
    while _TURNS:
        owner, steps = _TURNS[0]
        step = next(steps, None) if window_open(owner) else None
        if step is None:
            _TURNS.popleft()
            continue
        try:
            step()
        except Exception as e:  # noqa: BLE001 (reported, not raised: see in_turns)
            _TURNS.popleft()
            if window_open(owner):
                show_error(f"{type(e).__name__}: {e}")
        break
    _next_turn()


_WATCHED_LAYER_LISTS: weakref.WeakSet = weakref.WeakSet()  # those that unfreeze the heap on a removal


def settle_heap(viewer=None) -> None:
    """Move every object the garbage collector tracks now out of its sight (``gc.freeze()``),
    until a layer of ``viewer`` is removed.

    The viewer holds hundreds of thousands of long-lived Python objects (napari, Qt, vispy,
    torch, dask and their modules). Python's full collections walk all of them, 0.15-0.4 s
    here holding the GIL, in whichever thread allocates at that moment: the viewer stops.
    Frozen objects are still freed when no longer referenced; only reference cycles among
    them wait, and a removed layer (napari's layers are such cycles, with their data) is
    one: so a layer's removal unfreezes everything first, and napari's own collection on
    removal then frees it as before. Called when a job starts and after a job imported many
    modules; cheap (no collection is run).
    """
    gc.freeze()
    if viewer is not None and viewer.layers not in _WATCHED_LAYER_LISTS:
        _WATCHED_LAYER_LISTS.add(viewer.layers)
        viewer.layers.events.removed.connect(_unfreeze, position="first")  # before napari's collection


def _unfreeze(event=None) -> None:
    gc.unfreeze()


class Runner(QObject):
    """Runs ``fn(progress=, should_stop=)`` in a napari worker thread, with a progress bar and a
    Cancel button; ``on_done(result)`` is called in the GUI thread only when it completes.

    The job stops at its next check (``should_stop()`` is True) when Cancel is pressed, when
    napari closes the window (which asks every worker to quit) or when the widget holding the
    progress bar is deleted; then nothing is applied and no deleted widget is touched.
    """

    progressed = Signal(int, int)

    def __init__(self, status: Status, run_text: str = "Run", parent=None, viewer=None):
        super().__init__(parent)
        self.status = status
        self.viewer = viewer  # its layers' removal unfreezes the heap (see settle_heap)
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

    def _set_bar(self, maximum: int, value: int) -> None:
        """Range (0, maximum) and value of the progress bar, drawn with the next repaint.

        QProgressBar repaints itself at once on a new value (``repaint()``, not ``update()``),
        and in a window holding napari's OpenGL canvas that is a repaint of the whole window,
        the canvas included (tens of ms, and hundreds right after a layer was added, when the
        canvas draws the new layer for the first time). With updates held while the values
        change, the bar is drawn with the rest of the window, in the next repaint.
        """
        bar = self.bar
        bar.setUpdatesEnabled(False)
        try:
            bar.setRange(0, maximum)
            bar.setValue(value)
        finally:
            bar.setUpdatesEnabled(True)
        bar.update()

    def _progress(self, done: int, total: int) -> None:
        if not self._alive():
            return
        self._set_bar(max(1, total), done)
        activity = self._activity  # the same progress in napari's activity dock
        if activity is not None and activity.n != done:
            if activity.total != max(1, total):
                activity.total = max(1, total)
            activity.update(done - activity.n)

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
            # applied in a later turn of the event loop than the worker's end: whatever the
            # worker did last while holding the GIL (e.g. a garbage collection) and adding
            # the results (often a new layer, ~0.1 s) then freeze the viewer one after the
            # other rather than together
            QTimer.singleShot(0, partial(apply, out))

        def apply(out):
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
        # after apply, in a turn of its own (napari's activity dock relaid out as its progress closes)
        worker.finished.connect(lambda: QTimer.singleShot(TURN_GAP_MS, self._finished))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_bar(0, 0)  # busy until the first tick
        self.status.info(f"{label}...")
        # made here, once: napari's progress widgets process Qt's events when they change, so
        # one made on the first tick could be made again by the ticks queued behind it, and
        # those never closed kept napari's activity indicator animating (a whole-window
        # repaint several times a second) long after the job
        from napari.utils import progress

        self._activity = progress(total=0, desc=label)
        settle_heap(self.viewer)  # what exists now (the viewer, its layers) is not walked by collections
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
        self._set_bar(1, 1 if self._complete else 0)  # full when done, empty when cancelled or failed
        self._complete = False


KINDS = {"image": Image, "points": Points, "vectors": Vectors, "shapes": Shapes}
# set when a layer is made, never changed on an existing one
_CONSTRUCTOR_ONLY = ("rgb", "name")


def set_layer(viewer, name: str, data, kind: str, once: dict | None = None, inside: bool = False,
              keep_selection: bool = False, **kwargs):
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
    once.setdefault("axis_labels", kwargs.pop("axis_labels", AXIS_LABELS))  # only when made
    cls = KINDS[kind]
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and type(layer) is cls and _updatable(layer, data, {**once, **kwargs}):
        update_layer(layer, data, inside=inside, **kwargs)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    add = partial(getattr(viewer, f"add_{kind}"), data, name=name, **once, **kwargs)
    return add_keeping_selection(viewer, add) if keep_selection else add()


def select_layer(viewer, layer_ref) -> None:
    """Make the layer of the weak reference ``layer_ref`` the selected one, if it is still there
    (a step of :func:`in_turns`)."""
    layer = layer_ref()
    if layer is not None and layer in viewer.layers:
        viewer.layers.selection.active = layer


def add_keeping_selection(viewer, add):
    """``add()`` (a call adding one layer, returning it) with the viewer's layer selection as it
    was: napari selects a new layer, which swaps the layer controls shown and repaints them
    (tens of ms with software OpenGL); here no one is told of the passing change, since the
    selection is back as it was before the events are let through."""
    sel = viewer.layers.selection
    active, chosen = sel.active, set(sel)
    with sel.events.blocker_all():
        layer = add()
        if active is not None:
            sel.active = active
        else:
            sel.clear()
            sel.update(chosen)
    return layer


def _updatable(layer, data, kwargs) -> bool:
    if isinstance(layer, Image):
        rgb = kwargs.get("rgb", layer.rgb)
        return bool(rgb) == bool(layer.rgb) and len(data.shape) == len(layer.data.shape)
    return np.shape(data)[-1:] == (layer.ndim,)


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
    dimensions (slider ranges) cannot change (an overlay updated on a click). Then the
    layer's events are held back while its data and properties change (napari would redraw
    the layer, recompute the viewer's dimensions, update the thumbnail and repaint the layer
    list once per property) and one refresh redraws it with everything set; a change of
    placement (scale, translate, ...) is still announced, before.
    """
    if not inside:
        _set_properties(layer, data, kwargs)
        return
    placement = {k: kwargs.pop(k) for k in _PLACEMENT if k in kwargs}
    _set_properties(layer, None, placement)
    with layer.events.blocker_all():
        _set_properties(layer, data, kwargs)
    layer.refresh()


_PLACEMENT = ("scale", "translate", "rotate", "shear", "affine", "units")


def _set_properties(layer, data, kwargs: dict) -> None:
    """``layer.data = data`` (unless None), then the properties in ``kwargs`` that differ."""
    if data is not None:
        layer.data = data
    if "features" in kwargs:
        layer.features = kwargs["features"]
    for key, value in kwargs.items():
        if key in _CONSTRUCTOR_ONLY or key == "features":
            continue
        if key == "metadata":
            layer.metadata.update(value)
            continue
        if key in (*_PLACEMENT, "opacity", "blending", "contrast_limits", "colormap", "size", "border_width",
                   "symbol") and \
                _same_prop(layer, key, value):
            continue
        setattr(layer, key, value)


def _same_prop(layer, key, value) -> bool:
    cur = getattr(layer, key)
    if key == "affine":
        cur = cur.affine_matrix
    elif key == "colormap":
        return isinstance(value, str) and cur.name == value
    elif key == "symbol":  # per point: Symbol enums against names
        return not isinstance(value, str) and [str(v) for v in cur] == [str(v) for v in value]
    elif key == "units":
        return tuple(str(u) for u in cur) == tuple(str(u) for u in value)
    return _same(cur, value)
