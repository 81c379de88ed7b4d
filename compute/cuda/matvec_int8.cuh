#pragma once
// Inside the CUDA backend: the matrix-vector product over int8 activations (matvec_int8.cu), which
// matmul.cu calls for one token when the model asks for Activations::Int8.
#include <cstddef>
#include <span>

#include "compute/matmul.hpp"

namespace twinfer::compute::cuda {

// The activations of one token quantized per 32 values (d = max|x| / 127, q = round(x / d), as
// the CPU's quantize_q8 and llama.cpp's Q8_0), with each block's d * sum(q).
struct QuantizedActivations {
    const int8_t* qs;   // [cols]
    const float2* ds;   // [cols / 32]: (d, d * sum(q))
};

bool int8_matvec_supports(GGMLType type);
// x: [cols] in device memory, quantized into the context's scratch; valid until the next call.
QuantizedActivations quantize_activations(Context& ctx, const float* x, size_t cols);
// The same for RMSNorm(x) * weight, which is also written to norm.out: one launch.
bool rms_norm_quantize_supports(size_t cols);
QuantizedActivations rms_norm_quantize(Context& ctx, const float* x, const RmsNorm& norm, size_t cols);
// y = W x (or y += W x, MatmulOutput::accumulate) for token `token` of every output, whose types
// int8_matvec_supports (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): up to three matrices of one type per launch.
void int8_matvec(Context& ctx, std::span<const MatmulOutput> outputs, size_t token, const QuantizedActivations& x);
// out = silu(W_gate x) * (W_up x), gate and up of one shape and type, in one launch.
void int8_matvec_swiglu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const QuantizedActivations& x,
                        float* out);

}  // namespace twinfer::compute::cuda
