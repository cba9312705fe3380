"""Per-op, per-device backend choice.

Every op is registered here with its pure-PyTorch reference implementation. Compiled
kernels (``csrc/``) register under ``"cpu"`` / ``"cuda"`` when their extension is built;
callers never change. ``backend=None`` picks the compiled kernel for the tensor's device
when it exists, else the reference; ``NAPARI_STNLS_BACKEND`` sets the default.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

OPS = ("search", "iunfold", "ifold", "gather", "scatter")
BACKENDS = ("reference", "cpu", "cuda")
ENV = "NAPARI_STNLS_BACKEND"

_impls: dict[str, dict[str, Callable]] = {op: {} for op in OPS}


def register(op: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as ``op``'s implementation on ``backend``."""
    if op not in _impls or backend not in BACKENDS:
        raise ValueError(f"unknown op/backend {op!r}/{backend!r}")
    _impls[op][backend] = fn


def _default() -> str | None:
    val = os.environ.get(ENV, "").strip().lower() or None
    if val is not None and val not in BACKENDS + ("auto",):
        raise ValueError(f"{ENV}: expected one of {BACKENDS + ('auto',)}, got {val!r}")
    return None if val == "auto" else val


def resolve(op: str, backend: str | None, device: torch.device) -> Callable:
    """The implementation of ``op`` for ``backend`` (None: automatic) on ``device``."""
    if backend is None:
        backend = _default()
    if backend is None:
        fn = _impls[op].get(device.type)
        return fn if fn is not None else _impls[op]["reference"]
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected None or one of {BACKENDS}, got {backend!r}")
    if backend not in _impls[op]:
        from ._ext import LOAD_ERROR

        why = (
            f"the compiled kernels failed to load ({LOAD_ERROR})"
            if LOAD_ERROR
            else f"this build has no {backend} kernel for {op}"
        )
        raise ValueError(f"backend: {backend!r} is not available for {op}: {why}")
    if backend != "reference" and backend != device.type:
        raise ValueError(
            f"backend: {backend!r} cannot run {op} on tensors on {device}; move them or pick "
            f"backend='reference'"
        )
    return _impls[op][backend]


def backend_info() -> dict[str, dict[str, str]]:
    """Which backend each op uses on each device with ``backend=None``.

    Returns
    -------
    dict
        ``{op: {"cpu": name, "cuda": name}}``.

    Examples
    --------
    >>> backend_info()["search"]["cpu"] in ("reference", "cpu")
    True
    """
    out = {}
    for op in OPS:
        out[op] = {}
        for dev in ("cpu", "cuda"):
            fn = resolve(op, None, torch.device(dev))
            out[op][dev] = dev if _impls[op].get(dev) is fn else "reference"
    return out
