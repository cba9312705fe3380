// The types kernels compute in: the accumulation dtype of a video (float64 for float64, else
// float32), and the C++ type of a positions (inds) tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace stnls {

// The dtype kernels accumulate in for a video: float64 for float64, else float32.
inline at::ScalarType acc_type(const at::Tensor& video) {
  return video.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::ScalarType acc_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

// Calls f(pos_t{}) with the C++ type of an inds dtype (int32, int64, float, double).
template <typename F>
void dispatch_pos(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kInt:
      f(int32_t(0));
      break;
    case at::kLong:
      f(int64_t(0));
      break;
    case at::kFloat:
      f(float(0));
      break;
    case at::kDouble:
      f(double(0));
      break;
    default:
      TORCH_CHECK(false, "inds: unsupported dtype ", st);
  }
}

}  // namespace stnls
