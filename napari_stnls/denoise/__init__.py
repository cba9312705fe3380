"""Video denoisers built on the operations (torch only, no Qt).

* :func:`nl_means` (:mod:`.nl_means`): space-time NL-means along the flow. Every query patch
  is replaced by the weighted mean of its K nearest space-time patches (search -> weights ->
  aggregate, a gather then weighted scatter that never stores the patches: fused kernels on
  the CPU and on CUDA), and overlapping patches are averaged.
* :func:`nl_bayes` (:mod:`.nl_bayes`): two-step video non-local Bayes along the flow.
* :func:`skimage_nl_means` (:mod:`.skimage`): scikit-image's NL-means per frame or on the
  space-time volume, behind the same interface, for comparison.

Their default parameters per noise level are tables in :mod:`.params`
(:func:`nl_bayes_params`, :func:`nl_means_params`); the checks and conversions they share
are in :mod:`._prep`. :data:`METHODS` maps the short names the command line and the plugin
use to them. Every denoiser takes ``progress(done, total)`` and ``should_stop()`` (see
:mod:`napari_stnls._util`): when ``should_stop()`` returns True it raises
:class:`~napari_stnls._util.Cancelled` and returns nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from .nl_bayes import nl_bayes
from .nl_means import nl_means
from .params import NLB_SIGMAS, NLB_TABLE, NLM_TABLE, SKIMAGE_H, nl_bayes_params, nl_means_params
from .skimage import skimage_nl_means

__all__ = ["nl_means", "nl_bayes", "skimage_nl_means", "METHODS", "nl_bayes_params", "nl_means_params",
           "NLB_SIGMAS", "NLB_TABLE", "NLM_TABLE", "SKIMAGE_H"]

METHODS: dict[str, Callable] = {"nlb": nl_bayes, "nlm": nl_means, "skimage": skimage_nl_means}
"""Denoisers by the short name the command line (``--method``) and the plugin use. Each is
called as ``METHODS[name](video, sigma, flows=..., region=..., device=..., progress=...,
should_stop=...)``; ``"skimage"`` ignores ``flows`` and ``device``."""
