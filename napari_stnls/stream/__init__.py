"""Videos larger than memory: tile-by-tile processing from disk, and lazy dask graphs (no Qt).

A video of shape (T, H, W[, C]) held as a NumPy array or memmap, a ``.npy`` file, a zarr
array or store, a dask array or a video file is cut into tiles of (frames, rows, columns).
Each tile reads only the *crop* of the video (and of the flows) that its output can depend
on, runs the search-based method on the chosen device, and its interior is written into an
output store (zarr or ``.npy``). The result equals the in-memory call on the whole video to
float rounding, and peak memory follows the tile size, not the video size.

Flows are arrays (T, 2, H, W) (``fflow``, ``bflow``; NumPy, memmap, zarr or dask) read with
the same crop; ``max_flow`` bounds ``|flow|`` (read from the flows in one streamed pass when
not given; a tile whose flows exceed a given bound is a ValueError). Flows computed per tile
(``flows="tvl1"`` etc.) are an explicit, approximate option: the flow of a crop differs from
the flow of the whole video near the crop's edges, so that result is not the whole-video one.

Resuming: the finished tiles are recorded in a sidecar ``OUT.tiles.json`` (written
atomically after the tile's data is flushed), with a fingerprint of the run's parameters;
running the same call again continues with the tiles not yet written.

Modules, each one concern: :mod:`.tiling` (the halo of a tile: which crop its output depends
on), :mod:`.sources` (the video and flow crops, read through :mod:`napari_stnls.video.io`),
:mod:`.methods` (the denoisers and :class:`SearchFunction` run on one crop), :mod:`.stores`
(the zarr or ``.npy`` output and its record of finished tiles), :mod:`.process` (the
resumable driver, :func:`process`) and :mod:`.dask_graph` (the same as a lazy dask array,
:func:`denoise_dask`). Below it: :mod:`napari_stnls.denoise`, :mod:`napari_stnls.video`,
:mod:`napari_stnls.ops`.
"""

from .._util import Cancelled
from .dask_graph import denoise_dask
from .methods import SearchFunction
from .process import process
from .tiling import HaloSpec, contrib_span, plan_tiles, read_span, tile_crop

__all__ = [
    "SearchFunction",
    "denoise_dask",
    "plan_tiles",
    "process",
    "read_span",
    "contrib_span",
    "tile_crop",
    "HaloSpec",
    "Cancelled",
]
