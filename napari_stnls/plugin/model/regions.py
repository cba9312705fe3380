"""Space-time regions chosen by the user: validation, rectangles <-> regions, JSON files (no Qt).

A region is ``Region(t0, t1, y0, y1, x0, x1)``, half-open (frames ``t0..t1-1``, rows
``y0..y1-1``, columns ``x0..x1-1``), the layout of :class:`napari_stnls.ops.Region`. The napari
plugin draws each region as a rectangle on one frame of a Shapes layer and keeps its frame
range beside it; the functions here convert between the two and read and write the list.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..._util import atomic_path
from ...ops import Region

__all__ = [
    "Region",
    "validate_regions",
    "region_from_rectangle",
    "rectangle_from_region",
    "save_regions",
    "load_regions",
    "FORMAT",
]

FORMAT = "napari-stnls-regions"
_FIELDS = ("t0", "t1", "y0", "y1", "x0", "x1")


def _as_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral | float | np.floating):
        raise TypeError(f"{what}: expected an int, got {v!r}")
    if isinstance(v, float | np.floating) and (not math.isfinite(v) or v != int(v)):
        raise ValueError(f"{what}: expected a whole number, got {v!r}")
    return int(v)


def validate_regions(regions: Iterable, shape: Sequence[int] | None = None) -> list[Region]:
    """Check regions and return them as a list of :class:`Region`.

    Parameters
    ----------
    regions : iterable of Region, 6-sequences or dicts with keys t0, t1, y0, y1, x0, x1
        The regions, half-open.
    shape : (T, H, W, ...) , optional
        The video's frame count and size (napari layout, channels last ignored). When
        given, every region must lie inside it.

    Returns
    -------
    list of Region

    Raises
    ------
    ValueError
        Naming the region (``regions[i]``) and the bound at fault: empty ranges, negative
        starts, or an end past the video.
    """
    if isinstance(regions, str | bytes | dict) or not isinstance(regions, Iterable):
        raise TypeError(f"regions: expected a list of regions, got {type(regions).__name__}")
    if shape is not None:
        if len(shape) < 3:
            raise ValueError(f"shape: expected (T, H, W[, C]), got {tuple(shape)}")
        limits = dict(t=int(shape[0]), y=int(shape[1]), x=int(shape[2]))
    out = []
    for i, r in enumerate(regions):
        name = f"regions[{i}]"
        if isinstance(r, dict):
            missing = [f for f in _FIELDS if f not in r]
            if missing:
                raise ValueError(f"{name}: missing {', '.join(missing)}")
            vals = [r[f] for f in _FIELDS]
        elif isinstance(r, str | bytes) or not isinstance(r, Sequence) or len(r) != 6:
            raise TypeError(f"{name}: expected (t0, t1, y0, y1, x0, x1), got {r!r}")
        else:
            vals = list(r)
        t0, t1, y0, y1, x0, x1 = (_as_int(v, f"{name}.{f}") for v, f in zip(vals, _FIELDS, strict=True))
        for axis, a, b, label in (("t", t0, t1, "frames"), ("y", y0, y1, "rows"), ("x", x0, x1, "columns")):
            if a < 0:
                raise ValueError(f"{name}: {axis}0={a} is negative")
            if b <= a:
                raise ValueError(f"{name}: empty {label}: {axis}0={a}, {axis}1={b} (need {axis}1 > {axis}0)")
            if shape is not None and b > limits[axis]:
                size = {"t": "frame count", "y": "height", "x": "width"}[axis]
                raise ValueError(
                    f"{name}: {axis}1={b} is outside the video ({size} {limits[axis]}); "
                    f"the region must lie inside (T, H, W) = {tuple(int(s) for s in shape[:3])}"
                )
        out.append(Region(t0, t1, y0, y1, x0, x1))
    return out


def region_from_rectangle(vertices, t1: int | None = None, shape: Sequence[int] | None = None,
                          t0: int | None = None) -> Region:
    """The region of a rectangle drawn on one frame of a napari Shapes layer.

    Parameters
    ----------
    vertices : array, shape (4, 3) or (N, 3)
        Vertices as napari stores them, (t, y, x) per vertex, fractional allowed; the
        rectangle's frame is their t (the first vertex's).
    t1 : int, optional
        End of the frame range (exclusive); default one frame: ``t + 1``.
    shape : (T, H, W, ...), optional
        Clip the rectangle to the frame (rows and columns) when given; a rectangle with no
        pixel inside the frame is a ValueError.
    t0 : int, optional
        Start of the frame range; default the rectangle's frame.

    Returns
    -------
    Region
        Rows ``floor(min y) .. ceil(max y)`` and columns likewise, so every pixel the
        rectangle touches is inside.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[2, 10.2, 5], [2, 10.2, 20], [2, 30.7, 20], [2, 30.7, 5]])
    >>> region_from_rectangle(v, t1=4)
    Region(t0=2, t1=4, y0=10, y1=31, x0=5, x1=20)
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 3 or len(v) < 2:
        raise ValueError(f"vertices: expected (N, 3) points (t, y, x), got shape {v.shape}")
    v = v[:, -3:]
    if not np.isfinite(v).all():
        raise ValueError("vertices: not finite")
    t = int(round(float(v[0, 0]))) if t0 is None else int(t0)
    y0, x0 = np.floor(v[:, 1:].min(0)).astype(int)
    y1, x1 = np.ceil(v[:, 1:].max(0)).astype(int)
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    if shape is not None:
        H, W = int(shape[1]), int(shape[2])
        if y1 <= 0 or x1 <= 0 or y0 >= H or x0 >= W:
            raise ValueError(f"rectangle: rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1} lie outside the "
                             f"{H} x {W} frame")
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(H, y1), min(W, x1)
    return Region(t, int(t + 1 if t1 is None else t1), int(y0), int(y1), int(x0), int(x1))


def rectangle_from_region(region) -> np.ndarray:
    """The (4, 3) vertices (t, y, x) of ``region``'s rectangle on its first frame.

    Examples
    --------
    >>> rectangle_from_region((1, 3, 10, 20, 5, 9)).tolist()
    [[1.0, 10.0, 5.0], [1.0, 10.0, 9.0], [1.0, 20.0, 9.0], [1.0, 20.0, 5.0]]
    """
    (r,) = validate_regions([region])
    return np.array(
        [[r.t0, r.y0, r.x0], [r.t0, r.y0, r.x1], [r.t0, r.y1, r.x1], [r.t0, r.y1, r.x0]], dtype=np.float64
    )


def save_regions(path, regions: Iterable, shape: Sequence[int] | None = None) -> Path:
    """Write ``regions`` to a JSON file atomically (temporary file, then rename).

    The file holds ``{"format": "napari-stnls-regions", "version": 1, "shape": [T, H, W]
    or null, "regions": [{"t0": .., "t1": .., ...}, ...]}``.
    """
    regs = validate_regions(regions, shape)
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"path: folder does not exist: {folder}")
    doc = {
        "format": FORMAT,
        "version": 1,
        "shape": None if shape is None else [int(s) for s in shape[:3]],
        "regions": [dict(zip(_FIELDS, (int(v) for v in r), strict=True)) for r in regs],
    }
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path


def load_regions(path, shape: Sequence[int] | None = None) -> list[Region]:
    """Read regions written by :func:`save_regions` (or a bare JSON list of 6-lists or dicts).

    With ``shape`` given, every region must lie inside the video (ValueError otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"path: {path} is not a JSON file: {e}") from e
    if isinstance(doc, dict):
        if doc.get("format") != FORMAT or "regions" not in doc:
            raise ValueError(f"path: {path} is not a regions file (format {doc.get('format')!r})")
        doc = doc["regions"]
    if not isinstance(doc, list):
        raise ValueError(f"path: {path}: expected a list of regions")
    return validate_regions(doc, shape)
