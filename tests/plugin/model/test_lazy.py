"""Frames computed in a background thread: reads never wait, the frame read first, then prefetch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_stnls.plugin.model.lazy import BackgroundFrames

SHAPE = (6, 4, 5)


def until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


class Gate:
    """compute(t) that records the order and the thread, and waits until released."""

    def __init__(self):
        self.order, self.threads = [], set()
        self.go = threading.Event()

    def __call__(self, t):
        self.order.append(t)
        self.threads.add(threading.current_thread().name)
        assert self.go.wait(10)
        return np.full(SHAPE[1:], t + 1, np.float32)


def test_reads_never_wait_and_the_frame_read_comes_first():
    gate = Gate()
    ready = []
    frames = BackgroundFrames(gate, SHAPE, np.float32, prefetch=2, on_ready=ready.append)
    try:
        assert (frames.shape, frames.ndim, frames.size, frames.dtype) == (SHAPE, 3, 120, np.float32)
        out = frames[3]  # nothing is computed: the placeholder at once, frame 3 queued with 4 and 5
        assert out.shape == (4, 5) and not out.any() and not frames.is_ready(3)
        assert frames[3, 1:3].shape == (2, 5)
        until(lambda: frames.computing == 3)
        assert frames.pending() == [4, 5]
        frames[1]  # the user moved on while 3 is computed: 1 next, then 2; 4 and 5 dropped
        assert frames.pending() == [1, 2]
        gate.go.set()
        until(lambda: all(frames.is_ready(t) for t in (1, 2, 3)))
        assert gate.order == [3, 1, 2]
        assert threading.current_thread().name not in gate.threads
        assert ready == [3, 1, 2]
        np.testing.assert_array_equal(frames[2], np.full((4, 5), 3, np.float32))
        np.testing.assert_array_equal(np.asarray(frames[1:3])[:, 0, 0], [2, 3])
        np.testing.assert_array_equal(frames[..., 0][1:4, 0], [2, 3, 4])
    finally:
        frames.close()


def test_order_while_busy_errors_and_close():
    gate = Gate()
    errors = []

    def compute(t):
        if t == 2:
            raise RuntimeError("bad frame")
        return gate(t)

    frames = BackgroundFrames(compute, SHAPE, np.float32, prefetch=1,
                              on_error=lambda t, e: errors.append((t, e)))
    frames[0]  # 0 starts and blocks
    until(lambda: frames.computing == 0)
    assert frames.pending() == [1]
    frames[4]  # asked while 0 is computed: 4 then 5 are next
    assert frames.pending() == [4, 5]
    frames[2]
    gate.go.set()
    assert not frames.wait(2, timeout=10)
    assert [t for t, _ in errors] == [2] and "bad frame" in str(frames.failed(2))
    assert not frames[2].any()  # a failed frame stays the placeholder and is not tried again
    assert frames.wait(3, timeout=10)
    assert gate.order.count(3) == 1
    frames.close()
    assert frames.join(10) and frames.closed and not frames.is_ready(3)
    assert not frames[3].any() and frames.pending() == []  # after close: reads still answer, nothing runs


def test_memory_bound_keeps_the_recent_frames():
    frames = BackgroundFrames(lambda t: np.full(SHAPE[1:], t, np.float64), SHAPE, np.float64, prefetch=1,
                              max_bytes=3 * 4 * 5 * 8)
    try:
        for t in range(6):
            assert frames.wait(t, timeout=10)
        kept = [t for t in range(6) if frames.is_ready(t)]
        assert len(kept) == 3 and 5 in kept and 0 not in kept
    finally:
        frames.close()


def test_bad_arguments_and_wrong_frame_shape():
    with pytest.raises(ValueError, match="shape"):
        BackgroundFrames(lambda t: 0, (0, 3), np.float32)
    with pytest.raises(ValueError, match="prefetch"):
        BackgroundFrames(lambda t: 0, (2, 3), np.float32, prefetch=-1)
    frames = BackgroundFrames(lambda t: np.zeros(4), (2, 3), np.float32)
    try:
        assert not frames.wait(0, timeout=10)
        assert "expected (3,)" in str(frames.failed(0))
        with pytest.raises(IndexError):
            frames[2]
    finally:
        frames.close()


def test_paused_until_resumed_then_the_last_read_first():
    gate = Gate()
    gate.go.set()
    frames = BackgroundFrames(gate, SHAPE, np.float32, prefetch=1, paused=True)
    try:
        frames[0]  # e.g. a viewer reading frame 0 while it sets the layer up
        frames[4]
        time.sleep(0.05)
        assert gate.order == [] and frames.pending() == []
        frames.resume()
        until(lambda: frames.is_ready(4) and frames.is_ready(5))
        assert gate.order == [4, 5]
    finally:
        frames.close()


def test_exit_while_a_frame_is_computed_is_clean(tmp_path):
    """The interpreter stopping a daemon thread inside a torch call aborts the process (exit 134):
    at exit the frame in progress is waited for."""
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(
        "import time, numpy as np, torch\n"
        "from napari_stnls.plugin.model.lazy import BackgroundFrames\n"
        "def compute(t):\n"
        "    x, end = torch.randn(300, 300), time.monotonic() + 1.0\n"
        "    while time.monotonic() < end:  # inside torch calls for 1 s, on any machine\n"
        "        x = torch.tanh(x @ x / 300)\n"
        "    return np.zeros((2, 2), np.float32)\n"
        "f = BackgroundFrames(compute, (3, 2, 2), np.float32)\n"
        "f[0]\n"
        "time.sleep(0.2)\n"
        "print('computing', f.computing, flush=True)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "computing 0" in r.stdout, r.stdout + r.stderr
    assert "terminate called" not in r.stderr
