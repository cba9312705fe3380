"""Smoke tests of examples/train_nonlocal_denoiser.py (its --quick run) and of benchmarks/bench_nn.py's
unfold baseline (the same attention as NonLocalAttention away from the borders)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return _load("examples/train_nonlocal_denoiser.py", "train_nonlocal_denoiser")


def test_quick_run_writes_results_and_plot(example, tmp_path):
    report = example.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser.png", "results.json"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["variants"].keys() == example.VARIANTS.keys()
    for r in on_disk["variants"].values():
        assert set(r["eval"]) == set(on_disk["noisy_psnr"]) and "generated" in r["eval"]
        assert all(math.isfinite(e["psnr"]) for e in r["eval"].values())
        assert len(r["loss_curve"]) == example.QUICK.steps
    assert set(report["comparisons_db"]) == {"(a) non-local vs local 3-D conv",
                                             "(b) rarity-mined vs random crops", "(c) with vs without flow"}
    # (a) compares networks of about equal size
    v = on_disk["variants"]
    assert abs(v["local_conv3d"]["block_params"] / v["nonlocal_flow"]["block_params"] - 1) < 0.15


def test_same_seed_same_network_start(example):
    import torch

    cfg = example.QUICK
    torch.manual_seed(0)
    a = example.build("nonlocal_flow", cfg)
    torch.manual_seed(0)
    b = example.build("nonlocal_noflow", cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("argv, word", [(["--steps", "0"], "--steps"), (["--variants", "nope"], "--variants"),
                                        (["--device", "tpu"], "device")])
def test_bad_arguments_fail_before_work(example, tmp_path, capsys, argv, word):
    with pytest.raises(SystemExit):
        example.main(["--quick", "--out", str(tmp_path / "o"), *argv])
    assert word in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_nn_baseline_is_the_same_attention():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        bench = _load("benchmarks/bench_nn.py", "bench_nn")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for dist in ("prod", "l2"):
        p = dict(dim=4, ws=3, wt=1, k=4, dist=dist, batch_size=None)
        assert bench.check_agreement(p, bench.torch.device("cpu")) < 1e-5
