// Int8 weight matmul: y [m, n] = x [m, k] · (diag(scale) · Q)ᵀ, Q [n, k] int8 per output channel,
// scale [n] f32, x and y in the storage type; f32 accumulate, the scale applied once per output.
// CPU twin: src/ops/q8_matmul.rs (and q8_gemv.rs).
//
// q8_matmul_*: the tiled path (m > 4). 64x64 output tile per block, 256 threads, each thread a 4x4
//   micro-tile (rows ty + 16i, columns tx + 16j). Per 32-wide k step the block stages x [64 x 32]
//   (as f32) and Q [64 x 32] (int8 -> f32; char4 loads when k % 4 == 0 and Q is 4-byte aligned) in
//   shared memory, both transposed to [k][row] with one column of padding (conflict-free stores and
//   reads). Grid: (ceil(n / 64), ceil(m / 64)).
// q8_gemv_*: the GEMV path (1 <= m <= 4; larger m takes the tiled path). One warp per output column
//   j (row j of Q), 8 warps per block, grid ceil(n / 8). Each lane reads 16 weight bytes per step as
//   one int4 load when k % 16 == 0 and Q is 16-byte aligned (a warp streams 512 contiguous bytes),
//   byte loads otherwise; x rows are re-read from L1/L2. Warp-shuffle reduction, lane 0 writes
//   y[i, j].
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 32
#define GEMV_MAX_M 4
#define GEMV_WARPS 8

// Byte b (0..3) of w as a signed value, in f32.
__device__ __forceinline__ float s8(unsigned w, int b) {
    return (float)((int)(w << (24 - 8 * b)) >> 24);
}

template <typename T>
__device__ void q8_matmul(const T* __restrict__ x, const signed char* __restrict__ q,
                          const float* __restrict__ scale, T* __restrict__ y, unsigned m, unsigned n,
                          unsigned k) {
    __shared__ float xs[TILE_K][TILE_M + 1];
    __shared__ float ws[TILE_K][TILE_N + 1];
    const unsigned t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const unsigned m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    // 4-byte loads only where every row start is 4-byte aligned (q may be a view at any offset).
    const bool vec = (k & 3) == 0 && ((size_t)q & 3) == 0;
    float acc[4][4] = {};
    for (unsigned k0 = 0; k0 < k; k0 += TILE_K) {
        // x tile: 64 x 32 values, 8 per thread; consecutive threads read consecutive k (coalesced).
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const unsigned idx = t + 256 * e, r = idx >> 5, c = idx & 31;
            const unsigned gm = m0 + r, gk = k0 + c;
            xs[c][r] = (gm < m && gk < k) ? to_f(x[(size_t)gm * k + gk]) : 0.0f;
        }
        // Q tile: 64 rows x 32 bytes = 512 char4, 2 per thread.
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const unsigned idx = t + 256 * e, r = idx >> 3, c = (idx & 7) * 4;
            const unsigned gn = n0 + r, gk = k0 + c;
            const signed char* src = q + (size_t)gn * k + gk;
            if (vec && gn < n && gk + 3 < k) {
                const unsigned w = *reinterpret_cast<const unsigned*>(src);
#pragma unroll
                for (int b = 0; b < 4; ++b) ws[c + b][r] = s8(w, b);
            } else {
#pragma unroll
                for (int b = 0; b < 4; ++b) ws[c + b][r] = (gn < n && gk + b < k) ? (float)src[b] : 0.0f;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const unsigned gn = n0 + tx + 16 * j;
        if (gn >= n) continue;
        const float s = scale[gn];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned gm = m0 + ty + 16 * i;
            if (gm < m) y[(size_t)gm * n + gn] = from_f<T>(acc[i][j] * s);
        }
    }
}

template <typename T>
__device__ void q8_gemv(const T* __restrict__ x, const signed char* __restrict__ q,
                        const float* __restrict__ scale, T* __restrict__ y, unsigned m, unsigned n,
                        unsigned k) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;  // whole warps leave together: j is uniform per warp
    const signed char* row = q + (size_t)j * k;
    float acc[GEMV_MAX_M] = {};
    unsigned c0 = 0;
    if ((k & 15) == 0 && ((size_t)q & 15) == 0) {  // int4 loads need 16-byte aligned rows
        for (; c0 < k; c0 += 512) {
            const unsigned c = c0 + lane * 16;
            if (c >= k) break;  // the last step may cover fewer than 32 lanes
            const int4 v = *reinterpret_cast<const int4*>(row + c);
            const unsigned words[4] = {(unsigned)v.x, (unsigned)v.y, (unsigned)v.z, (unsigned)v.w};
#pragma unroll
            for (int wi = 0; wi < 4; ++wi) {
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    const float w = s8(words[wi], b);
#pragma unroll
                    for (int i = 0; i < GEMV_MAX_M; ++i)
                        if (i < (int)m) acc[i] = fmaf(to_f(x[(size_t)i * k + c + wi * 4 + b]), w, acc[i]);
                }
            }
        }
    } else {
        for (unsigned c = lane; c < k; c += 32) {
            const float w = (float)row[c];
#pragma unroll
            for (int i = 0; i < GEMV_MAX_M; ++i)
                if (i < (int)m) acc[i] = fmaf(to_f(x[(size_t)i * k + c]), w, acc[i]);
        }
    }
    const float s = scale[j];
#pragma unroll
    for (int i = 0; i < GEMV_MAX_M; ++i) {
        const float v = warp_sum(acc[i]);
        if (lane == 0 && i < (int)m) y[(size_t)i * n + j] = from_f<T>(v * s);
    }
}

#define Q8_ENTRY(NAME, T)                                                                            \
    extern "C" __global__ void NAME(const T* x, const signed char* q, const float* scale, T* y,      \
                                    unsigned m, unsigned n, unsigned k)
Q8_ENTRY(q8_matmul_f32, float) { q8_matmul(x, q, scale, y, m, n, k); }
Q8_ENTRY(q8_matmul_f16, f16_t) { q8_matmul(x, q, scale, y, m, n, k); }
Q8_ENTRY(q8_matmul_bf16, bf16_t) { q8_matmul(x, q, scale, y, m, n, k); }
Q8_ENTRY(q8_gemv_f32, float) { q8_gemv(x, q, scale, y, m, n, k); }
Q8_ENTRY(q8_gemv_f16, f16_t) { q8_gemv(x, q, scale, y, m, n, k); }
Q8_ENTRY(q8_gemv_bf16, bf16_t) { q8_gemv(x, q, scale, y, m, n, k); }
