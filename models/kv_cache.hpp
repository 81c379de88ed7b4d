#pragma once
// The float32 models' key/value cache: what attention needs of every position seen so far, so a
// forward pass computes only the new tokens. It owns its storage (compute::Buffer, on the model's
// device) and changes state only through reserve/commit/truncate/clear.
//
// Layout, keys and values alike, float32 or float16 (compute::KvType, `--cache-type`), layer after layer:
//   [n_slots][rows(layer)][n_embd_kv]     n_embd_kv = n_head_kv * head_dim, head-major
// A full layer holds n_ctx rows per slot, position p at row p: the K and V projections of a
// prompt write their rows straight into it. A ring layer (a sliding-window layer, which only ever
// reads its last positions) holds 2 x ring rows: position p at rows p % ring and p % ring + ring
// (a mirrored ring), so any `ring` consecutive positions are contiguous from row
// (first % ring) and attention reads them as it reads a full layer. Slots are independent
// sequences (the server's batching).
#include <cstddef>
#include <span>
#include <vector>

#include "compute/buffer.hpp"
#include "compute/cache_rows.hpp"

namespace twinfer {

// Throws ContextOverflow when n more tokens after `length` would not fit in n_ctx.
void check_context(size_t length, size_t n, size_t n_ctx);

class KvCache {
public:
    // ring_rows: per layer, 0 for a full layer or the ring's length (empty: every layer full).
    KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
            std::vector<size_t> ring_rows = {});
    // The bytes such a cache allocates (keys and values).
    static size_t bytes(size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
                        std::span<const size_t> ring_rows = {});
    size_t bytes() const { return bytes(n_layer_, n_slots(), n_ctx_, n_embd_kv_, type_, ring_rows_); }

    size_t n_layer() const { return n_layer_; }
    size_t n_slots() const { return lengths_.size(); }
    size_t n_ctx() const { return n_ctx_; }
    size_t n_embd_kv() const { return n_embd_kv_; }
    compute::KvType type() const { return type_; }
    size_t length(size_t slot) const { return lengths_.at(slot); }   // positions filled

    // [rows(layer), n_embd_kv] of one layer and slot.
    compute::CacheRows keys(size_t layer, size_t slot) { return compute::CacheRows(keys_.data(), type_).plus(offset(layer, slot)); }
    compute::CacheRows values(size_t layer, size_t slot) {
        return compute::CacheRows(values_.data(), type_).plus(offset(layer, slot));
    }
    // Elements between two slots' tables of one layer (keys(layer, s + 1) = keys(layer, s).plus(this)).
    size_t slot_stride(size_t layer) const { return rows(layer) * n_embd_kv_; }
    size_t ring_rows(size_t layer) const { return ring_rows_.empty() ? 0 : ring_rows_[layer]; }   // 0: full
    const std::vector<size_t>& ring_rows() const { return ring_rows_; }

    // The first position for n more tokens of `slot` (= its length). Throws ContextOverflow, cache
    // unchanged, if they would not fit. The caller writes their rows, then commits.
    size_t reserve(size_t slot, size_t n) const;
    void commit(size_t slot, size_t n);          // length += n (after reserve)
    void clear(size_t slot) { lengths_.at(slot) = 0; }
    // Forgets the positions of `slot` from n on (the rows before n stay valid). Throws
    // std::out_of_range if n is beyond its length.
    void truncate(size_t slot, size_t n);

private:
    size_t rows(size_t layer) const { return ring_rows(layer) ? 2 * ring_rows(layer) : n_ctx_; }
    size_t offset(size_t layer, size_t slot) const { return (layer_offsets_[layer] + slot * rows(layer)) * n_embd_kv_; }

    size_t n_layer_, n_ctx_, n_embd_kv_;
    compute::KvType type_;
    std::vector<size_t> ring_rows_;
    std::vector<size_t> layer_offsets_;   // rows before each layer's first slot
    std::vector<size_t> lengths_;
    compute::Buffer keys_, values_;
};

}  // namespace twinfer
