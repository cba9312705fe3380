"""`napari-stnls denoise`: round trips through .npy and TIFF, regions, flow, and bad input
that fails cleanly without touching the input or leaving a partial output."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_stnls.cli import main
from napari_stnls.video import flow as video_flow
from napari_stnls.video.flow import compute_flows
from napari_stnls.video.io import read_video, write_video
from napari_stnls.video.synthetic import sample_video

S20 = str(20 / 255)  # sigma 20/255 in the units of the float sample (values in [0, 1])


@pytest.fixture(scope="module")
def sample():
    return sample_video(n_frames=3, size=(40, 48), sigma=20 / 255, seed=2)


def test_npy_round_trip_denoises(tmp_path, sample):
    src = tmp_path / "noisy.npy"
    np.save(src, sample.noisy)
    before = src.read_bytes()
    args = ["--sigma", S20, "--flow", "none", "--method", "nlm", "--device", "cpu", "--quiet"]
    assert main(["denoise", str(src), str(tmp_path / "out.npy"), *args]) == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == sample.noisy.shape and out.dtype == np.float32
    before_db = psnr(sample.clean, sample.noisy, data_range=1)
    assert psnr(sample.clean, np.clip(out, 0, 1), data_range=1) > before_db + 5
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy.npy", "out.npy"]  # no temporary left


def test_uint8_tiff_with_region_and_flow(tmp_path, sample, capsys):
    src = tmp_path / "noisy.tif"
    u8 = np.clip(np.rint(sample.noisy * 255), 0, 255).astype(np.uint8)
    write_video(src, u8)
    assert main(["denoise", str(src), str(tmp_path / "out.tif"), "--sigma", "20", "--flow", "ilk",
                 "--region", "1:3,5:30,8:40", "--device", "cpu"]) == 0
    out, scale = read_video(tmp_path / "out.tif")
    assert scale == 255.0 and out.shape == u8.shape
    outside = np.ones(u8.shape[:3], bool)
    outside[1:3, 5:30, 8:40] = False
    assert np.array_equal(np.rint(out * 255).astype(np.uint8)[outside], u8[outside])
    assert "denoise [" in capsys.readouterr().err  # progress bar


def test_flows_follow_the_known_motion(sample):
    fflow, bflow = compute_flows(sample.clean, "tvl1")
    assert fflow.shape == (1, 3, 2, 40, 48)
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(fflow[0, 0].numpy()[:, inner[0], inner[1]] - sample.fflow[0][:, inner[0], inner[1]])
    assert np.median(err) < 0.25
    errb = np.abs(bflow[0, 1].numpy()[:, inner[0], inner[1]] - sample.bflow[1][:, inner[0], inner[1]])
    assert np.median(errb) < 0.25


@pytest.mark.parametrize(
    "args,match",
    [
        (["IN", "IN", "--sigma", "20"], "refusing to overwrite the input"),
        (["missing.npy", "out.npy", "--sigma", "20"], "no such file"),
        (["IN", "out.png", "--sigma", "20"], "unsupported file type"),
        (["IN", "out.npy", "--sigma", "-3"], "--sigma"),
        (["IN", "nofolder/out.npy", "--sigma", "20", "--flow", "none"], "folder does not exist"),
        (["BAD", "out.npy", "--sigma", "20"], "cannot read"),
        (["IN", "out.npy", "--sigma", "20", "--region", "0:9,0:8,0:8", "--flow", "none"], "region"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, sample, capsys, monkeypatch, args, match):
    np.save(tmp_path / "in.npy", sample.noisy[:, :16, :16])
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    monkeypatch.chdir(tmp_path)
    args = [{"IN": "in.npy", "BAD": "bad.npy"}.get(a, a) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["denoise", *args, "--device", "cpu", "--quiet"]) == 2
    assert match in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, input intact


def test_bad_region_syntax_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["denoise", "a.npy", "b.npy", "--sigma", "20", "--region", "0:1,2"])
    assert e.value.code == 2 and "t0:t1,y0:y1,x0:x1" in capsys.readouterr().err


def test_mp4_round_trip_through_the_command_line(tmp_path, sample):
    src = tmp_path / "noisy.mp4"
    write_video(src, np.clip(sample.noisy, 0, 1), lossless=True)
    back, scale = read_video(src)
    assert back.shape == sample.noisy.shape and scale == 255.0
    assert psnr(np.clip(sample.noisy, 0, 1), back, data_range=1.0) > 40  # near-lossless H.264
    args = ["--sigma", "20", "--flow", "none", "--method", "nlm", "--device", "cpu", "--quiet"]
    assert main(["denoise", str(src), str(tmp_path / "out.mp4"), *args]) == 0
    out, _ = read_video(tmp_path / "out.mp4")
    assert out.shape == sample.noisy.shape
    assert psnr(sample.clean, out, data_range=1.0) > psnr(sample.clean, back, data_range=1.0) + 5


@pytest.mark.parametrize("method,flow", [
    ("skimage", "tvl1"),  # scikit-image's baseline computes no flow
    pytest.param("nlm", "dis", marks=pytest.mark.skipif(
        "dis" not in video_flow.METHODS, reason="opencv-python-headless missing")),
])
def test_other_methods_and_flows(tmp_path, sample, method, flow):
    src = tmp_path / "noisy.npy"
    np.save(src, sample.noisy)
    args = ["--sigma", S20, "--flow", flow, "--method", method, "--device", "cpu", "--quiet"]
    assert main(["denoise", str(src), str(tmp_path / "out.npy"), *args]) == 0
    out = np.load(tmp_path / "out.npy")
    before_db = psnr(sample.clean, sample.noisy, data_range=1)
    assert psnr(sample.clean, np.clip(out, 0, 1), data_range=1) > before_db + 4


def test_dis_without_opencv_fails_cleanly(tmp_path, sample, capsys, monkeypatch):
    from napari_stnls.video import flow

    monkeypatch.setattr(flow, "HAS_OPENCV", False)
    np.save(tmp_path / "in.npy", sample.noisy)
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--sigma", S20,
                 "--flow", "dis", "--quiet"]) == 2
    assert "opencv-python-headless" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("when", ["compute", "write"])
def test_ctrl_c_exits_non_zero_and_writes_nothing(tmp_path, sample, capsys, monkeypatch, when):
    import napari_stnls.cli.denoise as cli_denoise
    import napari_stnls.video.io as io

    np.save(tmp_path / "in.npy", sample.noisy)
    before = sorted(p.name for p in tmp_path.iterdir())
    if when == "compute":  # Ctrl-C arrives while the denoiser runs (seen at its first progress report)
        def interrupt(self, done, total):
            raise KeyboardInterrupt
        monkeypatch.setattr(cli_denoise.ProgressBar, "__call__", interrupt)
    else:  # ... or half-way through writing the output
        def half_save(path, arr):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        monkeypatch.setattr(io.np, "save", half_save)
    assert main(["denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--sigma", S20,
                 "--flow", "none", "--method", "nlm", "--device", "cpu"]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
