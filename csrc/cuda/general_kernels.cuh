// The general path's kernels (any dtype including fp64, any T, K, channels, trailing dims): the term
// transforms and GEMMs as plain FMA GEMMs over 64 x 64 tiles, 256 threads with 4 x 4 outputs each.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"
#include "sm80.cuh"
#include "terms.cuh"

namespace dsno_kernels {
namespace {  // included by spectral_time_conv_cuda.cu only

constexpr int kGemmTile = 64, kGemmK = 16, kGemmThreads = 256;

template <typename acc_t>
struct RowMajorA {  // A[m, k] = p[m * ld + k]
  const acc_t* p;
  int64_t ld;
  __device__ acc_t operator()(int64_t m, int64_t k) const { return p[m * ld + k]; }
};
template <typename acc_t>
struct RowsB {  // B[k, c] = p[k * ld + c]
  const acc_t* p;
  int64_t ld;
  __device__ int64_t column(int64_t c) const { return c; }
  __device__ acc_t operator()(int64_t base, int64_t k) const { return p[k * ld + base]; }
};
template <typename acc_t>
struct ColumnsB {  // B[k, c] = p[c * ld + k]
  const acc_t* p;
  int64_t ld;
  __device__ int64_t column(int64_t c) const { return c * ld; }
  __device__ acc_t operator()(int64_t base, int64_t k) const { return p[base + k]; }
};
// Column c = channel * columns + n of a [B, T, C, P] tensor over the batch items [batch0, ...), n = b * P + p;
// the row index is the time step.
struct PixelColumns {
  int64_t T, C, P, columns, batch0;
  __device__ int64_t offset(int64_t c) const {
    const int64_t channel = c / columns, n = c - channel * columns;
    const int64_t b = batch0 + n / P, pixel = n % P;
    return (b * T * C + channel) * P + pixel;
  }
  __device__ int64_t time_stride() const { return C * P; }
};
template <typename scalar_t, typename acc_t>
struct PixelsB {
  const scalar_t* p;
  PixelColumns geo;
  __device__ int64_t column(int64_t c) const { return geo.offset(c); }
  __device__ acc_t operator()(int64_t base, int64_t t) const {
    return static_cast<acc_t>(Num<scalar_t>::to_acc(p[base + t * geo.time_stride()]));
  }
};
template <typename acc_t>
struct RowMajorC {
  acc_t* p;
  int64_t ld;
  __device__ int64_t column(int64_t c) const { return c; }
  __device__ void store(int64_t base, int64_t m, acc_t v) const { p[m * ld + base] = v; }
};
template <typename scalar_t, typename acc_t>
struct PixelsC {  // out[b, t, channel, pixel] = epilogue(v, aux[...]), t = the row index
  scalar_t* out;
  const scalar_t* aux;
  PixelColumns geo;
  int epilogue;
  acc_t slope;
  __device__ int64_t column(int64_t c) const { return geo.offset(c); }
  __device__ void store(int64_t base, int64_t t, acc_t v) const {
    const int64_t offset = base + t * geo.time_stride();
    const acc_t a = epilogue == kStore ? acc_t(0) : static_cast<acc_t>(Num<scalar_t>::to_acc(aux[offset]));
    const acc_t y = apply_epilogue(epilogue, v, a, slope);
    out[offset] = Num<scalar_t>::from_acc(static_cast<typename Num<scalar_t>::acc>(y));
  }
};

// C[m, c] = sum_{k_begin <= k < k_end} A[m, k] B[k, c] for this block's 64 x 64 tile (grid x: columns, y: rows).
template <typename acc_t, typename LoadA, typename LoadB, typename StoreC>
__device__ void gemm_tile(const LoadA& A, const LoadB& B, const StoreC& C, int64_t M, int64_t N, int64_t k_begin,
                          int64_t k_end) {
  __shared__ acc_t As[kGemmK][kGemmTile + 1];
  __shared__ acc_t Bs[kGemmK][kGemmTile];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmTile, n0 = static_cast<int64_t>(blockIdx.x) * kGemmTile;
  const int b_col = tid % kGemmTile;
  const bool b_col_ok = n0 + b_col < N;
  const int64_t b_base = b_col_ok ? B.column(n0 + b_col) : 0;
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kGemmK) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int a_row = tid / kGemmK + 16 * r, a_k = tid % kGemmK;
      const int64_t m = m0 + a_row, k = k0 + a_k;
      As[a_k][a_row] = (m < M && k < k_end) ? A(m, k) : acc_t(0);
      const int b_k = tid / kGemmTile + 4 * r;
      const int64_t kb = k0 + b_k;
      Bs[b_k][b_col] = (b_col_ok && kb < k_end) ? B(b_base, kb) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmK; ++kk) {
      acc_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t c = n0 + tx + 16 * j;
    if (c >= N) continue;
    const int64_t base = C.column(c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      if (m < M) C.store(base, m, acc[i][j]);
    }
  }
}

// X[q, channel, n] = sum_t basis[q, t] u[b, t, channel, pixel]
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kGemmThreads) general_analysis_kernel(const acc_t* basis, const scalar_t* u, acc_t* X,
                                                                       int64_t Q, PixelColumns geo) {
  const int64_t N = geo.C * geo.columns;
  gemm_tile<acc_t>(RowMajorA<acc_t>{basis, geo.T}, PixelsB<scalar_t, acc_t>{u, geo}, RowMajorC<acc_t>{X, N}, Q, N, 0,
                   geo.T);
}

// Z[q] = M_q X[q]: [Cv, columns] = [Cv, Cu] [Cu, columns], one term per grid z.
template <typename acc_t>
__global__ void __launch_bounds__(kGemmThreads) general_mix_kernel(const acc_t* weights, const acc_t* X, acc_t* Z,
                                                                  int64_t Cu, int64_t Cv, int64_t columns, int64_t q0) {
  const int64_t q = q0 + blockIdx.z;
  gemm_tile<acc_t>(RowMajorA<acc_t>{weights + q * Cv * Cu, Cu}, RowsB<acc_t>{X + q * Cu * columns, columns},
                   RowMajorC<acc_t>{Z + q * Cv * columns, columns}, Cv, columns, 0, Cu);
}

// out[b, t, channel, pixel] = epilogue(sum_q basis[t, q] Z[q, channel, n])
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kGemmThreads)
    general_synthesis_kernel(const acc_t* basis, const acc_t* Z, scalar_t* out, const scalar_t* aux, int64_t Q,
                             PixelColumns geo, int epilogue, acc_t slope) {
  const int64_t N = geo.C * geo.columns;
  gemm_tile<acc_t>(RowMajorA<acc_t>{basis, Q}, RowsB<acc_t>{Z, N},
                   PixelsC<scalar_t, acc_t>{out, aux, geo, epilogue, slope}, geo.T, N, 0, Q);
}

// partial[slot0 + split][q] = sum over this split's columns n of X[q, :, n] dY[q, :, n]^T; grid z = split * Q + q.
template <typename acc_t>
__global__ void __launch_bounds__(kGemmThreads)
    general_grad_weight_kernel(const acc_t* X, const acc_t* dY, acc_t* partial, int64_t Q, int64_t C_in, int64_t C_out,
                               int64_t columns, int64_t split_columns, int64_t slot0, int64_t z0) {
  const int64_t z = z0 + blockIdx.z, q = z % Q, split = z / Q;
  const int64_t k_begin = split * split_columns;
  const int64_t k_end = k_begin + split_columns < columns ? k_begin + split_columns : columns;
  gemm_tile<acc_t>(RowMajorA<acc_t>{X + q * C_in * columns, columns}, ColumnsB<acc_t>{dY + q * C_out * columns, columns},
                   RowMajorC<acc_t>{partial + ((slot0 + split) * Q + q) * C_in * C_out, C_out}, C_in, C_out, k_begin, k_end);
}

// [4][Q * T]: F' [Q, T], G' [T, Q], G'^T [Q, T], F'^T [T, Q].
template <typename acc_t>
__global__ void basis_kernel(acc_t* bases, int64_t Q, int64_t T) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= Q * T) return;
  const int64_t q = e / T, t = e % T;
  double f, g;
  term_basis(q, t, T, f, g);
  bases[q * T + t] = static_cast<acc_t>(f);
  bases[Q * T + t * Q + q] = static_cast<acc_t>(g);
  bases[2 * Q * T + q * T + t] = static_cast<acc_t>(g);
  bases[3 * Q * T + t * Q + q] = static_cast<acc_t>(f);
}

}  // namespace
}  // namespace dsno_kernels
