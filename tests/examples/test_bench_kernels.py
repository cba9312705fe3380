"""benchmarks/bench_kernels.py runs on the CPU, writes its JSON, leaves the switches as they
were, its two sub-pixel kernels find the same neighbours and the glue kernels give the
glue's bits (a smoke run on a tiny video)."""

from __future__ import annotations

import json
import os

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
    assert res["boxk"] == [] and res["slidewarp"] == [] and res["agg4"] == []  # CUDA only
    # the search kernels that replace the PyTorch glue give its bits
    assert res["glue"]["torch_same_rows"] == 1.0 and res["glue"]["torch_max_abs_d"] == 0.0
    assert "NAPARI_STNLS_SUBPIX" not in os.environ and "NAPARI_STNLS_TORCH_GLUE" not in os.environ


def test_bench_kernels_names_a_bad_case_list(capsys):
    mod = load_benchmark("bench_kernels")
    bad = (("--slidewarp-cases", "7:21"), ("--boxk-cases", "7:x:10"), ("--subpix-cases", "9:0"))
    for option, value in bad:
        try:
            mod.main(["--device", "cpu", option, value])
        except SystemExit:
            pass
        else:
            raise AssertionError(f"{option} {value!r} was accepted")
        assert option in capsys.readouterr().err
