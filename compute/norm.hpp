#pragma once
// Normalization over the last dimension of [n_rows, n] activations.
#include <cstddef>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

struct RmsNorm;   // compute/matmul.hpp

namespace cpu {
void rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out);
void layer_norm(Context& ctx, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n,
                float eps, float* out);
void add_rms_norm(Context& ctx, float* x, const float* y, const float* weight, size_t n_rows, size_t n, float eps);
}

// out = x / sqrt(mean(x^2) + eps) * weight   (Llama's RMSNorm). out may be x.
inline void rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out) {
    if (ctx.device() == Device::CPU) return cpu::rms_norm(ctx, x, weight, n_rows, n, eps, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::rms_norm(ctx, x, weight, n_rows, n, eps, out);
#endif
    throw_backend_unavailable("rms_norm", ctx.device());
}

// x += y / sqrt(mean(y^2) + eps) * weight, row by row: a residual add behind a norm of its own
// (Gemma's sandwich norms). One launch on the GPU, where the norm and the add took two.
// next_norm: the RMSNorm the caller's next products apply to x, which a backend may prepare in the
// same launch (as compute::matmul's next_norm: the GPU's one-token int8 path; those products then
// launch no norm and leave next_norm->out unwritten).
inline void add_rms_norm(Context& ctx, float* x, const float* y, const float* weight, size_t n_rows, size_t n, float eps,
                         [[maybe_unused]] const RmsNorm* next_norm = nullptr) {
    if (ctx.device() == Device::CPU) return cpu::add_rms_norm(ctx, x, y, weight, n_rows, n, eps);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::add_rms_norm(ctx, x, y, weight, n_rows, n, eps, next_norm);
#endif
    throw_backend_unavailable("add_rms_norm", ctx.device());
}

// out = (x - mean) / sqrt(var + eps) * weight + bias   (GPT-2's LayerNorm). out may be x.
inline void layer_norm(Context& ctx, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n,
                       float eps, float* out) {
    if (ctx.device() == Device::CPU) return cpu::layer_norm(ctx, x, weight, bias, n_rows, n, eps, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::layer_norm(ctx, x, weight, bias, n_rows, n, eps, out);
#endif
    throw_backend_unavailable("layer_norm", ctx.device());
}

}  // namespace twinfer::compute
