"""Neighbours dock widget: click a pixel, see its K matches, their patches and a per-pixel map.

The matches are those of the last search of the layer (of the view it searched: a TZYX
stack's z-slice, a z-stack's slices, ...); the overlays are drawn on the layer's own axes and
the gallery's patches with the layer's contrast limits (the channel shown for non-RGB
channels)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
from napari.utils.colormaps import ensure_colormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..model.search import MAP_STATS, distance_map, gather_patches, mosaic, neighbours_at
from ._common import (
    RESULTS_KEY,
    VIEW_KEY,
    Status,
    in_turns,
    set_layer,
    transforms_of,
    video_combo,
    view_of,
    window_open,
)


def to_pixmap(img: np.ndarray) -> QPixmap:
    """uint8 (h, w, 3) -> QPixmap (copied)."""
    img = np.ascontiguousarray(img[..., :3])
    h, w, _ = img.shape
    return QPixmap.fromImage(QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy())


def gallery_limits(layer) -> tuple[float, float]:
    """The pixel values the gallery shows black and white: the layer's contrast limits (in the
    data's units, whatever its type), as napari shows the layer."""
    lo, hi = (float(v) for v in layer.contrast_limits)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


VECTORS = "neighbour vectors"
OVERLAYS = ("neighbours", VECTORS)  # the layers a click updates
ON_OWN_FRAME, ON_QUERY_FRAME = "own frame", "query frame"  # the ``drawn`` feature of a point


def label_glyphs(wt: int) -> str:
    """The characters of the labels of matches at most ``wt`` frames from the query's."""
    return "".join(sorted(set("".join(offset_labels(range(-wt, wt + 1))))))


EARLIER, SAME, LATER = (0.25, 0.6, 1.0), (1.0, 1.0, 1.0), (1.0, 0.45, 0.15)


def offset_colours(offsets) -> np.ndarray:
    """RGBA (K, 4) for frame offsets: blue before the query's frame, white on it, orange after,
    stronger the further away (never so pale that a light frame hides it)."""
    dt = np.asarray(offsets, np.float32)
    a = np.where(dt == 0, 0.0, 0.5 + 0.5 * np.abs(dt) / max(1.0, float(np.abs(dt).max())))
    end = np.where((dt < 0)[:, None], EARLIER, LATER)
    rgb = (1 - a[:, None]) * np.asarray(SAME) + a[:, None] * end
    return np.concatenate([rgb, np.ones((len(dt), 1))], 1).astype(np.float32)


def distance_colours(dists) -> np.ndarray:
    """RGBA (K, 4): viridis over this query's distances, from the smallest (dark) to the largest.

    Computed here rather than by napari from the ``distance`` feature: napari keeps the
    colour range of the first query for all the next ones, and recolouring from a
    feature costs a click several milliseconds.
    """
    d = np.asarray(dists, np.float64)
    span = float(d.max() - d.min()) if d.size else 0.0
    return ensure_colormap("viridis").map((d - d.min()) / span if span > 0 else np.zeros_like(d))


def offset_labels(offsets) -> list[str]:
    """``"t"``, ``"t+1"``, ``"t-2"``: a match's frame relative to the query's."""
    return ["t" if d == 0 else f"t{d:+d}" for d in (int(round(float(v))) for v in offsets)]


class NeighboursWidget(QWidget):
    """Pick a query pixel (click with 'pick' on, or type t, y, x) to show its neighbours: on their
    own frames (``neighbours``), all together on the query's frame (``neighbours (query frame)``),
    as arrows from the query and as a gallery of patches."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.video = video_combo(self.viewer)
        self.pick = QCheckBox("pick with a mouse click")
        self.pick.setChecked(True)
        self.t, self.y, self.x = QSpinBox(), QSpinBox(), QSpinBox()
        for sb in (self.t, self.y, self.x):
            sb.setRange(0, 100000)
        self.show_button = QPushButton("Show")
        self.show_button.clicked.connect(lambda: self.show_at(self.t.value(), self.y.value(), self.x.value()))
        self.zoom = QSpinBox()
        self.zoom.setRange(1, 32)
        self.zoom.setValue(8)
        self.gallery = QWidget()
        self.gallery_grid = QGridLayout(self.gallery)
        self.gallery_grid.setSpacing(4)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.gallery)
        scroll.setMinimumHeight(270)
        self.stat = QComboBox()
        self.stat.addItems(MAP_STATS)
        self.stat.setToolTip("kth: distance to the k-th neighbour (how rare a patch is); mean: mean "
                             "distance over the K; first: distance to the best match other than itself")
        self.kth = QSpinBox()
        self.kth.setRange(0, 1000)
        self.kth.setSpecialValueText("last")
        self.map_button = QPushButton("Make map")
        self.map_button.clicked.connect(self.make_map)
        self.status = Status()

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("", self.pick)
        pos = QHBoxLayout()
        for label, sb in (("t", self.t), ("y", self.y), ("x", self.x)):
            pos.addWidget(QLabel(label))
            pos.addWidget(sb)
        pos.addWidget(self.show_button)
        form.addRow("pixel", pos)
        form.addRow("gallery zoom", self.zoom)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(scroll)
        mform = QFormLayout()
        mrow = QHBoxLayout()
        mrow.addWidget(self.stat)
        mrow.addWidget(QLabel("k"))
        mrow.addWidget(self.kth)
        mrow.addWidget(self.map_button)
        mform.addRow("per-pixel map", mrow)
        lay.addLayout(mform)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(self._disconnect)
        self.neighbours = None
        self._cells: list[tuple[QLabel, QLabel, QWidget]] = []
        self._preparing = False
        self._arrows_due = None  # (data, kwargs) of the arrows of the last click, while they are hidden
        self._arrows_watched = None  # the arrows layer whose visibility is followed
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.video.currentTextChanged.connect(lambda *_: self.prepare())
        self.prepare()

    def _disconnect(self, *_):
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        if self._arrows_watched is not None:
            self._arrows_watched.events.visible.disconnect(self._on_arrows_visible)
            self._arrows_watched = None

    def _on_inserted(self, event) -> None:
        """A search's distance map was added: its video has results, make the overlays ready;
        the arrows layer was added: follow its visibility."""
        if RESULTS_KEY in getattr(event.value, "metadata", {}):
            self.prepare()
        if getattr(event.value, "name", None) == VECTORS:
            self._watch_arrows()

    def _watch_arrows(self) -> None:
        layer = self.viewer.layers[VECTORS] if VECTORS in self.viewer.layers else None
        if layer is self._arrows_watched:
            return
        if self._arrows_watched is not None:
            self._arrows_watched.events.visible.disconnect(self._on_arrows_visible)
        self._arrows_watched = layer
        if layer is not None:
            layer.events.visible.connect(self._on_arrows_visible)

    def _on_arrows_visible(self, event=None) -> None:
        """The arrows were shown: draw those of the last click (skipped while they were hidden)."""
        layer = self._arrows_watched
        if layer is None or not layer.visible or self._arrows_due is None:
            return
        data, kwargs = self._arrows_due
        self._arrows_due = None
        if layer in self.viewer.layers:
            set_layer(self.viewer, VECTORS, data, "vectors", **kwargs)

    def prepare(self) -> None:
        """Make the overlay layers (empty) and the gallery's cells before the first click, once
        the chosen video has search results (that is, when a search ends or the widget opens).

        A layer made on a click is most of a second (its controls, its row in the layer list,
        its shaders compiled when first drawn): made here, one per turn of the event loop,
        each turn is short and the first click only sets data as the others do. Layers that
        exist already are left as they are.
        """
        if self._preparing or not window_open(self):
            return
        try:
            layer, res = self.results()
            view = self.view(layer)
        except (ValueError, RuntimeError):
            return
        missing = [spec for spec in self._overlays(layer, view) if spec[0] not in self.viewer.layers]
        k = res[-1].dists.shape[-1]
        if not missing and len(self._cells) >= k:
            return
        self._preparing = True
        added = []

        def add(spec):  # hidden: its first draw (shaders compiled) is a turn of its own, show()
            name, data, kind, once, kwargs = spec
            if name not in self.viewer.layers:  # a click may have made it meanwhile
                once = {**once, "visible": False}
                added.append(set_layer(self.viewer, name, data, kind, once=once, keep_selection=True,
                                       **kwargs))

        def show(name):
            for out in added:
                if out.name == name and out in self.viewer.layers and name != VECTORS:
                    out.visible = True

        def cells():
            if len(self._cells) < k:
                self._make_cells(k)

        def finish():
            self._preparing = False

        glyphs = label_glyphs(max(int(r.params.wt) for r in res))

        def warm():  # the labels' glyphs drawn once (vispy renders each glyph when first seen)
            points = self.viewer.layers["neighbours"] if "neighbours" in self.viewer.layers else None
            if points is not None and not len(points.data):
                self._draw_glyphs(layer, view, glyphs)

        def first():  # unless a click came first: the matches of a pixel of the region, as a click shows them
            points = self.viewer.layers["neighbours"] if "neighbours" in self.viewer.layers else None
            if points is not None and list(points.features.get("label", [])) == [glyphs]:
                self.show_at(*self._first_pixel(layer, view, res))

        steps = [partial(add, spec) for spec in missing] + [partial(show, spec[0]) for spec in missing]
        steps += [warm, cells, first] if "neighbours" in (spec[0] for spec in missing) else [cells]
        in_turns([*steps, finish], self)

    def _frame_shown(self, layer, view) -> int | None:
        """The video frame the viewer shows of ``layer`` (None where it cannot tell)."""
        try:
            pos = np.asarray(layer.world_to_data(self.viewer.dims.point[-layer.ndim:]), np.float64)
            return int(round(float(view.from_layer(pos[-layer.ndim:])[0, 0])))
        except (ValueError, IndexError):
            return None

    def _first_pixel(self, layer, view, res) -> tuple[int, int, int]:
        """The pixel shown when a search ends: the centre of the last region searched, on the
        frame shown if the region holds it (else the region's first frame)."""
        r = res[-1].region
        shown = self._frame_shown(layer, view)
        t = shown if shown is not None and r.t0 <= shown < r.t1 else r.t0
        return t, (r.y0 + r.y1 - 1) // 2, (r.x0 + r.x1 - 1) // 2

    def _draw_glyphs(self, layer, view, label: str) -> None:
        """Draw ``label`` (as a transparent point's text, at the frame shown) in the empty
        neighbours layer.

        vispy renders a glyph into its text atlas the first time the layer's text uses it,
        ~60 ms for the labels' characters in software OpenGL: done here, ahead, the first
        click costs what the others do.
        """
        _, _, kind, _, kwargs = self._overlays(layer, view)[0]
        t = self._frame_shown(layer, view)
        if t is None:
            return
        features = {"drawn": [""], "distance": [0.0], "rank": [0], "frame": [t], "offset": [0],
                    "label": [label], "colour": ["#00000000"]}
        set_layer(self.viewer, "neighbours", view.to_layer(np.asarray([[t, 0.0, 0.0]])), kind,
                  **dict(kwargs, features=features, face_color=[[0.0, 0.0, 0.0, 0.0]], border_width=[0.0],
                         size=[1e-3]))

    def _on_click(self, viewer, event):
        try:
            picking = self.pick.isChecked()
        except RuntimeError:  # the dock widget was closed and deleted
            self._disconnect()
            return
        if not picking or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        layer = self.video.layer()
        if layer is None or RESULTS_KEY not in layer.metadata:
            return
        pos = np.asarray(layer.world_to_data(event.position), np.float64)[-layer.ndim:]
        try:
            view = self.view(layer)
            z = view.slice_of(pos)
            if z is not None and z != view.z:
                raise ValueError(f"neighbours: z-slice {view.z} of {layer.name!r} was searched, this click "
                                 f"is on z-slice {z}; search this slice or go back to {view.z}")
        except ValueError as e:
            self.status.error(str(e))
            return
        self.show_at(*view.from_layer(pos)[0])

    def view(self, layer):
        """The view of ``layer`` its search results are of (with the channel shown now)."""
        view = layer.metadata.get(VIEW_KEY)
        now = view_of(layer, self.viewer, None if view is None else view.axes)
        return now if view is None else replace(view, c=now.c)

    def results(self):
        layer = self.video.layer()
        view_of(layer)
        res = layer.metadata.get(RESULTS_KEY)
        if not res:
            raise ValueError(f"neighbours: no search results for {layer.name!r}; run the Search widget first")
        return layer, res

    def show_at(self, t: float, y: float, x: float) -> None:
        """Show the matches of the query nearest to pixel (t, y, x) (the video's pixels).

        The three overlay layers and the gallery are updated in place (never removed and
        added again), so a click is drawn in a few tens of milliseconds.
        """
        try:
            layer, res = self.results()
            view = self.view(layer)
            nb = neighbours_at(res, t, y, x)
        except ValueError as e:
            self.status.error(str(e))
            return
        self.neighbours = nb
        for sb, v in zip((self.t, self.y, self.x), nb.query, strict=True):
            sb.blockSignals(True)
            sb.setValue(int(v))
            sb.blockSignals(False)
        K = len(nb.dists)
        self._watch_arrows()
        with self._layer_list_held():
            for name, data, kind, once, kwargs in self._overlays(layer, view, nb):
                if name == VECTORS and name in self.viewer.layers and not self.viewer.layers[name].visible:
                    self._arrows_due = (data, kwargs)  # drawn when the layer is shown
                    continue
                set_layer(self.viewer, name, data, kind, once=once, **kwargs)
        if self.viewer.layers.selection.active is not layer:
            self.viewer.layers.selection.active = layer
        patches = gather_patches(view.video(layer.data), nb.positions, nb.result.params.ps,
                                 data_range=gallery_limits(layer))  # black and white as napari shows them
        if not layer.rgb and patches.shape[-1] > 1:  # the channel shown
            patches = patches[..., view.c:view.c + 1]
        self._fill_gallery(patches, nb)
        self.status.info(f"query (t={nb.query[0]}, y={nb.query[1]}, x={nb.query[2]}): {K} matches in "
                         f"frames {sorted({int(v) for v in nb.positions[:, 0]})}, all drawn on frame "
                         f"{nb.query[0]} as rings labelled by frame (blue before, orange after)")

    def _overlays(self, layer, view, nb=None) -> list[tuple]:
        """``(name, data, kind, once, kwargs)`` of :func:`set_layer` for each overlay of
        :data:`OVERLAYS`: the matches ``nb`` (a :class:`~napari_stnls.plugin.model.search.Neighbours`)
        on the video ``layer`` seen as ``view``, or, without ``nb``, empty layers made ahead of
        the first click.

        One Points layer holds the K matches twice: first on their own frames (discs,
        coloured by distance, sized by rank), then all on the query's frame (rings labelled
        and coloured by their frame offset, so they are seen without stepping through the
        frames); the ``drawn`` feature says which. One layer rather than two: each Points
        layer updated costs a click about 20 ms of napari's work and a draw.
        """
        ndim = len(view.layer_axes)
        # the overlays sit on the video, whatever its scale and offset, and inside it
        place = dict(transforms_of(layer), inside=True)
        points_once = dict(border_color="white", opacity=0.8,
                           text={"string": "{label}", "size": 10, "color": {"feature": "colour"},
                                 "anchor": "center", "translation": [0.0] * (ndim - 2) + [-1.5, 1.5]})
        # the arrows are hidden until asked for (the layer list's eye): they repeat what the rings
        # show and cost a click about 25 ms with software OpenGL (vispy rebuilds their shaders)
        vectors_once = dict(edge_color="orange", edge_width=0.4, vector_style="arrow", visible=False)
        if nb is None:
            features = pd.DataFrame({"drawn": np.zeros(0, object), "distance": np.zeros(0),
                                     "rank": np.zeros(0, int), "frame": np.zeros(0, int),
                                     "offset": np.zeros(0, int), "label": np.zeros(0, object),
                                     "colour": np.zeros(0, object)})
            return [("neighbours", np.zeros((0, ndim)), "points", points_once,
                     dict(features=features, **place)),
                    (VECTORS, np.zeros((0, 2, ndim)), "vectors", vectors_once, place)]
        K = len(nb.dists)
        rank = np.arange(K)
        ps = nb.result.params.ps  # best match: a circle as wide as the patch; the K-th a third of it
        sizes = np.linspace(ps, ps / 3, K) if K > 1 else np.array([float(ps)])
        q = np.asarray(nb.query, np.float32)
        vec = np.stack([view.to_layer(np.broadcast_to(q, nb.positions.shape)),
                        view.to_layer(nb.positions - q, displacement=True)], 1)
        offsets = nb.positions[:, 0] - q[0]
        on_query_frame = nb.positions.copy()
        on_query_frame[:, 0] = q[0]
        colours = offset_colours(offsets)
        hexes = ["#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3]) for rgba in colours]
        frame = nb.positions[:, 0].astype(int)
        features = {"drawn": [ON_OWN_FRAME] * K + [ON_QUERY_FRAME] * K,
                    "distance": np.tile(nb.dists, 2), "rank": np.tile(rank + 1, 2),
                    "frame": np.tile(frame, 2), "offset": np.tile(offsets.astype(int), 2),
                    "label": [""] * K + offset_labels(offsets), "colour": ["#ffffff"] * K + hexes}
        return [("neighbours", view.to_layer(np.concatenate([nb.positions, on_query_frame])), "points",
                 points_once,
                 dict(features=features, symbol=["disc"] * K + ["ring"] * K,
                      size=np.concatenate([sizes, np.full(K, 2.5)]),
                      border_width=np.repeat(np.asarray([0.1, 0.0]), K),
                      face_color=np.concatenate([distance_colours(nb.dists), colours]), **place)),
                (VECTORS, vec, "vectors", vectors_once, place)]

    def _layer_list_held(self):
        """While the overlays are updated on a click: napari's layer list does not hear of it.

        Each change of an overlay would otherwise reach the layer list (a model ``dataChanged``
        per property), which repaints the list in a second pass of the event loop after the
        canvas, a whole-window repaint that costs about as much as drawing the canvas. The
        list shows the overlays' names, visibility and thumbnails, none of which a click
        changes (a thumbnail is a few points). Layers being added (the first click) are
        announced as usual.
        """
        if all(name in self.viewer.layers for name in OVERLAYS):
            return self.viewer.layers.events.blocker()
        return contextlib.nullcontext()

    def _make_cells(self, n_cells: int) -> None:
        """``n_cells`` cells in the gallery (image and caption), the ones over that removed."""
        cols = 3
        while len(self._cells) > n_cells:
            img, cap, cell = self._cells.pop()
            self.gallery_grid.removeWidget(cell)
            cell.deleteLater()
        while len(self._cells) < n_cells:
            n = len(self._cells)
            img, cap, cell = QLabel(), QLabel(), QWidget()
            img.setAlignment(Qt.AlignmentFlag.AlignCenter)
            cap.setAlignment(Qt.AlignmentFlag.AlignCenter)
            v = QVBoxLayout(cell)
            v.setContentsMargins(0, 0, 0, 0)
            v.addWidget(img)
            v.addWidget(cap)
            self.gallery_grid.addWidget(cell, n // cols, n % cols)
            self._cells.append((img, cap, cell))

    def _fill_gallery(self, patches, nb, limits=(0.0, 1.0)) -> None:
        """One cell per match (image and caption), made once and then updated in place."""
        self._make_cells(len(patches))
        lo, hi = limits
        p = (np.asarray(patches, np.float32) - lo) / (hi - lo if hi > lo else 1.0)
        tiles = mosaic(p, zoom=self.zoom.value(), gap=0, columns=1)  # all tiles at once, one below the other
        th = tiles.shape[0] // max(1, len(patches))
        for n, (d, pos) in enumerate(zip(nb.dists, nb.positions, strict=True)):
            img, cap, _ = self._cells[n]
            img.setPixmap(to_pixmap(tiles[n * th:(n + 1) * th]))
            cap.setText(f"#{n + 1}  d={d:.4g}\nt={pos[0]:.0f} ({pos[1]:.1f}, {pos[2]:.1f})")

    def gallery_captions(self) -> list[str]:
        return [cap.text() for _, cap, _ in self._cells]

    def make_map(self) -> None:
        try:
            layer, res = self.results()
            kth = self.kth.value() or None
            stat = self.stat.currentText()
            view = self.view(layer)
            m = distance_map(res, view.video_shape, stat, kth=kth if stat == "kth" else None)
        except ValueError as e:
            self.status.error(str(e))
            return
        label = f"{stat}{'' if stat != 'kth' or kth is None else f' k={kth}'}"
        img, offset = view.embed(m)
        set_layer(self.viewer, f"{layer.name} map ({label})", img, "image", colormap="inferno", opacity=0.6,
                  blending="additive", **transforms_of(layer, offset))
        self.viewer.layers.selection.active = layer
        self.status.info(f"map: {label}")
