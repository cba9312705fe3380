"""Batched eigen-decomposition of small symmetric matrices for the denoisers.

``nl_bayes`` decomposes the covariance of every group of patches: batches of about 1e5
symmetric matrices of size D = 50 (one colour channel, ``pt * ps * ps``) to 150 (the
channels together). ``torch.linalg.eigh`` on CUDA solves batches of matrices larger than
32 x 32 one matrix at a time, so on CUDA :func:`batched_eigh` runs the compiled
parallel-ordered cyclic Jacobi kernel (``torch.ops.napari_stnls.eigh_jacobi``, one thread
block per matrix, the matrix and its eigenvectors in shared memory; ``csrc/cuda/eigh_cuda.cu``)
and, elsewhere, LAPACK through ``torch.linalg.eigh``. The kernel's CPU twin (the same steps,
``csrc/cpu/eigh_cpu.cpp``) is there for the tests: ``method="jacobi"`` on the CPU.
"""

from __future__ import annotations

import functools

import torch

from .. import ops  # noqa: F401  (loads the compiled module and registers the fake kernel)

__all__ = ["batched_eigh", "jacobi_available"]

METHODS = ("jacobi", "lapack")
# default (max_sweeps, tol) per dtype: the Jacobi sweeps stop once the off-diagonal Frobenius
# norm is at most tol times the matrix's (float32 matrices of D = 50 take 8-10 sweeps)
_DEFAULTS = {torch.float32: (15, 1e-6), torch.float64: (20, 1e-14)}


def _has_op(device_type: str) -> bool:
    if not hasattr(torch.ops.napari_stnls, "eigh_jacobi"):  # no build, or one older than the solver
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return key is not None and has("napari_stnls::eigh_jacobi", key)


def _shared_bytes(D: int, itemsize: int) -> int:
    """Shared memory the CUDA kernel needs per matrix (``Layout::bytes`` in eigh_cuda.cu, plus
    its one static int)."""
    n = D + D % 2
    return (2 * D * (D | 1) + 4 * (n // 2) + 32) * itemsize + 4 * n + 4


def jacobi_available(device: torch.device | str, D: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the compiled Jacobi solver can take (N, D, D) matrices of ``dtype`` on ``device``.

    On CUDA the matrix and its eigenvectors must fit the shared memory a block may opt in to:
    on an H100 (227 KB) D <= 169 in float32 and D <= 119 in float64.

    Examples
    --------
    >>> jacobi_available("cpu", 50, torch.float16)  # float32 and float64 only
    False
    """
    device = torch.device(device)
    if dtype not in _DEFAULTS or not _has_op(device.type):
        return False
    if device.type != "cuda":
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _shared_bytes(int(D), torch.tensor([], dtype=dtype).element_size()) <= _shared_limit(index)


@functools.lru_cache
def _shared_limit(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", 48 * 1024)


def batched_eigh(
    cov: torch.Tensor,
    *,
    method: str | None = None,
    max_sweeps: int | None = None,
    tol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of a batch of small symmetric matrices, like
    ``torch.linalg.eigh``, on the GPU without solving one matrix at a time.

    Parameters
    ----------
    cov : Tensor, shape (N, D, D)
        Symmetric matrices, float32 or float64; only the lower triangle is read.
    method : {None, "jacobi", "lapack"}
        ``"jacobi"``: the compiled parallel-ordered cyclic Jacobi solver on ``cov``'s device
        (CUDA, or its CPU twin); ``"lapack"``: ``torch.linalg.eigh``. None (default): Jacobi on
        CUDA where the build has it and the matrices fit (:func:`jacobi_available`), LAPACK
        elsewhere.
    max_sweeps : int, optional
        Most Jacobi sweeps (default 15 for float32, 20 for float64).
    tol : float, optional
        Jacobi stops once the off-diagonal Frobenius norm is at most ``tol`` times the
        matrix's (default 1e-6 for float32, 1e-14 for float64).

    Returns
    -------
    values : Tensor, shape (N, D)
        In ascending order, in ``cov``'s dtype.
    vectors : Tensor, shape (N, D, D)
        ``vectors[n, :, j]`` is the unit eigenvector of ``values[n, j]``.

    Raises
    ------
    TypeError
        If ``cov`` is not a float32 or float64 tensor.
    ValueError
        If ``cov`` is not (N, D, D), or ``method``, ``max_sweeps`` or ``tol`` are invalid, or
        ``method="jacobi"`` cannot run here.

    Examples
    --------
    >>> a = torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])
    >>> values, vectors = batched_eigh(a)
    >>> torch.allclose(values, torch.tensor([[1.0, 3.0]]))
    True
    >>> torch.allclose(vectors @ torch.diag_embed(values) @ vectors.mT, a)
    True
    """
    if not isinstance(cov, torch.Tensor):
        raise TypeError(f"cov: expected a torch.Tensor, got {type(cov).__name__}")
    if cov.dtype not in _DEFAULTS:
        raise TypeError(f"cov: expected float32 or float64, got {cov.dtype}")
    if cov.ndim != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"cov: expected (N, D, D) square matrices, got shape {tuple(cov.shape)}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method: expected None or one of {METHODS}, got {method!r}")
    sweeps, tolerance = _DEFAULTS[cov.dtype]
    if max_sweeps is not None:
        if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 0:
            raise ValueError(f"max_sweeps: expected an int >= 0, got {max_sweeps!r}")
        sweeps = max_sweeps
    if tol is not None:
        if not tol >= 0:  # also NaN
            raise ValueError(f"tol: expected >= 0, got {tol!r}")
        tolerance = float(tol)
    D = cov.shape[-1]
    if method is None:
        on_gpu = cov.device.type == "cuda" and jacobi_available(cov.device, D, cov.dtype)
        method = "jacobi" if on_gpu else "lapack"
    if method == "lapack":
        return torch.linalg.eigh(cov)
    if not jacobi_available(cov.device, D, cov.dtype):
        if _has_op(cov.device.type):
            why = f"{D} x {D} {cov.dtype} matrices exceed the GPU's shared memory per block"
        else:
            why = (f"this build has no {cov.device.type} kernel for eigh_jacobi (or none at all: "
                   "see napari_stnls.ops.backend_info(reasons=True))")
        raise ValueError(f"method: 'jacobi' cannot run here: {why}")
    return torch.ops.napari_stnls.eigh_jacobi(cov, sweeps, tolerance, 0)
