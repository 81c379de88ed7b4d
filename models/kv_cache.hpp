#pragma once
// The float32 models' key/value cache: what attention needs of every position seen so far, so a
// forward pass computes only the new tokens. It owns its storage (compute::Buffer, on the model's
// device) and changes state only through reserve/commit/truncate/clear.
//
// Layout, keys and values alike, float32:
//   [n_layer][n_slots][n_ctx][n_embd_kv]     n_embd_kv = n_head_kv * head_dim, head-major
// so one layer's positions of one sequence slot are a contiguous [n_ctx, n_embd_kv] matrix: the
// K and V projections of a forward pass write their rows straight into it. Slots are independent
// sequences (the server's batching); the models use slot 0 for now.
#include <cstddef>
#include <vector>

#include "compute/buffer.hpp"

namespace twinfer {

class KvCache {
public:
    KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv);
    // The bytes such a cache allocates (keys and values).
    static size_t bytes(size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv) {
        return 2 * n_layer * n_slots * n_ctx * n_embd_kv * sizeof(float);
    }

    size_t n_layer() const { return n_layer_; }
    size_t n_slots() const { return lengths_.size(); }
    size_t n_ctx() const { return n_ctx_; }
    size_t n_embd_kv() const { return n_embd_kv_; }
    size_t length(size_t slot) const { return lengths_.at(slot); }   // positions filled

    // [n_ctx, n_embd_kv] of one layer and slot.
    float* keys(size_t layer, size_t slot) { return keys_.as<float>() + offset(layer, slot); }
    float* values(size_t layer, size_t slot) { return values_.as<float>() + offset(layer, slot); }

    // The first position for n more tokens of `slot` (= its length). Throws ContextOverflow, cache
    // unchanged, if they would not fit. The caller writes their rows, then commits.
    size_t reserve(size_t slot, size_t n) const;
    void commit(size_t slot, size_t n);          // length += n (after reserve)
    void clear(size_t slot) { lengths_.at(slot) = 0; }
    // Forgets the positions of `slot` from n on (the rows before n stay valid). Throws
    // std::out_of_range if n is beyond its length.
    void truncate(size_t slot, size_t n);

private:
    size_t offset(size_t layer, size_t slot) const { return (layer * n_slots() + slot) * n_ctx_ * n_embd_kv_; }

    size_t n_layer_, n_ctx_, n_embd_kv_;
    std::vector<size_t> lengths_;
    compute::Buffer keys_, values_;
};

}  // namespace twinfer
