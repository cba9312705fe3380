"""The plugin's writer (no viewer): every format and type back through our reader, video files in
8 bits by the contrast limits at the source's frame rate, refusals before writing, atomic writes,
lazy layers read a few frames at a time."""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest

from napari_stnls.plugin import _writer
from napari_stnls.plugin._reader import read_layers
from napari_stnls.plugin._writer import write_image
from napari_stnls.video.io import open_video, video_rate, write_video

npe2 = pytest.importorskip("npe2")


@pytest.fixture(scope="module")
def pm():
    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm


def _frames(dtype, shape=(3, 12, 16), seed=0) -> np.ndarray:
    """Values over most of the type's range (floats outside [0, 1])."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    return (rng.normal(0, 300, shape)).astype(dtype)


def _smooth(T=3, H=16, W=24) -> np.ndarray:
    """Frames a video codec keeps to a few grey levels: a gradient moving by a pixel per frame, in [0, 1]."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([0.1 + 0.8 * (0.5 + 0.5 * np.sin((x + t) / 4.0) * np.cos(y / 5.0)) for t in range(T)])


def _left(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_round_trip_keeps_type_and_values(tmp_path, pm, suffix, dtype):
    data = _frames(dtype)
    path = tmp_path / f"out{suffix}"
    written = npe2.write(str(path), [(data, {"name": "x"}, "image")], plugin_name="napari-stnls")
    assert written == [str(path)]
    back = np.asarray(open_video(path))
    assert back.dtype == data.dtype and np.array_equal(back, data)
    assert _left(tmp_path) == [path.name]  # no temporary left


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
def test_other_layouts_and_rgb(tmp_path, suffix):
    tzyx = _frames(np.uint16, (2, 3, 8, 10))
    write_image(str(tmp_path / f"a{suffix}"), tzyx, {})
    assert np.array_equal(np.asarray(open_video(tmp_path / f"a{suffix}", axes="TZYX")), tzyx)
    rgb = _frames(np.uint8, (3, 8, 10, 3))
    write_image(str(tmp_path / f"b{suffix}"), rgb, {"rgb": True})
    assert np.array_equal(np.asarray(open_video(tmp_path / f"b{suffix}")), rgb)
    image = _frames(np.float32, (8, 10))
    write_image(str(tmp_path / f"c{suffix}"), image, {})
    assert np.array_equal(np.asarray(open_video(tmp_path / f"c{suffix}", axes="YX")), image)


def test_video_uint8_as_is_at_the_source_rate(tmp_path, pm):
    frames = np.rint(_smooth() * 255).astype(np.uint8)
    src = tmp_path / "src.mp4"
    write_video(src, frames, fps=Fraction(30000, 1001))
    layer = read_layers(str(src))[0]  # the reader records the source
    out = tmp_path / "out.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # uint8: no conversion, no warning
        npe2.write(str(out), [(frames, layer[1], "image")], plugin_name="napari-stnls")
    back = np.asarray(open_video(out))
    assert back.shape == (*frames.shape, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames[..., None]).mean() < 3  # H.264 yuv420p at crf 17
    write_video(tmp_path / "direct.mp4", frames, fps=Fraction(30000, 1001))  # the same frames given
    assert np.array_equal(back, np.asarray(open_video(tmp_path / "direct.mp4")))
    assert video_rate(out) == Fraction(30000, 1001)
    write_image(str(tmp_path / "plain.mp4"), frames, {})
    assert video_rate(tmp_path / "plain.mp4") == 25  # no source: the default rate


@pytest.mark.parametrize("dtype,lo,hi", [(np.uint16, 1000.0, 3000.0), (np.float32, -2.0, 6.0)])
def test_video_other_types_by_the_contrast_limits(tmp_path, dtype, lo, hi):
    shown = _smooth()  # what napari shows, in [0, 1] of the contrast range
    data = (lo + shown * (hi - lo)).astype(dtype)
    data[0, 0, :4] = np.asarray(hi * 2 if dtype == np.float32 else 65535, dtype)  # clipped to white
    out = tmp_path / "out.mp4"
    with pytest.warns(UserWarning, match=rf"{np.dtype(dtype)} data written as 8-bit video.*contrast limits"):
        write_image(str(out), data, {"contrast_limits": [lo, hi]})
    back = np.asarray(open_video(out))
    expected = np.clip(np.rint((data.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    write_video(tmp_path / "direct.mp4", expected)  # the 8-bit frames napari shows, written directly
    assert np.array_equal(back, np.asarray(open_video(tmp_path / "direct.mp4")))
    assert np.abs(back[..., 0].astype(int) - expected).mean() < 3 and back[0, 0, 1, 0] >= 240


def test_rgba_and_single_image_videos(tmp_path):
    rgba = np.zeros((2, 8, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    write_image(str(tmp_path / "a.mp4"), rgba, {"rgb": True})
    back = np.asarray(open_video(tmp_path / "a.mp4"))
    assert back.shape == (2, 8, 10, 3) and abs(int(back[..., 0].mean()) - 200) <= 4  # alpha dropped
    write_image(str(tmp_path / "b.mp4"), np.full((8, 10), 90, np.uint8), {})
    assert np.asarray(open_video(tmp_path / "b.mp4")).shape == (1, 8, 10, 3)


@pytest.mark.parametrize("path,shape,dtype,error,match", [
    ("out.mp4", (2, 3, 8, 8), "uint8", ValueError, r"video file holds frames.*\.tif"),
    ("out.png", (2, 8, 8), "uint8", ValueError, "path: unsupported file type '.png'"),
    ("nofolder/out.tif", (2, 8, 8), "uint8", ValueError, "path: folder does not exist"),
    ("out.tif", (2, 8, 8), "complex64", ValueError, "data: unsupported pixel type"),
    ("out.tif", None, None, TypeError, "data: expected an array"),
])
def test_refused_before_writing(tmp_path, path, shape, dtype, error, match):
    data = [1, 2, 3] if shape is None else np.zeros(shape, dtype)
    with pytest.raises(error, match=match):
        write_image(str(tmp_path / path), data, {})
    assert _left(tmp_path) == []


class _Breaks:
    """An array whose frames from ``bad`` on cannot be read (a file gone, a computation failing)."""

    def __init__(self, data, bad):
        self.data, self.bad = data, bad
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.stop or len(self.data)) > self.bad:
            raise OSError("read failed")
        return self.data[key]


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr", ".mp4"])
def test_a_failed_write_leaves_the_old_output(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(_writer, "CHUNK_BYTES", 1)  # one frame at a time
    old = _frames(np.uint8, (2, 8, 8), seed=1)
    path = tmp_path / f"out{suffix}"
    write_image(str(path), old, {})
    before = np.asarray(open_video(path))
    with pytest.raises(OSError, match="read failed"):
        write_image(str(path), _Breaks(_frames(np.uint8, (4, 8, 8)), bad=2), {})
    assert _left(tmp_path) == [path.name]
    assert np.array_equal(np.asarray(open_video(path)), before)


def test_lazy_layers_frame_by_frame_and_over_their_source(tmp_path, monkeypatch):
    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(_writer, "CHUNK_BYTES", 1)
    data = _frames(np.uint16, (5, 8, 10))
    write_image(str(tmp_path / "a.tif"), da.from_array(data, chunks=(2, 8, 10)), {})
    assert np.array_equal(np.asarray(open_video(tmp_path / "a.tif")), data)
    # a layer read lazily (memory-mapped) from a file, saved over that file
    np.save(tmp_path / "b.npy", data)
    layer = read_layers(str(tmp_path / "b.npy"))[0][0]
    write_image(str(tmp_path / "b.npy"), layer[::-1], {})
    assert np.array_equal(np.load(tmp_path / "b.npy"), data[::-1])


def test_background_frames_are_waited_for(tmp_path):
    from napari_stnls.plugin.model.lazy import BackgroundFrames

    data = _frames(np.float32, (4, 6, 8))
    frames = BackgroundFrames(lambda t: data[t] + 1, data.shape, np.float32)
    try:
        write_image(str(tmp_path / "a.npy"), frames, {})  # nothing computed yet: placeholders if not waited
    finally:
        frames.close()
        frames.join(10)
    assert np.array_equal(np.load(tmp_path / "a.npy"), data + 1)
