"""End-to-end demo: flow-guided patch search on a noisy video, and one figure about it.

:func:`run_demo` searches the middle frame of :func:`napari_stnls.data.sample_video`
twice (with the true optical flow and without flow), checks how often the matches in
the neighbouring frames land on the true position, denoises the frame NL-means style
from the matches (``gather`` -> weights -> ``scatter``) and draws one PNG. Only numpy,
torch, scikit-image and matplotlib's Agg canvas are used: no napari, no Qt, no pyplot.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ._atomic import atomic_path
from .data import sample_video
from .ops import Region, backend_info, gather, grid_view, query_coords, scatter, search

__all__ = ["run_demo", "resolve_device"]

_CROP = 9  # half-side of the zoomed crops, pixels


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when present) or a torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'auto', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device: CUDA was requested but torch.cuda.is_available() is False; use 'cpu' or 'auto'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'auto', got {device!r}")
    return dev


def _check_out(out) -> Path:
    """Make the output's folder and check that a file can be created there (fail fast)."""
    try:
        path = Path(os.fspath(out))
    except TypeError:
        raise ValueError(f"out: expected a file path, got {out!r}") from None
    if path.is_dir():
        raise OSError(f"cannot write the figure to {str(path)!r}: it is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise OSError(f"cannot write the figure to {str(path)!r}: {str(p)!r} is not a directory")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".png", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write the figure to {str(path)!r}: {e.strerror or e}") from e
    return path


def _save_atomic(fig, path: Path, dpi: int) -> None:
    """Write the PNG to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_path(path, ".png") as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _bilinear(field: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear read of field (2, H, W) at (y, x) clamped into the frame (as search does)."""
    H, W = field.shape[1:]
    y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    fy, fx = y - y0, x - x0
    return (1 - fy) * ((1 - fx) * field[:, y0, x0] + fx * field[:, y0, x1]) + fy * (
        (1 - fx) * field[:, y1, x0] + fx * field[:, y1, x1]
    )


def _chain(vid, t: int, y: float, x: float, frames) -> dict[int, tuple[float, float]]:
    """True position of the content at (t, y, x) in each of ``frames``, following the flow."""
    pos = {t: (float(y), float(x))}
    for step, flow in ((1, vid.fflow), (-1, vid.bflow)):
        py, px, u = float(y), float(x), t
        while (u + step) in frames:
            dx, dy = _bilinear(flow[u], py, px)
            py, px, u = py + dy, px + dx, u + step
            pos[u] = (py, px)
    return pos


def _match_fraction(inds: np.ndarray, coords: np.ndarray, vid, tol: float = 0.5):
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


def _nlmeans(noisy, dists, inds, coords, sigma: float, ps: int, h: float):
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


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0)


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def run_demo(
    out="out/demo.png",
    *,
    device="cpu",
    progress: bool = True,
    n_frames: int = 5,
    size: tuple[int, int] = (128, 160),
    sigma: float = 20 / 255,
    seed: int = 0,
    ps: int = 7,
    ws: int = 9,
    wt: int = 2,
    k: int = 8,
    stride0: int = 1,
    h: float = 0.5,
    dpi: int = 100,
) -> dict:
    """Search the noisy sample video with and without its true flow; draw one figure.

    On ``sample_video(n_frames, size, sigma, seed)``'s noisy video, the queries of the
    middle frame (every ``stride0``-th pixel, ``region=`` that frame) are searched for
    their ``k`` nearest ``ps x ps`` patches in a ``ws x ws`` window over frames t-wt..t+wt
    (``itype="float"``), once following the true flow and once without flow. The PNG
    written to ``out`` (atomically; folders are created) shows:

    (a) the noisy middle frame with a few queries marked, and zoomed crops of every
        frame of the window with one query's matches (with flow) and the true position;
    (b) that query's matched patches (noisy and clean), distances as titles;
    (c) the distance to the k-th neighbour per query, with and without flow;
    (d) the fraction of the matches in frames t-1/t+1 within 0.5 px of the true
        position, and an NL-means denoising of the frame from the matches with its PSNR.

    Parameters
    ----------
    out : str or path
        PNG to write.
    device : str or torch.device
        "cpu", "cuda" or "auto" (CUDA when available).
    progress : bool
        Print each step and a short report.
    n_frames, size, sigma, seed
        Passed to :func:`napari_stnls.data.sample_video`.
    ps, ws, wt, k, stride0
        Search parameters (see :func:`napari_stnls.ops.search`).
    h : float
        NL-means filtering parameter, in units of sigma.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    dict
        ``psnr_noisy``, ``psnr_denoised`` (with flow), ``psnr_denoised_noflow``,
        ``match_frac_flow``, ``match_frac_noflow`` (fractions in [0, 1]),
        ``n_adjacent_flow``, ``n_adjacent_noflow`` (matches in frames t+-1),
        ``seconds_search_flow``, ``seconds_search_noflow``, ``seconds_denoise``,
        ``seconds_figure``, ``seconds_total``, ``n_queries``, ``backend`` (search's backend on
        the device) and ``out`` (the path written).

    Raises
    ------
    OSError
        If ``out`` cannot be written (checked before any computation).
    ValueError
        On bad arguments (each message names the argument).
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0 or not math.isfinite(h):
        raise ValueError(f"h: expected a positive number, got {h!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma: the demo needs noise, expected a positive number, got {sigma!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise ValueError(f"dpi: expected an int in 20..600, got {dpi!r}")
    path = _check_out(out)
    nsteps = 5

    def say(i, msg):
        if progress:
            print(f"[demo {i}/{nsteps}] {msg}", flush=True)

    vid = sample_video(n_frames, size, sigma, seed)
    T, H, W, C = vid.shape
    say(1, f"sample video: {T} frames of {H}x{W}, sigma = {sigma * 255:.3g}/255, known sub-pixel motion")
    clean_t, noisy_t, flows = vid.to_torch(device=dev)
    tm = T // 2
    region = Region(tm, tm + 1, 0, H, 0, W)
    coords_t = query_coords(noisy_t.shape, region, stride0, device=dev)
    Q = coords_t.shape[0]
    kw = dict(ps=ps, ws=ws, wt=wt, k=k, stride0=stride0, region=region, itype="float")

    backend = backend_info()["search"].get(dev.type, "?")
    say(
        2,
        f"search with the true flow: {Q} queries in frame {tm}, ps={ps} ws={ws} wt={wt} k={k} "
        f"(backend {backend!r})",
    )
    t0 = time.perf_counter()
    d_f, i_f = search(noisy_t, noisy_t, flows=flows, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec_flow = time.perf_counter() - t0

    say(3, "search without flow")
    t0 = time.perf_counter()
    d_n, i_n = search(noisy_t, noisy_t, flows=None, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec_noflow = time.perf_counter() - t0

    say(4, "NL-means from the matches (gather, weights, scatter)")
    t0 = time.perf_counter()
    n_values = ps * ps * C
    den_f, _ = _nlmeans(noisy_t, d_f, i_f, coords_t, vid.sigma, ps, h)
    den_n, _ = _nlmeans(noisy_t, d_n, i_n, coords_t, vid.sigma, ps, h)
    den_f = den_f[0, tm].permute(1, 2, 0).cpu().numpy()
    den_n = den_n[0, tm].permute(1, 2, 0).cpu().numpy()
    sec_den = time.perf_counter() - t0

    coords = coords_t.cpu().numpy()
    inds_f = i_f[0, 0].cpu().numpy()
    inds_n = i_n[0, 0].cpu().numpy()
    frac_f, n_adj_f = _match_fraction(inds_f, coords, vid)
    frac_n, n_adj_n = _match_fraction(inds_n, coords, vid)
    psnr_noisy = _psnr(vid.clean[tm], vid.noisy[tm])
    psnr_f = _psnr(vid.clean[tm], den_f)
    psnr_n = _psnr(vid.clean[tm], den_n)

    say(5, f"figure -> {path}")
    t0 = time.perf_counter()
    # distance to the k-th neighbour, per value and in units of sigma^2, on the query grid
    norm = n_values * vid.sigma**2
    dk_f = grid_view(d_f[0, 0, :, -1], noisy_t.shape, region, stride0)[0].cpu().numpy() / norm
    dk_n = grid_view(d_n[0, 0, :, -1], noisy_t.shape, region, stride0)[0].cpu().numpy() / norm
    fig = _figure(
        vid,
        tm,
        coords,
        inds_f,
        inds_n,
        d_f[0, 0].cpu().numpy() / norm,
        dk_f,
        dk_n,
        den_f,
        den_n,
        dict(
            frac_f=frac_f,
            frac_n=frac_n,
            n_adj_f=n_adj_f,
            n_adj_n=n_adj_n,
            psnr_noisy=psnr_noisy,
            psnr_f=psnr_f,
            psnr_n=psnr_n,
            sec_flow=sec_flow,
            sec_noflow=sec_noflow,
        ),
        dict(ps=ps, ws=ws, wt=wt, k=k, stride0=stride0, h=h, device=str(dev), backend=backend),
        noisy_t,
        clean_t,
    )
    _save_atomic(fig, path, dpi)
    sec_fig = time.perf_counter() - t0
    total = time.perf_counter() - t_start

    res = {
        "psnr_noisy": psnr_noisy,
        "psnr_denoised": psnr_f,
        "psnr_denoised_noflow": psnr_n,
        "match_frac_flow": frac_f,
        "match_frac_noflow": frac_n,
        "n_adjacent_flow": n_adj_f,
        "n_adjacent_noflow": n_adj_n,
        "n_queries": int(Q),
        "backend": backend,
        "seconds_search_flow": sec_flow,
        "seconds_search_noflow": sec_noflow,
        "seconds_denoise": sec_den,
        "seconds_figure": sec_fig,
        "seconds_total": total,
        "out": str(path),
    }
    if progress:
        print(format_report(res), flush=True)
    return res


def _pct(frac: float) -> str:
    return "n/a" if math.isnan(frac) else f"{100 * frac:.1f}%"


def format_report(res: dict) -> str:
    """A few lines summarising :func:`run_demo`'s numbers."""
    return "\n".join(
        [
            f"matches in frames t-1/t+1 within 0.5 px of the true position: "
            f"{_pct(res['match_frac_flow'])} with flow ({res['n_adjacent_flow']} matches), "
            f"{_pct(res['match_frac_noflow'])} without ({res['n_adjacent_noflow']})",
            f"PSNR middle frame: noisy {res['psnr_noisy']:.2f} dB, NL-means with flow "
            f"{res['psnr_denoised']:.2f} dB, without flow {res['psnr_denoised_noflow']:.2f} dB",
            f"time: search with flow {res['seconds_search_flow']:.2f} s, without "
            f"{res['seconds_search_noflow']:.2f} s, denoise {res['seconds_denoise']:.2f} s, "
            f"figure {res['seconds_figure']:.2f} s, total {res['seconds_total']:.2f} s "
            f"(search backend {res.get('backend', '?')!r})",
            f"figure: {res['out']}",
        ]
    )


def _pick_queries(dk: np.ndarray, coords: np.ndarray, inds_f: np.ndarray, vid, H: int, W: int):
    """The query shown in detail and three more (flat, typical, rare), as indices into coords."""
    flat = dk.reshape(-1)
    m = min(_CROP + 2, (H - 1) // 4, (W - 1) // 4)
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
        frac, n = _match_fraction(sub, coords[q : q + 1], vid)
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


def _figure(vid, tm, coords, inds_f, inds_n, dn_f, dk_f, dk_n, den_f, den_n, nums, params, noisy_t, clean_t):
    from matplotlib import colormaps
    from matplotlib import patheffects as pe
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    T, H, W, C = vid.shape
    K = inds_f.shape[1]
    ps, ws = params["ps"], params["ws"]
    main, others = _pick_queries(dk_f, coords, inds_f, vid, H, W)
    qy, qx = int(coords[main, 1]), int(coords[main, 2])
    nt = min(T, 2 * params["wt"] + 1)
    s0 = min(max(tm - params["wt"], 0), T - nt)
    frames = list(range(s0, s0 + nt))
    truth = _chain(vid, tm, qy, qx, set(frames))
    halo = [pe.withStroke(linewidth=2.5, foreground="black")]
    rank_cmap = colormaps["plasma"]
    rank_col = [rank_cmap(0.05 + 0.8 * r / max(K - 1, 1)) for r in range(K)]

    fig = Figure(figsize=(15, 17.5), layout="constrained")
    fig.suptitle(
        "napari-stnls demo: space-time patch search on a noisy video, with and without optical flow\n"
        f"sigma = {vid.sigma * 255:.0f}/255, queries on frame t = {tm} with stride0 = {params['stride0']}; "
        f"ps = {ps}, ws = {ws}, wt = {params['wt']}, k = {K}, itype = float; "
        f"device {params['device']}, search backend {params['backend']!r}",
        fontsize=13,
    )
    sf_a, sf_b, sf_c, sf_d = fig.subfigures(4, 1, height_ratios=[5.6, 3.4, 3.7, 3.6])

    # (a) the frame with the queries, and zoomed crops of the window's frames
    left, right = sf_a.subfigures(1, 2, width_ratios=[1.0, 1.45])
    ax = left.subplots()
    ax.imshow(_rgb(vid.noisy[tm]), interpolation="nearest")
    for j, q in enumerate(others):
        y, x = coords[q, 1:]
        ax.plot(x, y, "o", ms=9, mfc="none", mec="cyan", mew=2)
        ax.annotate(
            "ABC"[j],
            (x, y),
            xytext=(7, 7),
            textcoords="offset points",
            path_effects=halo,
            color="cyan",
            fontsize=12,
            fontweight="bold",
        )
    ax.plot(qx, qy, "s", ms=11, mfc="none", mec="yellow", mew=2.5)
    ax.annotate(
        "Q",
        (qx, qy),
        xytext=(8, 8),
        textcoords="offset points",
        path_effects=halo,
        color="yellow",
        fontsize=13,
        fontweight="bold",
    )
    ax.set_title(
        f"(a) noisy frame t = {tm}: query Q (detailed below) and A, B, C\n"
        f"(flat, typical and rare patches: see the d_k maps in (c))",
        fontsize=11,
    )
    ax.set_xticks([])
    ax.set_yticks([])

    axs = right.subplots(2, 3)
    for j, s in enumerate(frames[:5]):
        a = axs.flat[j]
        ty, tx = truth[s]
        a.imshow(_rgb(vid.clean[s]), interpolation="nearest")
        a.set_xlim(tx - _CROP - 0.5, tx + _CROP + 0.5)
        a.set_ylim(ty + _CROP + 0.5, ty - _CROP - 0.5)
        r = ws // 2
        cy = min(max(min(max(ty, 0), H - 1), r), H - 1 - r)
        cx = min(max(min(max(tx, 0), W - 1), r), W - 1 - r)
        a.add_patch(
            Rectangle(
                (cx - r - 0.5, cy - r - 0.5),
                2 * r + 1,
                2 * r + 1,
                fill=False,
                ls="--",
                lw=1,
                ec="white",
                alpha=0.8,
            )
        )
        sel_n = inds_n[main, :, 0] == s
        a.plot(inds_n[main, sel_n, 2], inds_n[main, sel_n, 1], "x", ms=7, mew=1.5, color="deepskyblue")
        for rk in np.flatnonzero(inds_f[main, :, 0] == s):
            y, x = inds_f[main, rk, 1:]
            a.plot(x, y, "o", ms=13, mfc="none", mec=rank_col[rk], mew=2.2)
            a.annotate(
                str(rk + 1),
                (x, y),
                xytext=(6, -11),
                textcoords="offset points",
                path_effects=[pe.withStroke(linewidth=2, foreground="white")],
                color=rank_col[rk],
                fontsize=9,
                fontweight="bold",
            )
        a.plot(tx, ty, "+", ms=14, mew=2, color="lime")
        dt = s - tm
        n_f, n_n = int((inds_f[main, :, 0] == s).sum()), int(sel_n.sum())
        a.set_title(f"{'t' if dt == 0 else f't{dt:+d}'} (frame {s}): {n_f} | {n_n}", fontsize=10)
        a.set_xticks([])
        a.set_yticks([])
    for a in axs.flat[len(frames[:5]) :]:
        a.axis("off")
    right.suptitle(
        f"Q's {K} matches with flow (circles, numbered by rank) and without flow (blue x)\n"
        f"green +: true position (chained flow); dashed: the {ws}x{ws} window placed along the flow\n"
        "(clean frames shown for visibility; titles: matches with | without flow)",
        fontsize=11,
    )
    # (d) the numbers, in the free cell
    if len(frames) < 6:
        a = axs.flat[5]
        txt = (
            "(d) matches in t-1, t+1 within 0.5 px\n"
            "of the true position (all queries):\n"
            f"   with flow:     {_pct(nums['frac_f']):>6}  (of {nums['n_adj_f']})\n"
            f"   without flow:  {_pct(nums['frac_n']):>6}  (of {nums['n_adj_n']})\n\n"
            "NL-means of frame t from the k matches:\n"
            f"   noisy             {nums['psnr_noisy']:5.2f} dB\n"
            f"   with flow         {nums['psnr_f']:5.2f} dB\n"
            f"   without flow      {nums['psnr_n']:5.2f} dB\n\n"
            f"search time: {nums['sec_flow']:.1f} s (flow), {nums['sec_noflow']:.1f} s (no flow)"
        )
        a.text(
            0.0,
            0.5,
            txt,
            family="monospace",
            fontsize=9.5,
            va="center",
            ha="left",
            transform=a.transAxes,
            bbox=dict(boxstyle="round,pad=0.6", fc="#f4f4f4", ec="#999999"),
        )

    # (b) gallery of Q's matched patches
    q_ind = torch.as_tensor(coords[main][None, None, None, None], dtype=torch.float32, device=noisy_t.device)
    m_ind = torch.as_tensor(inds_f[main][None, None, None], device=noisy_t.device)
    rows = []
    for video in (noisy_t, clean_t):
        pq = gather(video, q_ind, ps=ps)[0, 0, 0, 0, 0]  # (C, ps, ps)
        pm = gather(video, m_ind, ps=ps)[0, 0, 0, :, 0]  # (K, C, ps, ps)
        rows.append([pq.permute(1, 2, 0).cpu().numpy()] + [p.permute(1, 2, 0).cpu().numpy() for p in pm])
    gal = sf_b.subplots(2, K + 1)
    for r, (row, name) in enumerate(zip(rows, ("noisy", "clean"), strict=True)):
        for j, p in enumerate(row):
            a = gal[r, j]
            a.imshow(_rgb(p), interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if j == 0:
                a.set_ylabel(name, fontsize=11)
                for sp in a.spines.values():
                    sp.set_edgecolor("gold")
                    sp.set_linewidth(3)
            if r == 0:
                if j == 0:
                    a.set_title("query Q\nframe t", fontsize=10)
                else:
                    rk = j - 1
                    dt = int(inds_f[main, rk, 0]) - tm
                    a.set_title(
                        f"#{rk + 1}  t{dt:+d}\nd = {dn_f[main, rk]:.2f}",
                        fontsize=10,
                        color=rank_col[rk],
                    )
    sf_b.suptitle(
        f"(b) Q's {K} matched {ps}x{ps} patches with flow, read with gather() from the noisy video "
        f"(top, what search compared) and the clean one (bottom);\n"
        f"d = distance / ({ps}x{ps}x{C} sigma^2): two noisy copies of the same patch give d ~ 2",
        fontsize=11,
    )

    # (c) distance to the k-th neighbour
    vmin = float(np.percentile(np.concatenate([dk_f.ravel(), dk_n.ravel()]), 1))
    vmax = float(np.percentile(np.concatenate([dk_f.ravel(), dk_n.ravel()]), 99))
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)
    maps = sf_c.subplots(1, 3)
    for a, m, title in ((maps[0], dk_f, "with flow"), (maps[1], dk_n, "without flow")):
        im = a.imshow(m, cmap="magma", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        a.set_title(f"d_k {title}: median {np.median(m):.2f}", fontsize=11)
        a.set_xticks([])
        a.set_yticks([])
    sf_c.colorbar(im, ax=maps[:2], shrink=0.9, label="d_k = distance to k-th match / (n sigma^2)")
    diff = dk_n - dk_f
    lim = float(np.percentile(np.abs(diff), 99)) or 1.0
    im2 = maps[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest")
    maps[2].set_title(f"without - with flow: > 0 at {100 * (diff > 0).mean():.0f}% of queries", fontsize=11)
    maps[2].set_xticks([])
    maps[2].set_yticks([])
    sf_c.colorbar(im2, ax=maps[2], shrink=0.9, label="difference of d_k")
    sf_c.suptitle(
        "(c) how rare each patch is: distance to its k-th nearest neighbour, per query of frame t "
        "(bright = rare: edges, texture).\nWith flow, neighbouring frames are read at the true "
        "sub-pixel offset; part of the gain in flat areas is bilinear reading averaging the noise",
        fontsize=11,
    )

    # denoising
    den = sf_d.subplots(1, 4)
    for a, img, title in (
        (den[0], vid.noisy[tm], f"noisy: {nums['psnr_noisy']:.2f} dB"),
        (den[1], den_f, f"NL-means with flow: {nums['psnr_f']:.2f} dB"),
        (den[2], den_n, f"NL-means without flow: {nums['psnr_n']:.2f} dB"),
        (den[3], vid.clean[tm], "clean"),
    ):
        a.imshow(_rgb(img), interpolation="nearest")
        a.set_title(title, fontsize=11)
        a.set_xticks([])
        a.set_yticks([])
    sf_d.suptitle(
        f"(e) end to end: each query's {K} matches weighted by exp(-max(d - 2, 0) / h^2) "
        f"(h = {params['h']:g}), written back at the query with scatter() and divided by the "
        "summed weights",
        fontsize=11,
    )
    return fig
