"""Take the user guide's screenshots (docs/images/*.png) from a real napari session.

Runs :mod:`napari_stnls.plugin._qt.session` on the sample: one picture when the widgets are
docked, then one per step (Regions, Optical flow, Patch search, Neighbours, Denoise, Compare).
Without a display it re-runs itself under ``xvfb-run``. Usage::

    .venv/bin/python docs/make_screenshots.py
"""

import sys
from pathlib import Path

from napari_stnls.plugin._qt.session import main

if __name__ == "__main__":
    images = Path(__file__).resolve().parent / "images"
    sys.exit(main(["--screenshot", str(images / "session.png"), "--screenshots", str(images), "--exit"]))
