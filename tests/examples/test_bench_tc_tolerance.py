"""benchmarks/bench_tc_tolerance.py: its rounding is TF32's and bfloat16's, and on a small
random video its exact arithmetics agree with the float64 ranking while one-pass bfloat16
does not always."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_loader import load_benchmark


def _module():
    return load_benchmark("bench_tc_tolerance")


def test_rounding_keeps_the_mantissa_bits_round_to_nearest_even():
    mod = _module()
    one = 1.0
    ulp10 = 2.0**-10
    x = torch.tensor([one + ulp10 / 2, one + 3 * ulp10 / 2, one + ulp10 / 2 + 2**-20, -(one + ulp10 / 4), 3.0,
                      2.0**-130])
    got = mod.round_mantissa(x, 10)
    # ties go to the even mantissa (1.0 and 1 + 2 ulp), above a tie up, below it down
    want = torch.tensor([one, one + 2 * ulp10, one + ulp10, -one, 3.0, 2.0**-130])
    assert torch.equal(got, want)
    b = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mod.round_mantissa(b, 7), b.to(torch.bfloat16).float())
    # TF32 keeps 10 bits: the rounded value differs by at most half a unit in the last place
    t = mod.round_mantissa(b, 10)
    assert float(((t - b).abs() / b.abs()).max()) <= 2.0**-11


def test_study_on_a_random_video():
    mod = _module()
    video = np.random.default_rng(0).random((3, 40, 44, 3), dtype=np.float32)
    hows = ["fp32_direct", "fp32_expand", "tf32x3_expand", "bf16_expand", "tf32_expand_rerank"]
    res = mod.study(video, 60, 1, hows)
    for how in ("fp32_direct", "fp32_expand", "tf32x3_expand", "tf32_expand_rerank"):
        assert res[how]["recall"] == 1.0 and res[how]["excess_255"] == 0.0, how
    assert res["fp32_direct"]["err_255_p99"] < 1e-6 * res["kth_255_median"]
    assert res["bf16_expand"]["err_255_median"] > res["fp32_expand"]["err_255_median"]
    assert res["kth_255_median"] > 0


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--clips", "carphone,nope"], "--clips"), (["--sigmas", "0,x"], "--sigmas"),
     (["--sigmas", "-3"], "--sigmas"), (["--queries", "0"], "--queries")],
)
def test_bad_arguments_are_named_before_any_work(args, match, capsys, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit):
        _module().main([*args, "--out", str(out)])
    assert match in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("how", ["tf32_expand", "bf16_expand", "tf32x3_expand"])
def test_the_error_bound_holds_for_every_candidate(how):
    """error_bound is a bound: on random patches of several scales and offsets, every
    candidate's matrix-unit distance is within it of the float64 one."""
    mod = _module()
    gen = torch.Generator().manual_seed(3)
    for scale, offset in ((1.0, 0.0), (1.0, -0.5), (300.0, 20.0), (1e-3, 0.0)):
        q = (torch.rand(40, 147, generator=gen) + offset) * scale
        keys = (torch.rand(40, 90, 147, generator=gen) + offset) * scale
        # near-duplicates too, where the expansion cancels most
        keys[:, :10] = q[:, None] + 1e-3 * scale * torch.randn(40, 10, 147, generator=gen)
        err = (mod.distances(q, keys, how) - mod.distances(q, keys, "exact")).abs()
        bound = mod.error_bound(q, keys, how)
        assert bool((err <= bound[:, None]).all()), (scale, offset, float((err / bound[:, None]).max()))
        # and not vacuous: within a few hundred times the largest error seen
        assert float(bound.max()) < 1e3 * float(err.max()) + 1e-30


def test_a_certified_query_gets_the_float32_lists():
    """Where certified_share proves a query, its M best by the matrix-unit distances ranked
    again in float32 are the float32 k best; random patches prove most queries at 4k."""
    mod = _module()
    gen = torch.Generator().manual_seed(4)
    q = torch.rand(200, 147, generator=gen) - 0.5
    keys = torch.rand(200, 300, 147, generator=gen) - 0.5
    direct = mod.distances(q, keys, "fp32_direct")
    for how in ("tf32_expand", "tf32x3_expand"):
        ok = mod.certified_share(q, keys, direct, how, 4 * mod.K).bool()
        assert float(ok.float().mean()) > 0.5, how
        coarse = mod.distances(q, keys, how)
        kept = torch.argsort(coarse, dim=-1, stable=True)[:, : 4 * mod.K]
        got = kept.gather(1, torch.argsort(direct.gather(1, kept), dim=-1, stable=True))[:, : mod.K]
        want = mod.topk(direct)
        assert bool((got == want).all(-1)[ok].all()), how


def test_dot_products_proven_exact_get_the_float32_lists():
    """prod_certified: every proven query's re-ranked list is the float32 one, on Gaussian
    features and on features built to have near-duplicates (where proofs fail, not lists)."""
    mod = _module()
    gen = torch.Generator().manual_seed(6)
    q, keys = mod.prod_features("randn", 150, 6)
    base = torch.randn(150, 4, 64, generator=gen)
    pick = torch.randint(0, 4, (405,), generator=gen)
    dup = base[:, pick] + 1e-4 * torch.randn(150, 405, 64, generator=gen)
    for feats in ((q, keys), (base[:, 0], dup)):
        for how in ("tf32", "tf32x3"):
            proven, same = mod.prod_certified(*feats, how, 2 * mod.K)
            assert bool((same[proven.bool()] == 1).all()), how
    proven, _ = mod.prod_certified(q, keys, "tf32", 2 * mod.K)
    assert float(proven.mean()) > 0.9
    proven, _ = mod.prod_certified(base[:, 0], dup, "tf32", 2 * mod.K)
    assert float(proven.mean()) < 0.5  # near-duplicates: the bound cannot separate them
