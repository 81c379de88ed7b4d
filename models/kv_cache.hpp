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
//
// Memory follows the slots' lengths, not n_slots x n_ctx: the layout above is address space
// (compute::ReservedMemory), each (layer, slot) table starting on a page, and only the pages the
// positions in use need are backed by memory, by provision before a pass writes them. truncate
// and clear keep a slot's pages for its next sequence (backing a GPU page again costs a driver
// call and a wait for the device: a benchmark's prompt after clear would pay it); trim hands back
// every page beyond the slots' lengths, and provision trims by itself before it would exceed the
// bound or when the device has no memory left. So the memory is at most what each slot held at
// its longest since the last trim. A ring layer's table is backed whole while its slot holds
// anything. max_backed_bytes bounds the memory behind the whole cache (the pool every slot draws
// from); without it the device's memory is the bound. On a GPU a page is 2 MiB, so a table's
// memory grows in steps of 2 MiB / (n_embd_kv x element bytes) positions (128 for Llama-2-7B's
// float32 rows, 2,730 for SmolLM2's).
#include <cstddef>
#include <span>
#include <vector>

#include "compute/cache_rows.hpp"
#include "compute/reserved_memory.hpp"

namespace twinfer {

// Throws ContextOverflow when n more tokens after `length` would not fit in n_ctx.
void check_context(size_t length, size_t n, size_t n_ctx);

class KvCache {
public:
    // ring_rows: per layer, 0 for a full layer or the ring's length (empty: every layer full).
    // max_backed_bytes: the most memory behind the cache at once (0: as much as the device has).
    KvCache(compute::Device device, size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
            std::vector<size_t> ring_rows = {}, size_t max_backed_bytes = 0);
    // The bytes of such a cache's rows (keys and values) when every slot is full.
    static size_t bytes(size_t n_layer, size_t n_slots, size_t n_ctx, size_t n_embd_kv, compute::KvType type,
                        std::span<const size_t> ring_rows = {});
    size_t bytes() const { return bytes(n_layer_, n_slots(), n_ctx_, n_embd_kv_, type_, ring_rows_); }
    // The memory behind the cache now (keys and values, whole pages), and its bound (0: none).
    size_t backed_bytes() const { return backed_pages_total_ * 2 * page_bytes_; }
    size_t max_backed_bytes() const { return max_backed_bytes_; }

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
    // Elements between two slots' tables of one layer (keys(layer, s + 1) = keys(layer, s).plus(this)):
    // a table's rows rounded up to whole pages.
    size_t slot_stride(size_t layer) const { return compute::kv_values(type_, table_pages(layer) * page_bytes_); }
    size_t ring_rows(size_t layer) const { return ring_rows_.empty() ? 0 : ring_rows_[layer]; }   // 0: full
    const std::vector<size_t>& ring_rows() const { return ring_rows_; }

    // The first position for n more tokens of `slot` (= its length). Throws ContextOverflow, cache
    // unchanged, if they would not fit. The caller writes their rows, then commits.
    size_t reserve(size_t slot, size_t n) const;
    // Backs the rows n more tokens of `slot` will write with memory (after reserve, before the
    // pass), trimming first where the bound or the device would not hold them. Throws
    // compute::OutOfMemory, the slot's length as it was, when even then there is no more.
    void provision(size_t slot, size_t n);
    void commit(size_t slot, size_t n);          // length += n (after reserve)
    void clear(size_t slot) { truncate(slot, 0); }
    // Forgets the positions of `slot` from n on (the rows before n stay valid; their memory stays
    // until a trim). Throws std::out_of_range if n is beyond its length.
    void truncate(size_t slot, size_t n);
    // Hands back the memory of every page no slot's positions use (nor the positions provisioned
    // for a pass not yet committed).
    void trim();

private:
    size_t rows(size_t layer) const { return ring_rows(layer) ? 2 * ring_rows(layer) : n_ctx_; }
    size_t table_pages(size_t layer) const;
    // The pages of a (layer, slot) table that positions [0, length) use.
    size_t pages_for(size_t layer, size_t length) const;
    size_t first_page(size_t layer, size_t slot) const { return page_offsets_[layer] + slot * table_pages(layer); }
    size_t offset(size_t layer, size_t slot) const { return compute::kv_values(type_, first_page(layer, slot) * page_bytes_); }
    // Hands back the pages of `slot`'s tables beyond those positions [0, length) use.
    void release_beyond(size_t slot, size_t length);
    // The pages `slot` lacks for positions [0, end), over every layer; backs them.
    size_t missing_pages(size_t slot, size_t end) const;
    void back(size_t slot, size_t end);

    size_t n_layer_, n_ctx_, n_embd_kv_;
    compute::KvType type_;
    std::vector<size_t> ring_rows_;
    size_t page_bytes_;
    std::vector<size_t> page_offsets_;    // pages before each layer's first table
    std::vector<size_t> lengths_;
    std::vector<size_t> provisioned_;     // the end of what provision backed for a pass, until commit or truncate
    std::vector<size_t> backed_pages_;    // [layer][slot]: the leading pages of its tables backed (keys and values alike)
    size_t backed_pages_total_ = 0;       // their sum
    size_t max_backed_bytes_;
    compute::ReservedMemory keys_, values_;
};

}  // namespace twinfer
