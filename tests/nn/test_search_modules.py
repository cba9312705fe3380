"""NonLocalSearch and RefineSearch: the ops with their parameters, checked when built."""

from __future__ import annotations

import pytest
import torch

from napari_stnls.nn import NonLocalSearch, RefineSearch
from napari_stnls.ops import refine, search


def test_modules_call_the_ops_with_their_parameters():
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(1, 3, 4, 12, 12, generator=gen)
    k = torch.rand(1, 3, 4, 12, 12, generator=gen)
    flows = tuple(0.5 * torch.randn(1, 3, 2, 12, 12, generator=gen) for _ in range(2))
    region = (1, 2, 0, 12, 0, 12)
    s = NonLocalSearch(ps=3, ws=5, wt=1, k=6, dist="prod", nheads=2, stride0=2)
    got = s(q, k, flows=flows, region=region)
    ref = search(q, k, ps=3, ws=5, wt=1, k=6, dist="prod", nheads=2, stride0=2, flows=flows, region=region)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    assert torch.equal(s(q)[1], search(q, q, ps=3, ws=5, wt=1, k=6, dist="prod", nheads=2, stride0=2)[1])
    r = RefineSearch(ps=5, wr=3, k=8, nheads=2, stride0=2, exclude_self=True)
    got = r(q, k, got[1], region=region)
    ref = refine(q, k, ref[1], ps=5, wr=3, k=8, nheads=2, stride0=2, exclude_self=True, region=region)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    assert "ws=5" in repr(s) and "wr=3" in repr(r)


def test_a_two_stage_search_is_differentiable():
    gen = torch.Generator().manual_seed(1)
    v = torch.rand(1, 3, 2, 10, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    coarse, fine = NonLocalSearch(ps=3, ws=5, wt=1, k=3, stride1=2.0), RefineSearch(ps=3, wr=3)
    d, i = fine(v, None, coarse(v)[1])
    assert d.shape == (1, 1, 300, 3)
    (g,) = torch.autograd.grad(d.sum(), v)
    assert g.abs().sum() > 0


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc", "match"),
    [
        (NonLocalSearch, dict(ws=4), ValueError, "ws: expected an odd"),
        (NonLocalSearch, dict(k=0), ValueError, "k: expected an int >= 1"),
        (NonLocalSearch, dict(wt=-1), ValueError, "wt: expected an int >= 0"),
        (NonLocalSearch, dict(dist="cos"), ValueError, "dist: expected one of"),
        (NonLocalSearch, dict(stride1=0.0), ValueError, "stride1: expected a positive"),
        (NonLocalSearch, dict(exclude_self="yes"), TypeError, "exclude_self: expected a bool"),
        (RefineSearch, dict(wr=2), ValueError, "wr: expected an odd window side"),
        (RefineSearch, dict(ps=1.5), TypeError, "ps: expected an int"),
        (RefineSearch, dict(itype="long"), ValueError, "itype: expected one of"),
        (RefineSearch, dict(batch_size=0), ValueError, "batch_size: expected an int >= 1"),
    ],
)
def test_bad_parameters_fail_when_built(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)
