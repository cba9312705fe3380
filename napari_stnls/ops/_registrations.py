"""What the compiled operators get in Python: fake (shape-only) kernels, so ``torch.compile``
traces them, and autograd, each through its own backward operator.

The schemas and the CPU/CUDA kernels are in ``csrc/``. Registered once, at import of
``napari_stnls.ops``, where the compiled module has loaded.

* ``refine_topk`` returns ids and distances like the search's top-k, with no gradient
  (refine's distances are ``search_dists``').
* ``search_dists`` is differentiable w.r.t. both videos and float positions through
  ``search_dists_backward``; ``search_topk`` and ``search_topk_box`` return ids and the
  distances they selected by, with no gradient.
* ``gather_patches`` is differentiable w.r.t. the video and float positions through
  ``gather_patches_backward``; ``scatter_patches`` w.r.t. patches, weights and float
  positions through ``scatter_patches_backward``. (Those backward operators have no
  autograd of their own: no double backward.) ``aggregate_patches`` and ``aggregate_grid``
  are for inference only: with a gradient, aggregate runs gather then scatter.
* ``iunfold_patches`` and ``ifold_patches`` are each other's adjoint, so each one's backward
  is the other and they are differentiable to any order.
* ``eigh_jacobi`` (the denoisers' batched eigen-solver, ``napari_stnls.denoise._eigh``) has a
  fake kernel and no gradient.

The backward kernels that add with atomics on CUDA go through :func:`._determinism.call`.
"""

from __future__ import annotations

import torch

from . import _determinism
from ._library import LOAD_ERROR
from ._validate import acc_dtype

__all__: list[str] = []

ops = torch.ops.napari_stnls


def _pos_grad_dtype(inds: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return inds.dtype if inds.is_floating_point() else acc_dtype(dtype)


def _grid_q(region, stride) -> int:
    t0, t1, y0, y1, x0, x1 = region
    return (t1 - t0) * -(-(y1 - y0) // stride) * -(-(x1 - x0) // stride)


def _register_search() -> None:
    def topk_fake(queries, coords, nheads, k):
        shape = (queries.shape[0], nheads, coords.shape[0], k)
        return queries.new_empty(shape, dtype=acc_dtype(queries.dtype)), coords.new_empty(shape)

    @torch.library.register_fake("napari_stnls::search_topk")
    def _(queries, keys, coords, centres, frames, offsets, ps, pt, dilation, nheads, k, l2, exclude_self):
        return topk_fake(queries, coords, nheads, k)

    @torch.library.register_fake("napari_stnls::search_topk_box")
    def _(queries, keys, coords, centres, frames, offsets, grid, stride0, ps, pt, dilation, nheads, k, l2,
          exclude_self):
        return topk_fake(queries, coords, nheads, k)

    @torch.library.register_fake("napari_stnls::search_topk_subpix")
    def _(queries, keys, coords, centres, frames, pairs, grid, ws, ps, pt, nheads, k, margin, exclude_self):
        return topk_fake(queries, coords, nheads, k)

    @torch.library.register_fake("napari_stnls::search_positions_int")
    def _(ids, centres, frames, ws, stride1):
        return ids.new_empty((*ids.shape, 3), dtype=torch.int32)

    @torch.library.register_fake("napari_stnls::search_positions")
    def _(ids, centres, frames, ws, stride1):
        return ids.new_empty((*ids.shape, 3), dtype=centres.dtype)

    @torch.library.register_fake("napari_stnls::search_centres")
    def _(coords, frames, fflow, bflow, T, H, W, round, r):
        return fflow.new_empty((fflow.shape[0], coords.shape[0], frames.shape[1], 2))

    @torch.library.register_fake("napari_stnls::refine_topk")
    def _(queries, keys, coords, centres, wr, ps, pt, dilation, k, l2, exclude_self):
        shape = (queries.shape[0], centres.shape[1], coords.shape[0], k)
        return queries.new_empty(shape, dtype=acc_dtype(queries.dtype)), coords.new_empty(shape)

    @torch.library.register_fake("napari_stnls::search_dists")
    def _(queries, keys, coords, kpos, ps, pt, dilation, l2, given=None):
        return queries.new_empty(kpos.shape[:4], dtype=acc_dtype(queries.dtype))

    @torch.library.register_fake("napari_stnls::search_dists_backward")
    def _(grad, queries, keys, coords, kpos, ps, pt, dilation, l2, needs):
        return (
            torch.empty_like(queries),
            torch.empty_like(keys),
            kpos.new_empty(kpos.shape, dtype=_pos_grad_dtype(kpos, queries.dtype)),
        )

    def setup(ctx, inputs, output):
        queries, keys, coords, kpos, ps, pt, dilation, l2, *_ = inputs
        ctx.save_for_backward(queries, keys, coords, kpos)
        ctx.args = (ps, pt, dilation, l2)

    def backward(ctx, grad):
        queries, keys, coords, kpos = ctx.saved_tensors
        needs = [bool(n) for n in ctx.needs_input_grad[:2]] + [
            bool(ctx.needs_input_grad[3]) and kpos.is_floating_point()
        ]
        gq, gk, gpos = _determinism.call("search_dists_backward", grad.contiguous(), queries, keys, coords,
                                         kpos, *ctx.args, needs)
        return (
            gq if needs[0] else None,
            gk if needs[1] else None,
            None,
            gpos.to(kpos.dtype) if needs[2] else None,
        ) + (None,) * 5

    torch.library.register_autograd("napari_stnls::search_dists", backward, setup_context=setup)


def _register_gather_scatter() -> None:
    @torch.library.register_fake("napari_stnls::gather_patches")
    def _(video, inds, ps, pt, dilation):
        B, T, H, W, C = video.shape
        _, nh, Q, K, _ = inds.shape
        return video.new_empty((B, nh, Q, K, pt, C // nh, ps, ps))

    @torch.library.register_fake("napari_stnls::gather_patches_backward")
    def _(grad, video, inds, ps, pt, dilation, needs):
        return (
            video.new_empty(video.shape),
            inds.new_empty(inds.shape, dtype=_pos_grad_dtype(inds, video.dtype)),
        )

    @torch.library.register_fake("napari_stnls::scatter_patches")
    def _(patches, inds, weights, T, H, W, ps, pt, dilation):
        B, nh, _, _, _, Ch = patches.shape[:6]
        return patches.new_empty((B, T, H, W, nh * Ch)), patches.new_empty((B, T, H, W, nh))

    @torch.library.register_fake("napari_stnls::scatter_patches_backward")
    def _(grad_video, grad_counts, patches, inds, weights, T, H, W, ps, pt, dilation, needs):
        return (
            patches.new_empty(patches.shape),
            patches.new_empty(patches.shape[:4], dtype=patches.dtype if weights is None else weights.dtype),
            inds.new_empty(inds.shape, dtype=_pos_grad_dtype(inds, patches.dtype)),
        )

    @torch.library.register_fake("napari_stnls::aggregate_patches")
    def _(video, inds, at, weights, ps, pt, dilation):
        B, T, H, W, C = video.shape
        return video.new_empty((B, T, H, W, C)), video.new_empty((B, T, H, W, inds.shape[1]))

    @torch.library.register_fake("napari_stnls::aggregate_grid")
    def _(video, inds, weights, region, stride, box, ps, pt, dilation):
        B, C = video.shape[0], video.shape[4]
        size = (B, box[1] - box[0], box[3] - box[2], box[5] - box[4])
        return video.new_empty((*size, C)), video.new_empty((*size, inds.shape[1]))

    def gather_setup(ctx, inputs, output):
        video, inds, ps, pt, dilation = inputs
        ctx.save_for_backward(video, inds)
        ctx.args = (ps, pt, dilation)

    def gather_backward(ctx, grad):
        video, inds = ctx.saved_tensors
        needs = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]) and inds.is_floating_point()]
        gv, gi = _determinism.call("gather_patches_backward", grad.contiguous(), video, inds, *ctx.args,
                                   needs)
        return (gv if needs[0] else None, gi if needs[1] else None, None, None, None)

    torch.library.register_autograd("napari_stnls::gather_patches", gather_backward,
                                    setup_context=gather_setup)

    def scatter_setup(ctx, inputs, output):
        patches, inds, weights, T, H, W, ps, pt, dilation = inputs
        ctx.save_for_backward(patches, inds, weights)
        ctx.args = (T, H, W, ps, pt, dilation)

    def scatter_backward(ctx, grad_video, grad_counts):
        patches, inds, weights = ctx.saved_tensors
        needs = [
            bool(ctx.needs_input_grad[0]),
            weights is not None and bool(ctx.needs_input_grad[2]),
            bool(ctx.needs_input_grad[1]) and inds.is_floating_point(),
        ]
        gp, gw, gi = ops.scatter_patches_backward(grad_video, grad_counts, patches, inds, weights, *ctx.args,
                                                  needs)
        return (
            gp if needs[0] else None,
            gi if needs[2] else None,
            gw if needs[1] else None,
        ) + (None,) * 6

    torch.library.register_autograd("napari_stnls::scatter_patches", scatter_backward,
                                    setup_context=scatter_setup)


def _register_fold() -> None:
    @torch.library.register_fake("napari_stnls::iunfold_patches")
    def _(video, region, stride, ps, pt, dilation):
        B, T, C, H, W = video.shape
        return video.new_empty((B, _grid_q(region, stride), pt * C * ps * ps))

    @torch.library.register_fake("napari_stnls::ifold_patches")
    def _(patches, region, stride, T, H, W, ps, pt, dilation):
        B, _, L = patches.shape
        return patches.new_empty((B, T, L // (pt * ps * ps), H, W))

    def iunfold_setup(ctx, inputs, output):
        video, region, stride, ps, pt, dilation = inputs
        _, T, _, H, W = video.shape
        ctx.args = (region, stride, T, H, W, ps, pt, dilation)

    def iunfold_backward(ctx, grad):
        return (ops.ifold_patches(grad, *ctx.args),) + (None,) * 5

    torch.library.register_autograd("napari_stnls::iunfold_patches", iunfold_backward,
                                    setup_context=iunfold_setup)

    def ifold_setup(ctx, inputs, output):
        patches, region, stride, T, H, W, ps, pt, dilation = inputs
        ctx.args = (region, stride, ps, pt, dilation)

    def ifold_backward(ctx, grad):
        return (ops.iunfold_patches(grad, *ctx.args),) + (None,) * 8

    torch.library.register_autograd("napari_stnls::ifold_patches", ifold_backward, setup_context=ifold_setup)


def _register_eigh() -> None:
    # the batched Jacobi eigen-solver of napari_stnls.denoise._eigh (no autograd)
    @torch.library.register_fake("napari_stnls::eigh_jacobi")
    def _(cov, max_sweeps, tol, threads):
        return cov.new_empty(cov.shape[:2]), cov.new_empty(cov.shape)


if LOAD_ERROR is None:
    _register_search()
    _register_gather_scatter()
    _register_fold()
    if hasattr(ops, "eigh_jacobi"):  # a build older than the solver has none
        _register_eigh()
