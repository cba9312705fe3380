"""``python -m napari_stnls``: the same as the ``napari-stnls`` console script."""

import sys

from .cli import main

sys.exit(main())
