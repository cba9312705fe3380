"""Shared fixtures: devices present, seeded generators, and a tie-aware KNN comparison."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py is importable as `oracle`

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs on CUDA so `pytest -m cuda` selects them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_knn_match(dists, inds, ref_d, ref_i, *, rtol=1e-9, atol=1e-9, min_untied=0.5):
    """Distances close; positions equal wherever the reference has no near-tie.

    Near-ties (|d_r - d_{r±1}| within tolerance) may legitimately swap under float
    rounding; there the *sets* of tied distances must still agree, which the distance
    comparison already checks. Fails if fewer than ``min_untied`` of entries are untied,
    so the positional check cannot pass vacuously.
    """
    d = dists.detach().cpu().double().numpy()
    i = inds.detach().cpu().double().numpy()
    assert d.shape == ref_d.shape, (d.shape, ref_d.shape)
    assert i.shape == ref_i.shape, (i.shape, ref_i.shape)
    np.testing.assert_allclose(d, ref_d, rtol=rtol, atol=atol)
    tol = atol + rtol * np.abs(ref_d)
    gap = np.full(ref_d.shape, np.inf)
    diff = np.abs(np.diff(ref_d, axis=-1))
    gap[..., 1:] = np.minimum(gap[..., 1:], diff)
    gap[..., :-1] = np.minimum(gap[..., :-1], diff)
    untied = gap > 4 * tol
    assert untied.mean() >= min_untied, f"only {untied.mean():.2f} of entries untied"
    bad = untied[..., None] & (np.abs(i - ref_i) > 1e-6)
    assert not bad.any(), f"{bad.any(-1).sum()} untied positions differ, first at {np.argwhere(bad)[0]}"
