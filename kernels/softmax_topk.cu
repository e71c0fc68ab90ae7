// Softmax + top-k: logits [b, n] -> y [b, k, 2] pairs (probability, class index as float), highest
// first, ties to the lower index. Only k pairs per row leave the device. CPU twin:
// src/ops/softmax_topk.rs. Launch: one block per row, 256 threads; k <= 64 (MAX_K): k rounds of a
// block arg-max that skips the indices already taken.
#include "common.cuh"

#define MAX_K 64

struct Best {
    float v;
    int i;
};

__device__ __forceinline__ Best better(Best a, Best b) {
    return (b.v > a.v || (b.v == a.v && b.i >= 0 && (a.i < 0 || b.i < a.i))) ? b : a;
}

__device__ Best block_argmax(Best me) {
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int o = 16; o > 0; o >>= 1) {
        Best other = {__shfl_xor_sync(0xffffffffu, me.v, o), __shfl_xor_sync(0xffffffffu, me.i, o)};
        me = better(me, other);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { sv[warp] = me.v; si[warp] = me.i; }
    __syncthreads();
    me = ((unsigned)lane < (blockDim.x >> 5)) ? Best{sv[lane], si[lane]} : Best{-INFINITY, -1};
    for (int o = 16; o > 0; o >>= 1) {
        Best other = {__shfl_xor_sync(0xffffffffu, me.v, o), __shfl_xor_sync(0xffffffffu, me.i, o)};
        me = better(me, other);
    }
    return me;
}

template <typename T>
__device__ void softmax_topk(const T* __restrict__ logits, T* __restrict__ y, unsigned n, unsigned k) {
    __shared__ int taken[MAX_K];
    const T* row = logits + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, to_f(row[j]));
    const float mx = block_max(m);
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += __expf(to_f(row[j]) - mx);
    const float inv = 1.0f / block_sum(s);
    for (unsigned r = 0; r < k && r < MAX_K; ++r) {
        Best me = {-INFINITY, -1};
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            bool used = false;
            for (unsigned t = 0; t < r; ++t) used |= (taken[t] == (int)j);
            if (!used) me = better(me, Best{to_f(row[j]), (int)j});
        }
        const Best best = block_argmax(me);
        if (threadIdx.x == 0) {
            taken[r] = best.i;
            T* out = y + ((size_t)blockIdx.x * k + r) * 2;
            out[0] = from_f<T>(__expf(best.v - mx) * inv);
            out[1] = from_f<T>((float)best.i);
        }
        __syncthreads();
    }
}

extern "C" __global__ void softmax_topk_f32(const float* x, float* y, unsigned n, unsigned k) {
    softmax_topk(x, y, n, k);
}
extern "C" __global__ void softmax_topk_f16(const f16_t* x, f16_t* y, unsigned n, unsigned k) {
    softmax_topk(x, y, n, k);
}
extern "C" __global__ void softmax_topk_bf16(const bf16_t* x, bf16_t* y, unsigned n, unsigned k) {
    softmax_topk(x, y, n, k);
}
