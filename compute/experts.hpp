#pragma once
// A mixture-of-experts layer's products for one token, with the router's choice left where it was
// made: the expert ids are read by the kernels from the device's memory (compute::top_k writes
// them there), so a GPU decode step needs no copy to the host and stays one captured graph, and
// only the chosen experts' weights are read.
#include <cstddef>
#include <cstdint>

#include "compute/context.hpp"
#include "compute/matmul.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

// n_experts matrices of one shape as one matrix of n_experts * rows rows (GGUF's [cols, rows,
// n_experts] tensor), expert e the rows [e * rows, (e + 1) * rows), placed on the device whole.
struct ExpertMatrices {
    WeightMatrix all;
    size_t n_experts = 0;

    size_t rows() const { return n_experts ? all.rows / n_experts : 0; }
};

// y[j] = W_{ids[j]} x_j for j < k, x_j = x + j * x_stride (x_stride 0: one input for every expert),
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

// out[j] = silu(W_gate_{ids[j]} x) * (W_up_{ids[j]} x) for j < k, one x for every expert (a gated
// expert's first half; out and up_scratch [k, rows]): matmul_experts twice and swiglu, which the
// GPU's int8 kernels do in one launch.
namespace cpu {
void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations);
}
inline void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                                  size_t k, const float* x, float* out, float* up_scratch, Activations activations) {
    if (ctx.device() == Device::CPU)
        return cpu::matmul_experts_swiglu(ctx, gate, up, ids, k, x, out, up_scratch, activations);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::matmul_experts_swiglu(ctx, gate, up, ids, k, x, out, up_scratch, activations);
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

}  // namespace twinfer::compute
