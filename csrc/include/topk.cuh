// The top-k lists of the CUDA search kernels (csrc/cuda/search/): TopK, one sorted list per
// thread, and WarpTopK, one list spread over the lanes of a warp. Both order their entries
// by (distance, id), so the k they keep do not depend on the order candidates arrive in.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>

#include "topk.h"

namespace stnls {

// The k best candidates of one query: a sorted list of capacity K (stnls::topk_insert's
// insertion) whose entries order by (distance, id), so that it does not depend on the order
// candidates arrive in. Where they arrive in ascending id order, as in every kernel but the
// staged one, that is the "ties keep the first" rule of stnls::topk_insert. (An unrolled list
// of KMAX entries that never touches local memory was measured slower on the H200: it
// inserts more often, and the list's reads hit L1.)
template <typename acc_t, typename id_t, int KM>
struct TopK {
  acc_t d[KM];
  id_t id[KM];
  int n = 0;
  acc_t worst_d = acc_t(0);  // d[K-1], id[K-1] once the list is full, kept in registers: most
  id_t worst_id = 0;         // candidates are rejected against them with no memory access

  __device__ __forceinline__ bool before(acc_t v, id_t vi, acc_t e, id_t ei, bool l2) const {
    return stnls::better(v, e, l2) || (v == e && vi < ei);
  }

  __device__ __forceinline__ void insert(acc_t v, id_t vi, int K, bool l2) {
    int pos;
    if (n < K) {
      pos = n++;
    } else if (before(v, vi, worst_d, worst_id, l2)) {
      pos = K - 1;
    } else {
      return;
    }
    while (pos > 0 && before(v, vi, d[pos - 1], id[pos - 1], l2)) {
      d[pos] = d[pos - 1];
      id[pos] = id[pos - 1];
      --pos;
    }
    d[pos] = v;
    id[pos] = vi;
    if (n == K) {
      worst_d = d[K - 1];
      worst_id = id[K - 1];
    }
  }

  // dout[0..K), out[0..K): the distances and ids (see stnls::topk_write)
  __device__ __forceinline__ void write(acc_t* dout, int64_t* out, int K, bool l2) const {
    stnls::topk_write(d, id, n, K, l2, dout, out);
  }
};

// (d1, i1) before (d2, i2): the better distance, then the smaller id; an empty entry (id
// LLONG_MAX) after every real one.
template <typename acc_t>
__device__ __forceinline__ bool better_entry(acc_t d1, int64_t i1, acc_t d2, int64_t i2, bool l2) {
  if (i1 == LLONG_MAX) return false;  // an empty entry loses to every real one
  if (i2 == LLONG_MAX) return true;
  if (d1 != d2) return l2 ? d1 < d2 : d1 > d2;
  return i1 < i2;
}

// The k best candidates of one warp, spread over its lanes: lane j < K holds entry j of a list
// sorted by (distance, id) (better_entry; LLONG_MAX ids are empty), and every lane holds
// entry K - 1, the bar a candidate must pass. Lanes offer their candidates together: a
// ballot finds those that pass the bar, and the warp inserts them one at a time (a shuffle
// moves the entries behind the new one down a lane). With one list per warp instead of one
// per lane, a candidate is tested against the k best of everything the warp has seen, so few
// are inserted, and the list never touches local memory. The result is the k best by
// (distance, id) whatever the order of the offers.
template <typename acc_t>
struct WarpTopK {
  static constexpr unsigned kAll = 0xffffffffu;
  acc_t d = acc_t(0), bar_d = acc_t(0);
  int64_t id = LLONG_MAX, bar_id = LLONG_MAX;

  __device__ __forceinline__ void offer(bool has, acc_t cd, int64_t cid, int lane, int K,
                                        bool l2) {
    unsigned m = __ballot_sync(kAll, has && better_entry(cd, cid, bar_d, bar_id, l2));
    while (m) {
      const int src = __ffs(m) - 1;
      const acc_t vd = __shfl_sync(kAll, cd, src);
      const int64_t vid = __shfl_sync(kAll, cid, src);
      const int pos = __popc(__ballot_sync(kAll, lane < K && better_entry(d, id, vd, vid, l2)));
      const acc_t ud = __shfl_up_sync(kAll, d, 1);
      const int64_t uid = __shfl_up_sync(kAll, id, 1);
      if (lane == pos) {
        d = vd;
        id = vid;
      } else if (lane > pos) {
        d = ud;
        id = uid;
      }
      bar_d = __shfl_sync(kAll, d, K - 1);
      bar_id = __shfl_sync(kAll, id, K - 1);
      if (lane == src) has = false;
      m = __ballot_sync(kAll, has && better_entry(cd, cid, bar_d, bar_id, l2));
    }
  }

  // lanes j < K write entry j (an empty one as id 0 and the worst distance)
  __device__ __forceinline__ void write(acc_t* dout, int64_t* out, int lane, int K,
                                        bool l2) const {
    if (lane >= K) return;
    const bool empty = id == LLONG_MAX;
    out[lane] = empty ? 0 : id;
    dout[lane] = empty ? (l2 ? acc_t(INFINITY) : acc_t(-INFINITY)) : d;
  }
};

}  // namespace stnls
