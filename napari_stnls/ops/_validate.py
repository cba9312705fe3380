"""Argument checks shared by the operations: each error names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def video(x: Any, name: str) -> torch.Tensor:
    """A floating-point (B, T, C, H, W) tensor with no empty axis."""
    tensor(x, name)
    if x.ndim != 5:
        raise ValueError(
            f"{name}: expected a video of shape (B, T, C, H, W), got {x.ndim} dims {tuple(x.shape)}"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point video (float16, bfloat16, float32, float64), "
            f"got {x.dtype}; convert it, e.g. video.float() / 255"
        )
    if x.numel() == 0:
        raise ValueError(f"{name}: video is empty, shape {tuple(x.shape)}")
    return x


def same_tensor_kind(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{nb}: expected device {a.device} like {na}, got {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{nb}: expected dtype {a.dtype} like {na}, got {b.dtype}")


def pos_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def pos_float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {v!r}")
    v = float(v)
    if not v > 0 or v == float("inf"):
        raise ValueError(f"{name}: expected a positive finite number, got {v}")
    return v


def choice(v: Any, name: str, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(f"{name}: expected one of {options}, got {v!r}")
    return v


def heads(C: int, nheads: Any) -> int:
    nheads = pos_int(nheads, "nheads")
    if C % nheads:
        raise ValueError(f"nheads: must divide the number of channels C={C}, got {nheads}")
    return nheads


def inds(x: Any, video_shape, name: str = "inds", values: bool = True) -> torch.Tensor:
    """An index tensor (B, nheads, Q, K, 3) of (t, y, x) centres inside the video (the values
    are read only with ``values``)."""
    tensor(x, name)
    B, T, C, H, W = video_shape
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected shape (B, nheads, Q, K, 3), got {tuple(x.shape)}"
        )
    if x.shape[0] != B:
        raise ValueError(f"{name}: batch size {x.shape[0]} does not match the video's B={B}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected an integer or floating tensor, got {x.dtype}")
    heads(C, x.shape[1])
    # The value checks below read the data (a device sync, and a graph break under
    # torch.compile): they are skipped while compiling, where bad positions are not caught.
    if values and x.numel() and not torch.compiler.is_compiling():
        d = x.detach()
        # one pass for the extremes of each column (NaN propagates into them, an infinity is
        # one of them) and one sync; the failing position is looked for only on failure
        (t0, y0, x0), (t1, y1, x1) = torch.stack(d.reshape(-1, 3).aminmax(dim=0)).tolist()
        if x.is_floating_point():
            if not all(math.isfinite(v) for v in (t0, y0, x0, t1, y1, x1)):
                raise ValueError(f"{name}: contains NaN or infinity")
            if not torch.equal(d[..., 0], torch.round(d[..., 0])):
                raise ValueError(f"{name}: the t column must hold integer values")
        if t0 < 0 or t1 > T - 1 or y0 < 0 or y1 > H - 1 or x0 < 0 or x1 > W - 1:
            t, y, xx = d[..., 0], d[..., 1], d[..., 2]
            bad = (t < 0) | (t > T - 1) | (y < 0) | (y > H - 1) | (xx < 0) | (xx > W - 1)
            where = bad.nonzero()[0].tolist()
            raise ValueError(
                f"{name}: position {d[tuple(where)].tolist()} at index {where} lies outside the "
                f"video (t in 0..{T - 1}, y in [0, {H - 1}], x in [0, {W - 1}])"
            )
    return x


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels and the reference compute in: float64 for float64 tensors, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
