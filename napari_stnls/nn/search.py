"""The searches as modules: :class:`NonLocalSearch` (``ops.search``) and :class:`RefineSearch`
(``ops.refine``), each holding its parameters, so that a network declares its search once
and calls it on features."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import refine, search
from . import _checks as V

__all__ = ["NonLocalSearch", "RefineSearch"]


def _common(ps, dist, pt, dilation, nheads, stride0, itype, exclude_self, batch_size, backend) -> dict:
    """The arguments search and refine share, checked as the ops check them."""
    return dict(
        ps=V.pos_int(ps, "ps"), dist=V.choice(dist, "dist", ("l2", "prod")), pt=V.pos_int(pt, "pt"),
        dilation=V.pos_int(dilation, "dilation"), nheads=V.pos_int(nheads, "nheads"),
        stride0=V.pos_int(stride0, "stride0"), itype=V.choice(itype, "itype", ("float", "int")),
        exclude_self=V.flag(exclude_self, "exclude_self"),
        batch_size=None if batch_size is None else V.pos_int(batch_size, "batch_size"),
        backend=backend,
    )


class NonLocalSearch(nn.Module):
    """:func:`napari_stnls.ops.search` with its parameters: the ``k`` nearest patches of every
    query patch in a space-time window that follows the flow.

    Parameters
    ----------
    ps, ws, wt, k, dist, stride0, stride1, dilation, pt, nheads, exclude_self, itype, batch_size, backend
        As for :func:`napari_stnls.ops.search` (checked here, so that a bad value fails when
        the network is built).

    Examples
    --------
    >>> video = torch.rand(1, 3, 4, 16, 16)
    >>> search = NonLocalSearch(ps=3, ws=5, wt=1, k=4, nheads=2)
    >>> dists, inds = search(video)
    >>> dists.shape, inds.shape
    (torch.Size([1, 2, 768, 4]), torch.Size([1, 2, 768, 4, 3]))
    """

    def __init__(self, ps: int = 7, ws: int = 21, wt: int = 2, k: int = 10, dist: str = "l2", *,
                 stride0: int = 1, stride1: float = 1.0, dilation: int = 1, pt: int = 1, nheads: int = 1,
                 exclude_self: bool = False, itype: str = "float", batch_size: int | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        self.kwargs = _common(ps, dist, pt, dilation, nheads, stride0, itype, exclude_self, batch_size,
                              backend)
        self.kwargs.update(ws=V.odd(ws, "ws", "search-grid side"), wt=V.pos_int(wt, "wt", minimum=0),
                           k=V.pos_int(k, "k"), stride1=V.pos_float(stride1, "stride1"))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor | None = None, flows=None,
                region=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Search ``keys`` (default ``queries``), both (B, T, C, H, W), along ``flows``
        ((fflow, bflow) or None) for the queries of ``region`` (None: the whole video).
        Returns ``(dists, inds)`` as :func:`napari_stnls.ops.search`."""
        return search(queries, queries if keys is None else keys, flows=flows, region=region, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class RefineSearch(nn.Module):
    """:func:`napari_stnls.ops.refine` with its parameters: the ``k`` best patches in a ``wr x wr``
    window around each given position (the second stage of a multi-stage search, e.g. after
    a coarse :class:`NonLocalSearch`, or a search on other features).

    Parameters
    ----------
    ps, wr, k, dist, pt, dilation, nheads, stride0, itype, exclude_self, batch_size, backend
        As for :func:`napari_stnls.ops.refine`.

    Examples
    --------
    >>> video = torch.rand(1, 3, 4, 16, 16)
    >>> coarse = NonLocalSearch(ps=3, ws=7, wt=1, k=4, stride1=2.0)
    >>> fine = RefineSearch(ps=5, wr=3, k=6)
    >>> dists, inds = fine(video, video, coarse(video)[1])
    >>> dists.shape
    torch.Size([1, 1, 768, 6])
    """

    def __init__(self, ps: int = 7, wr: int = 3, k: int | None = None, dist: str = "l2", *,
                 pt: int = 1, dilation: int = 1, nheads: int = 1, stride0: int = 1, itype: str = "float",
                 exclude_self: bool = False, batch_size: int | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        self.kwargs = _common(ps, dist, pt, dilation, nheads, stride0, itype, exclude_self, batch_size,
                              backend)
        self.kwargs.update(wr=V.odd(wr, "wr", "window side"), k=None if k is None else V.pos_int(k, "k"))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor | None, inds: torch.Tensor,
                region=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine the positions ``inds`` (B, nheads or 1, Q, K_in, 3) of the queries of ``region``
        in ``keys`` (default ``queries``). Returns ``(dists, inds)`` as
        :func:`napari_stnls.ops.refine`."""
        return refine(queries, queries if keys is None else keys, inds, region=region, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
