"""The README's `make demo` session: the same steps in a test viewer, and the headless command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_stnls.plugin._qt._common import RESULTS_KEY  # noqa: E402
from napari_stnls.plugin._qt.session import (  # noqa: E402
    STEPS,
    WIDGETS,
    dock_widgets,
    load_sample,
    run_steps,
    screenshot,
)
from napari_stnls.plugin.model.regions import Region  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # every widget in one viewer, 8 s: each step also has its own test in test_widgets.py
def test_session_steps_and_screenshot(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    load_sample(viewer, n_frames=5, size=(40, 48))
    widgets = dock_widgets(viewer)
    assert list(widgets) == list(WIDGETS)
    seen = []
    run_steps(viewer, widgets, region=Region(1, 3, 8, 28, 10, 34), pixel=(2, 16, 22), on_step=seen.append,
              log=lambda *a: None)
    assert seen == list(STEPS)
    assert not viewer.grid.enabled  # the before/after view was left
    for name in ("regions", "noisy flow", "noisy search", "neighbours", "neighbour vectors",
                 "noisy denoised (nlm)"):
        assert name in viewer.layers, name
    assert viewer.layers["noisy"].metadata[RESULTS_KEY][0].flow == "ilk"
    assert "PSNR" in widgets["Denoise"][1].metrics.text()
    path = screenshot(viewer, tmp_path / "s.png")
    from skimage.io import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400
    assert img[..., :3].std() > 20  # a rendered window, not a black frame
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


@pytest.mark.slow  # a fresh napari in a fresh X server: 10 s of the 2-core CI's 5 minutes
def test_headless_command_writes_a_screenshot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "shot.png"
    cmd = [sys.executable, "-m", "napari_stnls.plugin._qt.session", "--no-steps", "--screenshot", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running headless under xvfb-run" in r.stdout and out.read_bytes().startswith(b"\x89PNG")
    from skimage.io import imread

    assert np.asarray(imread(out))[..., :3].std() > 20
