"""Helpers every layer of the package may import (no Qt): atomic file writes, progress and
cancellation of long computations, and the one device resolver.

Progress and cancellation: long functions (denoisers, flow, tiled processing, region search)
take two optional keyword arguments:

``progress(done, total)``
    called after each unit of work (``done`` counts up to ``total``);
``should_stop()``
    polled between units; when it returns True the function raises :class:`Cancelled`
    before writing any result, so callers (the napari widgets' Cancel button, Ctrl-C on
    the command line) never see a half-made output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_path", "atomic_dir", "Cancelled", "Steps", "resolve_device"]


@contextmanager
def atomic_path(path, suffix: str | None = None, *, fsync: bool = False) -> Iterator[str]:
    """A temporary file name beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary file is created empty (so writers that open it by name work), ends with
    ``suffix`` (default: ``path``'s own, since some writers pick the format from it), gets
    the usual mode (0666 less the umask, not mkstemp's 0600) and is renamed over ``path``
    only after the block returns; on any error, Ctrl-C included, it is removed and ``path``
    is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("done")
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextmanager
def atomic_dir(path, suffix: str | None = None) -> Iterator[str]:
    """A temporary folder beside ``path`` that replaces ``path`` when the block succeeds.

    For outputs that are folders (zarr stores). The folder is created empty, ends with
    ``suffix`` (default: ``path``'s own) and gets the usual mode (0777 less the umask). When
    the block returns, an existing ``path`` (folder or file) is moved aside, the new folder
    renamed to ``path`` and the old one removed; on any error, Ctrl-C included, the temporary
    folder is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.zarr"
    >>> with atomic_dir(out) as tmp:
    ...     _ = (pathlib.Path(tmp) / "x").write_text("done")
    >>> (out / "x").read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['a.zarr'])
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                           dir=folder)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if os.path.lexists(path):  # a folder cannot be renamed over a folder that holds files
            old = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=folder)
            os.replace(path, os.path.join(old, "old"))
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:  # put the old one back
                os.replace(os.path.join(old, "old"), path)
                os.rmdir(old)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    napari_stnls._util.Cancelled: stopped by the caller
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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on.

    Parameters
    ----------
    device : None, str or torch.device
        None or ``"auto"`` (CUDA when a GPU is present, else the CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, or a torch.device of type cpu or cuda.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For anything else, or when CUDA is asked for and no CUDA GPU is available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return dev
