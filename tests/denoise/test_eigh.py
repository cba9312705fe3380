"""The batched Jacobi eigen-solver (napari_stnls.denoise._eigh) against float64 LAPACK.

Each case is solved in float32 (and float64) by the compiled Jacobi solver on each device
(its CPU twin here, the CUDA kernel where a GPU is present) and compared with
``torch.linalg.eigh`` in float64 on the CPU: eigenvalues, the reconstruction U diag(l) U^T,
orthonormality, and the thresholded Wiener filter nl_bayes applies to a group of patches.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

from napari_stnls.denoise._eigh import _has_op, _shared_bytes, batched_eigh, jacobi_available, top_eigh

SIZES = [1, 2, 7, 50, 147, 150]


@pytest.fixture(autouse=True)
def one_thread():
    """LAPACK's threads slow small eigen-problems down by orders of magnitude on a busy
    machine (a float64 eigh of two 150 x 150 matrices: 2.6 s on 2 threads, 7 ms on one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def dev(request):
    """A device whose compiled Jacobi solver is built (a missing one fails: `make test` builds it)."""
    d = torch.device(request.param)
    if not _has_op(d.type):
        pytest.fail(f"the compiled eigh_jacobi is not built for {d.type}")
    return d


def _n(D: int, dev: torch.device) -> int:
    """Matrices per case: the CPU twin is slow on large D (one core, O(D^3) per sweep)."""
    if dev.type == "cuda":
        return 64
    return 2 if D > 100 else 6


def _covariances(N, D, K, gen):
    """Sample covariances of K correlated patches (rank min(K - 1, D)), float64."""
    mix = torch.randn(N, D, D, generator=gen, dtype=torch.float64) / D**0.5
    scales = torch.logspace(0, -2, D, dtype=torch.float64)  # a decaying spectrum, like patches'
    y = torch.randn(N, K, D, generator=gen, dtype=torch.float64) * scales @ mix
    yc = y - y.mean(1, keepdim=True)
    return yc.mT @ yc / (K - 1), y


def _with_spectrum(values, gen):
    """Q diag(values) Q^T with a random orthogonal Q (values (N, D), float64)."""
    N, D = values.shape
    q, _ = torch.linalg.qr(torch.randn(N, D, D, generator=gen, dtype=torch.float64))
    return q @ torch.diag_embed(values) @ q.mT


def _check(cov64, vals, vecs, *, rtol):
    """Eigenvalues close to float64's, reconstruction close to the input, vectors orthonormal,
    values ascending (all relative to each matrix's Frobenius norm)."""
    N, D, _ = cov64.shape
    assert vals.shape == (N, D) and vecs.shape == (N, D, D)
    l, u = vals.double().cpu(), vecs.double().cpu()
    assert torch.isfinite(l).all() and torch.isfinite(u).all()
    ref = torch.linalg.eigh(cov64)[0]
    nrm = torch.linalg.matrix_norm(cov64).clamp_min(1e-300)
    assert ((l - ref).abs().amax(-1) <= rtol * nrm + 1e-300).all(), ((l - ref).abs().amax(-1) / nrm).max()
    rec = torch.linalg.matrix_norm(u @ torch.diag_embed(l) @ u.mT - cov64)
    assert (rec <= 10 * rtol * nrm + 1e-300).all(), (rec / nrm).max()
    eye = torch.eye(D, dtype=torch.float64)
    assert (u.mT @ u - eye).abs().max() <= 10 * rtol, (u.mT @ u - eye).abs().max()
    assert (l.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize("D", SIZES)
def test_random_covariances(dev, D):
    """Full-rank sample covariances (K > D patches) with a decaying spectrum."""
    gen = torch.Generator().manual_seed(D)
    cov, _ = _covariances(_n(D, dev), D, 2 * D + 2, gen)
    vals, vecs = batched_eigh(cov.float().to(dev), method="jacobi")
    assert vals.dtype == vecs.dtype == torch.float32 and vals.device.type == dev.type
    _check(cov, vals, vecs, rtol=2e-5)


@pytest.mark.parametrize("D", SIZES)
def test_rank_deficient(dev, D):
    """Covariances of fewer patches than dimensions (K < D: many zero eigenvalues)."""
    gen = torch.Generator().manual_seed(100 + D)
    cov, _ = _covariances(_n(D, dev), D, max(2, D // 3), gen)
    vals, vecs = batched_eigh(cov.float().to(dev), method="jacobi")
    _check(cov, vals, vecs, rtol=2e-5)


@pytest.mark.parametrize("D", SIZES)
def test_repeated_eigenvalues(dev, D):
    """Spectra of a few values, each repeated many times (eigenvectors are not unique there)."""
    gen = torch.Generator().manual_seed(200 + D)
    N = _n(D, dev)
    levels = torch.tensor([0.0, 1.0, 1.0, 3.0, 7.5], dtype=torch.float64)
    values = levels[torch.randint(0, 5, (N, D), generator=gen)]
    cov = _with_spectrum(values, gen)
    vals, vecs = batched_eigh(cov.float().to(dev), method="jacobi")
    _check(cov, vals, vecs, rtol=2e-5)


@pytest.mark.parametrize("D", SIZES)
def test_zero_and_diagonal(dev, D):
    """Zero matrices give zero eigenvalues and orthonormal vectors; a diagonal matrix (no
    rotation at all) is sorted, its vectors the permuted identity."""
    zeros = torch.zeros(3, D, D, device=dev)
    vals, vecs = batched_eigh(zeros, method="jacobi")
    assert (vals == 0).all()
    assert torch.allclose(vecs.mT @ vecs, torch.eye(D, device=dev))
    d = torch.randperm(D, generator=torch.Generator().manual_seed(D)).float() - D / 2
    vals, vecs = batched_eigh(torch.diag(d)[None].to(dev), method="jacobi")
    assert torch.equal(vals[0].cpu(), d.sort().values)
    assert torch.equal(vecs[0].cpu(), torch.eye(D)[:, d.argsort()])


@pytest.mark.parametrize("D", [7, 50])
def test_float64(dev, D):
    """float64 matrices are solved in float64, to float64 accuracy."""
    gen = torch.Generator().manual_seed(300 + D)
    cov, _ = _covariances(_n(D, dev), D, D // 2 + 2, gen)
    vals, vecs = batched_eigh(cov.to(dev), method="jacobi")
    assert vals.dtype == torch.float64
    _check(cov, vals, vecs, rtol=1e-12)


@pytest.mark.parametrize("D", [50, 150])
@pytest.mark.parametrize("step", [1, 2])
def test_thresholded_wiener_filter(dev, D, step):
    """nl_bayes's estimate m + U diag(g) U^T (y - m), g = l / (l + var) where l > thresh * var
    (step 1: l the eigenvalues of the noisy covariance minus var), else 0, matches float64's.
    An eigenvalue within a small band of the threshold may fall on either side: there the
    float64 estimate takes the solver's decision."""
    gen = torch.Generator().manual_seed(400 + D + step)
    N, K = (32 if dev.type == "cuda" else 3), (60 if D == 50 else 160)
    _, y = _covariances(N, D, K, gen)
    var, thresh = 1e-3, (1.0 if step == 1 else 1.2)
    y = y + var**0.5 * torch.randn(y.shape, generator=gen, dtype=torch.float64)  # noisy patches
    yc = y - y.mean(1, keepdim=True)
    cov = yc.mT @ yc / (K - 1)

    def estimate(vals, vecs, keep=None):
        ev = vals - var if step == 1 else vals
        if keep is None:
            keep = ev > thresh * var
        gain = torch.where(keep, ev / (ev + var), torch.zeros_like(ev))
        m = y.mean(1, keepdim=True)
        return m + ((y - m) @ vecs * gain.unsqueeze(1)) @ vecs.mT, keep

    vals, vecs = batched_eigh(cov.float().to(dev), method="jacobi")
    got, keep = estimate(vals.double().cpu(), vecs.double().cpu())
    l64, u64 = torch.linalg.eigh(cov)
    ev64 = l64 - var if step == 1 else l64
    band = (ev64 - thresh * var).abs() <= 1e-5 * torch.linalg.matrix_norm(cov)[:, None]
    keep64 = ev64 > thresh * var
    assert not ((keep != keep64) & ~band).any(), "an eigenvalue outside the band crossed the threshold"
    ref, _ = estimate(l64, u64, torch.where(band, keep, keep64))
    assert keep64.any() and (~keep64).any(), "every gain on one side: the test would say little"
    err = torch.linalg.matrix_norm(got - ref) / torch.linalg.matrix_norm(ref)
    assert err.max() < 1e-4, err.max()


def test_empty_and_non_contiguous(dev):
    """No matrices, or matrices of size 0, give empty results; a non-contiguous input is read
    as its values, and no input is modified."""
    v, u = batched_eigh(torch.zeros(0, 5, 5, device=dev), method="jacobi")
    assert v.shape == (0, 5) and u.shape == (0, 5, 5)
    v, u = batched_eigh(torch.zeros(4, 0, 0, device=dev), method="jacobi")
    assert v.shape == (4, 0) and u.shape == (4, 0, 0)
    gen = torch.Generator().manual_seed(5)
    cov, _ = _covariances(4, 7, 20, gen)
    x = cov.float().to(dev).mT  # symmetric, so the same matrices, as a transposed view
    keep = x.clone()
    vals, vecs = batched_eigh(x, method="jacobi")
    assert torch.equal(x, keep)
    _check(cov, vals, vecs, rtol=2e-5)


def test_lower_triangle_only(dev):
    """Only the lower triangle is read, as by torch.linalg.eigh."""
    gen = torch.Generator().manual_seed(6)
    cov, _ = _covariances(3, 9, 30, gen)
    junk = cov.tril() + torch.randn(cov.shape, generator=gen, dtype=torch.float64).triu(1)
    vals, vecs = batched_eigh(junk.float().to(dev), method="jacobi")
    _check(cov, vals, vecs, rtol=2e-5)


def test_bad_input():
    """Each bad argument raises a clear error naming it, before any work."""
    ok = torch.eye(3)[None]
    with pytest.raises(TypeError, match="cov: expected a torch.Tensor"):
        batched_eigh(ok.numpy())
    with pytest.raises(TypeError, match="cov: expected float32 or float64"):
        batched_eigh(ok.int())
    with pytest.raises(TypeError, match="cov: expected float32 or float64"):
        batched_eigh(ok.half())
    with pytest.raises(ValueError, match=r"cov: expected \(N, D, D\) square"):
        batched_eigh(torch.eye(3))
    with pytest.raises(ValueError, match=r"cov: expected \(N, D, D\) square"):
        batched_eigh(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="method"):
        batched_eigh(ok, method="qr")
    with pytest.raises(ValueError, match="max_sweeps"):
        batched_eigh(ok, max_sweeps=-1)
    with pytest.raises(ValueError, match="tol"):
        batched_eigh(ok, tol=float("nan"))


@pytest.mark.skipif(not _has_op("cpu"), reason="needs the compiled module")
def test_operator_checks_and_opcheck():
    """The operator itself names the bad argument, and its fake kernel matches (opcheck)."""
    op = torch.ops.napari_stnls.eigh_jacobi
    with pytest.raises(RuntimeError, match="cov: expected square"):
        op(torch.zeros(2, 3, 4), 10, 1e-6, 0)
    with pytest.raises(RuntimeError, match="threads"):
        op(torch.zeros(2, 3, 3), 10, 1e-6, 33)
    cov, _ = _covariances(3, 6, 10, torch.Generator().manual_seed(7))
    torch.library.opcheck(op.default, (cov.float(), 15, 1e-6, 0))


def test_method_choice():
    """LAPACK on the CPU by default (the twin only on request); the kernel's shared memory
    need: D = 150 float32 fits an H100's 227 KB, float64 does not."""
    cov = torch.eye(4)[None] * 2
    v, _ = batched_eigh(cov)
    assert torch.equal(v, torch.full((1, 4), 2.0))
    assert not jacobi_available("cpu", 4, torch.float16)
    assert _shared_bytes(150, 4) <= 227 * 1024 < _shared_bytes(150, 8)


@pytest.mark.parametrize("threads", [32, 1024])
def test_thread_counts(dev, threads):
    """Any thread count per matrix gives the solution (on CUDA, fewer threads than pairs are
    raised to one per pair; the CPU twin ignores the count)."""
    gen = torch.Generator().manual_seed(8)
    cov, _ = _covariances(2, 150, 160, gen)
    vals, vecs = torch.ops.napari_stnls.eigh_jacobi(cov.float().to(dev), 15, 1e-6, threads)
    _check(cov, vals, vecs, rtol=2e-5)


def _patches_with_spectrum(spectrum, K, gen):
    """(N, K, D) float64 patches whose sample covariance (centred, / (K - 1)) has exactly the
    eigenvalues ``spectrum`` (N, D), along random orthonormal directions."""
    N, D = spectrum.shape
    z = torch.randn(N, K, D, generator=gen, dtype=torch.float64)
    z = z - z.mean(1, keepdim=True)
    lam, v = torch.linalg.eigh(z.mT @ z / (K - 1))
    z = z @ v * lam.rsqrt()[:, None]  # sample covariance: the identity
    q, _ = torch.linalg.qr(torch.randn(N, D, D, generator=gen, dtype=torch.float64))
    return z * spectrum.sqrt()[:, None] @ q.mT + torch.rand(N, 1, D, generator=gen, dtype=torch.float64)


def test_top_eigh_finds_the_largest_eigenpairs(dev):
    """Subspace iteration (top_eigh) against float64 LAPACK: the largest eigenvalues and their
    directions of covariances with a decaying spectrum, a zero matrix (zero values, no NaN)."""
    gen = torch.Generator().manual_seed(7)
    N, D = (16 if dev.type == "cuda" else 3), 150
    spectrum = torch.cat([torch.logspace(0, -1, 12, dtype=torch.float64).expand(N, 12),
                          1e-3 * torch.rand(N, D - 12, generator=gen, dtype=torch.float64)], 1)
    y = _patches_with_spectrum(spectrum, 160, gen)
    yc = y - y.mean(1, keepdim=True)
    cov = yc.mT @ yc / 159
    vals, vecs = top_eigh(cov.float().to(dev), 32, 4)
    assert vals.shape == (N, 32) and vecs.shape == (N, D, 32)
    l64, u64 = torch.linalg.eigh(cov)
    top = vals.double().cpu()[:, -12:]
    torch.testing.assert_close(top, l64[:, -12:], rtol=1e-4, atol=1e-6)
    overlap = (vecs.double().cpu()[..., -12:] * u64[..., -12:]).sum(1).abs()
    assert overlap.min() > 1 - 1e-4, overlap.min()
    v0, u0 = top_eigh(torch.zeros(2, 70, 70, device=dev), 32, 2)
    assert bool((v0 == 0).all()) and bool(torch.isfinite(u0).all())


def test_top_eigh_bad_input():
    with pytest.raises(ValueError, match="rank"):
        top_eigh(torch.eye(5)[None], 6)
    with pytest.raises(ValueError, match="iters"):
        top_eigh(torch.eye(5)[None], 2, 0)
    with pytest.raises(ValueError, match="cov"):
        top_eigh(torch.eye(5), 2)


def test_group_filter_on_the_top_eigenpairs_matches_float64(dev, monkeypatch):
    """nl_bayes's step-2 filter of D = 150 groups through top_eigh (the GPU path, run here on
    ``dev``) equals the float64 filter from full eigen-decompositions: groups keeping a few
    directions, none, and more than the subspace holds well (decomposed in full). No
    eigenvalue lies near the threshold, so no direction may fall on the other side."""
    import importlib

    nb = importlib.import_module("napari_stnls.denoise.nl_bayes")
    monkeypatch.setattr(nb, "_TOP_DEVICES", (dev.type,))
    gen = torch.Generator().manual_seed(11)
    var, thresh, D, K = 1e-3, 1.2, 150, 160
    level = thresh * var
    kept = [3, 0, 12, 40, 29]  # directions above the level per group (40: past the block)
    spectrum = torch.stack([torch.cat([level * (3 + 20 * torch.rand(r, generator=gen, dtype=torch.float64)),
                                       level * 0.3 * torch.rand(D - r, generator=gen, dtype=torch.float64)])
                            for r in kept])
    yb = _patches_with_spectrum(spectrum, K, gen)
    yn = yb + var**0.5 * torch.randn(yb.shape, generator=gen, dtype=torch.float64)
    got = nb._group_filter(yn.float().to(dev), yb.float().to(dev), var, thresh).double().cpu()
    cb = yb - yb.mean(1, keepdim=True)
    l64, u64 = torch.linalg.eigh(cb.mT @ cb / (K - 1))
    assert ((l64 > level).sum(-1) == torch.tensor(kept)).all()
    gain = torch.where(l64 > level, l64 / (l64 + var), torch.zeros_like(l64))
    m = yn.mean(1, keepdim=True)
    ref = m + ((yn - m) @ u64 * gain[:, None]) @ u64.mT
    err = torch.linalg.matrix_norm(got - ref) / torch.linalg.matrix_norm(yn - m)  # of the group's spread
    assert err.max() < 1e-4, err


def test_step1_filter_on_the_top_eigenpairs_matches_float64(dev, monkeypatch):
    """Step 1's filter (no basic estimate: the noisy covariance less the noise) of D = 50
    groups through top_eigh of rank 24 (``_TOP_RANK_SMALL``) equals the float64 filter from
    full eigen-decompositions: groups keeping a few directions, none, and more than the
    subspace holds well (more than 16: decomposed in full)."""
    import importlib

    nb = importlib.import_module("napari_stnls.denoise.nl_bayes")
    monkeypatch.setattr(nb, "_TOP_DEVICES", (dev.type,))
    monkeypatch.setattr(nb, "_TOP_RANK_SMALL", 24)
    assert nb._top_rank(50) == 24 and nb._top_rank(150) == nb._TOP_RANK and nb._top_rank(32) == 0
    gen = torch.Generator().manual_seed(12)
    var, thresh, D, K = 1e-3, 1.0, 50, 60
    level = thresh * var + var  # on the noisy covariance
    kept = [9, 0, 13, 21, 3]
    spectrum = torch.stack([torch.cat([level * (3 + 20 * torch.rand(r, generator=gen, dtype=torch.float64)),
                                       level * 0.3 * torch.rand(D - r, generator=gen, dtype=torch.float64)])
                            for r in kept])
    yn = _patches_with_spectrum(spectrum, K, gen)
    got = nb._group_filter(yn.float().to(dev), None, var, thresh).double().cpu()
    c = yn - yn.mean(1, keepdim=True)
    l64, u64 = torch.linalg.eigh(c.mT @ c / (K - 1))
    assert ((l64 > level).sum(-1) == torch.tensor(kept)).all()
    sig = l64 - var
    gain = torch.where(sig > thresh * var, sig / (sig + var), torch.zeros_like(sig))
    ref = yn.mean(1, keepdim=True) + (c @ u64 * gain[:, None]) @ u64.mT
    err = torch.linalg.matrix_norm(got - ref) / torch.linalg.matrix_norm(c)
    assert err.max() < 1e-4, err
