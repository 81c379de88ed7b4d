#pragma once
// Element-wise ops: residual adds, biases, activation functions.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

namespace cpu {
void add(Context& ctx, float* x, const float* y, size_t n);
void add_bias(Context& ctx, float* x, const float* bias, size_t n_rows, size_t n);
void swiglu(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void swiglu_oai(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void gelu(Context& ctx, float* x, size_t n);
void gelu_erf(Context& ctx, float* x, size_t n);
void geglu(Context& ctx, const float* gate, const float* up, size_t n, float* out);
void scale(Context& ctx, float* x, size_t n, float factor);
void add_scaled(Context& ctx, float* x, const float* y, float factor, size_t n);
void softcap(Context& ctx, float* x, size_t n, float cap);
void argmax(Context& ctx, const float* x, size_t n_rows, size_t n, int32_t* out);
void top_k(Context& ctx, const float* x, size_t n, size_t k, int32_t* ids, float* values);
}

// x += y   (residual connection)
inline void add(Context& ctx, float* x, const float* y, size_t n) {
    if (ctx.device() == Device::CPU) return cpu::add(ctx, x, y, n);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::add(ctx, x, y, n);
#endif
    throw_backend_unavailable("add", ctx.device());
}

// x[r, :] += bias   for r < n_rows
inline void add_bias(Context& ctx, float* x, const float* bias, size_t n_rows, size_t n) {
    if (ctx.device() == Device::CPU) return cpu::add_bias(ctx, x, bias, n_rows, n);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::add_bias(ctx, x, bias, n_rows, n);
#endif
    throw_backend_unavailable("add_bias", ctx.device());
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up   (Llama's feed-forward). out may alias gate.
inline void swiglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (ctx.device() == Device::CPU) return cpu::swiglu(ctx, gate, up, n, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::swiglu(ctx, gate, up, n, out);
#endif
    throw_backend_unavailable("swiglu", ctx.device());
}

// gpt-oss's gated activation (llama.cpp's swiglu_oai, transformers' GptOssExperts._apply_gate):
// g = min(gate, 7), u = clamp(up, -7, 7), out = g sigmoid(1.702 g) (u + 1). out may alias gate.
constexpr float swiglu_oai_alpha = 1.702f, swiglu_oai_limit = 7.0f;
inline void swiglu_oai(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (ctx.device() == Device::CPU) return cpu::swiglu_oai(ctx, gate, up, n, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::swiglu_oai(ctx, gate, up, n, out);
#endif
    throw_backend_unavailable("swiglu_oai", ctx.device());
}

// x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's GELU, tanh form), in place
inline void gelu(Context& ctx, float* x, size_t n) {
    if (ctx.device() == Device::CPU) return cpu::gelu(ctx, x, n);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::gelu(ctx, x, n);
#endif
    throw_backend_unavailable("gelu", ctx.device());
}

// x = 0.5 x (1 + erf(x / sqrt(2)))   (the exact GELU: GPT-NeoX), in place
inline void gelu_erf(Context& ctx, float* x, size_t n) {
    if (ctx.device() == Device::CPU) return cpu::gelu_erf(ctx, x, n);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::gelu_erf(ctx, x, n);
#endif
    throw_backend_unavailable("gelu_erf", ctx.device());
}

// out = gelu(gate) * up, gelu the tanh form   (GeGLU: Gemma's feed-forward). out may alias gate.
inline void geglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (ctx.device() == Device::CPU) return cpu::geglu(ctx, gate, up, n, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::geglu(ctx, gate, up, n, out);
#endif
    throw_backend_unavailable("geglu", ctx.device());
}

// x *= factor   (Gemma's embedding scale)
inline void scale(Context& ctx, float* x, size_t n, float factor) {
    if (ctx.device() == Device::CPU) return cpu::scale(ctx, x, n, factor);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::scale(ctx, x, n, factor);
#endif
    throw_backend_unavailable("scale", ctx.device());
}

// x += factor * y   (an expert's output, weighted by its router weight)
inline void add_scaled(Context& ctx, float* x, const float* y, float factor, size_t n) {
    if (ctx.device() == Device::CPU) return cpu::add_scaled(ctx, x, y, factor, n);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::add_scaled(ctx, x, y, factor, n);
#endif
    throw_backend_unavailable("add_scaled", ctx.device());
}

// x = cap * tanh(x / cap)   (final logit soft-capping)
inline void softcap(Context& ctx, float* x, size_t n, float cap) {
    if (ctx.device() == Device::CPU) return cpu::softcap(ctx, x, n, cap);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::softcap(ctx, x, n, cap);
#endif
    throw_backend_unavailable("softcap", ctx.device());
}

// out[r] = the index of the largest of row r of x ([n_rows, n]), the lowest on ties (as
// engine/sampler's argmax): greedy decoding that copies ids back instead of the logits. out in the
// device's memory.
inline void argmax(Context& ctx, const float* x, size_t n_rows, size_t n, int32_t* out) {
    if (ctx.device() == Device::CPU) return cpu::argmax(ctx, x, n_rows, n, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::argmax(ctx, x, n_rows, n, out);
#endif
    throw_backend_unavailable("argmax", ctx.device());
}

// The k largest of x[0..n) and their indices, largest first, the lower index first among equal
// values (-0 equal to +0; as engine/sampler's top-k, so that the sampler chain's first stage can
// run where the logits are and only k pairs come back): ids[0..k), values[0..k) in the device's
// memory. 1 <= k <= max_top_k, k <= n; x without NaNs.
constexpr size_t max_top_k = 256;
inline void top_k(Context& ctx, const float* x, size_t n, size_t k, int32_t* ids, float* values) {
    if (k == 0 || k > max_top_k || k > n)
        throw std::invalid_argument("top_k: k = " + std::to_string(k) + " must be 1.." + std::to_string(max_top_k) +
                                    " and at most n = " + std::to_string(n));
    if (ctx.device() == Device::CPU) return cpu::top_k(ctx, x, n, k, ids, values);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::top_k(ctx, x, n, k, ids, values);
#endif
    throw_backend_unavailable("top_k", ctx.device());
}

}  // namespace twinfer::compute
