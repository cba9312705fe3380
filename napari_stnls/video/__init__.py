"""Videos as arrays: files and stores (:mod:`.io`), optical flow (:mod:`.flow`) and sample
videos with known motion (:mod:`.synthetic`). Above the ops, below the denoisers' callers;
no Qt.

The readers and the writer are importable from here; ``flow`` and ``synthetic`` are imported
on their own (they load scikit-image and SciPy).
"""

from .io import (
    CHUNK_FRAMES,
    LAZY_BYTES,
    SUFFIXES,
    VIDEO_SUFFIXES,
    WRITE_SUFFIXES,
    AVIndex,
    CropReader,
    decode_to_npy,
    open_video,
    read_frames,
    read_video,
    write_video,
)

__all__ = ["open_video", "read_video", "read_frames", "write_video", "CropReader", "decode_to_npy", "AVIndex",
           "SUFFIXES", "VIDEO_SUFFIXES", "WRITE_SUFFIXES", "LAZY_BYTES", "CHUNK_FRAMES"]
