"""Checks and conversions shared by the denoisers: input layouts, devices, regions, bands."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from .._util import resolve_device
from ..ops import Region, as_region

__all__ = ["to_video", "dilate", "split_bands", "band_budget", "prepare", "to_host", "Upload", "Download"]


def to_video(video, name: str = "video") -> tuple[torch.Tensor, Callable]:
    """(B, T, C, H, W) float tensor and a function that converts a result back."""
    if isinstance(video, torch.Tensor):
        if video.ndim != 5:
            raise ValueError(f"{name}: expected a tensor of shape (B, T, C, H, W), got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor (values in [0, 1]), got {video.dtype}")
        return video, lambda x: x.to(video.dtype)
    if isinstance(video, np.ndarray):
        if video.ndim not in (3, 4):
            raise ValueError(f"{name}: expected an array (T, H, W) or (T, H, W, C), got shape {video.shape}")
        if not np.issubdtype(video.dtype, np.floating):
            raise TypeError(f"{name}: expected floating-point values in [0, 1], got {video.dtype}")
        gray = video.ndim == 3
        arr = video[..., None] if gray else video
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2)[None]

        def back(x: torch.Tensor) -> np.ndarray:
            out = x[0].permute(0, 2, 3, 1).cpu().numpy().astype(video.dtype, copy=False)
            return out[..., 0] if gray else out

        return t, back
    raise TypeError(f"{name}: expected a torch.Tensor (B, T, C, H, W) or a numpy array (T, H, W[, C]), "
                    f"got {type(video).__name__}")


def dilate(r: Region, pad: int, shape) -> Region:
    """``r`` grown by ``pad`` pixels in y and x, clipped to the frame of ``shape`` (B, T, C, H, W)."""
    _, T, _, H, W = shape
    return Region(r.t0, r.t1, max(0, r.y0 - pad), min(H, r.y1 + pad), max(0, r.x0 - pad), min(W, r.x1 + pad))


def band_budget(device: torch.device) -> int:
    """Bytes of working memory for one band of a denoiser: 256 MiB on the CPU; on a GPU an
    eighth of its free memory, within 256 MiB .. 8 GiB, since a GPU is only busy with whole
    frames of queries at once (on an H200, nl_means on 8 frames of 540p: 5.2 s in bands of
    256 MiB, 0.39 s in whole frames; nl_bayes on 10 CIF frames: 2.33 s and 0.30 s). The band
    size never changes a result."""
    budget = 256 * 2**20
    if device.type == "cuda":
        budget = min(max(torch.cuda.mem_get_info(device)[0] // 8, budget), 8 * 2**30)
    return budget


def split_bands(r: Region, pad: int, rows: int, shape) -> list[Region]:
    """One-frame bands of at most ``rows`` rows covering ``r`` dilated by ``pad`` in y and x."""
    q = dilate(r, pad, shape)
    return [Region(t, t + 1, y, min(q.y1, y + rows), q.x0, q.x1)
            for t in range(q.t0, q.t1) for y in range(q.y0, q.y1, rows)]


def _pinned(shape, dtype: torch.dtype) -> torch.Tensor | None:
    """An empty page-locked CPU tensor, or None where the host cannot lock that much (the
    pageable copy then does the same work, slower). Only results coming back use it: the
    clip going to the GPU took longer staged (6.6 ms against 4.8 ms for 8 frames of 540p on
    an H100)."""
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError:
        return None


def to_host(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, T, C, H, W) result on ``like``'s device, its memory channels-last; from a GPU to
    the CPU through page-locked memory (8 frames of 540p on an H100: 0.9 ms against 36 ms).

    The page-locked tensor it may return goes back to PyTorch's host cache once the caller's
    conversion (``run_gaussian`` always copies into the output) has dropped it."""
    if result.device == like.device:
        return result
    if not (result.is_cuda and like.device.type == "cpu"):
        return result.to(like.device)
    cl = result.permute(0, 1, 3, 4, 2)  # contiguous where the result kept xd's memory
    staged = _pinned(cl.shape, cl.dtype)
    if staged is None:
        return result.to(like.device)
    staged.copy_(cl)  # synchronous
    return staged.permute(0, 1, 4, 2, 3)


def _streams(x: torch.Tensor, device: torch.device) -> bool:
    """Whether frames of ``x`` go to ``device`` one at a time beside the work (:class:`Upload`):
    a float32 CPU video going to a GPU."""
    return device.type == "cuda" and x.device.type == "cpu" and x.dtype == torch.float32


class Upload:
    """The frames of a float32 CPU video and its flows going to the GPU on a stream of their own,
    as the work asks for them (:meth:`need`), so that the copies overlap the work on the frames
    already there. The copies read the caller's memory as it is (pageable; staging it in
    page-locked memory first was slower: 6.6 ms against 4.8 ms for 8 frames of 540p on an
    H100) and return once the driver holds the data.

    Made by :func:`prepare` with ``lazy=True``; without a ``stream`` (the data already on its
    device, or the work on the CPU), :meth:`need` does nothing."""

    def __init__(self, x: torch.Tensor, flows, xd: torch.Tensor, fd, stream: torch.cuda.Stream | None):
        self.x, self.flows, self.xd, self.fd, self.stream = x, flows, xd, fd, stream
        self.sent = [False] * x.shape[1]

    def need(self, t0: int, t1: int) -> None:
        """Frames ``t0 .. t1 - 1`` (clipped to the video) on the device before the work that
        the current stream is given next."""
        if self.stream is None:
            return
        todo = [t for t in range(max(0, t0), min(len(self.sent), t1)) if not self.sent[t]]
        if not todo:
            return
        with torch.cuda.stream(self.stream):
            for t in todo:
                self.xd[:, t].copy_(self.x[:, t], non_blocking=True)
                for d, f in zip(self.fd or (), self.flows or (), strict=True):
                    d[:, t].copy_(f[:, t], non_blocking=True)
                self.sent[t] = True
        torch.cuda.current_stream(self.xd.device).wait_stream(self.stream)


class Download:
    """Finished frames of a (B, T, C, H, W) GPU result copied to pageable CPU memory while the
    GPU works on later frames: each through a page-locked buffer on a stream of its own (8
    frames of 540p on an H100: 0.9 ms against 36 ms for one pageable copy), and from there
    into the result once the next frame is queued, so the host's copy overlaps the GPU too.
    Falls back to a direct copy where the host cannot lock memory.

    ``frame(src, t)`` after the work that finishes frame ``t`` of ``src``; ``put(t, frame)``
    for a frame taken from the CPU as it is; ``result()`` once every frame is in."""

    def __init__(self, like: torch.Tensor):
        B, T, C, H, W = like.shape
        self.device = like.device
        self.out = torch.empty(B, T, H, W, C, dtype=like.dtype)  # channels-last, as the work's
        self.stream = torch.cuda.Stream(like.device)
        self.pending: deque = deque()

    def frame(self, src: torch.Tensor, t: int) -> None:
        cl = src[:, t].permute(0, 2, 3, 1)
        staged = _pinned(cl.shape, cl.dtype)
        if staged is None:
            self.out[:, t].copy_(cl)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            staged.copy_(cl, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        src.record_stream(self.stream)
        self.pending.append((t, staged, done))
        self._drain(1)

    def put(self, t: int, frame: torch.Tensor) -> None:
        """Frame ``t`` (B, C, H, W) from a CPU tensor."""
        self.out[:, t].copy_(frame.permute(0, 2, 3, 1))

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            t, staged, done = self.pending.popleft()
            done.synchronize()
            self.out[:, t].copy_(staged)

    def result(self) -> torch.Tensor:
        """The (B, T, C, H, W) result on the CPU (memory channels-last)."""
        self._drain(0)
        return self.out.permute(0, 1, 4, 2, 3)


def prepare(video, sigma, device, region, flows, band_rows, lazy: bool = False):
    """Checks and conversions shared by the denoisers.

    Returns the input as a (B, T, C, H, W) tensor, the function converting a result back to
    the input's type, the float32 copy on ``device``, the flows there, and the regions; with
    ``lazy``, also an :class:`Upload`: a float32 CPU video going to a GPU is then not copied
    here, but frame by frame as the work asks for it (the device tensors hold only the frames
    asked for).
    """
    x, back = to_video(video)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma: expected a positive number on the video's scale, got {sigma!r}")
    device = resolve_device(device)
    if band_rows is not None and (not isinstance(band_rows, int) or band_rows <= 0):
        raise ValueError(f"band_rows: expected a positive int, got {band_rows!r}")
    regions = region if isinstance(region, list) else [region]
    regions = [as_region(r, x.shape) for r in regions]
    # channels-last in memory, as the compiled kernels read it: converted once here rather
    # than copied by every band's search and aggregate (a no-op for napari layers and numpy)
    if lazy and _streams(x, device) and all(f.device.type == "cpu" and f.dtype == torch.float32
                                            for f in flows or ()):
        B, T, C, H, W = x.shape
        xd = torch.empty(B, T, H, W, C, device=device).permute(0, 1, 4, 2, 3)
        fd = None if flows is None else tuple(torch.empty(f.shape, device=device) for f in flows)
        return x, back, xd, fd, regions, Upload(x, flows, xd, fd, torch.cuda.Stream(device))
    xd = x.to(device=device, dtype=torch.float32)
    xd = xd.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if flows is not None:
        flows = tuple(f.to(device=device, dtype=torch.float32) for f in flows)
    if lazy:
        return x, back, xd, flows, regions, Upload(xd, flows, xd, flows, None)
    return x, back, xd, flows, regions
