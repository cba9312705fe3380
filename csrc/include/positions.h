// Candidate ids -> whole-pixel positions (host and device): what search_positions_int writes
// for itype="int", in place of the PyTorch glue that turns ids into positions.
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

}  // namespace stnls
