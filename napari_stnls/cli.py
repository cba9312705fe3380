"""Command line: ``napari-stnls demo [--out PATH] [--device cpu|cuda|auto]``.

Also reachable as ``python -m napari_stnls``. Exit status: 0 on success, 2 on bad
arguments or when the output cannot be written.
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
    return parser


def main(argv=None) -> int:
    """Entry point of the ``napari-stnls`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(parser, args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
