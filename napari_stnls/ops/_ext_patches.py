"""Fake kernels and autograd of the compiled gather / scatter / iunfold / ifold operators.

The schemas and CPU/CUDA kernels live in ``csrc/gather.cpp`` and ``csrc/fold.cpp``. This
module is imported by :mod:`._ext` once the compiled library has loaded.

* ``gather_patches`` is differentiable w.r.t. the video and float positions through
  ``gather_patches_backward``; ``scatter_patches`` w.r.t. patches, weights and float
  positions through ``scatter_patches_backward``. (Those backward ops have no autograd of
  their own: no double backward.)
* ``iunfold_patches`` and ``ifold_patches`` are each other's adjoint, so each one's backward
  is the other and they are differentiable to any order.
"""

from __future__ import annotations

import functools
import math

import torch

from ._ext import deterministic_cuda, on_cpu

ops = torch.ops.napari_stnls


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pos_grad_dtype(inds: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return inds.dtype if inds.is_floating_point() else _acc(dtype)


# ---------------------------------------------------------------- gather / scatter


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


def _gather_setup(ctx, inputs, output):
    video, inds, ps, pt, dilation = inputs
    ctx.save_for_backward(video, inds)
    ctx.args = (ps, pt, dilation)


def _gather_backward(ctx, grad):
    video, inds = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]) and inds.is_floating_point()]
    bw = ops.gather_patches_backward
    if deterministic_cuda(grad):  # the CUDA kernel adds into the video with atomics
        bw = functools.partial(on_cpu, bw)
    gv, gi = bw(grad.contiguous(), video, inds, *ctx.args, needs)
    return (gv if needs[0] else None, gi if needs[1] else None, None, None, None)


torch.library.register_autograd("napari_stnls::gather_patches", _gather_backward, setup_context=_gather_setup)


def _scatter_setup(ctx, inputs, output):
    patches, inds, weights, T, H, W, ps, pt, dilation = inputs
    ctx.save_for_backward(patches, inds, weights)
    ctx.args = (T, H, W, ps, pt, dilation)


def _scatter_backward(ctx, grad_video, grad_counts):
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


torch.library.register_autograd(
    "napari_stnls::scatter_patches", _scatter_backward, setup_context=_scatter_setup
)


# ---------------------------------------------------------------- iunfold / ifold


def _grid_q(region, stride) -> int:
    t0, t1, y0, y1, x0, x1 = region
    return (t1 - t0) * math.ceil((y1 - y0) / stride) * math.ceil((x1 - x0) / stride)


@torch.library.register_fake("napari_stnls::iunfold_patches")
def _(video, region, stride, ps, pt, dilation):
    B, T, C, H, W = video.shape
    return video.new_empty((B, _grid_q(region, stride), pt * C * ps * ps))


@torch.library.register_fake("napari_stnls::ifold_patches")
def _(patches, region, stride, T, H, W, ps, pt, dilation):
    B, _, L = patches.shape
    return patches.new_empty((B, T, L // (pt * ps * ps), H, W))


def _iunfold_setup(ctx, inputs, output):
    video, region, stride, ps, pt, dilation = inputs
    _, T, _, H, W = video.shape
    ctx.args = (region, stride, T, H, W, ps, pt, dilation)


def _iunfold_backward(ctx, grad):
    return (ops.ifold_patches(grad, *ctx.args),) + (None,) * 5


torch.library.register_autograd(
    "napari_stnls::iunfold_patches", _iunfold_backward, setup_context=_iunfold_setup
)


def _ifold_setup(ctx, inputs, output):
    patches, region, stride, T, H, W, ps, pt, dilation = inputs
    ctx.args = (region, stride, ps, pt, dilation)


def _ifold_backward(ctx, grad):
    return (ops.iunfold_patches(grad, *ctx.args),) + (None,) * 8


torch.library.register_autograd("napari_stnls::ifold_patches", _ifold_backward, setup_context=_ifold_setup)
