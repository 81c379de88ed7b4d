#include "compute/rope.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace twinfer::compute::cpu {
namespace {

// cos and sin of every (token, pair) angle of one call, times the magnitude. Computed in double (positions reach
// thousands; float would lose the low bits of the angle), stored as float. A forward pass rotates
// Q and K of every layer at the same positions, so the last table is kept and reused while the
// positions and parameters stay the same (per calling thread: each model calls from its own).
struct RopeTable {
    size_t first_position = 0, n_tokens = 0;
    RopeParams params;
    std::vector<float> freq_factors;   // by value: a pointer could be reused by another model
    std::vector<float> cos_sin;        // [n_tokens][n_rot/2][2]

    bool matches(size_t first, size_t n, const RopeParams& p) const {
        if (cos_sin.empty() || first != first_position || n != n_tokens || p.n_rot != params.n_rot ||
            p.freq_base != params.freq_base || p.position_scale != params.position_scale || p.magnitude != params.magnitude ||
            (p.freq_factors == nullptr) != freq_factors.empty())
            return false;
        return !p.freq_factors || std::equal(freq_factors.begin(), freq_factors.end(), p.freq_factors);
    }

    void compute(size_t first, size_t n, const RopeParams& p) {
        first_position = first, n_tokens = n, params = p;
        const size_t n_pairs = p.n_rot / 2;
        freq_factors.assign(p.freq_factors, p.freq_factors ? p.freq_factors + n_pairs : p.freq_factors);
        const std::vector<double> inv_freq = pair_frequencies(p, freq_factors);
        cos_sin.resize(n * n_pairs * 2);
        for (size_t t = 0; t < n; ++t)
            for (size_t i = 0; i < n_pairs; ++i) {
                const double theta = double(first + t) * inv_freq[i];
                cos_sin[(t * n_pairs + i) * 2] = static_cast<float>(p.magnitude * std::cos(theta));
                cos_sin[(t * n_pairs + i) * 2 + 1] = static_cast<float>(p.magnitude * std::sin(theta));
            }
    }
};

}  // namespace

void rope(Context&, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params) {
    if (params.n_rot % 2 != 0 || params.n_rot > head_dim)
        throw std::invalid_argument("rope: n_rot " + std::to_string(params.n_rot) + " must be even and at most head_dim " + std::to_string(head_dim));
    thread_local RopeTable table;
    if (!table.matches(first_position, n_tokens, params)) table.compute(first_position, n_tokens, params);
    const size_t n_pairs = params.n_rot / 2;
    const bool adjacent = params.pairing == RopeParams::Pairing::Adjacent;
    for (size_t t = 0; t < n_tokens; ++t) {
        const float* cos_sin = table.cos_sin.data() + t * n_pairs * 2;
        for (size_t h = 0; h < n_heads; ++h) {
            float* head = x + t * row_stride + h * head_dim;
            for (size_t i = 0; i < n_pairs; ++i) {
                const size_t a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + n_pairs;
                const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
                const float x0 = head[a], x1 = head[b];
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

}  // namespace twinfer::compute::cpu
