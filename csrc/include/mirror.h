// The border rule of every kernel (CPU and CUDA), the pure-PyTorch reference's
// (napari_stnls/ops/_patches.py):
//   * pixel indices outside 0..n-1 are mirrored without repeating the border (-1 -> 1);
//   * frames past the end are mirrored about the last frame.
#pragma once

#include <cstdint>

#include "hd.h"

namespace stnls {

STNLS_HD int64_t reflect(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;  // the common case: inside the frame
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  int64_t m = i % period;
  if (m < 0) m += period;
  return m >= n ? period - m : m;
}

}  // namespace stnls
