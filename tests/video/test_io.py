"""napari_stnls.video.io, the one reader and writer: .npy, .zarr, TIFF and video files, eager
and lazy, crops for streaming, and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stnls.video.io import (
    AVIndex,
    CropReader,
    decode_to_npy,
    open_video,
    read_frames,
    read_video,
    write_video,
)


def _video(T=12, H=24, W=32):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return np.stack([np.roll(base, t, axis=1) for t in range(T)])


def test_open_tiff_eager_and_lazy(tmp_path):
    import tifffile

    v = _video()
    tifffile.imwrite(tmp_path / "v.tif", v[..., 0])  # one page per frame
    eager = open_video(tmp_path / "v.tif", lazy=False)
    lazy = open_video(tmp_path / "v.tif", lazy=True, chunk_frames=5)
    assert type(lazy).__module__.startswith("dask") and lazy.chunks[0] == (5, 5, 2)
    np.testing.assert_array_equal(eager, v[..., 0])
    np.testing.assert_array_equal(lazy[7:9].compute(), v[7:9, ..., 0])


def test_open_npy_and_zarr(tmp_path):
    import zarr

    v = _video(T=4)
    np.save(tmp_path / "v.npy", v[..., :1])  # a single channel is dropped
    data = open_video(tmp_path / "v.npy")
    assert isinstance(data.base, np.memmap) and data.shape == (4, 24, 32)
    np.testing.assert_array_equal(data, v[..., 0])
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=v.shape, chunks=(1, 24, 32, 3),
                        dtype=np.uint8)
    z[:] = v
    lazy = open_video(tmp_path / "v.zarr")
    assert not isinstance(lazy, np.ndarray) and lazy.shape == v.shape  # read when indexed
    np.testing.assert_array_equal(lazy[2], v[2])
    eager = open_video(tmp_path / "v.zarr", lazy=False)
    assert isinstance(eager, np.ndarray)
    np.testing.assert_array_equal(eager, v)
    with pytest.raises(ValueError, match="chunk_frames"):
        open_video(tmp_path / "v.npy", chunk_frames=0)


def test_open_video_file_lazy_equals_eager(tmp_path):
    pytest.importorskip("av")
    v = _video(T=20)
    path = write_video(tmp_path / "v.mp4", v, lossless=True)
    eager = open_video(path, lazy=False)
    assert eager.shape == (20, 24, 32, 3) and eager.dtype == np.uint8
    assert np.abs(eager.astype(int) - v).mean() < 4  # near-lossless H.264
    lazy = open_video(path, lazy=True, chunk_frames=6)
    assert lazy.shape == eager.shape
    np.testing.assert_array_equal(lazy[13:15].compute(), eager[13:15])
    np.testing.assert_array_equal(lazy.compute(), eager)
    # read_frames decodes only what it is asked, and clips the end to the video's length
    np.testing.assert_array_equal(read_frames(path, 13, 16), eager[13:16])
    np.testing.assert_array_equal(read_frames(path, 18, 99), eager[18:])
    with pytest.raises(ValueError, match="start"):
        read_frames(path, 25, 30)


def test_lazy_reads_only_the_chunk_asked(tmp_path, monkeypatch):
    pytest.importorskip("av")
    path = write_video(tmp_path / "v.mp4", _video(T=24))
    calls = []
    real = AVIndex.read
    monkeypatch.setattr(AVIndex, "read", lambda self, p, a, b: calls.append((a, b)) or real(self, p, a, b))
    lazy = open_video(path, lazy=True, chunk_frames=8)
    assert calls == []  # nothing decoded up front
    lazy[17].compute()
    assert calls == [(16, 24)]


def test_read_gif_and_errors(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    v = _video(T=4)
    iio.imwrite(tmp_path / "v.gif", v, loop=0)
    data = open_video(tmp_path / "v.gif")
    assert data.shape[0] == 4 and data.shape[1:3] == (24, 32)
    frames, scale = read_video(tmp_path / "v.gif")  # the same reader behind read_video
    assert frames.shape == data.shape and scale == 255.0
    with pytest.raises(ValueError, match="no such file"):
        open_video(tmp_path / "none.mp4")
    with pytest.raises(ValueError, match="unsupported file type"):
        open_video(tmp_path / "x.png")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read"):
        open_video(tmp_path / "bad.mp4")
    np.save(tmp_path / "flat.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"expected frames \(T, H, W\)"):
        open_video(tmp_path / "flat.npy")


def test_read_video_scales_and_names_the_input(tmp_path):
    import tifffile

    v16 = (_video(T=3)[..., 0].astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "v16.tif", v16)
    frames, scale = read_video(tmp_path / "v16.tif")
    assert scale == 65535.0 and frames.dtype == np.float32 and frames.shape == v16.shape
    np.testing.assert_allclose(frames, v16 / 65535.0, atol=1e-6)
    one = np.random.default_rng(1).random((3, 8, 10, 1)).astype(np.float64)
    np.save(tmp_path / "one.npy", one)
    frames, scale = read_video(tmp_path / "one.npy")
    assert scale == 1.0 and frames.shape == (3, 8, 10, 1)  # read_video keeps the channel axis
    np.testing.assert_allclose(frames, one, atol=1e-7)
    np.save(tmp_path / "b.npy", np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="input: unsupported pixel type"):
        read_video(tmp_path / "b.npy")
    with pytest.raises(ValueError, match="input: no such file"):
        read_video(tmp_path / "none.tif")
    with pytest.raises(ValueError, match="input: unsupported file type"):
        read_video(tmp_path / "x.png")


def test_write_video_round_trips_atomically_and_checks_first(tmp_path):
    v = _video(T=3)
    for name in ("v.npy", "v.tif"):
        out = write_video(tmp_path / name, v)
        back = np.load(out) if name.endswith(".npy") else open_video(out, lazy=False)
        np.testing.assert_array_equal(back, v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.tif"]  # no temporary left
    with pytest.raises(ValueError, match="output: unsupported file type"):
        write_video(tmp_path / "v.gif", v)
    with pytest.raises(ValueError, match="output: folder does not exist"):
        write_video(tmp_path / "no" / "v.npy", v)


def test_crop_reader_reads_only_the_crop(tmp_path):
    import dask.array as da
    import zarr

    v = _video(T=5)
    np.save(tmp_path / "v.npy", v)
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=v.shape, chunks=(1, 8, 8, 3),
                        dtype=np.uint8)
    z[:] = v
    idx = (slice(1, 3), slice(4, 20), slice(5, 9))
    for src in (tmp_path / "v.npy", str(tmp_path / "v.zarr"), v, da.from_array(v, chunks=(1, 8, 8, 3)),
                torch.from_numpy(v)):
        rd = CropReader(src, "video")
        assert rd.shape == v.shape and rd.dtype == np.uint8
        got = rd.read(idx)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, v[idx])
        assert rd.source().shape == v.shape
    with pytest.raises(ValueError, match="video: no such file or store"):
        CropReader(tmp_path / "none.npy", "video")
    (tmp_path / "v.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="video: unsupported file type '.tif'"):
        CropReader(tmp_path / "v.tif", "video")
    with pytest.raises(TypeError, match="flows: expected a NumPy/zarr/dask array"):
        CropReader([[1, 2]], "flows")


def test_decode_to_npy_equals_the_eager_read(tmp_path):
    pytest.importorskip("av")
    path = write_video(tmp_path / "v.mp4", _video(T=5))
    folder = tmp_path / "decoded"
    folder.mkdir()
    out = decode_to_npy(path, folder)
    np.testing.assert_array_equal(np.load(out), open_video(path, lazy=False))
    assert sorted(p.name for p in folder.iterdir()) == ["frames.npy"]
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="video: cannot read"):
        decode_to_npy(tmp_path / "bad.mp4", folder)
