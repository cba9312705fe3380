"""Shared fixtures: devices present, seeded generators, and a tie-aware KNN comparison."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py is importable as `oracle`

CUDA = torch.cuda.is_available()
# CUDA cases exist only where a GPU is present (no skipped CUDA cases elsewhere)
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
IMPLS = [("reference", "cpu"), ("cpu", "cpu")] + ([("reference", "cuda"), ("cuda", "cuda")] if CUDA else [])
# the tests that hold every backend to the float64 reference on the CPU leave that one out
HELD = [p for p in IMPLS if p != ("reference", "cpu")]


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs on CUDA so `pytest -m cuda` selects them."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {}).values()
        if any(p == "cuda" or (isinstance(p, tuple) and "cuda" in p) for p in params):
            item.add_marker(pytest.mark.cuda)


def _impl(param) -> tuple[str, torch.device]:
    from napari_stnls.ops import _library

    backend, device = param
    if backend != "reference" and not _library.has_kernel("search", backend):
        pytest.fail(f"the compiled {backend} kernels are not built: {_library.LOAD_ERROR}")
    return backend, torch.device(device)


@pytest.fixture(params=IMPLS, ids=[f"{b}-{d}" for b, d in IMPLS])
def impl(request):
    """(backend, device) pairs: the reference on each device and each compiled backend.

    A compiled backend that is missing from this build fails instead of skipping (`make test`
    builds it).
    """
    return _impl(request.param)


@pytest.fixture(params=HELD, ids=[f"{b}-{d}" for b, d in HELD])
def impl_held_to_reference(request):
    """The pairs of :func:`impl` but the reference on the CPU, which such a test holds them to."""
    return _impl(request.param)


@pytest.fixture(params=[p for p in IMPLS if p[0] != "reference"], ids=lambda p: f"{p[0]}-{p[1]}")
def compiled(request):
    """The compiled backends, each on its device (tests of the compiled operators themselves)."""
    return _impl(request.param)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_knn_match(dists, inds, ref_d, ref_i, *, rtol=1e-9, atol=1e-9, min_untied=0.5, pos_atol=1e-6):
    """Distances close; positions equal wherever the reference has no near-tie.

    Near-ties (|d_r - d_{r±1}| within tolerance) may legitimately swap under float
    rounding (the reference sums in another order than a compiled kernel); there the tied
    distances still agree, which the distance comparison checks. ``ref_d``/``ref_i`` may
    hold one more rank than returned, so that a tie across the k-th place is seen too.
    Fails if fewer than ``min_untied`` of entries are untied, so the positional check
    cannot pass vacuously. Positions agree to ``pos_atol`` (float32 sub-pixel positions of a
    few tens of pixels carry rounding of a few 1e-6).
    """
    d = dists.detach().cpu().double().numpy()
    i = inds.detach().cpu().double().numpy()
    k = d.shape[-1]
    assert ref_d.shape[-1] in (k, k + 1), (d.shape, ref_d.shape)
    np.testing.assert_allclose(d, ref_d[..., :k], rtol=rtol, atol=atol)
    tol = atol + rtol * np.abs(ref_d)
    gap = np.full(ref_d.shape, np.inf)
    diff = np.abs(np.diff(ref_d, axis=-1))
    gap[..., 1:] = np.minimum(gap[..., 1:], diff)
    gap[..., :-1] = np.minimum(gap[..., :-1], diff)
    untied = (gap > 4 * tol)[..., :k]
    assert i.shape == ref_i[..., :k, :].shape, (i.shape, ref_i.shape)
    assert untied.mean() >= min_untied, f"only {untied.mean():.2f} of entries untied"
    bad = untied[..., None] & (np.abs(i - ref_i[..., :k, :]) > pos_atol)
    assert not bad.any(), f"{bad.any(-1).sum()} untied positions differ, first at {np.argwhere(bad)[0]}"
