"""The end-to-end demo and the command line, on a tiny configuration."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from napari_stnls.cli import main
from napari_stnls.cli.demo import format_report, run_demo

TINY = dict(size=(40, 48), n_frames=5, stride0=2)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "sub" / "fig.png"  # the folder is created
    res = run_demo(out, progress=False, **TINY)
    return out, res


def test_writes_a_png(demo):
    out, res = demo
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    assert res["out"] == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig.png"]  # no temporary files left


def test_numbers(demo):
    _, res = demo
    for key in (
        "psnr_noisy",
        "psnr_denoised",
        "psnr_denoised_noflow",
        "match_frac_flow",
        "match_frac_noflow",
        "seconds_search_flow",
        "seconds_search_noflow",
        "seconds_total",
    ):
        assert isinstance(res[key], float) and math.isfinite(res[key]), key
    assert res["n_queries"] == 20 * 24
    assert 0 <= res["match_frac_noflow"] < res["match_frac_flow"] <= 1
    assert res["n_adjacent_flow"] > 0 and res["n_adjacent_noflow"] > 0
    assert res["psnr_denoised"] > res["psnr_noisy"] + 2
    assert res["psnr_denoised_noflow"] > res["psnr_noisy"] + 2
    assert 15 < res["psnr_noisy"] < 30  # sigma = 20/255 gives about 22 dB
    text = format_report(res)
    assert "with flow" in text and "dB" in text


def test_overwrites_atomically(tmp_path, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"old")
    run_demo(out, progress=True, size=(24, 28), n_frames=3, stride0=3)
    assert out.read_bytes().startswith(PNG)
    printed = capsys.readouterr().out
    assert "[demo 1/5]" in printed and "PSNR" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_unwritable_out_fails_before_computing(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError, match="not a directory"):
        run_demo(blocker / "x.png", progress=False)  # full size: would be slow if it computed
    with pytest.raises(OSError, match="is a directory"):
        run_demo(tmp_path, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="device"):
        run_demo("unused.png", device="tpu", progress=False)
    with pytest.raises(ValueError, match="sigma"):
        run_demo("unused.png", sigma=0, progress=False)


def test_cli_demo(tmp_path, capsys):
    out = tmp_path / "tmp" / "x.png"
    rc = main(["demo", "--out", str(out), "--size", "24", "28", "--frames", "3", "--stride0", "3", "--quiet"])
    assert rc == 0
    assert out.read_bytes().startswith(PNG)
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "[demo" not in printed


def test_cli_unwritable(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    rc = main(["demo", "--out", str(blocker / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [[], ["nope"], ["demo", "--device", "gpu"], ["demo", "--size", "10"], ["demo", "--stride0", "0"]],
)
def test_cli_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_bad_size_is_a_clear_error(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "x.png"), "--size", "4", "4"])
    assert rc == 2
    assert "size" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run(
        [sys.executable, "-m", "napari_stnls", "demo", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout and "--device" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "napari_stnls", "demo", "--out", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "is a directory" in r.stderr and "Traceback" not in r.stderr
