// A small CUDA emulator, just enough to run kernels/*.cu on the CPU (no GPU, no CUDA toolkit): one
// std::thread per CUDA thread of a block, all blocks of a grid run one after another by the same
// threads. __syncthreads is a barrier over the block's threads, __shfl_xor_sync an exchange through
// a per-warp buffer between two barriers over the warp's 32 threads, and __shared__ variables are
// static (one block at a time, and every thread waits at the end of each block before the next
// starts, so shared memory is never reused early). A thread that returns early still arrives at the
// end of its block; as on a GPU, a kernel must not __syncthreads after some threads returned (none
// here does: only q8_gemv returns early, whole warps at a time, and it has no __syncthreads).
//
// What it proves: the kernels' indexing, tails, reductions, shared-memory use and intra-block
// communication. What it does not: timing, memory coalescing, races the barriers hide (a real warp
// runs in lockstep; here lanes interleave arbitrarily between barriers, which is stricter), and the
// two inline-asm f16 conversions in common.cuh (software round-to-nearest-even stands in).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define FERRITE_CPU_EMU 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) int4 {
    int x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
struct Warp {
    explicit Warp(std::ptrdiff_t lanes) : bar(lanes) {}
    std::uint64_t slot[32] = {};
    std::barrier<> bar;
};
inline thread_local std::barrier<>* block_bar = nullptr;
inline thread_local Warp* warp = nullptr;
}  // namespace emu

inline void __syncthreads() { emu::block_bar->arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    const unsigned lane = threadIdx.x & 31;
    std::memcpy(&emu::warp->slot[lane], &v, sizeof(T));
    emu::warp->bar.arrive_and_wait();
    T r;
    std::memcpy(&r, &emu::warp->slot[lane ^ (unsigned)lane_mask], sizeof(T));
    emu::warp->bar.arrive_and_wait();
    return r;
}

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float v) { unsigned u; std::memcpy(&u, &v, 4); return u; }
inline float __expf(float v) { return std::exp(v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }

// IEEE binary16 <-> f32 in software (round to nearest even), for the emulated f16 conversions.
inline float ferrite_emu_f16_to_f32(unsigned short h) {
    const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        const float m = std::ldexp((float)man, -24);
        return sign ? -m : m;
    }
    return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
}
inline unsigned short ferrite_emu_f32_to_f16(float f) {
    const unsigned u = __float_as_uint(f), sign = (u >> 16) & 0x8000u;
    const unsigned abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);  // NaN
    if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to infinity
    if (abs < 0x38800000u) {  // subnormal or zero in f16: value / 2^-24, rounded to nearest even
        const float scaled = std::ldexp(__uint_as_float(abs), 24);
        return (unsigned short)(sign | (unsigned)std::nearbyint(scaled));
    }
    const unsigned mant = abs & 0x7fffffu, exp = (abs >> 23) - 112;
    unsigned h = (exp << 10) | (mant >> 13);
    const unsigned rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}

namespace emu {
// Runs kernel<<<grid, block>>>(args...): block.x threads (1-D blocks), every block of the grid.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    const unsigned n = block.x * block.y * block.z;
    std::barrier<> bar(n);
    std::vector<std::unique_ptr<Warp>> warps;
    for (unsigned w = 0; w * 32 < n; ++w) warps.push_back(std::make_unique<Warp>(std::min(32u, n - 32 * w)));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            blockDim = block;
            gridDim = grid;
            block_bar = &bar;
            warp = warps[t / 32].get();
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = dim3{x, y, z};
                        kernel(static_cast<P>(args)...);
                        bar.arrive_and_wait();  // the block ends: shared memory may be reused
                    }
        });
    }
    for (auto& th : threads) th.join();
}
}  // namespace emu
