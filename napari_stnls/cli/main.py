"""Command line: ``napari-stnls demo [--out PATH] [--device cpu|cuda|auto]`` and
``napari-stnls denoise IN OUT --sigma S [--method nlb|nlm|skimage] [--region t0:t1,y0:y1,x0:x1 ...]
[--flow tvl1|ilk|dis|none]``.

Also reachable as ``python -m napari_stnls``. Exit status: 0 on success, 2 on bad
arguments or when the output cannot be written, 130 when interrupted (Ctrl-C; nothing is
written then).
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-stnls",
        description="Space-time non-local patch search for videos (PyTorch ops; napari plugin to come).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="search a noisy sample video with and without its true flow, write a figure",
        description=(
            "Run flow-guided patch search on the middle frame of a noisy sample video (with the "
            "true optical flow and without), denoise it NL-means style from the matches, print "
            "the numbers and write one PNG figure."
        ),
    )
    demo.add_argument(
        "--out",
        default="out/demo.png",
        metavar="PATH",
        help="PNG file to write (folders are created; default: %(default)s)",
    )
    demo.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "auto"),
        help="where to run the ops; auto = cuda when available (default: %(default)s)",
    )
    demo.add_argument(
        "--size",
        nargs=2,
        type=_positive_int,
        default=(128, 160),
        metavar=("H", "W"),
        help="frame size (default: 128 160)",
    )
    demo.add_argument(
        "--frames", type=_positive_int, default=5, metavar="T", help="number of frames (default: %(default)s)"
    )
    demo.add_argument(
        "--stride0", type=_positive_int, default=1, help="spacing of the query grid (default: %(default)s)"
    )
    demo.add_argument("--quiet", action="store_true", help="print only the final numbers")

    den = sub.add_parser(
        "denoise",
        help="restore a video (or regions of it) with non-local patch methods along the flow",
        description=(
            "Denoise a video file (.npy, multi-page TIFF or .mp4/.avi/.mov/.mkv; frames (T, H, W[, C])) "
            "with video non-local Bayes or NL-means whose search follows the optical flow. The output "
            "is written atomically and never over the input."
        ),
    )
    den.add_argument("input", metavar="IN", help="input video (.npy, .tif, .tiff, .mp4, .avi, .mov, .mkv)")
    den.add_argument("output", metavar="OUT", help="output video (same types; video files as H.264, crf 1)")
    den.add_argument("--sigma", type=float, required=True,
                     help="noise standard deviation on the 0-255 scale (e.g. 20)")
    den.add_argument("--method", choices=("nlb", "nlm", "skimage"), default="nlb",
                     help="nlb: two-step video non-local Bayes; nlm: NL-means; skimage: scikit-image's "
                          "NL-means per frame, no flow (default: %(default)s)")
    den.add_argument("--region", action="append", type=_region, default=None, metavar="t0:t1,y0:y1,x0:x1",
                     help="restore only this region (half-open ranges); may be given several times")
    den.add_argument("--flow", choices=("tvl1", "ilk", "dis", "none"), default="tvl1",
                     help="optical flow computed on the noisy video; dis needs opencv-python-headless "
                          "(default: %(default)s)")
    den.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to compute (default: %(default)s)")
    den.add_argument("--quiet", action="store_true", help="no progress bar")
    den.add_argument("--tile", type=_tile, default=None, metavar="T,H,W",
                     help="stream tile by tile (bounded memory): IN a video file, .npy (memory-mapped) or "
                          ".zarr; OUT a .zarr or .npy written tile by tile and resumed by the same command; "
                          "--flow is then computed per tile (approximate, clipped to --max-flow) unless "
                          "--flow-files gives whole-video flows")
    den.add_argument("--flow-files", nargs=2, default=None, metavar=("FFLOW", "BFLOW"),
                     help="with --tile: forward and backward flows (T, 2, H, W) as .npy or .zarr")
    den.add_argument("--max-flow", type=float, default=None, metavar="PX",
                     help="with --tile: bound on |flow| in pixels (read from --flow-files when not given; "
                          "default 8 for per-tile flows)")
    den.add_argument("--overwrite", action="store_true", help="with --tile: replace an existing OUT")
    return parser


def _tile(text: str) -> tuple[int, int, int]:
    try:
        t = tuple(int(v) for v in text.split(","))
        if len(t) != 3 or min(t) <= 0:
            raise ValueError
        return t
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three positive integers T,H,W, got {text!r}") from None


def _region(text: str) -> tuple[int, int, int, int, int, int]:
    try:
        parts = [p.split(":") for p in text.split(",")]
        if len(parts) != 3 or any(len(p) != 2 for p in parts):
            raise ValueError
        return tuple(int(v) for p in parts for v in p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected t0:t1,y0:y1,x0:x1 with integers, got {text!r}") from None


def main(argv=None) -> int:
    """Entry point of the ``napari-stnls`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(parser, args)
    if args.command == "denoise":
        return _denoise(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover (argparse rejects it first)
    return 2  # pragma: no cover


def _demo(parser: argparse.ArgumentParser, args) -> int:
    from .demo import format_report, run_demo

    try:
        res = run_demo(
            args.out,
            device=args.device,
            progress=not args.quiet,
            size=tuple(args.size),
            n_frames=args.frames,
            stride0=args.stride0,
        )
    except OSError as e:
        print(f"napari-stnls demo: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"napari-stnls demo: error: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        print(format_report(res))
    return 0


def _denoise(args) -> int:
    import os

    from .denoise import METHODS
    from .io import read_video, write_video

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
        from .io import SUFFIXES

        if os.path.splitext(args.output)[1].lower() not in SUFFIXES:
            raise ValueError(f"output: unsupported file type; expected one of {SUFFIXES}")
        video, scale = read_video(args.input)
        flows = None
        if args.flow != "none" and args.method != "skimage":
            from .flow import compute_flows

            if not args.quiet:
                print(f"optical flow ({args.flow}) on {video.shape[0]} frames", file=sys.stderr)
            flows = compute_flows(video, args.flow)
        bar = None if args.quiet else _Bar("denoise")
        method = METHODS[args.method]
        out = method(video, args.sigma / 255.0, flows=flows, region=args.region, device=device, progress=bar)
        if scale != 1.0:  # back to the input's integer scale
            import numpy as np

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
    """``denoise --tile``: napari_stnls.stream.process, a progress bar over tiles."""
    import os

    import numpy as np

    from . import stream

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
        if os.path.splitext(args.input)[1].lower() in stream.VIDEO_SUFFIXES:
            dtype = np.dtype(np.uint8)  # decoded as rgb24; no extra decoding pass to find out
        else:
            _, dtype = stream.open_video(args.input)
        out_dtype = dtype if np.issubdtype(dtype, np.integer) else np.float32
        bar = None if args.quiet else _Bar("tiles")
        stream.process(args.input, args.output, args.method, tile=args.tile, flows=flows, max_flow=max_flow,
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


class _Bar:
    """A one-line text progress bar on stderr."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
