#pragma once
// Inside the CUDA backend: the matrix-vector product over int8 activations (matvec_int8.cu), which
// matmul.cu calls for one token when the model asks for Activations::Int8.
#include <cstddef>
#include <span>

#include "compute/matmul.hpp"

namespace twinfer::compute::cuda {

bool int8_matvec_supports(GGMLType type);
// y = W x (or y += W x, MatmulOutput::accumulate) for token `token` of every output, whose types
// int8_matvec_supports (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): up to three matrices of one type per launch.
// x: the token's [cols] floats; norm (or null): x := RMSNorm(x) * norm.weight first, also written
// to norm->out (the token's row).
void int8_matvec(Context& ctx, std::span<const MatmulOutput> outputs, size_t token, const float* x, const RmsNorm* norm);
// out = silu(W_gate x) * (W_up x), gate and up of one shape and type, in one launch.
void int8_matvec_swiglu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x,
                        const RmsNorm* norm, float* out);

}  // namespace twinfer::compute::cuda
