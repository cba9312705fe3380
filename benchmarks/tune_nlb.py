"""Tune the denoisers' defaults per sigma on GENERATED videos (never the benchmark clips).

Scenes: scikit-image photographs (astronaut, coffee, chelsea, rocket) moved by a known smooth
motion (sub-pixel translation, small rotation and zoom, resampled with cubic splines, as
napari_stnls.video.synthetic.sample_video does) plus white Gaussian noise with a fixed seed. The flow
is TV-L1 computed on the noisy frames, as in real use. Each configuration is scored by the
PSNR of the middle frame (restored in region mode, so a trial costs about one frame),
averaged over the scenes. Prints one JSON line per trial on stdout.

    python benchmarks/tune_nlb.py --sigmas 20 --grid '{"thresh": [0.5, 1.0, 2.7]}'
    python benchmarks/tune_nlb.py --sigmas 20,40 --configs '[{}, {"pt": 1}, {"opponent": false}]'
    python benchmarks/tune_nlb.py --sigmas 30 --motion-scale 4 --grid '{"fast_motion": [3, 1e9]}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from napari_stnls.denoise import nl_bayes, nl_means, skimage_nl_means  # noqa: E402
from napari_stnls.video.flow import compute_flows  # noqa: E402

# photograph: (scale, centre (y, x) of the crop); rocket adds smooth sky and fast motion
SCENES = {"astronaut": (0.5, (110, 150)), "coffee": (0.5, (90, 160)), "chelsea": (0.6, (80, 110)),
          "rocket": (0.5, (90, 170))}
MOTIONS = [(1.3, 0.6, 0.5), (-0.8, 1.1, -0.3), (0.4, -1.7, 0.2), (2.6, -1.2, 0.3)]  # (dx, dy, degrees)


def make_scene(name: str, T: int, size: tuple[int, int], motion: tuple[float, float, float]) -> np.ndarray:
    """(T, H, W, 3) float32 frames of a photograph moving by ``motion`` = (dx, dy, degrees) a frame."""
    from skimage import data
    from skimage.transform import rescale

    scale, (cy, cx) = SCENES[name]
    img = rescale(getattr(data, name)().astype(np.float32) / 255, scale, channel_axis=-1, anti_aliasing=True)
    H, W = size
    dx, dy, deg = motion
    yy, xx = np.meshgrid(np.arange(H) - H / 2, np.arange(W) - W / 2, indexing="ij")
    frames = []
    for t in range(T):
        a = np.deg2rad(deg * t)
        z = 1.003**t
        y = cy + (np.cos(a) * yy - np.sin(a) * xx) / z - dy * t
        x = cx + (np.sin(a) * yy + np.cos(a) * xx) / z - dx * t
        frames.append(np.stack([ndimage.map_coordinates(img[..., c], [y, x], order=3, mode="reflect")
                                for c in range(3)], -1))
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def dataset(sigma: float, T: int, size, motion_scale: float = 1.0) -> list[tuple]:
    """(clean, noisy, flows) of every scene, its motion multiplied by ``motion_scale``."""
    out = []
    for j, (name, motion) in enumerate(zip(SCENES, MOTIONS, strict=True)):
        dx, dy, deg = motion
        clean = make_scene(name, T, size, (dx * motion_scale, dy * motion_scale, deg * motion_scale))
        noise = np.random.default_rng(100 + j).normal(0, sigma / 255, clean.shape)
        noisy = (clean + noise).astype(np.float32)
        out.append((clean, noisy, compute_flows(noisy, "tvl1")))
    return out


def score(data, fn, t: int | None) -> float:
    """Mean PSNR over the scenes of frame ``t`` (restored in region mode), or of every frame
    (the whole video restored at once) where ``t`` is None."""
    vals = []
    for clean, noisy, flows in data:
        H, W = clean.shape[1:3]
        if t is None:
            out = fn(noisy, flows, None)
            vals += [peak_signal_noise_ratio(c, np.clip(o, 0, 1), data_range=1.0)
                     for c, o in zip(clean, out, strict=True)]
        else:
            out = fn(noisy, flows, (t, t + 1, 0, H, 0, W))
            vals.append(peak_signal_noise_ratio(clean[t], np.clip(out[t], 0, 1), data_range=1.0))
    return float(np.mean(vals))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigmas", default="20")
    p.add_argument("--method", default="nlb", choices=("nlb", "nlm", "skimage2d", "skimage3d"))
    p.add_argument("--grid", default="{}", help="JSON dict: parameter -> list of values (product is tried)")
    p.add_argument("--configs", help="JSON list of keyword dicts, tried one by one (instead of --grid)")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--size", type=int, nargs=2, default=(96, 128))
    p.add_argument("--whole", action="store_true",
                   help="score every frame of the whole video restored at once (what the skipping of "
                        "references changes) instead of the middle frame in region mode")
    p.add_argument("--motion-scale", type=float, default=1.0,
                   help="multiply every scene's motion (4: fast motion, 3-11 px a frame)")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu",
                   help="where nl_bayes / nl_means run (cuda: the same PSNR as the CPU within 0.01 dB, in "
                        "seconds; pass stride0 explicitly, since a GPU's default spacing differs)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    grid = json.loads(a.grid)
    names = list(grid)
    if a.configs:
        configs = json.loads(a.configs)
    else:
        configs = [dict(zip(names, c, strict=True)) for c in itertools.product(*[grid[n] for n in names])]
    t_mid = None if a.whole else a.frames // 2
    for s in (float(v) for v in a.sigmas.split(",")):
        data = dataset(s, a.frames, tuple(a.size), a.motion_scale)
        noisy_db = score(data, lambda n, f, r: n, t_mid)
        for kw in configs:
            def fn(n, f, r, kw=kw, s=s):
                kw = dict(kw)
                if "h_factor" in kw:  # skimage's h is on the intensity scale: h = factor * sigma
                    kw["h"] = kw.pop("h_factor") * s / 255
                if a.method.startswith("skimage"):
                    return skimage_nl_means(n, s / 255, region=r, mode=a.method[-2:], data_range=1.0, **kw)
                den = nl_bayes if a.method == "nlb" else nl_means
                # the scenes' range is [0, 1]: sigma on the scale the tables are tuned on
                return den(n, s / 255, flows=f, region=r, device=a.device, data_range=1.0, **kw)

            t0, c0 = time.perf_counter(), time.process_time()
            db = score(data, fn, t_mid)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            row = {"method": a.method, "sigma": s, **kw, "psnr": round(db, 3), "noisy": round(noisy_db, 3),
                   "s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
                   "device": a.device}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
