"""Non-local attention over space-time patches: a block for video restoration networks whose
memory does not grow with the search window (only the k chosen neighbours are kept)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Region, aggregate, as_region, search
from . import _checks as V

__all__ = ["NonLocalAttention", "rescale_flows"]


def rescale_flows(flows, H: int, W: int):
    """``(fflow, bflow)`` (each (B, T, 2, h, w), pixels of their own resolution, channel 0 = dx)
    resampled to (H, W) and rescaled to its pixels (dx by W/w, dy by H/h); flows already at
    (H, W) are returned as they are, and None stays None."""
    if flows is None:
        return None
    if not isinstance(flows, (tuple, list)) or len(flows) != 2:
        raise TypeError("flows: expected None or a pair (fflow, bflow) of tensors")
    out = []
    for f in flows:
        if not isinstance(f, torch.Tensor) or f.ndim != 5 or f.shape[2] != 2:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"flows: expected tensors of shape (B, T, 2, h, w), got {got}")
        h, w = f.shape[-2:]
        if (h, w) == (H, W):
            out.append(f)
            continue
        g = F.interpolate(f.flatten(0, 1).float(), size=(H, W), mode="bilinear", align_corners=False)
        g = g * torch.tensor([W / w, H / h], dtype=g.dtype, device=g.device).view(1, 2, 1, 1)
        out.append(g.unflatten(0, f.shape[:2]))
    return tuple(out)


class NonLocalAttention(nn.Module):
    """Multi-head attention of every query patch over its ``k`` nearest patches in a space-time
    window that follows the flow.

    1x1 projections give queries, keys and values; :func:`napari_stnls.ops.search` finds each
    query patch's k best key patches (along ``flows`` when given, rescaled to the features'
    resolution); a softmax over the k similarities (``dist="prod"``: the patch dot products;
    ``"l2"``: minus the squared distances) with a learnable temperature per head weighs the
    value patches at the same positions, which :func:`napari_stnls.ops.aggregate` adds at
    the query's patch; each pixel is then divided by the weights it received (the average of
    the overlapping patches for ``ps > 1``), and a 1x1 projection gives the output.

    Memory is that of the k neighbours, whatever ``ws``: the search keeps only the k best,
    in batches of queries. Runs under ``torch.autocast`` (the projections and the patches in
    the low precision, distances and softmax in float32) and ``torch.compile(fullgraph=True)``.

    Parameters
    ----------
    dim : int
        Channels of the input and output.
    nheads : int
        Heads; each searches and aggregates on its own ``dim / nheads`` channels.
    ps, ws, wt, k, dist, stride0, stride1, pt, dilation, itype
        As for :func:`napari_stnls.ops.search`. The patches of the query grid should cover
        the frame (``ps >= stride0``): pixels that no query patch reaches are 0.
    bias : bool
        Biases in the projections.
    batch_size, backend
        As for :func:`napari_stnls.ops.search`.

    Examples
    --------
    >>> block = NonLocalAttention(8, nheads=2, ws=5, k=4)
    >>> x = torch.rand(1, 3, 8, 16, 16)
    >>> block(x).shape
    torch.Size([1, 3, 8, 16, 16])
    """

    def __init__(self, dim: int, nheads: int = 1, *, ps: int = 1, ws: int = 9, wt: int = 1, k: int = 16,
                 dist: str = "prod", stride0: int = 1, stride1: float = 1.0, pt: int = 1, dilation: int = 1,
                 itype: str = "float", bias: bool = True, batch_size: int | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        self.dim, self.nheads = V.pos_int(dim, "dim"), V.pos_int(nheads, "nheads")
        if dim % nheads:
            raise ValueError(f"nheads: must divide dim={dim}, got {nheads}")
        self.search_kwargs = dict(
            ps=V.pos_int(ps, "ps"), ws=V.odd(ws, "ws", "search-grid side"), wt=V.pos_int(wt, "wt", minimum=0),
            k=V.pos_int(k, "k"), dist=V.choice(dist, "dist", ("l2", "prod")),
            stride0=V.pos_int(stride0, "stride0"),
            stride1=V.pos_float(stride1, "stride1"), pt=V.pos_int(pt, "pt"),
            dilation=V.pos_int(dilation, "dilation"), itype=V.choice(itype, "itype", ("float", "int")),
            nheads=nheads, batch_size=None if batch_size is None else V.pos_int(batch_size, "batch_size"),
            backend=backend,
        )
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.proj = nn.Conv2d(dim, dim, 1, bias=bias)
        # the softmax's scale per head, exp(log_scale): 1/sqrt(n) for dot products of n values
        # (as in attention), 1/n for squared distances
        n = dim // nheads * ps * ps * pt
        scale = 1 / math.sqrt(n) if dist == "prod" else 1 / n
        self.log_scale = nn.Parameter(torch.full((nheads,), math.log(scale)))

    def query_region(self, region, shape) -> Region:
        """The queries whose patches reach ``region`` of a video of ``shape`` (B, T, C, H, W): the
        region grown by the patch's reach (``dilation * (ps//2)`` pixels, ``pt - 1`` frames),
        its origin moved back onto the whole video's query grid (multiples of ``stride0``)."""
        _, T, _, H, W = shape
        r = as_region(region, shape)
        kw = self.search_kwargs
        h, s, dt = kw["dilation"] * (kw["ps"] // 2), kw["stride0"], kw["pt"] - 1
        return Region(max(0, r.t0 - dt), min(T, r.t1 + dt), max(0, r.y0 - h) // s * s, min(H, r.y1 + h),
                      max(0, r.x0 - h) // s * s, min(W, r.x1 + h))

    def forward(self, x: torch.Tensor, flows=None, region=None) -> torch.Tensor:
        """Attend: the output projection of :meth:`attend`.

        Parameters
        ----------
        x : Tensor, shape (B, T, dim, H, W)
        flows : (Tensor, Tensor), optional
            ``(fflow, bflow)``, each (B, T, 2, h, w) in pixels of (h, w): any resolution, they
            are resampled and rescaled to (H, W) (:func:`rescale_flows`).
        region : Region or 6-tuple, optional
            Compute only this part of the output (None: all of it); see :meth:`attend`.

        Returns
        -------
        Tensor, shape (B, T, dim, H, W), or the region's (B, t1-t0, dim, y1-y0, x1-x0)
        """
        out = self.attend(x, flows, region)
        return self.proj(out.flatten(0, 1)).unflatten(0, out.shape[:2])

    def attend(self, x: torch.Tensor, flows=None, region=None) -> torch.Tensor:
        """The attention before the output projection: the projections to queries, keys and
        values, the search, the softmax and the aggregation of the values.

        With ``region``, only the queries whose patches reach the region are searched
        (:meth:`query_region`; the keys and values are still the whole video's), and the
        region's pixels are returned: the same bits as the region of the whole call on the
        CPU (the search, softmax and aggregation of a pixel involve the same queries, in the
        same order). (The 1x1 projections that :meth:`forward` adds may round differently on
        another number of pixels, as PyTorch's convolution picks its algorithm by size.)

        Returns
        -------
        Tensor, shape (B, T, dim, H, W), or the region's (B, t1-t0, dim, y1-y0, x1-x0)
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[2] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected (B, T, dim={self.dim}, H, W), got {got}")
        B, T, C, H, W = x.shape
        qreg = None if region is None else self.query_region(region, x.shape)
        q, k, v = self.to_qkv(x.flatten(0, 1)).unflatten(0, (B, T)).chunk(3, dim=2)
        kw = self.search_kwargs
        dists, inds = search(q, k, flows=rescale_flows(flows, H, W), region=qreg, **kw)
        sim = dists if kw["dist"] == "prod" else -dists
        # in the distances' dtype: float32 for low-precision features, float64 for float64 ones
        weights = torch.softmax(sim * self.log_scale.to(sim.dtype).exp().view(1, -1, 1, 1), dim=-1)
        agg, counts = aggregate(v, inds, "queries", weights=weights.to(v.dtype), ps=kw["ps"], pt=kw["pt"],
                                dilation=kw["dilation"], region=qreg, stride0=kw["stride0"],
                                backend=kw["backend"])
        if region is not None:
            r = as_region(region, x.shape)
            agg = agg[:, r.t0 : r.t1, :, r.y0 : r.y1, r.x0 : r.x1]
            counts = counts[:, r.t0 : r.t1, :, r.y0 : r.y1, r.x0 : r.x1]
        if self.nheads > 1:
            counts = counts.repeat_interleave(C // self.nheads, dim=2)
        return agg / counts.clamp_min(1e-6)

    def extra_repr(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.search_kwargs.items() if k != "nheads")
        return f"dim={self.dim}, nheads={self.nheads}, {kw}"
