#include "compute/elementwise.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "compute/cpu/kernels.hpp"
#include "compute/cpu/thread_pool.hpp"

namespace twinfer::compute::cpu {
namespace {

// Activation functions over a prompt's worth of values are worth splitting; a residual add is not.
constexpr size_t activation_chunk = 8192;

}  // namespace

void add(Context&, float* x, const float* y, size_t n) {
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

void add_bias(Context&, float* x, const float* bias, size_t n_rows, size_t n) {
    for (size_t r = 0; r < n_rows; ++r)
        for (size_t i = 0; i < n; ++i) x[r * n + i] += bias[i];
}

void swiglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    const Kernels& k = kernels(ctx.cpu_isa());
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) {
        k.swiglu(gate + begin, up + begin, end - begin, out + begin);
    });
}

void swiglu_oai(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) {
            const float g = std::min(gate[i], swiglu_oai_limit), u = std::clamp(up[i], -swiglu_oai_limit, swiglu_oai_limit);
            out[i] = g / (1.0f + std::exp(-swiglu_oai_alpha * g)) * (u + 1.0f);
        }
    });
}

void gelu(Context& ctx, float* x, size_t n) {
    const Kernels& k = kernels(ctx.cpu_isa());
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) { k.gelu(x + begin, end - begin); });
}

void gelu_erf(Context& ctx, float* x, size_t n) {
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) {
        for (size_t i = begin; i < end; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
    });
}

void geglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    const Kernels& k = kernels(ctx.cpu_isa());
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) {
        if (out != gate) std::copy(gate + begin, gate + end, out + begin);
        k.gelu(out + begin, end - begin);
        for (size_t i = begin; i < end; ++i) out[i] *= up[i];
    });
}

void scale(Context&, float* x, size_t n, float factor) {
    for (size_t i = 0; i < n; ++i) x[i] *= factor;
}

void add_scaled(Context&, float* x, const float* y, float factor, size_t n) {
    for (size_t i = 0; i < n; ++i) x[i] += factor * y[i];
}

void softcap(Context&, float* x, size_t n, float cap) {
    for (size_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

void argmax(Context&, const float* x, size_t n_rows, size_t n, int32_t* out) {
    for (size_t r = 0; r < n_rows; ++r, x += n)
        out[r] = static_cast<int32_t>(std::max_element(x, x + n) - x);   // the first of equal maxima
}

void top_k(Context&, const float* x, size_t n, size_t k, int32_t* ids, float* values) {
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(),
                      [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
    for (size_t r = 0; r < k; ++r) ids[r] = order[r], values[r] = x[order[r]];
}

}  // namespace twinfer::compute::cpu
