#include "compute/buffer.hpp"

#include <cstdlib>
#include <new>
#include <string>
#include <utility>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer::compute {

std::string_view device_name(Device device) {
    switch (device) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
    }
    return "?";
}

Buffer::Buffer(Device device, size_t bytes) : device_(device), bytes_(bytes) {
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) {
        data_ = cuda::allocate(bytes);
        return;
    }
#endif
    if (device != Device::CPU) throw_backend_unavailable("allocating a buffer", device);
    if (bytes == 0) return;
    data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!data_) throw OutOfMemory("out of host memory: asked for " + std::to_string(bytes) + " bytes");
}

Buffer::Buffer(Buffer&& other) noexcept
    : device_(other.device_), bytes_(std::exchange(other.bytes_, 0)), data_(std::exchange(other.data_, nullptr)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
    if (this != &other) {
        release();
        device_ = other.device_;
        bytes_ = std::exchange(other.bytes_, 0);
        data_ = std::exchange(other.data_, nullptr);
    }
    return *this;
}

Buffer::~Buffer() { release(); }

void Buffer::release() noexcept {
#ifdef TWINFER_WITH_CUDA
    if (device_ == Device::CUDA) cuda::release(data_);
    else
#endif
    std::free(data_);
    data_ = nullptr;
    bytes_ = 0;
}

}  // namespace twinfer::compute
