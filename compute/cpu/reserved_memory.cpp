#include "compute/reserved_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer::compute {

size_t ReservedMemory::page_bytes(Device device) {
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) return cuda::page_bytes();
#endif
    if (device != Device::CPU) throw_backend_unavailable("reserving memory", device);
    return static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// The CPU's range is private anonymous memory without swap reserved for it (MAP_NORESERVE): the
// kernel backs a page when it is first written, so back() has nothing to do but keep count.
ReservedMemory::ReservedMemory(Device device, size_t bytes) : device_(device), page_(page_bytes(device)) {
    n_pages_ = (bytes + page_ - 1) / page_;
    bytes_ = n_pages_ * page_;
    backed_.assign(n_pages_, false);
    if (bytes_ == 0) return;
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) {
        ordinal_ = cuda::current_device();
        data_ = cuda::reserve_address_space(bytes_);
        handles_.assign(n_pages_, 0);
        return;
    }
#endif
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw OutOfMemory("cannot reserve " + std::to_string(bytes_) + " bytes of address space");
    data_ = p;
}

ReservedMemory::ReservedMemory(ReservedMemory&& other) noexcept
    : device_(other.device_), bytes_(std::exchange(other.bytes_, 0)), page_(other.page_),
      n_pages_(std::exchange(other.n_pages_, 0)), data_(std::exchange(other.data_, nullptr)), ordinal_(other.ordinal_),
      backed_(std::move(other.backed_)), handles_(std::move(other.handles_)) {}

ReservedMemory& ReservedMemory::operator=(ReservedMemory&& other) noexcept {
    if (this != &other) {
        free_all();
        device_ = other.device_;
        bytes_ = std::exchange(other.bytes_, 0);
        page_ = other.page_;
        n_pages_ = std::exchange(other.n_pages_, 0);
        data_ = std::exchange(other.data_, nullptr);
        ordinal_ = other.ordinal_;
        backed_ = std::move(other.backed_);
        handles_ = std::move(other.handles_);
    }
    return *this;
}

ReservedMemory::~ReservedMemory() { free_all(); }

void ReservedMemory::back(size_t first, size_t n) {
    if (first > n_pages_ || n > n_pages_ - first)
        throw std::out_of_range("ReservedMemory::back: pages " + std::to_string(first) + ".." + std::to_string(first + n) +
                                " of " + std::to_string(n_pages_));
    for (size_t page = first; page < first + n; ++page) {
        if (backed_[page]) continue;
#ifdef TWINFER_WITH_CUDA
        if (device_ == Device::CUDA) handles_[page] = cuda::map_page(static_cast<char*>(data_) + page * page_, page_, ordinal_);
#endif
        backed_[page] = true;
    }
}

void ReservedMemory::release(size_t first, size_t n) noexcept {
    const size_t end = std::min(n_pages_, first + n);
    if (first >= end) return;
#ifdef TWINFER_WITH_CUDA
    if (device_ == Device::CUDA) {
        cuda::wait_for_device(ordinal_);
        for (size_t page = first; page < end; ++page)
            if (backed_[page]) cuda::unmap_page(static_cast<char*>(data_) + page * page_, page_, std::exchange(handles_[page], 0));
        std::fill(backed_.begin() + first, backed_.begin() + end, false);
        return;
    }
#endif
    // The next read of these pages sees zeros, the next write a fresh page.
    madvise(static_cast<char*>(data_) + first * page_, (end - first) * page_, MADV_DONTNEED);
    std::fill(backed_.begin() + first, backed_.begin() + end, false);
}

void ReservedMemory::free_all() noexcept {
    if (!data_) return;
#ifdef TWINFER_WITH_CUDA
    if (device_ == Device::CUDA) {
        release(0, n_pages_);
        cuda::free_address_space(data_, bytes_);
        data_ = nullptr;
        return;
    }
#endif
    munmap(data_, bytes_);
    data_ = nullptr;
}

}  // namespace twinfer::compute
