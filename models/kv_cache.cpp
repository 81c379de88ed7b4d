#include "models/kv_cache.hpp"

#include <iomanip>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include "models/inference.hpp"

namespace twinfer {

namespace {

// The keys' or the values' half of a cache. A context too long for the memory is an error saying
// what the whole cache needs, not a bare std::bad_alloc.
compute::Buffer allocate_half(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv) {
    try {
        return compute::Buffer(device, KvCache::bytes(n_layer, n_slots, n_ctx, n_embd_kv) / 2);
    } catch (const std::bad_alloc&) {
        std::ostringstream message;
        message << std::fixed << std::setprecision(1) << "cannot allocate the KV cache for a context of " << n_ctx << " tokens: it needs "
                << static_cast<double>(KvCache::bytes(n_layer, n_slots, n_ctx, n_embd_kv)) / (1u << 30) << " GiB (" << n_layer
                << " layers x 2 x " << n_slots * n_ctx << " positions x " << n_embd_kv << " x 4 bytes); a smaller --ctx-size shrinks it";
        throw std::runtime_error(message.str());
    }
}

}  // namespace

// Buffer memory is not touched here: the operating system maps pages in as positions fill, so a
// long n_ctx costs address space, not memory, until it is used.
KvCache::KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_(n_embd_kv), lengths_(n_slots, 0),
      keys_(allocate_half(device, n_layer, n_slots, n_ctx, n_embd_kv)),
      values_(allocate_half(device, n_layer, n_slots, n_ctx, n_embd_kv)) {}

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

void KvCache::truncate(size_t slot, size_t n) {
    if (n > lengths_.at(slot))
        throw std::out_of_range("KvCache::truncate: " + std::to_string(n) + " positions asked, slot " + std::to_string(slot) +
                                " holds " + std::to_string(lengths_.at(slot)));
    lengths_.at(slot) = n;
}

}  // namespace twinfer
