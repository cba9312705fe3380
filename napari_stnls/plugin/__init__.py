"""The napari plugin: its manifest (``napari.yaml``), reader (:mod:`._reader`) and sample data
(:mod:`._sample`), none of which imports napari; what the widgets compute (:mod:`.model`, no
Qt); and the dock widgets (:mod:`._qt`, the only code that imports napari or Qt).
"""
