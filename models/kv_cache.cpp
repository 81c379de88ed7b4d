#include "models/kv_cache.hpp"

#include <iomanip>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include "models/inference.hpp"

namespace twinfer {

namespace {

size_t layer_rows(size_t n_ctx, std::span<const size_t> ring_rows, size_t layer) {
    return ring_rows.empty() || ring_rows[layer] == 0 ? n_ctx : 2 * ring_rows[layer];
}

// The keys' or the values' half of a cache. A context too long for the memory is an error saying
// what the whole cache needs, not a bare std::bad_alloc.
compute::Buffer allocate_half(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv,
                              compute::KvType type, std::span<const size_t> ring_rows) {
    const size_t total = KvCache::bytes(n_layer, n_slots, n_ctx, n_embd_kv, type, ring_rows);
    try {
        return compute::Buffer(device, total / 2);
    } catch (const std::bad_alloc&) {
        std::ostringstream message;
        size_t n_rings = 0;
        for (size_t ring : ring_rows) n_rings += ring != 0;
        message << std::fixed << std::setprecision(1) << "cannot allocate the KV cache for a context of " << n_ctx << " tokens: it needs "
                << static_cast<double>(total) / (1u << 30) << " GiB (" << n_layer << " layers";
        if (n_rings) message << ", " << n_rings << " of them sliding-window rings,";
        message << " x 2 x " << n_slots * n_ctx << " positions x " << n_embd_kv << " x " << compute::kv_element_bytes(type)
                << " bytes); a smaller --ctx-size shrinks it";
        if (type == compute::KvType::F32) message << ", and so does --cache-type f16 (by half)";
        throw std::runtime_error(message.str());
    }
}

}  // namespace

size_t KvCache::bytes(size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
                      std::span<const size_t> ring_rows) {
    size_t rows = 0;
    for (size_t layer = 0; layer < n_layer; ++layer) rows += layer_rows(n_ctx, ring_rows, layer);
    return 2 * rows * n_slots * n_embd_kv * compute::kv_element_bytes(type);
}

// Buffer memory is not touched here: the operating system maps pages in as positions fill, so a
// long n_ctx costs address space, not memory, until it is used.
KvCache::KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv,
                 compute::KvType type, std::vector<size_t> ring_rows)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_(n_embd_kv), type_(type), ring_rows_(std::move(ring_rows)),
      lengths_(n_slots, 0), keys_(allocate_half(device, n_layer, n_slots, n_ctx, n_embd_kv, type, ring_rows_)),
      values_(allocate_half(device, n_layer, n_slots, n_ctx, n_embd_kv, type, ring_rows_)) {
    if (!ring_rows_.empty() && ring_rows_.size() != n_layer)
        throw std::invalid_argument("KvCache: " + std::to_string(ring_rows_.size()) + " ring lengths for " +
                                    std::to_string(n_layer) + " layers");
    size_t rows = 0;
    for (size_t layer = 0; layer < n_layer; ++layer) {
        layer_offsets_.push_back(rows);
        rows += n_slots * layer_rows(n_ctx, ring_rows_, layer);
    }
}

void check_context(size_t length, size_t n, size_t n_ctx) {
    if (length + n > n_ctx)
        throw ContextOverflow("sequence of " + std::to_string(length) + " tokens plus " + std::to_string(n) +
                              " new ones exceeds the context of " + std::to_string(n_ctx) +
                              " tokens (raise n_ctx, up to what the model was trained for, or start a new sequence)");
}

size_t KvCache::reserve(size_t slot, size_t n) const {
    const size_t length = lengths_.at(slot);
    check_context(length, n, n_ctx_);
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
