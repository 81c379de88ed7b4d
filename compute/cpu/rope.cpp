#include "compute/rope.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace twinfer::compute::cpu {

// Angles in double (positions reach thousands; float would lose the low bits of the angle), then
// the rotation in float.
void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params) {
    const size_t n_pairs = params.n_rot / 2;
    if (params.n_rot % 2 != 0 || params.n_rot > head_dim)
        throw std::invalid_argument("rope: n_rot " + std::to_string(params.n_rot) + " must be even and at most head_dim " + std::to_string(head_dim));
    auto* cos_sin = reinterpret_cast<float*>(ctx.shared_scratch(2 * n_pairs * sizeof(float)));
    for (size_t t = 0; t < n_tokens; ++t) {
        const double position = double(first_position + t) * params.position_scale;
        for (size_t i = 0; i < n_pairs; ++i) {
            double theta = position * std::pow(params.freq_base, -2.0 * double(i) / double(params.n_rot));
            if (params.freq_factors) theta /= params.freq_factors[i];
            cos_sin[2 * i] = static_cast<float>(std::cos(theta));
            cos_sin[2 * i + 1] = static_cast<float>(std::sin(theta));
        }
        for (size_t h = 0; h < n_heads; ++h) {
            float* head = x + t * row_stride + h * head_dim;
            for (size_t i = 0; i < n_pairs; ++i) {
                const size_t a = params.pairing == RopeParams::Pairing::Adjacent ? 2 * i : i;
                const size_t b = params.pairing == RopeParams::Pairing::Adjacent ? 2 * i + 1 : i + n_pairs;
                const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
                const float x0 = head[a], x1 = head[b];
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

}  // namespace twinfer::compute::cpu
