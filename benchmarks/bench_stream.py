"""Streamed processing (napari_stnls.stream): peak host memory and throughput vs video size.

For each size a synthetic uint8 video (T, S, S) is written to disk first (frame by frame),
then a fresh child process runs ``stream.process`` from that ``.npy`` into a ``.npy`` output
at a fixed tile and reports its peak RSS (``VmHWM`` of /proc/self/status), its RSS once
torch and the package were imported (``base_rss``), the time and the throughput. The
tiling overhead is measured on one size that fits in memory: the same computation as one
in-memory call and as tiles, in the same child.

    python benchmarks/bench_stream.py --sizes 256,1024,2048 --frames 8 --out out/bench_stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = dict(sigma=20 / 255, ps=3, ws=5, wt=1, k=4)  # cheap NL-means setting for a 2-core CPU


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def write_video(path: Path, T: int, S: int, seed: int = 0, device: str = "cpu") -> None:
    """A moving smooth pattern plus noise, uint8 (T, S, S), written one frame at a time.

    Computed with torch (on ``device``) in bands of 512 rows, so memory stays bounded even at
    5000^2 and a 128-frame video is written in seconds.
    """
    import torch

    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(T, S, S))
    g = torch.Generator(device=device).manual_seed(seed)
    y = torch.arange(S, dtype=torch.float32, device=device)[:, None]
    for t in range(T):
        for r0 in range(0, S, 512):
            yy = y[r0:r0 + 512]
            x = torch.arange(S, dtype=torch.float32, device=device)[None, :] + 2 * t
            clean = 128 + 60 * torch.sin(x / 17.0) * torch.cos(yy / 23.0) + 40 * torch.sin((x + yy) / 61.0)
            noisy = clean + 20 * torch.randn(clean.shape, generator=g, device=device)
            mm[t, r0:r0 + 512] = noisy.clamp_(0, 255).to(torch.uint8).cpu().numpy()
    mm.flush()
    del mm


def child(args) -> dict:
    import torch

    from napari_stnls import stream
    from napari_stnls.denoise import nl_means

    torch.set_num_threads(args.threads)
    # touch every code path once on a tiny input, so lazy initialisation is not counted
    tiny = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        stream.process(tiny, Path(d) / "t.npy", "nl_means", tile=(1, 8, 8), device=args.device, **PARAMS)
    base = _rss_kib("VmRSS")
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tile = tuple(int(v) for v in args.tile.split(","))
    res = {"size": args.size, "frames": args.frames, "tile": list(tile), "base_rss_mib": base / 1024}
    ticks = []

    def streamed():
        ticks.clear()
        t0 = time.perf_counter()
        stream.process(args.video, args.output, "nl_means", tile=tile, device=args.device, overwrite=True,
                       progress=lambda d, t: ticks.append(d), **PARAMS)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if args.overhead:  # alternate the two, best of --repeats each (the machine is shared)
        v = np.load(args.video).astype(np.float32) / 255
        mem, tiled = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            nl_means(v, device=args.device, **PARAMS)
            if cuda:
                torch.cuda.synchronize()
            mem.append(time.perf_counter() - t0)
            tiled.append(streamed())
        del v
        res["in_memory_s"], res["stream_s"] = min(mem), min(tiled)
    else:
        res["stream_s"] = streamed()
    res["tiles"] = len(ticks)
    res["pixels_per_s"] = args.frames * args.size**2 / res["stream_s"]
    res["peak_rss_mib"] = _rss_kib("VmHWM") / 1024
    if cuda:  # torch's allocator: peak of live tensors, and what it held from the driver
        res["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    if args.overhead:
        res["tiling_overhead"] = res["stream_s"] / res["in_memory_s"] - 1
    return res


def _other_cpu(before, after, child_cpu_s: float) -> float:
    """Fraction of the machine's CPU time used by other processes than the child in between."""
    busy = lambda s: sum(s) - s[3] - s[4]  # noqa: E731 (all minus idle and iowait)
    total = sum(after) - sum(before)
    ours = child_cpu_s * os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy(after) - busy(before) - ours) / max(total, 1))


def _cpu_times() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,1024,2048", help="frame sides S (frames S x S)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--tile", default="4,256,256", help="T,H,W of the output tile")
    p.add_argument("--overhead-size", type=int, default=512, help="size for the tiled vs in-memory timing")
    p.add_argument("--cases", default=None,
                   help="SxT,... (frame side x frames), instead of --sizes at --frames; e.g. 5000x128")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed pairs for the overhead (best of each)")
    p.add_argument("--workdir", default=None, help="where the videos go (default: a temporary folder)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--video", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--overhead", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    runs = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        if args.cases:
            jobs = [(int(c.split("x")[0]), int(c.split("x")[1]), False) for c in args.cases.split(",")]
        else:
            jobs = [(int(v), args.frames, False) for v in args.sizes.split(",") if v.strip()]
        if args.overhead_size:
            jobs.append((args.overhead_size, args.frames, True))
        for size, frames, overhead in jobs:
            video, output = Path(work) / f"v{size}.npy", Path(work) / f"o{size}.npy"
            t0 = time.perf_counter()
            write_video(video, frames, size, device=args.device)
            print(f"wrote {video.name} ({frames}x{size}x{size}) in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--frames", str(frames),
                   "--tile", args.tile, "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--device", args.device,
                   "--video", str(video),
                   "--output", str(output)] + (["--overhead"] if overhead else [])
            before, ru0 = _cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"child failed for size {size}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
            res["other_cpu_load"] = _other_cpu(before, _cpu_times(), cpu)
            res["video_mib"] = video.stat().st_size / 2**20
            res["output_mib"] = output.stat().st_size / 2**20
            runs.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
            video.unlink()
            output.unlink()
            if args.out:  # after every size, so a long run keeps what it measured
                _write(args.out, _report(args, runs))
    report = _report(args, runs)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        _write(args.out, report)
    return 0


def _write(path: str, report: dict) -> None:
    from napari_stnls._util import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")


def _report(args, runs: list) -> dict:
    device = f"CPU ({os.cpu_count()} cores), {platform.processor() or platform.machine()}"
    if args.device == "cuda":
        import torch

        device = f"{torch.cuda.get_device_name()} (host: {os.cpu_count()} cores)"
    return {
        "benchmark": "stream",
        "device": device,
        "method": "nl_means",
        "params": {k: v for k, v in PARAMS.items() if k != "sigma"} | {"sigma": "20/255"},
        "threads": args.threads,
        "tile": args.tile,
        "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
