#pragma once
// Inside the CUDA backend: the matrix-vector product over int8 activations (matvec_int8.cu), which
// matmul.cu calls for one token when the model asks for Activations::Int8.
#include <cstddef>

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
// y = W x for a type int8_matvec_supports (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
void int8_matvec(Context& ctx, const WeightMatrix& w, const QuantizedActivations& x, float* y);

}  // namespace twinfer::compute::cuda
