// Fused bias + GELU (erf form): y[i] = gelu(x[i] + bias[i % n]). CPU twin: src/ops/gelu_bias.rs.
// Launch: 1-D grid-stride, 256 threads per block, grid = min(ceil(rows*n/256), 65535).
#include "common.cuh"

template <typename T>
__device__ void gelu_bias(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                          unsigned rows, unsigned n) {
    const size_t total = (size_t)rows * n;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        const float v = to_f(x[i]) + to_f(bias[i % n]);
        y[i] = from_f<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

extern "C" __global__ void gelu_bias_f32(const float* x, const float* b, float* y, unsigned rows, unsigned n) {
    gelu_bias(x, b, y, rows, n);
}
extern "C" __global__ void gelu_bias_f16(const f16_t* x, const f16_t* b, f16_t* y, unsigned rows, unsigned n) {
    gelu_bias(x, b, y, rows, n);
}
extern "C" __global__ void gelu_bias_bf16(const bf16_t* x, const bf16_t* b, bf16_t* y,
                                          unsigned rows, unsigned n) {
    gelu_bias(x, b, y, rows, n);
}
