"""benchmarks/sim_list_work.py: its orders visit every offset once, its distances are the
patch distances, its lists are the k best by (distance, id) whatever the order, and it
names bad arguments."""

from __future__ import annotations

import pytest
import torch
from bench_loader import load_benchmark


def _module():
    return load_benchmark("sim_list_work")


@pytest.mark.parametrize(("ws", "nt"), [(21, 5), (9, 3), (11, 1)])
def test_both_orders_visit_every_offset_once(ws, nt):
    mod = _module()
    for centre_first in (False, True):
        chunks = mod.orders(ws, nt, centre_first)
        seen = [o for c in chunks for o in c]
        assert sorted(seen) == [(f, i, j) for f in range(nt) for i in range(ws) for j in range(ws)]
        assert all(1 <= len(c) <= mod.CHUNK and len({(f, j) for f, _, j in c}) == 1 for c in chunks)
    first = mod.orders(ws, nt, True)[0]
    assert first[0][0] == nt // 2 and first[0][2] == ws // 2  # own frame, middle column
    assert any(i == ws // 2 for _, i, _ in first)  # the middle chunk of rows


def test_tile_distances_are_patch_distances():
    mod = _module()
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(3, 3, 40, 60, generator=gen)
    ws, nt, y0, x0 = 5, 3, 4, 3
    D = mod.tile_distances(video, 1, y0, x0, ws, nt)
    assert D.shape == (nt, ws, ws, mod.TY, mod.TX)
    P, half = mod.PS, ws // 2
    for f, ii, jj, i, c in ((0, 0, 0, 0, 0), (2, 4, 1, 5, 25), (1, 2, 2, 3, 7)):
        q = video[1, :, y0 + i:y0 + i + P, x0 + c:x0 + c + P].double()
        ky, kx = y0 + i + ii - half, x0 + c + jj - half
        k = video[f, :, ky:ky + P, kx:kx + P].double()
        assert float(D[f, ii, jj, i, c]) == pytest.approx(float(((q - k) ** 2).sum()), rel=1e-12)


def test_the_lists_are_the_k_best_in_every_order():
    mod = _module()
    gen = torch.Generator().manual_seed(1)
    ws, nt, k = 7, 3, 4
    # few distinct values: many ties, which the (distance, id) order must settle
    D = torch.randint(0, 6, (nt, ws, ws, mod.TY, mod.TX), generator=gen).double()
    n = mod.TY * mod.TX
    flat = D.permute(3, 4, 0, 1, 2).reshape(n, -1)  # id = (f * ws + ii) * ws + jj
    want = torch.argsort(flat, dim=1, stable=True)[:, :k]
    for centre_first in (False, True):
        r = mod.play(D, k, mod.orders(ws, nt, centre_first))
        best_d, best_i = r["lists"]
        assert torch.equal(best_i, want) and torch.equal(best_d, flat.gather(1, want))
        assert k <= r["inserted"] <= r["waiting"] and r["passes"] > 0


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--videos", "rand,nope"], "--videos"), (["--sigmas", "x"], "--sigmas"),
     (["--sigmas", "300"], "--sigmas"), (["--ws", "20"], "--ws"), (["--size", "20,20"], "--size")],
)
def test_bad_arguments_are_named_before_any_work(args, match, capsys, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit):
        _module().main([*args, "--out", str(out)])
    assert match in capsys.readouterr().err and not out.exists()


def test_a_small_run(tmp_path):
    res = _module().main(["--videos", "rand", "--size", "40,48", "--tiles", "1", "--ws", "5", "--wt", "1",
                          "--out", str(tmp_path / "r.json")])
    (row,) = res["rows"]
    assert row["plain"]["inserted"] >= res["k"] and 0 < row["passes_ratio"]


def test_rounds_by_rank_never_exceed_the_busiest_lanes_passes():
    """Inserting by rank takes no more rounds than the busiest lane's passes, and at least
    the most any query waits in a chunk."""
    mod = _module()
    gen = torch.Generator().manual_seed(2)
    D = torch.rand(3, 9, 9, mod.TY, mod.TX, generator=gen).double()
    r = mod.play(D, 5, mod.orders(9, 3, True))
    assert 0 < r["rounds"] <= r["passes"]
