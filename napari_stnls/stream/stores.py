"""Where the tiles go: a zarr or ``.npy`` output and its record of finished tiles (resuming).

An output path ``OUT`` is written as ``OUT.partial`` until its last tile is in, then renamed
to ``OUT``: an interrupted run never leaves an incomplete store under the final name. The
record ``OUT.tiles.json`` says which tiles are done; the same call resumes from
``OUT.partial`` (or finds ``OUT`` complete: nothing to do).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np

from .._util import atomic_path

__all__ = ["TileStore", "RECORD_VERSION"]

RECORD_VERSION = 1


def _writable(path: Path) -> bool:
    """Whether ``path`` (a file or folder) may be written: permission and its write bits."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _atomic_json(path: Path, obj) -> None:
    with atomic_path(path, ".tmp", fsync=True) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)


class TileStore:
    """An output store (``.zarr`` or ``.npy`` path, or a zarr array) and its record of tiles.

    A path is written under :attr:`partial` (``OUT.partial``) and renamed to ``OUT`` by
    :meth:`finish`; :attr:`path` is where the data is now.
    """

    def __init__(self, out, shape, dtype, chunks, fingerprint: dict, overwrite: bool):
        self.fingerprint = fingerprint
        self.zarr = None
        if not isinstance(out, (str, Path)):
            if not all(hasattr(out, a) for a in ("attrs", "shape", "dtype", "read_only")):
                raise TypeError("out: expected a .zarr or .npy path or a zarr array, "
                                f"got {type(out).__name__}")
            if out.read_only:
                raise ValueError("out: the zarr array is read-only")
            if tuple(out.shape) != tuple(shape):
                raise ValueError(f"out: expected a zarr array of shape {tuple(shape)}, "
                                 f"got {tuple(out.shape)}")
            self.zarr, self.path, self.record = out, None, None
            rec = dict(out.attrs.get("napari_stnls_tiles", {}))
            self.done = set(rec.get("done", [])) if rec.get("fingerprint") == fingerprint else set()
            return
        path = Path(out)
        self.final = path
        self.partial = path.with_name(path.name + ".partial")
        self.path = path
        self.kind = path.suffix.lower()
        if self.kind not in (".zarr", ".npy"):
            raise ValueError(f"out: expected a .zarr or .npy path, got {path}")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise ValueError(f"out: folder does not exist: {folder}")
        if not _writable(folder):
            raise ValueError(f"out: folder is not writable: {folder}")
        self.record = path.with_name(path.name + ".tiles.json")
        rec = None
        if self.record.exists():
            try:
                rec = json.loads(self.record.read_text())
            except (OSError, ValueError):
                rec = None
        resumable = rec is not None and rec.get("fingerprint") == fingerprint
        for where in (path, self.partial):  # the finished output, else an unfinished one
            if not where.exists():
                continue
            if not _writable(where) or (where.is_dir() and any(not _writable(p) for p in where.iterdir())):
                raise ValueError(f"out: {where} is read-only")
            if not resumable and not overwrite:
                if where == path:
                    why = "another run's output" if rec is not None else \
                        "not an unfinished output of this call"
                    raise ValueError(f"out: {path} exists and is {why}; pass overwrite=True (--overwrite) to "
                                     "replace it")
                why = "another run's" if rec is not None else "an unrecorded"
                raise ValueError(f"out: {where} is {why} unfinished output; pass overwrite=True "
                                 "(--overwrite) to replace it")
            if resumable and not overwrite:
                self.path = where
                self.done = set(rec.get("done", []))
                self._open()
                return
        for where in (path, self.partial):
            self._remove(where)
        self.path = self.partial
        self._create(shape, dtype, chunks)
        self.done = set()
        self._save()

    @staticmethod
    def _remove(where: Path) -> None:
        if where.is_dir():
            shutil.rmtree(where)
        elif where.exists():
            where.unlink()

    def finish(self) -> None:
        """Rename ``OUT.partial`` to ``OUT`` once every tile is written (nothing for a zarr array
        or an output already complete)."""
        if self.record is None or self.path == self.final:
            return
        os.replace(self.partial, self.final)
        self.path = self.final
        self._open()

    def _create(self, shape, dtype, chunks) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            if self.kind == ".npy":
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
                mm.flush()
                del mm
            else:
                import zarr

                zarr.open_array(str(tmp), mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
                                fill_value=0)
            os.replace(tmp, self.path)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
            raise
        self._open()

    def _open(self) -> None:
        if self.kind == ".zarr":
            import zarr

            self.zarr = zarr.open_array(str(self.path), mode="r+")

    def _save(self) -> None:
        rec = {"version": RECORD_VERSION, "fingerprint": self.fingerprint, "done": sorted(self.done)}
        if self.path is None:
            self.zarr.attrs["napari_stnls_tiles"] = rec
        else:
            _atomic_json(self.record, rec)

    def write(self, index: int, region: tuple[slice, ...], values: np.ndarray) -> None:
        """Write one tile, flush it, then record it as done."""
        if self.zarr is not None:
            self.zarr[region] = values  # each chunk is written whole (zarr: temp file, then rename)
        else:
            mm = np.load(self.path, mmap_mode="r+", allow_pickle=False)
            mm[region] = values
            mm.flush()
            del mm  # unmapped: written pages leave this process's RSS
        self.done.add(index)
        self._save()
