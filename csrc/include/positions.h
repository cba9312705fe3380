// Candidate ids -> positions (host and device): what search_positions_int writes for
// itype="int", and search_positions for itype="float" where no gradient is needed, in place
// of the PyTorch glue that turns ids into positions (napari_stnls/ops/_window.py, positions).
#pragma once

#include <cmath>
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

// Single roundings that are never contracted into fused multiply-adds, so that a chain of
// them gives the bits of PyTorch's elementwise kernels, one rounding per operation.
template <typename acc_t>
STNLS_HD acc_t mul_rn(acc_t a, acc_t b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(acc_t) == 4) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;  // the host build does not contract (no -ffp-contract=fast with FMA)
#endif
}

template <typename acc_t>
STNLS_HD acc_t add_rn(acc_t a, acc_t b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(acc_t) == 4) return __fadd_rn(a, b);
  else return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

template <typename acc_t>
STNLS_HD acc_t sub_rn(acc_t a, acc_t b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(acc_t) == 4) return __fsub_rn(a, b);
  else return __dsub_rn(a, b);
#else
  return a - b;
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

// Flow chaining (search_centres): the bilinear read of a flow (T*H*W, 2) = (dx, dy) at frame
// f and position (py, px), clamped into the frame, as _window._sample_flow computes it, one
// rounding per operation in its order. Adds the displacement to (py, px).
template <typename acc_t>
STNLS_HD void chain_step(const acc_t* flow, int64_t f, int64_t H, int64_t W, acc_t& py, acc_t& px) {
  const acc_t cy = std::fmin(std::fmax(py, acc_t(0)), static_cast<acc_t>(H - 1));
  const acc_t cx = std::fmin(std::fmax(px, acc_t(0)), static_cast<acc_t>(W - 1));
  const acc_t y0f = std::floor(cy), x0f = std::floor(cx);
  const acc_t fy = sub_rn(cy, y0f), fx = sub_rn(cx, x0f);
  const auto y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  const int64_t y1 = y0 + 1 < H - 1 ? y0 + 1 : H - 1, x1 = x0 + 1 < W - 1 ? x0 + 1 : W - 1;
  const acc_t* a00 = flow + ((f * H + y0) * W + x0) * 2;
  const acc_t* a01 = flow + ((f * H + y0) * W + x1) * 2;
  const acc_t* a10 = flow + ((f * H + y1) * W + x0) * 2;
  const acc_t* a11 = flow + ((f * H + y1) * W + x1) * 2;
  const acc_t gy = sub_rn(acc_t(1), fy), gx = sub_rn(acc_t(1), fx);
  acc_t v[2];
  for (int c = 0; c < 2; ++c) {
    const acc_t top = add_rn(mul_rn(gx, a00[c]), mul_rn(fx, a01[c]));
    const acc_t bot = add_rn(mul_rn(gx, a10[c]), mul_rn(fx, a11[c]));
    v[c] = add_rn(mul_rn(gy, top), mul_rn(fy, bot));
  }
  py = add_rn(py, v[1]);  // (dx, dy) -> (dy, dx)
  px = add_rn(px, v[0]);
}

// The window centres (nt, 2) of one query of one batch item, as _window.centres computes them
// with flows: frames (nt,) ascending; the position chained along fflow (B's (T*H*W, 2)) to
// each later frame and along bflow to each earlier one, clamped into the frame, rounded
// (half to even) for whole-pixel grids, then clamped to [r, H-1-r] x [r, W-1-r].
template <typename acc_t>
STNLS_HD void chain_centres(const int64_t* coord, const int64_t* frames, int64_t nt,
                            const acc_t* fflow, const acc_t* bflow, int64_t T, int64_t H,
                            int64_t W, bool round, acc_t r, acc_t* out) {
  const int64_t t = coord[0];
  const auto y = static_cast<acc_t>(coord[1]), x = static_cast<acc_t>(coord[2]);
  int64_t lo = 0, hi = 0;  // the offsets of the frames from t
  for (int64_t j = 0; j < nt; ++j) {
    const int64_t o = frames[j] - t;
    lo = o < lo ? o : lo;
    hi = o > hi ? o : hi;
    if (o == 0) out[j * 2] = y, out[j * 2 + 1] = x;
  }
  for (int dir = 0; dir < 2; ++dir) {
    acc_t py = y, px = x;
    const int64_t steps = dir == 0 ? hi : -lo;
    for (int64_t d = 1; d <= steps; ++d) {
      if (dir == 0) chain_step(fflow, t + d - 1 < T - 1 ? t + d - 1 : T - 1, H, W, py, px);
      else chain_step(bflow, t - d + 1 > 0 ? t - d + 1 : 0, H, W, py, px);
      const int64_t o = dir == 0 ? d : -d;
      for (int64_t j = 0; j < nt; ++j)
        if (frames[j] - t == o) out[j * 2] = py, out[j * 2 + 1] = px;
    }
  }
  const acc_t ly = static_cast<acc_t>(H - 1), lx = static_cast<acc_t>(W - 1);
  const acc_t ry = sub_rn(ly, r), rx = sub_rn(lx, r);
  for (int64_t j = 0; j < nt; ++j) {
    acc_t cy = std::fmin(std::fmax(out[j * 2], acc_t(0)), ly);
    acc_t cx = std::fmin(std::fmax(out[j * 2 + 1], acc_t(0)), lx);
    if (round) cy = std::nearbyint(cy), cx = std::nearbyint(cx);
    out[j * 2] = std::fmin(std::fmax(cy, r), ry);
    out[j * 2 + 1] = std::fmin(std::fmax(cx, r), rx);
  }
}

}  // namespace stnls
