#pragma once
// Address space reserved up front with memory behind it page by page: the KV cache's pool. A
// cache laid out for every slot at its longest context (models/kv_cache.hpp) costs address space
// only; the pages its sequences' real lengths use are backed, and handed back when they shrink, so
// memory follows the lengths while every layer's rows of a slot stay contiguous and the kernels
// read them as plain arrays. On the CPU a page is the operating system's (backed when first
// touched, handed back with madvise); on CUDA it is the driver's allocation granularity (2 MiB on
// current GPUs), mapped and unmapped through the driver's virtual memory calls (cuMemMap), as
// vAttention does for the same purpose.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "compute/buffer.hpp"

namespace twinfer::compute {

class ReservedMemory {
public:
    ReservedMemory() = default;
    // Reserves `bytes` (rounded up to whole pages) of address space; nothing is backed yet.
    // Throws BackendUnavailable for a device this build lacks, OutOfMemory if no address space is left.
    ReservedMemory(Device device, size_t bytes);
    ReservedMemory(ReservedMemory&& other) noexcept;
    ReservedMemory& operator=(ReservedMemory&& other) noexcept;
    ReservedMemory(const ReservedMemory&) = delete;
    ReservedMemory& operator=(const ReservedMemory&) = delete;
    ~ReservedMemory();

    // The size of a page on `device` (a power of two).
    static size_t page_bytes(Device device);

    void* data() { return data_; }
    const void* data() const { return data_; }

    // Backs pages [first, first + n) with memory (their contents undefined; a page backed already
    // stays as it is). Throws OutOfMemory when the device has none left (the pages backed before
    // stay backed), std::out_of_range past the last page.
    void back(size_t first, size_t n);
    // Hands the memory of pages [first, first + n) back (those not backed: nothing); their contents
    // are lost. On CUDA it waits for the device first: queued work may still read them.
    void release(size_t first, size_t n) noexcept;

private:
    void free_all() noexcept;
    Device device_ = Device::CPU;
    size_t bytes_ = 0, page_ = 0, n_pages_ = 0;
    void* data_ = nullptr;
    int ordinal_ = 0;                 // CUDA: the device the range's pages are on
    std::vector<bool> backed_;
    std::vector<uint64_t> handles_;   // CUDA: each backed page's physical allocation
};

}  // namespace twinfer::compute
