// Fused residual add + LayerNorm over the last dim: y = ((x+r) - mean) / sqrt(var + eps) * gamma + beta.
// gamma_beta holds gamma (n) then beta (n). CPU twin: src/ops/add_layer_norm.rs.
// Launch: one block per row, 256 threads (a multiple of 32); two reductions (mean, then variance
// of the centred values, as the CPU twin does), then the write.
#include "common.cuh"

template <typename T>
__device__ void add_layer_norm(const T* __restrict__ x, const T* __restrict__ r,
                               const T* __restrict__ gamma_beta, T* __restrict__ y, unsigned n, float eps) {
    const size_t row = (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += to_f(x[row + j]) + to_f(r[row + j]);
    const float mean = block_sum(s) / n;
    float v = 0.0f;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = to_f(x[row + j]) + to_f(r[row + j]) - mean;
        v += d * d;
    }
    const float inv = rsqrtf(block_sum(v) / n + eps);
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
        const float h = to_f(x[row + j]) + to_f(r[row + j]);
        y[row + j] = from_f<T>((h - mean) * inv * to_f(gamma_beta[j]) + to_f(gamma_beta[n + j]));
    }
}

extern "C" __global__ void add_layer_norm_f32(const float* x, const float* r, const float* gb, float* y,
                                              unsigned n, float eps) {
    add_layer_norm(x, r, gb, y, n, eps);
}
extern "C" __global__ void add_layer_norm_f16(const f16_t* x, const f16_t* r, const f16_t* gb, f16_t* y,
                                              unsigned n, float eps) {
    add_layer_norm(x, r, gb, y, n, eps);
}
extern "C" __global__ void add_layer_norm_bf16(const bf16_t* x, const bf16_t* r,
                                               const bf16_t* gb, bf16_t* y, unsigned n, float eps) {
    add_layer_norm(x, r, gb, y, n, eps);
}
