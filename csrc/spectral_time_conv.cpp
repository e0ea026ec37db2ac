// Op schemas of the dsno_kernels namespace and their CPU kernels.
//
//   x [B, T, C_in, *S], weight [C_in, C_out, K, 2]   ->   y [B, T, C_out, *S]
//
// Each pixel column x[b, :, :, p] ([T, C_in]) goes through reference.py's real form as a chain of GEMMs
// over "products", the channel GEMMs of the modes:
//   X = F x          F [R, T]: the DFT rows the products read
//   Y_q = W_q X_q    the channel mixing, one BLAS GEMM per product q on its rows of X
//   s = G Y          G [T, R]: the irfft restricted to the kept modes, in terms of the products' rows
// A real mode (DC, Nyquist) is one product: row cos, W = Wr^T, G column c/T cos. A complex mode is
// either one product of two rows (cos, -sin), W = [[Wr^T, -Wi^T], [Wi^T, Wr^T]], G columns
// c/T (cos, -sin) (c = 2; 1 for DC and Nyquist), or, where the channel GEMMs dominate, three products of
// one row each by Gauss's trick, 3 real GEMMs instead of 4: Y1 = Wr^T Xr, Y2 = Wi^T Xi and
// Y3 = (Wr + Wi)^T (Xr + Xi) give Yr = Y1 - Y2 and Yi = Y3 - Y1 - Y2, so the rows are cos, -sin, cos - sin
// and the G columns c/T (cos + sin), c/T (sin - cos), -c/T sin. time_conv adds y = x + leaky_relu(s).
// The backward is the transposed chain of the same factors: g = dy (time_conv: dy * (s > 0 ? 1 : slope),
// s recomputed), dY = G^T g, dX_q = W_q^T dY_q, dx = F^T dX (+ dy), and grad_weight_q = sum over pixels
// of dY_q X_q^T, folded back into the weight's layout by the chain rule.
//
// Three paths, chosen per shape (`cpu_path` names the one a call takes):
//   direct   T <= 16 and P >= 16 (DSNO's layers): tiles of pixel columns, the DFTs folded into the tile's
//            load and store as register-blocked FMAs, the channel GEMMs to BLAS;
//   gemm     other shapes with trailing dims: tiles of pixel columns (across the batch) read once into
//            fp32 (fp64) buffers, every factor a BLAS GEMM on the tile, the results written once;
//   batched  no trailing dims and T > 16 (FNO-1D layers, x [B, T, C]): whole-tensor batched GEMMs, no
//            tiles (see forward_batched); in bf16 on CPUs with bf16 dot-product instructions;
//   folded   the batched path's shapes with T K >= kFoldedMinTK (long FNO-1D layers): the real input's
//            symmetries folded first, so that the DFT GEMMs are a quarter of the size, and a mixing that
//            reads the weight once in its own layout (see use_folded_path).
// In the tiled paths nothing but x, dy and the outputs touches memory at full size, and grad_weight is
// reduced per fixed chunk of tiles and the chunks summed in order, so it is deterministic.

#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

// GCC turns the block copies below into calls to memmove, which at 32 floats cost more than the copy.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

namespace dsno_kernels {
namespace {

constexpr double kPi = 3.14159265358979323846;

// One channel GEMM of the mixing: rows [row, row + rows) of X and Y, W [rows * C_out, rows * C_in].
struct Product {
  int64_t row, rows;
};

// The factors of one call, in the accumulation dtype.
struct Spectral : Dims {
  bool gauss;                          // complex modes as three one-row products
  int64_t R;                           // rows of X (and of F)
  std::vector<Product> products;
  std::vector<int64_t> first_product;  // per mode
  at::Tensor F, G;                     // [R, T], [T, R]
  std::vector<at::Tensor> W;           // per product
};

// Gauss's trick saves a C_in x C_out GEMM per complex mode and pixel and costs a third DFT row, T more
// multiply-adds per channel of x and of y, in the transforms, which cost several times more per operation
// than the GEMMs (measured on the CPU: a gain from C = 64 at T = 4, a loss at C = 32 and for the FNO-1D
// shapes, T = 256, C = 64).
bool use_gauss(const Dims& d) { return d.C_in * d.C_out >= 8 * d.T * (d.C_in + d.C_out); }

// cos and sin of 2 pi j / T for j = 0 .. T - 1, in fp64, exact (0, +-1) at the multiples of pi / 2: the
// folded path relies on the terms that vanish there vanishing exactly; the other paths' rows use it too.
struct UnitCircle {
  std::vector<double> cos, sin;
  explicit UnitCircle(int64_t T) : cos(T), sin(T) {
    for (int64_t j = 0; j < T; ++j) {
      if ((4 * j) % T == 0) {
        const int64_t quarter = 4 * j / T;  // 0 .. 3
        cos[j] = quarter == 0 ? 1.0 : quarter == 2 ? -1.0 : 0.0;
        sin[j] = quarter == 1 ? 1.0 : quarter == 3 ? -1.0 : 0.0;
        continue;
      }
      const double angle = 2.0 * kPi * static_cast<double>(j) / static_cast<double>(T);
      cos[j] = std::cos(angle);
      sin[j] = std::sin(angle);
    }
  }
};

// Built in acc_t directly (the bases computed in fp64 and rounded once), without temporary tensors: at
// small shapes this per-call work is a visible part of the op.
// `products`: also the products' matrices W (the batched path builds its own from the weight, without Gauss).
template <typename scalar_t, typename acc_t>
Spectral make_spectral(const at::Tensor& x, const at::Tensor& weight, bool products = true) {
  Spectral s;
  static_cast<Dims&>(s) = describe_dims(x, weight);
  s.gauss = products && use_gauss(s);
  s.R = 0;
  for (int64_t k = 0; k < s.K; ++k) {
    s.first_product.push_back(static_cast<int64_t>(s.products.size()));
    if (mode_is_real(k, s.T)) {
      s.products.push_back({s.R++, 1});
    } else if (s.gauss) {
      for (int64_t q = 0; q < 3; ++q) s.products.push_back({s.R++, 1});
    } else {
      s.products.push_back({s.R, 2});
      s.R += 2;
    }
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  s.F = at::empty({s.R, s.T}, options);
  s.G = at::empty({s.T, s.R}, options);
  acc_t* f = s.F.mutable_data_ptr<acc_t>();  // [R, T]
  acc_t* g = s.G.mutable_data_ptr<acc_t>();  // [T, R]
  // every angle k t is one of the unit circle's T points once reduced mod T (exact for large T, and T
  // evaluations instead of K T)
  const UnitCircle circle(s.T);
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t r = s.products[s.first_product[k]].row;
    const bool real = mode_is_real(k, s.T);
    const double c = (real ? 1.0 : 2.0) / static_cast<double>(s.T);
    for (int64_t t = 0; t < s.T; ++t) {
      const double cs = circle.cos[(k * t) % s.T], sn = circle.sin[(k * t) % s.T];
      acc_t* g_t = g + t * s.R + r;
      f[r * s.T + t] = static_cast<acc_t>(cs);
      if (real) {
        g_t[0] = static_cast<acc_t>(c * cs);
        continue;
      }
      f[(r + 1) * s.T + t] = static_cast<acc_t>(-sn);
      if (!s.gauss) {
        g_t[0] = static_cast<acc_t>(c * cs);
        g_t[1] = static_cast<acc_t>(-c * sn);
        continue;
      }
      f[(r + 2) * s.T + t] = static_cast<acc_t>(cs - sn);
      g_t[0] = static_cast<acc_t>(c * (cs + sn));
      g_t[1] = static_cast<acc_t>(c * (sn - cs));
      g_t[2] = static_cast<acc_t>(-c * sn);
    }
  }
  if (!products) return s;
  // The products' matrices from weight[i, o, k] (Wr + Wi summed in acc_t, as the GEMM sees it).
  const at::Tensor w_contig = weight.contiguous();
  const scalar_t* w = w_contig.const_data_ptr<scalar_t>();  // [C_in, C_out, K, 2]
  const int64_t Co = s.C_out, Ci = s.C_in;
  for (const Product& product : s.products) s.W.push_back(at::empty({product.rows * Co, product.rows * Ci}, options));
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t first = s.first_product[k];
    const bool complex = !mode_is_real(k, s.T), block = complex && !s.gauss;
    acc_t* m = s.W[first].mutable_data_ptr<acc_t>();
    acc_t* m_wi = complex && s.gauss ? s.W[first + 1].mutable_data_ptr<acc_t>() : nullptr;
    acc_t* m_sum = complex && s.gauss ? s.W[first + 2].mutable_data_ptr<acc_t>() : nullptr;
    const int64_t pitch = block ? 2 * Ci : Ci;
    for (int64_t o = 0; o < Co; ++o) {
      for (int64_t i = 0; i < Ci; ++i) {
        const scalar_t* w_iok = w + ((i * Co + o) * s.K + k) * 2;
        const acc_t wr = static_cast<acc_t>(w_iok[0]), wi = static_cast<acc_t>(w_iok[1]);
        m[o * pitch + i] = wr;
        if (block) {  // [[Wr^T, -Wi^T], [Wi^T, Wr^T]]
          m[o * pitch + Ci + i] = -wi;
          m[(Co + o) * pitch + i] = wi;
          m[(Co + o) * pitch + Ci + i] = wr;
        } else if (complex) {
          m_wi[o * Ci + i] = wi;
          m_sum[o * Ci + i] = wr + wi;
        }
      }
    }
  }
  return s;
}

// Pixels per step of the direct path's transforms: a few vectors, so that a sum over T or R stays in
// registers and each input is read once per output row rather than read and written per term. The
// tile buffers have kBlock elements of slack at their end, so reading a block past a run's end (into
// values that are then ignored) stays inside them.
constexpr int64_t kBlock = 32;

// Pixel columns per tile: enough for efficient GEMMs, small enough for the tile buffers to stay in L2
// (`scale` times about 1 MB per thread: the cap, give or take a block), whole blocks (a shorter tail
// costs as much as a block), and at least kMinTiles tiles, so that small calls (the tiny preset's layers
// have 128 to 512 columns) still give every thread work. The widest such tile whose count is a multiple
// of kMinTiles with the last one at least half full (nearly equal shares for 2 or 4 threads), else the
// widest. The rule does not depend on the thread count, so neither does grad_weight's summation order.
constexpr int64_t kMinTiles = 4;

int64_t tile_columns(const Spectral& s, int64_t scale) {
  // x, s, dy tiles ([T, C, cols]) and X, Y ([R, C, cols])
  const int64_t per_column = 3 * s.T * std::max(s.C_in, s.C_out) + s.R * (s.C_in + s.C_out);
  const int64_t cap = std::min<int64_t>(scale * 512, scale * (256 * 1024) / std::max<int64_t>(per_column, 1));
  const int64_t columns = std::max<int64_t>(s.B * s.P, 1);
  int64_t widest = kBlock;
  for (int64_t cols = (ceil_div(cap, kBlock) + 1) * kBlock; cols > kBlock; cols -= kBlock) {
    const int64_t tiles = ceil_div(columns, cols), last = columns - (tiles - 1) * cols;
    if (tiles < kMinTiles) continue;
    widest = std::max(widest, cols);
    if (tiles % kMinTiles == 0 && 2 * last >= cols) return cols;
  }
  return std::min(widest, columns);
}

// Calls run(b, p, col, len) for each run of a tile's columns [n0, n0 + width) that stays inside one batch
// item (flattened columns n = b * P + p of a [B, ..., P] tensor) and is at most max_len long.
template <typename Run>
inline void for_each_run(int64_t P, int64_t n0, int64_t width, int64_t max_len, Run run) {
  for (int64_t col = 0; col < width;) {
    const int64_t n = n0 + col, b = n / P, p = n % P, len = std::min({P - p, width - col, max_len});
    run(b, p, col, len);
    col += len;
  }
}

// Zeroes the columns [width, cols) of each of the `rows` rows of a [rows, cols] buffer: the padding of
// a tile's last columns, which the GEMMs read (and grad_weight's GEMM sums over).
template <typename acc_t>
void zero_padding(acc_t* buffer, int64_t rows, int64_t width, int64_t cols) {
  if (width == cols) return;
  for (int64_t row = 0; row < rows; ++row) std::fill(buffer + row * cols + width, buffer + (row + 1) * cols, acc_t(0));
}

// Copies the columns [n0, n0 + width) of src ([B, T, C, P] contiguous) into dst [T, C, cols] in acc_t,
// zero-filling the columns past width.
template <typename scalar_t, typename acc_t>
void gather_columns(const scalar_t* src, acc_t* dst, int64_t T, int64_t C, int64_t P, int64_t n0, int64_t width,
                    int64_t cols) {
  zero_padding(dst, T * C, width, cols);
  for_each_run(P, n0, width, width, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t row = 0; row < T * C; ++row) {
      const scalar_t* in = src + (b * T * C + row) * P + p;
      acc_t* out = dst + row * cols + col;
      for (int64_t j = 0; j < len; ++j) out[j] = static_cast<acc_t>(in[j]);
    }
  });
}

// The inverse of gather_columns for the first `width` columns, casting to scalar_t.
template <typename scalar_t, typename acc_t>
void scatter_columns(const acc_t* src, scalar_t* dst, int64_t T, int64_t C, int64_t P, int64_t n0, int64_t width,
                     int64_t cols) {
  for_each_run(P, n0, width, width, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t row = 0; row < T * C; ++row) {
      const acc_t* in = src + row * cols + col;
      scalar_t* out = dst + (b * T * C + row) * P + p;
      for (int64_t j = 0; j < len; ++j) out[j] = static_cast<scalar_t>(in[j]);
    }
  });
}

// Direct path (small T, images): the DFT along T is folded into the tile load and the inverse DFT plus
// epilogue into the store, as FMAs over contiguous pixel runs; only the channel mixing goes to BLAS.
// For long T (R * T FMAs per element) or tiny P (runs too short to vectorise) the GEMM path wins.
constexpr int64_t kDirectMaxT = 16;
constexpr int64_t kDirectMinP = 16;

bool use_direct_path(const Dims& d) { return d.T <= kDirectMaxT && d.P >= kDirectMinP; }

// A block as a few vector registers (the GCC / Clang vector extension: 64-byte vectors, two 32-byte
// ones on CPUs without AVX-512), so that a sum over rows stays in registers.
template <typename acc_t>
struct BlockVectors {
  typedef acc_t Vec __attribute__((vector_size(64)));
  static constexpr int64_t kLanes = 64 / sizeof(acc_t);
  static constexpr int64_t kCount = kBlock / kLanes;
  static inline Vec load(const acc_t* from) {
    Vec v;
    std::memcpy(&v, from, sizeof(Vec));
    return v;
  }
  static inline void store(acc_t* to, const Vec& v) { std::memcpy(to, &v, sizeof(Vec)); }
};

// out[j] = sum_r a[r * a_stride] in_r[j] over the rows in_r = in + r * in_stride, for a whole block.
template <typename acc_t>
inline void combine_block(const acc_t* a, int64_t a_stride, const acc_t* in, int64_t in_stride, int64_t rows,
                          acc_t* out) {
  using V = BlockVectors<acc_t>;
  typename V::Vec acc[V::kCount] = {};
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t coef = a[r * a_stride];
    const acc_t* row = in + r * in_stride;
    for (int64_t v = 0; v < V::kCount; ++v) acc[v] += coef * V::load(row + v * V::kLanes);
  }
  for (int64_t v = 0; v < V::kCount; ++v) V::store(out + v * V::kLanes, acc[v]);
}

// Writes the first n values of a block to dst: a whole block directly (it lies inside one run of the
// tile buffer's row), a run's last, shorter block through `spare`.
template <typename acc_t, typename Compute>
inline void write_block(acc_t* dst, int64_t n, acc_t* spare, Compute compute) {
  if (n == kBlock) {
    compute(dst);
    return;
  }
  compute(spare);
  for (int64_t j = 0; j < n; ++j) dst[j] = spare[j];
}

// The direct path reads x and dy in runs of at most kRun pixels: each of a run's T rows is read whole
// (a contiguous stream) into an acc_t buffer on the stack before the blocks are combined.
constexpr int64_t kRun = 256;

// The T time points of channel c at a run's n pixels of src [B, T, C, P] (at in), as acc_t rows
// [T, kRun], zero from n to the end of the last block. The next channel's rows (at in + stride_c) are
// prefetched: the hardware prefetcher does not follow T short streams that jump by a channel each time.
template <typename scalar_t, typename acc_t>
inline void load_rows(const scalar_t* in, int64_t T, int64_t stride_t, int64_t stride_c, int64_t n, acc_t* rows) {
  const int64_t padded = ceil_div(n, kBlock) * kBlock;
  constexpr int64_t line = 64 / sizeof(scalar_t);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < n; j += line) __builtin_prefetch(in + stride_c + t * stride_t + j);
  }
  for (int64_t t = 0; t < T; ++t) {
    acc_t* row = rows + t * kRun;
    const scalar_t* from = in + t * stride_t;
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<acc_t>(from[j]);
    for (int64_t j = n; j < padded; ++j) row[j] = acc_t(0);
  }
}

// dst[q][c][col] = sum_t A[q][t] src[b, t, c, p] over the tile's columns; A is [rows, T], src [B, T, C, P].
template <typename scalar_t, typename acc_t>
void load_transform(const scalar_t* src, const acc_t* A, int64_t rows, acc_t* dst, int64_t T, int64_t C, int64_t P,
                    int64_t n0, int64_t width, int64_t cols) {
  zero_padding(dst, rows * C, width, cols);
  acc_t in[kDirectMaxT * kRun], out[kBlock];
  for_each_run(P, n0, width, kRun, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      load_rows(src + ((b * T) * C + c) * P + p, T, C * P, P, len, in);
      for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, len - j0);
        for (int64_t q = 0; q < rows; ++q) {
          write_block(dst + (q * C + c) * cols + col + j0, n, out,
                      [&](acc_t* to) { combine_block(A + q * T, 1, in + j0, kRun, T, to); });
        }
      }
    }
  });
}

// dst[b, t, c, p] = epilogue(sum_q A[t][q] src[q][c][col], offset of (b, t, c, p)) for the tile's columns.
template <typename scalar_t, typename acc_t, typename Epilogue>
void store_transform(const acc_t* src, const acc_t* A, int64_t rows, scalar_t* dst, int64_t T, int64_t C, int64_t P,
                     int64_t n0, int64_t width, int64_t cols, Epilogue epilogue) {
  acc_t out[kBlock];
  for_each_run(P, n0, width, width, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, len - j0);
        for (int64_t t = 0; t < T; ++t) {
          combine_block(A + t * rows, 1, src + c * cols + col + j0, C * cols, rows, out);
          const int64_t offset = ((b * T + t) * C + c) * P + p + j0;
          for (int64_t j = 0; j < n; ++j) dst[offset + j] = static_cast<scalar_t>(epilogue(offset + j, out[j]));
        }
      }
    }
  });
}

// time_conv backward, direct path: dY[q][c][col] = sum_t G[t][q] g_t with g_t = dy_t * leaky_relu'(s_t) and
// s_t = sum_q G[t][q] Y[q][c][col] recomputed from the tile's Y (nothing was saved by the forward).
template <typename scalar_t, typename acc_t>
void masked_adjoint_transform(const acc_t* Y, const acc_t* G, int64_t rows, const scalar_t* dy, acc_t slope, acc_t* dY,
                              int64_t T, int64_t C, int64_t P, int64_t n0, int64_t width, int64_t cols) {
  zero_padding(dY, rows * C, width, cols);
  acc_t grad[kDirectMaxT * kRun], s[kBlock], spare[kBlock];
  for_each_run(P, n0, width, kRun, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      load_rows(dy + ((b * T) * C + c) * P + p, T, C * P, P, len, grad);  // zero past len: so is g
      for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, len - j0);
        for (int64_t t = 0; t < T; ++t) {
          combine_block(G + t * rows, 1, Y + c * cols + col + j0, C * cols, rows, s);
          acc_t* g = grad + t * kRun + j0;
          for (int64_t j = 0; j < kBlock; ++j) g[j] = apply_epilogue(kLeakyGrad, s[j], g[j], slope);
        }
        for (int64_t q = 0; q < rows; ++q) {
          write_block(dY + (q * C + c) * cols + col + j0, n, spare,
                      [&](acc_t* to) { combine_block(G + q, rows, grad + j0, kRun, T, to); });
        }
      }
    }
  });
}

// Per-thread tile buffers, each with kBlock elements of slack (see kBlock).
struct TileBuffers {
  at::Tensor x, X, Y, s;  // [T, C_in, cols], [R, C_in, cols], [R, C_out, cols], [T, C_out, cols]
  std::vector<at::Tensor> X_q, Y_q;  // per product: [rows * C_in, cols], [rows * C_out, cols]
  TileBuffers(const Spectral& sp, int64_t cols, at::ScalarType acc) {
    x = tile_buffer(sp.T, sp.C_in, cols, acc);
    X = tile_buffer(sp.R, sp.C_in, cols, acc);
    Y = tile_buffer(sp.R, sp.C_out, cols, acc);
    s = tile_buffer(sp.T, sp.C_out, cols, acc);
    X_q = products(sp, X, sp.C_in, cols);
    Y_q = products(sp, Y, sp.C_out, cols);
  }
  // [rows, C * cols], a view of a buffer with the slack after it.
  static at::Tensor tile_buffer(int64_t rows, int64_t C, int64_t cols, at::ScalarType acc) {
    const int64_t n = rows * C * cols;
    return at::empty({n + kBlock}, at::TensorOptions().dtype(acc)).narrow(0, 0, n).view({rows, C * cols});
  }
  // Each product's GEMM operand [rows * C, cols] in an [R, C * cols] buffer. Made once per thread, not
  // per tile (a view costs a few us).
  static std::vector<at::Tensor> products(const Spectral& sp, const at::Tensor& buffer, int64_t C, int64_t cols) {
    std::vector<at::Tensor> views;
    for (const Product& product : sp.products) {
      views.push_back(buffer.narrow(0, product.row, product.rows).view({product.rows * C, cols}));
    }
    return views;
  }
};

// Y_q = W_q X_q for every product: the channel mixing, as BLAS GEMMs on the tile.
void mix_products(const Spectral& sp, TileBuffers& buf) {
  for (size_t q = 0; q < sp.products.size(); ++q) at::mm_out(buf.Y_q[q], sp.W[q], buf.X_q[q]);
}

// GEMM path: X = F x, Y_q = W_q X_q, s = G Y on the tile already gathered into buf.x.
void tile_forward(const Spectral& sp, TileBuffers& buf) {
  at::mm_out(buf.X, sp.F, buf.x);
  mix_products(sp, buf);
  at::mm_out(buf.s, sp.G, buf.Y);
}

// Batched path (no trailing dims, T beyond the direct path's: FNO-1D layers, x [B, T, C]): each batch
// item's [T, C] is already a matrix, so the chain runs as whole-tensor GEMMs with no tiles to gather:
//   X = F x[b]                       [R, C_in] per item, one batched GEMM
//   [Yr Yi] = [Xr Xi] [[Wr, Wi], [-Wi, Wr]]   per complex mode, over the batch (M = B), one batched GEMM;
//                                    Y = X Wr for DC and Nyquist
//   s = G Y[b]                       [T, C_out] per item, written once
// The rows of X and Y are (DC, the complex modes' (cos, -sin) pairs, Nyquist), so the complex modes'
// pairs are one strided [K_c, B, 2 C] operand. In bf16, where the CPU has bf16 dot-product instructions
// (avx512_bf16, AMX), the GEMMs run in bf16 with fp32 accumulation (oneDNN through at::matmul): one
// rounding of X and of Y to bf16 each. Without them oneDNN has no fast bf16 GEMM and the path computes in
// fp32, as the other paths do.
constexpr int64_t kBatchedMaxP = 1;

bool use_batched_path(const Dims& d) { return d.P <= kBatchedMaxP && d.T > kDirectMaxT; }

bool cpu_has_bf16_dot() {
  static const bool has = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return has;
}

// The dtype the batched path computes in for inputs of `dtype`.
at::ScalarType batched_compute_type(at::ScalarType dtype) {
  if (dtype == at::kDouble) return at::kDouble;
  if (dtype == at::kBFloat16 && cpu_has_bf16_dot()) return at::kBFloat16;
  return at::kFloat;
}

// The batched path's factors, in its compute dtype.
struct BatchedFactors {
  int64_t B, T, C_in, C_out, K;
  int64_t complex_modes;  // K_c: modes 1 .. K_c are complex (rows 1 .. 2 K_c)
  bool nyquist;           // the last mode is the (real) Nyquist mode, row 2 K_c + 1
  at::Tensor F, G;        // [R, T], [T, R]
  at::Tensor M;           // [K_c, 2 C_in, 2 C_out]: [[Wr, Wi], [-Wi, Wr]] per complex mode
  at::Tensor dc, ny;      // [C_in, C_out]: Wr of DC; of Nyquist (when there is one)
};

template <typename scalar_t, typename acc_t>
BatchedFactors make_batched_factors(const at::Tensor& x, const at::Tensor& weight) {
  const Spectral sp = make_spectral<scalar_t, acc_t>(x, weight, /*products=*/false);
  const at::ScalarType compute = batched_compute_type(x.scalar_type());
  BatchedFactors f{sp.B, sp.T, sp.C_in, sp.C_out, sp.K, 0, false, {}, {}, {}, {}, {}};
  f.nyquist = sp.K > 1 && mode_is_real(sp.K - 1, sp.T);
  f.complex_modes = sp.K - 1 - (f.nyquist ? 1 : 0);
  f.F = sp.F.to(compute);
  f.G = sp.G.to(compute);
  // Wr of the real modes and the complex modes' [[Wr, Wi], [-Wi, Wr]], built in acc_t in one pass over the
  // weight (then cast to the compute dtype).
  const int64_t Ci = sp.C_in, Co = sp.C_out, Kc = f.complex_modes;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor dc = at::empty({Ci, Co}, options), ny = at::empty({f.nyquist ? Ci : 0, Co}, options);
  at::Tensor M = at::empty({Kc, 2 * Ci, 2 * Co}, options);
  const at::Tensor w_contig = weight.contiguous();
  const scalar_t* w = w_contig.const_data_ptr<scalar_t>();  // [Ci, Co, K, 2]
  acc_t *dc_p = dc.mutable_data_ptr<acc_t>(), *ny_p = ny.mutable_data_ptr<acc_t>(), *m = M.mutable_data_ptr<acc_t>();
  for (int64_t i = 0; i < Ci; ++i) {
    for (int64_t o = 0; o < Co; ++o) {
      dc_p[i * Co + o] = static_cast<acc_t>(w[(i * Co + o) * sp.K * 2]);
      if (f.nyquist) ny_p[i * Co + o] = static_cast<acc_t>(w[((i * Co + o) * sp.K + sp.K - 1) * 2]);
    }
  }
  for (int64_t k = 0; k < Kc; ++k) {
    acc_t* m_k = m + k * 4 * Ci * Co;  // [2 Ci, 2 Co]
    for (int64_t i = 0; i < Ci; ++i) {
      for (int64_t o = 0; o < Co; ++o) {
        const scalar_t* w_iok = w + ((i * Co + o) * sp.K + k + 1) * 2;
        const acc_t wr = static_cast<acc_t>(w_iok[0]), wi = static_cast<acc_t>(w_iok[1]);
        m_k[i * 2 * Co + o] = wr;
        m_k[i * 2 * Co + Co + o] = wi;
        m_k[(Ci + i) * 2 * Co + o] = -wi;
        m_k[(Ci + i) * 2 * Co + Co + o] = wr;
      }
    }
  }
  f.dc = dc.to(compute);
  f.ny = ny.to(compute);
  f.M = M.to(compute);
  return f;
}

// The rows of Z [B, R, C] as the mixing's operands: the complex modes' pairs [K_c, B, 2 C], DC's and
// Nyquist's rows [B, C].
struct ModeRows {
  at::Tensor pairs, dc, ny;
  ModeRows(const BatchedFactors& f, const at::Tensor& Z) {
    const int64_t B = Z.size(0), C = Z.size(2);
    dc = Z.select(1, 0);
    if (f.complex_modes > 0) pairs = Z.narrow(1, 1, 2 * f.complex_modes).view({B, f.complex_modes, 2 * C}).transpose(0, 1);
    if (f.nyquist) ny = Z.select(1, 2 * f.complex_modes + 1);
  }
};

// Y = the mixing of X, both [B, R, C] (C_in, C_out).
at::Tensor batched_mix(const BatchedFactors& f, const at::Tensor& X) {
  at::Tensor Y = at::empty({f.B, X.size(1), f.C_out}, X.options());
  const ModeRows x_rows(f, X);
  ModeRows y_rows(f, Y);
  at::mm_out(y_rows.dc, x_rows.dc, f.dc);
  if (f.complex_modes > 0) at::bmm_out(y_rows.pairs, x_rows.pairs, f.M);
  if (f.nyquist) at::mm_out(y_rows.ny, x_rows.ny, f.ny);
  return Y;
}

// s = G M F x in the compute dtype, and X = F x (the weight gradient's operand).
std::tuple<at::Tensor, at::Tensor> batched_spectral(const BatchedFactors& f, const at::Tensor& xc) {
  at::Tensor X = at::matmul(f.F, xc);  // [B, R, Ci]
  return {at::matmul(f.G, batched_mix(f, X)), X};
}

template <typename scalar_t, typename acc_t>
at::Tensor forward_batched(const at::Tensor& x, const at::Tensor& weight, bool time_conv, double slope) {
  const BatchedFactors f = make_batched_factors<scalar_t, acc_t>(x, weight);
  const at::Tensor xc = x.reshape({f.B, f.T, f.C_in}).to(f.F.scalar_type());
  at::Tensor s = std::get<0>(batched_spectral(f, xc));
  if (time_conv) s = at::leaky_relu(s, slope).add_(xc);
  return s.to(x.scalar_type()).contiguous().view(output_shape(x, weight));
}

// grad_weight [Ci, Co, K, 2] (contiguous, zero) from the gradients of the batched path's factors: of DC's
// and Nyquist's Wr [Ci, Co], and of the complex modes' M = [[Wr, Wi], [-Wi, Wr]] [K_c, 2 Ci, 2 Co]
// (grad Wr = the two diagonal blocks' sum, grad Wi = the upper right block minus the lower left one).
template <typename acc_t>
void fold_batched_grad_weight(const BatchedFactors& f, const at::Tensor& grad_dc, const at::Tensor& grad_ny,
                              const at::Tensor& grad_M, at::Tensor& grad_weight) {
  const int64_t Ci = f.C_in, Co = f.C_out, K = f.K;
  acc_t* out = grad_weight.mutable_data_ptr<acc_t>();
  const acc_t* dc = grad_dc.const_data_ptr<acc_t>();
  const acc_t* ny = f.nyquist ? grad_ny.const_data_ptr<acc_t>() : nullptr;
  const acc_t* m = f.complex_modes > 0 ? grad_M.const_data_ptr<acc_t>() : nullptr;
  for (int64_t i = 0; i < Ci; ++i) {
    for (int64_t o = 0; o < Co; ++o) {
      acc_t* out_io = out + (i * Co + o) * K * 2;
      out_io[0] = dc[i * Co + o];
      if (ny != nullptr) out_io[(K - 1) * 2] = ny[i * Co + o];
    }
  }
  for (int64_t k = 0; k < f.complex_modes; ++k) {
    const acc_t* m_k = m + k * 4 * Ci * Co;
    for (int64_t i = 0; i < Ci; ++i) {
      const acc_t* top = m_k + i * 2 * Co;            // row i: [grad of Wr | of Wi]
      const acc_t* bottom = m_k + (Ci + i) * 2 * Co;  // row Ci + i: [of -Wi | of Wr]
      for (int64_t o = 0; o < Co; ++o) {
        acc_t* out_iok = out + ((i * Co + o) * K + k + 1) * 2;
        out_iok[0] = top[o] + bottom[Co + o];
        out_iok[1] = top[Co + o] - bottom[o];
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_batched(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& weight,
                                                    bool time_conv, double slope) {
  const BatchedFactors f = make_batched_factors<scalar_t, acc_t>(x, weight);
  const at::Tensor xc = x.reshape({f.B, f.T, f.C_in}).to(f.F.scalar_type());
  const at::Tensor dy = dy_in.reshape({f.B, f.T, f.C_out}).to(f.F.scalar_type());
  at::Tensor X, g = dy;
  if (time_conv) {  // g = dy * leaky_relu'(s), s recomputed
    at::Tensor s;
    std::tie(s, X) = batched_spectral(f, xc);
    g = at::where(s > 0, dy, dy * slope);
  } else {
    X = at::matmul(f.F, xc);
  }
  const at::Tensor dY = at::matmul(f.G.t(), g);  // [B, R, Co]
  // dX = the mixing's transpose of dY, and the weight gradient summed over the batch.
  at::Tensor dX = at::empty({f.B, X.size(1), f.C_in}, X.options());
  const ModeRows x_rows(f, X), dy_rows(f, dY);
  ModeRows dx_rows(f, dX);
  at::mm_out(dx_rows.dc, dy_rows.dc, f.dc.t());
  if (f.complex_modes > 0) at::bmm_out(dx_rows.pairs, dy_rows.pairs, f.M.transpose(1, 2));
  if (f.nyquist) at::mm_out(dx_rows.ny, dy_rows.ny, f.ny.t());
  // The weight gradient, summed over the batch by the GEMMs, in acc_t
  const at::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor grad_dc = at::mm(x_rows.dc.t(), dy_rows.dc).to(acc);  // [Ci, Co]
  const at::Tensor grad_ny = f.nyquist ? at::mm(x_rows.ny.t(), dy_rows.ny).to(acc) : at::Tensor();
  const at::Tensor grad_M = f.complex_modes > 0 ? at::bmm(x_rows.pairs.transpose(1, 2), dy_rows.pairs).to(acc)
                                                : at::Tensor();  // [K_c, 2 Ci, 2 Co]
  at::Tensor grad_weight = at::zeros({f.C_in, f.C_out, f.K, 2}, weight.options().dtype(acc));
  fold_batched_grad_weight<acc_t>(f, grad_dc, grad_ny, grad_M, grad_weight);
  at::Tensor grad_x = at::matmul(f.F.t(), dX);  // [B, T, Ci]
  if (time_conv) grad_x.add_(dy);              // the residual's gradient is dy itself
  return {grad_x.to(x.scalar_type()).contiguous().view(x.sizes()), grad_weight.to(weight.scalar_type()).contiguous()};
}

// Folded path (the batched path's shapes with T K >= kFoldedMinTK: long FNO-1D layers). The whole
// tensor goes through each factor at once, with no tiles:
//   fold      the real input's symmetries, as elementwise passes (FoldPlan): x -> a few shorter signals
//             [T', B, C] (also the layout change: the batch becomes GEMM columns)
//   DFT       X = F x as one GEMM per folded signal, [K', T'] x [T', B C]: the kept modes' rows of a
//             pruned FFT's first radix-2 stages, then a small transpose to X [B, C, 2, K] (re, im)
//   mixing    Y[b, o, k] = sum_i X[b, i, k] W[i, o, k], complex, vectorised over k (mix_modes): the
//             weight read once, in its own layout
//   synthesis s = G Y as one GEMM per folded output, [T', K'] x [K', B C], and one pass that unfolds it
//             into s [B, T, C] with the op's epilogue
// The backward is the same factors transposed: dY = G^T g (the analysis of g with G's scale), dX[b, i, k] =
// sum_o dY[b, o, k] conj(W[i, o, k]), grad_weight[i, o, k] = sum_b conj(X[b, i, k]) dY[b, o, k], and
// dx = F^T dX (the synthesis with F's scale). In bf16, where the CPU has bf16 dot-product instructions
// (avx512_bf16, AMX), the DFT GEMMs run in bf16 with fp32 accumulation (oneDNN through at::mm): the folded
// signals, X, Y and the synthesis outputs are rounded to bf16 once each; the passes and the mixing compute
// in fp32. Without them oneDNN has no fast bf16 GEMM and every factor computes in fp32.
// Where the folded path is faster than the batched one (benchmarks/results/2026-12-08-cpu-fno/): its passes
// and per-mode mixing cost more than the batched GEMMs save below this size of the DFT (T K of 512 to 4,800
// measured slower or even, 40,000 and 65,536 faster, fp32 and bf16, 1 and 2 threads). time_conv's
// backward gains earlier (T K 4,096 and 4,800 faster, 512 slower): the folded path fuses its recomputed
// forward's epilogue into the unfold, where the batched one makes whole-tensor passes.
constexpr int64_t kFoldedMinTK = 16384;
constexpr int64_t kFoldedMinTKTimeConvBackward = 4096;

bool use_folded_path(const Dims& d, bool time_conv_backward = false) {
  return use_batched_path(d) && d.T * d.K >= (time_conv_backward ? kFoldedMinTKTimeConvBackward : kFoldedMinTK);
}

// The folds of the real DFT restricted to modes 0 .. K-1 (an exact rewriting, no approximation). With
// z[t] real and H = T / 2:
//   level 1 (any T): cos(2 pi k (T - t) / T) = cos(2 pi k t / T) and sin(...) = -sin(...), so the cos rows
//     read e[t] = z[t] + z[T - t] (t = 0 .. T/2; e[0] = z[0], e[H] = z[H]) and the sin rows
//     o[t] = z[t] - z[T - t] (t = 1 .. ceil(T/2) - 1): two GEMMs of half the length;
//   level 2 (even T): cos(2 pi k (H - t) / T) = (-1)^k cos(2 pi k t / T) and sin(...) = -(-1)^k sin(...),
//     so e and o fold again, by the parity of k, into four signals of a quarter of the length:
//     e+ = e[t] + e[H - t] (even k), e- = e[t] - e[H - t] (odd k), o- = o[t] - o[H - t] (even k),
//     o+ = o[t] + o[H - t] (odd k).
// The synthesis s[t] = sum_k beta_k (cos(2 pi k t / T) Zr[k] - sin(2 pi k t / T) Zi[k]) is the transpose:
// the GEMMs give the per-part sums a (cos) and b (sin) at t = 0 .. T/2 (level 2: a_even, a_odd, b_even,
// b_odd at t = 0 .. H/2), and the unfold writes s[t] = a - b, s[T - t] = a + b (level 2: the four points
// t, T - t, H - t, H + t from the four sums). These are the first radix-2 stages of an FFT pruned to K modes.
struct FoldPlan {
  struct Part {
    int64_t row, rows, t0;   // rows of the folded signal: t = t0 .. t0 + rows - 1
    bool sine;               // the imaginary parts (sin rows) of its modes, else the real parts
    int64_t k_first, k_step;  // its modes: k_first, k_first + k_step, ... < K
    int64_t k_count;
    int64_t z_row;  // its modes' rows in the spectrum buffer [z_rows, N]
  };
  int64_t T, K, level;
  std::vector<Part> parts;  // level 1: e, o; level 2: e+, e-, o-, o+ (cos even k, cos odd, sin even, sin odd)
  int64_t folded_rows = 0, z_rows = 0;
  int64_t synth_rows;  // rows t = 0 .. synth_rows - 1 of each part's synthesis output

  FoldPlan(int64_t T_, int64_t K_) : T(T_), K(K_), level(T_ % 2 == 0 && T_ >= 4 ? 2 : 1) {
    const int64_t H = T / 2;
    auto add = [&](int64_t rows, int64_t t0, bool sine, int64_t k_first, int64_t k_step) {
      const int64_t k_count = k_first < K ? ceil_div(K - k_first, k_step) : 0;
      parts.push_back({folded_rows, std::max<int64_t>(rows, 0), t0, sine, k_first, k_step, k_count, z_rows});
      folded_rows += parts.back().rows;
      z_rows += k_count;
    };
    if (level == 1) {
      add(H + 1, 0, false, 0, 1);
      add(ceil_div(T, 2) - 1, 1, true, 0, 1);
      synth_rows = H + 1;
    } else {
      add(H / 2 + 1, 0, false, 0, 2);
      add(ceil_div(H, 2), 0, false, 1, 2);
      add(ceil_div(H, 2) - 1, 1, true, 0, 2);
      add(H / 2, 1, true, 1, 2);
      synth_rows = H / 2 + 1;
    }
  }
};

// The scale of mode k in G (the irfft restricted to the kept modes): 1/T for DC and Nyquist, 2/T else.
inline double synthesis_scale(int64_t k, int64_t T) { return (mode_is_real(k, T) ? 1.0 : 2.0) / static_cast<double>(T); }

// The parts' matrices, built in fp64 into one buffer (one allocation and one cast for all of them):
// part p's [rows(p), cols(p)] with entry(p, r, c).
template <typename Rows, typename Cols, typename Entry>
std::vector<at::Tensor> part_matrices(const FoldPlan& plan, at::ScalarType dtype, Rows rows, Cols cols, Entry entry) {
  const int64_t parts = static_cast<int64_t>(plan.parts.size());
  int64_t total = 0;
  for (int64_t p = 0; p < parts; ++p) total += rows(p) * cols(p);
  at::Tensor all = at::empty({total}, at::TensorOptions().dtype(at::kDouble));
  double* out = all.mutable_data_ptr<double>();
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t r = 0; r < rows(p); ++r) {
      for (int64_t c = 0; c < cols(p); ++c) *out++ = entry(p, r, c);
    }
  }
  all = all.to(dtype);
  std::vector<at::Tensor> matrices;
  int64_t offset = 0;
  for (int64_t p = 0; p < parts; ++p) {
    matrices.push_back(all.narrow(0, offset, rows(p) * cols(p)).view({rows(p), cols(p)}));
    offset += rows(p) * cols(p);
  }
  return matrices;
}

// Each part's analysis matrix [k_count, rows]: scale(k) * (cos, or -sin for the sin rows) (2 pi k t / T), with
// zero sin rows for the real modes (DC, Nyquist), whose imaginary parts the irfft ignores. `g_scale`: G's
// scale (for dY = G^T g), else 1 (X = F x).
std::vector<at::Tensor> analysis_matrices(const FoldPlan& plan, const UnitCircle& circle, bool g_scale,
                                          at::ScalarType dtype) {
  return part_matrices(
      plan, dtype, [&](int64_t p) { return plan.parts[p].k_count; }, [&](int64_t p) { return plan.parts[p].rows; },
      [&](int64_t p, int64_t r, int64_t j) {
        const FoldPlan::Part& part = plan.parts[p];
        const int64_t k = part.k_first + r * part.k_step;
        const double scale = g_scale ? synthesis_scale(k, plan.T) : 1.0;
        const int64_t angle = (k * (part.t0 + j)) % plan.T;
        return part.sine ? (mode_is_real(k, plan.T) ? 0.0 : -scale * circle.sin[angle]) : scale * circle.cos[angle];
      });
}

// Each part's synthesis matrix [synth_rows, k_count]: scale(k) * (cos, or sin) (2 pi k t / T) for t = 0 ..
// synth_rows - 1 (the unfold subtracts the sin sums). `g_scale`: G's scale (s = G Y), else 1 (dx = F^T dX).
std::vector<at::Tensor> synthesis_matrices(const FoldPlan& plan, const UnitCircle& circle, bool g_scale,
                                           at::ScalarType dtype) {
  return part_matrices(
      plan, dtype, [&](int64_t) { return plan.synth_rows; }, [&](int64_t p) { return plan.parts[p].k_count; },
      [&](int64_t p, int64_t t, int64_t r) {
        const FoldPlan::Part& part = plan.parts[p];
        const int64_t k = part.k_first + r * part.k_step;
        const double scale = g_scale ? synthesis_scale(k, plan.T) : 1.0;
        const int64_t angle = (k * t) % plan.T;
        return part.sine ? (mode_is_real(k, plan.T) ? 0.0 : scale * circle.sin[angle]) : scale * circle.cos[angle];
      });
}

// Rows of a pass per parallel task: a few hundred kB of traffic each, so that small calls stay on one thread.
inline int64_t pass_grain(int64_t row_elements) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_elements, 1)); }

// The fold's and unfold's row operations, on C contiguous values (restrict: the rows never overlap, and
// the compiler vectorises only what it knows does not alias).
template <typename acc_t, typename src_t, typename dst_t>
inline void copy_row(const src_t* __restrict__ a, dst_t* __restrict__ out, int64_t C) {
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<dst_t>(static_cast<acc_t>(a[c]));
}

// plus = a + b, minus = a - b
template <typename acc_t, typename src_t, typename dst_t>
inline void sum_difference(const src_t* __restrict__ a, const src_t* __restrict__ b, dst_t* __restrict__ plus,
                           dst_t* __restrict__ minus, int64_t C) {
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) {
    const acc_t u = static_cast<acc_t>(a[c]), v = static_cast<acc_t>(b[c]);
    plus[c] = static_cast<dst_t>(u + v);
    minus[c] = static_cast<dst_t>(u - v);
  }
}

// The level-2 fold of the four points t, T - t, H - t, H + t.
template <typename acc_t, typename src_t, typename dst_t>
inline void fold_four(const src_t* __restrict__ z_t, const src_t* __restrict__ z_mirror,
                      const src_t* __restrict__ z_h_minus, const src_t* __restrict__ z_h_plus, dst_t* __restrict__ ep,
                      dst_t* __restrict__ em, dst_t* __restrict__ om, dst_t* __restrict__ op, int64_t C) {
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) {
    const acc_t e1 = static_cast<acc_t>(z_t[c]) + static_cast<acc_t>(z_mirror[c]);
    const acc_t o1 = static_cast<acc_t>(z_t[c]) - static_cast<acc_t>(z_mirror[c]);
    const acc_t e2 = static_cast<acc_t>(z_h_minus[c]) + static_cast<acc_t>(z_h_plus[c]);
    const acc_t o2 = static_cast<acc_t>(z_h_minus[c]) - static_cast<acc_t>(z_h_plus[c]);
    ep[c] = static_cast<dst_t>(e1 + e2);
    em[c] = static_cast<dst_t>(e1 - e2);
    om[c] = static_cast<dst_t>(o1 - o2);
    op[c] = static_cast<dst_t>(o1 + o2);
  }
}

// The fold: z [B, T, C] (src_t, contiguous) -> folded [folded_rows, B, C] (dst_t), in acc_t arithmetic.
template <typename src_t, typename dst_t, typename acc_t>
void fold_signal(const FoldPlan& plan, const src_t* z, int64_t B, int64_t C, dst_t* folded) {
  const int64_t T = plan.T, H = T / 2, N = B * C;
  auto row = [&](int part, int64_t t, int64_t b) {
    return folded + (plan.parts[part].row + t - plan.parts[part].t0) * N + b * C;
  };
  auto in = [&](int64_t b, int64_t t) { return z + (b * T + t) * C; };
  const int64_t steps = plan.level == 1 ? H + 1 : H / 2 + 1;
  at::parallel_for(0, steps, pass_grain(4 * N), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        if (plan.level == 1) {  // parts e, o
          if (t == 0 || 2 * t == T) {  // z[0], z[H]: their own mirrors
            copy_row<acc_t>(in(b, t), row(0, t, b), C);
          } else {
            sum_difference<acc_t>(in(b, t), in(b, T - t), row(0, t, b), row(1, t, b), C);
          }
        } else if (t == 0) {  // parts e+, e-, o-, o+; e[0] = z[0], e[H] = z[H]
          sum_difference<acc_t>(in(b, 0), in(b, H), row(0, 0, b), row(1, 0, b), C);
        } else if (2 * t == H) {  // e[H/2] and o[H/2]: their own mirrors under t -> H - t
          sum_difference<acc_t>(in(b, t), in(b, T - t), row(0, t, b), row(3, t, b), C);
        } else {
          fold_four<acc_t>(in(b, t), in(b, T - t), in(b, H - t), in(b, H + t), row(0, t, b), row(1, t, b),
                           row(2, t, b), row(3, t, b), C);
        }
      }
    }
  });
}

// out = epilogue(s, aux) for the unfold's outputs (aux: null for kStore).
template <int kind, typename acc_t, typename aux_t, typename out_t>
inline void emit(out_t* __restrict__ out, const aux_t* __restrict__ aux, int64_t c, acc_t s, acc_t slope) {
  out[c] = static_cast<out_t>(kind == kStore ? s : apply_epilogue(kind, s, static_cast<acc_t>(aux[c]), slope));
}

// out_minus = a - b, out_plus = a + b, through the epilogue.
template <int kind, typename acc_t, typename src_t, typename aux_t, typename out_t>
inline void unfold_two(const src_t* __restrict__ a, const src_t* __restrict__ b, out_t* __restrict__ out_minus,
                       const aux_t* __restrict__ aux_minus, out_t* __restrict__ out_plus,
                       const aux_t* __restrict__ aux_plus, acc_t slope, int64_t C) {
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) {
    const acc_t u = static_cast<acc_t>(a[c]), v = static_cast<acc_t>(b[c]);
    emit<kind>(out_minus, aux_minus, c, u - v, slope);
    emit<kind>(out_plus, aux_plus, c, u + v, slope);
  }
}

// The level-2 unfold into the four points t, T - t, H - t, H + t from the sums a_even, a_odd, b_even, b_odd.
template <int kind, typename acc_t, typename src_t, typename aux_t, typename out_t>
inline void unfold_four(const src_t* __restrict__ ae, const src_t* __restrict__ ao, const src_t* __restrict__ be,
                        const src_t* __restrict__ bo, out_t* __restrict__ o_t, out_t* __restrict__ o_mirror,
                        out_t* __restrict__ o_h_minus, out_t* __restrict__ o_h_plus, const aux_t* __restrict__ x_t,
                        const aux_t* __restrict__ x_mirror, const aux_t* __restrict__ x_h_minus,
                        const aux_t* __restrict__ x_h_plus, acc_t slope, int64_t C) {
#pragma GCC ivdep
  for (int64_t c = 0; c < C; ++c) {
    const acc_t e = static_cast<acc_t>(ae[c]), o = static_cast<acc_t>(ao[c]);
    const acc_t se = static_cast<acc_t>(be[c]), so = static_cast<acc_t>(bo[c]);
    const acc_t a_t = e + o, a_h = e - o, b_t = se + so, b_h = so - se;  // a[t], a[H - t], b[t], b[H - t]
    emit<kind>(o_t, x_t, c, a_t - b_t, slope);
    emit<kind>(o_mirror, x_mirror, c, a_t + b_t, slope);
    emit<kind>(o_h_minus, x_h_minus, c, a_h - b_h, slope);
    emit<kind>(o_h_plus, x_h_plus, c, a_h + b_h, slope);
  }
}

// The unfold: the parts' synthesis sums [parts * synth_rows, B, C] (src_t) -> out[b, t, c] =
// epilogue(s[b, t, c], aux[b, t, c]) for out and aux [B, T, C] (aux null for kStore).
template <int kind, typename src_t, typename out_t, typename aux_t, typename acc_t>
void unfold_signal(const FoldPlan& plan, const src_t* sums, int64_t B, int64_t C, const aux_t* aux, acc_t slope,
                   out_t* out) {
  const int64_t T = plan.T, H = T / 2, N = B * C, n = plan.synth_rows;
  auto sum = [&](int64_t part, int64_t t, int64_t b) { return sums + ((part * n + t) * B + b) * C; };
  auto at_out = [&](int64_t b, int64_t t) { return out + (b * T + t) * C; };
  auto at_aux = [&](int64_t b, int64_t t) { return aux != nullptr ? aux + (b * T + t) * C : nullptr; };
  at::parallel_for(0, n, pass_grain(4 * N), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        if (plan.level == 1) {  // sums a (cos), b (sin)
          if (t == 0 || 2 * t == T) {  // b vanishes there
            const src_t* a = sum(0, t, b);
            out_t* o = at_out(b, t);
            const aux_t* x = at_aux(b, t);
#pragma GCC ivdep
            for (int64_t c = 0; c < C; ++c) emit<kind>(o, x, c, static_cast<acc_t>(a[c]), slope);
          } else {
            unfold_two<kind>(sum(0, t, b), sum(1, t, b), at_out(b, t), at_aux(b, t), at_out(b, T - t),
                             at_aux(b, T - t), slope, C);
          }
        } else if (t == 0) {  // s[0] = a_even + a_odd, s[H] = a_even - a_odd (the sin sums vanish)
          unfold_two<kind>(sum(0, 0, b), sum(1, 0, b), at_out(b, H), at_aux(b, H), at_out(b, 0), at_aux(b, 0),
                           slope, C);
        } else if (2 * t == H) {  // t = T/4: the odd cos and even sin sums vanish
          unfold_two<kind>(sum(0, t, b), sum(3, t, b), at_out(b, t), at_aux(b, t), at_out(b, T - t),
                           at_aux(b, T - t), slope, C);
        } else {
          unfold_four<kind>(sum(0, t, b), sum(1, t, b), sum(2, t, b), sum(3, t, b), at_out(b, t), at_out(b, T - t),
                            at_out(b, H - t), at_out(b, H + t), at_aux(b, t), at_aux(b, T - t), at_aux(b, H - t),
                            at_aux(b, H + t), slope, C);
        }
      }
    }
  });
}

// The DFT GEMMs of the analysis: spectrum [z_rows, N] = each part's matrix times its folded rows.
void analysis_gemms(const FoldPlan& plan, const std::vector<at::Tensor>& matrices, const at::Tensor& folded,
                    at::Tensor& spectrum) {
  for (size_t p = 0; p < plan.parts.size(); ++p) {
    const FoldPlan::Part& part = plan.parts[p];
    if (part.k_count == 0) continue;
    at::Tensor out = spectrum.narrow(0, part.z_row, part.k_count);
    if (part.rows == 0) {
      out.zero_();
    } else {
      at::mm_out(out, matrices[p], folded.narrow(0, part.row, part.rows));
    }
  }
}

// The GEMMs of the synthesis: sums [parts * synth_rows, N] from the spectrum [z_rows, N].
void synthesis_gemms(const FoldPlan& plan, const std::vector<at::Tensor>& matrices, const at::Tensor& spectrum,
                     at::Tensor& sums) {
  for (size_t p = 0; p < plan.parts.size(); ++p) {
    const FoldPlan::Part& part = plan.parts[p];
    at::Tensor out = sums.narrow(0, static_cast<int64_t>(p) * plan.synth_rows, plan.synth_rows);
    if (part.k_count == 0) {
      out.zero_();
    } else {
      at::mm_out(out, matrices[p], spectrum.narrow(0, part.z_row, part.k_count));
    }
  }
}

// Modes per vector of the mixing: BlockVectors' vectors, with loads and stores of interleaved complex values.
template <typename acc_t>
struct ModeVectors : BlockVectors<acc_t> {
  using Vec = typename BlockVectors<acc_t>::Vec;
  using BlockVectors<acc_t>::kLanes;
  using BlockVectors<acc_t>::load;
  using BlockVectors<acc_t>::store;
  // The real and imaginary parts of kLanes interleaved complex values (a shuffle per vector where the
  // compiler sees the whole pattern, as here).
  template <typename scalar_t>
  static inline void load_complex(const scalar_t* from, Vec& re, Vec& im) {
    acc_t r[kLanes], i[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) {
      r[l] = static_cast<acc_t>(from[2 * l]);
      i[l] = static_cast<acc_t>(from[2 * l + 1]);
    }
    re = load(r);
    im = load(i);
  }
  // The same for the first n (< kLanes) values, zero past them.
  template <typename scalar_t>
  static inline void load_complex(const scalar_t* from, int64_t n, Vec& re, Vec& im) {
    acc_t r[kLanes], i[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) {
      r[l] = l < n ? static_cast<acc_t>(from[2 * l]) : acc_t(0);
      i[l] = l < n ? static_cast<acc_t>(from[2 * l + 1]) : acc_t(0);
    }
    re = load(r);
    im = load(i);
  }
  template <typename scalar_t>
  static inline void store_complex(scalar_t* to, int64_t n, const Vec& re, const Vec& im) {
    acc_t r[kLanes], i[kLanes];
    store(r, re);
    store(i, im);
    for (int64_t l = 0; l < n; ++l) {
      to[2 * l] = static_cast<scalar_t>(r[l]);
      to[2 * l + 1] = static_cast<scalar_t>(i[l]);
    }
  }
};

// A spectrum in the mixing's layout: [rows, C, 2, Kp] acc_t, the real then the imaginary parts of modes
// 0 .. Kp - 1 (Kp: K rounded up to whole vectors; zero past K).
inline int64_t padded_modes(int64_t K, int64_t lanes) { return ceil_div(K, lanes) * lanes; }

// How far ahead in a row of the weight the mixing prefetches (in modes): that row's next visit.
constexpr int64_t kMixPrefetchModes = 128;

// The terms q in [q0, q1) of out[b, p, k0 .. k0 + L) for NB batch items b0 .. (in registers), stored, or
// added to what is there (`accumulate`). w: w(p, 0) at the chunk's first mode; n: its modes (L when `whole`).
template <int NB, bool conj, bool whole, typename scalar_t, typename acc_t>
inline void mix_chunk(const acc_t* in, int64_t Q, const scalar_t* w, int64_t q_stride, int64_t q0, int64_t q1,
                      int64_t n, int64_t Kp, acc_t* out, int64_t P, int64_t p, int64_t b0, int64_t k0,
                      bool accumulate) {
  using V = ModeVectors<acc_t>;
  typename V::Vec re[NB] = {}, im[NB] = {};
  for (int64_t q = q0; q < q1; ++q) {
    // A few chunks further down the same row of the weight: what this row's next visit reads.
    const char* ahead = reinterpret_cast<const char*>(w + q * q_stride + kMixPrefetchModes * 2);
    __builtin_prefetch(ahead);
    __builtin_prefetch(ahead + 64);
    typename V::Vec wr, wi;
    if (whole) {
      V::load_complex(w + q * q_stride, wr, wi);
    } else {
      V::load_complex(w + q * q_stride, n, wr, wi);
    }
    if (conj) wi = -wi;
    const acc_t* x = in + (b0 * Q + q) * 2 * Kp + k0;
    for (int nb = 0; nb < NB; ++nb) {
      const typename V::Vec xr = V::load(x + nb * Q * 2 * Kp), xi = V::load(x + nb * Q * 2 * Kp + Kp);
      re[nb] += xr * wr;  // (one FMA per product)
      re[nb] -= xi * wi;
      im[nb] += xr * wi;
      im[nb] += xi * wr;
    }
  }
  for (int nb = 0; nb < NB; ++nb) {
    acc_t* y = out + ((b0 + nb) * P + p) * 2 * Kp + k0;
    if (accumulate) {
      re[nb] += V::load(y);
      im[nb] += V::load(y + Kp);
    }
    V::store(y, re[nb]);
    V::store(y + Kp, im[nb]);
  }
}

template <int NB, bool conj, typename scalar_t, typename acc_t>
void mix_block(const acc_t* in, int64_t Q, const scalar_t* weight, int64_t p_stride, int64_t q_stride, int64_t q0,
               int64_t q1, int64_t K, int64_t Kp, acc_t* out, int64_t P, int64_t p, int64_t b0) {
  constexpr int64_t L = ModeVectors<acc_t>::kLanes;
  const scalar_t* w = weight + p * p_stride;
  const bool accumulate = q0 > 0;
  int64_t k0 = 0;
  for (; k0 + L <= K; k0 += L) {
    mix_chunk<NB, conj, true>(in, Q, w + 2 * k0, q_stride, q0, q1, L, Kp, out, P, p, b0, k0, accumulate);
  }
  if (k0 < K) mix_chunk<NB, conj, false>(in, Q, w + 2 * k0, q_stride, q0, q1, K - k0, Kp, out, P, p, b0, k0, accumulate);
}

// Rows of the weight a thread reads side by side when the sum runs down the weight's first dim (the
// forward's q = i): a few sequential streams, which the hardware prefetcher follows, rather than one read
// per row and page for each chunk of modes.
constexpr int64_t kMixRowsPerPass = 16;

// out[b, p, :] = sum_q in[b, q, :] w(p, q), complex, over the modes: in [B, Q, 2, Kp], out [B, P, 2, Kp],
// w(p, q) = weight + p * p_stride + q * q_stride ([K, 2] interleaved), conjugated if `conj`. Blocks of NB
// batch items share each load of the weight.
template <bool conj, typename scalar_t, typename acc_t>
void mix_modes(const acc_t* in, int64_t B, int64_t Q, const scalar_t* weight, int64_t p_stride, int64_t q_stride,
               int64_t K, int64_t Kp, acc_t* out, int64_t P) {
  const int64_t rows_per_pass = q_stride > p_stride ? kMixRowsPerPass : std::max<int64_t>(Q, 1);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t q0 = 0; q0 < std::max<int64_t>(Q, 1); q0 += rows_per_pass) {
      const int64_t q1 = std::min(Q, q0 + rows_per_pass);
      for (int64_t p = begin; p < end; ++p) {
        int64_t b0 = 0;
        for (; b0 + 8 <= B; b0 += 8) mix_block<8, conj>(in, Q, weight, p_stride, q_stride, q0, q1, K, Kp, out, P, p, b0);
        for (; b0 + 4 <= B; b0 += 4) mix_block<4, conj>(in, Q, weight, p_stride, q_stride, q0, q1, K, Kp, out, P, p, b0);
        for (; b0 < B; ++b0) mix_block<1, conj>(in, Q, weight, p_stride, q_stride, q0, q1, K, Kp, out, P, p, b0);
      }
    }
  });
}

// grad_weight[i, o, k] = sum_b conj(X[b, i, k]) dY[b, o, k] (X [B, Ci, 2, Kp], dY [B, Co, 2, Kp]), written in
// grad_weight's layout [Ci, Co, K, 2]: the real modes' imaginary parts come out zero (X's and dY's are).
template <int NG, typename scalar_t, typename acc_t>
void grad_weight_modes(const acc_t* X, const acc_t* dY, int64_t B, int64_t Ci, int64_t Co, int64_t K, int64_t Kp,
                       int64_t i, int64_t o, int64_t k0, scalar_t* grad_weight) {
  using V = ModeVectors<acc_t>;
  constexpr int64_t L = V::kLanes;
  typename V::Vec re[NG] = {}, im[NG] = {};
  for (int64_t b = 0; b < B; ++b) {
    const acc_t* x = X + (b * Ci + i) * 2 * Kp + k0;
    const acc_t* d = dY + (b * Co + o) * 2 * Kp + k0;
    for (int g = 0; g < NG; ++g) {
      const typename V::Vec xr = V::load(x + g * L), xi = V::load(x + Kp + g * L);
      const typename V::Vec dr = V::load(d + g * L), di = V::load(d + Kp + g * L);
      re[g] += xr * dr;
      re[g] += xi * di;
      im[g] += xr * di;
      im[g] -= xi * dr;
    }
  }
  scalar_t* out = grad_weight + ((i * Co + o) * K + k0) * 2;
  for (int g = 0; g < NG; ++g) {
    V::store_complex(out + 2 * g * L, std::min(L, K - k0 - g * L), re[g], im[g]);
  }
}

template <typename scalar_t, typename acc_t>
void grad_weight_all(const acc_t* X, const acc_t* dY, int64_t B, int64_t Ci, int64_t Co, int64_t K, int64_t Kp,
                     scalar_t* grad_weight) {
  constexpr int64_t L = ModeVectors<acc_t>::kLanes;
  at::parallel_for(0, Ci, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t o = 0; o < Co; ++o) {
        int64_t k0 = 0;
        for (; k0 + 4 * L <= Kp; k0 += 4 * L) grad_weight_modes<4>(X, dY, B, Ci, Co, K, Kp, i, o, k0, grad_weight);
        for (; k0 + 2 * L <= Kp; k0 += 2 * L) grad_weight_modes<2>(X, dY, B, Ci, Co, K, Kp, i, o, k0, grad_weight);
        for (; k0 < Kp; k0 += L) grad_weight_modes<1>(X, dY, B, Ci, Co, K, Kp, i, o, k0, grad_weight);
      }
    }
  });
}

// spectrum [z_rows, B, C] (the GEMMs' layout) -> modes [B, C, 2, Kp] (the mixing's), zero past K.
template <typename gemm_t, typename acc_t>
void spectrum_to_modes(const FoldPlan& plan, const gemm_t* spectrum, int64_t B, int64_t C, int64_t Kp, acc_t* modes) {
  const int64_t N = B * C;
  at::parallel_for(0, N, pass_grain(2 * Kp), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc_t* m = modes + n * 2 * Kp;
      std::fill(m, m + 2 * Kp, acc_t(0));
      for (const FoldPlan::Part& part : plan.parts) {
        acc_t* dst = m + (part.sine ? Kp : 0) + part.k_first;
        const gemm_t* src = spectrum + part.z_row * N + n;
        for (int64_t r = 0; r < part.k_count; ++r) dst[r * part.k_step] = static_cast<acc_t>(src[r * N]);
      }
    }
  });
}

// The inverse: modes [B, C, 2, Kp] -> spectrum [z_rows, B, C].
template <typename gemm_t, typename acc_t>
void modes_to_spectrum(const FoldPlan& plan, const acc_t* modes, int64_t B, int64_t C, int64_t Kp, gemm_t* spectrum) {
  const int64_t N = B * C;
  at::parallel_for(0, N, pass_grain(2 * Kp), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const acc_t* m = modes + n * 2 * Kp;
      for (const FoldPlan::Part& part : plan.parts) {
        const acc_t* src = m + (part.sine ? Kp : 0) + part.k_first;
        gemm_t* dst = spectrum + part.z_row * N + n;
        for (int64_t r = 0; r < part.k_count; ++r) dst[r * N] = static_cast<gemm_t>(src[r * part.k_step]);
      }
    }
  });
}

// One call's plan, bases and buffers' types: gemm_t the DFT GEMMs' dtype (bf16 or acc_t).
template <typename scalar_t, typename acc_t>
struct BatchedCall {
  int64_t B, T, C_in, C_out, K, Kp;
  FoldPlan plan;
  UnitCircle circle;
  at::ScalarType gemm_type, acc_type;
  BatchedCall(const at::Tensor& x, const at::Tensor& weight)
      : B(x.size(0)), T(x.size(1)), C_in(x.size(2)), C_out(weight.size(1)), K(weight.size(2)),
        Kp(padded_modes(K, ModeVectors<acc_t>::kLanes)), plan(T, K), circle(T),
        gemm_type(x.scalar_type() == at::kBFloat16 && cpu_has_bf16_dot() ? at::kBFloat16
                                                                         : c10::CppTypeToScalarType<acc_t>::value),
        acc_type(c10::CppTypeToScalarType<acc_t>::value) {}
  at::TensorOptions options(at::ScalarType t) const { return at::TensorOptions().dtype(t); }
};

// modes [B, C, 2, Kp] (acc_t) of the analysis of z [B, T, C] (src_t): X = F x, or dY = G^T g (g_scale).
template <typename gemm_t, typename src_t, typename scalar_t, typename acc_t>
at::Tensor analyse(const BatchedCall<scalar_t, acc_t>& call, const src_t* z, int64_t C, bool g_scale) {
  const FoldPlan& plan = call.plan;
  at::Tensor folded = at::empty({plan.folded_rows, call.B * C}, call.options(call.gemm_type));
  fold_signal<src_t, gemm_t, acc_t>(plan, z, call.B, C, folded.mutable_data_ptr<gemm_t>());
  at::Tensor spectrum = at::empty({plan.z_rows, call.B * C}, call.options(call.gemm_type));
  analysis_gemms(plan, analysis_matrices(plan, call.circle, g_scale, call.gemm_type), folded, spectrum);
  at::Tensor modes = at::empty({call.B, C, 2, call.Kp}, call.options(call.acc_type));
  spectrum_to_modes(plan, spectrum.const_data_ptr<gemm_t>(), call.B, C, call.Kp, modes.mutable_data_ptr<acc_t>());
  return modes;
}

// out [B, T, C] = epilogue(synthesis of modes [B, C, 2, Kp], aux): s = G Y (g_scale), or dx = F^T dX.
template <typename gemm_t, typename out_t, typename aux_t, typename scalar_t, typename acc_t>
void synthesise(const BatchedCall<scalar_t, acc_t>& call, const at::Tensor& modes, int64_t C, bool g_scale, int kind,
                const aux_t* aux, acc_t slope, out_t* out) {
  const FoldPlan& plan = call.plan;
  at::Tensor spectrum = at::empty({plan.z_rows, call.B * C}, call.options(call.gemm_type));
  modes_to_spectrum(plan, modes.const_data_ptr<acc_t>(), call.B, C, call.Kp, spectrum.mutable_data_ptr<gemm_t>());
  const int64_t parts = static_cast<int64_t>(plan.parts.size());
  at::Tensor sums = at::empty({parts * plan.synth_rows, call.B * C}, call.options(call.gemm_type));
  synthesis_gemms(plan, synthesis_matrices(plan, call.circle, g_scale, call.gemm_type), spectrum, sums);
  const gemm_t* sp = sums.const_data_ptr<gemm_t>();
  switch (kind) {
    case kResidualLeaky:
      unfold_signal<kResidualLeaky>(plan, sp, call.B, C, aux, slope, out);
      break;
    case kLeakyGrad:
      unfold_signal<kLeakyGrad>(plan, sp, call.B, C, aux, slope, out);
      break;
    case kAddAux:
      unfold_signal<kAddAux>(plan, sp, call.B, C, aux, slope, out);
      break;
    default:
      unfold_signal<kStore>(plan, sp, call.B, C, aux, slope, out);
  }
}

// Y = the mixing of X (both [B, C, 2, Kp]): Y[b, o, k] = sum_i X[b, i, k] W[i, o, k].
template <typename scalar_t, typename acc_t>
at::Tensor mix_forward(const BatchedCall<scalar_t, acc_t>& call, const at::Tensor& X, const scalar_t* w) {
  at::Tensor Y = at::empty({call.B, call.C_out, 2, call.Kp}, call.options(call.acc_type));
  mix_modes<false>(X.const_data_ptr<acc_t>(), call.B, call.C_in, w, 2 * call.K, call.C_out * 2 * call.K, call.K,
                   call.Kp, Y.mutable_data_ptr<acc_t>(), call.C_out);
  return Y;
}

template <typename gemm_t, typename scalar_t, typename acc_t>
at::Tensor forward_folded_as(const at::Tensor& x, const at::Tensor& weight, bool time_conv, double slope) {
  const BatchedCall<scalar_t, acc_t> call(x, weight);
  const at::Tensor w = weight.contiguous();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const at::Tensor X = analyse<gemm_t>(call, xp, call.C_in, false);
  const at::Tensor Y = mix_forward(call, X, w.const_data_ptr<scalar_t>());
  at::Tensor y = at::empty(output_shape(x, weight), x.options());
  synthesise<gemm_t>(call, Y, call.C_out, true, time_conv ? kResidualLeaky : kStore, time_conv ? xp : nullptr,
                     static_cast<acc_t>(slope), y.mutable_data_ptr<scalar_t>());
  return y;
}

template <typename gemm_t, typename scalar_t, typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_folded_as(const at::Tensor& dy, const at::Tensor& x,
                                                       const at::Tensor& weight, bool time_conv, double slope) {
  const BatchedCall<scalar_t, acc_t> call(x, weight);
  const at::Tensor w = weight.contiguous();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  const acc_t neg = static_cast<acc_t>(slope);
  const at::Tensor X = analyse<gemm_t>(call, xp, call.C_in, false);
  at::Tensor dY;
  if (time_conv) {  // g = dy * leaky_relu'(s), s recomputed
    at::Tensor g = at::empty({call.B, call.T, call.C_out}, call.options(call.acc_type));
    synthesise<gemm_t>(call, mix_forward(call, X, wp), call.C_out, true, kLeakyGrad, dyp, neg,
                       g.mutable_data_ptr<acc_t>());
    dY = analyse<gemm_t>(call, g.const_data_ptr<acc_t>(), call.C_out, true);
  } else {
    dY = analyse<gemm_t>(call, dyp, call.C_out, true);
  }
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  grad_weight_all(X.const_data_ptr<acc_t>(), dY.const_data_ptr<acc_t>(), call.B, call.C_in, call.C_out, call.K,
                  call.Kp, grad_weight.mutable_data_ptr<scalar_t>());
  // dX[b, i, k] = sum_o dY[b, o, k] conj(W[i, o, k])
  at::Tensor dX = at::empty({call.B, call.C_in, 2, call.Kp}, call.options(call.acc_type));
  mix_modes<true>(dY.const_data_ptr<acc_t>(), call.B, call.C_out, wp, call.C_out * 2 * call.K, 2 * call.K, call.K,
                  call.Kp, dX.mutable_data_ptr<acc_t>(), call.C_in);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  synthesise<gemm_t>(call, dX, call.C_in, false, time_conv ? kAddAux : kStore, time_conv ? dyp : nullptr, neg,
                     grad_x.mutable_data_ptr<scalar_t>());
  return {grad_x, grad_weight};
}

template <typename scalar_t, typename acc_t>
at::Tensor forward_folded(const at::Tensor& x, const at::Tensor& weight, bool time_conv, double slope) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    if (cpu_has_bf16_dot()) return forward_folded_as<at::BFloat16, scalar_t, acc_t>(x, weight, time_conv, slope);
  }
  return forward_folded_as<acc_t, scalar_t, acc_t>(x, weight, time_conv, slope);
}

template <typename scalar_t, typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_folded(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                    bool time_conv, double slope) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    if (cpu_has_bf16_dot()) return backward_folded_as<at::BFloat16, scalar_t, acc_t>(dy, x, weight, time_conv, slope);
  }
  return backward_folded_as<acc_t, scalar_t, acc_t>(dy, x, weight, time_conv, slope);
}

// The path a call with x and weight takes, by name: what tests use to check that their samples reach each one
// (time_conv's backward takes the folded path from a smaller T K: kFoldedMinTKTimeConvBackward).
std::string cpu_path(const at::Tensor& x, const at::Tensor& weight) {
  check_inputs(x, weight, false);
  const Dims d = describe_dims(x, weight);
  if (use_folded_path(d)) return "folded";
  if (use_batched_path(d)) return "batched";
  return use_direct_path(d) ? "direct" : "gemm";
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& weight, bool time_conv, double slope) {
  check_inputs(x_in, weight, time_conv);
  at::Tensor y = at::empty(output_shape(x_in, weight), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous();
  const Dims dims = describe_dims(x, weight);
  const bool folded = use_folded_path(dims), batched = use_batched_path(dims);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spectral_time_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (folded) {
      y = forward_folded<scalar_t, acc_t>(x, weight, time_conv, slope);
      return;
    }
    if (batched) {
      y = forward_batched<scalar_t, acc_t>(x, weight, time_conv, slope);
      return;
    }
    const at::ScalarType acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const Spectral sp = make_spectral<scalar_t, acc_t>(x, weight);
    const int64_t cols = tile_columns(sp, 1), columns = sp.B * sp.P;
    const int64_t tiles = (columns + cols - 1) / cols;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t* F = sp.F.const_data_ptr<acc_t>();
    const acc_t* G = sp.G.const_data_ptr<acc_t>();
    const acc_t neg = static_cast<acc_t>(slope);
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      TileBuffers buf(sp, cols, acc_type);
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n0 = tile * cols, width = std::min(cols, columns - n0);
        if (use_direct_path(sp)) {
          load_transform(xp, F, sp.R, buf.X.mutable_data_ptr<acc_t>(), sp.T, sp.C_in, sp.P, n0, width, cols);
          mix_products(sp, buf);
          const acc_t* Yb = buf.Y.const_data_ptr<acc_t>();
          if (time_conv) {
            store_transform(Yb, G, sp.R, yp, sp.T, sp.C_out, sp.P, n0, width, cols, [&](int64_t offset, acc_t v) {
              return apply_epilogue(kResidualLeaky, v, static_cast<acc_t>(xp[offset]), neg);
            });
          } else {
            store_transform(Yb, G, sp.R, yp, sp.T, sp.C_out, sp.P, n0, width, cols, [](int64_t, acc_t v) { return v; });
          }
          continue;
        }
        acc_t* xb = buf.x.mutable_data_ptr<acc_t>();
        gather_columns(xp, xb, sp.T, sp.C_in, sp.P, n0, width, cols);
        tile_forward(sp, buf);
        acc_t* sb = buf.s.mutable_data_ptr<acc_t>();
        if (time_conv) {  // y = x + leaky_relu(s); C_in == C_out, so x's tile lines up with s's
          const int64_t n = sp.T * sp.C_out * cols;
          for (int64_t i = 0; i < n; ++i) sb[i] = apply_epilogue(kResidualLeaky, sb[i], xb[i], neg);
        }
        scatter_columns(sb, yp, sp.T, sp.C_out, sp.P, n0, width, cols);
      }
    });
  });
  return y;
}

// What one backward call reads and writes, as the tile functions see it.
template <typename scalar_t, typename acc_t>
struct BackwardCall {
  const Spectral& sp;
  bool time_conv;
  acc_t slope;
  const scalar_t* x;
  const scalar_t* dy;
  scalar_t* dx;
  const acc_t* F;        // [R, T]
  const acc_t* G;        // [T, R]
  const acc_t* Gt_rows;  // G^T [R, T], row-major: the direct path's adjoint of the inverse DFT
  const acc_t* Ft_rows;  // F^T [T, R], row-major: the direct path's adjoint of the DFT
  int64_t cols;          // columns per tile
};

// Per-thread buffers of the backward beyond the forward's TileBuffers, each with kBlock elements of slack.
struct BackwardBuffers {
  at::Tensor g, dY, dX;     // dL/ds [T, C_out, cols], G^T g [R, C_out, cols], [R, C_in, cols]
  at::Tensor dx, dy;        // GEMM path: dx's tile [T, C_in, cols]; time_conv: dy's [T, C_out, cols]
  at::Tensor Gt, Ft;        // transposed views of the bases
  std::vector<at::Tensor> dY_q, dX_q, Wt_q, Xt_q;  // per product: views of dY, dX; W_q^T; X_q^T (of buf.X)
  BackwardBuffers(const Spectral& sp, const TileBuffers& buf, int64_t cols, at::ScalarType acc, bool time_conv) {
    g = TileBuffers::tile_buffer(sp.T, sp.C_out, cols, acc);
    dY = TileBuffers::tile_buffer(sp.R, sp.C_out, cols, acc);
    dX = TileBuffers::tile_buffer(sp.R, sp.C_in, cols, acc);
    dx = at::empty({sp.T, sp.C_in * cols}, at::TensorOptions().dtype(acc));
    if (time_conv) dy = at::empty({sp.T, sp.C_out * cols}, at::TensorOptions().dtype(acc));
    Gt = sp.G.t();
    Ft = sp.F.t();
    dY_q = TileBuffers::products(sp, dY, sp.C_out, cols);
    dX_q = TileBuffers::products(sp, dX, sp.C_in, cols);
    for (size_t q = 0; q < sp.products.size(); ++q) {
      Wt_q.push_back(sp.W[q].t());
      Xt_q.push_back(buf.X_q[q].t());
    }
  }
};

// The mixing's backward on the tile: dX_q = W_q^T dY_q, and grad_weight_q = dY_q X_q^T, set on a chunk's
// first tile and accumulated on the others.
void mix_products_backward(const Spectral& sp, BackwardBuffers& bwd, std::vector<at::Tensor>& grad_weight_q,
                           bool first_tile) {
  for (size_t q = 0; q < sp.products.size(); ++q) {
    at::mm_out(bwd.dX_q[q], bwd.Wt_q[q], bwd.dY_q[q]);
    if (first_tile) {
      at::mm_out(grad_weight_q[q], bwd.dY_q[q], bwd.Xt_q[q]);
    } else {
      at::addmm_out(grad_weight_q[q], grad_weight_q[q], bwd.dY_q[q], bwd.Xt_q[q]);
    }
  }
}

// Direct path: X = F x folded into the tile load, dY = G^T g into the load of dy (time_conv: with the
// LeakyReLU mask from s recomputed out of Y), dx = F^T dX (+ dy) into the store.
template <typename scalar_t, typename acc_t>
void tile_backward_direct(const BackwardCall<scalar_t, acc_t>& call, TileBuffers& buf, BackwardBuffers& bwd,
                          std::vector<at::Tensor>& grad_weight_q, int64_t n0, int64_t width, bool first_tile) {
  const Spectral& sp = call.sp;
  const int64_t cols = call.cols;
  acc_t* dY = bwd.dY.mutable_data_ptr<acc_t>();
  load_transform(call.x, call.F, sp.R, buf.X.mutable_data_ptr<acc_t>(), sp.T, sp.C_in, sp.P, n0, width, cols);
  if (call.time_conv) {
    mix_products(sp, buf);  // recompute Y (hence s) for the LeakyReLU mask
    masked_adjoint_transform(buf.Y.const_data_ptr<acc_t>(), call.G, sp.R, call.dy, call.slope, dY, sp.T, sp.C_out,
                             sp.P, n0, width, cols);
  } else {
    load_transform(call.dy, call.Gt_rows, sp.R, dY, sp.T, sp.C_out, sp.P, n0, width, cols);
  }
  mix_products_backward(sp, bwd, grad_weight_q, first_tile);
  const acc_t* dX = bwd.dX.const_data_ptr<acc_t>();
  if (call.time_conv) {  // the residual's gradient is dy itself
    store_transform(dX, call.Ft_rows, sp.R, call.dx, sp.T, sp.C_in, sp.P, n0, width, cols,
                    [&](int64_t offset, acc_t v) { return v + static_cast<acc_t>(call.dy[offset]); });
  } else {
    store_transform(dX, call.Ft_rows, sp.R, call.dx, sp.T, sp.C_in, sp.P, n0, width, cols,
                    [](int64_t, acc_t v) { return v; });
  }
}

// GEMM path: the tile of x (and of dy) gathered, then X = F x, dY = G^T g, the mixing's backward and
// dx = F^T dX (+ dy) as GEMMs, and dx scattered.
template <typename scalar_t, typename acc_t>
void tile_backward_gemm(const BackwardCall<scalar_t, acc_t>& call, TileBuffers& buf, BackwardBuffers& bwd,
                        std::vector<at::Tensor>& grad_weight_q, int64_t n0, int64_t width, bool first_tile) {
  const Spectral& sp = call.sp;
  const int64_t cols = call.cols;
  gather_columns(call.x, buf.x.mutable_data_ptr<acc_t>(), sp.T, sp.C_in, sp.P, n0, width, cols);
  acc_t* g = bwd.g.mutable_data_ptr<acc_t>();
  if (call.time_conv) {
    acc_t* dy = bwd.dy.mutable_data_ptr<acc_t>();
    gather_columns(call.dy, dy, sp.T, sp.C_out, sp.P, n0, width, cols);
    tile_forward(sp, buf);  // recompute s for the LeakyReLU mask
    const acc_t* s = buf.s.const_data_ptr<acc_t>();
    const int64_t n = sp.T * sp.C_out * cols;
    for (int64_t i = 0; i < n; ++i) g[i] = apply_epilogue(kLeakyGrad, s[i], dy[i], call.slope);
  } else {
    gather_columns(call.dy, g, sp.T, sp.C_out, sp.P, n0, width, cols);
    at::mm_out(buf.X, sp.F, buf.x);
  }
  at::mm_out(bwd.dY, bwd.Gt, bwd.g);
  mix_products_backward(sp, bwd, grad_weight_q, first_tile);
  at::mm_out(bwd.dx, bwd.Ft, bwd.dX);
  acc_t* dx = bwd.dx.mutable_data_ptr<acc_t>();
  if (call.time_conv) {  // the residual's gradient is dy itself
    const acc_t* dy = bwd.dy.const_data_ptr<acc_t>();
    const int64_t n = sp.T * sp.C_in * cols;
    for (int64_t i = 0; i < n; ++i) dx[i] += dy[i];
  }
  scatter_columns(dx, call.dx, sp.T, sp.C_in, sp.P, n0, width, cols);
}

// Sums the chunks' per-product weight gradients in order (into chunk 0's), then folds the products back
// into grad_weight's layout [C_in, C_out, K, 2] (contiguous; it stays zero where nothing is written: the
// real modes' imaginary parts).
template <typename scalar_t, typename acc_t>
void fold_grad_weight(const Spectral& sp, std::vector<std::vector<at::Tensor>>& chunk_grad_weight_q,
                      at::Tensor& grad_weight) {
  std::vector<at::Tensor>& total_q = chunk_grad_weight_q[0];
  for (size_t q = 0; q < sp.products.size(); ++q) {
    acc_t* total = total_q[q].mutable_data_ptr<acc_t>();
    const int64_t n = total_q[q].numel();
    for (size_t chunk = 1; chunk < chunk_grad_weight_q.size(); ++chunk) {
      const acc_t* part = chunk_grad_weight_q[chunk][q].const_data_ptr<acc_t>();
      for (int64_t e = 0; e < n; ++e) total[e] += part[e];
    }
  }
  scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
  const int64_t Co = sp.C_out, Ci = sp.C_in;
  for (int64_t k = 0; k < sp.K; ++k) {
    const int64_t first = sp.first_product[k];
    const acc_t* d = total_q[first].const_data_ptr<acc_t>();
    const bool complex = !mode_is_real(k, sp.T);
    const acc_t* d_wi = complex && sp.gauss ? total_q[first + 1].const_data_ptr<acc_t>() : nullptr;
    const acc_t* d_sum = complex && sp.gauss ? total_q[first + 2].const_data_ptr<acc_t>() : nullptr;
    for (int64_t i = 0; i < Ci; ++i) {
      for (int64_t o = 0; o < Co; ++o) {
        scalar_t* out = gw + ((i * Co + o) * sp.K + k) * 2;
        if (!complex) {
          out[0] = static_cast<scalar_t>(d[o * Ci + i]);
        } else if (sp.gauss) {  // W_1 = Wr, W_2 = Wi, W_3 = Wr + Wi
          out[0] = static_cast<scalar_t>(d[o * Ci + i] + d_sum[o * Ci + i]);
          out[1] = static_cast<scalar_t>(d_wi[o * Ci + i] + d_sum[o * Ci + i]);
        } else {  // dM = [[dA, dB], [dC, dD]]: grad Wr = dA + dD, grad Wi = dC - dB
          const int64_t pitch = 2 * Ci;
          out[0] = static_cast<scalar_t>(d[o * pitch + i] + d[(Co + o) * pitch + Ci + i]);
          out[1] = static_cast<scalar_t>(d[(Co + o) * pitch + i] - d[o * pitch + Ci + i]);
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& weight, bool time_conv, double slope) {
  check_inputs(x_in, weight, time_conv);
  check_grad_out(grad_out_in, x_in, weight);
  at::Tensor grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  if (grad_out_in.numel() == 0) {
    grad_x.zero_();
    return {grad_x, grad_weight};
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = grad_out_in.to(x.scalar_type()).contiguous();
  const Dims dims = describe_dims(x, weight);
  const bool folded = use_folded_path(dims, time_conv), batched = use_batched_path(dims);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spectral_time_conv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (folded) {
      std::tie(grad_x, grad_weight) = backward_folded<scalar_t, acc_t>(dy, x, weight, time_conv, slope);
      return;
    }
    if (batched) {
      std::tie(grad_x, grad_weight) = backward_batched<scalar_t, acc_t>(dy, x, weight, time_conv, slope);
      return;
    }
    const at::ScalarType acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const Spectral sp = make_spectral<scalar_t, acc_t>(x, weight);
    // Twice the forward's tile: the weight gradient's GEMM reduces over the tile's columns, and longer is
    // faster.
    const int64_t cols = tile_columns(sp, 2);
    const int64_t columns = sp.B * sp.P;
    const int64_t tiles = (columns + cols - 1) / cols;
    // A fixed number of chunks (not threads) keeps the grad_weight sum order, hence its value, reproducible.
    const int64_t chunks = std::min<int64_t>(tiles, 16);
    std::vector<std::vector<at::Tensor>> chunk_grad_weight_q(chunks);  // per chunk, per product
    for (auto& grad_weight_q : chunk_grad_weight_q) {
      for (const at::Tensor& W : sp.W) grad_weight_q.push_back(at::empty_like(W));
    }
    const at::Tensor Gt_rows = sp.G.t().contiguous(), Ft_rows = sp.F.t().contiguous();
    const BackwardCall<scalar_t, acc_t> call{sp,
                                             time_conv,
                                             static_cast<acc_t>(slope),
                                             x.const_data_ptr<scalar_t>(),
                                             dy.const_data_ptr<scalar_t>(),
                                             grad_x.mutable_data_ptr<scalar_t>(),
                                             sp.F.const_data_ptr<acc_t>(),
                                             sp.G.const_data_ptr<acc_t>(),
                                             Gt_rows.const_data_ptr<acc_t>(),
                                             Ft_rows.const_data_ptr<acc_t>(),
                                             cols};
    const bool direct = use_direct_path(sp);
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      TileBuffers buf(sp, cols, acc_type);
      BackwardBuffers bwd(sp, buf, cols, acc_type, time_conv);
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t first_tile = chunk * tiles / chunks;
        for (int64_t tile = first_tile; tile < (chunk + 1) * tiles / chunks; ++tile) {
          const int64_t n0 = tile * cols, width = std::min(cols, columns - n0);
          auto& grad_weight_q = chunk_grad_weight_q[chunk];
          if (direct) {
            tile_backward_direct(call, buf, bwd, grad_weight_q, n0, width, tile == first_tile);
          } else {
            tile_backward_gemm(call, buf, bwd, grad_weight_q, n0, width, tile == first_tile);
          }
        }
      }
    });
    fold_grad_weight<scalar_t, acc_t>(sp, chunk_grad_weight_q, grad_weight);
  });
  return {grad_x, grad_weight};
}

}  // namespace

TORCH_LIBRARY(dsno_kernels, m) {
  m.def("spectral_time_conv(Tensor x, Tensor weight) -> Tensor");
  m.def("time_conv(Tensor x, Tensor weight, float negative_slope) -> Tensor");
  m.def("spectral_time_conv_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  m.def("time_conv_backward(Tensor grad_out, Tensor x, Tensor weight, float negative_slope) -> (Tensor, Tensor)");
  m.def("cpu_path(Tensor x, Tensor weight) -> str");
}

TORCH_LIBRARY_IMPL(dsno_kernels, CPU, m) {
  Ops<forward_cpu, backward_cpu>::register_impls(m);
  m.impl("cpu_path", &cpu_path);
}

}  // namespace dsno_kernels

// The extension is imported as a Python module only so that loading it runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
