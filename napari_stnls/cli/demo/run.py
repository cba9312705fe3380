"""End-to-end demo: flow-guided patch search on a noisy video, and one figure about it.

:func:`run_demo` searches the middle frame of :func:`napari_stnls.video.synthetic.sample_video`
twice (with the true optical flow and without flow), checks how often the matches in
the neighbouring frames land on the true position, denoises the frame NL-means style
from the matches (``gather`` -> weights -> ``scatter``, :mod:`.analysis`) and draws one PNG
(:mod:`.figure`). Only numpy, torch, scikit-image and matplotlib's Agg canvas are used: no
napari, no Qt, no pyplot. matplotlib is the ``demo`` extra; without it :func:`run_demo` says
so before computing anything.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

from ..._util import atomic_path, resolve_device
from ...ops import Region, backend_info, grid_view, query_coords, search
from ...video.synthetic import sample_video
from .analysis import match_fraction, nlmeans, pct, psnr

__all__ = ["run_demo", "format_report", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raise ImportError naming the ``demo`` extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the demo's figure needs matplotlib: pip install 'napari-stnls[demo]'") from None


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
        Passed to :func:`napari_stnls.video.synthetic.sample_video`.
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
    require_matplotlib()
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
    den_f, _ = nlmeans(noisy_t, d_f, i_f, coords_t, vid.sigma, ps, h)
    den_n, _ = nlmeans(noisy_t, d_n, i_n, coords_t, vid.sigma, ps, h)
    den_f = den_f[0, tm].permute(1, 2, 0).cpu().numpy()
    den_n = den_n[0, tm].permute(1, 2, 0).cpu().numpy()
    sec_den = time.perf_counter() - t0

    coords = coords_t.cpu().numpy()
    inds_f = i_f[0, 0].cpu().numpy()
    inds_n = i_n[0, 0].cpu().numpy()
    frac_f, n_adj_f = match_fraction(inds_f, coords, vid)
    frac_n, n_adj_n = match_fraction(inds_n, coords, vid)
    psnr_noisy = psnr(vid.clean[tm], vid.noisy[tm])
    psnr_f = psnr(vid.clean[tm], den_f)
    psnr_n = psnr(vid.clean[tm], den_n)

    say(5, f"figure -> {path}")
    t0 = time.perf_counter()
    # distance to the k-th neighbour, per value and in units of sigma^2, on the query grid
    norm = n_values * vid.sigma**2
    dk_f = grid_view(d_f[0, 0, :, -1], noisy_t.shape, region, stride0)[0].cpu().numpy() / norm
    dk_n = grid_view(d_n[0, 0, :, -1], noisy_t.shape, region, stride0)[0].cpu().numpy() / norm
    from .figure import draw_figure

    fig = draw_figure(
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


def format_report(res: dict) -> str:
    """A few lines summarising :func:`run_demo`'s numbers."""
    return "\n".join(
        [
            f"matches in frames t-1/t+1 within 0.5 px of the true position: "
            f"{pct(res['match_frac_flow'])} with flow ({res['n_adjacent_flow']} matches), "
            f"{pct(res['match_frac_noflow'])} without ({res['n_adjacent_noflow']})",
            f"PSNR middle frame: noisy {res['psnr_noisy']:.2f} dB, NL-means with flow "
            f"{res['psnr_denoised']:.2f} dB, without flow {res['psnr_denoised_noflow']:.2f} dB",
            f"time: search with flow {res['seconds_search_flow']:.2f} s, without "
            f"{res['seconds_search_noflow']:.2f} s, denoise {res['seconds_denoise']:.2f} s, "
            f"figure {res['seconds_figure']:.2f} s, total {res['seconds_total']:.2f} s "
            f"(search backend {res.get('backend', '?')!r})",
            f"figure: {res['out']}",
        ]
    )
