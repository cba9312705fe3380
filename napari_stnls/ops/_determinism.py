"""Deterministic mode: under ``torch.use_deterministic_algorithms(True)``, what adds with
atomics on CUDA runs on the (deterministic) CPU kernels instead.

Every op goes through :func:`call` for the steps that may be rerouted; the decision is
:func:`rerouted`, the list :data:`ATOMIC_ON_CUDA`. On the CPU nothing changes: every CPU
kernel is race-free.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ATOMIC_ON_CUDA", "call", "on_cpu", "rerouted"]

# The steps whose CUDA form adds with atomics, so that their last bits vary run to run:
# four compiled kernels, and three steps of the search's and refine's PyTorch glue whose CUDA backward
# (indexing) adds with atomics (measured: the flows' gradient then varied on an H100).
ATOMIC_ON_CUDA = frozenset({
    "search_dists_backward",  # the search's gradient to the videos
    "gather_patches_backward",  # gather's gradient to the video
    "scatter_patches",
    "aggregate_patches",  # (aggregate_grid works in fold form, with no atomics)
    "search_centres",  # the flow chaining
    "search_positions",  # candidate ids -> positions
    "refine_positions",  # refine's candidate ids -> positions (gradient to the given positions)
})


def rerouted(op: str, args) -> bool:
    """Whether ``op`` on ``args`` runs on the CPU: deterministic algorithms are requested, ``op``
    adds with atomics on CUDA, and a CUDA tensor is among ``args``."""
    return (
        op in ATOMIC_ON_CUDA
        and torch.are_deterministic_algorithms_enabled()
        and any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    )


def call(op: str, *args, fn: Callable | None = None):
    """``torch.ops.napari_stnls.<op>(*args)`` (or ``fn(*args)``, a step of PyTorch glue named
    ``op``), on CPU copies of the arguments where :func:`rerouted` says so."""
    f = fn if fn is not None else getattr(torch.ops.napari_stnls, op)
    return on_cpu(f, *args) if rerouted(op, args) else f(*args)


def on_cpu(fn: Callable, *args):
    """``fn(*args)`` with every tensor argument copied to the CPU; tensor results come back to
    the device of the first CUDA argument.

    Differentiable: where a gradient is needed, the CPU work is one node of the caller's graph
    on that device (:class:`_OnCpu`). Were the copies and CPU ops nodes of the graph
    themselves, autograd's CPU thread and its CUDA thread would both add into the gradient of
    a CUDA tensor feeding both, in an order that changes run to run (the last bits of the
    flows' gradient were seen to differ on an H200).
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda), None)
    if device is None:  # nothing to move
        return fn(*args)
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        out = _OnCpu.apply(fn, device, *args)
        return out[0] if len(out) == 1 else out
    out = fn(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    if isinstance(out, torch.Tensor):
        return out.to(device)
    return type(out)(o.to(device) if isinstance(o, torch.Tensor) else o for o in out)


class _OnCpu(torch.autograd.Function):
    """``fn`` on CPU copies of the arguments, as one node: the forward keeps the CPU graph of
    ``fn`` and the backward runs it (on the thread running this node) and copies the
    gradients back to each argument's device. Returns a tuple of ``fn``'s tensor results."""

    @staticmethod
    def forward(ctx, fn, device, *args):
        ctx.set_materialize_grads(False)
        cpu = [a.detach().cpu().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
               for a in args]
        with torch.enable_grad():
            out = fn(*cpu)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise TypeError("on_cpu: a differentiable fn must return tensors only")
        wrt = [i for i, a in enumerate(cpu) if isinstance(a, torch.Tensor) and a.requires_grad]
        ctx.graph = (outs, [cpu[i] for i in wrt], wrt, [args[i].device for i in wrt], len(args))
        return tuple(o.detach().to(device) for o in outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        outs, inputs, wrt, devices, n = ctx.graph
        pairs = [(o, g.cpu()) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        result = [None] * (2 + n)
        if pairs:
            gin = torch.autograd.grad(
                [o for o, _ in pairs], inputs, [g for _, g in pairs], retain_graph=True, allow_unused=True
            )
            for i, g, dev in zip(wrt, gin, devices, strict=True):
                result[2 + i] = None if g is None else g.to(dev)
        return tuple(result)
