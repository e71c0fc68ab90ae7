// Shared helpers for Ferrite's kernels: f32 <-> storage type conversion and block reductions.
// Every kernel computes in f32 whatever the storage type, like the CPU twins in src/ops/.
//
// Self-contained on purpose: no <cuda_fp16.h> / <cuda_bf16.h> (or any other header), because the
// kernels are compiled at first use with the machine's NVRTC (src/ops/cuda.rs), and NVRTC has no
// include path and no toolkit headers unless a full toolkit is installed. The loader inlines this
// file in place of `#include "common.cuh"`. f16_t / bf16_t are 2-byte storage types with the same
// layout as half::f16 / half::bf16 on the Rust side.
#pragma once

// NVRTC has no <math.h>: the float infinity from its bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

struct alignas(2) f16_t { unsigned short bits; };
struct alignas(2) bf16_t { unsigned short bits; };

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<f16_t>(f16_t v) {
#ifdef FERRITE_CPU_EMU  // kernels/emu: the CPU emulator has no PTX
    return ferrite_emu_f16_to_f32(v.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}
// bf16 is the top half of an f32.
template <> __device__ __forceinline__ float to_f<bf16_t>(bf16_t v) { return __uint_as_float((unsigned)v.bits << 16); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
// Round to nearest even, as __float2half and half::f16::from_f32 do.
template <> __device__ __forceinline__ f16_t from_f<f16_t>(float v) {
#ifdef FERRITE_CPU_EMU
    return f16_t{ferrite_emu_f32_to_f16(v)};
#else
    f16_t r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
#endif
}
// Round to nearest even in integer arithmetic (any arch; cvt.rn.bf16.f32 needs sm_80); NaN stays a
// quiet NaN. Same results as __float2bfloat16 and half::bf16::from_f32.
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{(unsigned short)0x7fc0u};
    return bf16_t{(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result: each
// warp reduces the per-warp partials indexed by its own lane (not by threadIdx.x, which would leave
// warps 1.. with nothing), so all warps end with the same total.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = ((unsigned)lane < (blockDim.x >> 5)) ? partial[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = ((unsigned)lane < (blockDim.x >> 5)) ? partial[lane] : -INFINITY;
    return warp_max(v);
}
