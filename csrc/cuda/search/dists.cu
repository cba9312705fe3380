// search_dists and search_dists_backward on CUDA: one thread per (batch, head, query,
// neighbour), patches read as patch.cuh reads them.
#include <torch/library.h>

#include "common.cuh"
#include "patch.cuh"

namespace stnls::search_cuda {
namespace {

template <typename acc_t, typename pos_t>
__device__ __forceinline__ Pos<acc_t> load_pos(const pos_t* p, bool need_both) {
  const int64_t t = static_cast<int64_t>(llround(static_cast<double>(p[0])));
  return make_pos<acc_t>(t, static_cast<acc_t>(p[1]), static_cast<acc_t>(p[2]), need_both);
}

// Adds, to (gy, gx), channel ch's term of the gradient of gdk * (key value at kp) with respect
// to the key position's (y, x): the bilinear read's derivatives at the taps of ko.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_pos_grad(const scalar_t* kv, int64_t C, int64_t ch,
                                             const Px& ko, const Pos<acc_t>& kp, acc_t gdk,
                                             acc_t& gy, acc_t& gx) {
  const acc_t v00 = static_cast<acc_t>(kv[(ko.r0 + ko.c0) * C + ch]);
  const acc_t v01 = static_cast<acc_t>(kv[(ko.r0 + ko.c1) * C + ch]);
  const acc_t v10 = static_cast<acc_t>(kv[(ko.r1 + ko.c0) * C + ch]);
  const acc_t v11 = static_cast<acc_t>(kv[(ko.r1 + ko.c1) * C + ch]);
  gy += gdk * ((acc_t(1) - kp.fx) * (v10 - v00) + kp.fx * (v11 - v01));
  gx += gdk * ((acc_t(1) - kp.fy) * (v01 - v00) + kp.fy * (v11 - v10));
}

// The position gradient (gy, gx) of neighbour nk, summed over its group's G lanes (every
// lane of the warp calls it) and written by the group's first lane where the neighbour is live
template <typename acc_t, typename pos_t>
__device__ __forceinline__ void write_pos_grad(acc_t gy, acc_t gx, int G, bool live, int gl,
                                               int64_t nk, pos_t* gpos) {
  for (int o = G / 2; o > 0; o >>= 1) {
    gy += __shfl_xor_sync(0xffffffffu, gy, o);
    gx += __shfl_xor_sync(0xffffffffu, gx, o);
  }
  if (live && gl == 0) {
    gpos[nk * 3 + 1] = static_cast<pos_t>(gy);
    gpos[nk * 3 + 2] = static_cast<pos_t>(gx);
  }
}

template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void dists_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                             const int64_t* __restrict__ coords, const pos_t* __restrict__ kpos,
                             int64_t B, int64_t T, int64_t H, int64_t W, int64_t C, int64_t nh,
                             int64_t Q, int64_t K, int ps, int pt, int dil, bool l2,
                             acc_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q * K) return;
  const int64_t q = (n / K) % Q, h = (n / (K * Q)) % nh, b = n / (K * Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C;
  const Pos<acc_t> qp =
      make_pos<acc_t>(coords[q * 3], acc_t(coords[q * 3 + 1]), acc_t(coords[q * 3 + 2]), false);
  const Pos<acc_t> kp = load_pos<acc_t>(kpos + n * 3, false);
  out[n] = patch_distance(qdata + b * video, qp, kdata + b * video, kp, T, H, W, C, h * Ch, Ch, ps,
                          pt, dil, l2);
}

at::Tensor search_dists_cuda(const at::Tensor& queries, const at::Tensor& keys,
                             const at::Tensor& coords, const at::Tensor& kpos, int64_t ps,
                             int64_t pt, int64_t dilation, bool l2,
                             const std::optional<at::Tensor>& given) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  const c10::cuda::CUDAGuard guard(queries.device());
  if (given.has_value()) return stnls::given_dists(*given, queries, kpos);
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3);
  const auto acc_type = stnls::acc_type(queries);
  auto dists = at::empty({B, nh, Q, K}, queries.options().dtype(acc_type));
  const int64_t n = dists.numel();
  if (n == 0) return dists;
  const auto crd = coords.contiguous();
  const auto pos = kpos.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_dists_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_cuda_pos", [&] {
      dists_kernel<video_t, acc_t, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          queries.data_ptr<video_t>(), keys.data_ptr<video_t>(), crd.data_ptr<int64_t>(),
          pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K, int(ps), int(pt), int(dilation), l2,
          dists.data_ptr<acc_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dists;
}

// The former backward (NAPARI_STNLS_CUDA_BWD=thread, for A/B timing): one thread per
// (b, h, q, r); gradients of grad[n] * dist w.r.t. the query and key values
// (atomic adds into float32/float64 buffers) and the key position.
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void dists_backward_thread_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ qdata,
                                      const scalar_t* __restrict__ kdata,
                                      const int64_t* __restrict__ coords,
                                      const pos_t* __restrict__ kpos, int64_t B, int64_t T, int64_t H,
                                      int64_t W, int64_t C, int64_t nh, int64_t Q, int64_t K, int ps,
                                      int pt, int dil, bool l2, bool need_q, bool need_k,
                                      bool need_pos, acc_t* __restrict__ gq, acc_t* __restrict__ gk,
                                      pos_t* __restrict__ gpos) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q * K) return;
  const int64_t q = (n / K) % Q, h = (n / (K * Q)) % nh, b = n / (K * Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C, c0 = h * Ch;
  const acc_t g = grad[n];
  const Pos<acc_t> qp =
      make_pos<acc_t>(coords[q * 3], acc_t(coords[q * 3 + 1]), acc_t(coords[q * 3 + 2]), false);
  const Pos<acc_t> kp = load_pos<acc_t>(kpos + n * 3, need_pos);
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  acc_t* gqb = gq + b * video;
  acc_t* gkb = gk + b * video;
  acc_t gy = 0, gx = 0;
  const acc_t wy0 = kp.sy ? acc_t(1) - kp.fy : acc_t(1), wx0 = kp.sx ? acc_t(1) - kp.fx : acc_t(1);
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int bb = 0; bb < ps; ++bb) {
        const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
        const Px ko = locate(kp, dt, a, bb, T, H, W, ps, dil);
        for (int64_t c = c0; c < c0 + Ch; ++c) {
          const acc_t qvl = value(qv, C, qp, qo, c);
          const acc_t kvl = value(kv, C, kp, ko, c);
          const acc_t dq = l2 ? acc_t(2) * (qvl - kvl) : kvl;
          const acc_t dk = l2 ? -dq : qvl;
          if (need_q) gpuAtomicAdd(&gqb[(qo.r0 + qo.c0) * C + c], g * dq);
          if (need_k) {
            const acc_t gv = g * dk;
            gpuAtomicAdd(&gkb[(ko.r0 + ko.c0) * C + c], gv * wy0 * wx0);
            if (kp.sx) gpuAtomicAdd(&gkb[(ko.r0 + ko.c1) * C + c], gv * wy0 * kp.fx);
            if (kp.sy) {
              gpuAtomicAdd(&gkb[(ko.r1 + ko.c0) * C + c], gv * kp.fy * wx0);
              if (kp.sx) gpuAtomicAdd(&gkb[(ko.r1 + ko.c1) * C + c], gv * kp.fy * kp.fx);
            }
          }
          if (need_pos) add_pos_grad(kv, C, c, ko, kp, g * dk, gy, gx);
        }
      }
  if (need_pos) {
    gpos[n * 3 + 1] = static_cast<pos_t>(gy);
    gpos[n * 3 + 2] = static_cast<pos_t>(gx);
  }
}

// The backward: one warp per (b, h, q), recomputing only its k neighbours' patch
// differences. The patch's n_el = pt*ps*ps*Ch elements (order dt, a, bb, c: a patch row's
// values are neighbours in the channels-last video) go to groups of G lanes (G the power of
// two >= n_el, at most 32; 32 / G groups, each taking every (32/G)-th neighbour), so a warp's
// atomic adds into a key patch land on a few contiguous runs of addresses. Each lane owns the
// same elements for every neighbour: the query patch's gradient is summed over the k
// neighbours in shared memory and added once per element: k times fewer atomics than one add
// per (neighbour, element), which also all hit one address at once when a warp held the k
// neighbours of one query. (With a patch too large for the shared buffer, `cached` is false:
// query values are read again and the query gradient is added per neighbour.) The position
// gradient of a neighbour is a sum over its group's lanes (shuffles).
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void __launch_bounds__(kThreads) dists_backward_kernel(
    const acc_t* __restrict__ grad, const scalar_t* __restrict__ qdata,
    const scalar_t* __restrict__ kdata, const int64_t* __restrict__ coords,
    const pos_t* __restrict__ kpos, int64_t B, int64_t T, int64_t H, int64_t W, int64_t C,
    int64_t nh, int64_t Q, int64_t K, int ps, int pt, int dil, bool l2, bool need_q, bool need_k,
    bool need_pos, int G, int J, bool cached, acc_t* __restrict__ gq, acc_t* __restrict__ gk,
    pos_t* __restrict__ gpos) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (n >= B * nh * Q) return;  // uniform over the warp
  // (cached) per warp: J * 32 query values, then J * 32 query-gradient sums; slot j of lane l
  // holds element (l % G) + j * G
  acc_t* qval = reinterpret_cast<acc_t*>(smem_raw) + static_cast<int64_t>(warp) * J * 64;
  acc_t* qacc = qval + J * 32;
  const int64_t q = n % Q, h = (n / Q) % nh, b = n / (Q * nh);
  const int Ch = static_cast<int>(C / nh), n_el = pt * ps * ps * Ch;
  const int64_t video = T * H * W * C, c0 = h * Ch;
  const int gl = lane & (G - 1), group = lane / G, NG = 32 / G;
  const Pos<acc_t> qp =
      make_pos<acc_t>(coords[q * 3], acc_t(coords[q * 3 + 1]), acc_t(coords[q * 3 + 2]), false);
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  acc_t* gqb = gq + b * video;
  acc_t* gkb = gk + b * video;
  if (cached)
    for (int j = 0; j < J; ++j) {
      const int e = gl + j * G;
      if (e < n_el) {
        const int c = e % Ch, bb = (e / Ch) % ps, a = (e / Ch / ps) % ps, dt = e / Ch / ps / ps;
        qval[j * 32 + lane] = value(qv, C, qp, locate(qp, dt, a, bb, T, H, W, ps, dil), c0 + c);
        qacc[j * 32 + lane] = acc_t(0);
      }
    }
  for (int64_t r0 = 0; r0 < K; r0 += NG) {
    const int64_t r = r0 + group;
    const bool live = r < K;
    const int64_t nk = n * K + (live ? r : 0);
    const acc_t g = live ? grad[nk] : acc_t(0);
    const Pos<acc_t> kp = load_pos<acc_t>(kpos + nk * 3, need_pos);
    const acc_t wy0 = kp.sy ? acc_t(1) - kp.fy : acc_t(1), wx0 = kp.sx ? acc_t(1) - kp.fx : acc_t(1);
    acc_t gy = 0, gx = 0;
    if (live)
      for (int j = 0; j < J; ++j) {
        const int e = gl + j * G;
        if (e >= n_el) break;
        const int c = e % Ch, bb = (e / Ch) % ps, a = (e / Ch / ps) % ps, dt = e / Ch / ps / ps;
        const int64_t ch = c0 + c;
        const Px ko = locate(kp, dt, a, bb, T, H, W, ps, dil);
        const acc_t qvl = cached ? qval[j * 32 + lane]
                                 : value(qv, C, qp, locate(qp, dt, a, bb, T, H, W, ps, dil), ch);
        const acc_t kvl = value(kv, C, kp, ko, ch);
        const acc_t dq = l2 ? acc_t(2) * (qvl - kvl) : kvl;
        const acc_t dk = l2 ? -dq : qvl;
        if (need_q) {
          if (cached) {
            qacc[j * 32 + lane] += g * dq;
          } else {
            const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
            gpuAtomicAdd(&gqb[(qo.r0 + qo.c0) * C + ch], g * dq);
          }
        }
        if (need_k) {
          const acc_t gv = g * dk;
          gpuAtomicAdd(&gkb[(ko.r0 + ko.c0) * C + ch], gv * wy0 * wx0);
          if (kp.sx) gpuAtomicAdd(&gkb[(ko.r0 + ko.c1) * C + ch], gv * wy0 * kp.fx);
          if (kp.sy) {
            gpuAtomicAdd(&gkb[(ko.r1 + ko.c0) * C + ch], gv * kp.fy * wx0);
            if (kp.sx) gpuAtomicAdd(&gkb[(ko.r1 + ko.c1) * C + ch], gv * kp.fy * kp.fx);
          }
        }
        if (need_pos) add_pos_grad(kv, C, ch, ko, kp, g * dk, gy, gx);
      }
    if (need_pos) write_pos_grad(gy, gx, G, live, gl, nk, gpos);  // (uniform over the warp)
  }
  if (need_q && cached)
    for (int j = 0; j < J; ++j) {
      const int e = gl + j * G;
      acc_t v = e < n_el ? qacc[j * 32 + lane] : acc_t(0);
      for (int o = G; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (group == 0 && e < n_el) {
        const int c = e % Ch, bb = (e / Ch) % ps, a = (e / Ch / ps) % ps, dt = e / Ch / ps / ps;
        const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
        gpuAtomicAdd(&gqb[(qo.r0 + qo.c0) * C + c0 + c], v);
      }
    }
}

// The same backward with 16-byte atomics (float32, sm_90's red.global.add.v4.f32): a lane's
// element is a patch pixel's group of 4 channels of the head, (dt, a, bb, v) in that order,
// and each of its query and key gradient adds is one vector add into buffers of C4 channels a
// pixel (4 where the head's channels were padded to 4, else C) whose head starts at channel
// cb (a multiple of 4): a third of the atomics for 3 channels, a quarter for multiples of 4.
// The values added are dists_backward_kernel's, channel for channel.
__device__ __forceinline__ void red_add4(float* p, float a, float b, float c, float d) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(a), "f"(b), "f"(c),
               "f"(d)
               : "memory");
}

template <typename pos_t>
__global__ void __launch_bounds__(kThreads) dists_backward_v4_kernel(
    const float* __restrict__ grad, const float* __restrict__ qdata,
    const float* __restrict__ kdata, const int64_t* __restrict__ coords,
    const pos_t* __restrict__ kpos, int64_t B, int64_t T, int64_t H, int64_t W, int64_t C,
    int64_t nh, int64_t Q, int64_t K, int ps, int pt, int dil, bool l2, bool need_q, bool need_k,
    bool need_pos, int G, int J, bool cached, int C4, float* __restrict__ gq,
    float* __restrict__ gk, pos_t* __restrict__ gpos) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (n >= B * nh * Q) return;  // uniform over the warp
  // (cached) per warp: J * 32 query vectors, then J * 32 query-gradient sums
  float4* qval = reinterpret_cast<float4*>(smem_raw) + static_cast<int64_t>(warp) * J * 64;
  float4* qacc = qval + J * 32;
  const int64_t q = n % Q, h = (n / Q) % nh, b = n / (Q * nh);
  const int Ch = static_cast<int>(C / nh), NV = (Ch + 3) / 4, n_el = pt * ps * ps * NV;
  const int64_t video = T * H * W * C, c0 = h * Ch, gvideo = T * H * W * C4;
  const int64_t cb = C4 == C ? c0 : 0;
  const int gl = lane & (G - 1), group = lane / G, NG = 32 / G;
  const Pos<float> qp =
      make_pos<float>(coords[q * 3], float(coords[q * 3 + 1]), float(coords[q * 3 + 2]), false);
  const float* qv = qdata + b * video;
  const float* kv = kdata + b * video;
  float* gqb = gq + b * gvideo;
  float* gkb = gk + b * gvideo;
  // element e: patch pixel (dt, a, bb) and channels 4 vi .. 4 vi + 3 of the head
  auto unpack = [&](int e, int& dt, int& a, int& bb, int& vi) {
    vi = e % NV;
    bb = (e / NV) % ps;
    a = (e / NV / ps) % ps;
    dt = e / NV / ps / ps;
  };
  auto load4 = [&](const float* v, const Pos<float>& p, const Px& o, int vi) {
    float x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) x[u] = 4 * vi + u < Ch ? value(v, C, p, o, c0 + 4 * vi + u) : 0.f;
    return make_float4(x[0], x[1], x[2], x[3]);
  };
  if (cached)
    for (int j = 0; j < J; ++j) {
      const int e = gl + j * G;
      if (e < n_el) {
        int dt, a, bb, vi;
        unpack(e, dt, a, bb, vi);
        qval[j * 32 + lane] = load4(qv, qp, locate(qp, dt, a, bb, T, H, W, ps, dil), vi);
        qacc[j * 32 + lane] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  for (int64_t r0 = 0; r0 < K; r0 += NG) {
    const int64_t r = r0 + group;
    const bool live = r < K;
    const int64_t nk = n * K + (live ? r : 0);
    const float g = live ? grad[nk] : 0.f;
    const Pos<float> kp = load_pos<float>(kpos + nk * 3, need_pos);
    const float wy0 = kp.sy ? 1.f - kp.fy : 1.f, wx0 = kp.sx ? 1.f - kp.fx : 1.f;
    float gy = 0, gx = 0;
    if (live)
      for (int j = 0; j < J; ++j) {
        const int e = gl + j * G;
        if (e >= n_el) break;
        int dt, a, bb, vi;
        unpack(e, dt, a, bb, vi);
        const Px ko = locate(kp, dt, a, bb, T, H, W, ps, dil);
        const float4 q4 = cached ? qval[j * 32 + lane]
                                 : load4(qv, qp, locate(qp, dt, a, bb, T, H, W, ps, dil), vi);
        const float4 k4 = load4(kv, kp, ko, vi);
        const float qa[4] = {q4.x, q4.y, q4.z, q4.w}, ka[4] = {k4.x, k4.y, k4.z, k4.w};
        float dq[4], dk[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          dq[u] = l2 ? 2.f * (qa[u] - ka[u]) : ka[u];
          dk[u] = l2 ? -dq[u] : qa[u];
        }
        if (need_q) {
          if (cached) {
            float4& acc = qacc[j * 32 + lane];
            acc.x += g * dq[0];
            acc.y += g * dq[1];
            acc.z += g * dq[2];
            acc.w += g * dq[3];
          } else {
            const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
            red_add4(gqb + (qo.r0 + qo.c0) * C4 + cb + 4 * vi, g * dq[0], g * dq[1], g * dq[2],
                     g * dq[3]);
          }
        }
        if (need_k) {
          const float gv[4] = {g * dk[0], g * dk[1], g * dk[2], g * dk[3]};
          auto tap = [&](int64_t pix, float wy, float wx) {  // (gv wy) wx, as the scalar adds
            red_add4(gkb + pix * C4 + cb + 4 * vi, gv[0] * wy * wx, gv[1] * wy * wx,
                     gv[2] * wy * wx, gv[3] * wy * wx);
          };
          tap(ko.r0 + ko.c0, wy0, wx0);
          if (kp.sx) tap(ko.r0 + ko.c1, wy0, kp.fx);
          if (kp.sy) {
            tap(ko.r1 + ko.c0, kp.fy, wx0);
            if (kp.sx) tap(ko.r1 + ko.c1, kp.fy, kp.fx);
          }
        }
        if (need_pos) {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int64_t ch = c0 + 4 * vi + u;
            if (4 * vi + u >= Ch) break;
            add_pos_grad(kv, C, ch, ko, kp, g * dk[u], gy, gx);
          }
        }
      }
    if (need_pos) write_pos_grad(gy, gx, G, live, gl, nk, gpos);  // (uniform over the warp)
  }
  if (need_q && cached)
    for (int j = 0; j < J; ++j) {
      const int e = gl + j * G;
      float4 v = e < n_el ? qacc[j * 32 + lane] : make_float4(0.f, 0.f, 0.f, 0.f);
      for (int o = G; o < 32; o <<= 1) {
        v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
        v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
        v.z += __shfl_xor_sync(0xffffffffu, v.z, o);
        v.w += __shfl_xor_sync(0xffffffffu, v.w, o);
      }
      if (group == 0 && e < n_el) {
        int dt, a, bb, vi;
        unpack(e, dt, a, bb, vi);
        const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
        red_add4(gqb + (qo.r0 + qo.c0) * C4 + cb + 4 * vi, v.x, v.y, v.z, v.w);
      }
    }
}

// The backward kernels' lanes for a patch of n_el elements: groups of G lanes (the power of
// two >= n_el, at most 32) and J elements a lane
std::pair<int, int> lane_groups(int64_t n_el) {
  int G = 1;
  while (G < n_el && G < 32) G *= 2;
  return {G, static_cast<int>((n_el + G - 1) / G)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> search_dists_backward_cuda(
    const at::Tensor& grad, const at::Tensor& queries, const at::Tensor& keys,
    const at::Tensor& coords, const at::Tensor& kpos, int64_t ps, int64_t pt, int64_t dilation,
    bool l2, std::array<bool, 3> needs) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3);
  const auto acc_type = stnls::acc_type(queries);
  auto gq = at::zeros(queries.sizes(), queries.options().dtype(acc_type));
  auto gk = at::zeros(keys.sizes(), keys.options().dtype(acc_type));
  const bool sub = kpos.is_floating_point();
  auto gpos = at::zeros(kpos.sizes(), kpos.options().dtype(sub ? kpos.scalar_type() : acc_type));
  const int64_t n = B * nh * Q * K;
  if (n > 0) {
    const auto crd = coords.contiguous();
    const auto pos = kpos.contiguous();
    const auto g = grad.to(acc_type).contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    // lanes per group (a power of two >= the patch's elements, at most 32) and slots a lane
    int G = 0, J = 0;  // (no structured bindings: the lambdas below capture them, C++17)
    std::tie(G, J) = lane_groups(pt * ps * ps * (C / nh));
    const int64_t warps = B * nh * Q, per_block = kThreads / 32;
    const unsigned blocks = static_cast<unsigned>((warps + per_block - 1) / per_block);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                    "search_dists_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      // the query values and gradient sums in shared memory where they fit the default 48 KB
      const int64_t need = per_block * J * 64 * static_cast<int64_t>(sizeof(acc_t));
      const bool cached = need <= 48 * 1024;
      const size_t smem = cached ? static_cast<size_t>(need) : 0;
      const char* env = std::getenv("NAPARI_STNLS_CUDA_BWD");
      const bool thread = env && std::string(env) == "thread";
      // NAPARI_STNLS_CUDA_BWD=v4: 16-byte atomics (see dists_backward_v4_kernel), for float32
      // with one head of at most 4 channels (buffers padded to 4) or heads of a multiple of 4
      const int64_t Ch = C / nh;
      const bool v4 = env && std::string(env) == "v4" && std::is_same<scalar_t, float>::value &&
                      ((nh == 1 && Ch <= 4) || Ch % 4 == 0);
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (v4) {
          const int64_t C4 = Ch % 4 == 0 ? C : 4;
          int G4 = 0, J4 = 0;
          std::tie(G4, J4) = lane_groups(pt * ps * ps * ((Ch + 3) / 4));
          const int64_t need4 = per_block * J4 * 64 * 16;
          const bool cached4 = need4 <= 48 * 1024;
          // (gq and gk themselves where no channel is padded)
          auto pad = [&](const at::Tensor& buf) {
            return C4 == C ? buf : at::zeros({B, T, H, W, C4}, buf.options());
          };
          auto gq4 = pad(gq), gk4 = pad(gk);
          AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_backward_v4_pos", [&] {
            dists_backward_v4_kernel<scalar_t><<<blocks, kThreads, cached4 ? need4 : 0, stream>>>(
                g.data_ptr<float>(), queries.data_ptr<float>(), keys.data_ptr<float>(),
                crd.data_ptr<int64_t>(), pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K,
                int(ps), int(pt), int(dilation), l2, needs[0], needs[1], needs[2] && sub, G4, J4,
                cached4, int(C4), gq4.data_ptr<float>(), gk4.data_ptr<float>(),
                sub ? gpos.data_ptr<scalar_t>() : nullptr);
          });
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          gq = C4 == C ? gq4 : gq4.narrow(4, 0, C).contiguous();
          gk = C4 == C ? gk4 : gk4.narrow(4, 0, C).contiguous();
          return;
        }
      }
      AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_backward_cuda_pos", [&] {
        if (thread) {
          dists_backward_thread_kernel<video_t, acc_t, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              g.data_ptr<acc_t>(), queries.data_ptr<video_t>(), keys.data_ptr<video_t>(),
              crd.data_ptr<int64_t>(), pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K, int(ps),
              int(pt), int(dilation), l2, needs[0], needs[1], needs[2] && sub,
              gq.data_ptr<acc_t>(), gk.data_ptr<acc_t>(),
              sub ? gpos.data_ptr<scalar_t>() : nullptr);
          return;
        }
        dists_backward_kernel<video_t, acc_t, scalar_t><<<blocks, kThreads, smem, stream>>>(
            g.data_ptr<acc_t>(), queries.data_ptr<video_t>(), keys.data_ptr<video_t>(),
            crd.data_ptr<int64_t>(), pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K, int(ps),
            int(pt), int(dilation), l2, needs[0], needs[1], needs[2] && sub, G, J, cached,
            gq.data_ptr<acc_t>(), gk.data_ptr<acc_t>(),
            sub ? gpos.data_ptr<scalar_t>() : nullptr);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gq.to(queries.scalar_type()), gk.to(keys.scalar_type()), gpos};
}

}  // namespace

}  // namespace stnls::search_cuda

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("search_dists", &stnls::search_cuda::search_dists_cuda);
  m.impl("search_dists_backward", &stnls::search_cuda::search_dists_backward_cuda);
}
