#pragma once
// A mixture-of-experts layer's products, two ways.
//
// Token by token (a decode step, and prompts too short for tiled products): the router's choice
// is left where it was made, the expert ids read by the kernels from the device's memory
// (compute::top_k writes them there), so a GPU decode step needs no copy to the host and stays one
// captured graph, and only the chosen experts' weights are read.
//
// Grouped by expert (prompts): every token routed at once, the (token, choice) pairs sorted by
// expert, and each expert's rows multiplied as one tiled product over its slice of the weights:
// each expert's weights are read (dequantized) once for all the tokens that chose it, where token
// by token reads them once per token (a 512-token prompt of Qwen3-30B-A3B: 4,096 pairs over 128
// experts, 32 tokens an expert).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/context.hpp"
#include "compute/elementwise.hpp"
#include "compute/matmul.hpp"
#include "compute/memory.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

// n_experts matrices of one shape as one matrix of n_experts * rows rows (GGUF's [cols, rows,
// n_experts] tensor), expert e the rows [e * rows, (e + 1) * rows), placed on the device whole.
struct ExpertMatrices {
    WeightMatrix all;
    size_t n_experts = 0;
    const float* bias = nullptr;   // [n_experts, rows()]: each expert's bias (gpt-oss), or null; on the context's device

    size_t rows() const { return n_experts ? all.rows / n_experts : 0; }
};

// The gated activation of an expert: silu(gate) * up, or gpt-oss's clamped form
// (compute::swiglu_oai).
enum class ExpertActivation { SwiGLU, SwiGLUOai };

// A gated mixture-of-experts feed-forward: per token, k of n_experts chosen by the router's
// softmax, y += sum_j weight_j * (down_j(act(gate_j x + bg_j, up_j x + bu_j)) + bd_j), the biases
// where the matrices have them.
struct ExpertLayer {
    const ExpertMatrices& gate;   // n_experts x [rows, cols]
    const ExpertMatrices& up;     // n_experts x [rows, cols]
    const ExpertMatrices& down;   // n_experts x [cols, rows]
    size_t k;                     // experts a token
    bool renormalize;             // the softmax over the k chosen only (else over all, the k kept)
    ExpertActivation activation = ExpertActivation::SwiGLU;
};

// y[j] = W_{ids[j]} x_j (+ its bias) for j < k, x_j = x + j * x_stride (x_stride 0: one input for every expert),
// y_j = y + j * rows. ids in the device's memory, each < n_experts (a kernel cannot check: the
// router's top_k makes them). `activations` as matmul takes them (the GPU's int8 kernels read the
// chosen experts' rows where x_stride is 0 or the matrices' columns).
namespace cpu {
void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                    float* y, Activations activations);
}
inline void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x,
                           size_t x_stride, float* y, Activations activations) {
    if (ctx.device() == Device::CPU) return cpu::matmul_experts(ctx, w, ids, k, x, x_stride, y, activations);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul_experts(ctx, w, ids, k, x, x_stride, y, activations);
#endif
    throw_backend_unavailable("matmul_experts", ctx.device());
}

// out[j] = act(W_gate_{ids[j]} x, W_up_{ids[j]} x) for j < k (biases included where the matrices
// have them), one x for every expert (a gated expert's first half; out and up_scratch [k, rows]):
// matmul_experts twice and the activation, which the GPU's int8 kernels do in one launch.
namespace cpu {
void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations,
                           ExpertActivation activation);
}
inline void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                                  size_t k, const float* x, float* out, float* up_scratch, Activations activations,
                                  ExpertActivation activation = ExpertActivation::SwiGLU) {
    if (ctx.device() == Device::CPU)
        return cpu::matmul_experts_swiglu(ctx, gate, up, ids, k, x, out, up_scratch, activations, activation);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::matmul_experts_swiglu(ctx, gate, up, ids, k, x, out, up_scratch, activations, activation);
#endif
    throw_backend_unavailable("matmul_experts_swiglu", ctx.device());
}

// y += sum_j weight_j * expert_out[j] (expert_out: [k, n]), in order of j: weight_j the router's
// softmax probability of the j-th chosen expert, exp(chosen_logits[j] - max) over the sum of all
// n_experts router_logits' (over the k chosen only where `renormalize`), in double precision.
// chosen_logits: compute::top_k's values for router_logits, largest first.
namespace cpu {
void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits, size_t n_experts,
                const float* chosen_logits, size_t k, bool renormalize);
}
inline void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits,
                       size_t n_experts, const float* chosen_logits, size_t k, bool renormalize) {
    if (ctx.device() == Device::CPU)
        return cpu::add_routed(ctx, y, expert_out, n, router_logits, n_experts, chosen_logits, k, renormalize);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::add_routed(ctx, y, expert_out, n, router_logits, n_experts, chosen_logits, k, renormalize);
#endif
    throw_backend_unavailable("add_routed", ctx.device());
}

// ids[t, :], chosen_logits[t, :] = top_k of router_logits[t, :] for t < n_tokens: each token's k
// experts, largest logit first (compute::top_k's order), [n_tokens, k] in the device's memory.
namespace cpu {
void route(Context& ctx, const float* router_logits, size_t n_tokens, size_t n_experts, size_t k, int32_t* ids,
           float* chosen_logits);
}
inline void route(Context& ctx, const float* router_logits, size_t n_tokens, size_t n_experts, size_t k, int32_t* ids,
                  float* chosen_logits) {
    if (k == 0 || k > max_top_k || k > n_experts)
        throw std::invalid_argument("route: " + std::to_string(k) + " of " + std::to_string(n_experts) + " experts");
    if (ctx.device() == Device::CPU) return cpu::route(ctx, router_logits, n_tokens, n_experts, k, ids, chosen_logits);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::route(ctx, router_logits, n_tokens, n_experts, k, ids, chosen_logits);
#endif
    throw_backend_unavailable("route", ctx.device());
}

// The rows of a grouped pass: the n_tokens * k (token, choice) pairs of `ids` ([n_tokens, k])
// sorted by expert, in token order within an expert, each expert's rows padded with copies of its
// last to a multiple of group_rows (0 for an expert no token chose). Written to the device's memory:
// offsets[e] .. offsets[e + 1] expert e's rows ([n_experts + 1]); row_token[r] the token whose
// input row r is ([max_grouped_rows]); pair_row[t * k + j] the row of token t's j-th choice
// ([n_tokens, k]). ids each < n_experts (the CPU checks; a kernel cannot).
inline size_t max_grouped_rows(size_t n_tokens, size_t k, size_t n_experts, size_t group_rows) {
    const size_t pairs = n_tokens * k;
    return pairs + (std::max<size_t>(group_rows, 1) - 1) * std::min(n_experts, pairs);
}
// The group_rows of a grouped pass on the device: each expert's product then computes a row alike
// whatever the number of tokens that chose the expert. On the CPU any count from its threshold of a
// tiled product does. cuBLAS picks its kernel, and with it a row's order of sums, by the problem's
// size: a float expert's rows go through compute::matmul_row_tiles, whole tiles of the one size.
inline size_t expert_group_rows(Device device) { return std::max(min_tiled_tokens(device), row_tile_rows(device)); }
namespace cpu {
void group_by_expert(Context& ctx, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts, size_t group_rows,
                     int32_t* offsets, int32_t* row_token, int32_t* pair_row);
}
inline void group_by_expert(Context& ctx, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts,
                            size_t group_rows, int32_t* offsets, int32_t* row_token, int32_t* pair_row) {
    if (group_rows == 0) throw std::invalid_argument("group_by_expert: groups of 0 rows");
    if (ctx.device() == Device::CPU)
        return cpu::group_by_expert(ctx, ids, n_tokens, k, n_experts, group_rows, offsets, row_token, pair_row);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::group_by_expert(ctx, ids, n_tokens, k, n_experts, group_rows, offsets, row_token, pair_row);
#endif
    throw_backend_unavailable("group_by_expert", ctx.device());
}

// group_by_expert's offsets, where the kernels read them (device) and where the launches are
// planned (host: a copy).
struct ExpertGroups {
    const int32_t* offsets;                 // [n_experts + 1], the device's memory
    std::span<const int32_t> host_offsets;  // the same values on the host
    size_t rows() const { return size_t(host_offsets.back()); }
};

// y[r] = W_e x[r] (+ e's bias) for every expert e's rows r (x: [groups.rows(), cols], y: [groups.rows(), rows]):
// one product over each expert's slice of w, as compute::matmul computes a prompt, each expert's
// rows a multiple of expert_group_rows (the CUDA float products take whole row tiles). `activations`
// as matmul takes them (for an expert with fewer rows than a tiled product takes).
namespace cpu {
void matmul_expert_groups(Context& ctx, const ExpertMatrices& w, const ExpertGroups& groups, const float* x, float* y,
                          Activations activations);
}
inline void matmul_expert_groups(Context& ctx, const ExpertMatrices& w, const ExpertGroups& groups, const float* x,
                                 float* y, Activations activations) {
    if (groups.host_offsets.size() != w.n_experts + 1)
        throw std::invalid_argument("matmul_expert_groups: " + std::to_string(groups.host_offsets.size()) + " offsets for " +
                                    std::to_string(w.n_experts) + " experts");
    if (ctx.device() == Device::CPU) return cpu::matmul_expert_groups(ctx, w, groups, x, y, activations);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::matmul_expert_groups(ctx, w, groups, x, y, activations);
#endif
    throw_backend_unavailable("matmul_expert_groups", ctx.device());
}

// out[r] = act(W_gate_e x[r], W_up_e x[r]) for every expert e's rows r (biases included where the
// matrices have them; out, up_scratch: [groups.rows(), rows]), each row's activation computed
// alone (the CPU's vector/tail split of a row must not depend on the rows beside it).
namespace cpu {
void matmul_expert_groups_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up,
                                 const ExpertGroups& groups, const float* x, float* out, float* up_scratch,
                                 Activations activations, ExpertActivation activation);
}
inline void matmul_expert_groups_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up,
                                        const ExpertGroups& groups, const float* x, float* out, float* up_scratch,
                                        Activations activations, ExpertActivation activation = ExpertActivation::SwiGLU) {
    if (ctx.device() == Device::CPU)
        return cpu::matmul_expert_groups_swiglu(ctx, gate, up, groups, x, out, up_scratch, activations, activation);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) {
        // The GPU's activations are the same arithmetic for every element, whatever the length.
        cuda::matmul_expert_groups(ctx, gate, groups, x, out, activations);
        cuda::matmul_expert_groups(ctx, up, groups, x, up_scratch, activations);
        const size_t n = groups.rows() * gate.rows();
        if (activation == ExpertActivation::SwiGLUOai) return cuda::swiglu_oai(ctx, out, up_scratch, n, out);
        return cuda::swiglu(ctx, out, up_scratch, n, out);
    }
#endif
    throw_backend_unavailable("matmul_expert_groups_swiglu", ctx.device());
}

// y[t] += sum_j weight_tj * rows[pair_row[t * k + j]] for t < n_tokens (y: [n_tokens, n], rows:
// [, n]): add_routed for every token, its chosen experts' outputs gathered from the grouped rows,
// the weights from router_logits [n_tokens, n_experts] and chosen_logits [n_tokens, k]; the same
// arithmetic as add_routed, in the same order.
namespace cpu {
void add_routed_rows(Context& ctx, float* y, const float* rows, size_t n, const int32_t* pair_row, size_t n_tokens,
                     const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k, bool renormalize);
}
inline void add_routed_rows(Context& ctx, float* y, const float* rows, size_t n, const int32_t* pair_row, size_t n_tokens,
                            const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k,
                            bool renormalize) {
    if (ctx.device() == Device::CPU)
        return cpu::add_routed_rows(ctx, y, rows, n, pair_row, n_tokens, router_logits, n_experts, chosen_logits, k, renormalize);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::add_routed_rows(ctx, y, rows, n, pair_row, n_tokens, router_logits, n_experts, chosen_logits, k, renormalize);
#endif
    throw_backend_unavailable("add_routed_rows", ctx.device());
}

// Arrays laid out one after another from `base` (null: only their size counted), each 256-byte
// aligned (cuBLAS's and the kernels' 16-byte loads): the experts' working memory in one allocation.
class ScratchLayout {
public:
    explicit ScratchLayout(std::byte* base) : base_(base) {}
    template <class T> void take(T*& p, size_t count) {
        p = base_ ? reinterpret_cast<T*>(base_ + end_) : nullptr;
        end_ += (count * sizeof(T) + 255) / 256 * 256;
    }
    size_t bytes() const { return end_; }

private:
    std::byte* base_;
    size_t end_ = 0;
};

// The working memory of add_experts_one_by_one: one allocation of one_by_one_scratch_bytes() on
// the context's device, carved by one_by_one_scratch_in(). A captured decode step reads it, so it
// is allocated once, at load.
struct OneByOneScratch {
    int32_t* ids;          // [k]
    float* chosen_logits;  // [k]
    float* gate;           // [k, rows]
    float* up;             // [k, rows]
    float* expert_out;     // [k, cols]
};
inline size_t lay_out(const ExpertLayer& layer, ScratchLayout& at, OneByOneScratch& s) {
    const size_t k = layer.k, width = layer.gate.rows(), cols = layer.gate.all.cols;
    at.take(s.ids, k), at.take(s.chosen_logits, k), at.take(s.gate, k * width), at.take(s.up, k * width);
    at.take(s.expert_out, k * cols);
    return at.bytes();
}
inline size_t one_by_one_scratch_bytes(const ExpertLayer& layer) {
    ScratchLayout at(nullptr);
    OneByOneScratch s;
    return lay_out(layer, at, s);
}
inline OneByOneScratch one_by_one_scratch_in(void* memory, const ExpertLayer& layer) {
    ScratchLayout at(static_cast<std::byte*>(memory));
    OneByOneScratch s;
    lay_out(layer, at, s);
    return s;
}

// y[t] += layer(x[t]) for t < n_tokens (x, y: [n_tokens, cols]; router_logits: [n_tokens,
// n_experts]), one token after another, each token's experts read where top_k left them: the
// decode step's arithmetic (matrix-vector products with `activations`), a captured graph's launches.
inline void add_experts_one_by_one(Context& ctx, const ExpertLayer& layer, const float* x, size_t n_tokens,
                                   const float* router_logits, const OneByOneScratch& s, Activations activations, float* y) {
    const size_t cols = layer.gate.all.cols, n_experts = layer.gate.n_experts, k = layer.k;
    for (size_t t = 0; t < n_tokens; ++t) {
        top_k(ctx, router_logits + t * n_experts, n_experts, k, s.ids, s.chosen_logits);
        matmul_experts_swiglu(ctx, layer.gate, layer.up, s.ids, k, x + t * cols, s.gate, s.up, activations, layer.activation);
        matmul_experts(ctx, layer.down, s.ids, k, s.gate, layer.gate.rows(), s.expert_out, activations);
        add_routed(ctx, y + t * cols, s.expert_out, cols, router_logits + t * n_experts, n_experts, s.chosen_logits, k,
                   layer.renormalize);
    }
}

// The working memory of add_experts_grouped for up to n_tokens tokens: one allocation of
// grouped_scratch_bytes() on the context's device, carved by grouped_scratch_in().
struct GroupedScratch {
    int32_t *ids, *offsets, *row_token, *pair_row;
    float *chosen_logits, *rows_in, *gate, *up;   // rows_in: the gathered inputs, then down's outputs
};
inline size_t lay_out(const ExpertLayer& layer, size_t n_tokens, size_t group_rows, ScratchLayout& at, GroupedScratch& s) {
    const size_t n_experts = layer.gate.n_experts, pairs = n_tokens * layer.k, cols = layer.gate.all.cols;
    const size_t rows = max_grouped_rows(n_tokens, layer.k, n_experts, group_rows), width = layer.gate.rows();
    at.take(s.ids, pairs), at.take(s.chosen_logits, pairs), at.take(s.offsets, n_experts + 1), at.take(s.row_token, rows);
    at.take(s.pair_row, pairs), at.take(s.rows_in, rows * cols), at.take(s.gate, rows * width), at.take(s.up, rows * width);
    return at.bytes();
}
inline size_t grouped_scratch_bytes(const ExpertLayer& layer, size_t n_tokens, size_t group_rows) {
    ScratchLayout at(nullptr);
    GroupedScratch s;
    return lay_out(layer, n_tokens, group_rows, at, s);
}
inline GroupedScratch grouped_scratch_in(void* memory, const ExpertLayer& layer, size_t n_tokens, size_t group_rows) {
    ScratchLayout at(static_cast<std::byte*>(memory));
    GroupedScratch s;
    lay_out(layer, n_tokens, group_rows, at, s);
    return s;
}

// add_experts_one_by_one's sum, grouped by expert (the top of this file): route every token, sort
// the pairs by expert (each expert's rows padded to a multiple of group_rows: with the device's
// expert_group_rows, every expert's product is tiled whatever the number of tokens that chose it,
// so a token's result does not depend on the other tokens), gather the inputs, gate/up/SwiGLU and down
// as one product per expert, then each token's weighted sum. The offsets come back to the host
// to plan the products: on a GPU one synchronization per call (a layer of a prompt).
inline void add_experts_grouped(Context& ctx, const ExpertLayer& layer, const float* x, size_t n_tokens,
                                const float* router_logits, size_t group_rows, const GroupedScratch& s,
                                Activations activations, float* y) {
    const size_t cols = layer.gate.all.cols, n_experts = layer.gate.n_experts, k = layer.k;
    route(ctx, router_logits, n_tokens, n_experts, k, s.ids, s.chosen_logits);
    group_by_expert(ctx, s.ids, n_tokens, k, n_experts, group_rows, s.offsets, s.row_token, s.pair_row);
    std::vector<int32_t> host_offsets(n_experts + 1);
    download(ctx, host_offsets.data(), s.offsets, host_offsets.size() * sizeof(int32_t));
    const ExpertGroups groups{s.offsets, host_offsets};
    get_rows(ctx, WeightMatrix{GGMLType::F32, n_tokens, cols, reinterpret_cast<const std::byte*>(x)}, s.row_token,
             groups.rows(), s.rows_in);                                                  // rows_in: [rows, cols]
    matmul_expert_groups_swiglu(ctx, layer.gate, layer.up, groups, s.rows_in, s.gate, s.up, activations, layer.activation);
    matmul_expert_groups(ctx, layer.down, groups, s.gate, s.rows_in, activations);        // rows_in: [rows, cols]
    add_routed_rows(ctx, y, s.rows_in, cols, s.pair_row, n_tokens, router_logits, n_experts, s.chosen_logits, k,
                    layer.renormalize);
}

}  // namespace twinfer::compute
