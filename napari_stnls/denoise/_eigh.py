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

__all__ = ["batched_eigh", "jacobi_available", "top_eigh"]

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


def _orthonormal(z: torch.Tensor, rel: float) -> torch.Tensor:
    """Orthonormal columns spanning ``z`` (N, D, r), through the eigen-decomposition of its
    (r x r) Gram matrix; directions whose Gram eigenvalue is under ``rel`` times the largest
    (numerically absent) become zero columns."""
    z = z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    lam, v = batched_eigh(z.mT @ z)
    inv = torch.where(lam > rel * lam[:, -1:], lam.clamp_min(torch.finfo(z.dtype).tiny).rsqrt(),
                      torch.zeros_like(lam))
    return z @ (v * inv[:, None])


def top_eigh(cov: torch.Tensor, rank: int = 32, iters: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest eigenpairs of a batch of symmetric positive semi-definite
    matrices, approximately, by subspace iteration and a Rayleigh-Ritz step: ``iters``
    products with ``cov`` of a ``(D, rank)`` block, each followed by orthonormalisation, then
    the eigen-decomposition of the ``rank x rank`` projection (:func:`batched_eigh`).

    A GPU solves a batch of 32 x 32 problems and matrix products far faster than full
    ``D x D`` eigen-decompositions (``nl_bayes``'s D = 150 groups, whose filter keeps the few
    directions above a threshold: a median of 2 of 150 on carphone at sigma 20). The start
    block is a fixed Gaussian one (seed 0), so the result is deterministic. Eigenvalues are
    Ritz values (at most the true ones); directions past ``rank`` are not seen, so a caller
    that needs every eigenvalue above some level must check that the smallest Ritz value
    returned is below it.

    Parameters
    ----------
    cov : Tensor, shape (N, D, D)
        Symmetric positive semi-definite matrices, float32 or float64.
    rank : int
        Eigenpairs wanted (at most D).
    iters : int
        Subspace iterations (>= 1).

    Returns
    -------
    values : Tensor, shape (N, rank)
        Ascending.
    vectors : Tensor, shape (N, D, rank)
        Orthonormal columns (a zero column where ``cov`` has fewer than ``rank`` numerically
        non-zero directions; its value is 0).
    """
    if cov.ndim != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"cov: expected (N, D, D) square matrices, got shape {tuple(cov.shape)}")
    D = cov.shape[-1]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= D:
        raise ValueError(f"rank: expected an int in 1..{D}, got {rank!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: expected an int >= 1, got {iters!r}")
    rel = 1e-6 if cov.dtype == torch.float32 else 1e-13
    start = torch.randn(D, rank, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = cov @ start.to(cov)
    for _ in range(iters):
        z = cov @ _orthonormal(z, rel)
    q = _orthonormal(_orthonormal(z, rel), rel)
    values, s = batched_eigh(q.mT @ cov @ q)
    return values, q @ s
