"""A napari session on the sample: the README's ``make demo`` and the guide's screenshots.

``python -m napari_stnls.plugin._qt.session`` (also the ``napari-stnls-gui`` command) opens napari
with the sample video loaded and the five widgets docked, then does what a user would:
draws a region, searches it with the flow, picks a pixel to show its neighbours and
denoises the region. With a display the window stays open; with none (no ``$DISPLAY``) the
same steps run under a virtual X server (``xvfb-run``) and a screenshot is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ..._util import atomic_path
from ..model.regions import Region

WIDGETS = ("Regions", "Optical flow", "Patch search", "Neighbours", "Denoise")
STEPS = (*WIDGETS, "Compare")  # the steps of run_steps: one per widget, then before/after
REGION = Region(2, 5, 28, 92, 40, 120)  # the astronaut's face and helmet ring, frames 2..4
PIXEL = (3, 60, 86)  # a query on the helmet's edge


def wait_for(runner, timeout: float = 600.0) -> None:
    """Process Qt events until ``runner``'s job has finished and its results are all shown (the
    steps the widgets split over turns of the event loop), or raise TimeoutError."""
    from qtpy.QtWidgets import QApplication

    from ._common import turns_pending

    end = time.monotonic() + timeout
    while runner.running or turns_pending():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() > end:
            raise TimeoutError("the job did not finish in time")
    QApplication.processEvents()


def dock_widgets(viewer) -> dict:
    """Dock the five widgets (through the plugin's manifest when napari finds it); name -> (dock, widget)."""
    from . import DenoiseWidget, FlowWidget, NeighboursWidget, RegionsWidget, SearchWidget

    classes = dict(zip(WIDGETS, (RegionsWidget, FlowWidget, SearchWidget, NeighboursWidget, DenoiseWidget),
                       strict=True))
    out = {}
    for name, cls in classes.items():
        try:
            dock, widget = viewer.window.add_plugin_dock_widget("napari-stnls", name, tabify=True)
        except (KeyError, ValueError, LookupError):  # plugin not discovered (e.g. not installed)
            widget = cls(viewer)
            dock = viewer.window.add_dock_widget(widget, name=name, area="right", tabify=True)
        out[name] = (dock, widget)
    return out


def load_sample(viewer, n_frames: int = 8, size=(128, 160)) -> None:
    from .._sample import astronaut

    for data, kw, kind in astronaut(n_frames=n_frames, size=size):
        getattr(viewer, f"add_{kind}")(data, **kw)


def run_steps(viewer, widgets: dict, *, region: Region = REGION, pixel=PIXEL, on_step=None,
              log=print) -> None:
    """Region -> flow-guided search -> neighbours of ``pixel`` -> denoise the region -> compare
    before and after.

    ``on_step(name)`` is called after each step of :data:`STEPS` (e.g. to take a screenshot).
    """
    step = on_step or (lambda name: None)
    reg = widgets["Regions"][1]
    reg.video.setCurrentText("noisy")
    viewer.dims.set_current_step(0, region.t0)
    reg.set_regions([region])
    log(f"[session] region {tuple(region)}")
    step("Regions")

    flow = widgets["Optical flow"][1]
    flow.video.setCurrentText("noisy")  # replaces the sample's true flow by an estimate
    flow.method.setCurrentText("ilk")
    flow.runner.run_button.click()
    wait_for(flow.runner)
    log(f"[session] flow: {flow.status.text()}")
    step("Optical flow")
    viewer.layers["noisy flow"].visible = False

    search = widgets["Patch search"][1]
    search.video.setCurrentText("noisy")
    search.regions.setCurrentText("regions")
    search.flow.setCurrentText("computed")
    search.stride0.setValue(2)
    search.runner.run_button.click()
    wait_for(search.runner)
    log(f"[session] search: {search.status.text()}")
    step("Patch search")

    nb = widgets["Neighbours"][1]
    nb.video.setCurrentText("noisy")
    viewer.dims.set_current_step(0, pixel[0])
    nb.show_at(*pixel)
    viewer.layers["noisy search"].visible = False
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9 moved it to viewer.scene
    world = viewer.layers["noisy"].data_to_world(pixel)  # the camera is in world units
    camera.center = tuple(float(v) for v in world[1:])  # zoom in on the query
    camera.zoom = 6 * camera.zoom
    log(f"[session] neighbours: {nb.status.text()}")
    step("Neighbours")
    viewer.reset_view()

    den = widgets["Denoise"][1]
    den.video.setCurrentText("noisy")
    den.method.setCurrentText("nlm")
    den.regions.setCurrentText("regions")
    den.flow.setCurrentText("computed")
    den.clean.setCurrentText("clean")
    den.runner.run_button.click()
    wait_for(den.runner)
    for name in ("neighbours", "neighbour vectors", "noisy search"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    log(f"[session] denoise: {den.status.text()} {den.metrics.text()}")
    step("Denoise")

    den.compare_button.click()  # before/after side by side, then back
    viewer.reset_view()
    log(f"[session] compare: {den.status.text()}")
    step("Compare")
    den.compare_button.click()
    viewer.reset_view()


def show_only(widgets: dict, name: str) -> None:
    """Bring one docked widget to the front."""
    dock = widgets[name][0]
    dock.show()
    dock.raise_()


def screenshot(viewer, path) -> Path:
    """The whole window as a PNG, written atomically."""

    from qtpy.QtWidgets import QApplication

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)
    with atomic_path(path, ".png") as tmp:
        viewer.screenshot(tmp, canvas_only=False, flash=False)
    return path


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="napari-stnls-gui",
        description="Open napari with the sample video and the napari-stnls widgets, and run a session "
                    "(region, flow-guided search, neighbours, denoising). Without a display it runs "
                    "under xvfb-run and writes a screenshot.")
    parser.add_argument("--screenshot", default="out/napari.png",
                        help="where to write the screenshot (default: %(default)s)")
    parser.add_argument("--screenshots", metavar="DIR", default=None,
                        help="also write one screenshot per widget into DIR (the guide's pictures)")
    parser.add_argument("--exit", action="store_true", help="close napari after the screenshot")
    parser.add_argument("--no-steps", action="store_true", help="only load the sample and dock the widgets")
    args = parser.parse_args(argv)
    if not _has_display():
        if os.environ.get("NAPARI_STNLS_UNDER_XVFB"):
            print("error: no display even under xvfb-run", file=sys.stderr)
            return 2
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            print("error: no display ($DISPLAY is unset) and xvfb-run is not installed "
                  "(apt-get install xvfb, or run `make setup` as root)", file=sys.stderr)
            return 2
        print("[session] no display: running headless under xvfb-run")
        os.environ["NAPARI_STNLS_UNDER_XVFB"] = "1"
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m",
               "napari_stnls.plugin._qt.session", "--screenshot", args.screenshot, "--exit"]
        cmd += ["--no-steps"] if args.no_steps else []
        if args.screenshots:
            cmd += ["--screenshots", args.screenshots]
        os.execv(xvfb, cmd)

    import napari

    viewer = napari.Viewer(title="napari-stnls: space-time non-local search")
    viewer.window.resize(1500, 950)
    load_sample(viewer)
    widgets = dock_widgets(viewer)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.reset_view()
    if args.screenshots:
        show_only(widgets, "Regions")
        screenshot(viewer, Path(args.screenshots) / "start.png")
    if not args.no_steps:

        def on_step(name):
            if args.screenshots:
                show_only(widgets, name if name in widgets else "Denoise")
                slug = name.lower().replace(" ", "_")
                print(f"[session] screenshot: {screenshot(viewer, Path(args.screenshots) / f'{slug}.png')}")

        run_steps(viewer, widgets, on_step=on_step)
        show_only(widgets, "Denoise")
    path = screenshot(viewer, args.screenshot)
    print(f"[session] screenshot: {path}")
    if args.exit:
        viewer.close()
        return 0
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
