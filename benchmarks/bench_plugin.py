"""The napari plugin's responsiveness, in a real viewer under Xvfb (JSON out).

* ``clicks``: click-to-drawn latency of the Neighbours widget, on the sample (8 x 128 x 160
  RGB) and on a 20 x 512 x 512 RGB video. A region is searched (Patch search widget; the
  longest event-loop stall from the search's start until its last steps were drawn is
  ``search_longest_stall_s``), then each click is a real left click (press and release sent
  to the canvas through Qt, at a pixel of the region) followed by Qt's event processing
  until the window has repainted; the time from the press to the end of that is one
  latency (``wall_s``), with the CPU time of the GUI thread (``gui_thread_cpu_s``: Python,
  napari, vispy, Qt) and of the whole process (the software OpenGL's threads too), the
  time the callbacks took (``handler_s``), the end of the canvas's draw (``drawn_s``) and
  Python's garbage collections, per click and as median, p90, max. The first click is
  reported apart. ``floor_wall_s``: the same clicks with picking off, each followed by one
  repaint (what a click and a frame cost here whatever the plugin does). The load average
  and the CPU time of the machine's other processes during the clicks say how quiet it was.
* ``lazy``: the longest stall of Qt's event loop (the largest gap between the ticks of a
  10 ms QTimer heartbeat) while the Denoise widget adds a lazy denoised layer of the
  20 x 512 x 512 video and the time slider steps through frames, how long each frame
  took to appear, and the garbage collections over 20 ms (with their thread).

``--hide 'neighbour vectors'`` hides layers before the clicks (as with the layer list's
eye), ``--profile PREFIX`` writes cProfiles of the first and the three slowest clicks (cProfile
slows them: not for timings), ``--watch`` samples the GUI thread's stack during stalls.
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
import threading
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


class StallWatch:
    """A thread that, while the GUI thread's heartbeat is over ``late`` seconds late, samples
    the GUI thread's Python stack every ``every`` seconds: where the longest stalls were spent
    (``--watch``; the sampling costs the GUI thread little, the GIL hand-over)."""

    def __init__(self, beat: Heartbeat, late: float = 0.06, every: float = 0.01):
        import threading

        self.beat, self.late, self.every = beat, late, every
        self.gui = threading.get_ident()
        self.samples: dict[tuple[str, ...], int] = {}
        self._on = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import traceback

        while self._on:
            time.sleep(self.every)
            ticks = self.beat.ticks
            if not ticks or time.perf_counter() - ticks[-1] < self.late:
                continue
            frame = sys._current_frames().get(self.gui)
            if frame is None:
                continue
            stack = tuple(f"{Path(fs.filename).name}:{fs.lineno} {fs.name}"
                          for fs in traceback.extract_stack(frame)[-40:])
            self.samples[stack] = self.samples.get(stack, 0) + 1

    def stop(self) -> list[dict]:
        """The frames seen most in the samples (each counted once per sample it is in)."""
        self._on = False
        self.thread.join()
        counts: dict[str, int] = {}
        for stack, n in self.samples.items():
            for frame in set(stack):
                counts[frame] = counts.get(frame, 0) + n
        total = sum(self.samples.values())
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
        return [{"samples": total}] + [{"frame": f, "samples": n} for f, n in top]


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


class CpuShare:
    """CPU time of the whole machine's other processes (all of them but this one) and of this
    process, between ``start()`` and ``stop()``, from ``/proc`` (Linux): how much the
    measurement was disturbed, more precisely than the load average."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _read(self) -> tuple[float, float] | None:
        try:
            cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            busy = sum(int(v) for v in cpu) - int(cpu[3]) - int(cpu[4])  # all but idle and iowait
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            mine = int(own[11]) + int(own[12])  # utime, stime of this process (all its threads)
            return busy / self.hz, mine / self.hz
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        self.t0, self.r0 = time.perf_counter(), self._read()

    def stop(self) -> dict:
        r1, wall = self._read(), time.perf_counter() - self.t0
        if self.r0 is None or r1 is None:
            return {}
        busy, mine = r1[0] - self.r0[0], r1[1] - self.r0[1]
        return {"wall_s": round(wall, 2), "this_process_cpu_s": round(mine, 2),
                "other_processes_cpu_s": round(max(0.0, busy - mine), 2),
                "other_processes_cores": round(max(0.0, busy - mine) / wall, 2) if wall > 0 else None}


class GcPauses:
    """Python's garbage collections while installed: (generation, seconds) of each."""

    def __init__(self):
        self.pauses: list[tuple[int, float]] = []
        self.where: list[tuple[float, str]] = []  # when (from the start) and in which thread
        self._t = 0.0
        self.t0 = time.perf_counter()

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._t))
            self.where.append((round(self._t - self.t0, 3), threading.current_thread().name))

    def __enter__(self):
        import gc

        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        import gc

        gc.callbacks.remove(self)

    def take(self) -> list[tuple[int, float]]:
        out, self.pauses, self.where = self.pauses, [], []
        return out


class CanvasClock:
    """When napari's canvas last finished drawing (a callback after vispy's own on the draw
    event), and how many times it drew, since ``reset()``."""

    def __init__(self, viewer):
        self.canvas = viewer.window._qt_viewer.canvas  # private: a benchmark's probe only
        self.canvas._scene_canvas.events.draw.connect(self._drawn, position="last")
        self.reset()

    def _drawn(self, event=None):
        self.last = time.perf_counter()
        self.draws += 1

    def reset(self):
        self.last, self.draws = None, 0

    def to_canvas(self, world_yx) -> tuple[float, float]:
        """Canvas pixel (x, y) of a point of the displayed plane (world y, x)."""
        view = self.canvas.view
        xy = (view.transform * view.scene.transform).map([float(world_yx[1]), float(world_yx[0])])
        return float(xy[0]), float(xy[1])

    def native(self):
        return self.canvas._scene_canvas.native


def click_at(clock: CanvasClock, world_yx) -> None:
    """A real left click (press and release through Qt, as a mouse would) at a world point."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    x, y = clock.to_canvas(world_yx)
    pt = QPoint(int(round(x)), int(round(y)))
    native = clock.native()
    QTest.mousePress(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pt)
    QTest.mouseRelease(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pt)


def summary(values: list[float], digits: int = 4) -> dict:
    v = sorted(values)
    return {"median": round(statistics.median(v), digits), "p90": round(v[int(0.9 * (len(v) - 1))], digits),
            "max": round(v[-1], digits), "mean": round(statistics.fmean(v), digits)}


def clicks(n_frames: int, size: tuple[int, int], region, n_clicks: int, seed: int = 0,
           profile: str | None = None, watch: bool = False, hide: tuple[str, ...] = ()) -> dict:
    """Latency of ``n_clicks`` clicks inside ``region`` after searching it (and of the first);
    the layers named in ``hide`` are hidden before the clicks."""
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
        nb.video.setCurrentText("noisy")
        viewer.dims.set_current_step(0, region[0])
        pump(0.5)
        params = {k: getattr(search, k).value() for k in ("ps", "ws", "wt", "k", "stride0")}
        beat = Heartbeat(10)
        watcher = StallWatch(beat) if watch else None
        search_gc = GcPauses().__enter__()
        search_gc.t0 = t0 = time.perf_counter()
        search.runner.run_button.click()
        wait_until(lambda: not search.runner.running, 600, "search")
        search_s = time.perf_counter() - t0
        try:  # the steps the widgets split over event-loop turns (the map shown, overlays made)
            from napari_stnls.plugin._qt._common import turns_pending
        except ImportError:  # a version of the plugin without them
            turns_pending = bool
        wait_until(lambda: not turns_pending(), 60, "the search's last steps")
        pump(0.5)  # their first draws
        search_stall = beat.max_gap()
        search_stalls = beat.stalls()
        search_stacks = watcher.stop() if watcher else None
        search_gc.__exit__()
        beat.stop()
        if "noisy search" in viewer.layers:
            viewer.layers["noisy search"].visible = False
        for name in hide:  # as a user would, with the layer list's eye
            if name in viewer.layers:
                viewer.layers[name].visible = False
        pump(0.3)
        clock = CanvasClock(viewer)
        rng = np.random.default_rng(seed)
        t_r, y_r, x_r = (rng.integers(a, b, n_clicks + 1) for a, b in
                         ((region[0], region[1]), (region[2], region[3]), (region[4], region[5])))
        rows = []
        profiles = []
        share = CpuShare()
        load = [round(v, 2) for v in os.getloadavg()]
        share.start()
        with GcPauses() as gcp:
            for n in range(n_clicks + 1):  # the first click is reported apart
                t, y, x = int(t_r[n]), float(y_r[n]), float(x_r[n])
                viewer.dims.set_current_step(0, t)
                pump(0.1)
                world = layer.data_to_world((t, y, x))
                gcp.take()
                clock.reset()
                prof = None
                if profile:
                    import cProfile

                    prof = cProfile.Profile()
                    prof.enable()
                start, thread0, cpu0 = time.perf_counter(), time.thread_time(), time.process_time()
                click_at(clock, world[-2:])
                handled = time.perf_counter()
                pump()
                pump()
                end = time.perf_counter()
                thread_s, cpu_s = time.thread_time() - thread0, time.process_time() - cpu0
                if prof is not None:
                    prof.disable()
                    profiles.append(prof)
                q = nb.neighbours.query if nb.neighbours is not None else None
                near = q is not None and q[0] == t and max(abs(q[1] - y), abs(q[2] - x)) <= params["stride0"]
                if not near:
                    raise AssertionError(f"click {n} at {(t, y, x)} showed the query {q}")
                pauses = gcp.take()
                rows.append({"wall_s": end - start, "handler_s": handled - start,
                             "drawn_s": None if clock.last is None else clock.last - start,
                             "draws": clock.draws, "gui_thread_cpu_s": thread_s, "process_cpu_s": cpu_s,
                             "gc": [(g, round(s, 4)) for g, s in pauses]})
        disturbance = share.stop()
        # the floor: the same clicks with picking off (the widget does nothing), each followed by
        # one repaint of the canvas: what a click and a frame cost here whatever the plugin does
        nb.pick.setChecked(False)
        floor = []
        for n in range(min(n_clicks, 20)):
            t, y, x = int(t_r[n]), float(y_r[n]), float(x_r[n])
            viewer.dims.set_current_step(0, t)
            pump(0.1)
            world = layer.data_to_world((t, y, x))
            start = time.perf_counter()
            click_at(clock, world[-2:])
            clock.canvas._scene_canvas.update()
            pump()
            pump()
            floor.append(time.perf_counter() - start)
        nb.pick.setChecked(True)
        if profile:
            import pstats

            slowest = sorted(range(1, len(rows)), key=lambda i: rows[i]["wall_s"])[-3:]
            for tag, idx in (("first", [0]), ("slowest3", slowest)):
                st = pstats.Stats(profiles[idx[0]])
                for i in idx[1:]:
                    st.add(profiles[i])
                st.dump_stats(f"{profile}.{n_frames}x{size[0]}.{tag}.prof")
        rest = rows[1:]
        first = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[0].items()}
        keys = ("wall_s", "handler_s", "gui_thread_cpu_s", "process_cpu_s")
        return {"video": list((n_frames, *size, 3)), "region": list(region), "search_params": params,
                "hidden": list(hide),
                "search_s": round(search_s, 3), "search_longest_stall_s": round(search_stall, 4),
                "search_stalls_over_100ms": search_stalls, "search_stall_stacks": search_stacks,
                "search_gc_over_20ms": [(g, round(t, 3), *w) for (g, t), w in
                                        zip(search_gc.pauses, search_gc.where, strict=True) if t > 0.02],
                "load_average_before": load,
                "machine_during_clicks": disturbance, "profiled": bool(profile),
                "first_click": first, "clicks": len(rest),
                **{k: summary([r[k] for r in rest]) for k in keys},
                "clicks_over_100ms": sum(r["wall_s"] > 0.1 for r in rest),
                "floor_wall_s": summary(floor),
                "gc_pauses": summary([s for r in rest for _, s in r["gc"]] or [0.0]) | {
                    "count": sum(len(r["gc"]) for r in rest),
                    "full": sum(g == 2 for r in rest for g, _ in r["gc"])},
                "per_click": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                              for r in rest]}
    finally:
        viewer.close()


def lazy(n_frames: int, size: tuple[int, int], method: str, steps: list[int],
         per_frame_timeout: float, params: dict | None = None, watch: bool = False) -> dict:
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
        share, load = CpuShare(), [round(v, 2) for v in os.getloadavg()]
        gcp = GcPauses().__enter__()
        beat.reset()
        gcp.t0 = beat.ticks[0]
        watcher = StallWatch(beat) if watch else None
        share.start()
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
        gcp.__exit__()
        return {"video": list((n_frames, *size, 3)), "method": method, "params": params or {},
                "load_average_before": load, "machine_during": share.stop(),
                "gc_pauses_over_20ms": [(g, round(t, 3), *w) for (g, t), w in
                                        zip(gcp.pauses, gcp.where, strict=True) if t > 0.02],
                "stall_stacks": watcher.stop() if watcher else None,
                "layer_added_after_s": round(added_s, 3), "frames": frames, "total_s": round(total, 2),
                "max_stall_s": round(beat.max_gap(), 4), "stalls_over_100ms": beat.stalls()}
    finally:
        beat.stop()
        viewer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench_plugin.json")
    p.add_argument("--clicks", type=int, default=40, help="clicks per video (default %(default)s)")
    p.add_argument("--method", default="nlm", help="the lazy layer's denoiser (default %(default)s)")
    p.add_argument("--params", default="ws=5,k=4",
                   help="the lazy denoiser's ps, ws, k, e.g. ws=5,k=4 (default %(default)s: a frame in "
                        "seconds, not minutes, on 2 cores); '' for the defaults")
    p.add_argument("--steps", default="0,1,2,5", help="frames shown in turn on the lazy layer")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: clicks, lazy")
    p.add_argument("--profile", default=None,
                   help="profile every click (cProfile, which slows them: not for timings) and write "
                        "PREFIX.<video>.first.prof and PREFIX.<video>.slowest3.prof")
    p.add_argument("--videos", default="sample,large",
                   help="the clicks' videos: sample (8 x 128 x 160), large (20 x 512 x 512)")
    p.add_argument("--hide", default="",
                   help="comma-separated layers hidden before the clicks, e.g. 'neighbour vectors'")
    p.add_argument("--watch", action="store_true",
                   help="sample the GUI thread's stack during stalls (the search's end, the lazy layer)")
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
        videos = {"sample": (8, (128, 160), (2, 5, 28, 92, 40, 120)),
                  "large": (20, (512, 512), (8, 12, 128, 384, 128, 384))}
        hide = tuple(filter(None, args.hide.split(",")))
        out["clicks"] = [clicks(*videos[v], args.clicks, profile=args.profile, watch=args.watch, hide=hide)
                         for v in filter(None, args.videos.split(","))]
        for c in out["clicks"]:
            w, cpu, f = c["wall_s"], c["gui_thread_cpu_s"], c["first_click"]
            print(f"clicks on {c['video']} (load {c['load_average_before'][0]}, other processes "
                  f"{c['machine_during_clicks'].get('other_processes_cores')} cores): wall median "
                  f"{w['median'] * 1e3:.0f} ms, p90 {w['p90'] * 1e3:.0f}, max {w['max'] * 1e3:.0f}; GUI "
                  f"thread CPU median {cpu['median'] * 1e3:.0f} ms, max {cpu['max'] * 1e3:.0f}; "
                  f"{c['clicks_over_100ms']} of {c['clicks']} over 100 ms; floor (a click drawing nothing, "
                  f"one repaint) median {c['floor_wall_s']['median'] * 1e3:.0f} ms; first click "
                  f"{f['wall_s'] * 1e3:.0f} ms; search's longest stall "
                  f"{c['search_longest_stall_s'] * 1e3:.0f} ms", flush=True)
    if "lazy" not in skip:
        steps = [int(s) for s in args.steps.split(",")]
        params = {k: int(v) for k, v in (kv.split("=") for kv in filter(None, args.params.split(",")))}
        out["lazy"] = lazy(20, (512, 512), args.method, steps, per_frame_timeout=600, params=params,
                           watch=args.watch)
        print(f"lazy {args.method} (load {out['lazy']['load_average_before'][0]}, other processes "
              f"{out['lazy']['machine_during'].get('other_processes_cores')} cores): longest stall "
              f"{out['lazy']['max_stall_s'] * 1e3:.0f} ms; "
              f"frames {out['lazy']['frames']}", flush=True)
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]  # other work on the machine
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
