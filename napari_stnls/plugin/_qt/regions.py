"""Regions dock widget: rectangles drawn on a Shapes layer, an editable table, JSON files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.layers import Shapes
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._reader import AXIS_LABELS
from ..model.regions import Region, load_regions, rectangle_from_region, save_regions, validate_regions
from ._common import (
    DISPLAY_ONLY,
    LayerCombo,
    ShapeRegion,
    Status,
    is_regions_layer,
    regions_of,
    shape_regions,
    to_layer,
    transforms_of,
    video_combo,
    video_shape,
)

COLUMNS = ("t0", "t1", "y0", "y1", "x0", "x1")
LAYER_NAME = "regions"
BAD, NOTE = "#7a2a2a", "#6a5a20"  # table rows: a shape that cannot be used; one taken as its bounding box


class RegionsWidget(QWidget):
    """Draw rectangles on any frame, edit them as (t0, t1, y0, y1, x0, x1), save and load JSON."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._syncing = False
        self._table_message = False
        self.video = video_combo(self.viewer)
        self.shapes = LayerCombo(self.viewer, kinds=(Shapes,), predicate=is_regions_layer)
        self.status = Status()

        self.draw_button = QPushButton("Draw rectangles")
        self.draw_button.setToolTip("Draw on the current frame; set the frame range below or in the table")
        self.draw_button.clicked.connect(self.start_drawing)
        self.add_button = QPushButton("Add")
        self.add_button.setToolTip("Add a region on the current frame (centre half of the frame)")
        self.add_button.clicked.connect(self.add_default)
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.clicked.connect(self.remove_selected)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.itemChanged.connect(self._table_edited)
        self.table.setMinimumHeight(120)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

        self.t0 = QSpinBox()
        self.t1 = QSpinBox()
        for sb in (self.t0, self.t1):
            sb.setRange(0, 100000)
        self.t1.setValue(1)
        self.apply_button = QPushButton("Apply frames to selected")
        self.apply_button.clicked.connect(self.apply_frames)

        self.save_button = QPushButton("Save JSON...")
        self.save_button.clicked.connect(lambda: self._file_dialog(save=True))
        self.load_button = QPushButton("Load JSON...")
        self.load_button.clicked.connect(lambda: self._file_dialog(save=False))

        form = QFormLayout()
        form.addRow("video", self.video)
        form.addRow("", self.video.note)
        form.addRow("regions layer", self.shapes)
        frames = QHBoxLayout()
        frames.addWidget(self.t0)
        frames.addWidget(self.t1)
        frames.addWidget(self.apply_button)
        form.addRow("frames t0..t1", frames)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        row = QHBoxLayout()
        for b in (self.draw_button, self.add_button, self.remove_button):
            row.addWidget(b)
        lay.addLayout(row)
        lay.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.shapes.currentTextChanged.connect(self._watch_layer)
        self.video.currentTextChanged.connect(self._sync_table)
        self._watched = None
        self._watch_layer()

    # --- the Shapes layer -------------------------------------------------------------
    def layer(self, create: bool = False) -> Shapes | None:
        """The regions layer; made when ``create`` (placed on the video: its data coordinates are
        the video's pixels, whatever the video's scale and offset)."""
        layer = self.shapes.layer()
        if layer is None and create:
            layer = self.viewer.add_shapes(
                ndim=3, name=LAYER_NAME, axis_labels=AXIS_LABELS, edge_color="#ffcc00",
                face_color="transparent", edge_width=1.5,
                features=pd.DataFrame({"t0": pd.Series(dtype=int), "t1": pd.Series(dtype=int)}),
                **transforms_of(self.video.layer()),
            )
            layer.feature_defaults = {"t0": -1, "t1": -1}
            self.shapes.refresh()
            self.shapes.setCurrentText(layer.name)
        return layer

    def _watch_layer(self, *_):
        layer = self.shapes.layer()
        if layer is self._watched:
            return
        if self._watched is not None:
            self._watched.events.data.disconnect(self._sync_table)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._sync_table)
        self._sync_table()

    def regions(self):
        """The regions of the Shapes layer in the video's pixels (ValueError naming the first
        shape that cannot be used)."""
        return regions_of(self.layer(), self.video.layer())

    def shape_regions(self) -> list[ShapeRegion]:
        """Every shape of the regions layer as a region, or the reason it cannot be one."""
        return shape_regions(self.layer(), self.video.layer())

    def _rectangles(self, layer, regs) -> list[np.ndarray]:
        """The rectangles of ``regs`` (video pixels) in ``layer``'s data coordinates."""
        video = self.video.layer()
        return [to_layer(video, layer, rectangle_from_region(r)) for r in regs]

    def set_regions(self, regions) -> None:
        """Replace the layer's shapes by the rectangles of ``regions`` (checked against the video first)."""
        regs = validate_regions(regions, video_shape(self.video.layer()))
        layer = self.layer(create=True)
        self._syncing = True
        try:
            layer.data = []
            if regs:
                layer.add_rectangles(self._rectangles(layer, regs))
            layer.features = pd.DataFrame({"t0": [r.t0 for r in regs], "t1": [r.t1 for r in regs]})
            layer.feature_defaults = {"t0": -1, "t1": -1}  # a new rectangle: one frame, its own
        finally:
            self._syncing = False
        self._sync_table()

    def _replace_rows(self, rows: dict[int, Region]) -> None:
        """Replace the shapes of some rows by the rectangles of their (checked) regions; the
        other shapes are kept as they are."""
        shape = video_shape(self.video.layer())
        rows = {i: validate_regions([r], shape)[0] for i, r in rows.items()}
        layer = self.layer()
        data = [np.asarray(v) for v in layer.data]
        types = list(layer.shape_type)
        feats = layer.features.copy()
        if "t0" not in feats:
            feats["t0"], feats["t1"] = -1, -1
        for i, r in rows.items():
            data[i] = self._rectangles(layer, [r])[0]
            types[i] = "rectangle"
            feats.loc[feats.index[i], ["t0", "t1"]] = [r.t0, r.t1]
        self._syncing = True
        try:
            layer.data = list(zip(data, types, strict=True))
            layer.features = feats
        finally:
            self._syncing = False
        self._sync_table()

    # --- table <-> layer --------------------------------------------------------------
    def _sync_table(self, *_):
        if self._syncing:
            return
        try:
            self.table.rowCount()
        except RuntimeError:  # the dock widget was closed and deleted
            if self._watched is not None:
                self._watched.events.data.disconnect(self._sync_table)
            return
        items, problem = [], None
        if self.layer() is not None and self.video.layer() is not None:
            try:
                items = self.shape_regions()
            except ValueError as e:
                problem = str(e)
        self._syncing = True
        try:
            self.table.setRowCount(len(items))
            for i, it in enumerate(items):
                values = it.region if it.region is not None else it.bounds
                tip = it.error or it.note or ""
                colour = BAD if it.error else NOTE if it.note else None
                for j, v in enumerate(values):
                    cell = QTableWidgetItem(str(int(v)))
                    cell.setToolTip(tip)
                    if colour is not None:
                        cell.setBackground(QColor(colour))
                    self.table.setItem(i, j, cell)
        finally:
            self._syncing = False
        errors = [it.error for it in items if it.error] + ([problem] if problem else [])
        notes = [f"regions[{i}]: {it.note}" for i, it in enumerate(items) if it.note]
        if errors:  # the shapes at fault are marked in the table; the others stay usable
            more = f" (and {len(errors) - 1} more, marked in red)" if len(errors) > 1 else ""
            if self.status.kind != "error" or self.status.text() != errors[0] + more:  # notified once
                self.status.error(errors[0] + more)
            self._table_message = True
        elif notes:
            self.status.info("; ".join(notes))
            self._table_message = True
        elif self._table_message:  # the shape at fault is gone, and its message with it
            self.status.info(f"{len(items)} region(s)")
            self._table_message = False
        self._show_frames([it.region for it in items if it.region is not None])

    def frames_layer_name(self) -> str | None:
        layer = self.layer()
        return None if layer is None else f"{layer.name} (other frames)"

    def _show_frames(self, regs) -> None:
        """Draw each region's rectangle, dimmed, on the frames t0+1..t1-1 of its range (a
        display-only layer placed on the video: the rectangle to edit is the one on frame t0)."""
        name = self.frames_layer_name()
        if name is None:
            return
        rects = []
        for r in regs:
            base = rectangle_from_region(r)
            for t in range(r.t0 + 1, r.t1):
                rect = base.copy()
                rect[:, 0] = t
                rects.append(rect)
        shown = self.viewer.layers[name] if name in self.viewer.layers else None
        place = transforms_of(self.video.layer())
        if shown is not None:
            shown.data = []
            if rects:
                shown.add_rectangles(rects)
            for key in ("scale", "translate"):
                if key in place and tuple(getattr(shown, key)) != tuple(place[key]):
                    setattr(shown, key, place[key])
        elif rects:
            active = self.viewer.layers.selection.active
            self.viewer.add_shapes(rects, shape_type="rectangle", ndim=3, name=name, axis_labels=AXIS_LABELS,
                                   edge_color="#ffcc00", face_color="transparent", edge_width=1.0,
                                   opacity=0.45, metadata={DISPLAY_ONLY: True}, **place)
            if active is not None:  # keep drawing on the regions layer
                self.viewer.layers.selection.active = active

    def table_row(self, i: int) -> tuple[int, ...]:
        vals = []
        for j, c in enumerate(COLUMNS):
            item = self.table.item(i, j)
            text = item.text().strip() if item is not None else ""
            try:
                vals.append(int(text))
            except ValueError:
                raise ValueError(f"regions[{i}].{c}: expected a whole number, got {text!r}") from None
        return tuple(vals)

    def table_regions(self):
        return [self.table_row(i) for i in range(self.table.rowCount())]

    def _table_edited(self, item=None):
        if self._syncing:
            return
        rows = [item.row()] if item is not None else list(range(self.table.rowCount()))
        try:
            self._replace_rows({i: self.table_row(i) for i in rows})
            self.status.info(f"{self.table.rowCount()} region(s)")
        except ValueError as e:
            i = rows[0]
            msg = str(e).replace("regions[0]", f"regions[{i}]") if len(rows) == 1 else str(e)
            self.status.error(msg)
            self._sync_table()  # back to the layer's regions: nothing changed

    # --- buttons ------------------------------------------------------------------------
    def start_drawing(self):
        try:
            video_shape(self.video.layer())
        except ValueError as e:
            self.status.error(str(e))
            return
        layer = self.layer(create=True)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.status.info("draw rectangles on the frame; the table follows")

    def current_frame(self) -> int:
        """The frame shown, in the video's pixels (the slider is in world units)."""
        video = self.video.layer()
        if video is None or self.viewer.dims.ndim < 3:
            return 0
        return int(round(float(video.world_to_data(self.viewer.dims.point)[0])))

    def add_default(self):
        try:
            T, H, W = video_shape(self.video.layer())[:3]
            t = min(max(self.current_frame(), 0), T - 1)
            reg = Region(t, t + 1, H // 4, H - H // 4, W // 4, W - W // 4)
            if self.layer() is None:
                self.set_regions([reg])
                return
            layer = self.layer()
            layer.add_rectangles(self._rectangles(layer, [reg]))
        except ValueError as e:
            self.status.error(str(e))

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectedIndexes()})

    def remove_selected(self):
        rows = self.selected_rows()
        layer = self.layer()
        if layer is None or not rows:
            return
        layer.selected_data = set(rows)
        layer.remove_selected()

    def apply_frames(self):
        rows = self.selected_rows() or list(range(self.table.rowCount()))
        try:
            items = self.shape_regions()
            t0, t1 = self.t0.value(), self.t1.value()
            self._replace_rows({i: (t0, t1, *(items[i].region or items[i].bounds)[2:]) for i in rows})
        except ValueError as e:
            self.status.error(str(e))

    def save(self, path) -> None:
        try:
            save_regions(path, self.regions(), video_shape(self.video.layer()))
            self.status.info(f"saved {self.table.rowCount()} region(s) to {path}")
        except (ValueError, OSError) as e:
            self.status.error(str(e))

    def load(self, path) -> None:
        try:
            shape = video_shape(self.video.layer())
            self.set_regions(load_regions(path, shape))
            self.status.info(f"loaded {self.table.rowCount()} region(s) from {path}")
        except (ValueError, OSError) as e:
            self.status.error(str(e))

    def _file_dialog(self, save: bool):  # pragma: no cover (modal dialog)
        if save:
            path, _ = QFileDialog.getSaveFileName(self, "Save regions", "regions.json", "JSON (*.json)")
            if path:
                self.save(path)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Load regions", "", "JSON (*.json)")
            if path:
                self.load(path)

