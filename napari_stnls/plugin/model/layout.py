"""How an image layer of any layout is seen as one video by the widgets (no napari import).

A layer's layout is an axes string over ``T Z Y X C`` (:mod:`napari_stnls.video.axes`):
``"YX"`` (one image), ``"TYX"`` (a time-lapse), ``"ZYX"`` (a z-stack), ``"TYXC"``,
``"TZYX"``, ... The widgets work on one video ``(T, H, W[, C])``, its :class:`VideoView`:

* the searched axis is ``T``, or ``Z`` without ``T`` (neighbouring slices are searched like
  neighbouring frames); a single image is a video of one frame;
* with both ``T`` and ``Z`` (``"TZYX"``) the view is the time series of one z-slice (the one
  shown); the denoisers still restore every z-slice's time series;
* ``C`` holds any number of channels (RGB layers have theirs last).

The view maps positions ``(t, y, x)`` of the video to the layer's data coordinates and back
(:meth:`VideoView.to_layer`, :meth:`VideoView.from_layer`), and places per-pixel maps of the
video on the layer (:meth:`VideoView.embed`), so overlays sit on the pixels they belong to.

Examples
--------
>>> import numpy as np
>>> stack = np.zeros((4, 6, 32, 40), np.uint16)          # (T, Z, Y, X)
>>> view = VideoView(stack.shape, default_axes(stack.shape), z=2)
>>> view.axes, view.video(stack).shape, view.to_layer([[1, 5, 7]]).tolist()
('TZYX', (4, 32, 40), [[1.0, 2.0, 5.0, 7.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...video.axes import LETTERS, Layout, parse_axes

__all__ = ["AXES_CHOICES", "default_axes", "check_axes", "VideoView"]

AXES_CHOICES = ("YX", "TYX", "ZYX", "TYXC", "ZYXC", "TZYX", "TZYXC", "YXC", "CTYX", "TCYX", "TZCYX")
"""The layouts offered in the widgets' axes selector (any other string may be typed)."""


def default_axes(shape: Sequence[int], rgb: bool = False, labels: Sequence[str] | None = None) -> str:
    """The axes string a layer of data ``shape`` most likely has.

    The layer's axis labels when they are letters of ``T Z Y X C`` (e.g. ``("t", "z", "y",
    "x")``), else from the number of dimensions: 2-D ``"YX"``, 3-D ``"TYX"``, 4-D ``"TZYX"``,
    5-D ``"TZCYX"`` (ImageJ's order); RGB layers (channels last) ``"YXC"``, ``"TYXC"``,
    ``"TZYXC"``.

    Raises
    ------
    ValueError
        Naming ``axes``, for other numbers of dimensions (the user must type them).

    Examples
    --------
    >>> default_axes((64, 64)), default_axes((5, 64, 64)), default_axes((5, 64, 64, 3), rgb=True)
    ('YX', 'TYX', 'TYXC')
    >>> default_axes((5, 8, 64, 64)), default_axes((5, 64, 64, 2), labels=("t", "y", "x", "c"))
    ('TZYX', 'TYXC')
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    if labels is not None:
        letters = "".join(str(lab).upper() for lab in labels)
        if rgb:
            letters += "C"
        if len(letters) == n and len(set(letters)) == n and set(letters) <= set(LETTERS) \
                and "Y" in letters and "X" in letters and (not rgb or letters.endswith("C")):
            return letters
    table = {3: "YXC", 4: "TYXC", 5: "TZYXC"} if rgb else {2: "YX", 3: "TYX", 4: "TZYX", 5: "TZCYX"}
    if n not in table:
        raise ValueError(f"axes: cannot guess the layout of {n}-D data {shape}; type its axes, a string over "
                         f"{', '.join(LETTERS)} (e.g. 'TZYX')")
    return table[n]


def check_axes(axes, shape: Sequence[int], rgb: bool = False) -> str:
    """``axes`` checked against a layer's data ``shape`` (upper case); ValueError naming ``axes``.

    An RGB layer's channels are its last axis, so its axes must end with ``C``.

    Examples
    --------
    >>> check_axes("zyx", (6, 32, 32))
    'ZYX'
    """
    if not isinstance(axes, str) or not axes.strip():
        raise ValueError(f"axes: expected a string over {', '.join(LETTERS)} such as 'TYX', got {axes!r}")
    a = parse_axes(axes.strip(), tuple(shape))
    if rgb and not a.endswith("C"):
        raise ValueError(f"axes: {axes!r}: an RGB layer has its colour channels last; end the axes with C")
    return a


@dataclass(frozen=True)
class VideoView:
    """One video ``(T, H, W[, C])`` of a layer whose data has ``shape`` and ``axes``.

    Attributes
    ----------
    shape : tuple of int
        The layer's data shape.
    axes : str
        Its layout (checked on creation).
    rgb : bool
        The layer shows its last axis (C) as colour: napari does not count it as a dimension.
    z : int
        With both T and Z: the z-slice whose time series is the view.
    c : int
        The channel shown, for overlays on a layer with a C axis that is not RGB.
    """

    shape: tuple
    axes: str
    rgb: bool = False
    z: int = 0
    c: int = 0

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "axes", check_axes(self.axes, self.shape, self.rgb))
        n = self.layout.size(self.layout.batch)
        if not 0 <= int(self.z) < n:
            raise ValueError(f"z: slice {self.z} outside the stack (0..{n - 1})")
        object.__setattr__(self, "z", int(self.z))
        object.__setattr__(self, "c", int(min(max(int(self.c), 0), self.layout.size("C") - 1)))

    @property
    def layout(self) -> Layout:
        return Layout(self.axes, self.shape)

    @property
    def time(self) -> str | None:
        """The searched letter: ``"T"``, ``"Z"`` or None (one image)."""
        return self.layout.time

    @property
    def batch(self) -> str | None:
        """``"Z"`` when the view is one z-slice's time series, else None."""
        return self.layout.batch

    @property
    def channels(self) -> int:
        return self.layout.size("C")

    @property
    def video_shape(self) -> tuple[int, ...]:
        """(T, H, W) or (T, H, W, C) (with a C axis) of :meth:`video`."""
        _, T, H, W, C = self.layout.video_shape
        return (T, H, W, C) if "C" in self.axes else (T, H, W)

    @property
    def whole(self) -> bool:
        """Whether the view is the whole layer (no z-slice picked out)."""
        return self.batch is None

    @property
    def layer_axes(self) -> str:
        """The letters of the layer's dimensions as napari counts them (without an RGB C)."""
        return self.axes[:-1] if self.rgb else self.axes

    def describe(self, which: bool = True) -> str:
        """What the widgets search, in a few words (``which``: name the z-slice of a TZYX view)."""
        T = self.video_shape[0]
        if self.time is None:
            what = "one image (searched within the frame)"
        elif self.batch is not None:
            nz = self.layout.size("Z")
            what = (f"the time series of z-slice {self.z} (of {nz}), {T} frames" if which else
                    f"the time series of the z-slice shown (of {nz}), {T} frames")
        elif self.time == "Z":
            what = f"the {T} z-slices, searched like frames"
        else:
            what = f"{T} frames"
        C = self.channels
        return what + (f", {C} channels" if C > 1 else "")

    def video(self, data):
        """``data`` (the layer's array) as the view's (T, H, W[, C]); a view where the array allows."""
        v = self.layout.to_video(data)[self.z]
        return v if "C" in self.axes else v[..., 0]

    def to_layer(self, points, displacement: bool = False) -> np.ndarray:
        """Positions ``(t, y, x)`` of the video, (N, 3), as the layer's data coordinates (N, ndim).

        The Z of a z-slice's view is that slice; C is the channel shown (:attr:`c`).
        ``displacement``: the rows are displacements (vectors' directions): 0 on those axes.
        """
        p = np.asarray(points, np.float64).reshape(-1, 3)
        cols = []
        for letter in self.layer_axes:
            if letter == self.time:
                cols.append(p[:, 0])
            elif letter == "Y":
                cols.append(p[:, 1])
            elif letter == "X":
                cols.append(p[:, 2])
            else:  # the z-slice of a TZYX view, or the channel shown
                fill = 0.0 if displacement else float(self.z if letter == "Z" else self.c)
                cols.append(np.full(len(p), fill))
        return np.stack(cols, 1)

    def from_layer(self, points) -> np.ndarray:
        """The layer's data coordinates (N, ndim) as the video's ``(t, y, x)`` (N, 3)."""
        p = np.asarray(points, np.float64)
        p = p.reshape(-1, p.shape[-1])
        if p.shape[1] != len(self.layer_axes):
            raise ValueError(f"points: expected {len(self.layer_axes)} coordinates ({self.layer_axes}), "
                             f"got {p.shape[1]}")
        la = self.layer_axes
        t = p[:, la.index(self.time)] if self.time is not None else np.zeros(len(p))
        return np.stack([t, p[:, la.index("Y")], p[:, la.index("X")]], 1)

    def slice_of(self, point) -> int | None:
        """The z-slice a layer data position lies on (None without a z-slice view)."""
        if self.batch is None:
            return None
        return int(round(float(np.asarray(point, np.float64)[self.layer_axes.index("Z")])))

    def embed(self, image) -> tuple[np.ndarray, np.ndarray]:
        """A (T, H, W) map or a (T, H, W[, C]) result of the view, as an array for a layer of its own
        placed over this one, and that layer's offset in this layer's data coordinates.

        Returns
        -------
        data : ndarray
            With the layer's dimensions (and an RGB layer's channels): a z-slice's view has one
            slice (placed by the offset), a map without channels is repeated (a read-only view)
            over a C axis, a one-image view loses its frame axis.
        offset : ndarray, shape (ndim,)
            Add it (through the layer's scale) to the layer's translate.
        """
        img = np.asarray(image)
        T, H, W = self.video_shape[:3]
        if img.shape[:3] != (T, H, W):
            raise ValueError(f"image: expected the view's frames {(T, H, W)}, got {img.shape}")
        has_c = img.ndim == 4
        C = img.shape[3] if has_c else 1
        axes = self.layer_axes if not has_c else self.axes  # a map on an RGB layer is grey
        target = tuple(1 if (a == "Z" and self.batch) else (C if a == "C" else self.shape[i])
                       for i, a in enumerate(axes))
        out = Layout(axes, target).from_video(img.reshape(1, T, H, W, C))
        if "C" in axes and not has_c and self.channels > 1:  # a map: the same on every channel
            shape = list(target)
            shape[axes.index("C")] = self.channels
            out = np.broadcast_to(out, tuple(shape))
        offset = np.array([float(self.z) if (a == "Z" and self.batch) else 0.0 for a in self.layer_axes])
        return out, offset
