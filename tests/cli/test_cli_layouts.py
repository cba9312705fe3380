"""`napari-stnls denoise` on other types and layouts (uint16 microscopy, z-stacks), the video
writer's frame rate and pixel format, every argument checked before any computation, and
Ctrl-C at any moment (imports included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction

import numpy as np
import pytest
import tifffile

import napari_stnls.cli.denoise as cli_denoise
from napari_stnls.cli import main
from napari_stnls.denoise import nl_means


def _counts(T=3, H=20, W=24, seed=0):
    """A uint16 time-lapse: a smooth pattern of 200..3200 counts, noise of 150 counts."""
    y, x = np.mgrid[0:H, 0:W]
    clean = np.stack([200 + 3000 * (0.5 + 0.5 * np.sin((x + 2 * t) / 3.0) * np.cos(y / 4.0))
                      for t in range(T)])
    noisy = clean + np.random.default_rng(seed).normal(0, 150, clean.shape)
    return clean, np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def test_uint16_time_lapse_keeps_its_type_and_units(tmp_path):
    clean, noisy = _counts()
    tifffile.imwrite(tmp_path / "cells.tif", noisy)
    assert main(["denoise", str(tmp_path / "cells.tif"), str(tmp_path / "out.tif"), "--axes", "TYX",
                 "--sigma", "150", "--method", "nlm", "--flow", "none", "--device", "cpu", "--quiet"]) == 0
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.uint16 and out.shape == noisy.shape
    assert np.abs(out - clean).mean() < 0.7 * np.abs(noisy - clean).mean()
    # exactly the library's call in the data's units
    np.testing.assert_array_equal(out, nl_means(noisy, 150.0, axes="TYX", device="cpu"))


def test_estimated_noise_gaussian_and_poisson_gaussian(tmp_path, capsys):
    from napari_stnls.denoise import estimate_noise

    clean, noisy = _counts(T=4, H=48, W=48)
    tifffile.imwrite(tmp_path / "cells.tif", noisy)
    common = ["--method", "nlm", "--flow", "none", "--device", "cpu"]
    args = ["denoise", str(tmp_path / "cells.tif"), str(tmp_path / "g.tif"), "--axes", "TYX"]
    assert main([*args, *common]) == 0
    err = capsys.readouterr().err
    est = estimate_noise(noisy, "TYX")
    assert f"noise (gaussian): sigma {est:.4g} in the input's units" in err and abs(est / 150 - 1) < 0.1
    ref = nl_means(noisy, est, axes="TYX", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "g.tif"), ref)
    rng = np.random.default_rng(1)
    photons = (2.0 * rng.poisson(clean / 2.0) + rng.normal(0, 10, clean.shape)).clip(0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "photons.tif", photons)
    assert main(["denoise", str(tmp_path / "photons.tif"), str(tmp_path / "p.tif"), "--axes", "TYX",
                 "--noise", "poisson-gaussian", *common]) == 0
    assert "noise (poisson-gaussian): gain " in capsys.readouterr().err
    out = tifffile.imread(tmp_path / "p.tif")  # (4 small frames: the estimated gain is within 25%)
    err_in = np.abs(photons - clean).mean()
    assert out.dtype == np.uint16 and np.abs(out - clean).mean() < 0.85 * err_in
    assert main(["denoise", str(tmp_path / "photons.tif"), str(tmp_path / "p2.tif"), "--noise",
                 "poisson-gaussian", "--gain", "2", "--sigma", "10", "--quiet", *common]) == 0
    assert np.abs(tifffile.imread(tmp_path / "p2.tif") - clean).mean() < 0.7 * err_in
    assert main(["denoise", str(tmp_path / "photons.tif"), str(tmp_path / "p3.tif"), "--noise",
                 "poisson-gaussian", "--gain", "2", "--sigma", "0", "--quiet", *common]) == 0  # read noise 0


def test_z_stack_with_channels_and_tzyx(tmp_path):
    _, a = _counts(T=4)
    stack = np.stack([a, a // 2], axis=1)  # (Z, C, Y, X)
    np.save(tmp_path / "stack.npy", stack)
    assert main(["denoise", str(tmp_path / "stack.npy"), str(tmp_path / "out.npy"), "--axes", "ZCYX",
                 "--sigma", "150", "--method", "nlm", "--flow", "ilk", "--device", "cpu", "--quiet"]) == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == stack.shape and out.dtype == np.uint16
    tz = np.stack([a, a[::-1]], axis=1)  # (T, Z, Y, X): each slice's time series on its own
    np.save(tmp_path / "tz.npy", tz)
    assert main(["denoise", str(tmp_path / "tz.npy"), str(tmp_path / "tz_out.npy"), "--axes", "TZYX",
                 "--sigma", "150", "--method", "nlb", "--flow", "none", "--device", "cpu", "--quiet"]) == 0
    assert np.load(tmp_path / "tz_out.npy").shape == tz.shape


def _rate_and_format(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return Fraction(s.average_rate), s.codec_context.pix_fmt, s.frames


@pytest.mark.parametrize("lossless", [False, True])
def test_video_keeps_the_frame_rate_as_yuv420p(tmp_path, lossless):
    from napari_stnls.video.io import write_video

    rng = np.random.default_rng(0)
    v = (rng.random((4, 32, 40, 3)) * 160 + 40).astype(np.uint8)
    write_video(tmp_path / "in.mp4", v, fps=Fraction(30000, 1001))
    args = ["denoise", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "--sigma", "20",
            "--method", "nlm", "--flow", "none", "--device", "cpu", "--quiet"]
    assert main(args + (["--lossless"] if lossless else [])) == 0
    rate, fmt, _ = _rate_and_format(tmp_path / "out.mp4")
    assert rate == Fraction(30000, 1001)
    assert fmt == ("yuv444p" if lossless else "yuv420p")


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if any flow or denoising starts."""
    def boom(*a, **k):
        raise AssertionError("computation started before the arguments were checked")
    monkeypatch.setattr(cli_denoise, "compute_flows", boom)
    monkeypatch.setattr(cli_denoise, "METHODS", {k: boom for k in ("nlb", "nlm", "skimage")})
    monkeypatch.setattr(cli_denoise, "process", boom)


@pytest.mark.parametrize("args,match", [
    (["IN8", "nofolder/out.npy", "--sigma", "20"], "folder does not exist"),
    (["IN8", "out.npy", "--sigma", "20", "--region", "0:2,0:8,30:40"], "--region 0:2,0:8,30:40"),
    (["IN8", "out.npy", "--sigma", "20", "--region", "0:9,0:8,0:8"], "region"),
    (["IN8", "out.npy", "--sigma", "inf"], "--sigma: expected a finite number > 0"),
    (["IN8", "out.npy", "--sigma", "nan"], "--sigma: expected a finite number > 0"),
    (["IN8", "out.npy", "--sigma", "205"], "--sigma: 205 is more than half the range of uint8"),
    (["INF", "out.npy", "--sigma", "20"], "--sigma: 20 is more than half the data's range"),
    (["IN8", "out.npy", "--sigma", "20", "--axes", "TYXQ"], "axes:"),
    (["IN8", "out.npy", "--sigma", "20", "--axes", "ZYXC"], "axes: 'ZYXC' names 4 axes"),
    (["IN16", "out.mp4", "--sigma", "20", "--axes", "TZYX"], "video files hold frames"),
    (["IN8", "out.npy", "--sigma", "20", "--lossless"], "--lossless"),
    (["IN8", "out.zarr", "--sigma", "20", "--tile", "1,8,8", "--axes", "TZY"], "axes"),
    (["IN16", "out.zarr", "--sigma", "20", "--tile", "1,8,8", "--axes", "TZYX"], "--tile reads videos"),
    (["IN8", "nofolder/out.zarr", "--sigma", "20", "--tile", "1,8,8"], "folder does not exist"),
    (["IN8", "out.tif", "--sigma", "20", "--tile", "1,8,8"], "unsupported file type"),
    (["IN8", "out.zarr", "--sigma", "300", "--tile", "1,8,8"], "--sigma: 300 is more than half"),
    (["INF", "out.zarr", "--sigma", "20", "--tile", "1,8,8"], "the data's range"),
    (["IN8", "out.zarr", "--tile", "1,8,8"], "--tile needs --sigma"),
    (["IN8", "out.npy", "--sigma", "20", "--gain", "2"], "--gain goes with --noise poisson-gaussian"),
    (["IN8", "out.npy", "--noise", "poisson-gaussian", "--gain", "-1"], "--gain: expected a finite"),
    (["IN8", "out.npy", "--sigma", "0"], "--sigma: expected a finite number > 0"),
    (["IN8", "out.npy", "--noise", "poisson-gaussian", "--sigma", "-1"], "--sigma: expected a finite number"),
])
def test_every_argument_is_checked_before_any_computation(tmp_path, monkeypatch, capsys, no_compute, args,
                                                          match):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "in8.npy", (rng.random((3, 16, 20)) * 255).astype(np.uint8))
    np.save(tmp_path / "inf.npy", rng.random((3, 16, 20)).astype(np.float32))
    np.save(tmp_path / "in16.npy", (rng.random((3, 2, 16, 20)) * 4000).astype(np.uint16))
    monkeypatch.chdir(tmp_path)
    names = {"IN8": "in8.npy", "INF": "inf.npy", "IN16": "in16.npy"}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["denoise", *[names.get(a, a) for a in args], "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err  # one line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["denoise", "a.npy", "b.npy", "--sigma", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--sigma" in err


def test_help_has_examples_and_the_microscopy_case(capsys):
    with pytest.raises(SystemExit):
        main(["denoise", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--axes TYX --sigma 150" in out and "16-bit" in out
    assert "--axes TYX --noise poisson-gaussian" in out and "estimated" in out
    assert "to come" not in out


def test_ctrl_c_during_the_imports_is_one_line_and_130(monkeypatch, capsys, tmp_path):
    import builtins

    real = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and fromlist and "denoise" in fromlist:  # `from . import denoise` (imports torch)
            handler = signal.getsignal(signal.SIGINT)  # Ctrl-C arrives during the import
            assert callable(handler)
            handler(signal.SIGINT, None)
        return real(name, globals, locals, fromlist, level)

    monkeypatch.delitem(sys.modules, "napari_stnls.cli.denoise")
    before = signal.getsignal(signal.SIGINT)  # a pytest-xdist worker may start with SIGINT ignored
    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert main(["denoise", "in.npy", str(tmp_path / "out.npy"), "--sigma", "20"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "napari-stnls denoise: interrupted" and err.count("\n") == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_an_interrupt_caught_after_passing_through_eval_still_exits_130(tmp_path):
    """A Ctrl-C that lands while the work imports a module lazily (numpy and scipy run code
    through eval/exec then) is caught like any other: status 130, not death by SIGINT, which
    is what CPython reports for it, as for ``python -m napari_stnls``, unless told that it
    was handled."""
    code = textwrap.dedent("""
        import sys
        import napari_stnls.cli
        from napari_stnls.cli import denoise
        cli_main = sys.modules["napari_stnls.cli.main"]

        def run(args):
            try:
                eval("(_ for _ in ()).throw(KeyboardInterrupt)")  # as if in a lazy import
            except KeyboardInterrupt:
                return denoise._interrupted("nothing was written")

        denoise.run_denoise = run
        sys.exit(cli_main.main(["denoise", "in.npy", "out.npy", "--sigma", "20"]))
    """)
    (tmp_path / "driver.py").write_text(code)
    p = subprocess.run([sys.executable, "-m", "driver"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 130, p.stderr
    assert "interrupted; nothing was written" in p.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.3, 3.0])  # during `import torch`, then during the work
def test_sigint_at_any_moment_exits_130_and_leaves_nothing(tmp_path, delay):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "in.npy", (rng.random((6, 96, 128)) * 255).astype(np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "napari_stnls", "denoise", str(tmp_path / "in.npy"),
                          str(tmp_path / "out.npy"), "--sigma", "20", "--method", "nlb", "--device", "cpu",
                          "--quiet"], stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
