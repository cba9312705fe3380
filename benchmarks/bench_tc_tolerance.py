"""How the arithmetic of a matrix-unit search would change the neighbours (issue 25's
tensor-core path), measured on the CPU before such a kernel exists.

A matrix-unit search computes the L2 distance of a query patch q and a key patch k as
``|q|^2 + |k|^2 - 2 q.k``, with ``q.k`` from a matrix product whose inputs are rounded to
TF32 (10 mantissa bits) or bfloat16 (7) and summed in float32. For every query, each
arithmetic below ranks the same candidates (ps 7, ws 21, the query's frame and the next and
previous, so 3 x 441 candidates of 147 values) and keeps its k best; they are compared with
the k best of the exact distances (float64). Arithmetics:

* ``fp32_direct``: the sum of squared differences in float32 (what the CUDA kernels compute);
* ``fp32_expand``: the expansion with a float32 product;
* ``tf32_expand``: the expansion with the inputs of ``q.k`` rounded to TF32;
* ``tf32x3_expand``: the same with the split product ``qh.kh + qh.kl + ql.kh`` (``x = xh +
  xl``, both TF32: three matrix products instead of one);
* ``bf16_expand``: the inputs of ``q.k`` rounded to bfloat16;
* ``bf16x3_expand``: the split product in bfloat16;
* ``tf32_expand_rerank``, ``bf16_expand_rerank``: the 2k best by ``tf32_expand`` or
  ``bf16_expand``, ranked again by ``fp32_direct`` distances (a matrix-unit search whose
  survivors go through ``search_dists``).

Reported per clip, noise level and arithmetic: ``recall`` (the share of the exact k best
found), ``tie_recall`` (the share of those found whose exact distance is no larger than the
k-th exact one: flat regions of clean video hold many candidates at the same distance),
``excess_255`` (how much larger the exact distances of the k found are than the k best's, per
neighbour, the video on the 0..255 scale), ``same_lists`` (queries whose k best are the same,
in the same order), and the error of the distances at the exact neighbours on that scale
(``err_255_median``, ``err_255_p99``); ``kth_255_median`` is the median k-th exact distance,
for scale (``2 * 147 * sigma^2`` is the noise's share of a distance). Queries are drawn at random among
the pixels of the middle frame whose windows and patches stay inside the frame (no
mirroring), ``--queries`` of them.

``certified`` asks whether a matrix-unit search could return the float32 lists *exactly*,
with no tolerance, by checking its own answer: keep the M best by the matrix-unit distances,
rank them again by ``fp32_direct``, and accept where a worst-case bound on the matrix-unit
error proves that no candidate left out could beat the k-th kept one (see ``error_bound``);
elsewhere a kernel would search that query again in float32. Reported, for TF32, bfloat16
and the split TF32 product, with the values as they are and centred (0.5 subtracted: L2
distances do not change, the bound shrinks with the norms), M = 2k and 4k: the share of
queries so proven (where the proof fails, the lists may still be right).

``prod`` rows (``--prod``): the same proof for dot products (``dist="prod"``, larger is
better; no centring, which would change them) of single-pixel patches with 64 channels, as
issue 25's ``w4`` and ``b`` search (ws 9 over 5 frames: 405 candidates, k 10), on features
``rand`` (uniform in [0, 1), what those workloads time), ``randn`` (Gaussian, zero mean,
like a network's queries and keys) and ``conv`` (the bikes clip through a fixed random 3x3
convolution to 64 channels and a ReLU: correlated, with near-duplicates).

    python benchmarks/bench_tc_tolerance.py --out out/tc_tolerance.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quality import CLIPS, load_clip  # noqa: E402
from bench_throughput import emit_report  # noqa: E402

PS, WS, K = 7, 21, 10


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 ``x`` rounded to ``bits`` mantissa bits (round to nearest, ties to even), as
    TF32 (10) and bfloat16 (7) hold it."""
    if bits == 7:
        return x.to(torch.bfloat16).to(torch.float32)
    i = x.contiguous().view(torch.int32)
    drop = 23 - bits
    half = 1 << (drop - 1)
    lsb = (i >> drop) & 1
    r = ((i + half - 1 + lsb) >> drop) << drop
    return r.view(torch.float32)


def patches(frame: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
    """The (n, PS * PS * 3) patches of ``frame`` (H, W, 3) whose top-left pixels are (ys, xs)."""
    off = np.arange(PS)
    rows = ys[:, None, None] + off[None, :, None]
    cols = xs[:, None, None] + off[None, None, :]
    return torch.from_numpy(frame[rows, cols].reshape(len(ys), -1).copy())


def distances(q: torch.Tensor, keys: torch.Tensor, how: str) -> torch.Tensor:
    """(n, m) distances of n queries (n, L) to their m candidates (n, m, L), float32 ``q`` and
    ``keys``, in arithmetic ``how`` (float64 out)."""
    if how == "exact":
        return ((q.double()[:, None] - keys.double()) ** 2).sum(-1)
    if how == "fp32_direct":
        return ((q[:, None] - keys) ** 2).sum(-1).double()
    qq = (q * q).sum(-1, keepdim=True)
    kk = (keys * keys).sum(-1)
    if how == "fp32_expand":
        dot = torch.einsum("nl,nml->nm", q, keys)
    else:
        bits = 10 if how.startswith("tf32") else 7
        qh, kh = round_mantissa(q, bits), round_mantissa(keys, bits)
        # the products of rounded inputs are exact in float64; summed in float32 as an mma does
        dot = torch.einsum("nl,nml->nm", qh.double(), kh.double()).float()
        if how.endswith("x3_expand"):
            ql, kl = round_mantissa(q - qh, bits), round_mantissa(keys - kh, bits)
            dot = dot + torch.einsum("nl,nml->nm", qh.double(), kl.double()).float()
            dot = dot + torch.einsum("nl,nml->nm", ql.double(), kh.double()).float()
    return (qq + kk - 2 * dot).double()


def gamma(m: int) -> float:
    """The relative error bound of m float32 roundings, m 2^-24 / (1 - m 2^-24)."""
    return m * 2.0**-24 / (1 - m * 2.0**-24)


def product_error(L: int, u: float, split: bool) -> float:
    """Bound on |matrix-unit q.k - q.k| / sum |q_i k_i| for L-long inputs rounded with relative
    error u (one product, or the split product's three), summed in float32."""
    return (3.1 * u * u if split else 2 * u + u * u) + 1.1 * gamma(3 * L if split else L) * (1 + u) ** 2


def error_bound(q: torch.Tensor, keys: torch.Tensor, how: str) -> torch.Tensor:
    """(n,) worst-case bound, for each query, on ``|distances(q, keys, how) - exact|`` over all
    its candidates (``how`` one of ``tf32_expand``, ``bf16_expand``, ``tf32x3_expand``), from
    the norms alone, as a kernel could compute it: the product's inputs rounded to nearest
    (relative error u each; the split product misses ``ql.kl`` and rounds its low parts:
    3.1 u^2), products exact in float32 (TF32 x TF32 and bf16 x bf16 fit 24 bits), sums of L
    terms in float32 (gamma_L = L 2^-24 / (1 - L 2^-24) of the sum of magnitudes),
    ``sum |q_i k_i| <= |q| |k|``, and the two float32 additions of ``|q|^2 + |k|^2 - 2 q.k``."""
    L = q.shape[-1]
    u = 2.0 ** -(11 if how.startswith("tf32") else 8)
    eps_dot = product_error(L, u, how.startswith("tf32x3"))
    qn = q.double().norm(dim=-1)
    kmax = keys.double().norm(dim=-1).amax(-1)
    S, sq = qn * kmax, qn**2 + kmax**2
    return 2 * eps_dot * S + gamma(L) * sq + 2.0**-23 * (sq + 2 * S)


def certified_share(
    q: torch.Tensor, keys: torch.Tensor, direct: torch.Tensor, how: str, M: int,
    coarse: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) 1 where keeping the M best by ``how`` and ranking them by ``direct`` (float32) is
    proven to give the float32 k best: every candidate left out has a matrix-unit distance of
    at least the M-th one, c_M, hence an exact distance of at least c_M - bound, hence a
    float32 one of at least (c_M - bound)(1 - gamma_(L+1)), which must exceed the k-th kept.
    ``coarse``: ``distances(q, keys, how)`` where already computed."""
    if coarse is None:
        coarse = distances(q, keys, how)
    order = torch.argsort(coarse, dim=-1, stable=True)
    if M >= coarse.shape[-1]:
        return torch.ones(len(q))
    c_M = coarse.gather(1, order[:, M - 1:M])[:, 0]
    d_k = direct.gather(1, order[:, :M]).sort(-1).values[:, K - 1]
    L = q.shape[-1]
    floor = (c_M - error_bound(q, keys, how)) * (1 - gamma(L + 1))
    return (floor > d_k).float()


def dot(q: torch.Tensor, keys: torch.Tensor, how: str) -> torch.Tensor:
    """(n, m) dot products of n queries (n, L) with their m candidates (n, m, L) in arithmetic
    ``how``: ``exact`` (float64), ``fp32`` (two float32 partial sums over even and odd
    channels, as the single-pixel kernel adds them), ``tf32``/``tf32x3`` (the matrix unit's
    rounded inputs, products summed in float32), float64 out."""
    if how == "exact":
        return torch.einsum("nl,nml->nm", q.double(), keys.double())
    if how == "fp32":
        prods = q[:, None] * keys
        return (prods[..., 0::2].sum(-1) + prods[..., 1::2].sum(-1)).double()
    qh, kh = round_mantissa(q, 10), round_mantissa(keys, 10)
    out = torch.einsum("nl,nml->nm", qh.double(), kh.double()).float()
    if how == "tf32x3":
        ql, kl = round_mantissa(q - qh, 10), round_mantissa(keys - kh, 10)
        out = out + torch.einsum("nl,nml->nm", qh.double(), kl.double()).float()
        out = out + torch.einsum("nl,nml->nm", ql.double(), kh.double()).float()
    return out.double()


def prod_certified(
    q: torch.Tensor, keys: torch.Tensor, how: str, M: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For dot products (larger is better): (n,) 1 where keeping the M best by ``how`` and
    ranking them by the float32 ones is proven to give the float32 k best (a candidate left
    out has a matrix-unit product of at most the M-th one, c_M, hence a float32 one of at most
    c_M + bound + gamma_L |q| |k|, which must be below the k-th kept), and (n,) 1 where that
    list is the float32 one in fact."""
    L = q.shape[-1]
    eps_dot = product_error(L, 2.0**-11, how == "tf32x3")
    S = q.double().norm(dim=-1) * keys.double().norm(dim=-1).amax(-1)
    direct, coarse = dot(q, keys, "fp32"), dot(q, keys, how)
    order = torch.argsort(-coarse, dim=-1, stable=True)
    kept = order[:, :M]
    c_M = coarse.gather(1, order[:, M - 1:M])[:, 0]
    rerank = kept.gather(1, torch.argsort(-direct.gather(1, kept), dim=-1, stable=True))[:, :K]
    d_k = direct.gather(1, rerank[:, K - 1:K])[:, 0]
    proven = (c_M + eps_dot * S + 1.1 * gamma(L) * S < d_k).float()
    want = torch.argsort(-direct, dim=-1, stable=True)[:, :K]
    return proven, (rerank == want).all(-1).float()


def prod_features(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 64) queries and (n, 405, 64) candidates: ``rand``/``randn`` drawn independently;
    ``conv`` the 9 x 9 window of 5 frames around random pixels of the middle frame of the
    bikes clip's features (a fixed random 3x3 convolution to 64 channels, then a ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    if kind in ("rand", "randn"):
        draw = torch.rand if kind == "rand" else torch.randn
        return draw(n, 64, generator=gen), draw(n, 405, 64, generator=gen)
    video = torch.from_numpy(load_clip("bikes", 5)).permute(0, 3, 1, 2)  # (5, 3, H, W)
    w = torch.randn(64, 3, 3, 3, generator=gen) / 3
    feats = torch.relu(torch.nn.functional.conv2d(video, w, padding=1)).permute(0, 2, 3, 1)
    T, H, W, _ = feats.shape
    cy = torch.randint(4, H - 4, (n,), generator=gen)
    cx = torch.randint(4, W - 4, (n,), generator=gen)
    off = torch.arange(-4, 5)
    ys = (cy[:, None, None] + off[None, :, None]).expand(n, 9, 9).reshape(n, 1, 81)
    xs = (cx[:, None, None] + off[None, None, :]).expand(n, 9, 9).reshape(n, 1, 81)
    ts = torch.arange(T)[None, :, None]
    keys = feats[ts, ys, xs].reshape(n, T * 81, 64)
    return feats[T // 2, cy, cx].contiguous(), keys.contiguous()


def prod_study(n: int) -> list[dict]:
    """The ``prod`` rows of the docstring, ``n`` queries each."""
    rows = []
    for kind in ("rand", "randn", "conv"):
        q, keys = prod_features(kind, n, 5)
        row: dict = {"features": kind}
        for how in ("tf32", "tf32x3"):
            for m in (2, 4):
                proven, same = prod_certified(q, keys, how, m * K)
                row[f"{how}_M{m}k"] = dict(proven=float(proven.mean()), same_lists=float(same.mean()))
        rows.append(row)
    return rows


def topk(d: torch.Tensor) -> torch.Tensor:
    """Indices of the K smallest of each row, ties to the smaller index."""
    order = torch.argsort(d, dim=-1, stable=True)
    return order[:, :K]


def study(video: np.ndarray, n: int, seed: int, hows: list[str]) -> dict:
    """``video`` (3, H, W, 3) float32: the rows of the docstring for queries of frame 1."""
    _, H, W, _ = video.shape
    r, half = PS // 2, WS // 2
    rng = np.random.default_rng(seed)
    cy = rng.integers(half + r, H - half - r, n)
    cx = rng.integers(half + r, W - half - r, n)
    dy, dx = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    dy, dx = dy.ravel(), dx.ravel()
    stats: dict[str, dict[str, list]] = {h: dict(hit=[], tied=[], same=[], err=[], excess=[]) for h in hows}
    kths = []
    cert = {f"{h}_{c}_M{m}k": [] for h in ("tf32_expand", "bf16_expand", "tf32x3_expand")
            for c in ("raw", "centred") for m in (2, 4)}
    for c0 in range(0, n, 100):  # 100 queries at a time: their candidates take 78 MB
        y, x = cy[c0:c0 + 100], cx[c0:c0 + 100]
        m = len(y)
        q = patches(video[1], y - r, x - r)
        ky, kx = (y[:, None] + dy - r).ravel(), (x[:, None] + dx - r).ravel()
        keys = torch.cat([patches(video[t], ky, kx).view(m, WS * WS, -1) for t in range(3)], 1)
        exact = distances(q, keys, "exact")
        best = topk(exact)
        kth = exact.gather(1, best[:, -1:])
        kths.append(kth[:, 0])
        direct = distances(q, keys, "fp32_direct")
        coarse = {}  # the matrix-unit distances, once for both M
        for name, acc in cert.items():
            h, c, m = name.rsplit("_", 2)
            shift = 0.5 if c == "centred" else 0.0
            qs, ks = q - shift, keys - shift
            if (h, c) not in coarse:
                coarse[h, c] = distances(qs, ks, h)
            acc.append(certified_share(qs, ks, direct, h, int(m[1:-1]) * K, coarse[h, c]))
        for how in hows:
            if how.endswith("_rerank"):
                # the 2k best by the matrix-unit distances, ranked again by float32 ones
                coarse = distances(q, keys, how[: -len("_rerank")])
                cand = torch.argsort(coarse, dim=-1, stable=True)[:, : 2 * K].sort(-1).values
                d = direct
                got = cand.gather(1, torch.argsort(direct.gather(1, cand), dim=-1, stable=True))[:, :K]
            else:
                d = direct if how == "fp32_direct" else distances(q, keys, how)
                got = topk(d)
            stats[how]["hit"].append((got[:, :, None] == best[:, None, :]).any(-1).float().mean(-1))
            # as good as an exact neighbour: not past the k-th exact distance (flat regions of
            # clean video hold many candidates at the same distance)
            dgot = exact.gather(1, got)
            stats[how]["tied"].append((dgot <= kth).float().mean(-1))
            stats[how]["excess"].append((dgot.sum(-1) - exact.gather(1, best).sum(-1)) / K)
            stats[how]["same"].append((got == best).all(-1).float())
            stats[how]["err"].append((d.gather(1, best) - exact.gather(1, best)).abs().flatten())
    s255 = 255.0**2
    out = {"kth_255_median": float(torch.cat(kths).median()) * s255,
           "certified": {name: float(torch.cat(acc).mean()) for name, acc in cert.items()}}
    for how, st in stats.items():
        err = torch.cat(st["err"]) * s255
        out[how] = dict(recall=float(torch.cat(st["hit"]).mean()),
                        tie_recall=float(torch.cat(st["tied"]).mean()),
                        excess_255=float(torch.cat(st["excess"]).mean()) * s255,
                        same_lists=float(torch.cat(st["same"]).mean()),
                        err_255_median=float(err.median()), err_255_p99=float(torch.quantile(err, 0.99)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="carphone,bikes")
    ap.add_argument("--sigmas", default="0,20", help="noise levels on the 0..255 scale")
    ap.add_argument("--queries", type=int, default=1500)
    ap.add_argument("--prod", action="store_true", help="also the dot-product rows (64 channels)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    clips = a.clips.split(",")
    if unknown := [c for c in clips if c not in CLIPS]:
        ap.error(f"--clips: unknown clip(s) {unknown}; expected some of {sorted(CLIPS)}")
    try:
        sigmas = [float(s) for s in a.sigmas.split(",")]
    except ValueError:
        ap.error(f"--sigmas: expected comma-separated numbers, got {a.sigmas!r}")
    if any(not 0 <= s <= 255 for s in sigmas):
        ap.error(f"--sigmas: expected noise levels in [0, 255], got {a.sigmas!r}")
    if a.queries < 1:
        ap.error(f"--queries: expected at least 1, got {a.queries}")
    hows = ["fp32_direct", "fp32_expand", "tf32_expand", "tf32x3_expand", "bf16_expand", "bf16x3_expand",
            "tf32_expand_rerank", "bf16_expand_rerank"]
    res: dict = dict(bench="bench_tc_tolerance", ps=PS, ws=WS, k=K, frames=3, queries=a.queries, rows=[])
    for clip in clips:
        video = load_clip(clip, 3)
        for sigma in sigmas:
            gen = np.random.default_rng(0)
            noisy = (video + gen.normal(0, sigma / 255, video.shape)).astype(np.float32)
            row = dict(clip=clip, sigma=sigma, shape=list(video.shape), **study(noisy, a.queries, 1, hows))
            res["rows"].append(row)
            brief = {h: round(row[h]["tie_recall"], 4) for h in hows}
            brief["certified"] = {n: round(v, 3) for n, v in row["certified"].items()}
            print(json.dumps({"clip": clip, "sigma": sigma, **brief}), file=sys.stderr, flush=True)
    if a.prod:
        res["prod_rows"] = prod_study(a.queries)
        for row in res["prod_rows"]:
            print(json.dumps(row), file=sys.stderr, flush=True)
    return emit_report(res, a.out)


if __name__ == "__main__":
    main()
