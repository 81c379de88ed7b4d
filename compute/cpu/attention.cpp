#include "compute/attention.hpp"

#include <algorithm>
#include <vector>

#include "compute/cpu/kernels.hpp"
#include "compute/cpu/thread_pool.hpp"
#include "format/quant.hpp"

namespace twinfer::compute::cpu {

// One task per (token, head); each thread keeps its scores in its own scratch.
void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
               const AttentionShape& shape, float* out) {
    const Kernels& k = kernels(ctx.cpu_isa());
    const size_t group = shape.n_head / shape.n_head_kv;
    const size_t q_stride = shape.n_head * shape.head_dim;
    const size_t max_kv = first_position + n_tokens;
    // Scores scratch allocated here, not in the workers: a worker thread must not throw.
    std::vector<float*> scratch(ctx.n_threads());
    for (int t = 0; t < ctx.n_threads(); ++t) scratch[t] = reinterpret_cast<float*>(ctx.thread_scratch(t, max_kv * sizeof(float)));
    ctx.pool().parallel_for(n_tokens * shape.n_head, 1, [&](size_t begin, size_t end, int thread) {
        float* scores = scratch[thread];
        for (size_t task = begin; task < end; ++task) {
            const size_t t = task / shape.n_head, h = task % shape.n_head;
            const size_t n_seen = first_position + t + 1;
            const size_t first = shape.window && n_seen > shape.window ? n_seen - shape.window : 0;
            const size_t first_row = shape.ring ? first % shape.ring : first;
            const size_t kv_offset = first_row * shape.kv_stride + (h / group) * shape.head_dim;
            k.attend(q + t * q_stride + h * shape.head_dim, keys.plus(kv_offset).data, values.plus(kv_offset).data, keys.type,
                     shape.kv_stride, n_seen - first, shape.head_dim, shape.scale, scores, out + t * q_stride + h * shape.head_dim);
        }
    });
}

void store_rows(Context&, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row) {
    const size_t n = n_rows * width;
    if (table.type == KvType::F32) {
        std::copy(x, x + n, table.f32() + first_row * width);
        return;
    }
    auto* rows = static_cast<ggml_half*>(table.plus(first_row * width).data);
    for (size_t i = 0; i < n; ++i) rows[i] = fp32_to_fp16(x[i]);
}

void store_ring(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_position,
                const int32_t* device_position, size_t ring) {
    const size_t first = device_position ? size_t(*device_position) : first_position;
    for (size_t r = 0; r < n_rows; ++r) {
        const size_t row = (first + r) % ring;
        cpu::store_rows(ctx, x + r * width, 1, width, table, row);
        cpu::store_rows(ctx, x + r * width, 1, width, table, row + ring);
    }
}

}  // namespace twinfer::compute::cpu
