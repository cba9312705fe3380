"""The layers above the ops on the GPU: the denoisers and streaming give on CUDA what they
give on the CPU (to float tolerance; neighbours may swap on near-ties, so the comparison
is on PSNR and on the share of pixels that agree)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_stnls import stream
from napari_stnls.denoise import nl_bayes, nl_means
from napari_stnls.video.synthetic import sample_video

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
SIGMA = 20 / 255


@pytest.fixture(scope="module")
def sample():
    return sample_video(n_frames=4, size=(48, 64), sigma=SIGMA, seed=3)


def _flows(sample):
    return tuple(torch.from_numpy(f)[None] for f in (sample.fflow, sample.bflow))


def _agree(a: np.ndarray, b: np.ndarray, atol: float) -> float:
    return float(np.mean(np.abs(a - b) <= atol))


@pytest.mark.parametrize("method", [nl_means, nl_bayes], ids=["nl_means", "nl_bayes"])
def test_denoiser_on_cuda_equals_cpu(sample, method):
    flows = _flows(sample)
    cpu = method(sample.noisy, SIGMA, flows=flows, device="cpu")  # the same defaults on both
    gpu = method(sample.noisy, SIGMA, flows=flows, device="cuda")
    assert isinstance(gpu, np.ndarray) and gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    before = psnr(sample.clean, sample.noisy, data_range=1.0)
    p_cpu = psnr(sample.clean, np.clip(cpu, 0, 1), data_range=1.0)
    p_gpu = psnr(sample.clean, np.clip(gpu, 0, 1), data_range=1.0)
    assert p_gpu > before + 5.0, (before, p_gpu)
    assert abs(p_gpu - p_cpu) < 0.05, (p_cpu, p_gpu)
    assert _agree(cpu, gpu, 1e-4) > 0.99


def test_region_mode_on_cuda_keeps_outside(sample):
    r = (1, 3, 8, 30, 10, 50)
    out = nl_means(sample.noisy, SIGMA, region=r, device="cuda")
    whole = nl_means(sample.noisy, SIGMA, device="cuda")
    mask = np.zeros(sample.noisy.shape[:3], bool)
    mask[1:3, 8:30, 10:50] = True
    assert np.array_equal(out[~mask], sample.noisy[~mask])
    np.testing.assert_allclose(out[mask], whole[mask], rtol=1e-5, atol=1e-5)


def test_torch_tensor_on_cuda_stays_there(sample):
    v = torch.from_numpy(sample.noisy).permute(0, 3, 1, 2)[None].cuda()
    out = nl_means(v, SIGMA, ws=7, k=8)  # device auto: the tensor's
    assert out.is_cuda and out.shape == v.shape


def test_stream_tiled_on_cuda_equals_in_memory(sample, tmp_path):
    gray = np.ascontiguousarray(sample.noisy.mean(-1), dtype=np.float32)
    params = dict(sigma=SIGMA, ps=3, ws=7, wt=1, k=6)
    whole = nl_means(gray, device="cuda", **params)
    path = tmp_path / "out.npy"
    stream.process(gray, path, "nl_means", tile=(2, 16, 24), device="cuda", **params)
    tiled = np.load(path)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
