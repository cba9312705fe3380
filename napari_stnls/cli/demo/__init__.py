"""``napari-stnls demo``: flow-guided search on the sample video, its numbers and one figure.

:mod:`.run` runs the search and writes the PNG, :mod:`.analysis` computes the numbers and
:mod:`.figure` draws the panels (matplotlib, the ``demo`` extra: imported only to draw).
"""

from .run import format_report, require_matplotlib, run_demo

__all__ = ["run_demo", "format_report", "require_matplotlib"]
