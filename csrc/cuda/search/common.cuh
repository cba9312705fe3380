// What the CUDA files of the search (csrc/cuda/search/) share. Nothing but the output is
// materialised: candidates are streamed and each query keeps its k best in small sorted lists
// (csrc/include/topk.cuh). The kernels, by file:
// - topk.cu: topk_window_kernel (integer search-grid spacing, with or without flow, and the
//   strided whole-pixel grids box.cu sends it), one warp per query, the window interpolated
//   once into shared memory per frame; topk_kernel (any spacing), one thread per query
//   reading every candidate's taps. Op search_topk; and search_positions_int.
// - box.cu: topk_box_kernel (whole-pixel grids of queries), box sums shared by a tile of
//   queries, and the choice between the whole-pixel kernels. Op search_topk_box.
// - stage.cu: topk_stage_kernel, the box sums with the tile's pixels staged in shared memory.
// - slide.cu: topk_slide_kernel (float accumulation, ps 3/5/7, 1 or 3 frames x channels), the
//   box sums with the tile's pixels in registers.
// - slide_warp.cu: topk_slide_warp_kernel, the same box sums with each warp keeping the
//   top-k lists of the queries it sums (no block barrier per round of offsets).
// - pix.cu: topk_pix_kernel, single-pixel patches.
// - pix_tc.cu: topk_pix_tc_kernel, the same on the matrix units (TF32) with float32
//   re-ranking, proven to give topk_pix_kernel's bits (opt-in, NAPARI_STNLS_CUDA_PIX_TC=1).
// - subpix.cu: topk_subpix_kernel, sub-pixel windows of dense query grids through the
//   whole-pixel box sums of a tile and the keys' pair sums (op search_topk_subpix), and
//   topk_subpix_slide_kernel, the same with the sliding kernel's box sums (slide.cuh).
// - dists.cu: search_dists and search_dists_backward.
//
// Patch values are read with the arithmetic of csrc/include/patch_loc.h (mirroring, x-then-y
// bilinear interpolation; patch.cuh here). Each top-k kernel returns the distances it
// selected by, summed in its own fixed order; search_dists returns those (its `given`) and
// differentiates them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/mirror.h"
#include "../../include/topk.cuh"
#include "../../include/topk.h"

namespace stnls::search_cuda {

constexpr int kThreads = 128;

// acc += the per-pixel term of the distance between values x and y
template <typename acc_t>
__device__ __forceinline__ void term(acc_t& acc, acc_t x, acc_t y, bool l2) {
  if (l2) {
    const acc_t e = x - y;
    acc += e * e;
  } else {
    acc += x * y;
  }
}

// queries and keys: channels-last videos (checks.h) on one CUDA device
inline void check_videos(const at::Tensor& queries, const at::Tensor& keys) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  TORCH_CHECK(queries.is_cuda(), "queries: expected a CUDA tensor");
  stnls::check_device(keys, queries, "keys");
}

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

// The host entry points other files call (defined in topk.cu, pix.cu, stage.cu, slide.cu).
std::tuple<at::Tensor, at::Tensor> search_topk_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& coords,
    const at::Tensor& centres, const at::Tensor& frames, const at::Tensor& offsets, int64_t ps,
    int64_t pt, int64_t dilation, int64_t nheads, int64_t k, bool l2, bool exclude_self);
std::tuple<at::Tensor, at::Tensor> search_topk_pix_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& centres,
    const at::Tensor& frames, at::IntArrayRef grid, int64_t stride0, int64_t nheads, int64_t k,
    bool l2, bool exclude_self, int64_t ws);
// the matrix-unit single-pixel kernel (pix_tc.cu): NAPARI_STNLS_CUDA_PIX_TC=1 (or 2, for the
// tests: the queries it would search again left out) where the search fits it, else 0
int pix_tc_mode(const at::Tensor& queries, int64_t stride0, int64_t s1, int64_t nheads,
                int64_t k, int64_t nt, int64_t ws);
std::tuple<at::Tensor, at::Tensor> search_topk_pix_tc_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& centres,
    const at::Tensor& frames, at::IntArrayRef grid, int64_t nheads, int64_t k, bool l2,
    bool exclude_self, int64_t ws, int mode);
std::tuple<at::Tensor, at::Tensor> search_topk_stage_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& centres,
    const at::Tensor& frames, at::IntArrayRef grid, int64_t stride0, int64_t ps, int64_t pt,
    int64_t dilation, int64_t nheads, int64_t k, bool l2, bool exclude_self, int64_t ws, int DH,
    int DW, int64_t kcap, int64_t smem, int fast);
std::tuple<at::Tensor, at::Tensor> search_topk_slide_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& centres,
    const at::Tensor& frames, at::IntArrayRef grid, int64_t ps, int64_t pt, int64_t nheads,
    int64_t k, bool l2, bool exclude_self, int64_t ws);
// topk_slide_warp_kernel (slide_warp.cu), which search_topk_slide_cuda may choose
int64_t slide_warp_kcap(int64_t ps, int64_t PC, int64_t ws);
int64_t slide_warp_smem(int64_t ps, int64_t PC, int64_t k, int64_t kcap, bool total);
int64_t slide_warp_blocks(at::IntArrayRef grid, int64_t ps, int64_t bh);
void search_topk_slide_warp_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                 const at::Tensor& cen, const at::Tensor& frm,
                                 at::IntArrayRef grid, int64_t ps, int64_t pt, int64_t nheads,
                                 int64_t k, bool l2, bool exclude_self, int64_t ws, int64_t kcap,
                                 at::Tensor& ids, at::Tensor& dists);

}  // namespace stnls::search_cuda
