// refine_topk on CUDA: one thread per (batch, head, query). The thread streams the candidates
// of the query's K_in windows, skips a position an earlier window already held, reads each
// patch as patch.cuh does (the arithmetic of the CPU kernels), and keeps the k best in a
// sorted list of capacity KMAX by (distance, t, y, x) (csrc/include/refine.h). A query has
// K_in * wr * wr candidates, a few tens where search has thousands, so one thread a query
// keeps the GPU busy on any video worth refining.
#include <torch/library.h>

#include "../../include/refine.h"
#include "common.cuh"
#include "patch.cuh"

namespace stnls::search_cuda {
namespace {

template <typename scalar_t, typename acc_t, int KMAX>
__global__ void refine_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                              const int64_t* __restrict__ coords, const acc_t* __restrict__ centres,
                              int64_t B, int64_t T, int64_t H, int64_t W, int64_t C, int64_t nh,
                              int64_t Q, int64_t K_in, int wr, int ps, int pt, int dil, int K, bool l2,
                              bool exclude_self, int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q) return;
  const int64_t q = n % Q, h = (n / Q) % nh, b = n / (Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C;
  const int64_t t = coords[q * 3], qy = coords[q * 3 + 1], qx = coords[q * 3 + 2];
  const Pos<acc_t> qp = make_pos<acc_t>(t, acc_t(qy), acc_t(qx), false);
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const acc_t* c = centres + n * K_in * 3;
  const int r = wr / 2;
  acc_t bd[KMAX], bp[3 * KMAX];
  int64_t bi[KMAX];
  int cnt = 0;
  for (int64_t j = 0; j < K_in; ++j) {
    const acc_t ct = c[j * 3], cy = c[j * 3 + 1], cx = c[j * 3 + 2];
    const int64_t s = llround(static_cast<double>(ct));
    for (int i = 0; i < wr; ++i)
      for (int jj = 0; jj < wr; ++jj) {
        const acc_t p[3] = {ct, cy + acc_t(i - r), cx + acc_t(jj - r)};
        if (exclude_self && s == t && fabs(static_cast<double>(p[1] - acc_t(qy))) < 1e-4 &&
            fabs(static_cast<double>(p[2] - acc_t(qx))) < 1e-4)
          continue;
        if (stnls::seen_before(c, j, r, p[0], p[1], p[2])) continue;
        const Pos<acc_t> kp = make_pos<acc_t>(s, p[1], p[2], false);
        const acc_t d = patch_distance(qv, qp, kv, kp, T, H, W, C, h * Ch, Ch, ps, pt, dil, l2);
        stnls::refine_insert(bd, bp, bi, cnt, K, d, p, (j * wr + i) * wr + jj, l2);
      }
  }
  stnls::topk_write(bd, bi, cnt, K, l2, dout + n * K, out + n * K);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> refine_topk_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                                    const at::Tensor& coords, const at::Tensor& centres,
                                                    int64_t wr, int64_t ps, int64_t pt, int64_t dilation,
                                                    int64_t k, bool l2, bool exclude_self) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(keys.sizes() == queries.sizes(), "keys: expected the shape of queries");
  TORCH_CHECK(keys.scalar_type() == queries.scalar_type(), "keys: expected the dtype of queries");
  stnls::check_device(coords, queries, "coords");
  stnls::check_device(centres, queries, "centres");
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  TORCH_CHECK(coords.scalar_type() == at::kLong && coords.dim() == 2 && coords.size(1) == 3,
              "coords: expected (Q, 3) int64");
  const int64_t Q = coords.size(0);
  TORCH_CHECK(centres.dim() == 5 && centres.size(0) == B && centres.size(2) == Q &&
                  centres.size(4) == 3,
              "centres: expected (B, nheads, Q, K_in, 3), got ", stnls::shape_str(centres.sizes()));
  TORCH_CHECK(centres.scalar_type() == stnls::acc_type(queries),
              "centres: expected the accumulation dtype ", stnls::acc_type(queries), ", got ",
              centres.scalar_type());
  const int64_t nheads = centres.size(1), K_in = centres.size(3);
  TORCH_CHECK(nheads >= 1 && C % nheads == 0, "centres: its nheads (axis 1) must divide C");
  TORCH_CHECK(wr >= 1 && wr % 2 == 1, "wr: expected an odd window side, got ", wr);
  TORCH_CHECK(k >= 1 && k <= K_in * wr * wr, "k: expected 1 <= k <= K_in*wr*wr, got ", k);
  TORCH_CHECK(k <= 128, "k: the compiled CUDA refine takes k <= 128, got ", k);
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  const int64_t n = B * nheads * Q;
  if (n == 0) return {dists, ids};
  const auto crd = coords.contiguous();
  const auto cen = centres.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "refine_topk_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&](auto kmax) {
      constexpr int KM = decltype(kmax)::value;
      refine_kernel<scalar_t, acc_t, KM><<<blocks_for(n), kThreads, 0, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), crd.data_ptr<int64_t>(),
          cen.data_ptr<acc_t>(), B, T, H, W, C, nheads, Q, K_in, int(wr), int(ps), int(pt),
          int(dilation), int(k), l2, exclude_self, ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
    };
    stnls::dispatch_kmax(k, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dists, ids};
}

}  // namespace stnls::search_cuda

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("refine_topk", &stnls::search_cuda::refine_topk_cuda);
}
