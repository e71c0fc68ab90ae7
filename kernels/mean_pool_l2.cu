// Embedding head: masked mean pooling over the sequence, then optional L2 normalisation.
// hidden [b, l, h], mask [b, l] (1 = real token) -> y [b, h]. CPU twin: src/ops/mean_pool.rs.
// Launch: one block per batch row, 256 threads striding over h (requires h <= 256 * 16, see
// kernels/README.md); each thread keeps its columns' sums in registers.
#include "common.cuh"

#define MAX_COLS_PER_THREAD 16

template <typename T>
__device__ void mean_pool_l2(const T* __restrict__ hidden, const T* __restrict__ mask, T* __restrict__ y,
                             unsigned l, unsigned h, int normalize) {
    const size_t b = blockIdx.x;
    float acc[MAX_COLS_PER_THREAD];
    #pragma unroll
    for (int c = 0; c < MAX_COLS_PER_THREAD; ++c) acc[c] = 0.0f;
    float count = 0.0f;
    for (unsigned j = 0; j < l; ++j) {
        const float w = to_f(mask[b * l + j]);
        if (w == 0.0f) continue;
        count += w;
        const T* row = hidden + (b * l + j) * h;
        #pragma unroll
        for (int c = 0; c < MAX_COLS_PER_THREAD; ++c) {
            const unsigned col = threadIdx.x + c * blockDim.x;
            if (col < h) acc[c] += w * to_f(row[col]);
        }
    }
    const float inv = 1.0f / fmaxf(count, 1e-9f);
    float sq = 0.0f;
    #pragma unroll
    for (int c = 0; c < MAX_COLS_PER_THREAD; ++c) {
        acc[c] *= inv;
        if (threadIdx.x + c * blockDim.x < h) sq += acc[c] * acc[c];
    }
    const float scale = normalize ? 1.0f / fmaxf(sqrtf(block_sum(sq)), 1e-12f) : 1.0f;
    #pragma unroll
    for (int c = 0; c < MAX_COLS_PER_THREAD; ++c) {
        const unsigned col = threadIdx.x + c * blockDim.x;
        if (col < h) y[b * h + col] = from_f<T>(acc[c] * scale);
    }
}

extern "C" __global__ void mean_pool_l2_f32(const float* x, const float* m, float* y, unsigned l, unsigned h,
                                            int normalize) {
    mean_pool_l2(x, m, y, l, h, normalize);
}
extern "C" __global__ void mean_pool_l2_f16(const f16_t* x, const f16_t* m, f16_t* y, unsigned l, unsigned h,
                                            int normalize) {
    mean_pool_l2(x, m, y, l, h, normalize);
}
extern "C" __global__ void mean_pool_l2_bf16(const bf16_t* x, const bf16_t* m, bf16_t* y,
                                             unsigned l, unsigned h, int normalize) {
    mean_pool_l2(x, m, y, l, h, normalize);
}
