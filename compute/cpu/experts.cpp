#include "compute/experts.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"

namespace twinfer::compute::cpu {

void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                    float* y, Activations activations) {
    const size_t rows = w.rows();
    for (size_t j = 0; j < k; ++j) {
        const size_t e = static_cast<size_t>(ids[j]);
        if (e >= w.n_experts)
            throw std::out_of_range("matmul_experts: expert " + std::to_string(ids[j]) + " of " + std::to_string(w.n_experts));
        const WeightMatrix expert{w.all.type, rows, w.all.cols, w.all.data + e * rows * w.all.row_bytes(), w.all.planar};
        cpu::matmul(ctx, expert, x + j * x_stride, 1, y + j * rows, activations);
    }
}

void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations) {
    cpu::matmul_experts(ctx, gate, ids, k, x, 0, out, activations);
    cpu::matmul_experts(ctx, up, ids, k, x, 0, up_scratch, activations);
    cpu::swiglu(ctx, out, up_scratch, k * gate.rows(), out);
}

void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits, size_t n_experts,
                const float* chosen_logits, size_t k, bool renormalize) {
    const double max_logit = chosen_logits[0];
    const float* logits = renormalize ? chosen_logits : router_logits;   // the softmax's denominator is over these
    double total = 0;
    for (size_t e = 0; e < (renormalize ? k : n_experts); ++e) total += std::exp(double(logits[e]) - max_logit);
    for (size_t j = 0; j < k; ++j)
        cpu::add_scaled(ctx, y, expert_out + j * n, static_cast<float>(std::exp(double(chosen_logits[j]) - max_logit) / total), n);
}

}  // namespace twinfer::compute::cpu
