"""The demo's figure, one function per panel, on matplotlib's Agg canvas (no pyplot).

Imported only when the figure is drawn: matplotlib is the ``demo`` extra
(``pip install 'napari-stnls[demo]'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib import patheffects as pe
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle

from ...ops import gather
from .analysis import CROP, chain, pct, pick_queries

__all__ = ["draw_figure"]

HALO = [pe.withStroke(linewidth=2.5, foreground="black")]


@dataclass
class _Query:
    """The query shown in detail: its index into the queries, position, and its matches' colours."""

    index: int
    y: int
    x: int
    others: list[int]
    rank_colours: list


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0)


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def draw_figure(vid, tm, coords, inds_f, inds_n, dn_f, dk_f, dk_n, den_f, den_n, nums, params, noisy_t,
                clean_t) -> Figure:
    """The demo's figure: (a) the frame and the window's crops with one query's matches, (b)
    its matched patches, (c) the distance maps, (d) the numbers, (e) the denoised frames.

    Parameters
    ----------
    vid : SampleVideo
    tm : int
        The query frame.
    coords : ndarray (Q, 3)
        The queries (t, y, x).
    inds_f, inds_n : ndarray (Q, K, 3)
        Their matches with and without flow.
    dn_f : ndarray (Q, K)
        Distances with flow, per value and in units of sigma^2.
    dk_f, dk_n : ndarray (nH, nW)
        Distance to the k-th match on the query grid, with and without flow.
    den_f, den_n : ndarray (H, W, C)
        The frame denoised from the matches with and without flow.
    nums, params : dict
        What :func:`~napari_stnls.cli.demo.run.run_demo` measured and its parameters.
    noisy_t, clean_t : Tensor (1, T, C, H, W)
        The videos, for reading the matched patches.
    """
    T, H, W, C = vid.shape
    K = inds_f.shape[1]
    main, others = pick_queries(dk_f, coords, inds_f, vid, H, W)
    rank_cmap = colormaps["plasma"]
    q = _Query(main, int(coords[main, 1]), int(coords[main, 2]), others,
               [rank_cmap(0.05 + 0.8 * r / max(K - 1, 1)) for r in range(K)])

    fig = Figure(figsize=(15, 17.5), layout="constrained")
    fig.suptitle(
        "napari-stnls demo: space-time patch search on a noisy video, with and without optical flow\n"
        f"sigma = {vid.sigma * 255:.0f}/255, queries on frame t = {tm} with stride0 = {params['stride0']}; "
        f"ps = {params['ps']}, ws = {params['ws']}, wt = {params['wt']}, k = {K}, itype = float; "
        f"device {params['device']}, search backend {params['backend']!r}",
        fontsize=13,
    )
    sf_a, sf_b, sf_c, sf_d = fig.subfigures(4, 1, height_ratios=[5.6, 3.4, 3.7, 3.6])
    left, right = sf_a.subfigures(1, 2, width_ratios=[1.0, 1.45])
    _frame_panel(left, vid, tm, coords, q)
    free = _window_panel(right, vid, tm, inds_f, inds_n, q, params)
    if free is not None:
        _numbers_panel(free, nums)
    _gallery_panel(sf_b, tm, coords, inds_f, dn_f, q, params["ps"], noisy_t, clean_t)
    _maps_panel(sf_c, dk_f, dk_n, H, W)
    _denoised_panel(sf_d, vid, tm, den_f, den_n, nums, K, params["h"])
    return fig


def _frame_panel(sf: SubFigure, vid, tm: int, coords: np.ndarray, q: _Query) -> None:
    """(a), left: the noisy frame with the detailed query Q and three more marked."""
    ax = sf.subplots()
    ax.imshow(_rgb(vid.noisy[tm]), interpolation="nearest")
    for j, o in enumerate(q.others):
        y, x = coords[o, 1:]
        ax.plot(x, y, "o", ms=9, mfc="none", mec="cyan", mew=2)
        ax.annotate("ABC"[j], (x, y), xytext=(7, 7), textcoords="offset points", path_effects=HALO,
                    color="cyan", fontsize=12, fontweight="bold")
    ax.plot(q.x, q.y, "s", ms=11, mfc="none", mec="yellow", mew=2.5)
    ax.annotate("Q", (q.x, q.y), xytext=(8, 8), textcoords="offset points", path_effects=HALO, color="yellow",
                fontsize=13, fontweight="bold")
    ax.set_title(
        f"(a) noisy frame t = {tm}: query Q (detailed below) and A, B, C\n"
        f"(flat, typical and rare patches: see the d_k maps in (c))",
        fontsize=11,
    )
    _no_ticks(ax)


def _window_panel(sf: SubFigure, vid, tm: int, inds_f, inds_n, q: _Query, params: dict):
    """(a), right: zoomed crops of the window's frames around Q's true positions, with its
    matches with flow (numbered circles) and without (crosses). Returns a free axis, if any."""
    T, H, W, C = vid.shape
    ws, wt = params["ws"], params["wt"]
    nt = min(T, 2 * wt + 1)
    s0 = min(max(tm - wt, 0), T - nt)
    frames = list(range(s0, s0 + nt))
    truth = chain(vid, tm, q.y, q.x, set(frames))
    axs = sf.subplots(2, 3)
    for j, s in enumerate(frames[:5]):
        a = axs.flat[j]
        ty, tx = truth[s]
        a.imshow(_rgb(vid.clean[s]), interpolation="nearest")
        a.set_xlim(tx - CROP - 0.5, tx + CROP + 0.5)
        a.set_ylim(ty + CROP + 0.5, ty - CROP - 0.5)
        r = ws // 2
        cy = min(max(min(max(ty, 0), H - 1), r), H - 1 - r)
        cx = min(max(min(max(tx, 0), W - 1), r), W - 1 - r)
        a.add_patch(Rectangle((cx - r - 0.5, cy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, ls="--", lw=1,
                              ec="white", alpha=0.8))
        sel_n = inds_n[q.index, :, 0] == s
        a.plot(inds_n[q.index, sel_n, 2], inds_n[q.index, sel_n, 1], "x", ms=7, mew=1.5, color="deepskyblue")
        for rk in np.flatnonzero(inds_f[q.index, :, 0] == s):
            y, x = inds_f[q.index, rk, 1:]
            a.plot(x, y, "o", ms=13, mfc="none", mec=q.rank_colours[rk], mew=2.2)
            a.annotate(str(rk + 1), (x, y), xytext=(6, -11), textcoords="offset points",
                       path_effects=[pe.withStroke(linewidth=2, foreground="white")],
                       color=q.rank_colours[rk], fontsize=9, fontweight="bold")
        a.plot(tx, ty, "+", ms=14, mew=2, color="lime")
        dt = s - tm
        n_f, n_n = int((inds_f[q.index, :, 0] == s).sum()), int(sel_n.sum())
        a.set_title(f"{'t' if dt == 0 else f't{dt:+d}'} (frame {s}): {n_f} | {n_n}", fontsize=10)
        _no_ticks(a)
    for a in axs.flat[len(frames[:5]):]:
        a.axis("off")
    K = inds_f.shape[1]
    sf.suptitle(
        f"Q's {K} matches with flow (circles, numbered by rank) and without flow (blue x)\n"
        f"green +: true position (chained flow); dashed: the {ws}x{ws} window placed along the flow\n"
        "(clean frames shown for visibility; titles: matches with | without flow)",
        fontsize=11,
    )
    return axs.flat[5] if len(frames) < 6 else None


def _numbers_panel(ax, nums: dict) -> None:
    """(d): the match rates and PSNRs, as text in a free cell."""
    txt = (
        "(d) matches in t-1, t+1 within 0.5 px\n"
        "of the true position (all queries):\n"
        f"   with flow:     {pct(nums['frac_f']):>6}  (of {nums['n_adj_f']})\n"
        f"   without flow:  {pct(nums['frac_n']):>6}  (of {nums['n_adj_n']})\n\n"
        "NL-means of frame t from the k matches:\n"
        f"   noisy             {nums['psnr_noisy']:5.2f} dB\n"
        f"   with flow         {nums['psnr_f']:5.2f} dB\n"
        f"   without flow      {nums['psnr_n']:5.2f} dB\n\n"
        f"search time: {nums['sec_flow']:.1f} s (flow), {nums['sec_noflow']:.1f} s (no flow)"
    )
    ax.text(0.0, 0.5, txt, family="monospace", fontsize=9.5, va="center", ha="left", transform=ax.transAxes,
            bbox=dict(boxstyle="round,pad=0.6", fc="#f4f4f4", ec="#999999"))


def _gallery_panel(sf: SubFigure, tm: int, coords, inds_f, dn_f, q: _Query, ps: int, noisy_t,
                   clean_t) -> None:
    """(b): Q's patch and its K matched patches, read with gather() from the noisy and clean videos."""
    K = inds_f.shape[1]
    C = noisy_t.shape[2]
    dev = noisy_t.device
    q_ind = torch.as_tensor(coords[q.index][None, None, None, None], dtype=torch.float32, device=dev)
    m_ind = torch.as_tensor(inds_f[q.index][None, None, None], device=dev)
    rows = []
    for video in (noisy_t, clean_t):
        pq = gather(video, q_ind, ps=ps)[0, 0, 0, 0, 0]  # (C, ps, ps)
        pm = gather(video, m_ind, ps=ps)[0, 0, 0, :, 0]  # (K, C, ps, ps)
        rows.append([pq.permute(1, 2, 0).cpu().numpy()] + [p.permute(1, 2, 0).cpu().numpy() for p in pm])
    gal = sf.subplots(2, K + 1)
    for r, (row, name) in enumerate(zip(rows, ("noisy", "clean"), strict=True)):
        for j, p in enumerate(row):
            a = gal[r, j]
            a.imshow(_rgb(p), interpolation="nearest")
            _no_ticks(a)
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
                    dt = int(inds_f[q.index, rk, 0]) - tm
                    a.set_title(f"#{rk + 1}  t{dt:+d}\nd = {dn_f[q.index, rk]:.2f}", fontsize=10,
                                color=q.rank_colours[rk])
    sf.suptitle(
        f"(b) Q's {K} matched {ps}x{ps} patches with flow, read with gather() from the noisy video "
        f"(top, what search compared) and the clean one (bottom);\n"
        f"d = distance / ({ps}x{ps}x{C} sigma^2): two noisy copies of the same patch give d ~ 2",
        fontsize=11,
    )


def _maps_panel(sf: SubFigure, dk_f: np.ndarray, dk_n: np.ndarray, H: int, W: int) -> None:
    """(c): the distance to the k-th neighbour per query, with and without flow, and their difference."""
    vmin = float(np.percentile(np.concatenate([dk_f.ravel(), dk_n.ravel()]), 1))
    vmax = float(np.percentile(np.concatenate([dk_f.ravel(), dk_n.ravel()]), 99))
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)
    maps = sf.subplots(1, 3)
    for a, m, title in ((maps[0], dk_f, "with flow"), (maps[1], dk_n, "without flow")):
        im = a.imshow(m, cmap="magma", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        a.set_title(f"d_k {title}: median {np.median(m):.2f}", fontsize=11)
        _no_ticks(a)
    sf.colorbar(im, ax=maps[:2], shrink=0.9, label="d_k = distance to k-th match / (n sigma^2)")
    diff = dk_n - dk_f
    lim = float(np.percentile(np.abs(diff), 99)) or 1.0
    im2 = maps[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest")
    maps[2].set_title(f"without - with flow: > 0 at {100 * (diff > 0).mean():.0f}% of queries", fontsize=11)
    _no_ticks(maps[2])
    sf.colorbar(im2, ax=maps[2], shrink=0.9, label="difference of d_k")
    sf.suptitle(
        "(c) how rare each patch is: distance to its k-th nearest neighbour, per query of frame t "
        "(bright = rare: edges, texture).\nWith flow, neighbouring frames are read at the true "
        "sub-pixel offset; part of the gain in flat areas is bilinear reading averaging the noise",
        fontsize=11,
    )


def _denoised_panel(sf: SubFigure, vid, tm: int, den_f, den_n, nums: dict, K: int, h: float) -> None:
    """(e): the noisy frame, NL-means from the matches with and without flow, the clean frame."""
    den = sf.subplots(1, 4)
    for a, img, title in (
        (den[0], vid.noisy[tm], f"noisy: {nums['psnr_noisy']:.2f} dB"),
        (den[1], den_f, f"NL-means with flow: {nums['psnr_f']:.2f} dB"),
        (den[2], den_n, f"NL-means without flow: {nums['psnr_n']:.2f} dB"),
        (den[3], vid.clean[tm], "clean"),
    ):
        a.imshow(_rgb(img), interpolation="nearest")
        a.set_title(title, fontsize=11)
        _no_ticks(a)
    sf.suptitle(
        f"(e) end to end: each query's {K} matches weighted by exp(-max(d - 2, 0) / h^2) "
        f"(h = {h:g}), written back at the query with scatter() and divided by the summed weights",
        fontsize=11,
    )
