#pragma once
// Causal multi-head attention of new tokens over a KV cache.
#include <cstddef>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

struct AttentionShape {
    size_t n_head = 0;
    size_t n_head_kv = 0;    // query head h reads KV head h / (n_head / n_head_kv) (grouped-query)
    size_t head_dim = 0;
    size_t kv_stride = 0;    // floats between two positions in keys/values (>= n_head_kv * head_dim)
    float scale = 1.0f;      // usually 1/sqrt(head_dim)
};

// q: [n_tokens, n_head, head_dim]; keys, values: [first_position + n_tokens, kv_stride], KV head
// g's vector at offset g * head_dim; out: [n_tokens, n_head, head_dim]. Token t (at position
// first_position + t) attends to positions 0 ..= first_position + t:
//   out[t, h] = sum_p softmax_p(scale * q[t, h] . k[p, g]) v[p, g]
namespace cpu {
void attention(Context& ctx, const float* q, const float* keys, const float* values, size_t n_tokens,
               size_t first_position, const AttentionShape& shape, float* out);
}
inline void attention(Context& ctx, const float* q, const float* keys, const float* values, size_t n_tokens,
                      size_t first_position, const AttentionShape& shape, float* out) {
    if (ctx.device() == Device::CPU) return cpu::attention(ctx, q, keys, values, n_tokens, first_position, shape, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::attention(ctx, q, keys, values, n_tokens, first_position, shape, out);
#endif
    throw_backend_unavailable("attention", ctx.device());
}

}  // namespace twinfer::compute
