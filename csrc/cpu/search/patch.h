// How the CPU search kernels (csrc/cpu/search/) read patches through PatchLoc
// (csrc/include/patch_loc.h): a query patch into a buffer, and the distance of a candidate
// patch to it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

#include "../../include/patch_loc.h"

namespace stnls::search_cpu {

// The query loops of topk.cpp and subpix.cpp are also compiled for AVX2 (target attribute)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STNLS_CPU_AVX2 1
#endif

// AVX2 where the CPU has it, unless NAPARI_STNLS_CPU_AVX2=0 (read once; for timing)
inline bool use_avx2() {
#ifdef STNLS_CPU_AVX2
  static const bool on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CPU_AVX2");
    return __builtin_cpu_supports("avx2") && !(e && std::string(e) == "0");
  }();
  return on;
#else
  return false;
#endif
}


// The query patch of head h at integer (t, y, x), in (pt, ps, ps, Ch) order.
template <typename scalar_t, typename acc_t>
void load_query(const scalar_t* qv, PatchLoc<acc_t>& loc, int64_t C, int64_t c0, int64_t Ch,
                int ps, int pt, acc_t* out) {
  int64_t n = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b)
        for (int64_t c = 0; c < Ch; ++c) out[n++] = loc.value(qv, C, dt, a, b, c0 + c);
}

template <typename scalar_t, typename acc_t>
acc_t patch_distance(const scalar_t* kv, const PatchLoc<acc_t>& loc, const acc_t* q, int64_t C,
                     int64_t c0, int64_t Ch, int ps, int pt, bool l2) {
  acc_t d = 0;
  int64_t n = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b)
        for (int64_t c = 0; c < Ch; ++c, ++n) {
          const acc_t v = loc.value(kv, C, dt, a, b, c0 + c);
          if (l2) {
            const acc_t e = q[n] - v;
            d += e * e;
          } else {
            d += q[n] * v;
          }
        }
  return d;
}

}  // namespace stnls::search_cpu
