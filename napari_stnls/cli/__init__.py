"""The command line (``napari-stnls``, ``python -m napari_stnls``): the top layer beside the
plugin. :mod:`.main` parses and dispatches; :mod:`.denoise` denoises video files (in memory
or tile by tile); :mod:`.demo` runs the demo and draws its figure (matplotlib: the ``demo``
extra)."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
