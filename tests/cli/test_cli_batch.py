"""`napari-stnls denoise IN... -o OUTDIR`: files and folders in, outputs named after them, the same
result as one file at a time, one line per file, bad files reported while the others are done,
every input and the output folder checked before any computation, Ctrl-C leaving only finished
files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_stnls.cli.denoise as cli_denoise
from napari_stnls.cli import main

FAST = ["--sigma", "20", "--method", "nlm", "--flow", "none", "--device", "cpu"]


def _noisy(seed, shape=(3, 16, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(100 + rng.normal(0, 20, shape)), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """in/a.tif, in/b.tif (uint8), in/c.npy (uint16), in/.hidden.tif, in/notes.txt; an empty out/."""
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _noisy(0))
    tifffile.imwrite(src / "b.tif", _noisy(1))
    np.save(src / "c.npy", _noisy(2).astype(np.uint16) * 16)
    tifffile.imwrite(src / ".hidden.tif", _noisy(3))
    (src / "notes.txt").write_text("not an image")
    (tmp_path / "out").mkdir()
    return tmp_path


def _names(path):
    return sorted(p.name for p in path.iterdir())


def test_a_folder_gives_what_each_file_gives_alone(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    assert main(["denoise", "in", "-o", "out", "--pattern", "*.tif", *FAST]) == 0
    err = capsys.readouterr().err.splitlines()
    assert _names(folder / "out") == ["a.tif", "b.tif"]  # hidden files and other patterns left out
    assert [line.split(" ->")[0] for line in err[:2]] == ["[1/2] in/a.tif", "[2/2] in/b.tif"]
    assert err[2] == "wrote 2 files into out" and len(err) == 3
    for name in ("a", "b"):  # the single-file form as the oracle
        assert main(["denoise", f"in/{name}.tif", f"{name}_alone.tif", *FAST, "--quiet"]) == 0
        assert np.array_equal(tifffile.imread(f"out/{name}.tif"), tifffile.imread(f"{name}_alone.tif"))


def test_files_and_folders_suffix_format_and_estimated_noise(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    args = ["denoise", "in/c.npy", "in", "-o", "out", "--pattern", "b*", "--suffix", "_dn", "--format", "npy",
            "--method", "nlm", "--flow", "none", "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert _names(folder / "out") == ["b_dn.npy", "c_dn.npy"]
    assert np.load(folder / "out" / "c_dn.npy").dtype == np.uint16
    assert "in/c.npy -> out/c_dn.npy, sigma" in err and "(estimated)" in err


def test_a_bad_file_is_reported_and_the_others_done(folder, capsys, monkeypatch):
    (folder / "in" / "bad.tif").write_bytes(b"not a TIFF")
    monkeypatch.chdir(folder)
    assert main(["denoise", "in", "-o", "out", "--pattern", "*.tif", *FAST]) == 1
    err = capsys.readouterr().err.splitlines()
    assert _names(folder / "out") == ["a.tif", "b.tif"]  # no temporary file left either
    assert any(line.startswith("[3/3] in/bad.tif: error: input: cannot read") for line in err), err
    assert err[-1] == "napari-stnls denoise: wrote 2 of 3 files into out; failed: in/bad.tif"


def test_a_failure_during_the_work_and_fail_fast(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    real = cli_denoise.METHODS["nlm"]

    def breaks_on_a(data, *a, **k):
        if data[0, 0, 0] == tifffile.imread("in/a.tif")[0, 0, 0]:
            raise ValueError("sigma: something only the denoiser sees")
        return real(data, *a, **k)

    monkeypatch.setattr(cli_denoise, "METHODS", {"nlm": breaks_on_a})
    assert main(["denoise", "in/a.tif", "in/b.tif", "-o", "out", *FAST]) == 1
    assert _names(folder / "out") == ["b.tif"]
    assert "[1/2] in/a.tif: error: sigma: something only" in capsys.readouterr().err
    (folder / "out" / "b.tif").unlink()
    assert main(["denoise", "in/a.tif", "in/b.tif", "-o", "out", *FAST, "--fail-fast"]) == 1
    assert _names(folder / "out") == [] and "(stopped: --fail-fast)" in capsys.readouterr().err


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if any noise estimate, flow or denoising starts."""
    def boom(*a, **k):
        raise AssertionError("computation started before the arguments were checked")
    for name in ("compute_flows", "process", "estimate_noise"):
        monkeypatch.setattr(cli_denoise, name, boom)
    monkeypatch.setattr(cli_denoise, "METHODS", {k: boom for k in ("nlb", "nlm", "skimage")})


@pytest.mark.parametrize("args,match", [
    (["in", "-o", "missing"], "-o: folder does not exist: missing"),
    (["in", "-o", "in/a.tif"], "-o: not a folder"),
    (["in/a.tif", "in/b.tif", "in/c.npy"], "expected IN OUT, or inputs and -o OUTDIR; got 3 paths"),
    (["in/a.tif"], "got 1 path and no -o"),
    (["in", "out.tif"], "IN is a folder"),
    (["in/a.tif", "out.tif", "--fail-fast"], "--fail-fast goes with -o OUTDIR"),
    (["in/a.tif", "-o", "out", "--pattern", "*.tif"], "--pattern goes with an input folder"),
    (["in", "-o", "out", "--pattern", "*.png"], "input: no files matching '*.png' in in"),
    (["in/missing.tif", "-o", "out"], "input: no such file or folder"),
    (["in/a.tif", "copy/a.tif", "-o", "out"], "would both be written to out/a.tif"),
    (["in", "-o", "in"], "is an input: refusing to overwrite it"),
    (["in/a.tif", "-o", "out", "--tile", "1,8,8"], "--tile denoises one file"),
    (["in", "-o", "out", "--pattern", "*.tif", "--fail-fast", "--region", "0:9,0:8,0:8"], "--fail-fast"),
    (["in/a.tif", "in/b.tif", "-o", "out", "--format", "mp4", "--axes", "ZYX", "--fail-fast"],
     "2 of 2 inputs cannot be denoised (above); nothing was done (--fail-fast)"),
])
def test_every_input_and_the_output_folder_checked_first(folder, capsys, monkeypatch, no_compute, args,
                                                         match):
    (folder / "copy").mkdir()
    tifffile.imwrite(folder / "copy" / "a.tif", _noisy(4))
    monkeypatch.chdir(folder)
    before = {d: _names(folder / d) for d in ("in", "out", "copy")}
    assert main(["denoise", *args, *FAST]) == 2
    err = capsys.readouterr().err
    assert match in err.splitlines()[-1], err
    assert {d: _names(folder / d) for d in ("in", "out", "copy")} == before


def test_ctrl_c_keeps_the_finished_files_only(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    real = cli_denoise.METHODS["nlm"]
    calls = []

    def interrupted_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cli_denoise, "METHODS", {"nlm": interrupted_on_the_second})
    assert main(["denoise", "in", "-o", "out", *FAST, "--quiet"]) == 130
    assert _names(folder / "out") == ["a.tif"]
    err = capsys.readouterr().err.strip()
    assert err == "napari-stnls denoise: interrupted; 1 of 3 files written, out/b.tif not"


def test_help_shows_the_batch_form(capsys):
    with pytest.raises(SystemExit):
        main(["denoise", "--help"])
    out = capsys.readouterr().out
    assert "IN [IN ...] -o OUTDIR" in out and 'raw/ -o restored/ --pattern "*.tif"' in out
    assert "a.tif b.tif -o restored/" in out
