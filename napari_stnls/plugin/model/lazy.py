"""Frames computed in the background: an array whose reads never wait (no Qt).

napari reads a layer's current frame in its GUI thread; a lazy (dask) layer whose frames
take seconds to compute would freeze the viewer for that long on every new frame.
:class:`BackgroundFrames` is an array-like napari can show instead: reading a frame that
is ready returns it, and reading one that is not returns a placeholder at once and asks a
background thread to compute it, the frame asked for last first and the next ones
after it (prefetch). When a frame is ready, ``on_ready(t)`` is called (from the
background thread) so the viewer can redraw.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["BackgroundFrames"]

_LIVE: weakref.WeakSet = weakref.WeakSet()  # every BackgroundFrames not yet collected


@atexit.register
def _shutdown(timeout: float = 600.0) -> None:
    """At exit, stop every background thread and wait for the frame it is computing: a daemon
    thread stopped by the interpreter inside a torch call aborts the process."""
    live = list(_LIVE)
    for frames in live:
        frames.close()
    for frames in live:
        frames.join(timeout)


class BackgroundFrames:
    """A (T, ...) array whose frames ``compute(t)`` makes in a background thread.

    Parameters
    ----------
    compute : callable
        ``compute(t) -> ndarray`` of shape ``shape[1:]``: frame t. Runs in the background
        thread, one frame at a time.
    shape : tuple of int
        (T, ...) of the whole array.
    dtype : dtype
        Of the frames (and of the placeholder).
    prefetch : int
        Frames after the one asked for that are computed next, while nothing else is asked.
    max_bytes : int
        Ready frames kept (least recently read dropped first); at least the ``prefetch + 1``
        last ones whatever their size.
    on_ready, on_error : callable, optional
        ``on_ready(t)`` when frame t is ready; ``on_error(t, exc)`` when computing it raised
        (the frame stays a placeholder and is not tried again). Both are called from the
        background thread.
    placeholder : callable, optional
        ``placeholder(t) -> ndarray`` shown until frame t is ready; default zeros.
    paused : bool
        Start paused: reads queue nothing until :meth:`resume`, which queues the frames of
        the last read (so that reads made while a viewer sets the layer up, e.g. of frame 0
        before it is placed at the current frame, cost nothing).

    Notes
    -----
    It has what napari asks of layer data (``shape``, ``dtype``, ``ndim``, ``size`` and
    ``__getitem__``); ``np.asarray`` of it computes nothing either. ``close()`` stops the
    thread after the frame in progress.

    Examples
    --------
    >>> import numpy as np
    >>> frames = BackgroundFrames(lambda t: np.full((2, 3), t, np.float32), (4, 2, 3), np.float32)
    >>> frames[2].max()  # not ready yet: the placeholder, and frame 2 is queued
    np.float32(0.0)
    >>> frames.wait(2, timeout=10)
    True
    >>> frames[2].max(), frames.is_ready(2)
    (np.float32(2.0), True)
    >>> frames.close()
    """

    def __init__(self, compute: Callable[[int], np.ndarray], shape: Sequence[int], dtype, *,
                 prefetch: int = 2, max_bytes: int = 1 << 30, on_ready: Callable[[int], None] | None = None,
                 on_error: Callable[[int, BaseException], None] | None = None,
                 placeholder: Callable[[int], np.ndarray] | None = None, paused: bool = False):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape: expected (T, ...) with every size >= 1, got {shape}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch: expected an int >= 0, got {prefetch!r}")
        self._compute = compute
        self._shape = shape
        self._dtype = np.dtype(dtype)
        self.prefetch = prefetch
        self.max_bytes = int(max_bytes)
        self.on_ready = on_ready
        self.on_error = on_error
        self._placeholder = placeholder
        self._ready: OrderedDict[int, np.ndarray] = OrderedDict()
        self.errors: dict[int, BaseException] = {}
        self._queue: list[int] = []
        self.computing: int | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._paused = bool(paused)
        self._last: list[int] = []
        self._thread = threading.Thread(target=self._run, name="napari-stnls frames", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # --- what napari reads ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._shape))

    def __len__(self) -> int:
        return self._shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(n for n, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        T = self._shape[0]
        if isinstance(first, int | np.integer):
            t = int(first) + T if int(first) < 0 else int(first)
            if not 0 <= t < T:
                raise IndexError(f"index {int(first)} is out of bounds for axis 0 with size {T}")
            self._ask([t])
            return self._get(t)[rest] if rest else self._get(t)
        ts = list(np.arange(T)[first])
        self._ask(ts)
        if not ts:
            return np.zeros((0, *self._shape[1:]), self._dtype)[(slice(None), *rest)]
        stack = np.stack([self._get(int(t)) for t in ts])
        return stack[(slice(None), *rest)] if rest else stack

    # --- state ---------------------------------------------------------------------------
    def is_ready(self, t: int) -> bool:
        """Whether frame t is computed (and kept)."""
        with self._cond:
            return int(t) in self._ready

    def failed(self, t: int) -> BaseException | None:
        return self.errors.get(int(t))

    def pending(self) -> list[int]:
        """The frames waiting, in the order they will be computed."""
        with self._cond:
            return list(self._queue)

    def wait(self, t: int, timeout: float | None = None) -> bool:
        """Ask for frame t and block until it is ready or failed (for scripts and tests, never the GUI)."""
        t = int(t)
        self._ask([t])
        with self._cond:
            self._cond.wait_for(lambda: t in self._ready or t in self.errors or self._closed, timeout)
            return t in self._ready

    def resume(self) -> None:
        """Start computing (see ``paused``): the frames of the last read first."""
        with self._cond:
            self._paused = False
            last = self._last
        if last:
            self._ask(last)

    def close(self) -> None:
        """Stop the background thread (after the frame it is computing) and drop the frames."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._ready.clear()
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the background thread to end (after :meth:`close`); whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- inside --------------------------------------------------------------------------
    def _get(self, t: int) -> np.ndarray:
        with self._cond:
            frame = self._ready.get(t)
            if frame is not None:
                self._ready.move_to_end(t)
                return frame
        if self._placeholder is not None:
            return np.asarray(self._placeholder(t), dtype=self._dtype)
        return np.zeros(self._shape[1:], self._dtype)

    def _ask(self, ts: list[int]) -> None:
        """Put the frames read now first in the queue, then the ``prefetch`` frames after the
        last one; frames asked before and no longer wanted are dropped."""
        T = self._shape[0]
        last = ts[-1] if ts else None
        wanted = list(ts) + ([] if last is None else list(range(last + 1, min(T, last + 1 + self.prefetch))))
        with self._cond:
            if self._closed:
                return
            if self._paused:
                self._last = list(ts)
                return
            queue = []
            for t in wanted:
                if t not in self._ready and t not in self.errors and t != self.computing and t not in queue:
                    queue.append(t)
            if queue != self._queue:
                self._queue = queue
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                t = self._queue.pop(0)
                self.computing = t
            try:
                frame = np.asarray(self._compute(t), dtype=self._dtype)
                if frame.shape != self._shape[1:]:
                    raise ValueError(f"compute: frame {t} has shape {frame.shape}, "
                                     f"expected {self._shape[1:]}")
            except Exception as e:  # reported, never retried
                with self._cond:
                    self.computing = None
                    self.errors[t] = e
                    self._cond.notify_all()
                if self.on_error is not None and not self._closed:
                    self.on_error(t, e)
                continue
            with self._cond:
                self.computing = None
                if self._closed:
                    return
                self._ready[t] = frame
                self._trim()
                self._cond.notify_all()
            if self.on_ready is not None:
                self.on_ready(t)

    def _trim(self) -> None:
        keep = self.prefetch + 1
        while len(self._ready) > keep and sum(f.nbytes for f in self._ready.values()) > self.max_bytes:
            self._ready.popitem(last=False)
