#include "compute/norm.hpp"

#include <cmath>
#include <vector>

namespace twinfer::compute::cpu {

// Sums in double: a row is at most a few thousand values, and this keeps the float32 models'
// error in the products, where it belongs.
void rms_norm(Context&, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out) {
    for (size_t r = 0; r < n_rows; ++r) {
        const float* row = x + r * n;
        double sum_squares = 0.0;
        for (size_t i = 0; i < n; ++i) sum_squares += double(row[i]) * row[i];
        const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
        for (size_t i = 0; i < n; ++i) out[r * n + i] = row[i] * inv_rms * weight[i];
    }
}

void add_rms_norm(Context& ctx, float* x, const float* y, const float* weight, size_t n_rows, size_t n, float eps) {
    std::vector<float> normalized(n);
    for (size_t r = 0; r < n_rows; ++r) {
        cpu::rms_norm(ctx, y + r * n, weight, 1, n, eps, normalized.data());
        for (size_t i = 0; i < n; ++i) x[r * n + i] += normalized[i];
    }
}

void layer_norm(Context&, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n, float eps,
                float* out) {
    for (size_t r = 0; r < n_rows; ++r) {
        const float* row = x + r * n;
        double sum = 0.0;
        for (size_t i = 0; i < n; ++i) sum += row[i];
        const double mean = sum / n;
        double sum_squares = 0.0;
        for (size_t i = 0; i < n; ++i) sum_squares += (row[i] - mean) * (row[i] - mean);
        const double inv_std = 1.0 / std::sqrt(sum_squares / n + eps);
        for (size_t i = 0; i < n; ++i)
            out[r * n + i] = static_cast<float>((row[i] - mean) * inv_std) * weight[i] + bias[i];
    }
}

}  // namespace twinfer::compute::cpu
