"""``python -m napari_stnls.cli``: the same as the ``napari-stnls`` console script."""

import sys

from .main import main

sys.exit(main())
