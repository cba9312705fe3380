"""Command line: ``napari-stnls demo [--out PATH] [--device cpu|cuda|auto]`` and
``napari-stnls denoise IN OUT --sigma S [--method nlb|nlm|skimage] [--region t0:t1,y0:y1,x0:x1 ...]
[--flow tvl1|ilk|dis|none]``.

The parser and the dispatch; each command lives in its own module (:mod:`.denoise`,
:mod:`.demo`), imported only when it runs. Also reachable as ``python -m napari_stnls``.
Exit status: 0 on success, 2 on bad
arguments or when the output cannot be written, 130 when interrupted (Ctrl-C; nothing is
written then).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__

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
        description="Space-time non-local patch search for videos: the demo, and denoising of video files.",
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
    den.add_argument("input", metavar="IN",
                     help="input video (.npy, .tif, .tiff, .mp4, .avi, .mov, .mkv, .gif)")
    den.add_argument("output", metavar="OUT",
                     help="output video (the same types but .gif; video files as H.264, crf 1)")
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
        from .denoise import run_denoise

        return run_denoise(args)
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
    except (ValueError, ImportError) as e:  # ImportError: matplotlib missing, named with its extra
        print(f"napari-stnls demo: error: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        print(format_report(res))
    return 0
