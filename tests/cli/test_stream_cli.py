"""`napari-stnls denoise IN OUT --tile T,H,W`: streamed, resumable, equal to the in-memory run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_stnls.cli import main
from napari_stnls.denoise import nl_means
from napari_stnls.stream import methods as stream_methods


def _video8(T=3, H=20, W=22):
    rng = np.random.default_rng(0)
    return (rng.random((T, H, W)) * 200 + 20).astype(np.uint8)


def test_tiled_npy_to_zarr_equals_in_memory(tmp_path, capsys):
    import zarr

    v = _video8()
    np.save(tmp_path / "in.npy", v)
    rc = main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), "--sigma", "20", "--method",
               "nlm", "--flow", "none", "--tile", "2,10,11", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "tiles [" in err and "8/8" in err
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    ref = nl_means(v.astype(np.float32) / 255, 20 / 255, device="cpu")
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - np.rint(ref * 255)).max() <= 1
    rec = json.loads((tmp_path / "out.zarr.tiles.json").read_text())
    assert rec["done"] == list(range(8))


def test_tiled_with_flow_files_and_errors(tmp_path, capsys):
    v = _video8(T=3, H=16, W=16)
    np.save(tmp_path / "in.npy", v)
    ff = np.full((3, 2, 16, 16), 1.0, np.float32)
    np.save(tmp_path / "ff.npy", ff)
    np.save(tmp_path / "bf.npy", -ff)
    args = ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.npy"), "--sigma", "20", "--method", "nlm",
            "--tile", "3,8,8", "--flow-files", str(tmp_path / "ff.npy"), str(tmp_path / "bf.npy"), "--quiet"]
    assert main(args) == 0
    assert np.load(tmp_path / "o.npy").shape == v.shape
    assert main(args[:-1] + ["--max-flow", "0.5", "--overwrite", "--quiet"]) == 2
    assert "max_flow" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "no" / "o.zarr"), "--sigma", "20",
                 "--tile", "1,8,8", "--flow", "none"]) == 2
    assert "folder does not exist" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.npy"), "--sigma", "20",
                 "--tile", "1,8,8", "--flow", "none", "--region", "0:1,0:4,0:4"]) == 2
    assert "--region and --tile" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "x.npy"), "--sigma", "20",
                 "--max-flow", "3"]) == 2
    assert "go with --tile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["denoise", "a.npy", "b.zarr", "--sigma", "20", "--tile", "1,0,8"])


def test_interrupted_cli_run_resumes(tmp_path, monkeypatch, capsys):
    v = _video8(T=2, H=16, W=16)
    np.save(tmp_path / "in.npy", v)
    args = ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"), "--sigma", "20", "--method", "nlm",
            "--flow", "none", "--tile", "1,8,8", "--quiet"]
    real, calls = stream_methods.compute_tile, []

    def interrupt_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", interrupt_third)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "kept in" in err and "o.zarr.partial: run the same command to resume" in err
    assert err.count("\n") == 1
    assert json.loads((tmp_path / "o.zarr.tiles.json").read_text())["done"] == [0, 1]
    # never under the final name
    assert not (tmp_path / "o.zarr").exists() and (tmp_path / "o.zarr.partial").is_dir()
    assert main(args) == 0
    assert len(calls) == 3 + 6  # the two finished tiles were not recomputed
    assert (tmp_path / "o.zarr").is_dir() and not (tmp_path / "o.zarr.partial").exists()


def test_interrupted_npy_output_is_recognisably_partial(tmp_path, monkeypatch):
    v = _video8(T=2, H=16, W=16)
    np.save(tmp_path / "in.npy", v)
    args = ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.npy"), "--sigma", "20", "--method", "nlm",
            "--flow", "none", "--tile", "1,8,8", "--quiet"]
    real = stream_methods.compute_tile
    calls = []

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stream_methods, "compute_tile", interrupt_second)
    assert main(args) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "o.npy.partial", "o.npy.tiles.json"]
    # another call's leftover is not resumed silently
    assert main(args[:4] + ["30"] + args[5:]) == 2
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "o.npy", "o.npy.tiles.json"]
    ref = nl_means(v.astype(np.float32) / 255, 20 / 255, device="cpu")
    assert np.abs(np.load(tmp_path / "o.npy").astype(int) - np.rint(ref * 255)).max() <= 1


def test_tiled_video_file_to_npy(tmp_path):
    from napari_stnls.video.io import read_video, write_video

    rng = np.random.default_rng(1)
    write_video(tmp_path / "in.mp4", (rng.random((2, 16, 16, 3)) * 200).astype(np.uint8))
    assert main(["denoise", str(tmp_path / "in.mp4"), str(tmp_path / "o.npy"), "--sigma", "20", "--method",
                 "nlm", "--flow", "none", "--tile", "1,8,8", "--device", "cpu", "--quiet"]) == 0
    decoded, _ = read_video(tmp_path / "in.mp4")
    got = np.load(tmp_path / "o.npy")
    ref = nl_means(decoded, 20 / 255, device="cpu")
    assert got.dtype == np.uint8 and got.shape == decoded.shape
    assert np.abs(got.astype(int) - np.rint(ref * 255)).max() <= 1
