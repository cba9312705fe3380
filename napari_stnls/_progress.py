"""Progress reporting and cancellation shared by every long computation (no Qt).

Long functions (denoisers, flow, tiled processing, region search) take two optional
keyword arguments:

``progress(done, total)``
    called after each unit of work (``done`` counts up to ``total``);
``should_stop()``
    polled between units; when it returns True the function raises :class:`Cancelled`
    before writing any result, so callers (the napari widgets' Cancel button, Ctrl-C on
    the command line) never see a half-made output.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Cancelled", "Steps"]


class Cancelled(Exception):
    """A long computation was stopped by its caller's ``should_stop``."""


class Steps:
    """Counts units of work, reports them and checks for cancellation.

    Examples
    --------
    >>> seen = []
    >>> steps = Steps(3, progress=lambda d, t: seen.append((d, t)))
    >>> for _ in range(3):
    ...     steps.check()
    ...     steps.advance()
    >>> seen
    [(1, 3), (2, 3), (3, 3)]
    >>> Steps(1, should_stop=lambda: True).check()
    Traceback (most recent call last):
    ...
    napari_stnls._progress.Cancelled: stopped by the caller
    """

    def __init__(
        self,
        total: int,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if progress is not None and not callable(progress):
            raise TypeError("progress: expected a callable progress(done, total), "
                            f"got {type(progress).__name__}")
        if should_stop is not None and not callable(should_stop):
            raise TypeError("should_stop: expected a callable returning bool, "
                            f"got {type(should_stop).__name__}")
        self.total = int(total)
        self.done = 0
        self._progress = progress
        self._should_stop = should_stop

    def check(self) -> None:
        """Raise :class:`Cancelled` when the caller asked to stop."""
        if self._should_stop is not None and self._should_stop():
            raise Cancelled("stopped by the caller")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` units done and report them."""
        self.done += n
        if self._progress is not None:
            self._progress(self.done, self.total)
