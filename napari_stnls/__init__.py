"""napari-stnls: space-time non-local patch search for videos.

One layer per folder, each importing only the layers below it: :mod:`napari_stnls.ops` (the
operations, pure PyTorch and compiled kernels), :mod:`napari_stnls.video` (files, optical
flow, sample videos), :mod:`napari_stnls.denoise` (the denoisers), :mod:`napari_stnls.stream`
(videos larger than memory), and on top :mod:`napari_stnls.cli` (the command line) and
:mod:`napari_stnls.plugin` (the napari plugin; only its ``_qt`` folder imports napari or Qt).
"""

__version__ = "0.1.0"
