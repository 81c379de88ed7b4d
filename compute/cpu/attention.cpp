#include "compute/attention.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/cpu/kernels.hpp"
#include "compute/cpu/thread_pool.hpp"
#include "format/quant.hpp"

namespace twinfer::compute::cpu {

namespace {

// The positions token t (at first_position + t) attends to: [first, n_seen).
struct Seen {
    size_t first, n_seen;
};
Seen seen(const AttentionShape& shape, size_t first_position, size_t t) {
    const size_t n_seen = first_position + t + 1;
    return {shape.window && n_seen > shape.window ? n_seen - shape.window : 0, n_seen};
}

// A Q8_0 table is entered at a head's first value: heads (and rows) of whole blocks. Checked before
// the workers start (they must not throw).
void check_q8_0_heads(KvType type, size_t head_dim, size_t kv_stride) {
    if (type == KvType::Q8_0 && (head_dim % kv_q8_0_block || kv_stride % kv_q8_0_block))
        throw std::invalid_argument("a q8_0 KV cache needs heads of whole blocks of 32 values, not " + std::to_string(head_dim));
}

// Prompts, flash-attention style (Kernels::attend_block). KV head g's query rows are i = t * group
// + j (token t, head g * group + j), consecutive rows sharing every key they read; a block is
// attention_block_rows of them, and a task one (KV head, block), each head's blocks from the last
// (the longest, causal) down so that the short ones fill the end. On a ring layer a block reads
// its rows' windows as consecutive rows from (its first position % ring) on, so its positions
// (window + its tokens - 1) must fit in the ring: narrower blocks where the ring is narrow (a
// model's ring is window + 511, wide enough; a row's values do not depend on its block).
void attention_blocks(Context& ctx, const Kernels& k, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                      size_t first_position, const AttentionShape& shape, float* out) {
    const size_t group = shape.n_head / shape.n_head_kv, D = shape.head_dim;
    const size_t q_stride = shape.n_head * D;
    size_t R = k.attention_block_rows;
    // R rows span at most (R - 1 + group - 1) / group + 1 tokens.
    if (shape.ring) R = std::min(R, (shape.ring - shape.window) * group + 1);
    const size_t n_rows = n_tokens * group, n_blocks = (n_rows + R - 1) / R;
    check_q8_0_heads(keys.type, D, shape.kv_stride);
    const size_t block_bytes = k.attend_block_scratch_bytes(D);
    std::vector<std::byte*> scratch(ctx.n_threads());
    for (int t = 0; t < ctx.n_threads(); ++t) scratch[t] = ctx.thread_scratch(t, block_bytes);
    ctx.pool().parallel_for(shape.n_head_kv * n_blocks, 1, [&](size_t begin, size_t end, int thread) {
        for (size_t task = begin; task < end; ++task) {
            const size_t g = task / n_blocks, i0 = (n_blocks - 1 - task % n_blocks) * R;
            const size_t n = std::min(R, n_rows - i0);
            const float* rows_q[max_attention_block_rows];
            float* rows_out[max_attention_block_rows];
            size_t rows_first[max_attention_block_rows], rows_end[max_attention_block_rows];
            float rows_sink[max_attention_block_rows];
            // Keys from the block's first position (its first row's, the smallest) on; on a ring
            // layer they are rows (lo % ring) + i, contiguous in the mirrored ring.
            const size_t lo = seen(shape, first_position, i0 / group).first;
            for (size_t r = 0; r < n; ++r) {
                const size_t t = (i0 + r) / group, h = g * group + (i0 + r) % group;
                const Seen s = seen(shape, first_position, t);
                rows_q[r] = q + t * q_stride + h * D;
                rows_out[r] = out + t * q_stride + h * D;
                rows_first[r] = s.first - lo, rows_end[r] = s.n_seen - lo;
                if (shape.sinks) rows_sink[r] = shape.sinks[h];
            }
            const size_t first_row = shape.ring ? lo % shape.ring : lo, offset = first_row * shape.kv_stride + g * D;
            const AttentionBlock block{n, rows_q, rows_out, rows_first, rows_end, keys.plus(offset).data,
                                       values.plus(offset).data, keys.type, shape.kv_stride, D, shape.scale, lo,
                                       shape.sinks ? rows_sink : nullptr};
            k.attend_block(block, scratch[thread]);
        }
    });
}

// A decode row's heads h0 .. h0 + n_heads - 1, of one KV head, the token at `position` (q and out:
// the row's [n_head, head_dim]) over its window of keys and values; scratch for n_heads rows of scores.
void attend_heads(const Kernels& k, const float* q, CacheRows keys, CacheRows values, size_t position,
                  const AttentionShape& shape, size_t h0, size_t n_heads, float* scratch, float* out) {
    const size_t group = shape.n_head / shape.n_head_kv, D = shape.head_dim;
    const auto [first, n_seen] = seen(shape, position, 0);
    const size_t first_row = shape.ring ? first % shape.ring : first, n_kv = n_seen - first;
    const size_t head_offset = (h0 / group) * D, kv_offset = first_row * shape.kv_stride + head_offset;
    k.attend(q + h0 * D, n_heads, keys.plus(kv_offset).data, values.plus(kv_offset).data, keys.type, shape.kv_stride, n_kv,
             D, shape.scale, shape.sinks ? shape.sinks + h0 : nullptr, scratch, out + h0 * D);
}

// Decode rows' tasks: each KV head's query heads in parts of this many, so that the heads of a
// group share their reads of the cache, yet a few rows still make two tasks a thread (a head's
// values do not depend on the heads beside it in its call).
size_t decode_heads_per_task(size_t n_rows, const AttentionShape& shape, int n_threads) {
    const size_t group = shape.n_head / shape.n_head_kv, groups = n_rows * shape.n_head_kv, wanted = 2 * size_t(n_threads);
    return groups >= wanted ? group : std::max<size_t>(1, group * groups / wanted);
}

// Runs fn(row, first head, heads, thread) for every row's heads in parts of decode_heads_per_task,
// in one parallel region, each thread with scores scratch for the part over at most max_kv positions.
template <class F>
void for_decode_heads(Context& ctx, size_t n_rows, const AttentionShape& shape, size_t max_kv, F&& fn) {
    const size_t group = shape.n_head / shape.n_head_kv;
    const size_t per_task = decode_heads_per_task(n_rows, shape, ctx.n_threads());
    const size_t parts = (group + per_task - 1) / per_task, tasks_per_row = shape.n_head_kv * parts;
    // Allocated here, not in the workers: a worker thread must not throw.
    std::vector<float*> scratch(ctx.n_threads());
    for (int t = 0; t < ctx.n_threads(); ++t)
        scratch[t] = reinterpret_cast<float*>(ctx.thread_scratch(t, per_task * max_kv * sizeof(float)));
    ctx.pool().parallel_for(n_rows * tasks_per_row, 1, [&](size_t begin, size_t end, int thread) {
        for (size_t task = begin; task < end; ++task) {
            const size_t row = task / tasks_per_row, g = task % tasks_per_row / parts, part = task % parts;
            const size_t h0 = g * group + part * per_task;
            fn(row, h0, std::min(per_task, group - part * per_task), scratch[thread]);
        }
    });
}

}  // namespace

// Prompt rows in blocks (attention_blocks); decode rows in tasks of a token's heads that share a KV
// head (for_decode_heads).
void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
               const AttentionShape& shape, float* out, AttentionRows rows) {
    const Kernels& k = kernels(ctx.cpu_isa());
    if (rows == AttentionRows::Prompt || (rows == AttentionRows::Auto && n_tokens > 1))
        return attention_blocks(ctx, k, q, keys, values, n_tokens, first_position, shape, out);
    const size_t q_stride = shape.n_head * shape.head_dim;
    check_q8_0_heads(keys.type, shape.head_dim, shape.kv_stride);
    for_decode_heads(ctx, n_tokens, shape, first_position + n_tokens, [&](size_t t, size_t h0, size_t n, float* scratch) {
        attend_heads(k, q + t * q_stride, keys, values, first_position + t, shape, h0, n, scratch, out + t * q_stride);
    });
}

void store_rows(Context&, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row) {
    const size_t n = n_rows * width;
    if (table.type == KvType::F32) {
        std::copy(x, x + n, table.f32() + first_row * width);
        return;
    }
    if (table.type == KvType::Q8_0) {
        auto* rows = static_cast<std::byte*>(table.plus(first_row * width).data);
        return quantize(GGMLType::Q8_0, std::span(x, n), std::span(rows, kv_bytes(KvType::Q8_0, n)));
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

// Row by row, as each row's run computes it in a batched pass: the same calls, so the same bits.
void decode_rows_rope_store(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                     const DecodeRows& rows, const RopeParams* rope, CacheRows keys, CacheRows values, size_t slot_stride,
                     size_t ring) {
    const size_t q_width = n_head * head_dim, kv_width = n_head_kv * head_dim;
    for (size_t r = 0; r < rows.n_rows; ++r) {
        const size_t slot = size_t(rows.slot_positions[2 * r]), position = size_t(rows.slot_positions[2 * r + 1]);
        float* k_row = k + r * kv_width;
        if (rope) {
            cpu::rope(ctx, q + r * q_width, 1, q_width, n_head, head_dim, position, *rope);
            cpu::rope(ctx, k_row, 1, kv_width, n_head_kv, head_dim, position, *rope);
        }
        const CacheRows slot_keys = keys.plus(slot * slot_stride), slot_values = values.plus(slot * slot_stride);
        if (ring) {
            cpu::store_ring(ctx, k_row, 1, kv_width, slot_keys, position, nullptr, ring);
            cpu::store_ring(ctx, v + r * kv_width, 1, kv_width, slot_values, position, nullptr, ring);
        } else {
            cpu::store_rows(ctx, k_row, 1, kv_width, slot_keys, position);
            cpu::store_rows(ctx, v + r * kv_width, 1, kv_width, slot_values, position);
        }
    }
}

// Every row's heads in one parallel region, each head as attention() computes its decode row's
// head: the same bits.
void decode_rows_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, const DecodeRows& rows,
                           size_t slot_stride, const AttentionShape& shape, float* out) {
    const Kernels& k = kernels(ctx.cpu_isa());
    const size_t width = shape.n_head * shape.head_dim;
    size_t max_kv = 0;
    for (size_t r = 0; r < rows.n_rows; ++r) max_kv = std::max(max_kv, size_t(rows.slot_positions[2 * r + 1]) + 1);
    check_q8_0_heads(keys.type, shape.head_dim, shape.kv_stride);
    for_decode_heads(ctx, rows.n_rows, shape, max_kv, [&](size_t r, size_t h0, size_t n, float* scratch) {
        const size_t slot = size_t(rows.slot_positions[2 * r]);
        attend_heads(k, q + r * width, keys.plus(slot * slot_stride), values.plus(slot * slot_stride),
                     size_t(rows.slot_positions[2 * r + 1]), shape, h0, n, scratch, out + r * width);
    });
}

}  // namespace twinfer::compute::cpu
