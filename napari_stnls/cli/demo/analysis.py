"""The demo's numbers: true positions along the flow, how often matches land there, NL-means
from the matches, PSNR, and which queries the figure shows (numpy and torch; no matplotlib)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...ops import gather, scatter

__all__ = ["CROP", "bilinear", "chain", "match_fraction", "nlmeans", "psnr", "pct", "pick_queries"]

CROP = 9  # half-side of the zoomed crops, pixels


def bilinear(field: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear read of field (2, H, W) at (y, x) clamped into the frame (as search does)."""
    H, W = field.shape[1:]
    y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    fy, fx = y - y0, x - x0
    return (1 - fy) * ((1 - fx) * field[:, y0, x0] + fx * field[:, y0, x1]) + fy * (
        (1 - fx) * field[:, y1, x0] + fx * field[:, y1, x1]
    )


def chain(vid, t: int, y: float, x: float, frames) -> dict[int, tuple[float, float]]:
    """True position of the content at (t, y, x) in each of ``frames``, following the flow."""
    pos = {t: (float(y), float(x))}
    for step, flow in ((1, vid.fflow), (-1, vid.bflow)):
        py, px, u = float(y), float(x), t
        while (u + step) in frames:
            dx, dy = bilinear(flow[u], py, px)
            py, px, u = py + dy, px + dx, u + step
            pos[u] = (py, px)
    return pos


def match_fraction(inds: np.ndarray, coords: np.ndarray, vid, tol: float = 0.5):
    """Fraction of the matches in frames t-1 and t+1 within ``tol`` px of the true position.

    ``inds`` (Q, K, 3) are search's positions and ``coords`` (Q, 3) the queries (all in
    one frame t). The true position of query p in frame t+1 is p + fflow[t](p) (exact:
    p is a whole pixel), in frame t-1 it is p + bflow[t](p).
    """
    t = int(coords[0, 0])
    qy, qx = coords[:, 1], coords[:, 2]
    hits = total = 0
    for dt, flow in ((1, vid.fflow), (-1, vid.bflow)):
        sel = inds[..., 0] == t + dt  # (Q, K)
        if not sel.any():
            continue
        ty = qy + flow[t, 1, qy, qx]
        tx = qx + flow[t, 0, qy, qx]
        err = np.hypot(inds[..., 1] - ty[:, None], inds[..., 2] - tx[:, None])
        hits += int((sel & (err <= tol)).sum())
        total += int(sel.sum())
    return (hits / total if total else float("nan")), total


def nlmeans(noisy, dists, inds, coords, sigma: float, ps: int, h: float):
    """Denoise the query frame: weighted mean of the K matched patches, put back at the query.

    Weights ``exp(-max(d/n - 2 sigma^2, 0) / (h sigma)^2)`` with d the search distance
    over n values (two noisy copies of the same patch have d/n ~ 2 sigma^2); patches are
    read with ``gather`` and added at the query position with ``scatter``, then divided
    by the summed weights.
    """
    K = inds.shape[3]
    dn = dists / (ps * ps * noisy.shape[2])
    w = torch.exp(-(dn - 2 * sigma**2).clamp(min=0) / (h * sigma) ** 2)
    patches = gather(noisy, inds, ps=ps)
    qinds = coords.to(inds.dtype).view(1, 1, -1, 1, 3).expand(1, 1, -1, K, 3)
    agg, counts = scatter(patches, qinds, shape=noisy.shape, weights=w, ps=ps)
    return agg / counts.clamp(min=1e-12), counts


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def pct(frac: float) -> str:
    """A fraction as a percentage with one decimal, or "n/a"."""
    return "n/a" if math.isnan(frac) else f"{100 * frac:.1f}%"


def pick_queries(dk: np.ndarray, coords: np.ndarray, inds_f: np.ndarray, vid, H: int, W: int):
    """The query shown in detail and three more (flat, typical, rare), as indices into coords."""
    flat = dk.reshape(-1)
    m = min(CROP + 2, (H - 1) // 4, (W - 1) // 4)
    y, x = coords[:, 1], coords[:, 2]
    inner = (y >= m) & (y <= H - 1 - m) & (x >= m) & (x <= W - 1 - m)
    cand = np.flatnonzero(inner) if inner.any() else np.arange(len(flat))
    # the detailed query: a fairly distinctive patch (70th-95th percentile of d_k) whose
    # matches in t-1/t+1 are the most often on the true position
    lo, hi = np.percentile(flat[cand], [70, 95])
    pool = cand[(flat[cand] >= lo) & (flat[cand] <= hi)]
    if len(pool) == 0:
        pool = cand
    t = int(coords[0, 0])
    score = np.zeros(len(pool))
    for j, q in enumerate(pool):
        sub = inds_f[q : q + 1]
        frac, n = match_fraction(sub, coords[q : q + 1], vid)
        score[j] = (0 if math.isnan(frac) else frac * n) + 0.01 * (sub[:, :, 0] != t).sum()
    main = int(pool[np.argmax(score)])
    others = []
    for pct in (5, 50, 98):
        target = np.percentile(flat[cand], pct)
        order = cand[np.argsort(np.abs(flat[cand] - target))]
        for q in order:  # keep the marks apart
            if all(np.hypot(*(coords[q, 1:] - coords[o, 1:])) > 12 for o in [main, *others]):
                others.append(int(q))
                break
    return main, others
