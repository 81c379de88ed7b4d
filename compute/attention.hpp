#pragma once
// Causal multi-head attention of new tokens over a KV cache.
#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <cstdint>

#include "compute/cache_rows.hpp"
#include "compute/context.hpp"
#include "compute/matmul.hpp"
#include "compute/norm.hpp"
#include "compute/rope.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/ops.hpp"
#endif

namespace twinfer::compute {

struct AttentionShape {
    size_t n_head = 0;
    size_t n_head_kv = 0;    // query head h reads KV head h / (n_head / n_head_kv) (grouped-query)
    size_t head_dim = 0;
    size_t kv_stride = 0;    // elements between two positions in keys/values (>= n_head_kv * head_dim)
    float scale = 1.0f;      // usually 1/sqrt(head_dim)
    // Sliding-window attention: a token attends to the last `window` positions, its own included;
    // 0: to every earlier position. (On CUDA at most max_attention_window.)
    size_t window = 0;
    // A ring layer of the KV cache (models/kv_cache.hpp): position p at rows p % ring and
    // p % ring + ring, so the window's positions are read from row (first % ring) on. 0: position p
    // at row p. Needs window <= ring.
    size_t ring = 0;
    // Attention sinks (gpt-oss): sinks[h], a learned logit of query head h that joins each of its
    // softmax's denominators and weighs no value, so a row can attend to nothing. Not scaled by
    // `scale`. null: none. In the context's device memory, as q.
    const float* sinks = nullptr;
};
constexpr size_t max_attention_window = 8192;

// How a call's rows are computed: the two ways round differently, so a row's values depend on
// this choice and on nothing else of the call (not on its other rows, nor on where a prompt was
// cut into calls), and a batched pass gives each row the way its kind gets alone (RowProducts in
// models/f32_common.hpp: Tiled rows are prompt rows).
//   Decode: each (token, head) alone, the decode step's arithmetic (one row of scores, then the
//     values' sums; on CUDA, attention() of that one token).
//   Prompt: on the CPU, blocks of query rows that read the same KV head (tokens, and a group's
//     heads) against tiles of keys, the softmax taken online (flash-attention style): each cached
//     row read once a block instead of once a row. On CUDA, the kernels whose arithmetic for a row
//     does not follow the call's size (cuda/attention.cu, prompt_attention).
//   Auto: on the CPU, Prompt from two tokens on, Decode for one. On CUDA, the fastest kernel for
//     the call's size (cuBLAS products or the tensor cores from 16 tokens on), whose rows may
//     differ in their last bits from the same rows in a call of another size.
enum class AttentionRows { Auto, Prompt, Decode };

// q: [n_tokens, n_head, head_dim]; keys, values: [first_position + n_tokens, kv_stride], KV head
// g's vector at offset g * head_dim, float32 or float16 (both tables of one type); out: [n_tokens,
// n_head, head_dim]. Token t (at position first_position + t) attends to positions 0 ..=
// first_position + t (the last `window` of them with a sliding window):
//   out[t, h] = sum_p softmax_p(scale * q[t, h] . k[p, g]) v[p, g]
// (with sinks, the softmax's denominator also holds exp(sinks[h])).
namespace cpu {
void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
               const AttentionShape& shape, float* out, AttentionRows rows = AttentionRows::Auto);
}
inline void check_cache_types(CacheRows keys, CacheRows values) {
    if (keys.type != values.type) throw std::invalid_argument("attention: keys and values of different types");
}
inline void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                      size_t first_position, const AttentionShape& shape, float* out,
                      AttentionRows rows = AttentionRows::Auto) {
    check_cache_types(keys, values);
    if (ctx.device() == Device::CPU)
        return cpu::attention(ctx, q, keys, values, n_tokens, first_position, shape, out, rows);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::attention(ctx, q, keys, values, n_tokens, first_position, shape, out, rows);
#endif
    throw_backend_unavailable("attention", ctx.device());
}

// One token at the position the device reads from `position` (device memory), attending to
// positions 0 ..= *position: the same result as attention() with n_tokens 1, for a decode step
// replayed as a CUDA graph at every position. max_positions (the cache's length) bounds *position:
// the CUDA launch is sized for it.
inline void attention_at(Context& ctx, const float* q, CacheRows keys, CacheRows values, const int32_t* position,
                         size_t max_positions, const AttentionShape& shape, float* out) {
    check_cache_types(keys, values);
    if (ctx.device() == Device::CPU) {
        if (*position < 0 || size_t(*position) >= max_positions)
            throw std::out_of_range("attention_at: position " + std::to_string(*position) + " outside the cache's " +
                                    std::to_string(max_positions));
        return cpu::attention(ctx, q, keys, values, 1, size_t(*position), shape, out, AttentionRows::Decode);
    }
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::attention_at(ctx, q, keys, values, position, max_positions, shape, out);
#endif
    throw_backend_unavailable("attention_at", ctx.device());
}

// table[first_row + r, :] = x[r, :] for r < n_rows   x: [n_rows, width], table: [rows, width],
// rounded to the table's type: a prompt's K or V rows into the cache.
namespace cpu {
void store_rows(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row);
}
inline void store_rows(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row) {
    if (ctx.device() == Device::CPU) return cpu::store_rows(ctx, x, n_rows, width, table, first_row);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::store_rows(ctx, x, n_rows, width, table, first_row);
#endif
    throw_backend_unavailable("store_rows", ctx.device());
}

// table[*row, :] = x   x: [width], table: [rows, width]; row in device memory (a KV cache write
// at a position the host does not bake into the step).
inline void store_row(Context& ctx, const float* x, size_t width, CacheRows table, const int32_t* row) {
    if (ctx.device() == Device::CPU) return cpu::store_rows(ctx, x, 1, width, table, size_t(*row));
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::store_row(ctx, x, width, table, row);
#endif
    throw_backend_unavailable("store_row", ctx.device());
}

// Rows of a ring layer of the KV cache: x's row r (position p = first_position + r, or, with
// device_position, *device_position for the one row) stored at rows p % ring and p % ring + ring
// of table ([2 ring, width]).
namespace cpu {
void store_ring(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_position,
                const int32_t* device_position, size_t ring);
}
inline void store_ring(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_position,
                       const int32_t* device_position, size_t ring) {
    if (ctx.device() == Device::CPU) return cpu::store_ring(ctx, x, n_rows, width, table, first_position, device_position, ring);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::store_ring(ctx, x, n_rows, width, table, first_position, device_position, ring);
#endif
    throw_backend_unavailable("store_ring", ctx.device());
}

// One decode step's rotary embedding and KV-cache write: q [n_head, head_dim] and k [n_head_kv,
// head_dim] rotated at *position (device memory), then k and v stored as row *position of keys and
// values ([positions, n_head_kv * head_dim]). rope_at twice and store_row twice, one launch on the GPU.
inline void rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv,
                          size_t head_dim, const int32_t* position, const RopeParams& params, CacheRows keys,
                          CacheRows values) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::rope_store_at(ctx, q, n_head, k, v, n_head_kv, head_dim, position, params, keys, values);
#endif
    rope_at(ctx, q, n_head, head_dim, position, params);
    rope_at(ctx, k, n_head_kv, head_dim, position, params);
    store_row(ctx, k, n_head_kv * head_dim, keys, position);
    store_row(ctx, v, n_head_kv * head_dim, values, position);
}

// QK-norm (Qwen3, Gemma 3): an RMSNorm over each head of q and of k, with weights of head_dim
// values (null: no norm on that side).
struct HeadNorms {
    const float* q = nullptr;
    const float* k = nullptr;
    float eps = 0.0f;
};

// A decode step's q [n_head, head_dim], k and v [n_head_kv, head_dim] after their products: q's
// and k's heads normalized (norms), rotated at *position (rope; null: a NoPE layer), then k and v
// stored as that position's row of keys and values (ring > 0, a ring layer: rows p % ring and
// p % ring + ring). The norms, rope_at and the stores; one launch on the GPU.
inline void norm_rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv,
                               size_t head_dim, const int32_t* position, const RopeParams* rope, const HeadNorms& norms,
                               CacheRows keys, CacheRows values, size_t ring) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::norm_rope_store_at(ctx, q, n_head, k, v, n_head_kv, head_dim, position, rope, norms, keys, values, ring);
#endif
    if (norms.q) rms_norm(ctx, q, norms.q, n_head, head_dim, norms.eps, q);
    if (norms.k) rms_norm(ctx, k, norms.k, n_head_kv, head_dim, norms.eps, k);
    const size_t width = n_head_kv * head_dim;
    if (ring) {
        if (rope) rope_at(ctx, q, n_head, head_dim, position, *rope), rope_at(ctx, k, n_head_kv, head_dim, position, *rope);
        store_ring(ctx, k, 1, width, keys, 0, position, ring);
        store_ring(ctx, v, 1, width, values, 0, position, ring);
    } else if (rope) {
        rope_store_at(ctx, q, n_head, k, v, n_head_kv, head_dim, position, *rope, keys, values);
    } else {
        store_row(ctx, k, width, keys, position), store_row(ctx, v, width, values, position);
    }
}

// A decode step's attention inputs: q, k, v = the products qkv of one token of x (normalized by
// norm first, as in matmul), then rope_store_at. The GPU's int8 path rotates and stores in the
// products' own launch (no launch of its own for RoPE and the cache write).
inline void project_rope_store_at(Context& ctx, std::span<const MatmulOutput, 3> qkv, const float* x,
                                  Activations activations, const RmsNorm* norm, size_t n_head, size_t n_head_kv,
                                  size_t head_dim, const int32_t* position, const RopeParams& params, CacheRows keys,
                                  CacheRows values) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA &&
        cuda::project_rope_store_at(ctx, qkv, x, activations, norm, head_dim, position, params, keys, values))
        return;
#endif
    matmul(ctx, std::span<const MatmulOutput>(qkv), x, 1, activations, norm);
    rope_store_at(ctx, qkv[0].y, n_head, qkv[1].y, qkv[2].y, n_head_kv, head_dim, position, params, keys, values);
}


// The decode rows of a batched pass (models/f32_common.hpp: Single rows), each one token of its own
// KV-cache slot, taken as one group: row r is a token of slot slot_positions[2r] at position
// slot_positions[2r + 1]. A layer's slots lie slot_stride elements apart from its slot-0 tables
// (models/kv_cache.hpp). On a GPU one launch serves every row where a launch a row made the
// server's step thousands of launches; a row's values follow its own slot and position only,
// whatever the other rows are.
struct DecodeRows {
    const int32_t* slot_positions = nullptr;   // [n_rows][2], in the context's device memory
    size_t n_rows = 0;
    size_t max_length = 0;                     // the largest position + 1 among the rows
};

// q: [n_rows, n_head, head_dim], k, v: [n_rows, n_head_kv * head_dim]. With rope (null: a NoPE
// layer, or rows already rotated) q and k rotated at each row's position; then k and v stored as
// that position's row of the row's slot (a ring layer, ring > 0: rows p % ring and p % ring + ring).
namespace cpu {
void decode_rows_rope_store(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                     const DecodeRows& rows, const RopeParams* rope, CacheRows keys, CacheRows values, size_t slot_stride,
                     size_t ring);
}
inline void decode_rows_rope_store(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv,
                            size_t head_dim, const DecodeRows& rows, const RopeParams* rope, CacheRows keys,
                            CacheRows values, size_t slot_stride, size_t ring) {
    check_cache_types(keys, values);
    if (ctx.device() == Device::CPU)
        return cpu::decode_rows_rope_store(ctx, q, n_head, k, v, n_head_kv, head_dim, rows, rope, keys, values, slot_stride, ring);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA)
        return cuda::decode_rows_rope_store(ctx, q, n_head, k, v, n_head_kv, head_dim, rows, rope, keys, values, slot_stride, ring);
#endif
    throw_backend_unavailable("decode_rows_rope_store", ctx.device());
}

// out[r] = the attention of row r's token (q[r]: [n_head, head_dim]) over its slot's positions 0
// ..= its own (its window's, shape.window), keys and values the layer's slot-0 tables. On the CPU
// attention() of the token alone (AttentionRows::Decode); on CUDA the general kernel a row, its
// positions split as for that one token alone.
namespace cpu {
void decode_rows_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, const DecodeRows& rows,
                    size_t slot_stride, const AttentionShape& shape, float* out);
}
inline void decode_rows_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, const DecodeRows& rows,
                           size_t slot_stride, const AttentionShape& shape, float* out) {
    check_cache_types(keys, values);
    if (ctx.device() == Device::CPU) return cpu::decode_rows_attention(ctx, q, keys, values, rows, slot_stride, shape, out);
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::decode_rows_attention(ctx, q, keys, values, rows, slot_stride, shape, out);
#endif
    throw_backend_unavailable("decode_rows_attention", ctx.device());
}

}  // namespace twinfer::compute
