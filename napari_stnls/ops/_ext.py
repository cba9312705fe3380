"""Loading the compiled kernels (napari_stnls._C) and wiring them into PyTorch.

The C++ library registers the op schemas and the CPU/CUDA kernels (``csrc/``). Here we add
what belongs in Python: fake (shape-only) kernels so ``torch.compile`` can trace the ops,
and autograd for ``search_dists`` through its own backward op. Import never fails for lack
of a build: :data:`LOAD_ERROR` records why, and one warning says the reference is used.
"""

from __future__ import annotations

import functools
import warnings

import torch

LOAD_ERROR: str | None = None
try:
    from .. import _C  # noqa: F401  (loading the library registers the ops)
except (ImportError, OSError) as e:  # missing build, or built against another torch
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(
        "napari-stnls: the compiled kernels are not available "
        f"({LOAD_ERROR}); every op uses the pure-PyTorch reference backend. Rebuild with "
        "`pip install --no-build-isolation -e .` against the installed torch.",
        RuntimeWarning,
        stacklevel=2,
    )


def available(device_type: str, op: str = "search_topk") -> bool:
    """Whether the compiled kernel of ``op`` (default: the search's) exists for
    ``device_type`` ("cpu" or "cuda")."""
    if LOAD_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"napari_stnls::{op}", key)


def deterministic_cuda(*tensors) -> bool:
    """Whether bit-identical results are requested for CUDA tensors among ``tensors``.

    The CUDA kernels that add with atomics (search's and gather's backward, scatter) are not
    bit-identical run to run; under ``torch.use_deterministic_algorithms(True)`` they run on
    the (deterministic) CPU kernels instead, through :func:`on_cpu`.
    """
    return torch.are_deterministic_algorithms_enabled() and any(
        isinstance(t, torch.Tensor) and t.is_cuda for t in tensors
    )


def on_cpu(fn, *args):
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


if LOAD_ERROR is None:
    ops = torch.ops.napari_stnls

    def _acc(dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _topk_fake(queries, coords, nheads, k):
        shape = (queries.shape[0], nheads, coords.shape[0], k)
        return queries.new_empty(shape, dtype=_acc(queries.dtype)), coords.new_empty(shape)

    @torch.library.register_fake("napari_stnls::search_topk")
    def _(queries, keys, coords, centres, frames, offsets, ps, pt, dilation, nheads, k, l2,
          exclude_self):
        return _topk_fake(queries, coords, nheads, k)

    @torch.library.register_fake("napari_stnls::search_topk_box")
    def _(queries, keys, coords, centres, frames, offsets, grid, stride0, ps, pt, dilation, nheads,
          k, l2, exclude_self):
        return _topk_fake(queries, coords, nheads, k)

    @torch.library.register_fake("napari_stnls::search_dists")
    def _(queries, keys, coords, kpos, ps, pt, dilation, l2, given=None):
        return queries.new_empty(kpos.shape[:4], dtype=_acc(queries.dtype))

    @torch.library.register_fake("napari_stnls::search_dists_backward")
    def _(grad, queries, keys, coords, kpos, ps, pt, dilation, l2, needs):
        gpos_dtype = kpos.dtype if kpos.is_floating_point() else _acc(queries.dtype)
        return (
            torch.empty_like(queries),
            torch.empty_like(keys),
            kpos.new_empty(kpos.shape, dtype=gpos_dtype),
        )

    def _setup_context(ctx, inputs, output):
        queries, keys, coords, kpos, ps, pt, dilation, l2, *_ = inputs
        ctx.save_for_backward(queries, keys, coords, kpos)
        ctx.args = (ps, pt, dilation, l2)

    def _backward(ctx, grad):
        queries, keys, coords, kpos = ctx.saved_tensors
        needs = [bool(n) for n in ctx.needs_input_grad[:2]] + [
            bool(ctx.needs_input_grad[3]) and kpos.is_floating_point()
        ]
        bw = ops.search_dists_backward
        if deterministic_cuda(grad):
            bw = functools.partial(on_cpu, bw)
        gq, gk, gpos = bw(grad.contiguous(), queries, keys, coords, kpos, *ctx.args, needs)
        return (
            gq if needs[0] else None,
            gk if needs[1] else None,
            None,
            gpos.to(kpos.dtype) if needs[2] else None,
            None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("napari_stnls::search_dists", _backward, setup_context=_setup_context)

if LOAD_ERROR is None:
    from . import _ext_patches  # noqa: E402, F401  (fake kernels and autograd of gather/scatter/iunfold/ifold)
