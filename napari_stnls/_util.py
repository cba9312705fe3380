"""Atomic file writes shared by every writer of the package (no Qt, no torch)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


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
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
