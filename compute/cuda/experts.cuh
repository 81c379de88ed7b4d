#pragma once
// Inside the CUDA backend: the experts' biases and gated activations after their products
// (experts.cu), which matmul.cu's expert products and elementwise.cu's swiglu_oai take.
#include <cstddef>
#include <cstdint>

#include "compute/context.hpp"
#include "compute/elementwise.hpp"
#include "compute/experts.hpp"

namespace twinfer::compute::cuda {

// compute::swiglu_oai of one element: the CPU's formula, in float32.
__device__ __forceinline__ float swiglu_oai_value(float gate, float up) {
    const float g = fminf(gate, swiglu_oai_limit), u = fminf(fmaxf(up, -swiglu_oai_limit), swiglu_oai_limit);
    return g / (1.0f + expf(-swiglu_oai_alpha * g)) * (u + 1.0f);
}

// y[j, :] += bias[ids[j], :] for j < k (y: [k, rows], bias: [n_experts, rows]; ids in device memory).
void add_expert_bias(Context& ctx, float* y, const float* bias, const int32_t* ids, size_t k, size_t rows);
// out[j, :] = act(out[j, :] + gate_bias[ids[j], :], up[j, :] + up_bias[ids[j], :]) for j < k: a
// gated expert's biases and activation in one launch (either bias may be null).
void expert_bias_activation(Context& ctx, float* out, const float* up, const float* gate_bias, const float* up_bias,
                            const int32_t* ids, size_t k, size_t rows, ExpertActivation activation);
// y[r, :] += bias[e, :] for the rows r of every expert e (ExpertGroups::offsets in device memory:
// offsets[e] <= r < offsets[e + 1]; y: [offsets[n_experts], rows]), the padding rows included.
void add_expert_group_bias(Context& ctx, float* y, const float* bias, const int32_t* offsets, size_t n_experts,
                           size_t n_rows, size_t rows);

}  // namespace twinfer::compute::cuda
