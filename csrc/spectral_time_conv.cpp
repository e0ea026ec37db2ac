// Op schemas of the dsno_kernels namespace and their CPU kernels.
//
//   x [B, T, C_in, *S], weight [C_in, C_out, K, 2]   ->   y [B, T, C_out, *S]
//
// Each pixel column x[b, :, :, p] ([T, C_in]) goes through three GEMMs (see dsno_kernels/backends/reference.py):
//   X = F x            F [R, T]: the truncated real DFT (rows cos, -sin per mode; DC/Nyquist: cos only)
//   Y_k = M_k X_k      per mode k, M_k = [[Wr^T, -Wi^T], [Wi^T, Wr^T]] (real modes: Wr^T)
//   s = G Y            G [T, R]: the irfft restricted to the kept rows
// time_conv adds the epilogue y = x + leaky_relu(s). The backward is the transposed chain:
//   g = dy (time_conv: dy * (s > 0 ? 1 : slope), s recomputed), dY = G^T g, dX_k = M_k^T dY_k,
//   dx = F^T dX (+ dy), dM_k = sum over pixels dY_k X_k^T, folded back into dWr, dWi.
//
// The CPU kernels work on tiles of pixel columns (across the batch, so shapes without trailing dims
// still make wide tiles): one gather of the tile into an fp32 (fp64) buffer, BLAS GEMMs on it, one
// fused write. Nothing but x, dy and the outputs touches memory at full size. dweight is reduced
// per fixed chunk of tiles and the chunks summed in order, so it is deterministic.

#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace dsno_kernels {
namespace {

constexpr double kPi = 3.14159265358979323846;

// The real-form pieces of one call, in the accumulation dtype.
struct Spectral : Dims {
  int64_t R;                             // rows of the real DFT: 1 per real mode, 2 per complex one
  std::vector<int64_t> first_row, rows;  // per mode: its first row in F / G and its row count (1 or 2)
  at::Tensor F, G;                       // [R, T], [T, R]
  std::vector<at::Tensor> M;             // per mode: [rows * C_out, rows * C_in]
};

// Built in acc_t directly (the bases computed in fp64 and rounded once), without temporary tensors: at
// small shapes this per-call work is a visible part of the op.
template <typename scalar_t, typename acc_t>
Spectral make_spectral(const at::Tensor& x, const at::Tensor& weight) {
  Spectral s;
  static_cast<Dims&>(s) = describe_dims(x, weight);
  s.R = 0;
  for (int64_t k = 0; k < s.K; ++k) {
    s.first_row.push_back(s.R);
    s.rows.push_back(mode_is_real(k, s.T) ? 1 : 2);
    s.R += s.rows.back();
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  s.F = at::zeros({s.R, s.T}, options);
  s.G = at::zeros({s.T, s.R}, options);
  acc_t* f = s.F.mutable_data_ptr<acc_t>();  // [R, T]
  acc_t* g = s.G.mutable_data_ptr<acc_t>();  // [T, R]
  for (int64_t k = 0; k < s.K; ++k) {
    const double c = mode_is_real(k, s.T) ? 1.0 : 2.0;
    for (int64_t t = 0; t < s.T; ++t) {
      // reduce k*t mod T first so the angle stays exact for large T
      const double angle = 2.0 * kPi * static_cast<double>((k * t) % s.T) / static_cast<double>(s.T);
      const int64_t r = s.first_row[k];
      f[r * s.T + t] = static_cast<acc_t>(std::cos(angle));
      g[t * s.R + r] = static_cast<acc_t>(c / s.T * std::cos(angle));
      if (s.rows[k] == 2) {
        f[(r + 1) * s.T + t] = static_cast<acc_t>(-std::sin(angle));
        g[t * s.R + r + 1] = static_cast<acc_t>(-c / s.T * std::sin(angle));
      }
    }
  }
  // M_k = [[Wr^T, -Wi^T], [Wi^T, Wr^T]] (real modes: Wr^T).
  const at::Tensor w_contig = weight.contiguous();
  const scalar_t* w = w_contig.const_data_ptr<scalar_t>();  // [C_in, C_out, K, 2]
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t nr = s.rows[k], Co = s.C_out, Ci = s.C_in;
    at::Tensor Mk = at::empty({nr * Co, nr * Ci}, options);
    acc_t* m = Mk.mutable_data_ptr<acc_t>();
    const int64_t pitch = nr * Ci;
    for (int64_t o = 0; o < Co; ++o) {
      for (int64_t i = 0; i < Ci; ++i) {
        const acc_t wr = static_cast<acc_t>(w[((i * Co + o) * s.K + k) * 2]);
        m[o * pitch + i] = wr;
        if (nr == 2) {
          const acc_t wi = static_cast<acc_t>(w[((i * Co + o) * s.K + k) * 2 + 1]);
          m[o * pitch + Ci + i] = -wi;
          m[(Co + o) * pitch + i] = wi;
          m[(Co + o) * pitch + Ci + i] = wr;
        }
      }
    }
    s.M.push_back(Mk);
  }
  return s;
}

// Pixel columns per tile: enough for efficient GEMMs, small enough for the tile buffers to stay in L2
// (`scale` times about 1 MB per thread), and, for small calls (the tiny preset's layers have 128 to 512
// columns), at most 1 / kMinTiles of the columns so that the threads share the work. The rule does not
// depend on the thread count, so neither does dweight's summation order.
constexpr int64_t kMinTiles = 4;
constexpr int64_t kMinTileColumns = 32;

int64_t tile_columns(const Spectral& s, int64_t scale) {
  // x, s, dy tiles ([T, C, cols]) and X, Y ([R, C, cols])
  const int64_t per_column = 3 * s.T * std::max(s.C_in, s.C_out) + s.R * (s.C_in + s.C_out);
  int64_t cols = scale * (256 * 1024) / std::max<int64_t>(per_column, 1);
  cols = std::max<int64_t>(scale * 16, std::min<int64_t>(scale * 512, cols / 16 * 16));
  const int64_t columns = std::max<int64_t>(s.B * s.P, 1);
  const int64_t shared = std::max(kMinTileColumns, ceil_div(ceil_div(columns, kMinTiles), 16) * 16);
  return std::min({cols, shared, columns});
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

// Copies the columns [n0, n0 + width) of src ([B, T, C, P] contiguous) into dst [T, C, cols] in acc_t,
// zero-filling the columns past width.
template <typename scalar_t, typename acc_t>
void gather_columns(const scalar_t* src, acc_t* dst, int64_t T, int64_t C, int64_t P, int64_t n0, int64_t width,
                    int64_t cols) {
  if (width < cols) {
    for (int64_t row = 0; row < T * C; ++row) std::fill(dst + row * cols + width, dst + (row + 1) * cols, acc_t(0));
  }
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

bool use_direct_path(const Spectral& sp) { return sp.T <= kDirectMaxT && sp.P >= kDirectMinP; }

// Longest pixel run the direct path keeps on the stack.
constexpr int64_t kMaxRun = 512;

// run[j] = sum_r A[t][r] src[r][c][col + j] for j < len: one time point of the inverse transform.
template <typename acc_t>
inline void synthesize_run(const acc_t* src, const acc_t* A, int64_t rows, int64_t t, int64_t C, int64_t c,
                           int64_t cols, int64_t col, int64_t len, acc_t* run) {
  std::fill(run, run + len, acc_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t a = A[t * rows + r];
    const acc_t* in = src + (r * C + c) * cols + col;
    for (int64_t j = 0; j < len; ++j) run[j] += a * in[j];
  }
}

// dst[r][c][col] = sum_t A[r][t] src[b, t, c, p] over the tile's columns; A is [rows, T], src [B, T, C, P].
template <typename scalar_t, typename acc_t>
void load_transform(const scalar_t* src, const acc_t* A, int64_t rows, acc_t* dst, int64_t T, int64_t C, int64_t P,
                    int64_t n0, int64_t width, int64_t cols) {
  std::fill(dst, dst + rows * C * cols, acc_t(0));
  for_each_run(P, n0, width, width, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* in = src + ((b * T + t) * C + c) * P + p;
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t a = A[r * T + t];
          acc_t* out = dst + (r * C + c) * cols + col;
          for (int64_t j = 0; j < len; ++j) out[j] += a * static_cast<acc_t>(in[j]);
        }
      }
    }
  });
}

// dst[b, t, c, p] = epilogue(sum_r A[t][r] src[r][c][col], offset of (b, t, c, p)) for the tile's columns.
template <typename scalar_t, typename acc_t, typename Epilogue>
void store_transform(const acc_t* src, const acc_t* A, int64_t rows, scalar_t* dst, int64_t T, int64_t C, int64_t P,
                     int64_t n0, int64_t width, int64_t cols, Epilogue epilogue) {
  acc_t run[kMaxRun];
  for_each_run(P, n0, width, kMaxRun, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t t = 0; t < T; ++t) {
        synthesize_run(src, A, rows, t, C, c, cols, col, len, run);
        const int64_t offset = ((b * T + t) * C + c) * P + p;
        for (int64_t j = 0; j < len; ++j) dst[offset + j] = static_cast<scalar_t>(epilogue(offset + j, run[j]));
      }
    }
  });
}

// time_conv backward, direct path: dY[r][c][col] = sum_t G[t][r] g_t with g_t = dy_t * leaky_relu'(s_t) and
// s_t = sum_r G[t][r] Y[r][c][col] recomputed from the tile's Y (nothing was saved by the forward).
template <typename scalar_t, typename acc_t>
void masked_adjoint_transform(const acc_t* Y, const acc_t* G, int64_t rows, const scalar_t* dy, acc_t slope, acc_t* dY,
                              int64_t T, int64_t C, int64_t P, int64_t n0, int64_t width, int64_t cols) {
  acc_t run[kMaxRun];
  std::fill(dY, dY + rows * C * cols, acc_t(0));
  for_each_run(P, n0, width, kMaxRun, [&](int64_t b, int64_t p, int64_t col, int64_t len) {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t t = 0; t < T; ++t) {
        synthesize_run(Y, G, rows, t, C, c, cols, col, len, run);
        const scalar_t* grad = dy + ((b * T + t) * C + c) * P + p;
        for (int64_t j = 0; j < len; ++j) run[j] = apply_epilogue(kLeakyGrad, run[j], static_cast<acc_t>(grad[j]), slope);
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t a = G[t * rows + r];
          acc_t* out = dY + (r * C + c) * cols + col;
          for (int64_t j = 0; j < len; ++j) out[j] += a * run[j];
        }
      }
    }
  });
}

// [rows, C * cols] per mode k: rows first_row[k] .. + rows[k] of a tile buffer [R, C * cols], as a
// [rows[k] * C, cols] GEMM operand. Made once per thread, not per tile (a view costs a few us).
std::vector<at::Tensor> mode_views(const Spectral& sp, const at::Tensor& buffer, int64_t C, int64_t cols) {
  std::vector<at::Tensor> views;
  for (int64_t k = 0; k < sp.K; ++k) {
    views.push_back(buffer.narrow(0, sp.first_row[k], sp.rows[k]).view({sp.rows[k] * C, cols}));
  }
  return views;
}

// Per-thread tile buffers.
struct TileBuffers {
  at::Tensor x, X, Y, s;  // [T, C_in, cols], [R, C_in, cols], [R, C_out, cols], [T, C_out, cols]
  std::vector<at::Tensor> X_modes, Y_modes;  // mode_views of X and Y
  TileBuffers(const Spectral& sp, int64_t cols, at::ScalarType acc) {
    auto opt = at::TensorOptions().dtype(acc);
    x = at::empty({sp.T, sp.C_in * cols}, opt);
    X = at::empty({sp.R, sp.C_in * cols}, opt);
    Y = at::empty({sp.R, sp.C_out * cols}, opt);
    s = at::empty({sp.T, sp.C_out * cols}, opt);
    X_modes = mode_views(sp, X, sp.C_in, cols);
    Y_modes = mode_views(sp, Y, sp.C_out, cols);
  }
};

// Y_k = M_k X_k for every mode: the channel mixing, as BLAS GEMMs on the tile.
void mix_modes(const Spectral& sp, TileBuffers& buf) {
  for (int64_t k = 0; k < sp.K; ++k) at::mm_out(buf.Y_modes[k], sp.M[k], buf.X_modes[k]);
}

// GEMM path: X = F x, Y_k = M_k X_k, s = G Y on the tile already gathered into buf.x.
void tile_forward(const Spectral& sp, TileBuffers& buf) {
  at::mm_out(buf.X, sp.F, buf.x);
  mix_modes(sp, buf);
  at::mm_out(buf.s, sp.G, buf.Y);
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& weight, bool time_conv, double slope) {
  check_inputs(x_in, weight, time_conv);
  at::Tensor y = at::empty(output_shape(x_in, weight), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spectral_time_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
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
          mix_modes(sp, buf);
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

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& weight, bool time_conv, double slope) {
  check_inputs(x_in, weight, time_conv);
  check_grad_out(grad_out_in, x_in, weight);
  at::Tensor grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_w = at::zeros(weight.sizes(), weight.options());
  if (grad_out_in.numel() == 0) {
    grad_x.zero_();
    return {grad_x, grad_w};
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = grad_out_in.to(x.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spectral_time_conv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::ScalarType acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const Spectral sp = make_spectral<scalar_t, acc_t>(x, weight);
    // Twice the forward's tile: dweight's GEMM reduces over the tile's columns, and longer is faster.
    const int64_t cols = tile_columns(sp, 2);
    const int64_t columns = sp.B * sp.P;
    const int64_t tiles = (columns + cols - 1) / cols;
    // A fixed number of chunks (not threads) keeps the dweight sum order, hence its value, reproducible.
    const int64_t chunks = std::min<int64_t>(tiles, 16);
    std::vector<std::vector<at::Tensor>> dM(chunks);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    scalar_t* dxp = grad_x.mutable_data_ptr<scalar_t>();
    const acc_t neg = static_cast<acc_t>(slope);
    // Row-major copies of the bases for the direct path: F [R, T], G [T, R], G^T [R, T], F^T [T, R].
    const at::Tensor Gt_contig = sp.G.t().contiguous(), Ft_contig = sp.F.t().contiguous();
    const acc_t* F = sp.F.const_data_ptr<acc_t>();
    const acc_t* G = sp.G.const_data_ptr<acc_t>();
    const acc_t* Gt_rows = Gt_contig.const_data_ptr<acc_t>();
    const acc_t* Ft_rows = Ft_contig.const_data_ptr<acc_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      auto opt = at::TensorOptions().dtype(acc_type);
      TileBuffers buf(sp, cols, acc_type);
      at::Tensor g = at::empty({sp.T, sp.C_out * cols}, opt);    // dL/ds
      at::Tensor dY = at::empty({sp.R, sp.C_out * cols}, opt);
      at::Tensor dX = at::empty({sp.R, sp.C_in * cols}, opt);
      at::Tensor dxb = at::empty({sp.T, sp.C_in * cols}, opt);
      at::Tensor dy_tile = time_conv ? at::empty({sp.T, sp.C_out * cols}, opt) : at::Tensor();
      const at::Tensor Gt = sp.G.t(), Ft = sp.F.t();
      const std::vector<at::Tensor> dY_modes = mode_views(sp, dY, sp.C_out, cols);
      std::vector<at::Tensor> dX_modes = mode_views(sp, dX, sp.C_in, cols);
      std::vector<at::Tensor> Mt, Xt_modes;  // M_k^T, X_k^T
      for (int64_t k = 0; k < sp.K; ++k) {
        Mt.push_back(sp.M[k].t());
        Xt_modes.push_back(buf.X_modes[k].t());
      }
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        for (int64_t k = 0; k < sp.K; ++k) dM[chunk].push_back(at::zeros_like(sp.M[k]));
        for (int64_t tile = chunk * tiles / chunks; tile < (chunk + 1) * tiles / chunks; ++tile) {
          const int64_t n0 = tile * cols, width = std::min(cols, columns - n0);
          const bool direct = use_direct_path(sp);
          if (direct) {
            load_transform(xp, F, sp.R, buf.X.mutable_data_ptr<acc_t>(), sp.T, sp.C_in, sp.P, n0, width, cols);
            if (time_conv) {
              mix_modes(sp, buf);  // recompute Y (hence s) for the LeakyReLU mask
              masked_adjoint_transform(buf.Y.const_data_ptr<acc_t>(), G, sp.R, dyp, neg, dY.mutable_data_ptr<acc_t>(),
                                       sp.T, sp.C_out, sp.P, n0, width, cols);
            } else {
              load_transform(dyp, Gt_rows, sp.R, dY.mutable_data_ptr<acc_t>(), sp.T, sp.C_out, sp.P, n0, width, cols);
            }
          } else {
            gather_columns(xp, buf.x.mutable_data_ptr<acc_t>(), sp.T, sp.C_in, sp.P, n0, width, cols);
            acc_t* gb = g.mutable_data_ptr<acc_t>();
            if (time_conv) {
              acc_t* dyb = dy_tile.mutable_data_ptr<acc_t>();
              gather_columns(dyp, dyb, sp.T, sp.C_out, sp.P, n0, width, cols);
              tile_forward(sp, buf);  // recompute s for the LeakyReLU mask
              const acc_t* sb = buf.s.const_data_ptr<acc_t>();
              const int64_t n = sp.T * sp.C_out * cols;
              for (int64_t i = 0; i < n; ++i) gb[i] = apply_epilogue(kLeakyGrad, sb[i], dyb[i], neg);
            } else {
              gather_columns(dyp, gb, sp.T, sp.C_out, sp.P, n0, width, cols);
              at::mm_out(buf.X, sp.F, buf.x);
            }
            at::mm_out(dY, Gt, g);
          }
          for (int64_t k = 0; k < sp.K; ++k) {
            at::mm_out(dX_modes[k], Mt[k], dY_modes[k]);
            at::addmm_out(dM[chunk][k], dM[chunk][k], dY_modes[k], Xt_modes[k]);
          }
          if (direct) {
            const acc_t* dXb = dX.const_data_ptr<acc_t>();
            if (time_conv) {  // the residual's gradient is dy itself
              store_transform(dXb, Ft_rows, sp.R, dxp, sp.T, sp.C_in, sp.P, n0, width, cols,
                              [&](int64_t offset, acc_t v) { return v + static_cast<acc_t>(dyp[offset]); });
            } else {
              store_transform(dXb, Ft_rows, sp.R, dxp, sp.T, sp.C_in, sp.P, n0, width, cols,
                              [](int64_t, acc_t v) { return v; });
            }
            continue;
          }
          at::mm_out(dxb, Ft, dX);
          acc_t* dxbp = dxb.mutable_data_ptr<acc_t>();
          if (time_conv) {  // the residual's gradient is dy itself
            const acc_t* dyb = dy_tile.const_data_ptr<acc_t>();
            const int64_t n = sp.T * sp.C_in * cols;
            for (int64_t i = 0; i < n; ++i) dxbp[i] += dyb[i];
          }
          scatter_columns(dxbp, dxp, sp.T, sp.C_in, sp.P, n0, width, cols);
        }
      }
    });
    // Sum the chunks in order (into chunk 0's), then fold dM_k = [[dA, dB], [dC, dD]] into dWr = dA + dD,
    // dWi = dC - dB (real modes: dWr = dA); grad_w is zero where nothing is written.
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();  // [C_in, C_out, K, 2], contiguous
    for (int64_t k = 0; k < sp.K; ++k) {
      acc_t* total = dM[0][k].mutable_data_ptr<acc_t>();
      const int64_t n = dM[0][k].numel();
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        const acc_t* part = dM[chunk][k].const_data_ptr<acc_t>();
        for (int64_t e = 0; e < n; ++e) total[e] += part[e];
      }
      const int64_t Co = sp.C_out, Ci = sp.C_in, pitch = sp.rows[k] * Ci;
      for (int64_t i = 0; i < Ci; ++i) {
        for (int64_t o = 0; o < Co; ++o) {
          scalar_t* out = gw + ((i * Co + o) * sp.K + k) * 2;
          if (sp.rows[k] == 1) {
            out[0] = static_cast<scalar_t>(total[o * pitch + i]);
          } else {
            out[0] = static_cast<scalar_t>(total[o * pitch + i] + total[(Co + o) * pitch + Ci + i]);
            out[1] = static_cast<scalar_t>(total[(Co + o) * pitch + i] - total[o * pitch + Ci + i]);
          }
        }
      }
    }
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY(dsno_kernels, m) {
  m.def("spectral_time_conv(Tensor x, Tensor weight) -> Tensor");
  m.def("time_conv(Tensor x, Tensor weight, float negative_slope) -> Tensor");
  m.def("spectral_time_conv_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  m.def("time_conv_backward(Tensor grad_out, Tensor x, Tensor weight, float negative_slope) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dsno_kernels, CPU, m) { Ops<forward_cpu, backward_cpu>::register_impls(m); }

}  // namespace dsno_kernels

// The extension is imported as a Python module only so that loading it runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
