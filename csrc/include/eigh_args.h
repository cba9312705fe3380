// Argument checks of eigh_jacobi (CPU and CUDA hosts).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace stnls {

inline void check_eigh_args(const at::Tensor& cov, int64_t max_sweeps, double tol, int64_t threads) {
  TORCH_CHECK(cov.dim() == 3, "cov: expected (N, D, D) matrices, got ", cov.dim(), " dims");
  TORCH_CHECK(cov.size(1) == cov.size(2), "cov: expected square (N, D, D) matrices, got ",
              cov.size(1), " x ", cov.size(2));
  TORCH_CHECK(cov.scalar_type() == at::kFloat || cov.scalar_type() == at::kDouble,
              "cov: expected float32 or float64, got ", cov.scalar_type());
  TORCH_CHECK(max_sweeps >= 0, "max_sweeps: expected >= 0, got ", max_sweeps);
  TORCH_CHECK(tol >= 0, "tol: expected >= 0, got ", tol);
  TORCH_CHECK(threads == 0 || (threads >= 32 && threads <= 1024 && threads % 32 == 0),
              "threads: expected 0 or a multiple of 32 in [32, 1024], got ", threads);
}

}  // namespace stnls
