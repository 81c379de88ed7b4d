#pragma once
// Rotary position embedding, in place, over the first n_rot dimensions of each head.
#include <cstddef>
#include <cstdint>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

struct RopeParams {
    // Which dimensions form a rotated pair. Adjacent: (2i, 2i+1), GGUF Llama files (the converter
    // permuted Q and K for it). Halves: (i, i + n_rot/2), Hugging Face checkpoints (NeoX).
    enum class Pairing { Adjacent, Halves };
    Pairing pairing = Pairing::Adjacent;
    size_t n_rot = 0;
    double freq_base = 10000.0;
    double position_scale = 1.0;           // linear scaling: positions multiplied by 1/factor
    const float* freq_factors = nullptr;   // [n_rot/2] divisors of each pair's frequency (rope_freqs.weight), or null
};

// x: [n_tokens, n_heads, head_dim] with rows `row_stride` floats apart; token t is at position
// first_position + t. Pair i turns by angle position * position_scale * freq_base^(-2i/n_rot) / freq_factors[i].
namespace cpu {
void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params);
}
inline void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
                 size_t first_position, const RopeParams& params) {
    if (ctx.device() == Device::CPU) return cpu::rope(ctx, x, n_tokens, row_stride, n_heads, head_dim, first_position, params);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::rope(ctx, x, n_tokens, row_stride, n_heads, head_dim, first_position, params);
#endif
    throw_backend_unavailable("rope", ctx.device());
}

// One token, x: [n_heads, head_dim], at the position the device reads from `position` (device
// memory): the same rotation as rope(), for a decode step replayed as a CUDA graph at every position.
inline void rope_at(Context& ctx, float* x, size_t n_heads, size_t head_dim, const int32_t* position,
                    const RopeParams& params) {
    if (ctx.device() == Device::CPU) return cpu::rope(ctx, x, 1, n_heads * head_dim, n_heads, head_dim, size_t(*position), params);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::rope_at(ctx, x, n_heads, head_dim, position, params);
#endif
    throw_backend_unavailable("rope_at", ctx.device());
}

}  // namespace twinfer::compute
