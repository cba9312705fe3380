"""The compiled kernels (``napari_stnls._C``) and the one guard that decides, per call, whether
an op runs them or its pure-PyTorch reference twin.

Loading the library registers the operator schemas and their CPU/CUDA kernels
(``torch.ops.napari_stnls.*``); PyTorch's dispatcher then picks the kernel of the tensors'
device. Import never fails for lack of a build: :data:`LOAD_ERROR` records why, and one
warning says that every op uses the reference.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["BACKENDS", "ENV", "LOAD_ERROR", "OPS", "backend_info", "has_kernel", "reference_reason",
           "use_compiled"]

OPS = ("search", "refine", "iunfold", "ifold", "gather", "scatter", "aggregate")
BACKENDS = ("reference", "cpu", "cuda")
ENV = "NAPARI_STNLS_BACKEND"

LOAD_ERROR: str | None = None
try:
    from .. import _C  # noqa: F401  (loading the library registers the operators)
except (ImportError, OSError) as e:  # missing build, or built against another torch
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(
        "napari-stnls: the compiled kernels are not available "
        f"({LOAD_ERROR}); every op uses the pure-PyTorch reference backend. Rebuild with "
        "`pip install --no-build-isolation -e .` against the installed torch.",
        RuntimeWarning,
        stacklevel=2,
    )

# The operators each public op calls (forward, backward, and the kernels it chooses between).
OPERATORS = {
    "search": ("search_topk", "search_topk_box", "search_positions_int", "search_positions",
               "search_centres", "search_dists", "search_dists_backward"),
    "refine": ("refine_topk", "search_dists", "search_dists_backward"),
    "iunfold": ("iunfold_patches", "ifold_patches"),
    "ifold": ("ifold_patches", "iunfold_patches"),
    "gather": ("gather_patches", "gather_patches_backward"),
    "scatter": ("scatter_patches", "scatter_patches_backward"),
    # the fused kernels, and gather then scatter where a gradient is needed
    "aggregate": ("aggregate_patches", "aggregate_grid", "gather_patches", "gather_patches_backward",
                  "scatter_patches", "scatter_patches_backward"),
}


def _built(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"napari_stnls::{name}", key)
               for name in OPERATORS[op])


# read once at import: the build does not change, and torch.compile traces a dict look-up
_HAS_KERNEL = {(op, dev): LOAD_ERROR is None and _built(op, dev) for op in OPS for dev in ("cpu", "cuda")}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether this build has the compiled kernels of the public op ``op`` ("search", "gather",
    ...) for ``device_type`` ("cpu", "cuda"; any other device type has none)."""
    return _HAS_KERNEL.get((op, device_type), False)


def _requested(backend: str | None) -> str | None:
    """``backend``, or the default of the environment variable when it is None (None: automatic)."""
    if backend is None:
        val = os.environ.get(ENV, "").strip().lower() or None
        if val is not None and val not in BACKENDS + ("auto",):
            raise ValueError(f"{ENV}: expected one of {BACKENDS + ('auto',)}, got {val!r}")
        return None if val == "auto" else val
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected None or one of {BACKENDS}, got {backend!r}")
    return backend


def _missing(op: str, device_type: str) -> str | None:
    """Why this build cannot run ``op`` on ``device_type``, or None."""
    if LOAD_ERROR is not None:
        return f"the compiled kernels failed to load ({LOAD_ERROR})"
    if not has_kernel(op, device_type):
        return f"this build has no {device_type} kernel for {op}"
    return None


def reference_reason(op: str, backend: str | None, device: torch.device | str,
                     unsupported: str | None = None) -> str | None:
    """Why ``op`` runs its pure-PyTorch reference twin for ``backend`` on tensors on ``device``,
    or None when it runs the compiled kernels.

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    backend : {None, "reference", "cpu", "cuda"}
        The op's ``backend`` argument; None takes the default of ``NAPARI_STNLS_BACKEND``
        (unset or "auto": automatic).
    device : torch.device or str
        The device of the op's tensors.
    unsupported : str, optional
        Why the compiled kernels cannot take this call (e.g. "the compiled search takes
        ps <= 32 ..."), or None.

    Raises
    ------
    ValueError
        If ``backend`` is unknown, or names a compiled backend that cannot run this call: not
        built (or failed to load), another device than the tensors', or an unsupported case.
    """
    device_type = torch.device(device).type
    backend = _requested(backend)
    if backend == "reference":
        return "backend='reference' was asked for"
    missing = _missing(op, device_type if backend is None else backend)
    if backend is None:
        return missing or unsupported
    if missing is not None:
        raise ValueError(f"backend: {backend!r} is not available for {op}: {missing}")
    if backend != device_type:
        raise ValueError(
            f"backend: {backend!r} cannot run {op} on tensors on {device_type}; move them or pick "
            f"backend='reference'"
        )
    if unsupported is not None:
        raise ValueError(f"backend: {unsupported}; use backend='reference'")
    return None


def use_compiled(op: str, backend: str | None, device: torch.device | str,
                 unsupported: str | None = None) -> bool:
    """The guard of every op: True to call ``torch.ops.napari_stnls``, False for the reference
    twin (:func:`reference_reason` says why, and raises for a compiled backend that cannot run)."""
    return reference_reason(op, backend, device, unsupported) is None


def backend_info(reasons: bool = False) -> dict[str, dict[str, str]] | dict[str, dict[str, dict]]:
    """Which backend each op uses on each device with ``backend=None``, and why.

    Parameters
    ----------
    reasons : bool
        Also say why the reference runs where it does.

    Returns
    -------
    dict
        ``{op: {"cpu": name, "cuda": name}}`` for the seven ops (search, refine, iunfold, ifold,
        gather, scatter, aggregate), ``name`` being "reference", "cpu" or "cuda", or "unavailable"
        where ``NAPARI_STNLS_BACKEND`` names a compiled backend that cannot run there. With
        ``reasons=True``, each value is ``{"backend": name, "reason": why}`` instead, ``why``
        being None where the compiled kernels run. The calls that the compiled kernels do not
        take (search and refine with ps > 32 or pt > 8, search with k > 256 and refine with k > 128
        on CUDA; gather, scatter and aggregate with ps > 32 or pt > 8) run the reference in any case.

    Examples
    --------
    >>> backend_info()["search"]["cpu"] in ("reference", "cpu")
    True
    >>> backend_info(reasons=True)["aggregate"]["cuda"]["backend"] in ("reference", "cuda")
    True
    """
    out: dict = {}
    for op in OPS:
        out[op] = {}
        for dev in ("cpu", "cuda"):
            try:
                why = reference_reason(op, None, dev)
                name = "reference" if why is not None else dev
            except ValueError as e:  # NAPARI_STNLS_BACKEND names a backend that cannot run here
                why, name = str(e), "unavailable"
            out[op][dev] = {"backend": name, "reason": why} if reasons else name
    return out
