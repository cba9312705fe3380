"""Video denoisers built on the operations (torch only, no Qt).

* :func:`nl_means` (:mod:`.nl_means`): space-time NL-means along the flow. Every query patch
  is replaced by the weighted mean of its K nearest space-time patches (search -> weights ->
  aggregate, a gather then weighted scatter that never stores the patches: fused kernels on
  the CPU and on CUDA), and overlapping patches are averaged.
* :func:`nl_bayes` (:mod:`.nl_bayes`): two-step video non-local Bayes along the flow.
* :func:`skimage_nl_means` (:mod:`.skimage`): scikit-image's NL-means per frame or on the
  space-time volume, behind the same interface, for comparison.

Every denoiser takes a NumPy array of any real type (uint8, uint16, other integers, floats)
and any value range, in any layout an ``axes`` string names (``"YX"``, ``"TYX"``, ``"TYXC"``,
``"ZYX"``, ``"TZYX"``, ...; :mod:`napari_stnls.video.axes`), or a (B, T, C, H, W) tensor, with
``sigma`` in the data's own units, and returns the input's type, dtype, shape and layout
(:mod:`.convert`; integers rounded and clipped). Results are equivariant to ``a*x + b``: the
computation runs on the data mapped by its range (``data_range``, estimated by
:func:`signal_range` when not given; ``data_range=1.0`` computes on the values as they are).

Their default parameters per noise level (relative to the data's range) are tables in
:mod:`.params` (:func:`nl_bayes_params`, :func:`nl_means_params`); the checks they share are
in :mod:`._prep`. :data:`METHODS` maps the short names the command line and the plugin use
to them. Every denoiser takes ``progress(done, total)`` and ``should_stop()`` (see
:mod:`napari_stnls._util`): when ``should_stop()`` returns True it raises
:class:`~napari_stnls._util.Cancelled` and returns nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from .calibrate import Calibration, calibrate
from .convert import range_frames, range_of_frames, resolve_range, signal_range
from .nl_bayes import nl_bayes
from .nl_means import nl_means
from .noise import NOISE_MODELS, anscombe, anscombe_inverse, estimate_noise
from .params import (
    COUPLED_CHANNELS,
    NLB_SIGMAS,
    NLB_TABLE,
    NLM_TABLE,
    SKIMAGE_H,
    nl_bayes_params,
    nl_means_params,
)
from .skimage import skimage_nl_means

__all__ = ["nl_means", "nl_bayes", "skimage_nl_means", "METHODS", "nl_bayes_params", "nl_means_params",
           "signal_range", "range_frames", "range_of_frames", "resolve_range",
           "estimate_noise", "anscombe", "anscombe_inverse", "NOISE_MODELS", "calibrate", "Calibration",
           "COUPLED_CHANNELS", "NLB_SIGMAS", "NLB_TABLE", "NLM_TABLE", "SKIMAGE_H"]

METHODS: dict[str, Callable] = {"nlb": nl_bayes, "nlm": nl_means, "skimage": skimage_nl_means}
"""Denoisers by the short name the command line (``--method``) and the plugin use. Each is
called as ``METHODS[name](video, sigma, axes=..., data_range=..., flows=..., region=..., device=...,
progress=..., should_stop=...)``; ``"skimage"`` ignores ``flows`` and ``device``."""
