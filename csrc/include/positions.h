// Candidate ids -> positions (host and device): what search_positions_int writes for
// itype="int", and search_positions for itype="float" where no gradient is needed, in place
// of the PyTorch glue that turns ids into positions (napari_stnls/ops/_window.py, positions).
#pragma once

#include <cstdint>

#include "hd.h"

namespace stnls {

// The position (t, y, x) of candidate id = (slot * ws + i) * ws + j of one query, as int32:
// the frame frames[slot], and the query's (whole-pixel) window centre of that slot plus the
// grid offsets (i - ws/2) * s1 and (j - ws/2) * s1. centre: the query's (nt, 2) centres (y, x),
// integer-valued (truncated as torch's .long() truncates); frames: its nt frames.
template <typename acc_t>
STNLS_HD void int_position(int64_t id, const acc_t* centre, const int64_t* frames, int64_t ws,
                           int64_t s1, int32_t* out) {
  const int64_t slot = id / (ws * ws), ij = id - slot * ws * ws, i = ij / ws, j = ij - i * ws;
  out[0] = static_cast<int32_t>(frames[slot]);
  out[1] = static_cast<int32_t>(static_cast<int64_t>(centre[slot * 2]) + (i - ws / 2) * s1);
  out[2] = static_cast<int32_t>(static_cast<int64_t>(centre[slot * 2 + 1]) + (j - ws / 2) * s1);
}

// a * b rounded once: never contracted with a following addition into a fused multiply-add,
// so that a + a * b gives the bits of PyTorch's separate multiplication and addition.
template <typename acc_t>
STNLS_HD acc_t mul_rn(acc_t a, acc_t b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(acc_t) == 4) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;  // the host build does not contract (no -ffp-contract=fast with FMA)
#endif
}

// The float position (t, y, x) of candidate id, in the centres' type: the bits of the
// PyTorch glue, which adds the offsets s1 * (i - ws/2), computed in acc_t, to the centre.
template <typename acc_t>
STNLS_HD void float_position(int64_t id, const acc_t* centre, const int64_t* frames, int64_t ws,
                             acc_t s1, acc_t* out) {
  const int64_t slot = id / (ws * ws), ij = id - slot * ws * ws, i = ij / ws, j = ij - i * ws;
  out[0] = static_cast<acc_t>(frames[slot]);
  out[1] = centre[slot * 2] + mul_rn(s1, static_cast<acc_t>(i - ws / 2));
  out[2] = centre[slot * 2 + 1] + mul_rn(s1, static_cast<acc_t>(j - ws / 2));
}

}  // namespace stnls
