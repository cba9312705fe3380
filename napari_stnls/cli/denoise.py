"""``napari-stnls denoise IN OUT``: a video file denoised in memory, or tile by tile (``--tile``)."""

from __future__ import annotations

import os
import sys

import numpy as np

from ..denoise import METHODS
from ..stream import process
from ..video.flow import compute_flows
from ..video.io import VIDEO_SUFFIXES, WRITE_SUFFIXES, CropReader, read_video, write_video

__all__ = ["run_denoise", "ProgressBar"]


def run_denoise(args) -> int:
    """``napari-stnls denoise``: the parsed arguments in, the exit status out."""

    def fail(msg: str) -> int:
        print(f"napari-stnls denoise: error: {msg}", file=sys.stderr)
        return 2

    if not args.sigma > 0:
        return fail(f"--sigma: expected a positive number on the 0-255 scale, got {args.sigma}")
    if args.tile is not None:
        return _denoise_tiled(args, fail)
    if args.flow_files or args.max_flow is not None or args.overwrite:
        return fail("--flow-files, --max-flow and --overwrite go with --tile")
    both = os.path.exists(args.output) and os.path.exists(args.input)
    if both and os.path.samefile(args.input, args.output):
        return fail("OUT is the input file: refusing to overwrite the input")
    if os.path.isdir(args.output):
        return fail(f"OUT is a folder: {args.output}")
    device = None if args.device == "auto" else args.device
    try:
        if os.path.splitext(args.output)[1].lower() not in WRITE_SUFFIXES:
            raise ValueError(f"output: unsupported file type; expected one of {WRITE_SUFFIXES}")
        video, scale = read_video(args.input)
        flows = None
        if args.flow != "none" and args.method != "skimage":
            if not args.quiet:
                print(f"optical flow ({args.flow}) on {video.shape[0]} frames", file=sys.stderr)
            flows = compute_flows(video, args.flow)
        bar = None if args.quiet else ProgressBar("denoise")
        method = METHODS[args.method]
        out = method(video, args.sigma / 255.0, flows=flows, region=args.region, device=device, progress=bar)
        if scale != 1.0:  # back to the input's integer scale
            dtype = {255.0: np.uint8, 65535.0: np.uint16}.get(scale, np.float32)
            out = np.clip(np.rint(out * scale), 0, scale).astype(dtype)
        write_video(args.output, out)
    except ValueError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"cannot write {args.output}: {e}")
    except KeyboardInterrupt:
        print("\nnapari-stnls denoise: interrupted; nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _denoise_tiled(args, fail) -> int:
    """``denoise --tile``: :func:`napari_stnls.stream.process`, a progress bar over tiles."""
    if args.method == "skimage":
        return fail("--tile works with --method nlb or nlm")
    if args.region:
        return fail("--region and --tile cannot be combined")
    both = os.path.exists(args.output) and os.path.exists(args.input)
    if both and os.path.samefile(args.input, args.output):
        return fail("OUT is the input: refusing to overwrite the input")
    flows, max_flow = None, args.max_flow
    if args.flow_files:
        flows = tuple(args.flow_files)
    elif args.flow != "none":
        flows = args.flow
        max_flow = 8.0 if max_flow is None else max_flow
    try:
        if os.path.splitext(args.input)[1].lower() in VIDEO_SUFFIXES:
            dtype = np.dtype(np.uint8)  # decoded as rgb24; no extra decoding pass to find out
        else:
            dtype = CropReader(args.input, "video").dtype  # the header only
        out_dtype = dtype if np.issubdtype(dtype, np.integer) else np.float32
        bar = None if args.quiet else ProgressBar("tiles")
        process(args.input, args.output, args.method, tile=args.tile, flows=flows, max_flow=max_flow,
                       device=None if args.device == "auto" else args.device, dtype=out_dtype,
                       overwrite=args.overwrite, progress=bar, sigma=args.sigma / 255.0)
    except (ValueError, TypeError) as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"cannot write {args.output}: {e}")
    except KeyboardInterrupt:
        print("\nnapari-stnls denoise: interrupted; the finished tiles are kept: run the same command "
              "to resume", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


class ProgressBar:
    """A one-line text progress bar on stderr."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)
