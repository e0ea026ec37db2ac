// The fused kernels (fp16 / bf16 / fp32, T <= 16, at most kFusedTerms terms): the DFT applied while a
// cp.async-staged tile moves into the GEMM operand, the term GEMMs on tensor cores (or exact fp32 FMAs),
// the inverse DFT and the epilogue on the accumulators. See spectral_time_conv_cuda.cu for the overview.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"
#include "sm80.cuh"

namespace dsno_kernels {
namespace {  // included by spectral_time_conv_cuda.cu only

constexpr int kFusedThreads = 256;  // 8 warps: 4 along the 128 rows x 2 along the 64 columns, 32 x 32 each
constexpr int kFusedTerms = 4;      // accumulators held per block (Q <= 4; T = 4, K = 2 has Q = 4)
constexpr int kMaxFusedT = 16;
constexpr int kMaxStages = 4;

// How a block's GEMMs are computed: bf16/fp16 tensor cores, tf32 tensor cores, or exact fp32 FMAs.
enum class Math { kMma16, kTf32, kFma32 };

// Accumulator fragments: warp tile 32 x 32 = 2 (m16) x 4 (n8) mma tiles per term; element j of tile
// (mt, nt) sits at row 16 mt + lane / 4 + 8 (j / 2), column 8 nt + 2 (lane % 4) + j % 2 (mma's C layout).
using Accumulators = float[kFusedTerms][2][4][4];

__device__ __forceinline__ void zero_accumulators(Accumulators& acc) {
#pragma unroll
  for (int q = 0; q < kFusedTerms; ++q)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[q][mt][nt][j] = 0.f;
}

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
  zero_accumulators(acc);

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
    zero_accumulators(acc);
  }
  cp_async_wait(0);
}

// Tile geometry of the fused grad_weight kernel: rows = input channels, columns = output channels, the
// reduction runs over kBK pixel columns per stage.
template <typename scalar_t>
struct GradWeightTile {
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

struct GradWeightParams {
  const void* x;   // [B, T, C_in, P]
  const void* g;   // [B, T, C_out, P]: dL/ds
  float* partial;  // [splits, num_terms, C_in, C_out]
  int64_t T, C_in, C_out, P, columns, num_chunks, chunks_per_split;
  int num_terms, stages;
  float basis_x[kMaxFusedT][kFusedTerms];  // F'[q, t], stored [t][q]
  float basis_g[kMaxFusedT][kFusedTerms];  // G'[t, q]
};

template <Math kMath, typename scalar_t>
__global__ void __launch_bounds__(kFusedThreads, 1) fused_grad_weight_kernel(const GradWeightParams p) {
  using Tile = GradWeightTile<scalar_t>;
  constexpr int kVec = Tile::kVec, kBM = Tile::kBM, kBN = Tile::kBN, kBK = Tile::kBK;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(16) float basis_x[kMaxFusedT * kFusedTerms];
  __shared__ __align__(16) float basis_g[kMaxFusedT * kFusedTerms];
  scalar_t* smem = reinterpret_cast<scalar_t*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 3, warp_n = warp >> 2;
  const int64_t i_tiles = ceil_div(p.C_in, kBM);
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
        const bool ok = col_ok && channel < p.C_in;
        const scalar_t* src = ok ? x + ((b * p.T + t) * p.C_in + channel) * p.P + pixel : x;
        cp_async_16(xs + (t * kBM + row + r * kBN) * kBK + vec * kVec, src, ok);
      }
      const int64_t channel = o0 + row;
      const bool ok = col_ok && channel < p.C_out;
      const scalar_t* src = ok ? g + ((b * p.T + t) * p.C_out + channel) * p.P + pixel : g;
      cp_async_16(gs + (t * kBN + row) * kBK + vec * kVec, src, ok);
    }
  };

  Accumulators acc;
  zero_accumulators(acc);

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
    float* dst = p.partial + (slot + q) * p.C_in * p.C_out;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t i = i0 + warp_m * 32 + mt * 16 + group + 8 * (j >> 1);
          const int64_t o = o0 + warp_n * 32 + nt * 8 + 2 * quad + (j & 1);
          if (i < p.C_in && o < p.C_out) dst[i * p.C_out + o] = acc[q][mt][nt][j];
        }
  }
}

}  // namespace
}  // namespace dsno_kernels
