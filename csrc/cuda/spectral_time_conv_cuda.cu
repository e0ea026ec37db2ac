// CUDA backend of the dsno_kernels ops (schemas in csrc/spectral_time_conv.cpp): which path runs a call,
// and the ops' forward and backward as sequences of `apply` and `compute_grad_weight` (csrc/cuda/terms.cuh
// has the maths of both).
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
//     together and share u through L2: u is read from DRAM once, the output written once. fp32 uses
//     tf32 unless DSNO_KERNELS_FP32=ieee selects exact fp32 FMAs. As in any fp16 tensor-core GEMM, the
//     DFT'd operands are fp16: sums over T of |x| must stay below 65504.
//     grad_weight: the same tiles over (C_in, C_out) with the pixels as the reduction, both operands
//     DFT'd on load, per-block partial sums over a fixed pixel range, then a second kernel that adds
//     the partials in a fixed order (deterministic, no atomics).
//   general (any dtype incl. fp64, any T, K, channels, trailing dims): the same terms as plain FMA GEMMs
//     (64 x 64 tiles) through fp32 (fp64) buffers: X = Bin u, Z_q = M_q X_q, out = epilogue(Bout Z),
//     over batch chunks that keep the buffers under 1 GiB.
// DSNO_KERNELS_CUDA_PATH=general forces the general path, =fused requires the fused one (an error names
// why an input does not qualify); both are for tests and benchmarks, the default "auto" picks. The
// settings arrive validated from dsno_kernels/settings.py (set_cuda_settings below).
//
// The pieces, one header per concern:
//   terms.cuh            the Gauss terms of the DFT; the term-weight and grad_weight-reduce kernels
//   sm80.cuh             element types, 16-byte vectors, cp.async / ldmatrix / mma.sync
//   fused_kernels.cuh    the fused apply and grad_weight kernels
//   general_kernels.cuh  the general path's FMA GEMM kernels
//   launch.cuh           shapes, device facts, and the launchers of both paths

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

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>

#include "../common.h"
#include "fused_kernels.cuh"
#include "general_kernels.cuh"
#include "launch.cuh"
#include "terms.cuh"

namespace dsno_kernels {
namespace {

// ------------------------------------------------------------------------------------------------------
// Settings. dsno_kernels/settings.py is the one place that reads, validates and documents
// DSNO_KERNELS_CUDA_PATH and DSNO_KERNELS_FP32; the cuda backend hands the validated values to
// set_cuda_settings whenever they change (dsno_kernels/backends/cpp.py). Until then, the defaults.

enum class PathChoice : int { kAuto, kFused, kGeneral };

std::atomic<PathChoice> g_path_choice{PathChoice::kAuto};
std::atomic<bool> g_fp32_uses_tf32{true};

// DSNO_KERNELS_CUDA_PATH: "auto" picks, "fused" makes an input the fused kernels refuse an error that says
// why, "general" always takes the general kernels; for tests and benchmarks.
PathChoice path_choice() { return g_path_choice.load(std::memory_order_relaxed); }

// DSNO_KERNELS_FP32: fp32 GEMMs on tf32 tensor cores ("tf32") or in exact fp32 ("ieee"). "tf32x3" is the
// Triton backend's three-pass tf32 (close to fp32); these kernels have no three-pass path and run it as
// exact fp32 FMAs, which is at least as accurate.
bool fp32_uses_tf32() { return g_fp32_uses_tf32.load(std::memory_order_relaxed); }

// dsno_kernels::set_cuda_settings: the values settings.py validated, so anything else is a caller's bug.
void set_cuda_settings(c10::string_view fp32, c10::string_view cuda_path) {
  TORCH_CHECK(fp32 == "tf32" || fp32 == "tf32x3" || fp32 == "ieee",
              "set_cuda_settings takes DSNO_KERNELS_FP32 as dsno_kernels/settings.py validates it, got '", fp32, "'");
  TORCH_CHECK(cuda_path == "auto" || cuda_path == "fused" || cuda_path == "general",
              "set_cuda_settings takes DSNO_KERNELS_CUDA_PATH as dsno_kernels/settings.py validates it, got '",
              cuda_path, "'");
  g_fp32_uses_tf32.store(fp32 == "tf32", std::memory_order_relaxed);
  g_path_choice.store(cuda_path == "fused"     ? PathChoice::kFused
                      : cuda_path == "general" ? PathChoice::kGeneral
                                               : PathChoice::kAuto,
                      std::memory_order_relaxed);
}

// ------------------------------------------------------------------------------------------------------
// The path chooser: one rule for apply and compute_grad_weight.

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Why the fused kernels cannot take these tensors (empty when they can); null tensors are skipped.
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
    if (t != nullptr && !aligned16(t->data_ptr())) return "a tensor's data is not 16-byte aligned";
  }
  return "";
}

// The fused kernels' static shared memory (two basis tables), which counts against the same limit.
constexpr int64_t kFusedStaticSmem = 2 * kMaxFusedT * kFusedTerms * sizeof(float);

// The fused kernel's pipeline depth for this call (the deepest of min_stages .. kMaxStages whose
// shared memory, smem_bytes(stages), fits the device), or 0 for the general path. `pipeline` names the
// kernel's pipeline in the error that DSNO_KERNELS_CUDA_PATH=fused raises for an input it refuses.
template <typename Bytes>
int fused_stages(const Shape& s, at::ScalarType dtype, const DeviceInfo& info,
                 std::initializer_list<const at::Tensor*> tensors, const Bytes& smem_bytes, int min_stages,
                 const char* pipeline) {
  const PathChoice choice = path_choice();
  if (choice == PathChoice::kGeneral) return 0;
  std::string why = fused_rejection(s, dtype, info, tensors);
  int stages = 0;
  if (why.empty()) {
    for (int st = kMaxStages; st >= min_stages && stages == 0; --st) {
      if (smem_bytes(st) + kFusedStaticSmem <= info.smem_optin) stages = st;
    }
    if (stages == 0) {
      why = std::string(pipeline) + " does not fit the device's shared memory for T = " + std::to_string(s.T);
    }
  }
  TORCH_CHECK(choice != PathChoice::kFused || why.empty(), "DSNO_KERNELS_CUDA_PATH=fused, but ", why);
  return stages;
}

// Calls f(std::integral_constant<Math, m>{}) with the fused kernels' math for scalar_t: tensor cores for
// fp16 / bf16, tf32 or exact fp32 for fp32 (DSNO_KERNELS_FP32). float64 has no fused kernels.
template <typename scalar_t, typename F>
void with_fused_math(F&& f) {
  if constexpr (std::is_same<scalar_t, double>::value) {
    TORCH_INTERNAL_ASSERT(false, "float64 has no fused kernels");
  } else if constexpr (std::is_same<scalar_t, float>::value) {
    if (fp32_uses_tf32()) {
      f(std::integral_constant<Math, Math::kTf32>{});
    } else {
      f(std::integral_constant<Math, Math::kFma32>{});
    }
  } else {
    f(std::integral_constant<Math, Math::kMma16>{});
  }
}

// out = epilogue(apply(u)) on the fused path when it takes the input, else on the general path.
template <typename scalar_t>
void apply(const Shape& s, const at::Tensor& u, const at::Tensor& weight, bool adjoint, int epilogue,
           const at::Tensor* aux, at::Tensor& out, double slope, const DeviceInfo& info, cudaStream_t stream) {
  const int stages = fused_stages(
      s, u.scalar_type(), info, {&u, aux, &out}, [&](int st) { return ApplyTile<scalar_t>::smem_bytes(s.T, st); }, 2,
      "the pipeline");
  if (stages > 0) {
    with_fused_math<scalar_t>([&](auto math) {
      launch_fused_apply<decltype(math)::value, scalar_t>(s, u, weight, adjoint, epilogue, aux, out, slope, stages,
                                                          info, stream);
    });
  } else {
    general_apply<scalar_t>(s, u, weight, adjoint, epilogue, aux, out, slope, stream);
  }
}

// grad_weight from x and g = dL/ds on the fused path when it takes the input, else on the general path.
template <typename scalar_t>
void compute_grad_weight(const Shape& s, const at::Tensor& x, const at::Tensor& g, at::Tensor& grad_weight,
                         const DeviceInfo& info, cudaStream_t stream) {
  const int stages = fused_stages(
      s, x.scalar_type(), info, {&x, &g}, [&](int st) { return GradWeightTile<scalar_t>::smem_bytes(s.T, st); }, 1,
      "the grad_weight pipeline");
  if (stages > 0) {
    with_fused_math<scalar_t>([&](auto math) {
      launch_fused_grad_weight<decltype(math)::value, scalar_t>(s, x, g, grad_weight, stages, info, stream);
    });
  } else {
    general_grad_weight<scalar_t>(s, x, g, grad_weight, info, stream);
  }
}

// ------------------------------------------------------------------------------------------------------
// The ops.

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
  at::Tensor y = at::empty(output_shape(x_in, weight_in), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  const Shape s = describe(x_in, weight_in);
  if (s.C_in == 0) return y.zero_();
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
  check_grad_out(grad_out, x_in, weight_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_weight =
      at::empty(weight_in.sizes(), weight_in.options().memory_format(at::MemoryFormat::Contiguous));
  const Shape s = describe(x_in, weight_in);
  if (grad_out.numel() == 0 || s.C_in == 0) {  // nothing flows: zero gradients
    grad_x.zero_();
    grad_weight.zero_();
    return {grad_x, grad_weight};
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
    compute_grad_weight<scalar_t>(s, x, g, grad_weight, info, stream);
  });
  return {grad_x, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsno_kernels, CUDA, m) { Ops<forward_cuda, backward_cuda>::register_impls(m); }

// Defined here, beside the kernels that follow it (the ops' schemas are in csrc/spectral_time_conv.cpp).
TORCH_LIBRARY_FRAGMENT(dsno_kernels, m) {
  m.def("set_cuda_settings(str fp32, str cuda_path) -> ()", &set_cuda_settings);
}

}  // namespace dsno_kernels
