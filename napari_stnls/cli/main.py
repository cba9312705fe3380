"""Command line: ``napari-stnls demo [--out PATH] [--device cpu|cuda|auto]`` and
``napari-stnls denoise IN OUT [--sigma S] [--axes TYX] [--noise gaussian|poisson-gaussian [--gain G]]
[--method nlb|nlm|skimage] [--region t0:t1,y0:y1,x0:x1 ...] [--flow tvl1|ilk|dis|none] [--lossless]``,
or in a batch ``napari-stnls denoise IN [IN ...] -o OUTDIR [--pattern GLOB] [--fail-fast] ...``.

The parser and the dispatch; each command lives in its own module (:mod:`.denoise`,
:mod:`.demo`), imported only when it runs (after the Ctrl-C handler is in place, so that an
interrupt during ``import torch`` is handled too). Also reachable as ``python -m napari_stnls``.
Exit status: 0 on success, 2 on bad arguments (all checked before any computation) or when
the output cannot be written, 1 when some files of a batch (``-o OUTDIR``) failed and the others
were written, 130 when interrupted (Ctrl-C, at any moment: one line on stderr, and nothing is
left under an output's name but the finished files of a batch).
"""

from __future__ import annotations

import argparse
import signal
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``napari-stnls denoise: error: ...`` and status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DENOISE_EXAMPLES = """\
examples:
  # an 8-bit video, noise of 20 grey levels; the output keeps the input's frame rate
  napari-stnls denoise noisy.mp4 restored.mp4 --sigma 20

  # only two regions of a TIFF, with NL-means and the ILK flow
  napari-stnls denoise noisy.tif restored.tif --sigma 20 --method nlm --flow ilk \\
      --region 0:5,100:300,200:400 --region 8:12,0:64,0:64

  # a 16-bit microscopy time-lapse (frames, rows, columns), noise of 150 counts:
  # sigma is in the data's own units, and the output is uint16 too
  napari-stnls denoise cells.tif cells_denoised.tif --axes TYX --sigma 150 --flow none

  # the same with photon noise: Poisson-Gaussian, gain and read noise estimated from the data
  napari-stnls denoise cells.tif cells_denoised.tif --axes TYX --noise poisson-gaussian --flow none

  # a two-channel z-stack: neighbouring slices are searched like neighbouring frames
  napari-stnls denoise stack.tif stack_denoised.tif --axes ZCYX --sigma 80 --flow none

  # larger than memory: tile by tile into a zarr store; run it again to resume
  napari-stnls denoise huge.npy restored.zarr --sigma 20 --tile 8,256,256 --flow-files ff.npy bf.npy

  # a batch: two files, then every TIFF of a folder, into an existing folder (same names; one line
  # per file; a file that fails is reported, the others are still done, and the exit status is 1)
  napari-stnls denoise a.tif b.tif -o restored/ --sigma 20
  napari-stnls denoise raw/ -o restored/ --pattern "*.tif" --axes TYX --noise poisson-gaussian --flow none
"""


_OUT_FORMATS = ("npy", "tif", "tiff", "mp4", "avi", "mov", "mkv")

DENOISE_USAGE = ("napari-stnls denoise [options] IN OUT\n"
                 "       napari-stnls denoise [options] IN [IN ...] -o OUTDIR [--pattern GLOB]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        help="restore a video, image stack or regions of it with non-local patch methods along the flow",
        description=(
            "Denoise a video or image stack (.npy, TIFF, .zarr or .mp4/.avi/.mov/.mkv) of any pixel type "
            "(8 or 16 bits, float) and layout (--axes) with video non-local Bayes or NL-means, whose search "
            "follows the optical flow. The output has the input's type and layout; it is written under a "
            "temporary name and renamed when complete, never over the input."
        ),
        epilog=DENOISE_EXAMPLES,
        usage=DENOISE_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    den.add_argument("paths", nargs="+", metavar="IN",
                     help="IN OUT: one input (.npy, .tif, .tiff, .zarr, .mp4, .avi, .mov, .mkv, .gif) "
                          "and its output (.npy, .tif, .tiff, or .mp4/.avi/.mov/.mkv: H.264 yuv420p at "
                          "the input's frame rate; .zarr or .npy with --tile); with -o: any number of "
                          "input files and folders")
    den.add_argument("-o", "--out-dir", default=None, metavar="OUTDIR",
                     help="batch: denoise every IN (files, and the files of folders matching --pattern) "
                          "into this existing folder, each output named after its input (see --suffix, "
                          "--format); a file that fails is reported and the others are still done (exit "
                          "status 1), unless --fail-fast")
    den.add_argument("--pattern", default=None, metavar="GLOB",
                     help="batch: the files of an input folder to denoise, e.g. '*.tif' or '**/*.tif' "
                          "(default: every file of a readable type; hidden files never)")
    den.add_argument("--suffix", default="", metavar="TEXT",
                     help="batch: added to each output's name, e.g. _denoised: a.tif -> "
                          "OUTDIR/a_denoised.tif (default: none, the input's name)")
    den.add_argument("--format", default=None, choices=_OUT_FORMATS, dest="out_format",
                     help="batch: the outputs' type (default: the input's; .gif gives .mp4 and .zarr "
                          "gives .npy)")
    den.add_argument("--fail-fast", action="store_true",
                     help="batch: stop at the first input that cannot be read or denoised (an input "
                          "found bad when checked stops the batch before any computation)")
    den.add_argument("--sigma", type=float, default=None,
                     help="noise standard deviation in the input's own units: grey levels for 8-bit video "
                          "(e.g. 20), counts for 16-bit data, the values themselves for float data; with "
                          "--noise poisson-gaussian the read noise (>= 0); default: estimated from the data "
                          "(printed; needed with --tile)")
    den.add_argument("--noise", choices=("gaussian", "poisson-gaussian"), default="gaussian",
                     help="noise model: gaussian (one sigma) or poisson-gaussian (variance gain * signal + "
                          "sigma^2: photon counts; stabilised by the generalised Anscombe transform) "
                          "(default: %(default)s)")
    den.add_argument("--gain", type=float, default=None,
                     help="with --noise poisson-gaussian: the gain, in the input's units per photon; "
                          "default: estimated from the data")
    den.add_argument("--axes", default=None, metavar="AXES",
                     help="the input's layout over the letters T Z Y X C (e.g. YX, TYX, TYXC, ZYX, TZYX, "
                          "ZCYX); the searched axis is T, or Z without T; default: (T, H, W) or "
                          "(T, H, W, C)")
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
    den.add_argument("--lossless", action="store_true",
                     help="video output near-lossless (H.264 yuv444p, crf 0; about twice the size) instead "
                          "of yuv420p at crf 17")
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


def _interrupt_once(signum, frame):
    """SIGINT: a KeyboardInterrupt the first time; later ones are ignored while it unwinds (the
    cleanup of temporary files is not itself interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


_PENDING: list[int] = []


def _interrupt_later(signum, frame):
    """SIGINT while the command's modules import: noted, acted on once they are in. (A
    KeyboardInterrupt raised inside a C extension's import, numpy's say, comes out as an
    ImportError with a long traceback.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PENDING.append(signum)


def main(argv=None) -> int:
    """Entry point of the ``napari-stnls`` console script; returns the exit status.

    Ctrl-C at any moment, the imports included, ends it with one line on stderr and status 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    _PENDING.clear()
    try:
        previous = signal.signal(signal.SIGINT, _interrupt_later)
    except ValueError:  # not the main thread: the default handling stays
        pass
    try:
        if args.command == "demo":
            from . import demo as command  # the imports (torch) under the deferring handler
        elif args.command == "denoise":
            from . import denoise as command
        else:  # pragma: no cover (argparse rejects it first)
            parser.error(f"unknown command {args.command!r}")
            return 2
        if previous is not None:
            if _PENDING:
                raise KeyboardInterrupt
            signal.signal(signal.SIGINT, _interrupt_once)
        if args.command == "demo":
            status = _demo(parser, args, command)
        else:
            status = command.run_denoise(args)
    except KeyboardInterrupt:
        print(f"napari-stnls {args.command}: interrupted", file=sys.stderr)
        status = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if status == 130:
        _clear_caught_interrupt()
    return status


def _clear_caught_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that went through code run by ``eval`` or ``exec`` of a
    string (numpy and scipy do that while importing, which the work may do lazily) as
    unhandled, even once caught, and then ends the process by SIGINT instead of with the
    status ``main`` returns. It was handled here: clear the mark where the interpreter has it
    (CPython 3.11's ``_Py_UnhandledKeyboardInterrupt``; elsewhere nothing is done)."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def _demo(parser: argparse.ArgumentParser, args, demo) -> int:
    try:
        res = demo.run_demo(
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
        print(demo.format_report(res))
    return 0
