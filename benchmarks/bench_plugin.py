"""The napari plugin's responsiveness, in a real viewer under Xvfb (JSON out).

* ``clicks``: click-to-drawn latency of the Neighbours widget. After a region was searched
  (Patch search widget), each click is the viewer's mouse callbacks called with a press at a
  pixel of the region, followed by Qt's event processing until the canvas has repainted;
  the time from the press to the end of that is one latency. On the sample (8 x 128 x 160
  RGB) and on a 20 x 512 x 512 RGB video; median and max per video, and the median CPU
  time of the process per click (all its threads, Xvfb's software OpenGL included), which
  other work on the machine disturbs less than the wall time.
* ``lazy``: the longest stall of Qt's event loop (the largest gap between the ticks of a
  10 ms QTimer heartbeat) while the Denoise widget adds a lazy denoised layer of the
  20 x 512 x 512 video and the time slider steps through frames, and how long each frame
  took to appear.

Without a display it re-runs itself under ``xvfb-run``::

    .venv/bin/python benchmarks/bench_plugin.py --out out/bench_plugin.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Heartbeat:
    """A QTimer ticking every ``ms`` milliseconds; ``max_gap()`` is the longest time between two
    ticks since ``reset()``: how long the event loop was blocked at worst."""

    def __init__(self, ms: int = 10):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(ms)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[float] = []
        self.timer.start()

    def _tick(self):
        self.ticks.append(time.perf_counter())

    def reset(self):
        self.ticks = [time.perf_counter()]

    def max_gap(self) -> float:
        t = np.asarray(self.ticks + [time.perf_counter()])
        return float(np.diff(t).max()) if len(t) > 1 else 0.0

    def stalls(self, over: float = 0.1) -> list[tuple[float, float]]:
        """(when, how long) of every gap over ``over`` seconds, ``when`` from the reset."""
        t = np.asarray(self.ticks + [time.perf_counter()])
        gaps = np.diff(t)
        return [(round(float(t[i] - t[0]), 3), round(float(g), 3)) for i, g in enumerate(gaps) if g > over]

    def stop(self):
        self.timer.stop()


def pump(seconds: float = 0.0) -> None:
    """Process Qt events for at least ``seconds`` (once when 0)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while True:
        QApplication.processEvents()
        if time.perf_counter() >= end:
            return
        time.sleep(0.002)


def wait_until(cond, timeout: float, what: str) -> float:
    start = time.perf_counter()
    while not cond():
        pump()
        time.sleep(0.005)
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
    return time.perf_counter() - start


def add_video(viewer, n_frames: int, size: tuple[int, int], name: str = "noisy"):
    from napari_stnls.plugin._sample import FLOWS_KEY, SIGMA_KEY
    from napari_stnls.video.synthetic import sample_video

    up = 2 if max(size) > 256 else 1  # the scene is 512 x 512: large frames are a half-size video x2
    vid = sample_video(n_frames=n_frames, size=(size[0] // up, size[1] // up), sigma=0)
    clean = vid.clean.repeat(up, 1).repeat(up, 2)
    noisy = clean + np.random.default_rng(0).normal(0, 20 / 255, clean.shape).astype(np.float32)
    flows = {k: (f * up).repeat(up, 2).repeat(up, 3) for k, f in (("fflow", vid.fflow), ("bflow", vid.bflow))}
    flows["method"] = "true"
    return viewer.add_image(noisy, name=name, rgb=True, contrast_limits=(0.0, 1.0),
                            metadata={FLOWS_KEY: flows, SIGMA_KEY: 20 / 255})


def clicks(n_frames: int, size: tuple[int, int], region, n_clicks: int, seed: int = 0, profile=None) -> dict:
    """Latency of ``n_clicks`` clicks inside ``region`` after searching it."""
    import napari

    from napari_stnls.plugin._qt import NeighboursWidget, RegionsWidget, SearchWidget

    viewer = napari.Viewer(show=True)
    try:
        viewer.window.resize(1400, 900)
        layer = add_video(viewer, n_frames, size)
        widgets = {}
        for name, cls in (("Regions", RegionsWidget), ("Patch search", SearchWidget),
                          ("Neighbours", NeighboursWidget)):
            widgets[name] = cls(viewer)
            viewer.window.add_dock_widget(widgets[name], name=name, area="right", tabify=True)
        reg, search, nb = widgets["Regions"], widgets["Patch search"], widgets["Neighbours"]
        reg.video.setCurrentText("noisy")
        reg.set_regions([region])
        search.video.setCurrentText("noisy")
        search.regions.setCurrentText("regions")
        search.flow.setCurrentText("computed")
        search.device.setCurrentText("cpu")
        t0 = time.perf_counter()
        search.runner.run_button.click()
        wait_until(lambda: not search.runner.running, 600, "search")
        search_s = time.perf_counter() - t0
        nb.video.setCurrentText("noisy")
        if "noisy search" in viewer.layers:
            viewer.layers["noisy search"].visible = False
        pump(0.3)
        rng = np.random.default_rng(seed)
        t_r, y_r, x_r = (rng.integers(a, b, n_clicks + 1) for a, b in
                         ((region[0], region[1]), (region[2], region[3]), (region[4], region[5])))
        times, cpu = [], []
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
        for n in range(n_clicks + 1):  # the first click (layers created) is reported apart
            t, y, x = int(t_r[n]), float(y_r[n]), float(x_r[n])
            viewer.dims.set_current_step(0, t)
            pump(0.05)
            world = layer.data_to_world((t, y, x))
            event = _Press(tuple(float(v) for v in world))
            if prof is not None and n > 0:
                prof.enable()
            start, cpu0 = time.perf_counter(), time.process_time()
            for cb in list(viewer.mouse_drag_callbacks):
                cb(viewer, event)
            pump()
            pump()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu0)
            if prof is not None and n > 0:
                prof.disable()
            if n == 0:
                assert "neighbours" in viewer.layers, "the click drew no neighbours"
        if prof is not None:
            prof.dump_stats(profile)
        rest = times[1:]
        return {"video": list((n_frames, *size, 3)), "region": list(region), "search_s": round(search_s, 3),
                "first_click_s": round(times[0], 4), "clicks": len(rest),
                "median_s": round(statistics.median(rest), 4), "max_s": round(max(rest), 4),
                "cpu_median_s": round(statistics.median(cpu[1:]), 4), "cpu_max_s": round(max(cpu[1:]), 4),
                "all_s": [round(v, 4) for v in rest]}
    finally:
        viewer.close()


class _Press:
    type = "mouse_press"

    def __init__(self, position):
        self.position = position
        self.modifiers = ()
        self.button = 1


def lazy(n_frames: int, size: tuple[int, int], method: str, steps: list[int],
         per_frame_timeout: float, params: dict | None = None) -> dict:
    """Longest event-loop stall while a lazy denoised layer is added and frames are stepped."""
    import napari

    from napari_stnls.plugin._qt import DenoiseWidget

    viewer = napari.Viewer(show=True)
    beat = Heartbeat(10)
    try:
        viewer.window.resize(1400, 900)
        add_video(viewer, n_frames, size)
        w = DenoiseWidget(viewer)
        viewer.window.add_dock_widget(w, name="Denoise", area="right")
        w.video.setCurrentText("noisy")
        w.method.setCurrentText(method)
        w.flow.setCurrentText("computed")
        w.device.setCurrentText("cpu")
        for key, value in (params or {}).items():
            w.tunables[key].setValue(value)
        w.lazy.setChecked(True)
        viewer.dims.set_current_step(0, steps[0])
        pump(0.5)
        name = f"noisy denoised ({method}, lazy)"
        beat.reset()
        start = time.perf_counter()
        w.runner.run_button.click()
        wait_until(lambda: name in viewer.layers, 600, "the lazy layer")
        added_s = time.perf_counter() - start
        print(f"  lazy layer added after {added_s:.2f} s (stall so far {beat.max_gap():.2f} s)", flush=True)
        layer = viewer.layers[name]
        ready = getattr(layer.data, "is_ready", None) or (lambda t: True)
        frames = []
        for n, t in enumerate(steps):
            t0 = time.perf_counter()
            if n:
                viewer.dims.set_current_step(0, t)
            step_s = time.perf_counter() - t0
            wait_until(lambda t=t: ready(t), per_frame_timeout, f"frame {t}")
            pump(0.05)
            frames.append({"frame": t, "set_step_s": round(step_s, 3),
                           "shown_after_s": round(time.perf_counter() - t0, 3)})
            print(f"  frame {t}: {frames[-1]} (stall so far {beat.max_gap():.2f} s)", flush=True)
        total = time.perf_counter() - start
        return {"video": list((n_frames, *size, 3)), "method": method, "params": params or {},
                "layer_added_after_s": round(added_s, 3), "frames": frames, "total_s": round(total, 2),
                "max_stall_s": round(beat.max_gap(), 4), "stalls_over_100ms": beat.stalls()}
    finally:
        beat.stop()
        viewer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench_plugin.json")
    p.add_argument("--clicks", type=int, default=20, help="clicks per video (default %(default)s)")
    p.add_argument("--method", default="nlm", help="the lazy layer's denoiser (default %(default)s)")
    p.add_argument("--params", default="ws=5,k=4",
                   help="the lazy denoiser's ps, ws, k, e.g. ws=5,k=4 (default %(default)s: a frame in "
                        "seconds, not minutes, on 2 cores); '' for the defaults")
    p.add_argument("--steps", default="0,1,2,5", help="frames shown in turn on the lazy layer")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: clicks, lazy")
    p.add_argument("--profile", default=None, help="write a cProfile of the large video's clicks here")
    args = p.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            print("no display and no xvfb-run", file=sys.stderr)
            return 2
        os.execv(xvfb, [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    skip = set(filter(None, args.skip.split(",")))
    out = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "python": platform.python_version(), "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    if "clicks" not in skip:
        out["clicks"] = [
            clicks(8, (128, 160), (2, 5, 28, 92, 40, 120), args.clicks),
            clicks(20, (512, 512), (8, 12, 128, 384, 128, 384), args.clicks, profile=args.profile),
        ]
        for c in out["clicks"]:
            print(f"clicks on {c['video']}: median {c['median_s'] * 1e3:.1f} ms, "
                  f"max {c['max_s'] * 1e3:.1f} ms (first {c['first_click_s'] * 1e3:.0f} ms)", flush=True)
    if "lazy" not in skip:
        steps = [int(s) for s in args.steps.split(",")]
        params = {k: int(v) for k, v in (kv.split("=") for kv in filter(None, args.params.split(",")))}
        out["lazy"] = lazy(20, (512, 512), args.method, steps, per_frame_timeout=600, params=params)
        print(f"lazy {args.method}: longest stall {out['lazy']['max_stall_s'] * 1e3:.0f} ms; "
              f"frames {out['lazy']['frames']}", flush=True)
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]  # other work on the machine
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
