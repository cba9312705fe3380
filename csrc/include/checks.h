// Argument checks of the CPU and CUDA hosts (each message names the argument and what was
// expected), among them the one check of a channels-last video.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "dispatch.h"
#include "patch_loc.h"  // kMaxPs, kMaxPt

namespace stnls {

// "[2, 3, 4]": a shape for an error message. (Messages once crashed on the device while
// formatting numbers; the cause was a static copy of libstdc++ linked into the module beside
// torch's shared one, which setup.py now prevents, not the IntArrayRef this replaced.)
inline std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline void check_patch_args(int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(ps >= 1 && ps <= kMaxPs, "ps: compiled kernels take 1 <= ps <= ", kMaxPs,
              ", got ", ps);
  TORCH_CHECK(pt >= 1 && pt <= kMaxPt, "pt: compiled kernels take 1 <= pt <= ", kMaxPt,
              ", got ", pt);
  TORCH_CHECK(dilation >= 1, "dilation: expected >= 1, got ", dilation);
}

inline void check_fold_args(int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(ps >= 1, "ps: expected >= 1, got ", ps);
  TORCH_CHECK(pt >= 1, "pt: expected >= 1, got ", pt);
  TORCH_CHECK(dilation >= 1, "dilation: expected >= 1, got ", dilation);
}

// A video the kernels read: channels-last (B, T, H, W, C), contiguous, floating point.
inline void check_video(const at::Tensor& v, const char* name) {
  TORCH_CHECK(v.dim() == 5, name, ": expected a channels-last video (B, T, H, W, C), got ",
              v.dim(), " dims");
  TORCH_CHECK(v.is_contiguous(), name, ": expected a contiguous tensor");
  TORCH_CHECK(v.is_floating_point(), name, ": expected a floating-point tensor");
}

// t on like's device. The dispatcher picks a kernel by the device of any one tensor argument,
// so a CUDA kernel checks that the others are on its device.
inline void check_device(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), name, ": expected a tensor on ", like.device(),
              ", got ", t.device());
}

// inds (B, nheads, Q, K, 3), int32/int64/float32/float64; returns it contiguous.
inline at::Tensor check_inds(const at::Tensor& inds, int64_t B) {
  TORCH_CHECK(inds.dim() == 5 && inds.size(4) == 3, "inds: expected (B, nheads, Q, K, 3), got ",
              stnls::shape_str(inds.sizes()));
  TORCH_CHECK(inds.size(0) == B, "inds: batch size ", inds.size(0), " does not match B=", B);
  const auto st = inds.scalar_type();
  TORCH_CHECK(st == at::kInt || st == at::kLong || st == at::kFloat || st == at::kDouble,
              "inds: expected int32, int64, float32 or float64, got ", st);
  return inds.contiguous();
}

// search_dists with `given`: a copy of the distances search_topk returned at these positions,
// after checking that they are the (B, nheads, Q, k) distances of this search.
// search_positions(_int)'s arguments: ids (B, nheads, Q, k) int64, centres (B, Q, nt, 2) float,
// frames (Q, nt) int64, all on one device; ws >= 1, stride1 > 0 (an integer >= 1 for _int)
inline void check_positions_args(const at::Tensor& ids, const at::Tensor& centres,
                                 const at::Tensor& frames, int64_t ws, double stride1) {
  TORCH_CHECK(ids.dim() == 4 && ids.scalar_type() == at::kLong,
              "ids: expected (B, nheads, Q, k) int64, got ", ids.scalar_type(), " ",
              stnls::shape_str(ids.sizes()));
  TORCH_CHECK(frames.dim() == 2 && frames.scalar_type() == at::kLong && frames.size(0) == ids.size(2),
              "frames: expected (Q, nt) int64 with Q = ", ids.size(2), ", got ",
              stnls::shape_str(frames.sizes()));
  TORCH_CHECK(centres.dim() == 4 && centres.is_floating_point() && centres.size(0) == ids.size(0) &&
                  centres.size(1) == ids.size(2) && centres.size(2) == frames.size(1) &&
                  centres.size(3) == 2,
              "centres: expected (B, Q, nt, 2) floats matching ids and frames, got ",
              stnls::shape_str(centres.sizes()));
  TORCH_CHECK(centres.device() == ids.device() && frames.device() == ids.device(),
              "centres, frames: expected the device of ids, ", ids.device());
  TORCH_CHECK(ws >= 1 && stride1 > 0, "ws, stride1: expected ws >= 1 and stride1 > 0, got ", ws,
              ", ", stride1);
}

// search_centres' arguments: coords (Q, 3) int64, frames (Q, nt) int64 (ascending, within
// 0..T-1), fflow and bflow (B, T*H*W, 2) of one floating type, all on one device.
inline void check_centres_args(const at::Tensor& coords, const at::Tensor& frames,
                               const at::Tensor& fflow, const at::Tensor& bflow, int64_t T,
                               int64_t H, int64_t W) {
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3 && coords.scalar_type() == at::kLong,
              "coords: expected (Q, 3) int64, got ", coords.scalar_type(), " ",
              stnls::shape_str(coords.sizes()));
  TORCH_CHECK(frames.dim() == 2 && frames.scalar_type() == at::kLong && frames.size(0) == coords.size(0),
              "frames: expected (Q, nt) int64 with Q = ", coords.size(0), ", got ",
              stnls::shape_str(frames.sizes()));
  TORCH_CHECK(T >= 1 && H >= 1 && W >= 1, "T, H, W: expected positive sizes");
  for (const auto* f : {&fflow, &bflow})
    TORCH_CHECK(f->dim() == 3 && f->size(1) == T * H * W && f->size(2) == 2 && f->is_floating_point() &&
                    f->scalar_type() == fflow.scalar_type() && f->size(0) == fflow.size(0),
                "fflow, bflow: expected (B, T*H*W, 2) floats of one type, got ",
                stnls::shape_str(f->sizes()));
  TORCH_CHECK(frames.device() == coords.device() && fflow.device() == coords.device() &&
                  bflow.device() == coords.device(),
              "frames, fflow, bflow: expected the device of coords, ", coords.device());
}

inline at::Tensor given_dists(const at::Tensor& given, const at::Tensor& queries,
                              const at::Tensor& kpos) {
  const auto acc = acc_type(queries);
  TORCH_CHECK(given.dim() == 4 && given.sizes() == kpos.sizes().slice(0, 4),
              "given: expected the (B, nheads, Q, k) shape of kpos, got ",
              stnls::shape_str(given.sizes()));
  TORCH_CHECK(given.scalar_type() == acc && given.device() == queries.device(),
              "given: expected ", acc, " distances on ", queries.device());
  return given.clone(at::MemoryFormat::Contiguous);
}

}  // namespace stnls
