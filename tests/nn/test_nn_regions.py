"""Regions: region-by-region inference gives the whole-video result, and the rarity sampler
draws rare, textured regions more often."""

from __future__ import annotations

import pytest
import torch

from napari_stnls.nn import NonLocalAttention, RaritySampler, by_regions, patch_rarity, tile_regions


def _block(*args, seed=0, **kwargs) -> NonLocalAttention:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return NonLocalAttention(*args, **kwargs)


CASES = [
    (dict(ps=1), False, (1, 5, 6)),
    (dict(ps=3, stride0=2, pt=2, nheads=2), True, (2, 8, 7)),
    (dict(ps=3, dilation=2, dist="l2"), False, (3, 6, 9)),
    (dict(ps=5, stride0=3, itype="int", nheads=4), True, (1, 9, 23)),
]


@pytest.mark.parametrize(("kwargs", "use_flows", "tile"), CASES)
def test_attention_region_by_region_gives_the_whole_result(kwargs, use_flows, tile, impl):
    """Tile by tile, the attention gives the bits of the whole call (on CUDA the search
    kernels that share box sums between a tile of queries may round differently for another
    grid of queries, so there it is held to float rounding)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(0)
    block = _block(8, ws=5, wt=1, k=6, backend=backend, **kwargs).to(device)
    x = torch.rand(1, 4, 8, 21, 23, generator=gen).to(device)
    flows = tuple((1.5 * torch.randn(1, 4, 2, 21, 23, generator=gen)).to(device) for _ in range(2))
    flows = flows if use_flows else None
    with torch.no_grad():
        whole = block.attend(x, flows)
        tiled = by_regions(block.attend, x, tile, flows)
    if device.type == "cpu":
        assert torch.equal(tiled, whole)
    else:
        torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
    assert bool(whole.abs().sum() > 0)


class _Net(torch.nn.Module):
    """A small restoration net: a pixel-wise lift, one non-local block, a pixel-wise head."""

    def __init__(self, backend):
        super().__init__()
        self.lift = torch.nn.Conv2d(3, 8, 1)
        self.block = _block(8, 2, ps=3, ws=5, wt=1, k=5, backend=backend)
        self.head = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x, flows=None, region=None):
        B, T = x.shape[:2]
        f = self.lift(x.flatten(0, 1)).unflatten(0, (B, T))
        y = self.block(f, flows, region)
        return self.head(y.flatten(0, 1)).unflatten(0, y.shape[:2])


def test_a_network_region_by_region_gives_the_whole_result(impl):
    """No seam at the tiles' borders: a float64 network tile by tile equals the whole call to
    float64 rounding (its pixel-wise convolutions may sum in another order on another number of
    pixels)."""
    backend, device = impl
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = _Net(backend).double().to(device)
    x = torch.rand(1, 3, 3, 17, 19, generator=gen, dtype=torch.float64).to(device)
    flows = tuple(torch.randn(1, 3, 2, 17, 19, generator=gen, dtype=torch.float64).to(device)
                  for _ in range(2))
    with torch.no_grad():
        whole = net(x, flows)
        tiled = by_regions(net, x, (2, 6, 7), flows)
    assert tiled.shape == whole.shape == x.shape
    torch.testing.assert_close(tiled, whole, rtol=1e-12, atol=1e-12)


def test_query_region_reaches_every_patch_over_the_region():
    block = NonLocalAttention(4, ps=5, stride0=3, pt=2, dilation=2)
    shape = (1, 6, 4, 30, 31)
    assert block.query_region((2, 4, 10, 12, 20, 25), shape) == (1, 5, 6, 16, 15, 29)
    assert block.query_region((0, 6, 0, 30, 0, 31), shape) == (0, 6, 0, 30, 0, 31)


def test_tile_regions_cover_the_video_once():
    shape = (2, 5, 3, 17, 20)
    seen = torch.zeros(5, 17, 20, dtype=torch.int64)
    for r in tile_regions(shape, (2, 6, 7)):
        assert r.shape[0] <= 2 and r.shape[1] <= 6 and r.shape[2] <= 7
        seen[r.t0 : r.t1, r.y0 : r.y1, r.x0 : r.x1] += 1
    assert bool((seen == 1).all())


def _half_textured(gen):
    """A video whose left half is flat and right half random texture."""
    v = torch.full((1, 3, 1, 32, 64), 0.5)
    v[..., 32:] = torch.rand(1, 3, 1, 32, 32, generator=gen)
    return v


def test_rarity_is_high_on_texture_and_zero_on_flat_areas():
    gen = torch.Generator().manual_seed(2)
    r = patch_rarity(_half_textured(gen), ps=3, ws=5, k=4, stride0=2)
    assert r.shape == (1, 3, 16, 32)
    assert bool((r[..., :14] == 0).all()) and bool((r[..., 18:] > 0.01).all())


def test_sampler_draws_rare_regions_more_often():
    gen = torch.Generator().manual_seed(3)
    v = _half_textured(gen)
    kw = dict(ps=3, ws=5, k=4, stride0=4)
    rare = RaritySampler(v, (1, 8, 8), generator=torch.Generator().manual_seed(0), **kw).sample(400)
    right = sum(r.x0 >= 32 for _, r in rare) / 400
    assert right > 0.85
    uniform = RaritySampler(v, (1, 8, 8), power=0.0, generator=torch.Generator().manual_seed(0), **kw)
    p = uniform.probabilities()
    torch.testing.assert_close(p, torch.full_like(p, 1 / p.numel()))
    right = sum(r.x0 >= 32 for _, r in uniform.sample(400)) / 400
    assert 0.3 < right < 0.7
    for b, r in rare:
        assert b == 0 and r.shape == (1, 8, 8) and r.t1 <= 3 and r.y1 <= 32 and r.x1 <= 64 and r.y0 % 4 == 0


def test_sampler_is_reproducible_and_checks_its_arguments():
    gen = torch.Generator().manual_seed(4)
    v = torch.rand(2, 4, 2, 20, 24, generator=gen)
    kw = dict(ps=3, ws=5, k=4, stride0=2)
    a = RaritySampler(v, (2, 10, 10), generator=torch.Generator().manual_seed(5), **kw).sample(20)
    b = RaritySampler(v, (2, 10, 10), generator=torch.Generator().manual_seed(5), **kw).sample(20)
    assert a == b and {i for i, _ in a} == {0, 1}
    flat = RaritySampler(torch.zeros(1, 2, 1, 8, 8), (1, 4, 4), floor=0.0, ps=3, ws=3, k=2, stride0=2)
    assert len(flat.sample(3)) == 3  # nothing is rare: uniform
    with pytest.raises(ValueError, match="size: expected at most"):
        RaritySampler(v, (5, 10, 10), **kw)
    with pytest.raises(ValueError, match="power, floor"):
        RaritySampler(v, (1, 10, 10), power=-1.0, **kw)
