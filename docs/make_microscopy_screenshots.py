"""Take the user guide's microscopy screenshots (docs/images/micro_*.png) from a real napari session.

Two generated 16-bit data sets with photon (Poisson-Gaussian) noise: a time-lapse of drifting
cells (T, Y, X) and a time-lapse of z-stacks (T, Z, Y, X). The Denoise widget estimates the
noise, calibrates the strength and restores them; before and after side by side. Without a
display it re-runs itself under ``xvfb-run``. Usage::

    .venv/bin/python docs/make_microscopy_screenshots.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

GAIN, READ = 4.0, 40.0  # counts per photon, read noise (counts)


def cells(shape, seed: int = 0) -> np.ndarray:
    """Clean fluorescence: Gaussian blobs ("cells") drifting over a dim background, in counts.

    ``shape`` is (T, Y, X) or (T, Z, Y, X); blobs are 3-D in the second case."""
    rng = np.random.default_rng(seed)
    T, *space = shape
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in space], indexing="ij")
    n = 25 if len(space) == 2 else 18
    centres = rng.uniform(0.1, 0.9, (n, len(space))) * np.array(space)
    radius = rng.uniform(2.5, 6.0, n)
    bright = rng.uniform(800, 3000, n)
    drift = rng.normal(0, 0.8, (n, len(space)))
    if len(space) == 3:
        drift[:, 0] *= 0.2  # little motion along z
    out = np.full(shape, 150.0)
    for t in range(T):
        for c, r, b, d in zip(centres, radius, bright, drift, strict=True):
            p = c + t * d
            d2 = sum((g - pi) ** 2 / (1.0 if k or len(space) == 2 else 0.3) for k, (g, pi) in
                     enumerate(zip(grids, p, strict=True)))
            out[t] += b * np.exp(-d2 / (2 * r * r))
    return out


def photon_noise(clean: np.ndarray, seed: int = 1) -> np.ndarray:
    """uint16 counts: ``GAIN * Poisson(clean / GAIN) + N(0, READ)``."""
    rng = np.random.default_rng(seed)
    noisy = GAIN * rng.poisson(clean / GAIN) + rng.normal(0, READ, clean.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def save_small(viewer, path: Path) -> None:
    """The window as a PNG of at most 256 colours (well under 200 KB)."""
    from PIL import Image

    from napari_stnls.plugin._qt.session import screenshot

    screenshot(viewer, path)
    img = Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)
    print(f"[micro] {path} ({path.stat().st_size // 1024} KB)")


def run_denoise(den):
    """Run the Denoise widget, wait for it and print its status line."""
    from napari_stnls.plugin._qt.session import wait_for

    den.runner.run_button.click()
    wait_for(den.runner)
    print(f"[micro] {den.status.text()}")


def compare_shot(viewer, den, t: int, path: Path) -> None:
    """A screenshot of the before/after grid at frame ``t``, then the layers as they were."""
    viewer.dims.set_point(0, t)
    den.compare_button.click()
    viewer.reset_view()
    save_small(viewer, path)
    den.compare_button.click()


def main() -> int:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None or os.environ.get("NAPARI_STNLS_UNDER_XVFB"):
            print("error: no display and no xvfb-run", file=sys.stderr)
            return 2
        os.environ["NAPARI_STNLS_UNDER_XVFB"] = "1"
        os.execv(xvfb, [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_stnls.plugin._qt import DenoiseWidget, SearchWidget
    from napari_stnls.plugin._qt.session import wait_for

    images = Path(__file__).resolve().parent / "images"
    viewer = napari.Viewer(title="napari-stnls: a microscopy session")
    viewer.window.resize(1500, 950)
    clean = cells((10, 128, 128))
    noisy = photon_noise(clean)
    viewer.add_image(noisy, name="cells", contrast_limits=(100, 2500), colormap="green",
                     axis_labels=("t", "y", "x"))
    den = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(den, name="Denoise", area="right")
    den.video.setCurrentText("cells")
    den.method.setCurrentText("nlm")
    den.noise.setCurrentText("poisson-gaussian")
    while den.estimating:
        QApplication.processEvents()
    print(f"[micro] {den.noise_note.text()}")
    viewer.reset_view()
    save_small(viewer, images / "micro_estimate.png")

    den.calibrate()
    wait_for(den.runner)
    print(f"[micro] {den.status.text()}")
    save_small(viewer, images / "micro_calibrate.png")

    run_denoise(den)
    out = viewer.layers["cells denoised (nlm)"].data
    print(f"[micro] RMSE to the clean cells: {err4(noisy, clean):.1f} -> {err4(out, clean):.1f} counts")
    compare_shot(viewer, den, 5, images / "micro_compare.png")

    # a time-lapse of z-stacks: (T, Z, Y, X)
    for layer in list(viewer.layers):
        layer.visible = False
    clean4 = cells((5, 8, 96, 96), seed=3)
    stack = photon_noise(clean4, seed=4)
    viewer.add_image(stack, name="stack", contrast_limits=(100, 2500), colormap="magma",
                     axis_labels=("t", "z", "y", "x"))
    search = SearchWidget(viewer)
    viewer.window.add_dock_widget(search, name="Patch search", area="right", tabify=True)
    search.video.setCurrentText("stack")
    viewer.dims.set_point(1, 4)
    den.video.setCurrentText("stack")
    den.method.setCurrentText("nlm")
    den.noise.setCurrentText("poisson-gaussian")
    while den.estimating:
        QApplication.processEvents()
    den.regions.setCurrentText("(whole video)")
    run_denoise(den)
    out4 = viewer.layers["stack denoised (nlm)"].data
    print(f"[micro] stack RMSE: {err4(stack, clean4):.1f} -> {err4(out4, clean4):.1f} counts")
    compare_shot(viewer, den, 2, images / "micro_tzyx.png")
    viewer.close()
    return 0


def err4(x, clean) -> float:
    return float(np.sqrt(np.mean((x.astype(np.float64) - clean) ** 2)))


if __name__ == "__main__":
    sys.exit(main())
