"""The dask graph of napari_stnls.stream: lazy, per tile, and equal to the in-memory result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stnls import stream
from napari_stnls.denoise import nl_bayes, nl_means
from napari_stnls.stream import methods as stream_methods

da = pytest.importorskip("dask.array")

NLM = dict(sigma=0.1, ps=3, ws=7, wt=1, k=4)


def _video(T, H, W, C=1, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 0.7, W, dtype=np.float32)[None, None, :, None]
    return (rng.random((T, H, W, C), dtype=np.float32) * 0.3 + ramp).astype(np.float32)


def _flows(T, H, W, dx=2.0, dy=-1.0, seed=1):
    rng = np.random.default_rng(seed)
    ff = np.empty((T, 2, H, W), np.float32)
    ff[:, 0], ff[:, 1] = dx + rng.normal(0, 0.3, (T, H, W)), dy + rng.normal(0, 0.3, (T, H, W))
    return ff, -ff[:, :, :, ::-1].copy()


@pytest.mark.slow  # about 10 s on 2 cores (a cluster of worker processes): make test-slow
def test_local_cluster_equals_in_memory():
    from distributed import Client, LocalCluster

    v = _video(6, 24, 26, C=3)
    ff, bf = _flows(6, 24, 26)
    tfl = (torch.from_numpy(ff)[None], torch.from_numpy(bf)[None])
    ref_m = nl_means(v, flows=tfl, device="cpu", **NLM)
    ref_b = nl_bayes(v[..., 0], 0.1, ps=3, ws=5, wt=1, k=12, stride0=2, skip=0, skip2=0, device="cpu")
    dv = da.from_array(v, chunks=(2, 12, 13, 3))
    lazy_m = stream.denoise_dask(dv, "nl_means", tile=(2, 10, 9), flows=(da.from_array(ff), bf), **NLM)
    lazy_b = stream.denoise_dask(dv[..., 0], "nl_bayes", tile=(3, 24, 13), sigma=0.1, ps=3, ws=5, wt=1, k=12,
                                 stride0=2)
    assert lazy_m.shape == v.shape and lazy_m.chunks[1] == (10, 10, 4)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        got_m, got_b = client.compute([lazy_m, lazy_b], sync=True)
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(got_m, ref_m, atol=1e-5)
    np.testing.assert_allclose(got_b, ref_b, atol=1e-5)


def test_lazy_frames_compute_only_their_tiles(monkeypatch):
    v = _video(5, 16, 16)[..., 0]
    ref = nl_means(v, device="cpu", **NLM)
    seen = []
    real = stream_methods.compute_tile

    def counting(kind, method, p, crop, tile, *a, **k):
        seen.append(tile.t0)
        return real(kind, method, p, crop, tile, *a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", counting)
    lazy = stream.denoise_dask(v, "nlm", **NLM)  # default: one tile per frame
    assert seen == [] and lazy.chunks[0] == (1,) * 5
    frame = lazy[3].compute(scheduler="synchronous")
    assert seen == [3]
    np.testing.assert_allclose(frame, ref[3], atol=1e-5)


def test_bad_arguments():
    v = da.zeros((3, 16, 16), chunks=(1, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="tile: expected"):
        stream.denoise_dask(v, "nlm", tile=(1, -1, 4), **NLM)
    with pytest.raises(ValueError, match="video: expected"):
        stream.denoise_dask(da.zeros((16, 16)), "nlm", **NLM)
    with pytest.raises(TypeError, match="sigma"):
        stream.denoise_dask(v, "nlb")


def test_npy_path_and_uint8(tmp_path):
    v8 = (_video(3, 12, 14)[..., 0] * 255).astype(np.uint8)
    np.save(tmp_path / "v.npy", v8)
    ref = nl_means(v8.astype(np.float32) / 255, device="cpu", **NLM)
    lazy = stream.denoise_dask(tmp_path / "v.npy", "nlm", tile=(2, 6, 14), **NLM)
    assert lazy.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(scheduler="synchronous"), ref, atol=1e-5)
    # flows as .npy and .zarr paths, read like the video
    import zarr

    ff, bf = _flows(3, 12, 14)
    np.save(tmp_path / "ff.npy", ff)
    zarr.open_array(str(tmp_path / "bf.zarr"), mode="w", shape=bf.shape, dtype=np.float32)[:] = bf
    tfl = (torch.from_numpy(ff)[None], torch.from_numpy(bf)[None])
    ref = nl_means(v8.astype(np.float32) / 255, flows=tfl, device="cpu", **NLM)
    lazy = stream.denoise_dask(tmp_path / "v.npy", "nlm", tile=(2, 6, 14), flows=(tmp_path / "ff.npy",
                               tmp_path / "bf.zarr"), **NLM)
    np.testing.assert_allclose(lazy.compute(scheduler="synchronous"), ref, atol=1e-5)
