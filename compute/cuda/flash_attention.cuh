#pragma once
// Inside the CUDA backend: a prompt's attention over a float16 KV cache on the tensor cores
// (flash_attention.cu), which attention() takes where it applies; the attention sinks' term that
// it and attention.cu's kernels fold into a row's softmax.
#include <cmath>
#include <cstddef>

#include "compute/attention.hpp"
#include "compute/cache_rows.hpp"

namespace twinfer::compute::cuda {

// A row's output with its attention sink (AttentionShape::sinks) in the softmax's denominator:
// num / (den + e^(sink - m)), where m is the largest of the row's scores s, num and den its sums of
// e^(s - m) v and of e^(s - m). Both terms are rescaled to the larger of m and the sink (as the
// CPU's attend_block), so that no exponential exceeds 1. sink -inf (none): num / den. Log2: m and
// sink in exp2's units (the tensor-core kernels' scores are times log2(e)).
template <bool Log2 = false>
__device__ __forceinline__ float with_sink(float num, float den, float m, float sink) {
    if (sink == -INFINITY) return num / den;
    const float top = fmaxf(m, sink);
    const float alpha = Log2 ? exp2f(m - top) : __expf(m - top), term = Log2 ? exp2f(sink - top) : __expf(sink - top);
    return num * alpha / (den * alpha + term);
}
// Query head h's sink, -inf without sinks.
__device__ __forceinline__ float sink_of(const float* sinks, int h) { return sinks ? sinks[h] : -INFINITY; }

// attention() for n_tokens tokens from first_position on, as flash_attention.cu computes it: false
// (nothing launched) unless the cache is float16, the attention full (no window), the heads grouped
// evenly, head_dim 64 or 128 and the tables' rows 16-byte aligned.
bool flash_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                     size_t first_position, const AttentionShape& shape, float* out);

}  // namespace twinfer::compute::cuda
