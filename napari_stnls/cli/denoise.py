"""``napari-stnls denoise IN OUT``: a video or image stack denoised in memory, or tile by tile (``--tile``).

Every argument is checked before any computation (the output's folder and type, the input,
``--axes``, ``--sigma`` against the data's range, the regions against the video); an error
is one line on stderr and status 2. The output is written under a temporary name and
renamed when complete (tiles: ``OUT.partial``, resumed by the same command), so Ctrl-C
(status 130) never leaves an incomplete file under the output's name.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from ..denoise import METHODS, estimate_noise, range_frames, range_of_frames, signal_range
from ..ops import as_region
from ..stream import process
from ..video.axes import Layout
from ..video.flow import compute_flows
from ..video.io import VIDEO_SUFFIXES, WRITE_SUFFIXES, CropReader, open_video, video_rate, write_video

__all__ = ["run_denoise", "ProgressBar"]

TILE_SUFFIXES = (".zarr", ".npy")


class _Failed(Exception):
    """A bad argument: the one-line message and exit status 2."""


def run_denoise(args) -> int:
    """``napari-stnls denoise``: the parsed arguments in, the exit status out."""
    try:
        if args.noise == "gaussian" and args.gain is not None:
            raise _Failed("--gain goes with --noise poisson-gaussian")
        if args.gain is not None and not (math.isfinite(args.gain) and args.gain > 0):
            raise _Failed(f"--gain: expected a finite number > 0, got {args.gain}")
        if args.sigma is not None:
            _check_sigma(args.sigma, zero=args.noise == "poisson-gaussian")
        if args.tile is not None:
            return _denoise_tiled(args)
        if args.flow_files or args.max_flow is not None or args.overwrite:
            raise _Failed("--flow-files, --max-flow and --overwrite go with --tile")
        return _denoise_in_memory(args)
    except _Failed as e:
        print(f"napari-stnls denoise: error: {e}", file=sys.stderr)
        return 2


def _interrupted(what: str) -> int:
    end = "\n" if ProgressBar.line_open else ""
    ProgressBar.line_open = False
    print(f"{end}napari-stnls denoise: interrupted; {what}", file=sys.stderr)
    return 130


def _check_sigma(sigma: float, zero: bool = False) -> None:
    if not (math.isfinite(sigma) and (sigma >= 0 if zero else sigma > 0)):
        raise _Failed(f"--sigma: expected a finite number {'>=' if zero else '>'} 0 in the input's units, "
                      f"got {sigma}")


def _check_sigma_range(sigma: float, dtype, float_range) -> None:
    """``sigma`` at most half the data's range: the type's for integers, the signal's for floats
    (``float_range()`` estimates it)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi, what = float(info.min), float(info.max), f"the range of {np.dtype(dtype)}"
    else:
        lo, hi = float_range()
        what = "the data's range (estimated)"
    if sigma > (hi - lo) / 2:
        raise _Failed(f"--sigma: {sigma:g} is more than half {what}, {lo:g}..{hi:g}; sigma is the noise's "
                      "standard deviation in the input's units (e.g. 20 for 8-bit data with noise of 20 grey "
                      "levels)")


def _check_output(output: str, input_: str, allowed: tuple[str, ...]) -> None:
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in allowed:
        raise _Failed(f"output: unsupported file type {suffix or '(none)'!r}; expected one of {allowed}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise _Failed(f"output: folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise _Failed(f"output: folder is not writable: {folder}")
    if out.exists() and Path(input_).exists() and os.path.samefile(input_, out):
        raise _Failed("OUT is the input file: refusing to overwrite the input")
    if out.is_dir() and suffix != ".zarr":
        raise _Failed(f"OUT is a folder: {output}")


def _denoise_in_memory(args) -> int:
    _check_output(args.output, args.input, WRITE_SUFFIXES)
    to_video_file = Path(args.output).suffix.lower() in VIDEO_SUFFIXES
    if args.lossless and not to_video_file:
        raise _Failed(f"--lossless: goes with a video output {VIDEO_SUFFIXES[:-1]}")
    try:
        data = np.asarray(open_video(args.input, lazy=False, axes=args.axes))
    except ValueError as e:
        raise _Failed(str(e).replace("path:", "input:", 1)) from None
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise _Failed(f"input: unsupported pixel type {data.dtype}")
    try:
        layout = Layout.of(data.shape, args.axes)
        N, T, H, W, C = layout.video_shape
        for r in args.region or []:
            as_region(r, (1, T, C, H, W), name=f"--region {r[0]}:{r[1]},{r[2]}:{r[3]},{r[4]}:{r[5]}")
    except ValueError as e:
        raise _Failed(str(e)) from None
    if to_video_file and (layout.axes not in ("TYX", "TYXC") or C not in (1, 3)):
        raise _Failed(f"output: video files hold frames (T, H, W) or (T, H, W, 3); the input is "
                      f"{layout.axes!r} with shape {data.shape}: write .npy or .tif")
    sigma, gain = args.sigma, args.gain
    if sigma is None or (args.noise == "poisson-gaussian" and gain is None):
        try:
            est = estimate_noise(data, layout.axes, args.noise)
        except ValueError as e:
            raise _Failed(f"{e} (give --sigma{' and --gain' if args.noise != 'gaussian' else ''})") from None
        if args.noise == "gaussian":
            sigma = est
        else:
            gain = est[0] if gain is None else gain
            sigma = est[1] if sigma is None else sigma
        if not args.quiet:
            said = (f"sigma {sigma:.4g}" if args.noise == "gaussian"
                    else f"gain {gain:.4g}, read noise {sigma:.4g}")
            print(f"noise ({args.noise}): {said} in the input's units", file=sys.stderr)
        if args.noise == "gaussian" and not sigma > 0:
            raise _Failed("--sigma: the estimated noise is 0 (a noiseless or constant input?); give --sigma")
    _check_sigma_range(sigma, data.dtype, lambda: signal_range(data, layout.axes))
    if args.flow == "dis":
        from ..video import flow

        if not flow.HAS_OPENCV:
            raise _Failed("--flow dis needs OpenCV: pip install opencv-python-headless, or use tvl1 or ilk")
    device = None if args.device == "auto" else args.device
    try:
        flows = None
        if args.flow != "none" and args.method != "skimage" and T > 1:
            if not args.quiet:
                print(f"optical flow ({args.flow}) on {N * T} frames", file=sys.stderr)
            flows = _flows(data, layout, args.flow)
        bar = None if args.quiet else ProgressBar("denoise")
        noise = {} if args.noise == "gaussian" else {"noise": args.noise, "gain": gain}
        out = METHODS[args.method](data, sigma, axes=layout.axes, flows=flows, region=args.region,
                                   device=device, progress=bar, **noise)
        write_video(args.output, out, fps=video_rate(args.input), lossless=args.lossless)
    except ValueError as e:
        raise _Failed(str(e)) from None
    except OSError as e:
        raise _Failed(f"cannot write {args.output}: {e}") from None
    except KeyboardInterrupt:
        return _interrupted("nothing was written")
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _flows(data: np.ndarray, layout: Layout, method: str):
    """The flows of every video of ``data`` (one per z-slice with T and Z), (N, T, 2, H, W) each,
    computed on the data mapped to about [0, 1] by its range."""
    import torch

    lo, hi = signal_range(data, layout.axes)
    video = layout.to_video(data)
    ff, bf = [], []
    for n in range(video.shape[0]):
        frames = (video[n].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
        f, b = compute_flows(frames[..., 0] if frames.shape[-1] == 1 else frames, method)
        ff.append(f)
        bf.append(b)
    return torch.cat(ff), torch.cat(bf)


def _denoise_tiled(args) -> int:
    """``denoise --tile``: :func:`napari_stnls.stream.process`, a progress bar over tiles."""
    if args.method == "skimage":
        raise _Failed("--tile works with --method nlb or nlm")
    if args.region:
        raise _Failed("--region and --tile cannot be combined")
    if args.lossless:
        raise _Failed("--lossless goes with a video output, not --tile")
    if args.sigma is None or args.noise != "gaussian":
        raise _Failed("--tile needs --sigma and Gaussian noise (the estimate and --noise poisson-gaussian "
                      "work in memory)")
    _check_output(args.output, args.input, TILE_SUFFIXES)
    flows, max_flow = None, args.max_flow
    if args.flow_files:
        flows = tuple(args.flow_files)
    elif args.flow != "none":
        flows = args.flow
        max_flow = 8.0 if max_flow is None else max_flow
    video_file = Path(args.input).suffix.lower() in VIDEO_SUFFIXES
    try:
        if video_file:
            if not Path(args.input).is_file():
                raise _Failed(f"input: no such file: {args.input}")
            dtype, shape = np.dtype(np.uint8), None  # decoded as rgb24; no decoding pass to find out
        else:
            reader = CropReader(args.input, "input")  # the header only
            dtype, shape = reader.dtype, reader.shape
        if shape is not None:
            layout = Layout.of(shape, args.axes)
            if layout.axes not in ("TYX", "TYXC"):
                raise _Failed(f"--axes {layout.axes}: --tile reads videos (T, H, W) or (T, H, W, C); denoise "
                              "other layouts in memory")
        elif args.axes is not None and args.axes.upper() != "TYXC":
            raise _Failed(f"--axes {args.axes}: a video file's frames are TYXC")

        def float_range():
            T = shape[0]
            return range_of_frames(np.asarray(reader.read((slice(t, t + 1),)))[0].reshape(*shape[1:3], -1)
                                   for t in range_frames(T))

        _check_sigma_range(args.sigma, dtype, float_range)
        out_dtype = dtype if np.issubdtype(dtype, np.integer) else np.float32
        scale = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
        bar = None if args.quiet else ProgressBar("tiles")
        process(args.input, args.output, args.method, tile=args.tile, flows=flows, max_flow=max_flow,
                device=None if args.device == "auto" else args.device, dtype=out_dtype,
                overwrite=args.overwrite, progress=bar, sigma=args.sigma / scale)
    except (ValueError, TypeError) as e:
        raise _Failed(str(e)) from None
    except OSError as e:
        raise _Failed(f"cannot write {args.output}: {e}") from None
    except KeyboardInterrupt:
        return _interrupted(f"the finished tiles are kept in {args.output}.partial: run the same command to "
                            "resume")
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


class ProgressBar:
    """A one-line text progress bar on stderr."""

    line_open = False  # a bar is drawn and its line not ended

    def __init__(self, label: str):
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        ProgressBar.line_open = not end
        print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)
