#pragma once
// The server's view of the loaded model: a KV cache of several slots and the batched pass over
// them (F32ModelBase's set_slot_count and run_rows), whichever ModelBackend alternative it is.
#include <cstddef>
#include <span>

#include "engine/backend.hpp"
#include "models/f32_common.hpp"

namespace twinfer::server {

class BatchedModel {
public:
    // Throws std::runtime_error when the backend has no KV slots (the float64 reference): naming
    // what serve can run instead.
    explicit BatchedModel(ModelBackend& backend);

    void set_slot_count(size_t n_slots);
    size_t n_ctx() const;
    size_t n_vocab() const;
    compute::Device device() const;
    size_t slot_length(size_t slot) const;
    size_t kv_backed_bytes() const;   // the memory behind the KV cache now (every device)
    void trim_kv();                   // hands back what no slot's positions use
    // The longest prefix of at most n positions of `slot` that truncate_slot can keep (0 when the
    // model's sliding-window layers have moved past it).
    size_t reusable_prefix(size_t slot, size_t n) const;
    void truncate_slot(size_t slot, size_t n);
    // The most prompt rows of one slot a pass may take (0: no limit).
    size_t max_run_rows() const;
    RowOutputs run_rows(std::span<const SlotToken> rows, RowProducts logits_products);

private:
    ModelBackend& backend_;
};

}  // namespace twinfer::server
