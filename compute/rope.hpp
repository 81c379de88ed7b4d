#pragma once
// Rotary position embedding, in place, over the first n_rot dimensions of each head.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

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
    // cos and sin multiplied by it (YaRN's and LongRoPE's attention factor, llama.cpp's mscale):
    // the rotated dimensions grow, the others (partial rotary) do not, as in llama.cpp and HF.
    double magnitude = 1.0;
};

// Each pair's angle per position, in double (positions reach thousands; float would lose the low
// bits of the angle): position_scale * freq_base^(-2i/n_rot) / freq_factors[i]. factors: the
// host's copy of params.freq_factors (n_rot/2 values), or empty for none. The CPU's and the GPU's
// RoPE both take their frequencies from here.
inline std::vector<double> pair_frequencies(const RopeParams& params, std::span<const float> factors) {
    std::vector<double> frequencies(params.n_rot / 2);
    for (size_t i = 0; i < frequencies.size(); ++i) {
        frequencies[i] = std::pow(params.freq_base, -2.0 * double(i) / double(params.n_rot)) * params.position_scale;
        if (!factors.empty()) frequencies[i] /= factors[i];
    }
    return frequencies;
}

// x: [n_tokens, n_heads, head_dim] with rows `row_stride` floats apart; token t is at position
// first_position + t. Pair i turns by angle position * pair_frequencies(params)[i] and is scaled by
// params.magnitude.
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
