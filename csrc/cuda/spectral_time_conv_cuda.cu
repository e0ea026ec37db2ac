// CUDA kernels of the dsno_kernels ops (schemas in csrc/spectral_time_conv.cpp).
//
//   x [B, T, C_in, *S], weight [C_in, C_out, K, 2]   ->   y [B, T, C_out, *S]
//
// Per pixel column the layer is three linear maps (see dsno_kernels/reference.py): a truncated real DFT
// along T, a complex channel mix per mode k, and the inverse DFT. The kernels compute the complex products
// with Gauss's three real multiplications, so every piece is one real GEMM per *term* q:
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
//   dweight:  dW_q = sum over pixels (F'_q x)(G'_q^T g)^T,  dWr = dW_re + dW_sum, dWi = dW_im + dW_sum
//
// Epilogues: store; time_conv's x + leaky_relu(s); the LeakyReLU mask dy * (s > 0 ? 1 : slope) that
// recomputes s for the backward; dx + dy (the residual's gradient).
//
// Two implementations of each:
//   fused (fp16/bf16/fp32, T <= 16, Q <= 4, pixel count a multiple of one 16-byte vector, aligned
//     pointers): one block owns 128 output channels x 64 pixel columns (columns run across the batch).
//     cp.async streams [T, 32 channels, 64 pixels] tiles of u (16-byte copies, several stages deep) and
//     the prepared term weights; the DFT is applied while moving the tile into the GEMM operand
//     (fp32 sums, rounded once); the Q GEMMs run on tensor cores (mma.sync m16n8k16 bf16/fp16, or
//     m16n8k8 tf32 for fp32) with fp32 accumulators in registers; the inverse DFT and the epilogue run
//     on the accumulators, staged through shared memory so y leaves in coalesced 16-byte stores. Blocks
//     are persistent and walk tiles output-channel block first, so the blocks of one pixel tile run
//     together and share u through L2: u is read from DRAM once, the output written once. fp32 uses tf32 unless DSNO_KERNELS_FP32=ieee selects exact fp32 FMAs. As in
//     any fp16 tensor-core GEMM, the DFT'd operands are fp16: sums over T of |x| must stay below 65504.
//     dweight: the same tiles over (C_in, C_out) with the pixels as the reduction, both operands
//     DFT'd on load, per-block partial sums over a fixed pixel range, then a second kernel that adds
//     the partials in a fixed order (deterministic, no atomics).
//   general (any dtype incl. fp64, any T, K, channels, trailing dims): the same terms as plain FMA GEMMs
//     (64 x 64 tiles) through fp32 (fp64) buffers: X = Bin u, Z_q = M_q X_q, out = epilogue(Bout Z),
//     over batch chunks that keep the buffers under 1 GiB.
// DSNO_KERNELS_CUDA_PATH=general forces the general path, =fused requires the fused one (an error names
// why an input does not qualify); both are for tests and benchmarks, the default "auto" picks.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the dsno_kernels CUDA kernels use cp.async, ldmatrix and bf16/tf32 mma.sync: build for sm_80 or newer"
#endif

namespace dsno_kernels {
namespace {

// ------------------------------------------------------------------------------------------------------
// Terms: the Gauss form of the truncated real DFT, shared by host and device.

__host__ __device__ inline bool mode_is_real(int64_t k, int64_t T) { return k == 0 || 2 * k == T; }

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

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

enum Epilogue : int {
  kStore = 0,          // out = s
  kResidualLeaky = 1,  // out = aux + leaky_relu(s)           time_conv forward (aux = x)
  kLeakyGrad = 2,      // out = aux * (s > 0 ? 1 : slope)      time_conv's dL/ds (aux = dy)
  kAddAux = 3,         // out = s + aux                        time_conv's dx (aux = dy)
};

template <typename acc_t>
__device__ __forceinline__ acc_t apply_epilogue(int kind, acc_t s, acc_t aux, acc_t slope) {
  switch (kind) {
    case kResidualLeaky:
      return aux + (s > acc_t(0) ? s : s * slope);
    case kLeakyGrad:
      return s > acc_t(0) ? aux : aux * slope;
    case kAddAux:
      return s + aux;
    default:
      return s;
  }
}

// ------------------------------------------------------------------------------------------------------
// Element types. The torch build defines __CUDA_NO_HALF_CONVERSIONS__ etc., so conversions are explicit.

template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  __device__ static float to_acc(float v) { return v; }
  __device__ static float from_acc(float v) { return v; }
};
template <>
struct Num<double> {
  using acc = double;
  __device__ static double to_acc(double v) { return v; }
  __device__ static double from_acc(double v) { return v; }
};
template <>
struct Num<__half> {
  using acc = float;
  __device__ static float to_acc(__half v) { return __half2float(v); }
  __device__ static __half from_acc(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  __device__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

// 16-byte vectors of 8 half-precision or 4 fp32 values, unpacked to fp32.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kSize = 4;
  __device__ static void unpack(const uint4& v, float (&f)[4]) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
  __device__ static uint4 pack(const float (&f)[4]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
  // Two consecutive values, as the mma accumulator layout holds them.
  __device__ static void store_pair(float* dst, float a, float b) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  }
};
template <>
struct Vec16<__half> {
  static constexpr int kSize = 8;
  __device__ static void unpack(const uint4& v, float (&f)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      __half2 h;
      std::memcpy(&h, &words[j], 4);
      const float2 p = __half22float2(h);
      f[2 * j] = p.x;
      f[2 * j + 1] = p.y;
    }
  }
  __device__ static uint4 pack(const float (&f)[8]) {
    unsigned words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const __half2 h = __floats2half2_rn(f[2 * j], f[2 * j + 1]);
      std::memcpy(&words[j], &h, 4);
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
  __device__ static void store_pair(__half* dst, float a, float b) {
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
  }
};
template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int kSize = 8;
  __device__ static void unpack(const uint4& v, float (&f)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      __nv_bfloat162 h;
      std::memcpy(&h, &words[j], 4);
      const float2 p = __bfloat1622float2(h);
      f[2 * j] = p.x;
      f[2 * j + 1] = p.y;
    }
  }
  __device__ static uint4 pack(const float (&f)[8]) {
    unsigned words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
      std::memcpy(&words[j], &h, 4);
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
  __device__ static void store_pair(__nv_bfloat16* dst, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
  }
};

// tf32 operands are fp32 bit patterns rounded to 10 mantissa bits (round to nearest, ties away).
__device__ __forceinline__ float round_to_tf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
}

// ------------------------------------------------------------------------------------------------------
// sm_80 primitives: cp.async, ldmatrix, mma.sync.

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes global -> shared without blocking; `valid == false` writes 16 zero bytes instead.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `pending` of this thread's committed copy groups are still in flight.
__device__ __forceinline__ void cp_async_wait(int pending) {
  switch (pending) {
    case 3:
      asm volatile("cp.async.wait_group 3;\n" ::: "memory");
      break;
    case 2:
      asm volatile("cp.async.wait_group 2;\n" ::: "memory");
      break;
    case 1:
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
      break;
    default:
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  }
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p))
               : "memory");
}

// d += a b for one 16 x 8 x 16 tile (a: 16 x 16 row-major fragment, b: 16 x 8 column fragment).
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                                            __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16x8x8_tf32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ------------------------------------------------------------------------------------------------------
// The fused kernels.

constexpr int kFusedThreads = 256;  // 8 warps: 4 along the 128 rows x 2 along the 64 columns, 32 x 32 each
constexpr int kFusedTerms = 4;      // accumulators held per block (Q <= 4; T = 4, K = 2 has Q = 4)
constexpr int kMaxFusedT = 16;
constexpr int kMaxStages = 4;

// How a block's GEMMs are computed: bf16/fp16 tensor cores, tf32 tensor cores, or exact fp32 FMAs.
enum class Math { kMma16, kTf32, kFma32 };

// Accumulator fragments: warp tile 32 x 32 = 2 (m16) x 4 (n8) mma tiles per term; element j of tile
// (mt, nt) sits at row 16 mt + lane / 4 + 8 (j / 2), column 8 nt + 2 (lane % 4) + j % 2 (mma's C layout).
using Accumulators = float[kFusedTerms][2][4][4];

// acc_q += A_q B_q over one stage of `kBK` reduced elements, for the q < num_terms in use.
//   A_q: row-major [rows][kBK] at a + q * a_term, row pitch a_pitch.
//   B_q: kBNMajor ? [columns][kBK] (pitch b_pitch) : [kBK][columns] (pitch b_pitch), at b + q * b_term.
template <Math kMath, typename scalar_t, int kBK, bool kBNMajor>
__device__ __forceinline__ void mma_stage(Accumulators& acc, const scalar_t* a, int a_pitch, int a_term,
                                          const scalar_t* b, int b_pitch, int b_term, int num_terms, int warp_m,
                                          int warp_n, int lane) {
  const int group = lane >> 2, quad = lane & 3;
  const int row0 = warp_m * 32, col0 = warp_n * 32;
  if constexpr (kMath == Math::kMma16) {
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
#pragma unroll
      for (int q = 0; q < kFusedTerms; ++q) {
        if (q >= num_terms) continue;
        const scalar_t* aq = a + q * a_term;
        const scalar_t* bq = b + q * b_term;
        unsigned af[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          ldmatrix_x4(af[mt], aq + (row0 + mt * 16 + (lane & 15)) * a_pitch + ks * 16 + (lane >> 4) * 8);
        unsigned bf[4][2];
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          unsigned r[4];
          if constexpr (kBNMajor) {
            ldmatrix_x4(r, bq + (col0 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * b_pitch + ks * 16 +
                               ((lane >> 3) & 1) * 8);
          } else {
            ldmatrix_x4_trans(r, bq + (ks * 16 + (lane & 15)) * b_pitch + col0 + np * 16 + (lane >> 4) * 8);
          }
          bf[2 * np][0] = r[0];
          bf[2 * np][1] = r[1];
          bf[2 * np + 1][0] = r[2];
          bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_16x8x16(acc[q][mt][nt], af[mt], bf[nt][0], bf[nt][1], scalar_t());
      }
    }
  } else if constexpr (kMath == Math::kTf32) {
    const unsigned* au = reinterpret_cast<const unsigned*>(a);
    const unsigned* bu = reinterpret_cast<const unsigned*>(b);
#pragma unroll
    for (int ks = 0; ks < kBK / 8; ++ks) {
      const int k0 = ks * 8;
#pragma unroll
      for (int q = 0; q < kFusedTerms; ++q) {
        if (q >= num_terms) continue;
        const unsigned* aq = au + q * a_term;
        const unsigned* bq = bu + q * b_term;
        unsigned af[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int r = row0 + mt * 16 + group;
          af[mt][0] = aq[r * a_pitch + k0 + quad];
          af[mt][1] = aq[(r + 8) * a_pitch + k0 + quad];
          af[mt][2] = aq[r * a_pitch + k0 + quad + 4];
          af[mt][3] = aq[(r + 8) * a_pitch + k0 + quad + 4];
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int c = col0 + nt * 8 + group;
          unsigned b0, b1;
          if constexpr (kBNMajor) {
            b0 = bq[c * b_pitch + k0 + quad];
            b1 = bq[c * b_pitch + k0 + quad + 4];
          } else {
            b0 = bq[(k0 + quad) * b_pitch + c];
            b1 = bq[(k0 + quad + 4) * b_pitch + c];
          }
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) mma_16x8x8_tf32(acc[q][mt][nt], af[mt], b0, b1);
        }
      }
    }
  } else {
    const float* af = reinterpret_cast<const float*>(a);
    const float* bf = reinterpret_cast<const float*>(b);
#pragma unroll 4
    for (int k = 0; k < kBK; ++k) {
#pragma unroll
      for (int q = 0; q < kFusedTerms; ++q) {
        if (q >= num_terms) continue;
        float av[2][2], bv[4][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) av[mt][h] = af[q * a_term + (row0 + mt * 16 + group + 8 * h) * a_pitch + k];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int c = col0 + nt * 8 + 2 * quad + j;
            bv[nt][j] = kBNMajor ? bf[q * b_term + c * b_pitch + k] : bf[q * b_term + k * b_pitch + c];
          }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[q][mt][nt][j] = fmaf(av[mt][j >> 1], bv[nt][j & 1], acc[q][mt][nt][j]);
      }
    }
  }
}

// The DFT applied while moving one 16-byte vector position from a staged [T][...] tile into the GEMM
// operand: dst[q] = sum_t basis[t][q] src[t] for the kFusedTerms terms, fp32 sums rounded once.
// basis is [kMaxFusedT][kFusedTerms] in shared memory (zero past T and past the terms in use).
template <typename scalar_t, bool kRoundTf32>
__device__ __forceinline__ void dft_vector(const scalar_t* src, int src_t_pitch, int T, const float* basis,
                                           scalar_t* dst, int dst_term_pitch) {
  constexpr int kVec = Vec16<scalar_t>::kSize;
  float sum[kFusedTerms][kVec];
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum[q][j] = 0.f;
  for (int t = 0; t < T; ++t) {
    float v[kVec];
    Vec16<scalar_t>::unpack(*reinterpret_cast<const uint4*>(src + t * src_t_pitch), v);
    const float4 f = *reinterpret_cast<const float4*>(basis + t * kFusedTerms);
    const float fq[kFusedTerms] = {f.x, f.y, f.z, f.w};
#pragma unroll
    for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum[q][j] = fmaf(fq[q], v[j], sum[q][j]);
  }
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q) {
    if constexpr (kRoundTf32) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum[q][j] = round_to_tf32(sum[q][j]);
    }
    *reinterpret_cast<uint4*>(dst + q * dst_term_pitch) = Vec16<scalar_t>::pack(sum[q]);
  }
}

// Copies a [kMaxFusedT][kFusedTerms] table from the kernel parameters to shared memory.
__device__ __forceinline__ void load_basis(float* dst, const float (&src)[kMaxFusedT][kFusedTerms]) {
  for (int e = threadIdx.x; e < kMaxFusedT * kFusedTerms; e += blockDim.x) {
    dst[e] = src[e / kFusedTerms][e % kFusedTerms];
  }
}

// Tile geometry of the fused apply kernel; all offsets are multiples of 16 bytes.
template <typename scalar_t>
struct ApplyTile {
  static constexpr int kElem = sizeof(scalar_t);
  static constexpr int kVec = 16 / kElem;     // elements per 16-byte vector
  static constexpr int kBM = 128;             // output channels per block
  static constexpr int kBN = 64;              // pixel columns per block
  static constexpr int kBK = 64 / kElem;      // reduced channels per stage (64 bytes of a weight row)
  static constexpr int kPitchA = kBK + kVec;  // +16 bytes: the 8 rows of an ldmatrix hit distinct banks
  static constexpr int kPitchX = kBN + 8;     // likewise for the DFT'd operand and the output staging
  static constexpr int64_t kWeightStage = int64_t(kFusedTerms) * kBM * kPitchA;
  static constexpr int64_t kOperand = int64_t(kFusedTerms) * kBK * kPitchX;
  static constexpr int64_t kOutputStage = int64_t(kBM) * kPitchX;
  __host__ __device__ static int64_t input_stage(int64_t T) { return T * kBK * kBN; }
  __host__ __device__ static int64_t stage(int64_t T) { return input_stage(T) + kWeightStage; }
  // The operand area doubles as the output staging tile.
  __host__ __device__ static int64_t smem_bytes(int64_t T, int stages) {
    return (stages * stage(T) + (kOperand > kOutputStage ? kOperand : kOutputStage)) * kElem;
  }
};

struct ApplyParams {
  const void* u;        // [B, T, Cu, P]
  const void* weights;  // [num_terms, Cv, Cu_pad]: M_q, rows contiguous, zero past Cu
  const void* aux;      // [B, T, Cv, P] for the epilogue, or nullptr
  void* out;            // [B, T, Cv, P]
  int64_t T, Cu, Cv, P, Cu_pad, columns;  // columns = B * P
  int num_terms, epilogue, stages;
  float slope;
  float basis_in[kMaxFusedT][kFusedTerms];   // Bin[q, t], stored [t][q]
  float basis_out[kMaxFusedT][kFusedTerms];  // Bout[t, q]
};

// Persistent: block b owns tiles b, b + gridDim.x, ... (tile = output-channel block fastest, so the blocks
// working at one time share pixel tiles of u through L2), and its copy pipeline runs over the sequence of
// (tile, channel chunk) steps, so the next tile's first chunks load during this tile's epilogue.
template <Math kMath, typename scalar_t>
__global__ void __launch_bounds__(kFusedThreads, 1) fused_apply_kernel(const ApplyParams p) {
  using Tile = ApplyTile<scalar_t>;
  constexpr int kVec = Tile::kVec, kBM = Tile::kBM, kBN = Tile::kBN, kBK = Tile::kBK;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(16) float basis_in[kMaxFusedT * kFusedTerms];
  __shared__ __align__(16) float basis_out[kMaxFusedT * kFusedTerms];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 3, warp_n = warp >> 2;
  const int T = static_cast<int>(p.T);
  const int64_t stage_elems = Tile::stage(T);
  const int64_t input_elems = Tile::input_stage(T);
  scalar_t* operand = smem + p.stages * stage_elems;  // [kFusedTerms][kBK][kPitchX]
  scalar_t* staging = operand;  // [kBM][kPitchX]: the output tile, once the tile's last GEMM has read operand
  const scalar_t* u = static_cast<const scalar_t*>(p.u);
  const scalar_t* w = static_cast<const scalar_t*>(p.weights);
  load_basis(basis_in, p.basis_in);
  load_basis(basis_out, p.basis_out);

  // Tile and step counts fit int (the host checks), which keeps the loop state small.
  const int m_tiles = static_cast<int>(ceil_div(p.Cv, kBM));
  const int num_tiles = m_tiles * static_cast<int>(ceil_div(p.columns, kBN));
  const int num_chunks = static_cast<int>(ceil_div(p.Cu, kBK));
  const int block = static_cast<int>(blockIdx.x), grid = static_cast<int>(gridDim.x);
  const int my_tiles = block < num_tiles ? (num_tiles - block + grid - 1) / grid : 0;
  const int num_steps = my_tiles * num_chunks;

  // Each thread moves one 16-byte vector per time step and stage: channel row load_row, pixels load_vec.
  constexpr int kVecsPerRow = kBN / kVec;
  static_assert(kBK * kVecsPerRow == kFusedThreads, "one input vector per thread and time step");
  const int load_row = tid / kVecsPerRow, load_vec = tid % kVecsPerRow;

  auto load_step = [&](int step, int stage) {
    const int tile = block + (step / num_chunks) * grid;
    const int64_t v0 = static_cast<int64_t>(tile % m_tiles) * kBM, n0 = static_cast<int64_t>(tile / m_tiles) * kBN;
    const int64_t i0 = static_cast<int64_t>(step % num_chunks) * kBK;
    scalar_t* input = smem + stage * stage_elems;
    scalar_t* weights = input + input_elems;
    const int64_t col = n0 + load_vec * kVec, channel = i0 + load_row;
    const bool ok = col < p.columns && channel < p.Cu;
    int64_t base = 0;  // offset of u[b, 0, channel, pixel]
    if (ok) {
      const int64_t b = col / p.P;
      base = b * p.T * p.Cu * p.P + channel * p.P + (col - b * p.P);
    }
    for (int t = 0; t < T; ++t) {
      const scalar_t* src = ok ? u + base + t * p.Cu * p.P : u;
      cp_async_16(input + (t * kBK + load_row) * kBN + load_vec * kVec, src, ok);
    }
    constexpr int kWeightVecsPerRow = kBK / kVec;
    for (int q = 0; q < p.num_terms; ++q) {
      for (int idx = tid; idx < kBM * kWeightVecsPerRow; idx += kFusedThreads) {
        const int row = idx / kWeightVecsPerRow, vec = idx % kWeightVecsPerRow;
        const int64_t out_row = v0 + row, w_col = i0 + vec * kVec;
        const bool w_ok = out_row < p.Cv && w_col < p.Cu_pad;
        const scalar_t* src = w_ok ? w + (q * p.Cv + out_row) * p.Cu_pad + w_col : w;
        cp_async_16(weights + (q * kBM + row) * Tile::kPitchA + vec * kVec, src, w_ok);
      }
    }
  };

  Accumulators acc;
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[q][mt][nt][j] = 0.f;

  const scalar_t* aux = static_cast<const scalar_t*>(p.aux);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int group = lane >> 2, quad = lane & 3;
  constexpr int kRowsPerPass = kFusedThreads / kVecsPerRow;
  const int store_vec = tid % kVecsPerRow, store_row0 = tid / kVecsPerRow;
  const float slope = p.slope;

  // Stage s % stages holds step s; copies run stages - 1 steps ahead.
  for (int s = 0; s < p.stages - 1; ++s) {
    if (s < num_steps) load_step(s, s);
    cp_async_commit();
  }
  __syncthreads();  // basis tables
  // (Nested loops rather than one loop over steps: the flat form made ptxas spill around the epilogue.)
  int step = 0;
  for (int my_tile = 0; my_tile < my_tiles; ++my_tile) {
    for (int chunk = 0; chunk < num_chunks; ++chunk, ++step) {
      cp_async_wait(p.stages - 2);  // this thread's copies of this step have landed
      __syncthreads();              // everyone's have, and everyone is done with the previous step
      if (step + p.stages - 1 < num_steps) load_step(step + p.stages - 1, (step + p.stages - 1) % p.stages);
      cp_async_commit();
      const scalar_t* input = smem + (step % p.stages) * stage_elems;
      dft_vector<scalar_t, kMath == Math::kTf32>(input + load_row * kBN + load_vec * kVec, kBK * kBN, T, basis_in,
                                                  operand + load_row * Tile::kPitchX + load_vec * kVec,
                                                  kBK * Tile::kPitchX);
      __syncthreads();
      mma_stage<kMath, scalar_t, kBK, false>(acc, input + input_elems, Tile::kPitchA, kBM * Tile::kPitchA, operand,
                                             Tile::kPitchX, kBK * Tile::kPitchX, p.num_terms, warp_m, warp_n, lane);
    }

    // The tile is complete: inverse DFT + epilogue, one time step at a time, accumulators -> staging tile ->
    // coalesced 16-byte stores.
    const int tile = block + my_tile * grid;
    const int64_t v0 = static_cast<int64_t>(tile % m_tiles) * kBM, n0 = static_cast<int64_t>(tile / m_tiles) * kBN;
    const int64_t store_col = n0 + store_vec * kVec;
    const bool store_col_ok = store_col < p.columns;
    int64_t store_base = 0;  // offset of out[b, 0, 0, pixel]
    if (store_col_ok) {
      const int64_t b = store_col / p.P;
      store_base = b * p.T * p.Cv * p.P + (store_col - b * p.P);
    }
    __syncthreads();  // staging aliases operand, which other warps may still be reading
    for (int t = 0; t < T; ++t) {
      const float4 g4 = *reinterpret_cast<const float4*>(basis_out + t * kFusedTerms);
      const float g[kFusedTerms] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int q = 0; q < kFusedTerms; ++q) {
              s0 = fmaf(g[q], acc[q][mt][nt][2 * h], s0);
              s1 = fmaf(g[q], acc[q][mt][nt][2 * h + 1], s1);
            }
            const int row = warp_m * 32 + mt * 16 + group + 8 * h, col = warp_n * 32 + nt * 8 + 2 * quad;
            Vec16<scalar_t>::store_pair(staging + row * Tile::kPitchX + col, s0, s1);
          }
      __syncthreads();
      if (store_col_ok) {
        for (int row = store_row0; row < kBM; row += kRowsPerPass) {
          const int64_t channel = v0 + row;
          if (channel >= p.Cv) break;
          const int64_t offset = store_base + (t * p.Cv + channel) * p.P;
          float s[kVec];
          Vec16<scalar_t>::unpack(*reinterpret_cast<const uint4*>(staging + row * Tile::kPitchX + store_vec * kVec),
                                  s);
          if (p.epilogue != kStore) {
            float a[kVec];
            Vec16<scalar_t>::unpack(*reinterpret_cast<const uint4*>(aux + offset), a);
#pragma unroll
            for (int j = 0; j < kVec; ++j) s[j] = apply_epilogue(p.epilogue, s[j], a[j], slope);
          }
          *reinterpret_cast<uint4*>(out + offset) = Vec16<scalar_t>::pack(s);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[q][mt][nt][j] = 0.f;
  }
  cp_async_wait(0);
}

// Tile geometry of the fused dweight kernel: rows = input channels, columns = output channels, the
// reduction runs over kBK pixel columns per stage.
template <typename scalar_t>
struct DweightTile {
  static constexpr int kElem = sizeof(scalar_t);
  static constexpr int kVec = 16 / kElem;
  static constexpr int kBM = 128;
  static constexpr int kBN = 64;
  static constexpr int kBK = 64 / kElem;
  static constexpr int kPitch = kBK + kVec;  // rows of the DFT'd operands
  static constexpr int64_t kOperandA = int64_t(kFusedTerms) * kBM * kPitch;
  static constexpr int64_t kOperandB = int64_t(kFusedTerms) * kBN * kPitch;
  __host__ __device__ static int64_t x_stage(int64_t T) { return T * kBM * kBK; }
  __host__ __device__ static int64_t stage(int64_t T) { return T * (kBM + kBN) * kBK; }
  __host__ __device__ static int64_t smem_bytes(int64_t T, int stages) {
    return (stages * stage(T) + kOperandA + kOperandB) * kElem;
  }
};

struct DweightParams {
  const void* x;   // [B, T, Cin, P]
  const void* g;   // [B, T, Cout, P]: dL/ds
  float* partial;  // [splits, num_terms, Cin, Cout]
  int64_t T, Cin, Cout, P, columns, num_chunks, chunks_per_split;
  int num_terms, stages;
  float basis_x[kMaxFusedT][kFusedTerms];  // F'[q, t], stored [t][q]
  float basis_g[kMaxFusedT][kFusedTerms];  // G'[t, q]
};

template <Math kMath, typename scalar_t>
__global__ void __launch_bounds__(kFusedThreads, 1) fused_dweight_kernel(const DweightParams p) {
  using Tile = DweightTile<scalar_t>;
  constexpr int kVec = Tile::kVec, kBM = Tile::kBM, kBN = Tile::kBN, kBK = Tile::kBK;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(16) float basis_x[kMaxFusedT * kFusedTerms];
  __shared__ __align__(16) float basis_g[kMaxFusedT * kFusedTerms];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 3, warp_n = warp >> 2;
  const int64_t i_tiles = ceil_div(p.Cin, kBM);
  const int64_t i0 = (blockIdx.x % i_tiles) * kBM, o0 = (blockIdx.x / i_tiles) * kBN;
  const int64_t chunk_begin = blockIdx.y * p.chunks_per_split;
  const int64_t split_end = chunk_begin + p.chunks_per_split;
  const int64_t chunk_end = split_end < p.num_chunks ? split_end : p.num_chunks;
  const int T = static_cast<int>(p.T);
  const int64_t stage_elems = Tile::stage(T), x_elems = Tile::x_stage(T);
  scalar_t* operand_a = smem + p.stages * stage_elems;  // [kFusedTerms][kBM][kPitch]: F'_q x
  scalar_t* operand_b = operand_a + Tile::kOperandA;    // [kFusedTerms][kBN][kPitch]: G'_q^T g
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* g = static_cast<const scalar_t*>(p.g);
  load_basis(basis_x, p.basis_x);
  load_basis(basis_g, p.basis_g);

  // Each thread moves x rows tid / 4 and tid / 4 + 64 and g row tid / 4, pixel vector tid % 4.
  constexpr int kVecsPerRow = kBK / kVec;
  static_assert(kVecsPerRow == 4 && kBN * kVecsPerRow == kFusedThreads && kBM == 2 * kBN, "thread mapping");
  const int vec = tid % kVecsPerRow, row = tid / kVecsPerRow;

  auto load_stage = [&](int64_t chunk, int stage) {
    scalar_t* xs = smem + stage * stage_elems;
    scalar_t* gs = xs + x_elems;
    const int64_t col = chunk * kBK + vec * kVec;
    const bool col_ok = col < p.columns;
    int64_t b = 0, pixel = 0;
    if (col_ok) {
      b = col / p.P;
      pixel = col - b * p.P;
    }
    for (int t = 0; t < T; ++t) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t channel = i0 + row + r * kBN;
        const bool ok = col_ok && channel < p.Cin;
        const scalar_t* src = ok ? x + ((b * p.T + t) * p.Cin + channel) * p.P + pixel : x;
        cp_async_16(xs + (t * kBM + row + r * kBN) * kBK + vec * kVec, src, ok);
      }
      const int64_t channel = o0 + row;
      const bool ok = col_ok && channel < p.Cout;
      const scalar_t* src = ok ? g + ((b * p.T + t) * p.Cout + channel) * p.P + pixel : g;
      cp_async_16(gs + (t * kBN + row) * kBK + vec * kVec, src, ok);
    }
  };

  Accumulators acc;
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[q][mt][nt][j] = 0.f;

  // Stage c % stages holds chunk c. Only the DFT reads a stage (the GEMMs read the DFT'd operands), so the
  // copy of chunk c + stages goes out as soon as chunk c is DFT'd: even one stage overlaps copies and GEMMs.
  for (int s = 0; s < p.stages; ++s) {
    if (chunk_begin + s < chunk_end) load_stage(chunk_begin + s, s);
    cp_async_commit();
  }
  __syncthreads();  // basis tables
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int stage = static_cast<int>((c - chunk_begin) % p.stages);
    cp_async_wait(p.stages - 1);  // this thread's copies of chunk c have landed
    __syncthreads();              // everyone's have, and everyone is done with the operands of chunk c - 1
    const scalar_t* xs = smem + stage * stage_elems;
    const scalar_t* gs = xs + x_elems;
    constexpr bool kTf32 = kMath == Math::kTf32;
#pragma unroll
    for (int r = 0; r < 2; ++r)
      dft_vector<scalar_t, kTf32>(xs + (row + r * kBN) * kBK + vec * kVec, kBM * kBK, T, basis_x,
                                  operand_a + (row + r * kBN) * Tile::kPitch + vec * kVec, kBM * Tile::kPitch);
    dft_vector<scalar_t, kTf32>(gs + row * kBK + vec * kVec, kBN * kBK, T, basis_g,
                                operand_b + row * Tile::kPitch + vec * kVec, kBN * Tile::kPitch);
    __syncthreads();
    if (c + p.stages < chunk_end) load_stage(c + p.stages, stage);
    cp_async_commit();
    mma_stage<kMath, scalar_t, kBK, true>(acc, operand_a, Tile::kPitch, kBM * Tile::kPitch, operand_b, Tile::kPitch,
                                          kBN * Tile::kPitch, p.num_terms, warp_m, warp_n, lane);
  }
  cp_async_wait(0);

  const int group = lane >> 2, quad = lane & 3;
  const int64_t slot = static_cast<int64_t>(blockIdx.y) * p.num_terms;
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q) {
    if (q >= p.num_terms) continue;
    float* dst = p.partial + (slot + q) * p.Cin * p.Cout;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t i = i0 + warp_m * 32 + mt * 16 + group + 8 * (j >> 1);
          const int64_t o = o0 + warp_n * 32 + nt * 8 + 2 * quad + (j & 1);
          if (i < p.Cin && o < p.Cout) dst[i * p.Cout + o] = acc[q][mt][nt][j];
        }
  }
}

// ------------------------------------------------------------------------------------------------------
// Kernels shared by both paths.

// out[q][r][c] (c < cols_pad): the term-q matrix M_q, rows r = output channels (forward: M_q = W_q^T) or
// input channels (adjoint: M_q = W_q), zero past the real columns. 32 x 32 tiles through shared memory
// so both the weight reads (along C_out) and the writes (along c) are coalesced.
template <typename src_t, typename dst_t>
__global__ void term_weights_kernel(const src_t* weight, dst_t* out, int64_t Cin, int64_t Cout, int64_t K,
                                    int64_t T, bool adjoint, int64_t cols_pad, bool round_tf32, int64_t q0) {
  using acc_t = typename Num<src_t>::acc;
  __shared__ acc_t tile[32][33];
  const int64_t q = q0 + blockIdx.z;
  int64_t k;
  int part;
  term_mode(q, k, part);
  const int64_t rows = adjoint ? Cin : Cout;
  const int64_t r_tile = static_cast<int64_t>(blockIdx.y) * 32, c_tile = static_cast<int64_t>(blockIdx.x) * 32;
  const int64_t i_tile = adjoint ? r_tile : c_tile, o_tile = adjoint ? c_tile : r_tile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int j = ty; j < 32; j += 8) {  // tile[i - i_tile][o - o_tile]
    const int64_t i = i_tile + j, o = o_tile + tx;
    acc_t v = 0;
    if (i < Cin && o < Cout) {
      const src_t* w = weight + ((i * Cout + o) * K + k) * 2;
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

// dweight[i, o, k, :] from the per-slot term sums partial[slot][q][i][o], slots added in order.
template <typename acc_t, typename scalar_t>
__global__ void dweight_reduce_kernel(const acc_t* partial, scalar_t* dweight, int64_t slots, int64_t terms,
                                      int64_t Cin, int64_t Cout, int64_t K, int64_t T) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= Cin * Cout * K) return;
  const int64_t k = e % K, io = e / K;  // io = i * Cout + o
  const int64_t plane = Cin * Cout, q = term_base(k);
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
  dweight[2 * e] = Num<scalar_t>::from_acc(re);
  dweight[2 * e + 1] = Num<scalar_t>::from_acc(im);
}

// ------------------------------------------------------------------------------------------------------
// The general path: FMA GEMMs over 64 x 64 tiles, 256 threads with 4 x 4 outputs each.

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
__global__ void __launch_bounds__(kGemmThreads) general_dweight_kernel(const acc_t* X, const acc_t* dY, acc_t* partial,
                                                                      int64_t Q, int64_t Cin, int64_t Cout,
                                                                      int64_t columns, int64_t split_columns,
                                                                      int64_t slot0, int64_t z0) {
  const int64_t z = z0 + blockIdx.z, q = z % Q, split = z / Q;
  const int64_t k_begin = split * split_columns;
  const int64_t k_end = k_begin + split_columns < columns ? k_begin + split_columns : columns;
  gemm_tile<acc_t>(RowMajorA<acc_t>{X + q * Cin * columns, columns}, ColumnsB<acc_t>{dY + q * Cout * columns, columns},
                   RowMajorC<acc_t>{partial + ((slot0 + split) * Q + q) * Cin * Cout, Cout}, Cin, Cout, k_begin, k_end);
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

// ------------------------------------------------------------------------------------------------------
// Host side.

constexpr int64_t kMaxGridZ = 65535;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kGeneralBufferBytes = int64_t(1) << 30;

struct Shape {
  int64_t B, T, Cin, Cout, K, P, Q;
};

Shape describe(const at::Tensor& x, const at::Tensor& weight) {
  Shape s;
  s.B = x.size(0);
  s.T = x.size(1);
  s.Cin = x.size(2);
  s.Cout = weight.size(1);
  s.K = weight.size(2);
  s.P = 1;
  for (int64_t d = 3; d < x.dim(); ++d) s.P *= x.size(d);
  s.Q = num_terms(s.T, s.K);
  return s;
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, bool square) {
  TORCH_CHECK(x.dim() >= 3, "x must have shape [B, T, C_in, *S], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(3) == 2, "weight must have shape [C_in, C_out, K, 2], got ",
              weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(2), "weight.shape[0] must equal x.shape[2] (C_in), got ", weight.sizes(),
              " and ", x.sizes());
  const int64_t T = x.size(1), K = weight.size(2);
  TORCH_CHECK(T >= 1 && K >= 1 && K <= T / 2 + 1, "weight.shape[2] (K) must be in [1, T // 2 + 1] for T = ", T,
              ", got ", K);
  TORCH_CHECK(!square || weight.size(1) == weight.size(0), "time_conv needs C_in == C_out, got weight ",
              weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight must have the same dtype, got ",
              x.scalar_type(), " and ", weight.scalar_type());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "x must be float64, float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.is_cuda() && weight.is_cuda() && x.device() == weight.device(),
              "x and weight must be on the same CUDA device, got ", x.device(), " and ", weight.device());
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

enum class PathChoice { kAuto, kFused, kGeneral };

PathChoice path_choice() {
  const char* v = std::getenv("DSNO_KERNELS_CUDA_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return PathChoice::kAuto;
  if (std::strcmp(v, "fused") == 0) return PathChoice::kFused;
  if (std::strcmp(v, "general") == 0) return PathChoice::kGeneral;
  TORCH_CHECK(false, "DSNO_KERNELS_CUDA_PATH must be auto, fused or general, got '", v, "'");
}

// fp32 GEMMs on tf32 tensor cores (default) or in exact fp32 (DSNO_KERNELS_FP32=ieee).
bool fp32_uses_tf32() {
  const char* v = std::getenv("DSNO_KERNELS_FP32");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "tf32") == 0) return true;
  if (std::strcmp(v, "ieee") == 0) return false;
  TORCH_CHECK(false, "DSNO_KERNELS_FP32 must be tf32 or ieee, got '", v, "'");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The fused kernels' static shared memory (two basis tables), which counts against the same limit.
constexpr int64_t kFusedStaticSmem = 2 * kMaxFusedT * kFusedTerms * sizeof(float);

// Largest pipeline depth (min_stages .. kMaxStages) whose shared memory fits the device, 0 if none.
template <typename Bytes>
int pick_stages(const Bytes& bytes, int min_stages, const DeviceInfo& info) {
  for (int s = kMaxStages; s >= min_stages; --s) {
    if (bytes(s) + kFusedStaticSmem <= info.smem_optin) return s;
  }
  return 0;
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

// Why the fused kernels cannot take these tensors (empty when they can).
std::string fused_rejection(const Shape& s, at::ScalarType dtype, const DeviceInfo& info,
                            std::initializer_list<const at::Tensor*> tensors) {
  if (dtype == at::kDouble) return "float64 runs on the general (FMA) path";
  if (info.major < 8) return "the fused kernels need compute capability 8.0 or newer";
  if (s.T > kMaxFusedT) return "T = " + std::to_string(s.T) + " > " + std::to_string(kMaxFusedT);
  if (s.Q > kFusedTerms) {
    return "T = " + std::to_string(s.T) + ", K = " + std::to_string(s.K) + " needs " + std::to_string(s.Q) +
           " Gauss terms, more than " + std::to_string(kFusedTerms);
  }
  const int64_t vec = 16 / static_cast<int64_t>(c10::elementSize(dtype));
  if (s.P % vec != 0) {
    return "the pixel count prod(x.shape[3:]) = " + std::to_string(s.P) + " is not a multiple of " +
           std::to_string(vec) + " (16-byte vectors)";
  }
  for (const at::Tensor* t : tensors) {
    if (!aligned16(t->data_ptr())) return "a tensor's data is not 16-byte aligned";
  }
  return "";
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
  const int64_t rows = adjoint ? s.Cin : s.Cout, cols = adjoint ? s.Cout : s.Cin;
  const int64_t cols_pad = ceil_div(cols, col_align) * col_align;
  at::Tensor out = at::empty({s.Q, rows, cols_pad}, weight.options().dtype(scalar_type_of<dst_t>()));
  if (out.numel() == 0) return out;
  TORCH_CHECK(ceil_div(rows, 32) <= kMaxGridY, "too many channels for the CUDA kernels: ", rows);
  for (int64_t q0 = 0; q0 < s.Q; q0 += kMaxGridZ) {
    const dim3 grid(static_cast<unsigned>(ceil_div(cols_pad, 32)), static_cast<unsigned>(ceil_div(rows, 32)),
                    static_cast<unsigned>(std::min(kMaxGridZ, s.Q - q0)));
    term_weights_kernel<src_t, dst_t><<<grid, dim3(32, 8), 0, stream>>>(
        ptr<src_t>(weight), mutable_ptr<dst_t>(out), s.Cin, s.Cout, s.K, s.T, adjoint, cols_pad, round_tf32, q0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

template <typename acc_t, typename scalar_t>
void launch_dweight_reduce(const at::Tensor& partial, int64_t slots, const Shape& s, at::Tensor& grad_w,
                           cudaStream_t stream) {
  const int64_t n = s.Cin * s.Cout * s.K;
  constexpr int kThreads = 256;
  dweight_reduce_kernel<acc_t, scalar_t><<<static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0, stream>>>(
      ptr<acc_t>(partial), mutable_ptr<scalar_t>(grad_w), slots, s.Q, s.Cin, s.Cout, s.K, s.T);
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
  const int64_t Cu = adjoint ? s.Cout : s.Cin, Cv = adjoint ? s.Cin : s.Cout;
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
void launch_fused_dweight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_w, int stages,
                          const DeviceInfo& info, cudaStream_t stream) {
  using Tile = DweightTile<scalar_t>;
  DweightParams p{};
  p.x = x.const_data_ptr();
  p.g = g.const_data_ptr();
  p.T = s.T;
  p.Cin = s.Cin;
  p.Cout = s.Cout;
  p.P = s.P;
  p.columns = s.B * s.P;
  p.num_chunks = ceil_div(p.columns, Tile::kBK);
  p.num_terms = static_cast<int>(s.Q);
  p.stages = stages;
  float unused[kMaxFusedT][kFusedTerms];
  fill_fused_bases(s, false, p.basis_x, unused);  // F'[q, t]
  fill_fused_bases(s, true, p.basis_g, unused);   // G'[t, q]
  // About one wave of blocks, each reducing a fixed, contiguous range of pixel chunks.
  const int64_t tiles = ceil_div(s.Cin, Tile::kBM) * ceil_div(s.Cout, Tile::kBN);
  TORCH_CHECK(tiles <= INT32_MAX, "too many channels for the fused CUDA kernel");
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(p.num_chunks, info.sm_count / tiles));
  p.chunks_per_split = ceil_div(p.num_chunks, splits);
  splits = ceil_div(p.num_chunks, p.chunks_per_split);
  at::Tensor partial = at::empty({splits, s.Q, s.Cin, s.Cout}, x.options().dtype(at::kFloat));
  p.partial = partial.mutable_data_ptr<float>();
  const int64_t smem = Tile::smem_bytes(s.T, stages);
  auto kernel = fused_dweight_kernel<kMath, scalar_t>;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)), kFusedThreads, static_cast<size_t>(smem),
           stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_dweight_reduce<float, scalar_t>(partial, splits, s, grad_w, stream);
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
  const int64_t Cu = adjoint ? s.Cout : s.Cin, Cv = adjoint ? s.Cin : s.Cout;
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
void general_dweight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_w,
                     const DeviceInfo& info, cudaStream_t stream) {
  using acc_t = typename Num<scalar_t>::acc;
  const at::Tensor bases = general_bases<acc_t>(s, x, stream);
  const int64_t chunk = batch_chunk(s, s.Q * (s.Cin + s.Cout), sizeof(acc_t));
  const int64_t chunk_columns = chunk * s.P;
  // Enough (term, column-range) slots to give every SM two blocks, within grid z's limit.
  const int64_t tiles = ceil_div(s.Cin, kGemmTile) * ceil_div(s.Cout, kGemmTile) * s.Q;
  int64_t splits = std::max<int64_t>(1, ceil_div(2 * info.sm_count, tiles));
  splits = std::min({splits, ceil_div(chunk_columns, kGemmTile), std::max<int64_t>(1, kMaxGridZ / s.Q)});
  const int64_t split_columns = ceil_div(chunk_columns, splits);
  const int64_t num_chunks = ceil_div(s.B, chunk);
  const auto acc_options = x.options().dtype(scalar_type_of<acc_t>());
  at::Tensor X = at::empty({s.Q * s.Cin * chunk_columns}, acc_options);
  at::Tensor dY = at::empty({s.Q * s.Cout * chunk_columns}, acc_options);
  at::Tensor partial = at::empty({num_chunks * splits, s.Q, s.Cin, s.Cout}, acc_options);
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t b0 = c * chunk, columns = std::min(chunk, s.B - b0) * s.P;
    const PixelColumns x_geo{s.T, s.Cin, s.P, columns, b0}, g_geo{s.T, s.Cout, s.P, columns, b0};
    general_analysis_kernel<scalar_t, acc_t><<<gemm_grid(s.Q, s.Cin * columns, 1), kGemmThreads, 0, stream>>>(
        ptr<acc_t>(bases), ptr<scalar_t>(x), mutable_ptr<acc_t>(X), s.Q, x_geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    general_analysis_kernel<scalar_t, acc_t><<<gemm_grid(s.Q, s.Cout * columns, 1), kGemmThreads, 0, stream>>>(
        ptr<acc_t>(bases) + 2 * s.Q * s.T, ptr<scalar_t>(g), mutable_ptr<acc_t>(dY), s.Q, g_geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t z_total = splits * s.Q;
    for (int64_t z0 = 0; z0 < z_total; z0 += kMaxGridZ) {
      general_dweight_kernel<acc_t>
          <<<gemm_grid(s.Cin, s.Cout, std::min(kMaxGridZ, z_total - z0)), kGemmThreads, 0, stream>>>(
              ptr<acc_t>(X), ptr<acc_t>(dY), mutable_ptr<acc_t>(partial), s.Q, s.Cin, s.Cout, columns, split_columns,
              c * splits, z0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  launch_dweight_reduce<acc_t, scalar_t>(partial, num_chunks * splits, s, grad_w, stream);
}

// out = epilogue(apply(u)) on the fused path when it takes the input, else on the general path.
template <typename scalar_t>
void apply(const Shape& s, const at::Tensor& u, const at::Tensor& weight, bool adjoint, int epilogue,
           const at::Tensor* aux, at::Tensor& out, double slope, const DeviceInfo& info, cudaStream_t stream) {
  const PathChoice choice = path_choice();
  std::string why;
  int stages = 0;
  if (choice != PathChoice::kGeneral) {
    why = aux != nullptr ? fused_rejection(s, u.scalar_type(), info, {&u, aux, &out})
                         : fused_rejection(s, u.scalar_type(), info, {&u, &out});
    if (why.empty()) {
      stages = pick_stages([&](int st) { return ApplyTile<scalar_t>::smem_bytes(s.T, st); }, 2, info);
      if (stages == 0) why = "the pipeline does not fit the device's shared memory for T = " + std::to_string(s.T);
    }
    TORCH_CHECK(choice != PathChoice::kFused || why.empty(), "DSNO_KERNELS_CUDA_PATH=fused, but ", why);
  }
  if constexpr (!std::is_same<scalar_t, double>::value) {
    if (choice != PathChoice::kGeneral && why.empty()) {
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (fp32_uses_tf32()) {
          launch_fused_apply<Math::kTf32, float>(s, u, weight, adjoint, epilogue, aux, out, slope, stages, info,
                                                 stream);
        } else {
          launch_fused_apply<Math::kFma32, float>(s, u, weight, adjoint, epilogue, aux, out, slope, stages, info,
                                                  stream);
        }
      } else {
        launch_fused_apply<Math::kMma16, scalar_t>(s, u, weight, adjoint, epilogue, aux, out, slope, stages, info,
                                                   stream);
      }
      return;
    }
  }
  general_apply<scalar_t>(s, u, weight, adjoint, epilogue, aux, out, slope, stream);
}

template <typename scalar_t>
void dweight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_w, const DeviceInfo& info,
             cudaStream_t stream) {
  const PathChoice choice = path_choice();
  std::string why;
  int stages = 0;
  if (choice != PathChoice::kGeneral) {
    why = fused_rejection(s, x.scalar_type(), info, {&x, &g});
    if (why.empty()) {
      stages = pick_stages([&](int st) { return DweightTile<scalar_t>::smem_bytes(s.T, st); }, 1, info);
      if (stages == 0) {
        why = "the dweight pipeline does not fit the device's shared memory for T = " + std::to_string(s.T);
      }
    }
    TORCH_CHECK(choice != PathChoice::kFused || why.empty(), "DSNO_KERNELS_CUDA_PATH=fused, but ", why);
  }
  if constexpr (!std::is_same<scalar_t, double>::value) {
    if (choice != PathChoice::kGeneral && why.empty()) {
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (fp32_uses_tf32()) {
          launch_fused_dweight<Math::kTf32, float>(s, x, g, grad_w, stages, info, stream);
        } else {
          launch_fused_dweight<Math::kFma32, float>(s, x, g, grad_w, stages, info, stream);
        }
      } else {
        launch_fused_dweight<Math::kMma16, scalar_t>(s, x, g, grad_w, stages, info, stream);
      }
      return;
    }
  }
  general_dweight<scalar_t>(s, x, g, grad_w, info, stream);
}

// Calls f(scalar_t{}) with the CUDA element type of `dtype`.
template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kDouble:
      f(double{});
      break;
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(__half{});
      break;
    case at::kBFloat16:
      f(__nv_bfloat16{});
      break;
    default:
      TORCH_CHECK(false, "unsupported dtype ", dtype);
  }
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& weight_in, bool time_conv, double slope) {
  check_inputs(x_in, weight_in, time_conv);
  const c10::cuda::CUDAGuard guard(x_in.device());
  std::vector<int64_t> out_shape = x_in.sizes().vec();
  out_shape[2] = weight_in.size(1);
  at::Tensor y = at::empty(out_shape, x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  const Shape s = describe(x_in, weight_in);
  if (s.Cin == 0) return y.zero_();
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceInfo& info = device_info(x.get_device());
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    apply<scalar_t>(s, x, weight, false, time_conv ? kResidualLeaky : kStore, time_conv ? &x : nullptr, y, slope,
                    info, stream);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_in,
                                                 const at::Tensor& weight_in, bool time_conv, double slope) {
  check_inputs(x_in, weight_in, time_conv);
  std::vector<int64_t> out_shape = x_in.sizes().vec();
  out_shape[2] = weight_in.size(1);
  TORCH_CHECK(grad_out.sizes().vec() == out_shape, "grad_out must have shape ", at::IntArrayRef(out_shape), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x_in.device(), "grad_out must be on x's device ", x_in.device(), ", got ",
              grad_out.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_w = at::empty(weight_in.sizes(), weight_in.options().memory_format(at::MemoryFormat::Contiguous));
  const Shape s = describe(x_in, weight_in);
  if (grad_out.numel() == 0 || s.Cin == 0) {  // nothing flows: zero gradients
    grad_x.zero_();
    grad_w.zero_();
    return {grad_x, grad_w};
  }
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor dy = grad_out.to(x.scalar_type()).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceInfo& info = device_info(x.get_device());
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    at::Tensor g = dy;
    if (time_conv) {  // dL/ds = dy * LeakyReLU'(s), s recomputed
      g = at::empty_like(dy);
      apply<scalar_t>(s, x, weight, false, kLeakyGrad, &dy, g, slope, info, stream);
    }
    apply<scalar_t>(s, g, weight, true, time_conv ? kAddAux : kStore, time_conv ? &dy : nullptr, grad_x, slope, info,
                    stream);
    dweight<scalar_t>(s, x, g, grad_w, info, stream);
  });
  return {grad_x, grad_w};
}

at::Tensor spectral_time_conv_cuda(const at::Tensor& x, const at::Tensor& weight) {
  return forward_cuda(x, weight, false, 0.0);
}
at::Tensor time_conv_cuda(const at::Tensor& x, const at::Tensor& weight, double negative_slope) {
  return forward_cuda(x, weight, true, negative_slope);
}
std::tuple<at::Tensor, at::Tensor> spectral_time_conv_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  return backward_cuda(grad_out, x, weight, false, 0.0);
}
std::tuple<at::Tensor, at::Tensor> time_conv_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                           const at::Tensor& weight, double negative_slope) {
  return backward_cuda(grad_out, x, weight, true, negative_slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(dsno_kernels, CUDA, m) {
  m.impl("spectral_time_conv", &spectral_time_conv_cuda);
  m.impl("time_conv", &time_conv_cuda);
  m.impl("spectral_time_conv_backward", &spectral_time_conv_backward_cuda);
  m.impl("time_conv_backward", &time_conv_backward_cuda);
}

}  // namespace dsno_kernels
