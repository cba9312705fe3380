"""restore.denoise_lazy: the plugin's lazily denoised video (a dask array, one task per frame)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stnls import restore, stream

da = pytest.importorskip("dask.array")


def _video(T=4, H=20, W=24, C=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (T, H, W) if C is None else (T, H, W, C)
    ramp = np.linspace(0, 0.6, W, dtype=np.float32)
    ramp = ramp[:, None] if C else ramp
    return (rng.random(shape, dtype=np.float32) * 0.3 + ramp).astype(np.float32)


@pytest.fixture
def counted(monkeypatch):
    """The frames (t0 of each tile) that stream computes, in order."""
    seen = []
    real = stream._compute_tile

    def counting(kind, method, p, crop, tile, *a, **k):
        seen.append(tile.t0)
        return real(kind, method, p, crop, tile, *a, **k)

    monkeypatch.setattr(stream, "_compute_tile", counting)
    return seen


@pytest.mark.parametrize("method, kw, C", [("nlm", dict(ws=5), None), ("nlm", {}, 3),
                                           ("nlb", dict(ps=3, ws=5, k=8), None)])
def test_lazy_equals_eager_and_computes_only_what_is_read(counted, method, kw, C):
    v = _video(C=C)
    before = v.copy()
    rng = np.random.default_rng(1)
    ff = rng.normal(0, 0.8, (4, 2, 20, 24)).astype(np.float32)
    flows = (ff, -ff) if method == "nlm" else None
    lazy = restore.denoise_lazy(v, method, 0.1, flows=flows, device="cpu", **kw)
    assert counted == []  # building the graph computes nothing
    assert isinstance(lazy, da.Array) and lazy.shape == v.shape and lazy.dtype == np.float32
    assert lazy.chunks[0] == (1,) * 4 and lazy.chunks[1:3] == ((20,), (24,))
    got = lazy[2].compute(scheduler="synchronous")
    assert counted == [2]  # one frame read, one frame computed
    ref = restore.denoise_video(v, method, 0.1, flows=flows, device="cpu", **kw)
    np.testing.assert_allclose(got, ref[2], atol=1e-5)
    np.testing.assert_allclose(lazy[[0, 3]].compute(scheduler="synchronous"), ref[[0, 3]], atol=1e-5)
    assert sorted(counted) == [0, 2, 3]
    np.testing.assert_array_equal(v, before)  # the input is never modified


def test_lazy_dask_input_uint8_and_errors(counted):
    v8 = (_video() * 255).astype(np.uint8)
    lazy = restore.denoise_lazy(da.from_array(v8, chunks=(1, 20, 24)), "nlm", 0.1, device="cpu", ws=5)
    ref = restore.denoise_video(v8, "nlm", 0.1, device="cpu", ws=5)
    np.testing.assert_allclose(lazy[1].compute(scheduler="synchronous"), ref[1], atol=1e-5)
    assert counted == [1]
    with pytest.raises(ValueError, match="lazy mode supports"):
        restore.denoise_lazy(v8, "skimage", 0.1)
    with pytest.raises(ValueError, match="sigma"):
        restore.denoise_lazy(v8, "nlm", 0)
    with pytest.raises(ValueError, match="bogus: not a parameter"):
        restore.denoise_lazy(v8, "nlm", 0.1, bogus=3)
    with pytest.raises(ValueError, match="flows: expected arrays"):
        restore.denoise_lazy(v8, "nlm", 0.1, flows=(np.zeros((4, 2, 5, 5)),) * 2)
    with pytest.raises(ValueError, match="video: expected"):
        restore.denoise_lazy(np.zeros((4, 4)), "nlm", 0.1)
