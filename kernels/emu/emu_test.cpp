// Runs every kernel's entry points (f32, f16, bf16) on the CPU through the CUDA emulator
// (cuda_emu.h), with the launch shapes of the Rust launchers in src/ops/, on fresh random inputs at
// odd sizes, against a double-precision reference written here from each op's definition
// (kernels/README.md). Tolerance per element: f32 1e-5 relative (floor 0.1), f16/bf16 1e-2, plus for
// the q8 matmul the f32 accumulation bound k·eps·Σ|x·w| (as the Rust tests).
// Built and run by scripts/check-kernels-emu.sh. Prints `emulated kernel checks: N passed, M failed`.
#include "cuda_emu.h"

#include "../add_layer_norm.cu"
#include "../gelu_bias.cu"
#include "../mean_pool_l2.cu"
#include "../q8_matmul.cu"
#include "../softmax_topk.cu"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>

static std::mt19937_64 rng;
static unsigned long long cases = 0, failed_cases = 0;

template <typename T> struct Ty;
template <> struct Ty<float> {
    static constexpr const char* name = "f32";
    static constexpr double tol = 1e-5;
    static constexpr unsigned max_classes = 1u << 24;  // softmax_topk's class indices stay exact
};
template <> struct Ty<f16_t> {
    static constexpr const char* name = "f16";
    static constexpr double tol = 1e-2;
    static constexpr unsigned max_classes = 2049;
};
template <> struct Ty<bf16_t> {
    static constexpr const char* name = "bf16";
    static constexpr double tol = 1e-2;
    static constexpr unsigned max_classes = 257;
};

// The extern "C" entry points per storage type.
template <typename T> struct K;
#define ENTRIES(T, S)                                                   \
    template <> struct K<T> {                                           \
        static constexpr auto gelu_bias = gelu_bias_##S;                \
        static constexpr auto add_layer_norm = add_layer_norm_##S;      \
        static constexpr auto mean_pool_l2 = mean_pool_l2_##S;          \
        static constexpr auto softmax_topk = softmax_topk_##S;          \
        static constexpr auto q8_matmul = q8_matmul_##S;                \
        static constexpr auto q8_gemv = q8_gemv_##S;                    \
    };
ENTRIES(float, f32)
ENTRIES(f16_t, f16)
ENTRIES(bf16_t, bf16)

// Random values stored as T; `ref` gets the stored values (after rounding to T) as doubles.
template <typename T>
std::vector<T> rand_t(size_t n, float lo, float hi, std::vector<double>& ref) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<T> v(n);
    ref.resize(n);
    for (size_t i = 0; i < n; ++i) {
        v[i] = from_f<T>(d(rng));
        ref[i] = to_f(v[i]);
    }
    return v;
}

// One case: every element within tolerance; prints the first few misses.
struct Case {
    std::string what;
    int misses = 0;
    void expect(size_t i, double got, double want, double tol) {
        if (std::fabs(got - want) <= tol) return;  // NaN fails
        if (misses++ < 3)
            std::printf("FAIL %s [%zu]: %.9g vs %.9g (tolerance %.3g)\n", what.c_str(), i, got, want, tol);
    }
    ~Case() {
        ++cases;
        if (misses) ++failed_cases;
    }
};

template <typename T>
double rel(double want) {
    return Ty<T>::tol * std::max(std::fabs(want), 0.1);
}

template <typename T>
void test_gelu_bias(unsigned rows, unsigned n, bool small_grid) {
    std::vector<double> rx, rb;
    auto x = rand_t<T>((size_t)rows * n, -4, 4, rx);
    auto b = rand_t<T>(n, -1, 1, rb);
    std::vector<T> y((size_t)rows * n);
    const size_t total = (size_t)rows * n;
    // The launcher's grid, or 2 blocks to make each thread stride over several elements.
    const unsigned grid = small_grid ? 2 : (unsigned)std::min<size_t>((total + 255) / 256, 65535);
    emu::launch(K<T>::gelu_bias, dim3{grid}, dim3{256}, x.data(), b.data(), y.data(), rows, n);
    Case c{std::string("gelu_bias ") + Ty<T>::name + " " + std::to_string(rows) + "x" + std::to_string(n) +
           (small_grid ? " grid 2" : "")};
    for (size_t i = 0; i < total; ++i) {
        const double v = rx[i] + rb[i % n];
        const double want = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        c.expect(i, to_f(y[i]), want, rel<T>(want));
    }
}

template <typename T>
void test_add_layer_norm(unsigned rows, unsigned n, float eps) {
    std::vector<double> rx, rr, rg;
    auto x = rand_t<T>((size_t)rows * n, -3, 3, rx);
    auto r = rand_t<T>((size_t)rows * n, -3, 3, rr);
    auto gb = rand_t<T>(2 * (size_t)n, -2, 2, rg);  // gamma then beta, as the launcher stacks them
    std::vector<T> y((size_t)rows * n);
    emu::launch(K<T>::add_layer_norm, dim3{rows}, dim3{256}, x.data(), r.data(), gb.data(), y.data(), n, eps);
    Case c{std::string("add_layer_norm ") + Ty<T>::name + " " + std::to_string(rows) + "x" + std::to_string(n)};
    for (unsigned row = 0; row < rows; ++row) {
        const size_t o = (size_t)row * n;
        double mean = 0, var = 0;
        for (unsigned j = 0; j < n; ++j) mean += rx[o + j] + rr[o + j];
        mean /= n;
        for (unsigned j = 0; j < n; ++j) var += std::pow(rx[o + j] + rr[o + j] - mean, 2);
        const double inv = 1.0 / std::sqrt(var / n + eps);
        for (unsigned j = 0; j < n; ++j) {
            const double want = (rx[o + j] + rr[o + j] - mean) * inv * rg[j] + rg[n + j];
            c.expect(o + j, to_f(y[o + j]), want, rel<T>(want));
        }
    }
}

template <typename T>
void test_mean_pool_l2(unsigned b, unsigned l, unsigned h, int normalize) {
    std::vector<double> rx, rm(b * (size_t)l);
    auto hidden = rand_t<T>((size_t)b * l * h, -2, 2, rx);
    std::vector<T> mask(b * (size_t)l);
    std::bernoulli_distribution keep(0.7);
    for (unsigned i = 0; i < b; ++i)
        for (unsigned j = 0; j < l; ++j) {
            // row 1 has no real token at all (its output must be zeros, not NaN)
            const bool on = i != 1 && (j == 0 || keep(rng));
            mask[(size_t)i * l + j] = from_f<T>(on ? 1.0f : 0.0f);
            rm[(size_t)i * l + j] = on;
        }
    std::vector<T> y((size_t)b * h);
    emu::launch(K<T>::mean_pool_l2, dim3{b}, dim3{256}, hidden.data(), mask.data(), y.data(), l, h, normalize);
    Case c{std::string("mean_pool_l2 ") + Ty<T>::name + " " + std::to_string(b) + "x" + std::to_string(l) + "x" +
           std::to_string(h) + (normalize ? " normalized" : "")};
    for (unsigned i = 0; i < b; ++i) {
        std::vector<double> m(h, 0.0);
        double count = 0;
        for (unsigned j = 0; j < l; ++j) {
            const double w = rm[(size_t)i * l + j];
            count += w;
            for (unsigned k = 0; k < h; ++k) m[k] += w * rx[((size_t)i * l + j) * h + k];
        }
        for (auto& v : m) v /= std::max(count, 1e-9);
        double norm = 0;
        for (auto v : m) norm += v * v;
        const double scale = normalize ? 1.0 / std::max(std::sqrt(norm), 1e-12) : 1.0;
        for (unsigned k = 0; k < h; ++k) {
            const double want = m[k] * scale;
            c.expect((size_t)i * h + k, to_f(y[(size_t)i * h + k]), want, rel<T>(want));
        }
    }
}

template <typename T>
void test_softmax_topk(unsigned rows, unsigned n, unsigned k) {
    std::vector<double> rx;
    auto x = rand_t<T>((size_t)rows * n, -6, 6, rx);
    std::vector<T> y((size_t)rows * k * 2);
    emu::launch(K<T>::softmax_topk, dim3{rows}, dim3{256}, x.data(), y.data(), n, k);
    Case c{std::string("softmax_topk ") + Ty<T>::name + " " + std::to_string(rows) + "x" + std::to_string(n) +
           " k=" + std::to_string(k)};
    for (unsigned row = 0; row < rows; ++row) {
        const double* v = &rx[(size_t)row * n];
        const double mx = *std::max_element(v, v + n);
        double sum = 0;
        for (unsigned j = 0; j < n; ++j) sum += std::exp(v[j] - mx);
        std::vector<unsigned> idx(n);
        std::iota(idx.begin(), idx.end(), 0u);
        // highest first, ties to the lower index
        std::stable_sort(idx.begin(), idx.end(), [&](unsigned a, unsigned b) { return v[a] > v[b]; });
        for (unsigned r = 0; r < k; ++r) {
            const size_t o = ((size_t)row * k + r) * 2;
            const double p = std::exp(v[idx[r]] - mx) / sum;
            c.expect(o, to_f(y[o]), p, rel<T>(p));
            c.expect(o + 1, to_f(y[o + 1]), idx[r], 0.0);
        }
    }
}

// q8: m <= 4 through q8_gemv (grid ceil(n / 8)), larger m through the tiled q8_matmul (grid
// (ceil(n / 64), ceil(m / 64))), as src/ops/q8_matmul.rs launches them; `offset` places Q that many
// bytes past an aligned address (the kernels must then avoid their 4- and 16-byte loads).
template <typename T>
void test_q8(unsigned m, unsigned k, unsigned n, unsigned offset) {
    std::vector<double> rx;
    auto x = rand_t<T>((size_t)m * k, -2, 2, rx);
    std::vector<signed char> storage((size_t)n * k + offset + 16);
    signed char* q = reinterpret_cast<signed char*>(
        (reinterpret_cast<std::uintptr_t>(storage.data()) + 15) / 16 * 16 + offset);
    std::uniform_int_distribution<int> byte(-128, 127);
    for (size_t i = 0; i < (size_t)n * k; ++i) q[i] = (signed char)byte(rng);
    std::uniform_real_distribution<float> sd(0.001f, 0.02f);
    std::vector<float> scale(n);
    for (auto& s : scale) s = sd(rng);
    std::vector<T> y((size_t)m * n);
    if (m <= GEMV_MAX_M)
        emu::launch(K<T>::q8_gemv, dim3{(n + 7) / 8}, dim3{256}, x.data(), (const signed char*)q, scale.data(),
                    y.data(), m, n, k);
    else
        emu::launch(K<T>::q8_matmul, dim3{(n + 63) / 64, (m + 63) / 64}, dim3{256}, x.data(),
                    (const signed char*)q, scale.data(), y.data(), m, n, k);
    Case c{std::string(m <= GEMV_MAX_M ? "q8_gemv " : "q8_matmul ") + Ty<T>::name + " m=" + std::to_string(m) +
           " k=" + std::to_string(k) + " n=" + std::to_string(n) + " q at +" + std::to_string(offset)};
    for (unsigned i = 0; i < m; ++i)
        for (unsigned j = 0; j < n; ++j) {
            double want = 0, abs_dot = 0;
            for (unsigned t = 0; t < k; ++t) {
                const double p = rx[(size_t)i * k + t] * q[(size_t)j * k + t] * (double)scale[j];
                want += p;
                abs_dot += std::fabs(p);
            }
            const double tol = rel<T>(want) + k * 1.1920929e-7 * abs_dot;
            c.expect((size_t)i * n + j, to_f(y[(size_t)i * n + j]), want, tol);
        }
}

template <typename T>
void all_ops(bool full) {
    for (unsigned n : {1u, 31u, 33u, 384u, 1000u}) {
        test_gelu_bias<T>(3, n, false);
        test_add_layer_norm<T>(3, n, 1e-12f);
    }
    test_gelu_bias<T>(5, 1000, true);
    test_add_layer_norm<T>(2, 384, 1e-5f);
    for (unsigned h : {1u, 31u, 33u, 384u, 1000u, 4096u})
        for (int normalize : {0, 1}) test_mean_pool_l2<T>(3, h > 1000 ? 3 : 9, h, normalize);
    // More classes than the dtype holds indices for exactly is an error in ops::softmax_topk.
    for (unsigned n : {1u, 10u, 31u, 33u, 257u, 1000u, 2049u})
        for (unsigned k : {1u, 5u, 64u})
            if (k <= n && n <= Ty<T>::max_classes) test_softmax_topk<T>(3, n, k);
    const std::vector<unsigned> ms = full ? std::vector<unsigned>{1, 2, 3, 4, 5, 33, 100} : std::vector<unsigned>{1, 4, 5, 70};
    for (unsigned m : ms)
        for (unsigned k : {1u, 31u, 33u, 384u})
            for (unsigned n : {1u, 31u, 33u, 100u}) test_q8<T>(m, k, n, 0);
    for (unsigned offset : {1u, 4u, 8u})
        for (unsigned m : {1u, 2u, 5u})
            for (unsigned k : {32u, 36u, 384u}) test_q8<T>(m, k, 33, offset);
}

int main(int argc, char** argv) {
    const unsigned long long seed = argc > 1 ? std::stoull(argv[1]) : std::random_device{}();
    rng.seed(seed);
    std::printf("emulated kernels, seed %llu (rerun with: emu_test %llu)\n", seed, seed);
    all_ops<float>(true);
    all_ops<f16_t>(false);
    all_ops<bf16_t>(false);
    std::printf("emulated kernel checks: %llu passed, %llu failed\n", cases - failed_cases, failed_cases);
    return failed_cases ? 1 : 0;
}
