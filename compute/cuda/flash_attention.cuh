#pragma once
// Inside the CUDA backend: a prompt's attention over a float16 KV cache on the tensor cores
// (flash_attention.cu), which attention() takes where it applies.
#include <cstddef>

#include "compute/attention.hpp"
#include "compute/cache_rows.hpp"

namespace twinfer::compute::cuda {

// attention() for n_tokens tokens from first_position on, as flash_attention.cu computes it: false
// (nothing launched) unless the cache is float16, the attention full (no window), the heads grouped
// evenly, head_dim 64 or 128 and the tables' rows 16-byte aligned.
bool flash_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                     size_t first_position, const AttentionShape& shape, float* out);

}  // namespace twinfer::compute::cuda
