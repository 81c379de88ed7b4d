#include "models/kv_cache.hpp"

#include <string>

#include "models/inference.hpp"

namespace twinfer {

// Buffer memory is not touched here: the operating system maps pages in as positions fill, so a
// long n_ctx costs address space, not memory, until it is used.
KvCache::KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_(n_embd_kv), lengths_(n_slots, 0),
      keys_(device, n_layer * n_slots * n_ctx * n_embd_kv * sizeof(float)),
      values_(device, n_layer * n_slots * n_ctx * n_embd_kv * sizeof(float)) {}

size_t KvCache::reserve(size_t slot, size_t n) const {
    const size_t length = lengths_.at(slot);
    if (length + n > n_ctx_)
        throw ContextOverflow("sequence of " + std::to_string(length) + " tokens plus " + std::to_string(n) +
                              " new ones exceeds the context of " + std::to_string(n_ctx_) +
                              " tokens (raise n_ctx, up to what the model was trained for, or start a new sequence)");
    return length;
}

void KvCache::commit(size_t slot, size_t n) {
    reserve(slot, n);
    lengths_.at(slot) += n;
}

}  // namespace twinfer
