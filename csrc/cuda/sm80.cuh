// sm_80 building blocks of the kernels: element types and their 16-byte vectors, cp.async, ldmatrix,
// mma.sync (bf16 / fp16 m16n8k16, tf32 m16n8k8).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the dsno_kernels CUDA kernels use cp.async, ldmatrix and bf16/tf32 mma.sync: build for sm_80 or newer"
#endif

namespace dsno_kernels {
namespace {  // included by spectral_time_conv_cuda.cu only

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
// The half-precision types also convert pairs (`pair`: __half2 / __nv_bfloat162), which Vec16 packs.
template <>
struct Num<__half> {
  using acc = float;
  using pair = __half2;
  __device__ static float to_acc(__half v) { return __half2float(v); }
  __device__ static __half from_acc(float v) { return __float2half_rn(v); }
  __device__ static float2 pair_to_acc(pair v) { return __half22float2(v); }
  __device__ static pair pair_from_acc(float a, float b) { return __floats2half2_rn(a, b); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  using pair = __nv_bfloat162;
  __device__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
  __device__ static float2 pair_to_acc(pair v) { return __bfloat1622float2(v); }
  __device__ static pair pair_from_acc(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

// 16-byte vectors unpacked to fp32: 8 half-precision values (__half, __nv_bfloat16, through Num's pair
// conversions) or, in the specialisation below, 4 fp32 values.
template <typename T>
struct Vec16 {
  using pair = typename Num<T>::pair;
  static constexpr int kSize = 8;
  __device__ static void unpack(const uint4& v, float (&f)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      pair h;
      std::memcpy(&h, &words[j], 4);
      const float2 p = Num<T>::pair_to_acc(h);
      f[2 * j] = p.x;
      f[2 * j + 1] = p.y;
    }
  }
  __device__ static uint4 pack(const float (&f)[8]) {
    unsigned words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const pair h = Num<T>::pair_from_acc(f[2 * j], f[2 * j + 1]);
      std::memcpy(&words[j], &h, 4);
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
  }
  // Two consecutive values, as the mma accumulator layout holds them.
  __device__ static void store_pair(T* dst, float a, float b) {
    *reinterpret_cast<pair*>(dst) = Num<T>::pair_from_acc(a, b);
  }
};
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
  __device__ static void store_pair(float* dst, float a, float b) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  }
};

// tf32 operands are fp32 bit patterns rounded to 10 mantissa bits (round to nearest, ties away).
__device__ __forceinline__ float round_to_tf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
}

// ------------------------------------------------------------------------------------------------------
// cp.async, ldmatrix, mma.sync.

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


}  // namespace
}  // namespace dsno_kernels
