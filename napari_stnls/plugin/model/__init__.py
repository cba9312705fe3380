"""What the plugin's widgets compute, without napari or Qt: numpy (or dask, memory-mapped)
videos in napari's layout (T, H, W[, C]) in, numpy arrays out, so that everything can be used
and tested without a viewer.

* :mod:`.regions`: space-time regions, rectangles <-> regions, JSON files;
* :mod:`.search`: search per region, the neighbours of a pixel, distance maps, flows;
* :mod:`.denoise`: the denoisers on napari videos, lazily or not, noise estimate, quality.
"""
