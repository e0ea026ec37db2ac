// The Gauss terms of the truncated real DFT, shared by host and device, and the two kernels that both
// paths use to move weights into term form and grad_weight back out of it.
//
// Per pixel column the layer is three linear maps (see dsno_kernels/backends/reference.py): a truncated real DFT
// along T, a complex channel mix per mode k, and the inverse DFT. The kernels compute the complex products
// with Gauss's three real multiplications, so every piece is one real GEMM per *term* q. (A term is one
// row of reference.py's F in Gauss's form, where a complex mode has three rows instead of two: Q terms where
// reference.py has R rows; the cpu backend's "products" are these GEMMs where it takes Gauss's form.)
//
//   real mode k (DC / Nyquist):  one term    F'_q = Fr,       W_q = Wr,        G'_q = Gr
//   complex mode k:            three terms   F'_q = Fr,       W_q = Wr,        G'_q = Gr - Gi
//                                            F'_q = Fi,       W_q = Wi,        G'_q = -Gr - Gi
//                                            F'_q = Fr + Fi,  W_q = Wr + Wi,   G'_q = Gi
//
// with Fr = cos a, Fi = -sin a, Gr = (c_k / T) cos a, Gi = -(c_k / T) sin a, a = 2 pi k t / T. Then
//
//   y[t] = sum_q G'_q[t] W_q^T X_q,   X_q = sum_t F'_q[t] x[t]        (Q terms: Q = 4 for T = 4, K = 2)
//
// which is Yr = Wr Xr - Wi Xi and Yi = (Wr + Wi)(Xr + Xi) - Wr Xr - Wi Xi recombined in the inverse DFT:
// 4 C_in C_out multiply-adds per pixel instead of 5 for T = 4, K = 2. Every op is an instance of
//
//   apply:    out = epilogue(sum_q Bout[:, q] (M_q (sum_t Bin[q, t] u[t])))
//     forward:  u = x,  Bin = F',    M_q = W_q^T, Bout = G'
//     adjoint:  u = g,  Bin = G'^T,  M_q = W_q,   Bout = F'^T      (dx; g = dy, or dy * LeakyReLU'(s))
//   grad_weight:  grad_W_q = sum over pixels (F'_q x)(G'_q^T g)^T,
//                 grad_Wr = grad_W_re + grad_W_sum, grad_Wi = grad_W_im + grad_W_sum
//
// Epilogues: store; time_conv's x + leaky_relu(s); the LeakyReLU mask dy * (s > 0 ? 1 : slope) that
// recomputes s for the backward; dx + dy (the residual's gradient).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common.h"
#include "sm80.cuh"

namespace dsno_kernels {
namespace {  // included by spectral_time_conv_cuda.cu only

// Index of mode k's first term: mode 0 has one term, modes 1 .. K-1 three (a Nyquist mode is always last).
__host__ __device__ inline int64_t term_base(int64_t k) { return k == 0 ? 0 : 3 * k - 2; }

inline int64_t num_terms(int64_t T, int64_t K) { return term_base(K - 1) + (mode_is_real(K - 1, T) ? 1 : 3); }

enum TermPart : int { kPartReal = 0, kPartImag = 1, kPartSum = 2 };

__host__ __device__ inline void term_mode(int64_t q, int64_t& k, int& part) {
  if (q == 0) {
    k = 0;
    part = kPartReal;
  } else {
    k = (q - 1) / 3 + 1;
    part = static_cast<int>((q - 1) % 3);
  }
}

// F'_q[t] (analysis) and G'_q[t] (synthesis) of term q.
__host__ __device__ inline void term_basis(int64_t q, int64_t t, int64_t T, double& analysis, double& synthesis) {
  int64_t k;
  int part;
  term_mode(q, k, part);
  // k * t reduced mod T first keeps the angle exact for large T; the angle is 2 pi * turns.
  const double half_turns = 2.0 * static_cast<double>((k * t) % T) / static_cast<double>(T);
#ifdef __CUDA_ARCH__
  double s, c;
  sincospi(half_turns, &s, &c);
#else
  constexpr double kPi = 3.14159265358979323846;
  const double s = std::sin(kPi * half_turns), c = std::cos(kPi * half_turns);
#endif
  const double scale = (mode_is_real(k, T) ? 1.0 : 2.0) / static_cast<double>(T);
  const double fr = c, fi = -s, gr = scale * c, gi = -scale * s;
  if (mode_is_real(k, T)) {
    analysis = fr;
    synthesis = gr;
  } else if (part == kPartReal) {
    analysis = fr;
    synthesis = gr - gi;
  } else if (part == kPartImag) {
    analysis = fi;
    synthesis = -gr - gi;
  } else {
    analysis = fr + fi;
    synthesis = gi;
  }
}


// out[q][r][c] (c < cols_pad): the term-q matrix M_q, rows r = output channels (forward: M_q = W_q^T) or
// input channels (adjoint: M_q = W_q), zero past the real columns. 32 x 32 tiles through shared memory
// so both the weight reads (along C_out) and the writes (along c) are coalesced.
template <typename src_t, typename dst_t>
__global__ void term_weights_kernel(const src_t* weight, dst_t* out, int64_t C_in, int64_t C_out, int64_t K,
                                    int64_t T, bool adjoint, int64_t cols_pad, bool round_tf32, int64_t q0) {
  using acc_t = typename Num<src_t>::acc;
  __shared__ acc_t tile[32][33];
  const int64_t q = q0 + blockIdx.z;
  int64_t k;
  int part;
  term_mode(q, k, part);
  const int64_t rows = adjoint ? C_in : C_out;
  const int64_t r_tile = static_cast<int64_t>(blockIdx.y) * 32, c_tile = static_cast<int64_t>(blockIdx.x) * 32;
  const int64_t i_tile = adjoint ? r_tile : c_tile, o_tile = adjoint ? c_tile : r_tile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int j = ty; j < 32; j += 8) {  // tile[i - i_tile][o - o_tile]
    const int64_t i = i_tile + j, o = o_tile + tx;
    acc_t v = 0;
    if (i < C_in && o < C_out) {
      const src_t* w = weight + ((i * C_out + o) * K + k) * 2;
      const acc_t wr = Num<src_t>::to_acc(w[0]), wi = Num<src_t>::to_acc(w[1]);
      v = part == kPartReal ? wr : (part == kPartImag ? wi : wr + wi);
    }
    tile[j][tx] = v;
  }
  __syncthreads();
  for (int j = ty; j < 32; j += 8) {
    const int64_t r = r_tile + j, c = c_tile + tx;
    if (r >= rows || c >= cols_pad) continue;
    acc_t v = adjoint ? tile[j][tx] : tile[tx][j];
    if constexpr (std::is_same<acc_t, float>::value) {
      if (round_tf32) v = round_to_tf32(v);
    }
    out[(q * rows + r) * cols_pad + c] = Num<dst_t>::from_acc(static_cast<typename Num<dst_t>::acc>(v));
  }
}

// grad_weight[i, o, k, :] from the per-slot term sums partial[slot][q][i][o], slots added in order.
template <typename acc_t, typename scalar_t>
__global__ void grad_weight_reduce_kernel(const acc_t* partial, scalar_t* grad_weight, int64_t slots, int64_t terms,
                                          int64_t C_in, int64_t C_out, int64_t K, int64_t T) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= C_in * C_out * K) return;
  const int64_t k = e % K, io = e / K;  // io = i * C_out + o
  const int64_t plane = C_in * C_out, q = term_base(k);
  acc_t re = 0, im = 0;
  for (int64_t s = 0; s < slots; ++s) {
    const acc_t* ps = partial + (s * terms + q) * plane + io;
    if (mode_is_real(k, T)) {
      re += ps[0];
    } else {
      const acc_t sum = ps[2 * plane];
      re += ps[0] + sum;
      im += ps[plane] + sum;
    }
  }
  grad_weight[2 * e] = Num<scalar_t>::from_acc(re);
  grad_weight[2 * e + 1] = Num<scalar_t>::from_acc(im);
}


}  // namespace
}  // namespace dsno_kernels
