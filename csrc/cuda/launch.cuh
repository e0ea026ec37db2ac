// Host side of the kernels: the call's shape, device facts, and one launcher per kernel family (the
// fused apply and grad_weight kernels, the general path's kernel sequences, the shared term kernels).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "../common.h"
#include "fused_kernels.cuh"
#include "general_kernels.cuh"
#include "sm80.cuh"
#include "terms.cuh"

namespace dsno_kernels {
namespace {  // included by spectral_time_conv_cuda.cu only

constexpr int64_t kMaxGridZ = 65535;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kGeneralBufferBytes = int64_t(1) << 30;

// The call's sizes and its number of Gauss terms Q.
struct Shape : Dims {
  int64_t Q;
};

Shape describe(const at::Tensor& x, const at::Tensor& weight) {
  const Dims d = describe_dims(x, weight);
  return {d, num_terms(d.T, d.K)};
}

struct DeviceInfo {
  int sm_count, major, smem_optin;
};

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it == cache.end()) {
    DeviceInfo info{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    it = cache.emplace(device, info).first;
  }
  return it->second;
}

// Raises a kernel's dynamic shared memory limit on the current device (once per kernel, device and size).
void allow_dynamic_smem(const void* kernel, int64_t bytes) {
  static std::mutex mutex;
  static std::unordered_map<const void*, std::unordered_map<int, int64_t>> granted;
  int device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  int64_t& limit = granted[kernel][device];
  if (bytes > limit) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    limit = bytes;
  }
}

// Blocks of `kernel` (kFusedThreads threads, `bytes` of dynamic shared memory) resident on the whole device.
// Cached, so that warm calls make no CUDA calls but cudaGetDevice (CUDA graph capture allows that).
int64_t resident_blocks(const void* kernel, int64_t bytes, const DeviceInfo& info) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int64_t>, int> per_sm_cache;
  int device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = per_sm_cache.find({kernel, device, bytes});
  if (it == per_sm_cache.end()) {
    allow_dynamic_smem(kernel, bytes);
    int per_sm = 0;
    C10_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFusedThreads, static_cast<size_t>(bytes)));
    it = per_sm_cache.emplace(std::make_tuple(kernel, device, bytes), std::max(per_sm, 1)).first;
  }
  return static_cast<int64_t>(it->second) * info.sm_count;
}

template <typename scalar_t>
at::ScalarType scalar_type_of() {
  if constexpr (std::is_same<scalar_t, double>::value) return at::kDouble;
  if constexpr (std::is_same<scalar_t, float>::value) return at::kFloat;
  if constexpr (std::is_same<scalar_t, __half>::value) return at::kHalf;
  return at::kBFloat16;
}

template <typename scalar_t>
const scalar_t* ptr(const at::Tensor& t) {
  return reinterpret_cast<const scalar_t*>(t.const_data_ptr());
}
template <typename scalar_t>
scalar_t* mutable_ptr(at::Tensor& t) {
  return reinterpret_cast<scalar_t*>(t.mutable_data_ptr());
}

// M_q for all terms: [Q, rows, cols_pad] in dst_t (see term_weights_kernel).
template <typename src_t, typename dst_t>
at::Tensor term_weights(const at::Tensor& weight, const Shape& s, bool adjoint, int64_t col_align, bool round_tf32,
                        cudaStream_t stream) {
  const int64_t rows = adjoint ? s.C_in : s.C_out, cols = adjoint ? s.C_out : s.C_in;
  const int64_t cols_pad = ceil_div(cols, col_align) * col_align;
  at::Tensor out = at::empty({s.Q, rows, cols_pad}, weight.options().dtype(scalar_type_of<dst_t>()));
  if (out.numel() == 0) return out;
  TORCH_CHECK(ceil_div(rows, 32) <= kMaxGridY, "too many channels for the CUDA kernels: ", rows);
  for (int64_t q0 = 0; q0 < s.Q; q0 += kMaxGridZ) {
    const dim3 grid(static_cast<unsigned>(ceil_div(cols_pad, 32)), static_cast<unsigned>(ceil_div(rows, 32)),
                    static_cast<unsigned>(std::min(kMaxGridZ, s.Q - q0)));
    term_weights_kernel<src_t, dst_t><<<grid, dim3(32, 8), 0, stream>>>(
        ptr<src_t>(weight), mutable_ptr<dst_t>(out), s.C_in, s.C_out, s.K, s.T, adjoint, cols_pad, round_tf32, q0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

template <typename acc_t, typename scalar_t>
void launch_grad_weight_reduce(const at::Tensor& partial, int64_t slots, const Shape& s, at::Tensor& grad_weight,
                               cudaStream_t stream) {
  const int64_t n = s.C_in * s.C_out * s.K;
  constexpr int kThreads = 256;
  grad_weight_reduce_kernel<acc_t, scalar_t><<<static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0, stream>>>(
      ptr<acc_t>(partial), mutable_ptr<scalar_t>(grad_weight), slots, s.Q, s.C_in, s.C_out, s.K, s.T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Host copies of the fused kernels' basis tables, [t][q], zero past T and past the terms in use.
void fill_fused_bases(const Shape& s, bool adjoint, float (&in)[kMaxFusedT][kFusedTerms],
                      float (&out)[kMaxFusedT][kFusedTerms]) {
  for (int t = 0; t < kMaxFusedT; ++t) {
    for (int q = 0; q < kFusedTerms; ++q) {
      double f = 0.0, g = 0.0;
      if (t < s.T && q < s.Q) term_basis(q, t, s.T, f, g);
      in[t][q] = static_cast<float>(adjoint ? g : f);
      out[t][q] = static_cast<float>(adjoint ? f : g);
    }
  }
}

template <Math kMath, typename scalar_t>
void launch_fused_apply(const Shape& s, const at::Tensor& u, const at::Tensor& weight, bool adjoint, int epilogue,
                        const at::Tensor* aux, at::Tensor& out, double slope, int stages, const DeviceInfo& info,
                        cudaStream_t stream) {
  using Tile = ApplyTile<scalar_t>;
  const int64_t Cu = adjoint ? s.C_out : s.C_in, Cv = adjoint ? s.C_in : s.C_out;
  const at::Tensor w = term_weights<scalar_t, scalar_t>(weight, s, adjoint, Tile::kVec, kMath == Math::kTf32, stream);
  ApplyParams p{};
  p.u = u.const_data_ptr();
  p.weights = w.const_data_ptr();
  p.aux = aux != nullptr ? aux->const_data_ptr() : nullptr;
  p.out = out.mutable_data_ptr();
  p.T = s.T;
  p.Cu = Cu;
  p.Cv = Cv;
  p.P = s.P;
  p.Cu_pad = w.size(2);
  p.columns = s.B * s.P;
  p.num_terms = static_cast<int>(s.Q);
  p.epilogue = epilogue;
  p.stages = stages;
  p.slope = static_cast<float>(slope);
  fill_fused_bases(s, adjoint, p.basis_in, p.basis_out);
  const int64_t tiles = ceil_div(Cv, Tile::kBM) * ceil_div(p.columns, Tile::kBN);
  TORCH_CHECK(tiles * ceil_div(Cu, Tile::kBK) <= INT32_MAX, "input too large for the fused CUDA kernel; "
              "DSNO_KERNELS_CUDA_PATH=general takes it");
  const int64_t smem = Tile::smem_bytes(s.T, stages);
  auto kernel = fused_apply_kernel<kMath, scalar_t>;
  const int64_t resident = resident_blocks(reinterpret_cast<const void*>(kernel), smem, info);
  const int64_t blocks = std::min(tiles, resident);  // persistent: every block resident, looping over tiles
  kernel<<<static_cast<unsigned>(blocks), kFusedThreads, static_cast<size_t>(smem), stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <Math kMath, typename scalar_t>
void launch_fused_grad_weight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_weight,
                              int stages, const DeviceInfo& info, cudaStream_t stream) {
  using Tile = GradWeightTile<scalar_t>;
  GradWeightParams p{};
  p.x = x.const_data_ptr();
  p.g = g.const_data_ptr();
  p.T = s.T;
  p.C_in = s.C_in;
  p.C_out = s.C_out;
  p.P = s.P;
  p.columns = s.B * s.P;
  p.num_chunks = ceil_div(p.columns, Tile::kBK);
  p.num_terms = static_cast<int>(s.Q);
  p.stages = stages;
  float unused[kMaxFusedT][kFusedTerms];
  fill_fused_bases(s, false, p.basis_x, unused);  // F'[q, t]
  fill_fused_bases(s, true, p.basis_g, unused);   // G'[t, q]
  // About one wave of blocks, each reducing a fixed, contiguous range of pixel chunks.
  const int64_t tiles = ceil_div(s.C_in, Tile::kBM) * ceil_div(s.C_out, Tile::kBN);
  TORCH_CHECK(tiles <= INT32_MAX, "too many channels for the fused CUDA kernel");
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(p.num_chunks, info.sm_count / tiles));
  p.chunks_per_split = ceil_div(p.num_chunks, splits);
  splits = ceil_div(p.num_chunks, p.chunks_per_split);
  at::Tensor partial = at::empty({splits, s.Q, s.C_in, s.C_out}, x.options().dtype(at::kFloat));
  p.partial = partial.mutable_data_ptr<float>();
  const int64_t smem = Tile::smem_bytes(s.T, stages);
  auto kernel = fused_grad_weight_kernel<kMath, scalar_t>;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)), kFusedThreads, static_cast<size_t>(smem),
           stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_grad_weight_reduce<float, scalar_t>(partial, splits, s, grad_weight, stream);
}

template <typename acc_t>
at::Tensor general_bases(const Shape& s, const at::Tensor& like, cudaStream_t stream) {
  at::Tensor bases = at::empty({4, s.Q * s.T}, like.options().dtype(scalar_type_of<acc_t>()));
  constexpr int kThreads = 256;
  basis_kernel<acc_t><<<static_cast<unsigned>(ceil_div(s.Q * s.T, kThreads)), kThreads, 0, stream>>>(
      mutable_ptr<acc_t>(bases), s.Q, s.T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bases;
}

// Batch items per chunk so that buffers of `per_column` acc_t values per pixel column stay under the budget.
int64_t batch_chunk(const Shape& s, int64_t per_column, int64_t elem) {
  const int64_t per_item = std::max<int64_t>(1, per_column * s.P * elem);
  return std::max<int64_t>(1, std::min(s.B, kGeneralBufferBytes / per_item));
}

dim3 gemm_grid(int64_t M, int64_t N, int64_t Z) {
  TORCH_CHECK(ceil_div(M, kGemmTile) <= kMaxGridY && ceil_div(N, kGemmTile) <= INT32_MAX,
              "input too large for the general CUDA kernels");
  return dim3(static_cast<unsigned>(ceil_div(N, kGemmTile)), static_cast<unsigned>(ceil_div(M, kGemmTile)),
              static_cast<unsigned>(Z));
}

template <typename scalar_t>
void general_apply(const Shape& s, const at::Tensor& u, const at::Tensor& weight, bool adjoint, int epilogue,
                   const at::Tensor* aux, at::Tensor& out, double slope, cudaStream_t stream) {
  using acc_t = typename Num<scalar_t>::acc;
  const int64_t Cu = adjoint ? s.C_out : s.C_in, Cv = adjoint ? s.C_in : s.C_out;
  const at::Tensor bases = general_bases<acc_t>(s, u, stream);
  const acc_t* basis_in = ptr<acc_t>(bases) + (adjoint ? 2 : 0) * s.Q * s.T;
  const acc_t* basis_out = ptr<acc_t>(bases) + (adjoint ? 3 : 1) * s.Q * s.T;
  const at::Tensor w = term_weights<scalar_t, acc_t>(weight, s, adjoint, 1, false, stream);
  const int64_t chunk = batch_chunk(s, s.Q * (Cu + Cv), sizeof(acc_t));
  const auto acc_options = u.options().dtype(scalar_type_of<acc_t>());
  at::Tensor X = at::empty({s.Q * Cu * chunk * s.P}, acc_options);
  at::Tensor Z = at::empty({s.Q * Cv * chunk * s.P}, acc_options);
  const scalar_t* aux_ptr = aux != nullptr ? ptr<scalar_t>(*aux) : nullptr;
  for (int64_t b0 = 0; b0 < s.B; b0 += chunk) {
    const int64_t columns = std::min(chunk, s.B - b0) * s.P;
    const PixelColumns in_geo{s.T, Cu, s.P, columns, b0}, out_geo{s.T, Cv, s.P, columns, b0};
    general_analysis_kernel<scalar_t, acc_t><<<gemm_grid(s.Q, Cu * columns, 1), kGemmThreads, 0, stream>>>(
        basis_in, ptr<scalar_t>(u), mutable_ptr<acc_t>(X), s.Q, in_geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int64_t q0 = 0; q0 < s.Q; q0 += kMaxGridZ) {
      general_mix_kernel<acc_t><<<gemm_grid(Cv, columns, std::min(kMaxGridZ, s.Q - q0)), kGemmThreads, 0, stream>>>(
          ptr<acc_t>(w), ptr<acc_t>(X), mutable_ptr<acc_t>(Z), Cu, Cv, columns, q0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    general_synthesis_kernel<scalar_t, acc_t><<<gemm_grid(s.T, Cv * columns, 1), kGemmThreads, 0, stream>>>(
        basis_out, ptr<acc_t>(Z), mutable_ptr<scalar_t>(out), aux_ptr, s.Q, out_geo, epilogue,
        static_cast<acc_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void general_grad_weight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_weight,
                         const DeviceInfo& info, cudaStream_t stream) {
  using acc_t = typename Num<scalar_t>::acc;
  const at::Tensor bases = general_bases<acc_t>(s, x, stream);
  const int64_t chunk = batch_chunk(s, s.Q * (s.C_in + s.C_out), sizeof(acc_t));
  const int64_t chunk_columns = chunk * s.P;
  // Enough (term, column-range) slots to give every SM two blocks, within grid z's limit.
  const int64_t tiles = ceil_div(s.C_in, kGemmTile) * ceil_div(s.C_out, kGemmTile) * s.Q;
  int64_t splits = std::max<int64_t>(1, ceil_div(2 * info.sm_count, tiles));
  splits = std::min({splits, ceil_div(chunk_columns, kGemmTile), std::max<int64_t>(1, kMaxGridZ / s.Q)});
  const int64_t split_columns = ceil_div(chunk_columns, splits);
  const int64_t num_chunks = ceil_div(s.B, chunk);
  const auto acc_options = x.options().dtype(scalar_type_of<acc_t>());
  at::Tensor X = at::empty({s.Q * s.C_in * chunk_columns}, acc_options);
  at::Tensor dY = at::empty({s.Q * s.C_out * chunk_columns}, acc_options);
  at::Tensor partial = at::empty({num_chunks * splits, s.Q, s.C_in, s.C_out}, acc_options);
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t b0 = c * chunk, columns = std::min(chunk, s.B - b0) * s.P;
    const PixelColumns x_geo{s.T, s.C_in, s.P, columns, b0}, g_geo{s.T, s.C_out, s.P, columns, b0};
    general_analysis_kernel<scalar_t, acc_t><<<gemm_grid(s.Q, s.C_in * columns, 1), kGemmThreads, 0, stream>>>(
        ptr<acc_t>(bases), ptr<scalar_t>(x), mutable_ptr<acc_t>(X), s.Q, x_geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    general_analysis_kernel<scalar_t, acc_t><<<gemm_grid(s.Q, s.C_out * columns, 1), kGemmThreads, 0, stream>>>(
        ptr<acc_t>(bases) + 2 * s.Q * s.T, ptr<scalar_t>(g), mutable_ptr<acc_t>(dY), s.Q, g_geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t z_total = splits * s.Q;
    for (int64_t z0 = 0; z0 < z_total; z0 += kMaxGridZ) {
      general_grad_weight_kernel<acc_t>
          <<<gemm_grid(s.C_in, s.C_out, std::min(kMaxGridZ, z_total - z0)), kGemmThreads, 0, stream>>>(
              ptr<acc_t>(X), ptr<acc_t>(dY), mutable_ptr<acc_t>(partial), s.Q, s.C_in, s.C_out, columns, split_columns,
              c * splits, z0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  launch_grad_weight_reduce<acc_t, scalar_t>(partial, num_chunks * splits, s, grad_weight, stream);
}

}  // namespace
}  // namespace dsno_kernels
