"""Independent, slow, loop-based NumPy (float64) oracle for napari_stnls.ops.

Written only from docs/api.md. Everything is plain Python loops over queries,
candidates and patch pixels; clarity over speed. Only numpy + math are used.

Videos are numpy arrays shaped (B, T, C, H, W). Per-batch views are
(T, C, H, W). Flows are (B, T, 2, H, W) with channel 0 = dx, channel 1 = dy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "reflect",
    "region_bounds",
    "query_coords",
    "read_patch",
    "chain_flow",
    "search",
    "refine",
    "iunfold",
    "ifold",
    "gather",
    "scatter",
]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def reflect(i: int, n: int) -> int:
    """Mirror integer index ``i`` into ``0..n-1`` about the border pixels.

    -1 -> 1, -2 -> 2, n -> n-2, n+1 -> n-3, periodic with period 2(n-1).
    For n == 1 everything maps to 0.
    """
    i = int(i)
    n = int(n)
    if n <= 0:
        raise ValueError("n must be positive")
    if n == 1:
        return 0
    period = 2 * (n - 1)
    m = i % period  # Python's % is non-negative for positive period
    if m >= n:
        m = period - m
    return m


def _clampf(v: float, lo: float, hi: float) -> float:
    """Clamp a float into [lo, hi]."""
    return min(max(v, lo), hi)


def _clampi(v: int, lo: int, hi: int) -> int:
    """Clamp an int into [lo, hi]."""
    return min(max(v, lo), hi)


def _shape_thw(shape: Sequence[int]) -> tuple[int, int, int]:
    """(T, H, W) from a (B, T, C, H, W) or (T, C, H, W) shape."""
    shape = tuple(int(s) for s in shape)
    return shape[-4], shape[-2], shape[-1]


def region_bounds(shape: Sequence[int], region: Any = None) -> tuple[int, int, int, int, int, int]:
    """(t0, t1, y0, y1, x0, x1) of ``region`` (None = whole video).

    Accepts a plain 6-tuple/list or any object with attributes t0..x1.
    """
    T, H, W = _shape_thw(shape)
    if region is None:
        return (0, T, 0, H, 0, W)
    if all(hasattr(region, a) for a in ("t0", "t1", "y0", "y1", "x0", "x1")):
        vals = (region.t0, region.t1, region.y0, region.y1, region.x0, region.x1)
    else:
        vals = tuple(region)
    if len(vals) != 6:
        raise ValueError("region must have 6 entries")
    return tuple(int(v) for v in vals)  # type: ignore[return-value]


# --------------------------------------------------------------------------
# query grid
# --------------------------------------------------------------------------


def query_coords(shape: Sequence[int], region: Any = None, stride0: int = 1) -> np.ndarray:
    """Query positions (Q, 3) int64 in raster (t, y, x) order.

    Queries sit at (t, y0 + i*stride0, x0 + j*stride0) for t0 <= t < t1 and
    every i, j with y0 + i*stride0 < y1, x0 + j*stride0 < x1.
    """
    t0, t1, y0, y1, x0, x1 = region_bounds(shape, region)
    out: list[tuple[int, int, int]] = []
    for t in range(t0, t1):
        y = y0
        while y < y1:
            x = x0
            while x < x1:
                out.append((t, y, x))
                x += stride0
            y += stride0
    if not out:
        return np.zeros((0, 3), dtype=np.int64)
    return np.array(out, dtype=np.int64)


# --------------------------------------------------------------------------
# patch reading with mirroring + bilinear interpolation
# --------------------------------------------------------------------------


def _bilinear_mirror(frame_c: np.ndarray, y: float, x: float) -> float:
    """Bilinear value of a (H, W) image at (y, x), corner indices mirrored."""
    H, W = frame_c.shape
    fy0 = math.floor(y)
    fx0 = math.floor(x)
    fy = y - fy0
    fx = x - fx0
    ya = reflect(fy0, H)
    yb = reflect(fy0 + 1, H)
    xa = reflect(fx0, W)
    xb = reflect(fx0 + 1, W)
    v00 = float(frame_c[ya, xa])
    v01 = float(frame_c[ya, xb])
    v10 = float(frame_c[yb, xa])
    v11 = float(frame_c[yb, xb])
    return (
        (1.0 - fy) * (1.0 - fx) * v00
        + (1.0 - fy) * fx * v01
        + fy * (1.0 - fx) * v10
        + fy * fx * v11
    )


def _bilinear_corners(y: float, x: float, H: int, W: int) -> list[tuple[int, int, float]]:
    """The 4 (mirrored row, mirrored col, weight) corners of a bilinear read."""
    fy0 = math.floor(y)
    fx0 = math.floor(x)
    fy = y - fy0
    fx = x - fx0
    return [
        (reflect(fy0, H), reflect(fx0, W), (1.0 - fy) * (1.0 - fx)),
        (reflect(fy0, H), reflect(fx0 + 1, W), (1.0 - fy) * fx),
        (reflect(fy0 + 1, H), reflect(fx0, W), fy * (1.0 - fx)),
        (reflect(fy0 + 1, H), reflect(fx0 + 1, W), fy * fx),
    ]


def read_patch(
    video_b: np.ndarray,
    t: int,
    y: float,
    x: float,
    ps: int,
    pt: int,
    dilation: int,
    chans: Sequence[int],
) -> np.ndarray:
    """Patch (pt, len(chans), ps, ps) of a (T, C, H, W) video at (t, y, x).

    Pixel (dt, c, a, b) is the value at
    (t + dt, y + dilation*(a - ps//2), x + dilation*(b - ps//2)),
    mirrored in time and space, read bilinearly for fractional y/x.
    """
    T, C, H, W = video_b.shape
    t = int(t)
    y = float(y)
    x = float(x)
    out = np.zeros((pt, len(chans), ps, ps), dtype=np.float64)
    for dt in range(pt):
        tt = reflect(t + dt, T)
        for ci, c in enumerate(chans):
            frame_c = video_b[tt, c]
            for a in range(ps):
                yy = y + dilation * (a - ps // 2)
                for b in range(ps):
                    xx = x + dilation * (b - ps // 2)
                    out[dt, ci, a, b] = _bilinear_mirror(frame_c, yy, xx)
    return out


# --------------------------------------------------------------------------
# flow chaining
# --------------------------------------------------------------------------


def _sample_flow_clamped(flow_u: np.ndarray, y: float, x: float) -> tuple[float, float]:
    """(dy, dx) read bilinearly from a (2, H, W) flow at clamp(y, x).

    The position is clamped into the frame; corners outside are clamped to
    the border. Channel 0 is dx, channel 1 is dy.
    """
    _, H, W = flow_u.shape
    cy = _clampf(y, 0.0, H - 1.0)
    cx = _clampf(x, 0.0, W - 1.0)
    fy0 = math.floor(cy)
    fx0 = math.floor(cx)
    fy = cy - fy0
    fx = cx - fx0
    ya = _clampi(fy0, 0, H - 1)
    yb = _clampi(fy0 + 1, 0, H - 1)
    xa = _clampi(fx0, 0, W - 1)
    xb = _clampi(fx0 + 1, 0, W - 1)
    vals = []
    for ch in (0, 1):
        f = flow_u[ch]
        vals.append(
            (1.0 - fy) * (1.0 - fx) * float(f[ya, xa])
            + (1.0 - fy) * fx * float(f[ya, xb])
            + fy * (1.0 - fx) * float(f[yb, xa])
            + fy * fx * float(f[yb, xb])
        )
    dx, dy = vals[0], vals[1]
    return dy, dx


def chain_flow(
    fflow_b: np.ndarray | None,
    bflow_b: np.ndarray | None,
    t: int,
    y: float,
    x: float,
    s: int,
    H: int,
    W: int,
) -> tuple[float, float]:
    """Carry the position (y, x) of frame t along the flows to frame s.

    fflow_b / bflow_b are (T, 2, H, W). For s > t:
    p(u+1) = p(u) + fflow[u] sampled at clamp(p(u)), u = t..s-1.
    For s < t: p(u-1) = p(u) + bflow[u] sampled at clamp(p(u)), u = t..s+1.
    The chained position itself is not clamped between steps.
    """
    py, px = float(y), float(x)
    if s == t or fflow_b is None or bflow_b is None:
        return py, px
    assert fflow_b.shape[-2:] == (H, W) and bflow_b.shape[-2:] == (H, W)
    if s > t:
        for u in range(t, s):
            dy, dx = _sample_flow_clamped(fflow_b[u], py, px)
            py, px = py + dy, px + dx
    else:
        for u in range(t, s, -1):
            dy, dx = _sample_flow_clamped(bflow_b[u], py, px)
            py, px = py + dy, px + dx
    return py, px


def _split_flows(flows: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(fflow, bflow) from None, a (fflow, bflow) pair or a dict."""
    if flows is None:
        return None, None
    if isinstance(flows, dict):
        return np.asarray(flows["fflow"], dtype=np.float64), np.asarray(flows["bflow"], dtype=np.float64)
    if hasattr(flows, "fflow") and hasattr(flows, "bflow"):
        return np.asarray(flows.fflow, dtype=np.float64), np.asarray(flows.bflow, dtype=np.float64)
    fflow, bflow = flows
    return np.asarray(fflow, dtype=np.float64), np.asarray(bflow, dtype=np.float64)


# --------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------


def search(
    queries: np.ndarray,
    keys: np.ndarray,
    *,
    ps: int,
    ws: int,
    wt: int,
    k: int,
    flows: Any = None,
    dist: str = "l2",
    stride0: int = 1,
    stride1: float = 1.0,
    dilation: int = 1,
    pt: int = 1,
    nheads: int = 1,
    region: Any = None,
    exclude_self: bool = False,
    itype: str = "float",
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k non-local search.

    Returns dists (B, nheads, Q, k) float64 and inds (B, nheads, Q, k, 3)
    float64 holding absolute (t, y, x) positions in ``keys``.
    ``flows`` is None or a pair (fflow, bflow), each (B, T, 2, H, W).
    """
    queries = np.asarray(queries, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.float64)
    B, T, C, H, W = keys.shape
    if queries.shape != keys.shape:
        raise ValueError("queries and keys must have the same shape")
    if dist not in ("l2", "prod"):
        raise ValueError("dist must be 'l2' or 'prod'")
    if itype not in ("int", "float"):
        raise ValueError("itype must be 'int' or 'float'")
    if C % nheads != 0:
        raise ValueError("nheads must divide C")
    if ws % 2 != 1 or (ws - 1) * stride1 > H - 1 or (ws - 1) * stride1 > W - 1:
        raise ValueError("ws: grid must be odd and fit in the frame")
    if itype == "int" and float(stride1) != float(int(round(stride1))):
        raise ValueError("stride1 must be an integer with itype='int'")
    nt = min(T, 2 * wt + 1)
    kmax = nt * ws * ws - (1 if exclude_self else 0)
    if k > kmax:
        raise ValueError("k too large")

    fflow, bflow = _split_flows(flows)
    qc = query_coords(keys.shape, region, stride0)
    Q = qc.shape[0]
    Ch = C // nheads
    half = ws // 2
    r = stride1 * half

    dists = np.zeros((B, nheads, Q, k), dtype=np.float64)
    inds = np.zeros((B, nheads, Q, k, 3), dtype=np.float64)

    for bi in range(B):
        fb = None if fflow is None else fflow[bi]
        bb = None if bflow is None else bflow[bi]
        for h in range(nheads):
            chans = list(range(h * Ch, (h + 1) * Ch))
            for qi in range(Q):
                t, qy, qx = (int(v) for v in qc[qi])
                qpatch = read_patch(queries[bi], t, qy, qx, ps, pt, dilation, chans)
                s0 = _clampi(t - wt, 0, T - nt)
                cands: list[tuple[float, float, float, float]] = []  # (d, s, y, x)
                for s in range(s0, s0 + nt):
                    py, px = chain_flow(fb, bb, t, qy, qx, s, H, W)
                    cy = _clampf(py, 0.0, H - 1.0)
                    cx = _clampf(px, 0.0, W - 1.0)
                    cy = _clampf(cy, r, H - 1 - r)
                    cx = _clampf(cx, r, W - 1 - r)
                    if itype == "int":
                        cy = float(np.round(cy))
                        cx = float(np.round(cx))
                    for i in range(ws):
                        for j in range(ws):
                            ky = cy + stride1 * (i - half)
                            kx = cx + stride1 * (j - half)
                            if itype == "int":
                                ky = float(int(round(ky)))
                                kx = float(int(round(kx)))
                            if (
                                exclude_self
                                and s == t
                                and abs(ky - qy) <= 1e-4
                                and abs(kx - qx) <= 1e-4
                            ):
                                continue
                            kpatch = read_patch(keys[bi], s, ky, kx, ps, pt, dilation, chans)
                            if dist == "l2":
                                d = 0.0
                                for v1, v2 in zip(qpatch.ravel(), kpatch.ravel(), strict=False):
                                    d += (float(v1) - float(v2)) ** 2
                            else:
                                d = 0.0
                                for v1, v2 in zip(qpatch.ravel(), kpatch.ravel(), strict=False):
                                    d += float(v1) * float(v2)
                            cands.append((d, float(s), ky, kx))
                if dist == "l2":
                    key = lambda c: (c[0], c[1], c[2], c[3])  # noqa: E731
                else:
                    key = lambda c: (-c[0], c[1], c[2], c[3])  # noqa: E731
                best = sorted(cands, key=key)[:k]
                for ki, (d, s, ky, kx) in enumerate(best):
                    dists[bi, h, qi, ki] = d
                    inds[bi, h, qi, ki] = (s, ky, kx)
    return dists, inds


# --------------------------------------------------------------------------
# refine
# --------------------------------------------------------------------------


def _distance(qpatch: np.ndarray, kpatch: np.ndarray, dist: str) -> float:
    d = 0.0
    for v1, v2 in zip(qpatch.ravel(), kpatch.ravel(), strict=True):
        d += (float(v1) - float(v2)) ** 2 if dist == "l2" else float(v1) * float(v2)
    return d


def refine(
    queries: np.ndarray,
    keys: np.ndarray,
    inds: np.ndarray,
    *,
    ps: int,
    wr: int,
    k: int | None = None,
    dist: str = "l2",
    pt: int = 1,
    dilation: int = 1,
    nheads: int = 1,
    stride0: int = 1,
    region: Any = None,
    itype: str = "float",
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force refinement around given positions.

    ``inds`` (B, nheads or 1, Q, K_in, 3) holds K_in positions per query of the grid.
    Around each one, a wr x wr window of whole-pixel offsets, its centre moved inside the
    frame as search moves its window; a position reached from several windows counts once.
    Returns the k best (default K_in) by (distance, t, y, x): dists (B, nheads, Q, k)
    float64 and inds (B, nheads, Q, k, 3) float64. A query with fewer than k distinct
    candidates gets the worst distance and the position of its first window's first
    candidate in the remaining entries.
    """
    queries = np.asarray(queries, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.float64)
    inds = np.asarray(inds, dtype=np.float64)
    B, T, C, H, W = keys.shape
    if wr % 2 != 1 or wr > min(H, W):
        raise ValueError("wr: must be odd and fit in the frame")
    qc = query_coords(keys.shape, region, stride0)
    Q = qc.shape[0]
    K_in = inds.shape[3]
    if inds.shape[:3] not in ((B, nheads, Q), (B, 1, Q)) or inds.shape[4] != 3:
        raise ValueError("inds: bad shape")
    k = K_in if k is None else k
    if k > K_in * wr * wr - (1 if exclude_self else 0):
        raise ValueError("k too large")
    Ch = C // nheads
    r = wr // 2
    worst = math.inf if dist == "l2" else -math.inf
    dists = np.zeros((B, nheads, Q, k), dtype=np.float64)
    out = np.zeros((B, nheads, Q, k, 3), dtype=np.float64)
    for bi in range(B):
        for h in range(nheads):
            chans = list(range(h * Ch, (h + 1) * Ch))
            for qi in range(Q):
                t, qy, qx = (int(v) for v in qc[qi])
                qpatch = read_patch(queries[bi], t, qy, qx, ps, pt, dilation, chans)
                seen: set[tuple[float, float, float]] = set()
                cands: list[tuple[float, float, float, float]] = []
                first = None
                for j in range(K_in):
                    s, y, x = (float(v) for v in inds[bi, h if inds.shape[1] > 1 else 0, qi, j])
                    cy = _clampf(y, 0.0, H - 1.0)
                    cx = _clampf(x, 0.0, W - 1.0)
                    if itype == "int":
                        cy, cx = float(np.round(cy)), float(np.round(cx))
                    cy = _clampf(cy, r, H - 1 - r)
                    cx = _clampf(cx, r, W - 1 - r)
                    for dy in range(-r, r + 1):
                        for dx in range(-r, r + 1):
                            pos = (s, cy + dy, cx + dx)
                            if first is None:
                                first = pos
                            is_self = s == t and abs(pos[1] - qy) < 1e-4 and abs(pos[2] - qx) < 1e-4
                            if exclude_self and is_self:
                                continue
                            if pos in seen:
                                continue
                            seen.add(pos)
                            kpatch = read_patch(keys[bi], int(s), pos[1], pos[2], ps, pt, dilation, chans)
                            cands.append((_distance(qpatch, kpatch, dist), *pos))
                sign = 1.0 if dist == "l2" else -1.0
                best = sorted(cands, key=lambda c: (sign * c[0], c[1], c[2], c[3]))[:k]
                best += [(worst, *first)] * (k - len(best))
                for ki, (d, s, ky, kx) in enumerate(best):
                    dists[bi, h, qi, ki] = d
                    out[bi, h, qi, ki] = (s, ky, kx)
    return dists, out


# --------------------------------------------------------------------------
# iunfold / ifold (zeros outside, no mirroring)
# --------------------------------------------------------------------------


def iunfold(
    video: np.ndarray,
    region: Any = None,
    *,
    ps: int,
    stride: int = 1,
    dilation: int = 1,
    pt: int = 1,
) -> np.ndarray:
    """Patches (B, Q, pt*C*ps*ps) of the query grid, zeros outside the video."""
    video = np.asarray(video, dtype=np.float64)
    B, T, C, H, W = video.shape
    qc = query_coords(video.shape, region, stride)
    Q = qc.shape[0]
    out = np.zeros((B, Q, pt, C, ps, ps), dtype=np.float64)
    for bi in range(B):
        for qi in range(Q):
            t, y, x = (int(v) for v in qc[qi])
            for dt in range(pt):
                tt = t + dt
                if tt < 0 or tt >= T:
                    continue
                for c in range(C):
                    for a in range(ps):
                        yy = y + dilation * (a - ps // 2)
                        if yy < 0 or yy >= H:
                            continue
                        for b in range(ps):
                            xx = x + dilation * (b - ps // 2)
                            if xx < 0 or xx >= W:
                                continue
                            out[bi, qi, dt, c, a, b] = video[bi, tt, c, yy, xx]
    return out.reshape(B, Q, pt * C * ps * ps)


def ifold(
    patches: np.ndarray,
    shape: Sequence[int],
    region: Any = None,
    *,
    ps: int,
    stride: int = 1,
    dilation: int = 1,
    pt: int = 1,
) -> np.ndarray:
    """Adjoint of iunfold: add each patch value into its pixel, drop outside."""
    patches = np.asarray(patches, dtype=np.float64)
    B, T, C, H, W = (int(s) for s in shape)
    qc = query_coords((B, T, C, H, W), region, stride)
    Q = qc.shape[0]
    if patches.shape != (B, Q, pt * C * ps * ps):
        raise ValueError(f"bad patches shape {patches.shape!r}")
    p = patches.reshape(B, Q, pt, C, ps, ps)
    out = np.zeros((B, T, C, H, W), dtype=np.float64)
    for bi in range(B):
        for qi in range(Q):
            t, y, x = (int(v) for v in qc[qi])
            for dt in range(pt):
                tt = t + dt
                if tt < 0 or tt >= T:
                    continue
                for c in range(C):
                    for a in range(ps):
                        yy = y + dilation * (a - ps // 2)
                        if yy < 0 or yy >= H:
                            continue
                        for b in range(ps):
                            xx = x + dilation * (b - ps // 2)
                            if xx < 0 or xx >= W:
                                continue
                            out[bi, tt, c, yy, xx] += p[bi, qi, dt, c, a, b]
    return out


# --------------------------------------------------------------------------
# gather / scatter (mirroring + bilinear)
# --------------------------------------------------------------------------


def _check_centre(t: float, y: float, x: float, T: int, H: int, W: int) -> int:
    """Validate a gather/scatter centre; return integer t."""
    if float(t) != float(int(round(float(t)))):
        raise ValueError("t must be integer-valued")
    ti = int(round(float(t)))
    if ti < 0 or ti > T - 1 or y < 0 or y > H - 1 or x < 0 or x > W - 1:
        raise ValueError("centre outside the video")
    return ti


def gather(
    video: np.ndarray,
    inds: np.ndarray,
    *,
    ps: int,
    pt: int = 1,
    dilation: int = 1,
) -> np.ndarray:
    """Patches (B, nheads, Q, K, pt, C/nheads, ps, ps) read at ``inds``."""
    video = np.asarray(video, dtype=np.float64)
    inds = np.asarray(inds)
    B, T, C, H, W = video.shape
    _, nheads, Q, K, three = inds.shape
    assert three == 3 and C % nheads == 0
    Ch = C // nheads
    out = np.zeros((B, nheads, Q, K, pt, Ch, ps, ps), dtype=np.float64)
    for bi in range(B):
        for h in range(nheads):
            chans = list(range(h * Ch, (h + 1) * Ch))
            for qi in range(Q):
                for ki in range(K):
                    t, y, x = (float(v) for v in inds[bi, h, qi, ki])
                    ti = _check_centre(t, y, x, T, H, W)
                    out[bi, h, qi, ki] = read_patch(video[bi], ti, y, x, ps, pt, dilation, chans)
    return out


def scatter(
    patches: np.ndarray,
    inds: np.ndarray,
    shape: Sequence[int],
    *,
    weights: np.ndarray | None = None,
    ps: int,
    pt: int = 1,
    dilation: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Write patches back into a (B, T, C, H, W) video (adjoint of gather).

    Each patch value times its weight times the bilinear corner weight is
    added into each mirrored corner pixel (frame mirrored in time); the
    weight times the corner weight goes into ``counts`` once per patch pixel
    (dt, a, b) -- in channel 0 for one head, in channel h for head h.
    """
    patches = np.asarray(patches, dtype=np.float64)
    inds = np.asarray(inds)
    B, T, C, H, W = (int(s) for s in shape)
    _, nheads, Q, K, three = inds.shape
    assert three == 3 and C % nheads == 0
    Ch = C // nheads
    if patches.shape != (B, nheads, Q, K, pt, Ch, ps, ps):
        raise ValueError(f"bad patches shape {patches.shape!r}")
    if weights is None:
        weights = np.ones((B, nheads, Q, K), dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    video = np.zeros((B, T, C, H, W), dtype=np.float64)
    counts = np.zeros((B, T, 1 if nheads == 1 else nheads, H, W), dtype=np.float64)
    for bi in range(B):
        for h in range(nheads):
            for qi in range(Q):
                for ki in range(K):
                    t, y, x = (float(v) for v in inds[bi, h, qi, ki])
                    ti = _check_centre(t, y, x, T, H, W)
                    wgt = float(weights[bi, h, qi, ki])
                    for dt in range(pt):
                        tt = reflect(ti + dt, T)
                        for a in range(ps):
                            yy = y + dilation * (a - ps // 2)
                            for b in range(ps):
                                xx = x + dilation * (b - ps // 2)
                                for (cy, cx, cw) in _bilinear_corners(yy, xx, H, W):
                                    counts[bi, tt, h if nheads > 1 else 0, cy, cx] += wgt * cw
                                    for ci in range(Ch):
                                        c = h * Ch + ci
                                        video[bi, tt, c, cy, cx] += (
                                            wgt * cw * patches[bi, h, qi, ki, dt, ci, a, b]
                                        )
    return video, counts
