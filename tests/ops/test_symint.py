"""Video sizes stay symbolic through the compiled operators: under
``torch.compile(dynamic=True)`` an op whose schema takes a size as ``int`` makes Dynamo
specialise on its value (one compiled graph per video size); as ``SymInt`` one graph serves
every size. The schemas in csrc/ take the sizes (T, H, W) and the lists derived from them
(region, box, the search's grid) as SymInt / SymInt[]."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import napari_stnls.ops  # noqa: F401  (loads the compiled library, registers the fake kernels)

PS, PT, DIL, STRIDE = 3, 2, 1, 2
# (T, H, W) of two videos. The first one's sizes differ from each other and from every other
# size of the inputs (B = 1, C = 4, nheads = 2, K = 3, ps, pt, ws, the search's T - 1), so that
# Dynamo specialises none of them and ties none to another ("duck sizing")
SIZES = [(6, 9, 11), (7, 13, 10)]


@pytest.fixture
def ops():
    if not hasattr(torch.ops.napari_stnls, "scatter_patches"):
        pytest.fail("the compiled operators are not built (napari_stnls._C)")
    return torch.ops.napari_stnls


def _video(T, H, W, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, T, H, W, 4, generator=gen, dtype=torch.float64).to(device)


def _inds(T, H, W, Q, device, seed=1):
    """(1, nheads=2, Q, K=3, 3) sub-pixel positions inside a (T, H, W) video."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 2, Q, 3)
    t = torch.randint(0, T - PT + 1, shape, generator=gen).double()
    y = (H - 1) * torch.rand(shape, generator=gen, dtype=torch.float64)
    x = (W - 1) * torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.stack([t, y, x], -1).to(device)


def _compile_once(fn, cases):
    """Runs fn compiled (fullgraph, dynamic) on every case and eagerly; returns the number of
    graphs Dynamo compiled and checks each compiled result against the eager one."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    for args in cases:
        got, want = compiled(*args), fn(*args)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
    return counter.frame_count


def test_scatter_does_not_recompile_for_another_video_size(ops, device):
    def fn(video, patches, inds):
        _, T, H, W, _ = video.shape
        out, counts = ops.scatter_patches(patches, inds, None, T, H, W, PS, PT, DIL)
        grads = ops.scatter_patches_backward(out, counts, patches, inds, None, T, H, W, PS, PT, DIL,
                                             [True, False, True])
        return out, counts, grads[0], grads[2]

    cases = []
    for n, (T, H, W) in enumerate(SIZES):
        video = _video(T, H, W, device)
        inds = _inds(T, H, W, 7 + n, device)
        cases.append((video, ops.gather_patches(video, inds, PS, PT, DIL), inds))
    assert _compile_once(fn, cases) == 1


def test_iunfold_ifold_do_not_recompile_for_another_video_size(ops, device):
    def fn(video):
        _, T, C, H, W = video.shape
        region = [0, T, 1, H, 0, W]
        patches = ops.iunfold_patches(video, region, STRIDE, PS, PT, DIL)
        return patches, ops.ifold_patches(patches, region, STRIDE, T, H, W, PS, PT, DIL)

    cases = [(_video(T, H, W, device).permute(0, 1, 4, 2, 3).contiguous(),) for T, H, W in SIZES]
    assert _compile_once(fn, cases) == 1


def test_aggregate_grid_does_not_recompile_for_another_video_size(ops, device):
    def fn(video, inds):
        _, T, H, W, _ = video.shape
        region = [0, T, 0, H, 0, W]
        return ops.aggregate_grid(video, inds, None, region, STRIDE, region, PS, PT, DIL)

    cases = []
    for T, H, W in SIZES:
        Q = T * (-(-H // STRIDE)) * (-(-W // STRIDE))
        cases.append((_video(T, H, W, device), _inds(T, H, W, Q, device)))
    assert _compile_once(fn, cases) == 1


def _box_search_inputs(T, H, W, device, ws=3):
    """search_topk_box's inputs for the queries of every pixel of frames 0 .. T - 2 and their
    ws x ws windows in the next frame, with no flow."""
    t, y, x = torch.meshgrid(torch.arange(T - 1), torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([t, y, x], -1).reshape(-1, 3).clone()
    frames = (coords[:, :1] + 1).contiguous()
    centres = coords[None, :, None, 1:].double()
    offsets = torch.arange(ws, dtype=torch.float64) - ws // 2
    video = _video(T, H, W, device)
    return video, coords.to(device), centres.to(device), frames.to(device), offsets


def test_box_search_does_not_recompile_for_another_video_size(ops, device):
    def fn(video, coords, centres, frames, offsets):
        _, T, H, W, _ = video.shape
        grid = [0, 0, 0, T - 1, H, W, 1]
        return ops.search_topk_box(video, video, coords, centres, frames, offsets, grid, 1, PS, 1,
                                   DIL, 2, 4, True, False)

    cases = [_box_search_inputs(T, H, W, device) for T, H, W in SIZES]
    assert _compile_once(fn, cases) == 1


def test_opcheck_of_the_ops_with_symbolic_sizes(ops, device):
    """opcheck (schema, fake kernel, autograd registration, dynamic AOT dispatch) of the ops
    whose sizes became SymInt."""
    T, H, W = SIZES[0]
    video = _video(T, H, W, device)
    inds = _inds(T, H, W, 7, device)
    patches = ops.gather_patches(video, inds, PS, PT, DIL)
    size = (T, H, W, PS, PT, DIL)
    torch.library.opcheck(ops.scatter_patches.default,
                          (patches.clone().requires_grad_(), inds.clone().requires_grad_(), None, *size))
    out, counts = ops.scatter_patches(patches, inds, None, *size)
    torch.library.opcheck(ops.scatter_patches_backward.default,
                          (out, counts, patches, inds, None, *size, [True, False, True]))
    v = video.permute(0, 1, 4, 2, 3).contiguous().requires_grad_()
    region = [1, T, 0, H - 1, 2, W]
    torch.library.opcheck(ops.iunfold_patches.default, (v, region, STRIDE, PS, PT, DIL))
    p = ops.iunfold_patches(v.detach(), region, STRIDE, PS, PT, DIL).requires_grad_()
    torch.library.opcheck(ops.ifold_patches.default, (p, region, STRIDE, T, H, W, PS, PT, DIL))
    whole = [0, T, 0, H, 0, W]
    Q = T * (-(-H // STRIDE)) * (-(-W // STRIDE))
    torch.library.opcheck(ops.aggregate_grid.default,
                          (video, _inds(T, H, W, Q, device), None, whole, STRIDE, whole, PS, PT, DIL))
    video, coords, centres, frames, offsets = _box_search_inputs(T, H, W, device)
    torch.library.opcheck(ops.search_topk_box.default,
                          (video, video, coords, centres, frames, offsets, [0, 0, 0, T - 1, H, W, 1], 1,
                           PS, 1, DIL, 2, 4, True, False))


def _public_case(T, H, W, device, seed=0):
    """A (1, T, 4, H, W) video, sub-pixel positions of one head (Q = T*H*W, K = 3) and weights."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(1, T, 4, H, W, generator=gen, dtype=torch.float64)
    shape = (1, 1, T * H * W, 3)
    inds = torch.stack([torch.randint(0, T, shape, generator=gen).double(),
                        (H - 1) * torch.rand(shape, generator=gen, dtype=torch.float64),
                        (W - 1) * torch.rand(shape, generator=gen, dtype=torch.float64)], -1)
    weights = torch.rand(shape, generator=gen, dtype=torch.float64)
    return video.to(device), inds.to(device), weights.to(device)


@pytest.mark.parametrize("which", ["fold", "aggregate_queries", "aggregate_inds", "gather_scatter"])
def test_public_ops_do_not_recompile_for_another_video_size(which, compiled):
    """The public ops keep the video's sizes symbolic too: their checks take the traced sizes
    as they are, and aggregate's box is integer arithmetic, not a tensor reduction. (The
    reference twins branch on values, so it is the compiled backends that must trace.)"""
    from napari_stnls.ops import aggregate, gather, ifold, iunfold, scatter

    backend, device = compiled
    fns = {
        "fold": lambda v, i, w: (ifold(iunfold(v, ps=PS, stride=STRIDE, backend=backend), shape=v.shape,
                                       ps=PS, stride=STRIDE, backend=backend),),
        "aggregate_queries": lambda v, i, w: aggregate(v, i, "queries", weights=w, ps=PS, backend=backend),
        "aggregate_inds": lambda v, i, w: aggregate(v, i, weights=w, ps=PS, backend=backend),
        "gather_scatter": lambda v, i, w: scatter(gather(v, i, ps=PS, backend=backend), i, shape=v.shape,
                                                  weights=w, ps=PS, backend=backend),
    }
    cases = [_public_case(T, H, W, device, n) for n, (T, H, W) in enumerate(SIZES)]
    assert _compile_once(fns[which], cases) == 1


def test_aggregate_grid_box_holds_every_pixel_the_patches_reach():
    """The box aggregate's fold-form kernels compute: on random videos, regions, strides, patch
    sizes (even ones too), dilations and frames per patch, it holds every pixel that the
    mirrored patches of the query grid reach (found by mirroring every patch pixel), and lies
    inside the video."""
    import random

    from napari_stnls.ops import Region
    from napari_stnls.ops._reference.taps import reflect
    from napari_stnls.ops.gather import _grid_box

    rng = random.Random(0)
    for _ in range(3000):
        T, H, W = rng.randint(1, 6), rng.randint(1, 12), rng.randint(1, 12)
        t0, y0, x0 = rng.randrange(T), rng.randrange(H), rng.randrange(W)
        region = Region(t0, rng.randint(t0 + 1, T), y0, rng.randint(y0 + 1, H), x0, rng.randint(x0 + 1, W))
        ps, pt, dil, stride = rng.randint(1, 9), rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 4)
        box = _grid_box((1, T, 1, H, W), region, stride, ps, pt, dil)
        space = dil * (torch.arange(ps) - ps // 2)
        for axis, (n, lo, hi, step, offs) in enumerate((
                (T, region.t0, region.t1, 1, torch.arange(pt)),
                (H, region.y0, region.y1, stride, space),
                (W, region.x0, region.x1, stride, space))):
            reached = reflect(torch.arange(lo, hi, step)[:, None] + offs[None, :], n)
            b0, b1 = box[2 * axis], box[2 * axis + 1]
            assert 0 <= b0 <= int(reached.min()) and int(reached.max()) < b1 <= n, (
                (T, H, W), region, stride, ps, pt, dil, axis, box)
