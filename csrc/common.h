// What the CPU kernels (csrc/spectral_time_conv.cpp) and the CUDA kernels (csrc/cuda/) share: the input
// checks, the real/complex split of the modes, the epilogue kinds, and the four ops written once over a
// backend's forward and backward. The maths is in dsno_kernels/backends/reference.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

// Host and device where nvcc compiles the header, host only in the C++ compiler.
#if defined(__CUDACC__)
#define DSNO_HOST_DEVICE __host__ __device__
#define DSNO_HOST_DEVICE_FORCEINLINE __host__ __device__ __forceinline__
#else
#define DSNO_HOST_DEVICE
#define DSNO_HOST_DEVICE_FORCEINLINE inline
#endif

namespace dsno_kernels {

// The DC mode and, for even T, the Nyquist mode are real: one row of the real DFT (cos) instead of two.
DSNO_HOST_DEVICE inline bool mode_is_real(int64_t k, int64_t T) { return k == 0 || 2 * k == T; }

DSNO_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What an op does with the synthesised s where it writes its output (aux: a tensor of the output's shape).
enum Epilogue : int {
  kStore = 0,          // out = s
  kResidualLeaky = 1,  // out = aux + leaky_relu(s)           time_conv forward (aux = x)
  kLeakyGrad = 2,      // out = aux * (s > 0 ? 1 : slope)      time_conv's dL/ds (aux = dy)
  kAddAux = 3,         // out = s + aux                        time_conv's dx (aux = dy)
};

// Selects rather than branches, so that loops over it vectorise (the sign of s is random).
template <typename acc_t>
DSNO_HOST_DEVICE_FORCEINLINE acc_t apply_epilogue(int kind, acc_t s, acc_t aux, acc_t slope) {
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

// The kernels' own checks (the Python API checks first and raises ValueError / TypeError; these keep a
// direct torch.ops call from reading out of bounds). `square`: time_conv, which needs C_in == C_out.
inline void check_inputs(const at::Tensor& x, const at::Tensor& weight, bool square) {
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
  TORCH_CHECK(x.device() == weight.device(), "x and weight must be on the same device, got ", x.device(), " and ",
              weight.device());
}

// The sizes of one call: x [B, T, C_in, *S] with P = prod(S) pixels, weight [C_in, C_out, K, 2].
struct Dims {
  int64_t B, T, C_in, C_out, K, P;
};

inline Dims describe_dims(const at::Tensor& x, const at::Tensor& weight) {
  int64_t P = 1;
  for (int64_t d = 3; d < x.dim(); ++d) P *= x.size(d);
  return {x.size(0), x.size(1), x.size(2), weight.size(1), weight.size(2), P};
}

// y's shape: x's with C_out in place of C_in.
inline std::vector<int64_t> output_shape(const at::Tensor& x, const at::Tensor& weight) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape[2] = weight.size(1);
  return shape;
}

inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight) {
  const std::vector<int64_t> shape = output_shape(x, weight);
  TORCH_CHECK(grad_out.sizes().vec() == shape, "grad_out must have shape ", at::IntArrayRef(shape), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device(), "grad_out must be on x's device ", x.device(), ", got ",
              grad_out.device());
}

// A backend's kernels: forward(x, weight, time_conv, slope) -> y and
// backward(grad_out, x, weight, time_conv, slope) -> (grad_x, grad_weight); time_conv adds the
// residual + LeakyReLU epilogue (slope is ignored without it).
using ForwardFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, bool, double);
using BackwardFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          bool, double);

// The four ops of the schema (csrc/spectral_time_conv.cpp) on one backend's kernels.
template <ForwardFn forward, BackwardFn backward>
struct Ops {
  static at::Tensor spectral_time_conv(const at::Tensor& x, const at::Tensor& weight) {
    return forward(x, weight, false, 0.0);
  }
  static at::Tensor time_conv(const at::Tensor& x, const at::Tensor& weight, double negative_slope) {
    return forward(x, weight, true, negative_slope);
  }
  static std::tuple<at::Tensor, at::Tensor> spectral_time_conv_backward(const at::Tensor& grad_out,
                                                                        const at::Tensor& x, const at::Tensor& weight) {
    return backward(grad_out, x, weight, false, 0.0);
  }
  static std::tuple<at::Tensor, at::Tensor> time_conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                               const at::Tensor& weight, double negative_slope) {
    return backward(grad_out, x, weight, true, negative_slope);
  }
  // Registers the four for the dispatch key of `m` (a TORCH_LIBRARY_IMPL block).
  static void register_impls(torch::Library& m) {
    m.impl("spectral_time_conv", &spectral_time_conv);
    m.impl("time_conv", &time_conv);
    m.impl("spectral_time_conv_backward", &spectral_time_conv_backward);
    m.impl("time_conv_backward", &time_conv_backward);
  }
};

}  // namespace dsno_kernels
