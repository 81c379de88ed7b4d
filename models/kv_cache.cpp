#include "models/kv_cache.hpp"

#include <unistd.h>

#include <algorithm>
#include <iomanip>
#include <numeric>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "compute/memory.hpp"
#include "models/inference.hpp"

namespace twinfer {

namespace {

size_t layer_rows(size_t n_ctx, std::span<const size_t> ring_rows, size_t layer) {
    return ring_rows.empty() || ring_rows[layer] == 0 ? n_ctx : 2 * ring_rows[layer];
}

std::string mib(size_t bytes) {
    std::ostringstream text;
    text << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / (1 << 20) << " MiB";
    return text.str();
}

// The keys' or the values' half of a cache: address space for every table. Running out of it is an
// error saying what the whole cache would hold, not a bare std::bad_alloc.
compute::ReservedMemory reserve_half(compute::Device device, size_t pages, size_t page_bytes, size_t n_layer, size_t n_slots,
                                     size_t n_ctx) {
    try {
        return compute::ReservedMemory(device, pages * page_bytes);
    } catch (const std::bad_alloc&) {
        throw std::runtime_error("cannot reserve address space for a KV cache of " + std::to_string(n_slots) + " slots of " +
                                 std::to_string(n_ctx) + " tokens over " + std::to_string(n_layer) + " layers (" +
                                 mib(2 * pages * page_bytes) + "); fewer slots or a smaller --ctx-size");
    }
}

// The memory of this machine (CPU) or device (CUDA); 0 when unknown.
size_t device_memory_bytes(compute::Device device) {
    if (const std::optional<compute::DeviceMemory> memory = compute::device_memory(device)) return memory->total;
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

// One sequence at the whole context must fit in the device's memory: an error saying what it
// needs, rather than a sequence that runs out of memory (or a machine that swaps) far into it.
void check_one_sequence_fits(compute::Device device, size_t n_layer, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
                             std::span<const size_t> ring_rows) {
    const size_t needed = KvCache::bytes(n_layer, 1, n_ctx, n_embd_kv, type, ring_rows), memory = device_memory_bytes(device);
    if (!memory || needed <= memory) return;
    std::ostringstream message;
    size_t n_rings = 0;
    for (size_t ring : ring_rows) n_rings += ring != 0;
    message << std::fixed << std::setprecision(1) << "cannot hold the KV cache for a context of " << n_ctx << " tokens: it needs "
            << static_cast<double>(needed) / (1u << 30) << " GiB (" << n_layer << " layers";
    if (n_rings) message << ", " << n_rings << " of them sliding-window rings,";
    message << " x 2 x " << n_ctx << " positions x ";
    if (type == compute::KvType::Q8_0) message << compute::kv_bytes(type, n_embd_kv) << " bytes (" << n_embd_kv << " values as Q8_0)), the ";
    else message << n_embd_kv << " x " << compute::kv_bytes(type, 1) << " bytes), the ";
    message
            << compute::device_name(device) << " has " << static_cast<double>(memory) / (1u << 30)
            << " GiB; a smaller --ctx-size shrinks it";
    if (type == compute::KvType::F32) message << ", and so does --cache-type f16 (by half)";
    throw std::runtime_error(message.str());
}

}  // namespace

size_t KvCache::bytes(size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
                      std::span<const size_t> ring_rows) {
    size_t rows = 0;
    for (size_t layer = 0; layer < n_layer; ++layer) rows += layer_rows(n_ctx, ring_rows, layer);
    return 2 * rows * n_slots * compute::kv_bytes(type, n_embd_kv);
}

KvCache::KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv,
                 compute::KvType type, std::vector<size_t> ring_rows, size_t max_backed_bytes)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_(n_embd_kv), type_(type), ring_rows_(std::move(ring_rows)),
      page_bytes_(compute::ReservedMemory::page_bytes(device)), lengths_(n_slots, 0), provisioned_(n_slots, 0),
      backed_pages_(n_layer * n_slots, 0),
      max_backed_bytes_(max_backed_bytes) {
    if (!ring_rows_.empty() && ring_rows_.size() != n_layer)
        throw std::invalid_argument("KvCache: " + std::to_string(ring_rows_.size()) + " ring lengths for " +
                                    std::to_string(n_layer) + " layers");
    if (type == compute::KvType::Q8_0 && device != compute::Device::CPU)
        throw std::invalid_argument("a q8_0 KV cache runs on the CPU only (--cache-type f16 or f32 on " +
                                    std::string(compute::device_name(device)) + ")");
    if (type == compute::KvType::Q8_0 && n_embd_kv % compute::kv_q8_0_block)
        throw std::invalid_argument("a q8_0 KV cache needs rows of whole blocks of 32 values, not " + std::to_string(n_embd_kv));
    check_one_sequence_fits(device, n_layer, n_ctx, n_embd_kv, type, ring_rows_);
    size_t pages = 0;
    for (size_t layer = 0; layer < n_layer; ++layer) {
        page_offsets_.push_back(pages);
        pages += n_slots * table_pages(layer);
    }
    keys_ = reserve_half(device, pages, page_bytes_, n_layer, n_slots, n_ctx);
    values_ = reserve_half(device, pages, page_bytes_, n_layer, n_slots, n_ctx);
}

size_t KvCache::table_pages(size_t layer) const {
    // Whole pages of whole units (a Q8_0 block's 34 bytes): a multiple of both.
    const size_t unit = std::lcm(page_bytes_, compute::kv_unit_bytes(type_));
    const size_t table_bytes = (compute::kv_bytes(type_, rows(layer) * n_embd_kv_) + unit - 1) / unit * unit;
    return table_bytes / page_bytes_;
}

size_t KvCache::pages_for(size_t layer, size_t length) const {
    if (length == 0) return 0;
    if (ring_rows(layer)) return table_pages(layer);   // a ring's rows are all written from its first positions on
    const size_t used_bytes = compute::kv_bytes(type_, std::min(length, n_ctx_) * n_embd_kv_);
    return (used_bytes + page_bytes_ - 1) / page_bytes_;
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

size_t KvCache::missing_pages(size_t slot, size_t end) const {
    size_t missing = 0;
    for (size_t layer = 0; layer < n_layer_; ++layer)
        missing += pages_for(layer, end) - std::min(pages_for(layer, end), backed_pages_[layer * n_slots() + slot]);
    return missing;
}

void KvCache::back(size_t slot, size_t end) {
    for (size_t layer = 0; layer < n_layer_; ++layer) {
        size_t& backed = backed_pages_[layer * n_slots() + slot];
        const size_t need = pages_for(layer, end);
        if (need <= backed) continue;
        const size_t first = first_page(layer, slot) + backed;
        try {
            keys_.back(first, need - backed);
            values_.back(first, need - backed);
        } catch (...) {
            keys_.release(first, need - backed);   // the part of this layer's pages backed before it failed
            values_.release(first, need - backed);
            throw;
        }
        backed_pages_total_ += need - backed;
        backed = need;
    }
}

void KvCache::provision(size_t slot, size_t n) {
    const size_t end = reserve(slot, n) + n;
    provisioned_[slot] = std::max(provisioned_[slot], end);   // another slot's trim below must keep these
    if (missing_pages(slot, end) == 0) return;
    const auto over_bound = [&] {
        return max_backed_bytes_ && (backed_pages_total_ + missing_pages(slot, end)) * 2 * page_bytes_ > max_backed_bytes_;
    };
    if (over_bound()) trim();
    if (over_bound())
        throw compute::OutOfMemory("the KV cache's memory is used up: " + std::to_string(n) + " more positions of a sequence of " +
                                   std::to_string(lengths_[slot]) + " need " + mib(missing_pages(slot, end) * 2 * page_bytes_) +
                                   ", " + mib(backed_bytes()) + " of its " + mib(max_backed_bytes_) + " are in use");
    try {
        back(slot, end);
    } catch (const compute::OutOfMemory&) {
        trim();   // the device ran out: first what the slots hold beyond their lengths
        back(slot, end);
    }
}

void KvCache::trim() {
    for (size_t slot = 0; slot < n_slots(); ++slot) release_beyond(slot, std::max(lengths_[slot], provisioned_[slot]));
}

void KvCache::commit(size_t slot, size_t n) {
    reserve(slot, n);
    lengths_.at(slot) += n;
    provisioned_[slot] = 0;
}

void KvCache::truncate(size_t slot, size_t n) {
    if (n > lengths_.at(slot))
        throw std::out_of_range("KvCache::truncate: " + std::to_string(n) + " positions asked, slot " + std::to_string(slot) +
                                " holds " + std::to_string(lengths_.at(slot)));
    lengths_.at(slot) = n;
    provisioned_[slot] = 0;
}

void KvCache::release_beyond(size_t slot, size_t length) {
    for (size_t layer = 0; layer < n_layer_; ++layer) {
        size_t& backed = backed_pages_[layer * n_slots() + slot];
        const size_t keep = pages_for(layer, length);
        if (backed <= keep) continue;
        keys_.release(first_page(layer, slot) + keep, backed - keep);
        values_.release(first_page(layer, slot) + keep, backed - keep);
        backed_pages_total_ -= backed - keep;
        backed = keep;
    }
}

}  // namespace twinfer
