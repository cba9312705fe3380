"""Key-only sums of the compiled sub-pixel search (``search_topk_subpix``).

Every candidate of one query and frame shares the fractional part (fy, fx) of the window's
origin, so its bilinear patch is ``sum_c w_c K_c`` over the four whole-pixel patches K_c at
the corners c of its position (weights w_c, summing to 1). For the L2 distance to a query
patch Q, with ``M_c = |Q - K_c|^2``::

    |Q - sum_c w_c K_c|^2 = sum_c w_c M_c - sum_{c < c'} w_c w_c' |K_c - K_c'|^2

(exact: expand both sides with ``sum_c w_c = 1``). The M_c are whole-pixel distances, which
a tile of queries computes with shared box sums; the last term depends on the keys alone:
box sums of squared differences between each pixel and its neighbour along (0, 1), (1, 0),
(1, 1) and (1, -1), computed here once per search. Every corner reads the video mirrored on
its own coordinates (csrc/include/mirror.h), so the sums are taken over the mirrored
extension of each frame and the identity holds at the borders too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reference.taps import reflect

# the four neighbour shifts (dy, dx), in the order of the maps' dimension 2
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def reflect_index(start: int, stop: int, n: int, device) -> torch.Tensor:
    """Indices ``start .. stop-1`` mirrored into ``0 .. n-1`` as every kernel mirrors them."""
    return reflect(torch.arange(start, stop, device=device), n)


def _mirror(i: int, n: int) -> int:
    return int(reflect(torch.tensor(i), n))


def pair_sums(keys_cl: torch.Tensor, ps: int, pt: int, nheads: int, margin: int,
              frames: list[int] | None = None) -> torch.Tensor:
    """Patch sums of squared neighbour differences of the keys.

    Parameters
    ----------
    keys_cl : Tensor (B, T, H, W, C)
        The key video, channels last, float.
    ps, pt : int
        Patch side and frames.
    nheads : int
        Channel groups, each summed on its own.
    margin : int
        Positions covered outside the frame on each side.
    frames : list of int, optional
        The key frames a search reads (its windows' frames); the maps of the others are
        left 0. Default: every frame.

    Returns
    -------
    Tensor (B, nheads, T, 4, H + 2 margin, W + 2 margin), float32 (float64 for float64 keys)
        ``out[b, h, s, e, y + margin, x + margin]`` is the sum over the patch of frames
        ``s .. s + pt - 1`` (mirrored), rows ``y - ps//2 ..`` and columns ``x - ps//2 ..``
        of the channels of head h of ``(K(p) - K(p + SHIFTS[e]))^2``.
    """
    B, T, H, W, C = keys_cl.shape
    r = ps // 2
    o = margin + r + 1  # pixels of the extension on each side
    dev = keys_cl.device
    acc = torch.float64 if keys_cl.dtype == torch.float64 else torch.float32
    frames = sorted(set(range(T) if frames is None else frames))
    # the frames the patches of those frames read (pt of them, mirrored past the end)
    need = sorted({_mirror(f + dt, T) for f in frames for dt in range(pt)})
    iy = reflect_index(-o, H + o, H, dev)
    ix = reflect_index(-o, W + o, W, dev)
    sel = torch.tensor(need, device=dev)
    ext = keys_cl.index_select(1, sel).to(acc).index_select(2, iy).index_select(3, ix)  # (B, n, He, We, C)
    He, We, n = H + 2 * o, W + 2 * o, len(need)
    ext = ext.view(B, n, He, We, nheads, C // nheads).permute(0, 4, 1, 5, 2, 3)  # (B, h, n, Ch, He, We)
    maps = []
    for dy, dx in SHIFTS:
        # d[Y, X] = |E(Y, X) - E(Y + dy, X + dx)|^2 over the rows/columns where both exist,
        # at the index of E(Y, X): columns 1 .. We-2 hold every shift
        a = ext[..., 0:He - 1, 1:We - 1]
        b = ext[..., dy:He - 1 + dy, 1 + dx:We - 1 + dx]
        d = (a - b).square().sum(3).reshape(-1, 1, He - 1, We - 2)  # row Y, column X-1
        # box sums, separable: s[Y', X'] = sum_{a,b < ps} d[Y' + a, X' + b]
        s = F.avg_pool2d(F.avg_pool2d(d, (1, ps), stride=1), (ps, 1), stride=1) * (ps * ps)
        s = s.view(B, nheads, n, He - ps, We - 1 - ps)
        # position y is E's row y + o, its patch starts at row y + o - r = y + margin + 1
        maps.append(s[..., 1:1 + H + 2 * margin, 0:W + 2 * margin])
    per = torch.stack(maps, 3)  # (B, h, n, 4, H + 2m, W + 2m): frames `need`
    out = per.new_zeros(B, nheads, T, 4, H + 2 * margin, W + 2 * margin)
    pos = {f: i for i, f in enumerate(need)}
    for f in frames:  # patches of pt frames: frames f .. f + pt - 1, mirrored past the end
        out[:, :, f] = sum(per[:, :, pos[_mirror(f + dt, T)]] for dt in range(pt))
    return out
