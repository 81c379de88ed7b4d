#include "compute/experts.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/elementwise.hpp"

namespace twinfer::compute::cpu {
namespace {

// Expert e's rows of w: a matrix of its own (the CPU reads the file's layout, never planar).
WeightMatrix expert_matrix(const ExpertMatrices& w, size_t e) {
    const size_t rows = w.rows();
    return {w.all.type, rows, w.all.cols, w.all.data + e * rows * w.all.row_bytes(), w.all.planar};
}

// add_routed's weights: the softmax probability of each chosen expert, in double precision.
void routing_weights(const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k, bool renormalize,
                     float* weights) {
    const double max_logit = chosen_logits[0];
    const float* logits = renormalize ? chosen_logits : router_logits;   // the softmax's denominator is over these
    double total = 0;
    for (size_t e = 0; e < (renormalize ? k : n_experts); ++e) total += std::exp(double(logits[e]) - max_logit);
    for (size_t j = 0; j < k; ++j) weights[j] = static_cast<float>(std::exp(double(chosen_logits[j]) - max_logit) / total);
}

// out = act(out, up) over n values.
void gated_activation(Context& ctx, ExpertActivation activation, float* out, const float* up, size_t n) {
    if (activation == ExpertActivation::SwiGLUOai) return cpu::swiglu_oai(ctx, out, up, n, out);
    cpu::swiglu(ctx, out, up, n, out);
}

}  // namespace

void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                    float* y, Activations activations) {
    for (size_t j = 0; j < k; ++j) {
        const size_t e = static_cast<size_t>(ids[j]);
        if (e >= w.n_experts)
            throw std::out_of_range("matmul_experts: expert " + std::to_string(ids[j]) + " of " + std::to_string(w.n_experts));
        cpu::matmul(ctx, expert_matrix(w, e), x + j * x_stride, 1, y + j * w.rows(), activations);
        if (w.bias) cpu::add_bias(ctx, y + j * w.rows(), w.bias + e * w.rows(), 1, w.rows());
    }
}

void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations,
                           ExpertActivation activation) {
    cpu::matmul_experts(ctx, gate, ids, k, x, 0, out, activations);
    cpu::matmul_experts(ctx, up, ids, k, x, 0, up_scratch, activations);
    gated_activation(ctx, activation, out, up_scratch, k * gate.rows());
}

void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits, size_t n_experts,
                const float* chosen_logits, size_t k, bool renormalize) {
    float weights[max_top_k];   // k <= max_top_k: the router's top_k chose them
    routing_weights(router_logits, n_experts, chosen_logits, k, renormalize, weights);
    for (size_t j = 0; j < k; ++j) cpu::add_scaled(ctx, y, expert_out + j * n, weights[j], n);
}

void route(Context& ctx, const float* router_logits, size_t n_tokens, size_t n_experts, size_t k, int32_t* ids,
           float* chosen_logits) {
    for (size_t t = 0; t < n_tokens; ++t)
        cpu::top_k(ctx, router_logits + t * n_experts, n_experts, k, ids + t * k, chosen_logits + t * k);
}

// A counting sort: each expert's count, its padded start, then the pairs in token order.
void group_by_expert(Context&, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts, size_t group_rows,
                     int32_t* offsets, int32_t* row_token, int32_t* pair_row) {
    const size_t pairs = n_tokens * k;
    std::vector<int32_t> count(n_experts, 0);
    for (size_t i = 0; i < pairs; ++i) {
        if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= n_experts)
            throw std::out_of_range("group_by_expert: expert " + std::to_string(ids[i]) + " of " + std::to_string(n_experts));
        ++count[size_t(ids[i])];
    }
    offsets[0] = 0;
    for (size_t e = 0; e < n_experts; ++e)
        offsets[e + 1] = offsets[e] + (count[e] + int32_t(group_rows) - 1) / int32_t(group_rows) * int32_t(group_rows);
    std::vector<int32_t> next(offsets, offsets + n_experts);
    for (size_t i = 0; i < pairs; ++i) {
        const int32_t row = next[size_t(ids[i])]++;
        row_token[row] = static_cast<int32_t>(i / k);
        pair_row[i] = row;
    }
    for (size_t e = 0; e < n_experts; ++e)
        for (int32_t row = next[e]; row < offsets[e + 1]; ++row) row_token[row] = row_token[next[e] - 1];
}

void matmul_expert_groups(Context& ctx, const ExpertMatrices& w, const ExpertGroups& groups, const float* x, float* y,
                          Activations activations) {
    const size_t cols = w.all.cols, rows = w.rows();
    for (size_t e = 0; e < w.n_experts; ++e) {
        const size_t first = size_t(groups.host_offsets[e]), n = size_t(groups.host_offsets[e + 1]) - first;
        if (!n) continue;
        cpu::matmul(ctx, expert_matrix(w, e), x + first * cols, n, y + first * rows, activations);
        if (w.bias) cpu::add_bias(ctx, y + first * rows, w.bias + e * rows, n, rows);
    }
}

// Gate and up of an expert in one call: its rows' inputs packed once for both.
void matmul_expert_groups_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up,
                                 const ExpertGroups& groups, const float* x, float* out, float* up_scratch,
                                 Activations activations, ExpertActivation activation) {
    if (gate.n_experts != up.n_experts || gate.all.rows != up.all.rows || gate.all.cols != up.all.cols)
        throw std::invalid_argument("matmul_expert_groups_swiglu: gate and up experts differ in shape");
    const size_t cols = gate.all.cols, rows = gate.rows();
    for (size_t e = 0; e < gate.n_experts; ++e) {
        const size_t first = size_t(groups.host_offsets[e]), n = size_t(groups.host_offsets[e + 1]) - first;
        if (!n) continue;
        const MatmulOutput outputs[] = {{expert_matrix(gate, e), out + first * rows}, {expert_matrix(up, e), up_scratch + first * rows}};
        cpu::matmul(ctx, outputs, x + first * cols, n, activations);
        if (gate.bias) cpu::add_bias(ctx, out + first * rows, gate.bias + e * rows, n, rows);
        if (up.bias) cpu::add_bias(ctx, up_scratch + first * rows, up.bias + e * rows, n, rows);
    }
    for (size_t r = 0; r < groups.rows(); ++r) gated_activation(ctx, activation, out + r * rows, up_scratch + r * rows, rows);
}

void add_routed_rows(Context& ctx, float* y, const float* rows, size_t n, const int32_t* pair_row, size_t n_tokens,
                     const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k, bool renormalize) {
    float weights[max_top_k];
    for (size_t t = 0; t < n_tokens; ++t) {
        routing_weights(router_logits + t * n_experts, n_experts, chosen_logits + t * k, k, renormalize, weights);
        for (size_t j = 0; j < k; ++j) cpu::add_scaled(ctx, y + t * n, rows + size_t(pair_row[t * k + j]) * n, weights[j], n);
    }
}

}  // namespace twinfer::compute::cpu
