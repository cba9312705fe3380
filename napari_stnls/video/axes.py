"""Array layouts named by an axes string (``"TYX"``, ``"TZYXC"``, ``"CTYX"``, ...), and their
conversion to and from the one layout the denoisers work in: ``(N, T, H, W, C)``.

The letters are ``T`` (time), ``Z`` (depth), ``Y`` and ``X`` (rows and columns, both
required) and ``C`` (channels, any number), each at most once, in any order. The *searched*
axis, the one whose neighbouring entries are searched like neighbouring frames, is ``T``, or
``Z`` when there is no ``T`` (a z-stack is searched slice to slice). With both ``T`` and ``Z``
each z-slice's time series is a video of its own: ``Z`` becomes the batch axis ``N``. A
single image (``"YX"``, ``"YXC"``) is a video of one frame.

Without an axes string, the layout is inferred from the number of dimensions:
(H, W) is ``"YX"``, (T, H, W) is ``"TYX"`` and (T, H, W, C) with C <= 4 is ``"TYXC"``; other
shapes need ``axes``.

Examples
--------
>>> import numpy as np
>>> stack = np.zeros((4, 5, 32, 48, 2))          # a time-lapse of z-stacks, 2 channels
>>> video, back = to_video(stack, "TZYXC")
>>> video.shape                                   # (N, T, H, W, C): one video per z-slice
(5, 4, 32, 48, 2)
>>> back(video).shape
(4, 5, 32, 48, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LETTERS", "Layout", "parse_axes", "infer_axes", "to_video"]

LETTERS = "TZYXC"


def infer_axes(shape) -> str:
    """The default axes string of an array of ``shape``: ``"YX"``, ``"TYX"`` or ``"TYXC"``.

    Raises
    ------
    ValueError
        Naming ``axes``, for other numbers of dimensions, or four dimensions whose last is
        longer than 4 (channels? depth?), which must be named.

    Examples
    --------
    >>> infer_axes((10, 64, 64)), infer_axes((10, 64, 64, 3)), infer_axes((64, 64))
    ('TYX', 'TYXC', 'YX')
    """
    shape = tuple(shape)
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "TYX"
    if len(shape) == 4 and shape[-1] <= 4:
        return "TYXC"
    raise ValueError(f"axes: cannot infer the layout of an array of shape {shape}; pass axes, a string over "
                     f"the letters {', '.join(LETTERS)}, e.g. 'TZYX' or 'TYXC'")


def parse_axes(axes: str | None, shape) -> str:
    """``axes`` checked against ``shape`` (upper-cased), or inferred when None.

    Raises
    ------
    ValueError
        Naming ``axes``: not a string, a letter outside ``T Z Y X C``, a repeated letter,
        ``Y`` or ``X`` missing, or a length other than the number of dimensions.
    TypeError
        When ``axes`` is neither None nor a string.

    Examples
    --------
    >>> parse_axes("tzyx", (3, 4, 16, 16))
    'TZYX'
    """
    shape = tuple(shape)
    if axes is None:
        return infer_axes(shape)
    if not isinstance(axes, str):
        raise TypeError(f"axes: expected a string over the letters {', '.join(LETTERS)}, "
                        f"got {type(axes).__name__}")
    a = axes.upper()
    bad = sorted({c for c in a if c not in LETTERS})
    if bad:
        raise ValueError(f"axes: {axes!r} has letters {bad}; expected a string over {', '.join(LETTERS)}, "
                         "e.g. 'TYX', 'ZYX', 'TZYXC'")
    if len(set(a)) != len(a):
        raise ValueError(f"axes: {axes!r} repeats a letter")
    if "Y" not in a or "X" not in a:
        raise ValueError(f"axes: {axes!r} must contain Y and X (rows and columns)")
    if len(a) != len(shape):
        raise ValueError(f"axes: {axes!r} names {len(a)} axes but the array has {len(shape)} dimensions "
                         f"(shape {shape})")
    return a


@dataclass(frozen=True)
class Layout:
    """An array's axes and shape, and where each goes in (N, T, H, W, C).

    Attributes
    ----------
    axes : str
        The checked axes string, upper case.
    shape : tuple of int
        The array's shape.
    time : str or None
        The searched axis: ``"T"``, ``"Z"`` (a z-stack without time) or None (one image).
    batch : str or None
        ``"Z"`` when the array has both ``T`` and ``Z``, else None.
    """

    axes: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, shape, axes: str | None = None) -> Layout:
        """The layout of an array of ``shape`` with ``axes`` (inferred when None)."""
        shape = tuple(int(s) for s in shape)
        return cls(parse_axes(axes, shape), shape)

    @property
    def time(self) -> str | None:
        return "T" if "T" in self.axes else ("Z" if "Z" in self.axes else None)

    @property
    def batch(self) -> str | None:
        return "Z" if "T" in self.axes and "Z" in self.axes else None

    def size(self, letter: str | None) -> int:
        return 1 if letter is None or letter not in self.axes else self.shape[self.axes.index(letter)]

    @property
    def video_shape(self) -> tuple[int, int, int, int, int]:
        """(N, T, H, W, C) of the converted array."""
        return (self.size(self.batch), self.size(self.time), self.size("Y"), self.size("X"), self.size("C"))

    def _present(self) -> list[str]:
        """The array's letters in (N, T, H, W, C) order."""
        return [s for s in (self.batch, self.time, "Y", "X", "C") if s is not None and s in self.axes]

    def to_video(self, array):
        """``array`` (with this layout's shape) as (N, T, H, W, C); a view where the array allows."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array: expected shape {self.shape} for axes {self.axes!r}, "
                             f"got {tuple(array.shape)}")
        present = self._present()
        perm = [self.axes.index(s) for s in present]
        moved = _transpose(array, perm)
        return moved.reshape(self.video_shape)

    def from_video(self, video):
        """The inverse of :meth:`to_video`: (N, T, H, W, C) back to this layout's axes and shape."""
        if tuple(video.shape) != self.video_shape:
            raise ValueError(f"video: expected shape {self.video_shape} (N, T, H, W, C), "
                             f"got {tuple(video.shape)}")
        present = self._present()
        moved_shape = tuple(self.shape[self.axes.index(s)] for s in present)
        moved = video.reshape(moved_shape)
        perm = [present.index(s) for s in self.axes]
        return _transpose(moved, perm)


def _transpose(array, perm):
    if hasattr(array, "permute"):  # torch
        return array.permute(*perm)
    return array.transpose(perm)


def to_video(array, axes: str | None = None) -> tuple[object, Callable]:
    """``array`` as (N, T, H, W, C) and the function that takes such a result back.

    Parameters
    ----------
    array : array-like (NumPy, dask, zarr-backed, torch)
        Any layout that ``axes`` names.
    axes : str, optional
        Over ``T Z Y X C``; None infers it from the number of dimensions (:func:`infer_axes`).

    Returns
    -------
    video : same type as ``array``, shape (N, T, H, W, C)
        N is the number of z-slices when the array has both T and Z, else 1; T the length of
        the searched axis (T, or Z without T; 1 for an image); C the channels (1 without C).
    inverse : callable
        ``inverse(result)`` with ``result`` of shape (N, T, H, W, C) returns it in the layout
        and shape of ``array``.

    Examples
    --------
    >>> import numpy as np
    >>> v, back = to_video(np.zeros((6, 32, 40)), "ZYX")    # a z-stack: slices searched as frames
    >>> v.shape, back(v).shape
    ((1, 6, 32, 40, 1), (6, 32, 40))
    >>> v, back = to_video(np.zeros((2, 5, 32, 40)), "CTYX")
    >>> v.shape, back(v).shape
    ((1, 5, 32, 40, 2), (2, 5, 32, 40))
    """
    if not hasattr(array, "shape"):
        raise TypeError(f"array: expected an array with a shape, got {type(array).__name__}")
    layout = Layout.of(array.shape, axes)
    return layout.to_video(array), layout.from_video

