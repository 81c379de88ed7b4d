#include "compute/elementwise.hpp"

#include <algorithm>

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

void gelu(Context& ctx, float* x, size_t n) {
    const Kernels& k = kernels(ctx.cpu_isa());
    ctx.pool().parallel_for(n, activation_chunk, [&](size_t begin, size_t end, int) { k.gelu(x + begin, end - begin); });
}

void argmax(Context&, const float* x, size_t n, int32_t* out) {
    *out = static_cast<int32_t>(std::max_element(x, x + n) - x);   // the first of equal maxima
}

}  // namespace twinfer::compute::cpu
