"""Two-step video non-local Bayes along the optical flow (after Arias & Morel's VNLB)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from .._util import Steps
from ..ops import Region, gather, scatter, search
from ..video.flow import flow_consistency
from ._prep import band_budget, dilate, prepare, split_bands, to_host
from .convert import run
from .params import COUPLED_CHANNELS, nl_bayes_params

__all__ = ["nl_bayes"]

# Forward-backward flow error (pixels) above which a reference counts as "fast" (unreliable
# flow, occlusion): see _fast_refs.
FB_TOL = 1.0

# Side of the window over which _still_refs averages the temporal variance of three frames,
# and the ratio of that average to the noise's variance under which a pixel stands still
# (21 and 1.05: about 1 in 16 truly still pixels is taken for moving, by chance; smaller
# windows or larger ratios took the smooth parts of slowly moving scenes for still); and the
# spatial variance (of the frames' mean, less the noise's share), over the noise's, under
# which it is flat, where only still and flat pixels are to be spared. inf: off. 0.1 spared
# carphone's still texture (which loses nothing to skipping; 1.1x the time at sigma 50
# instead of 1.6x) and gave the generated scenes their gain back, but cost bikes 0.03 dB at
# sigma 50, out of its table's 0.1; 0.25 no better (docs/benchmarks.md).
STILL_WIN = 21
STILL_RATIO = 1.05
STILL_FLAT = float("inf")


# Orthonormal opponent colour transform: luminance carries most of the signal, and the
# noise stays white with the same sigma in every channel.
_OPP = torch.tensor([[1 / 3**0.5, 1 / 3**0.5, 1 / 3**0.5],
                     [1 / 2**0.5, 0.0, -1 / 2**0.5],
                     [1 / 6**0.5, -2 / 6**0.5, 1 / 6**0.5]])


def _to_opp(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """(B, T, 3, H, W) RGB <-> orthonormal opponent space (Y, U, V)."""
    m = _OPP.to(x)
    return torch.einsum("dc,btchw->btdhw", m.T if inverse else m, x)


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``torch.linalg.eigh`` of small matrices, fast on the CPU.

    LAPACK's own threads slow small eigen-problems down (8x when the cores are busy), so
    on the CPU each chunk of the batch is solved single-threaded, in parallel chunks.
    On CUDA, PyTorch solves a batch of matrices larger than 32 x 32 one matrix at a time
    (seen with torch 2.11+cu130 on an H100: ``nl_bayes`` on 10 CIF frames took minutes),
    so CUDA batches go to the compiled batched Jacobi solver (:func:`._eigh.batched_eigh`),
    or, in a build without it, to the CPU and back.
    """
    from ._eigh import batched_eigh, jacobi_available

    if cov.device.type == "cuda" and jacobi_available(cov.device, cov.shape[-1], cov.dtype):
        return batched_eigh(cov, method="jacobi")
    if cov.device.type == "cuda" and cov.shape[-1] > 32 and cov.shape[0] > 1:
        vals, vecs = _eigh(cov.cpu())
        return vals.to(cov.device), vecs.to(cov.device)
    n = torch.get_num_threads()
    if cov.device.type != "cpu" or cov.shape[0] < 2:
        return torch.linalg.eigh(cov)

    def one(c):
        torch.set_num_threads(1)  # per calling thread for OpenMP/BLAS
        return torch.linalg.eigh(c)

    try:
        if n == 1:
            return one(cov)
        with ThreadPoolExecutor(n) as ex:
            parts = list(ex.map(one, cov.chunk(n)))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    finally:
        torch.set_num_threads(n)


# On a GPU, groups of more than twice this many values per patch are filtered with their
# _TOP_RANK largest eigenpairs (see _group_filter)
_TOP_RANK = 32
_TOP_DEVICES = ("cuda",)  # the CPU's LAPACK is no faster on the subspace (tests add "cpu")
# The same for groups of 33-64 values (step 1's 50: a median of 9 directions kept, 99% at most
# 21, on carphone at sigma 20) with this rank; 0: full eigen-decompositions. Off until timed
# on a GPU against the Jacobi kernel (docs/benchmarks.md).
_TOP_RANK_SMALL = 0


def _top_rank(D: int) -> int:
    """The subspace rank of :func:`_group_filter` for groups of ``D`` values (0: full)."""
    if D > 2 * _TOP_RANK:
        return _TOP_RANK
    return _TOP_RANK_SMALL if 32 < D and _TOP_RANK_SMALL < D else 0


def _group_filter(yn: torch.Tensor, yb: torch.Tensor | None, var: float, thresh: float) -> torch.Tensor:
    """Bayes estimates of the patches of groups, with VNLB's thresholded Wiener filter.

    Parameters
    ----------
    yn : Tensor, shape (N, K, D)
        The noisy patches (``D`` values each) of ``N`` groups of ``K``.
    yb : Tensor, shape (N, K, D), optional
        The same patches in the basic estimate (step 2), whose covariance is taken as the
        signal's; None (step 1): the noisy covariance minus ``var``.
    var : float
        The noise variance.
    thresh : float
        Eigen-directions whose signal variance is at most ``thresh * var`` are set to the
        group mean.

    Returns
    -------
    Tensor, shape (N, K, D)
        ``m + U diag(g) U^T (y - m)`` with ``g = l / (l + var)`` above the threshold, 0 below.
    """
    K = yn.shape[1]
    mn = yn.mean(1, keepdim=True)
    yc = yn - mn
    c = yc if yb is None else yb - yb.mean(1, keepdim=True)
    cov = c.transpose(-1, -2) @ c / (K - 1)
    shift = var if yb is None else 0.0
    out = mn.expand_as(yn).clone()
    # a covariance is positive semi-definite, so its largest eigenvalue is at most its Frobenius
    # norm: a group whose norm is at most the threshold keeps no direction (its estimate is
    # its mean) and needs no eigen-decomposition (half the groups of step 2 from sigma 40/255)
    level = thresh * var + shift
    live = (cov.flatten(1).norm(dim=1) > level).nonzero().squeeze(1)
    if len(live) == 0:
        return out
    rank = _top_rank(yn.shape[-1]) if yn.device.type in _TOP_DEVICES else 0
    if rank:
        # The filter keeps only the directions above the threshold: a median of 2 of D = 150
        # in step 2 on carphone at sigma 20 (at most 30 of 768 groups sampled). A GPU solves a
        # batch of 32 x 32 problems and products far faster than one of 150 x 150, so the
        # `rank` largest eigenpairs come from subspace iteration (top_eigh). The last Ritz
        # pairs of a block converge slowest, so a group with more than rank - 8 of them
        # above the level (it may have more directions to keep than the block holds well) is
        # decomposed in full.
        from ._eigh import top_eigh

        ev, U = top_eigh(cov[live], rank, 4)
        full = (ev > level).sum(-1) > rank - 8
        if bool(full.any()):
            _apply_gains(out, yc, live[full], *_eigh(cov[live[full]]), shift, var, thresh)
            keep = ~full
            live, ev, U = live[keep], ev[keep], U[keep]
    else:
        ev, U = _eigh(cov[live])
    _apply_gains(out, yc, live, ev, U, shift, var, thresh)
    return out


def _apply_gains(out, yc, live, ev, U, shift, var, thresh) -> None:
    """``out[live] += U diag(g) U^T yc[live]`` with the gains of :func:`_group_filter` for the
    eigenvalues ``ev`` (N, R), ascending, and eigenvectors ``U`` (N, D, R)."""
    if len(live) == 0:
        return
    ev = ev - shift
    gain = torch.where(ev > thresh * var, ev / (ev + var).clamp_min(1e-12), torch.zeros_like(ev))
    # the eigenvalues are ascending: only the last R directions, those of the group with the
    # most kept, can have a gain (a low-rank product: R is often a tenth of D)
    R = int((gain > 0).sum(-1).max())
    if R > 0:
        Ur = U[..., -R:]
        out[live] += ((yc[live] @ Ur) * gain[..., None, -R:]) @ Ur.transpose(-1, -2)


def _filter(yn: torch.Tensor, yb: torch.Tensor | None, var: float, thresh: float) -> torch.Tensor:
    """:func:`_group_filter` of a batch of groups; on the CPU in chunks of a fixed size, each
    one single-threaded, spread over torch's threads.

    Small eigen-problems gain nothing from LAPACK's threads (they slow them down, 8x when
    the cores are busy) and PyTorch solves a batch one matrix after the other, so the cores
    take whole chunks: covariances, eigen-decompositions and estimates. The chunks do not
    depend on the number of threads, so neither does the result.
    """
    N, K, D = yn.shape
    if yn.device.type != "cpu" or N == 0:
        return _group_filter(yn, yb, var, thresh)
    size = max(8, 2**28 // (D**3 + K * D * D))  # some 20-40 ms of work
    parts = [(yn[j:j + size], None if yb is None else yb[j:j + size]) for j in range(0, N, size)]
    n0 = torch.get_num_threads()
    n = min(n0, len(parts))

    def one(part):
        torch.set_num_threads(1)  # for the calling thread's OpenMP and MKL
        return _group_filter(part[0], part[1], var, thresh)

    try:
        if n <= 1:
            out = [one(q) for q in parts]
        else:
            with ThreadPoolExecutor(n) as ex:
                out = list(ex.map(one, parts))
    finally:
        torch.set_num_threads(n0)
    return torch.cat(out)


def _bayes_pass(noisy, guide, sigma, *, ps, pt, ws, wt, k, thresh, couple, luma_search, flows, stride0,
                skip, regions, rows, step, steps, fast=None, ps_fast=None, pt_fast=None, still=1.0):
    """One step of video non-local Bayes: group, estimate, aggregate every group patch.

    Groups are searched on ``guide`` (its first channel only with ``luma_search``); the
    Bayes estimate of each group's noisy patches uses the group's own covariance (step 1)
    or the guide's (step 2), with each colour channel on its own unless ``couple``.
    Eigen-directions whose signal variance is at most ``thresh * sigma^2`` are set to the
    group mean (VNLB's variance threshold).

    The references (a grid of spacing ``stride0``) run frame after frame. With ``skip > 0``
    a reference is skipped when the groups of the earlier frames already estimated its pixel
    at least ``skip * ps * ps * pt`` times (``skip`` patches' worth: VNLB's "paste trick"
    at the scale of frames). Where the frame stands still (:func:`_still_refs`), ``still``
    times as many estimates are needed (``inf``: such a reference is never skipped). Which
    references run depends only on the earlier frames and on ``noisy``, never on the bands,
    so the result is the same for any ``rows``.

    ``fast`` (B, T, H, W) bool, optional, marks the pixels whose references use patches of
    side ``ps_fast`` over ``pt_fast`` frames instead (where the motion is fast or the flow
    unreliable: see :func:`_fast_refs`); each reference is processed once, with one of them.
    """
    B, T, C, H, W = noisy.shape
    pad = ps // 2 if fast is None else max(ps, ps_fast) // 2
    out = noisy.clone() if step == 1 else guide.clone()
    var = sigma**2
    key = guide[:, :, :1] if luma_search else guide
    G = 1 if couple else C  # independent groups per reference patch
    need = skip * ps * ps * pt
    for r in regions:
        agg = torch.zeros_like(noisy)
        cnt = torch.zeros(B, T, 1, H, W, device=noisy.device)
        frame, done = -1, None
        for band in _bands(r, pad + ws, rows, noisy.shape, stride0):  # groups of nearby references reach r
            steps.check()
            todo = None
            if skip > 0:
                if band.t0 != frame:  # what the groups of the earlier frames estimated in this one
                    frame, done = band.t0, cnt[:, band.t0, 0].clone()
                    if still != 1:  # on the references' rows and columns (and the window's margin)
                        q, m = dilate(r, pad + ws, noisy.shape), STILL_WIN // 2
                        y0, x0 = max(0, q.y0 - m), max(0, q.x0 - m)
                        part = _still_refs(noisy[..., y0:min(H, q.y1 + m), x0:min(W, q.x1 + m)], frame, var)
                        sub = done[:, q.y0:q.y1, q.x0:q.x1]
                        sub[part[:, q.y0 - y0:q.y1 - y0, q.x0 - x0:q.x1 - x0]] /= still
                todo = done[:, band.y0:band.y1:stride0, band.x0:band.x1:stride0] < need  # (B, nH, nW)
                on_y, on_x = todo.any(2).any(0).nonzero(), todo.any(1).any(0).nonzero()
                if len(on_y) == 0:
                    steps.advance()
                    continue
                # search the bounding box of the references to do, then keep those
                a0, a1, b0, b1 = int(on_y[0]), int(on_y[-1]) + 1, int(on_x[0]), int(on_x[-1]) + 1
                todo = todo[:, a0:a1, b0:b1].reshape(B, -1)
                band = Region(band.t0, band.t1, band.y0 + a0 * stride0, band.y0 + (a1 - 1) * stride0 + 1,
                              band.x0 + b0 * stride0, band.x0 + (b1 - 1) * stride0 + 1)
            if fast is None:
                sets = [(ps, pt, todo)]
            else:  # the references of fast pixels with their own patches, the others as before
                f = fast[:, band.t0, band.y0:band.y1:stride0, band.x0:band.x1:stride0].reshape(B, -1)
                base = torch.ones_like(f) if todo is None else todo
                sets = [(ps, pt, base & ~f), (ps_fast, pt_fast, base & f)]
                sets = [q for q in sets if bool(q[2].any())]
            for ps_, pt_, sel in sets:
                sub, sel = (band, sel) if fast is None else _shrink(band, sel, stride0)
                _group_pass(noisy, guide, key, sub, sel, agg, cnt, ps=ps_, pt=pt_, ws=ws, wt=wt, k=k, G=G,
                            couple=couple, flows=flows, stride0=stride0, var=var, thresh=thresh, step=step)
            steps.advance()
        sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        covered = cnt[sl] > 0
        out[sl] = torch.where(covered, agg[sl] / cnt[sl].clamp_min(1e-12), out[sl])
    return out


def _shrink(band: Region, sel: torch.Tensor, stride0: int) -> tuple[Region, torch.Tensor]:
    """The bounding box of the references of ``band`` (grid of spacing ``stride0``) where
    ``sel`` (B, Q) is True, and ``sel`` cut to it: each set of references is searched only
    there (a query's neighbours do not depend on the other queries)."""
    B = sel.shape[0]
    nW = len(range(band.x0, band.x1, stride0))
    m = sel.reshape(B, -1, nW)
    on_y, on_x = m.any(2).any(0).nonzero(), m.any(1).any(0).nonzero()
    a0, a1, b0, b1 = int(on_y[0]), int(on_y[-1]) + 1, int(on_x[0]), int(on_x[-1]) + 1
    sub = Region(band.t0, band.t1, band.y0 + a0 * stride0, band.y0 + (a1 - 1) * stride0 + 1,
                 band.x0 + b0 * stride0, band.x0 + (b1 - 1) * stride0 + 1)
    return sub, m[:, a0:a1, b0:b1].reshape(B, -1)


def _group_pass(noisy, guide, key, band, sel, agg, cnt, *, ps, pt, ws, wt, k, G, couple, flows, stride0, var,
                thresh, step):
    """Search, filter and aggregate the groups of the references of ``band`` (all of them, or
    those where ``sel`` (B, Q) is True: the others are left out, or weighted 0 in a video of
    the batch that does not need them) into ``agg`` and ``cnt``."""
    B, _, C = noisy.shape[:3]
    # whole-pixel positions: bilinear reading would lower the patches' noise
    # variance below sigma^2, which the Wiener filter assumes
    _, i = search(key, key, ps=ps, pt=pt, ws=ws, wt=wt, k=k, flows=flows, region=band,
                  stride0=stride0, itype="int")
    w = None
    if sel is not None:
        keep = sel.any(0)  # done for the videos of the batch that need it, weighted 0 in the others
        i = i[:, :, keep]
        if not bool(sel[:, keep].all()):
            w = sel[:, keep].to(noisy.dtype)[:, None, :, None].expand(B, 1, -1, k).contiguous()

    def groups(v, i=i):  # (B, 1, Q, K, pt, C, ps, ps) -> (B, Q, G, K, D)
        p = gather(v, i, ps=ps, pt=pt)
        p = p.permute(0, 1, 2, 5, 3, 4, 6, 7) if not couple else p.unsqueeze(3)
        return p.reshape(B, p.shape[2], G, k, -1)

    yn = groups(noisy)
    Q = yn.shape[1]
    yb = None if step == 1 else groups(guide).flatten(0, 2)
    est = _filter(yn.flatten(0, 2), yb, var, thresh)
    if couple:
        est = est.reshape(B, 1, Q, k, pt, C, ps, ps)
    else:
        est = est.reshape(B, 1, Q, C, k, pt, ps, ps).permute(0, 1, 2, 4, 5, 3, 6, 7)
    scatter(est, i, out=(agg, cnt), weights=w, ps=ps, pt=pt)


def _fast_refs(flows, fast_motion: float) -> torch.Tensor | None:
    """Where references use the patches of fast motion: (B, T, H, W) bool, or None for none.

    A pixel is "fast" where its forward or backward flow is longer than ``fast_motion``
    pixels, or where the flows fail the forward-backward check by more than
    :data:`FB_TOL` pixels (:func:`~napari_stnls.video.flow.flow_consistency`: occlusions,
    wrong flow). Space-time patches are straight in time (the same pixels in frames t and
    t+1), so under fast or unreliable motion their second frame holds other content and
    fewer of them match; one-frame patches do not depend on it.
    """
    if flows is None or not fast_motion < float("inf"):
        return None
    f, b = flows
    mag = torch.maximum(f.norm(dim=2), b.norm(dim=2))
    return (mag > fast_motion) | (flow_consistency(f, b) > FB_TOL)


def _still_refs(noisy: torch.Tensor, t: int, var: float) -> torch.Tensor:
    """Where frame ``t`` of ``noisy`` (B, T, C, H, W) stands still: (B, H, W) bool.

    Over a :data:`STILL_WIN`-pixel square window (cut at the borders), averaged over the
    channels: the sample variance of the values in frames ``t - 1``, ``t`` and ``t + 1``
    (``t - 1`` and ``t`` in the last frame) is under :data:`STILL_RATIO` times the noise's
    ``var`` (under motion it holds the signal's change too, but on flat content), and, unless
    :data:`STILL_FLAT` is ``inf`` (the default: off), the spatial variance of those frames'
    mean, less the noise's share ``var / n``, is under ``STILL_FLAT`` times ``var`` (flat:
    texture well below the noise, as on bikes' pavement).
    No pixel of the first frame stands still (it has no earlier frame, and nothing is
    skipped there).
    """
    B, T, _, H, W = noisy.shape
    if t == 0:
        return torch.zeros(B, H, W, dtype=torch.bool, device=noisy.device)

    def box(a):  # the window's mean of (B, C, H, W)
        return torch.nn.functional.avg_pool2d(a, STILL_WIN, stride=1, padding=STILL_WIN // 2,
                                              count_include_pad=False)

    v = noisy[:, t - 1:min(T, t + 2)]
    n = v.shape[1]
    mu = v.mean(1)  # (B, C, H, W)
    temporal = box((v - mu[:, None]).square().sum(1).mean(1, keepdim=True) / (n - 1))[:, 0]
    still = temporal < STILL_RATIO * var
    if STILL_FLAT < float("inf"):
        still &= (box(mu * mu) - box(mu).square()).mean(1) - var / n < STILL_FLAT * var
    return still


def _bands(r: Region, reach: int, rows: int, shape, stride0: int) -> list[Region]:
    """The one-frame bands of references of one pass over ``r``, in the order they run.

    References lie on the grid of spacing ``stride0`` over ``r`` dilated by ``reach`` (those
    whose groups can reach ``r``); each band holds ``rows`` rows, rounded up to whole grid
    rows so that the grid never depends on ``rows``.
    """
    return split_bands(r, reach, -(-rows // stride0) * stride0, shape)


def _nl_bayes(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ps2: int | None = None,
    pt: int | None = None,
    ws: int | None = None,
    wt: int | None = None,
    k: int | None = None,
    k2: int | None = None,
    stride0: int | None = None,
    thresh: float | None = None,
    thresh2: float | None = None,
    opponent: bool = True,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    skip: float | None = None,
    skip2: float | None = None,
    still: float | None = None,
    fast_motion: float | None = None,
    ps_fast: int | None = None,
    pt_fast: int | None = None,
):
    """Two-step video non-local Bayes (after Arias & Morel's VNLB), along the flow.

    Colour videos are first taken to an orthonormal opponent space (Y, U, V), where the
    noise keeps its sigma and Y carries most of the signal. Step 1 groups the ``k`` most
    similar space-time patches (``ps x ps`` pixels over ``pt`` frames) of every reference
    patch on a grid of spacing ``stride0``, matched on Y, and filters each channel of the
    group on its own: with the eigen-decomposition of the group's covariance,
    ``x = m + U diag(g) U^T (y - m)`` where ``g = l / (l + sigma^2)`` for the signal
    variances ``l = lambda - sigma^2`` above ``thresh * sigma^2`` and 0 below. Every
    filtered patch is aggregated (averaged where patches overlap). Step 2 searches again on
    that basic estimate (all channels), takes its covariance as the oracle
    (``l = lambda_basic``, threshold ``thresh2``) and filters all channels jointly with
    ``k2`` patches of side ``ps2``.

    References are processed frame after frame, and from the second frame of a step on, a
    reference whose pixel the groups of the earlier frames already estimated at least
    ``skip * ps * ps * pt`` times (``skip2 * ps2 * ps2 * pt`` in step 2) is skipped: VNLB's
    "paste trick", decided frame by frame so that the result does not depend on how the
    work is cut into bands (nor on the number of threads). 0 processes every reference.
    Where the frame stands still, ``still`` times as many estimates are needed.

    Parameters
    ----------
    video, sigma, flows, region, device, band_rows, progress, should_stop
        As for :func:`~napari_stnls.denoise.nl_means`.
    ps, ps2, pt, ws, wt, k, k2, stride0, thresh, thresh2 : optional
        Patch side in steps 1 and 2, frames per patch, search window side, temporal
        radius, group sizes in steps 1 and 2, spacing of the reference patches, variance
        thresholds in steps 1 and 2. None takes the value tuned for ``sigma``
        (:func:`nl_bayes_params`).
    opponent : bool
        Work in the opponent colour space (3-channel videos only).
    skip, skip2 : float, optional
        How many patches' worth of estimates a pixel needs from earlier frames' groups for
        its reference to be skipped, in steps 1 and 2 (0: none is). None takes the value
        tuned for ``sigma``. Tiles of a video (``napari_stnls.stream``) equal the whole
        video's result only without skipping.
    still : float, optional
        Where the frame stands still (the variance of the noisy values over the previous,
        this and the next frame, averaged over a 21-pixel window, is under 1.05 sigma^2),
        ``still`` times as many estimates are needed before a reference is skipped (1: as
        elsewhere; ``inf``: never skipped). None takes the value tuned for ``sigma``.
    fast_motion, ps_fast, pt_fast : optional
        References at pixels whose forward or backward flow is longer than ``fast_motion``
        pixels a frame, or whose flows disagree (forward-backward error over ``FB_TOL`` = 1
        pixel: occlusions, wrong flow), use patches of side ``ps_fast`` over ``pt_fast``
        frames in both steps. None takes the table's value for ``sigma`` (``inf``, off,
        at every sigma for now; 3 gains on fast motion, see docs/benchmarks.md). Without
        ``flows`` no reference is fast.

    Returns
    -------
    Same type and layout as ``video``. Regions: each one is restored on its own (step 1 on
    the region dilated by the reach of step 2's search, step 2 on the region), so its result
    is the same whether it is given alone or with others (where regions overlap, the last
    one listed gives the value); pixels outside every region are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = nl_bayes(noisy, 0.1, ws=7, device="cpu")
    >>> bool(np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean())
    True
    """
    x, back, xd, flows, regions = prepare(video, sigma, device, region, flows, band_rows)
    B, T, C, H, W = x.shape
    p = nl_bayes_params(sigma, C)
    given = dict(ps=ps, ps2=ps2, pt=pt, ws=ws, wt=wt, k=k, k2=k2, stride0=stride0, ps_fast=ps_fast,
                 pt_fast=pt_fast)
    for name, v in given.items():
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
            p[name] = v
    numbers = dict(thresh=thresh, thresh2=thresh2, skip=skip, skip2=skip2, still=still,
                   fast_motion=fast_motion)
    for name, v in numbers.items():
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
            p[name] = float(v)
    n_cand = min(T, 2 * p["wt"] + 1) * p["ws"] ** 2  # the most neighbours a window holds
    p["k"], p["k2"] = min(p["k"], n_cand), min(p["k2"], n_cand)
    opp = bool(opponent) and C == 3
    if opp:
        xd = _to_opp(xd)
    joint = C <= COUPLED_CHANNELS  # more channels: each filtered on its own (covariances grow as C^2)
    cfg1 = dict(ps=p["ps"], k=p["k"], thresh=p["thresh"], skip=p["skip"], couple=not opp and joint,
                luma_search=opp)
    cfg2 = dict(ps=p["ps2"], k=p["k2"], thresh=p["thresh2"], skip=p["skip2"], couple=joint, luma_search=False)
    ws, wt, s0, pt = p["ws"], p["wt"], p["stride0"], p["pt"]
    fast = _fast_refs(flows, p["fast_motion"])
    if fast is not None and not bool(fast.any()):
        fast = None
    ps2_max = p["ps2"] if fast is None else max(p["ps2"], p["ps_fast"])
    # step 2 reads the basic estimate around the region: up to ws//2 + ps2 pixels (plus the
    # flow) away in space and wt frames in time
    reach = ws // 2 + ps2_max
    regions1 = [Region(max(0, r.t0 - wt), min(T, r.t1 + wt), max(0, r.y0 - reach), min(H, r.y1 + reach),
                       max(0, r.x0 - reach), min(W, r.x1 + reach)) for r in regions]

    budget = band_budget(xd.device)

    def plan(cfg, regs):
        D = pt * cfg["ps"] ** 2 * (C if cfg["couple"] else 1)
        G = 1 if cfg["couple"] else C
        per_query = G * (cfg["k"] * D * 4 * 6 + D * D * 4 * 4)
        rows = band_rows or max(s0, budget // max(1, per_query * -(-W // s0)) * s0)
        pad = cfg["ps"] // 2 if fast is None else max(cfg["ps"], p["ps_fast"]) // 2
        return rows, sum(len(_bands(r, pad + ws, rows, x.shape, s0)) for r in regs)

    (rows1, n1), (rows2, n2) = plan(cfg1, regions1), plan(cfg2, regions)
    steps = Steps(n1 + n2, progress, should_stop)
    kw = dict(pt=pt, ws=ws, wt=wt, flows=flows, stride0=s0, steps=steps, fast=fast, ps_fast=p["ps_fast"],
              pt_fast=p["pt_fast"], still=p["still"])
    with torch.no_grad():
        # Each region on its own, both steps: its result does not depend on the other
        # regions (where regions overlap, the last one listed gives the value).
        final = xd.clone()
        for r, r1 in zip(regions, regions1, strict=True):
            basic = _bayes_pass(xd, xd, sigma, step=1, regions=[r1], rows=rows1, **cfg1, **kw)
            est = _bayes_pass(xd, basic, sigma, step=2, regions=[r], rows=rows2, **cfg2, **kw)
            sl = (slice(None), slice(r.t0, r.t1), slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
            final[sl] = est[sl]
            del basic, est
        if opp:
            final = _to_opp(final, inverse=True)
            # outside the regions: the input itself, bit for bit (no round trip through YUV)
            keep = torch.ones(B, T, 1, H, W, dtype=torch.bool, device=final.device)
            for r in regions:
                keep[:, r.t0:r.t1, :, r.y0:r.y1, r.x0:r.x1] = False
            final = torch.where(keep, x.to(final), final)
    return back(to_host(final, x))


def nl_bayes(
    video,
    sigma: float,
    *,
    ps: int | None = None,
    ps2: int | None = None,
    pt: int | None = None,
    ws: int | None = None,
    wt: int | None = None,
    k: int | None = None,
    k2: int | None = None,
    stride0: int | None = None,
    thresh: float | None = None,
    thresh2: float | None = None,
    opponent: bool = True,
    axes: str | None = None,
    data_range=None,
    noise: str = "gaussian",
    gain: float | None = None,
    flows=None,
    region=None,
    device: str | torch.device | None = None,
    band_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    skip: float | None = None,
    skip2: float | None = None,
    still: float | None = None,
    fast_motion: float | None = None,
    ps_fast: int | None = None,
    pt_fast: int | None = None,
):
    """Two-step video non-local Bayes (after Arias & Morel's VNLB), along the flow.

    Step 1 groups the ``k`` most similar space-time patches (``ps x ps`` pixels over ``pt``
    frames) of every reference patch on a grid of spacing ``stride0`` and filters each
    group with the eigen-decomposition of its covariance: ``x = m + U diag(g) U^T (y - m)``
    where ``g = l / (l + sigma^2)`` for the signal variances ``l = lambda - sigma^2`` above
    ``thresh * sigma^2`` and 0 below. Every filtered patch is aggregated (averaged where
    patches overlap). Step 2 searches again on that basic estimate, takes its covariance as
    the oracle (``l = lambda_basic``, threshold ``thresh2``) and filters with ``k2`` patches
    of side ``ps2``.

    Channels: three-channel (colour) videos are first taken to an orthonormal opponent space
    (Y, U, V), where the noise keeps its sigma; step 1 matches on Y and filters each channel
    on its own, step 2 matches on and filters all channels jointly. Any other number of
    channels (two-channel fluorescence, RGBA, ...) gets no colour transform: both steps
    search on all channels together, and each group is filtered on all channels jointly up
    to :data:`~napari_stnls.denoise.params.COUPLED_CHANNELS` channels, channel by channel
    above (the joint covariances grow as C^2).

    References are processed frame after frame, and from the second frame of a step on, a
    reference whose pixel the groups of the earlier frames already estimated at least
    ``skip * ps * ps * pt`` times (``skip2 * ps2 * ps2 * pt`` in step 2) is skipped: VNLB's
    "paste trick", decided frame by frame so that the result does not depend on how the
    work is cut into bands (nor on the number of threads). Where the frame stands still
    (compared with the previous and the next one), ``still`` times as many estimates are
    needed.

    Parameters
    ----------
    video, sigma, axes, data_range, noise, gain, flows, region, device, band_rows, progress, should_stop
        As for :func:`~napari_stnls.denoise.nl_means`: any real type, range and layout,
        ``sigma`` in the video's units.
    ps, ps2, pt, ws, wt, k, k2, stride0, thresh, thresh2 : optional
        Patch side in steps 1 and 2, frames per patch, search window side, temporal
        radius, group sizes in steps 1 and 2, spacing of the reference patches, variance
        thresholds in steps 1 and 2. None takes the value tuned for the noise relative to
        the data's range (:func:`~napari_stnls.denoise.nl_bayes_params` of
        ``sigma / (hi - lo)``).
    opponent : bool
        Work in the opponent colour space (3-channel videos only).
    skip, skip2 : float, optional
        How many patches' worth of estimates a pixel needs from earlier frames' groups for
        its reference to be skipped, in steps 1 and 2 (0: none is). None takes the value
        tuned for the noise (:func:`~napari_stnls.denoise.nl_bayes_params`). Tiles of a
        video (``napari_stnls.stream``) equal the whole video's result only without skipping.
    still : float, optional
        Where the frame stands still (the variance of the noisy values over the previous,
        this and the next frame, averaged over a 21-pixel window, is under 1.05 sigma^2),
        ``still`` times as many estimates are needed before a reference is skipped (1: as
        elsewhere; ``inf``: never skipped): still content has exact copies in the
        neighbouring frames, whose own groups are better than the earlier frames' ones.
        None takes the value tuned for the noise.
    fast_motion, ps_fast, pt_fast : optional
        Patches for fast or unreliable motion: references at pixels whose forward or backward
        flow is longer than ``fast_motion`` pixels a frame, or whose flows fail the
        forward-backward check by more than 1 pixel
        (:func:`~napari_stnls.video.flow.flow_consistency`: occlusions, wrong flow), use
        patches of side ``ps_fast`` over ``pt_fast`` frames in both steps (space-time
        patches are straight in time, so under fast motion their second frame holds other
        content). None takes the table's value for the noise: ``float("inf")`` (off) at
        every sigma for now; ``fast_motion=3`` gained 0.1-0.2 dB on fast camera motion but
        lost 0.19 dB on a clip whose flows are wrong where it stands still
        (docs/benchmarks.md). Without ``flows`` no reference is fast.

    Returns
    -------
    The type, dtype, shape and layout of ``video`` (integers rounded and clipped). Regions:
    each one is restored on its own (step 1 on the region dilated by the reach of step 2's
    search, step 2 on the region), so its result is the same whether it is given alone or
    with others (where regions overlap, the last one listed gives the value); pixels outside
    every region are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 24, 1))
    >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    >>> out = nl_bayes(noisy, 0.1, ws=7, device="cpu")
    >>> bool(np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean())
    True
    >>> u8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)   # the same in grey levels
    >>> nl_bayes(u8, 25.5, ws=7, device="cpu").dtype
    dtype('uint8')
    """
    return run(_nl_bayes, video, sigma, noise=noise, gain=gain, axes=axes, data_range=data_range,
               flows=flows, region=region, progress=progress, should_stop=should_stop, ps=ps, ps2=ps2, pt=pt,
               ws=ws, wt=wt, k=k, k2=k2, stride0=stride0, thresh=thresh, thresh2=thresh2, opponent=opponent,
               device=device, band_rows=band_rows, skip=skip, skip2=skip2, still=still,
               fast_motion=fast_motion, ps_fast=ps_fast, pt_fast=pt_fast)
