#pragma once
// Device memory owned RAII-style: the models allocate activations and the KV cache through it, so
// the same code holds CPU memory now and CUDA memory once that backend is built.
#include <cstddef>
#include <string_view>

namespace twinfer::compute {

enum class Device { CPU, CUDA };
std::string_view device_name(Device device);

class Buffer {
public:
    Buffer() = default;
    // `bytes` of uninitialized memory, 64-byte aligned (CPU). Throws BackendUnavailable for a
    // device this build lacks, std::bad_alloc when memory runs out.
    Buffer(Device device, size_t bytes);
    Buffer(Buffer&& other) noexcept;
    Buffer& operator=(Buffer&& other) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer();

    Device device() const { return device_; }
    size_t bytes() const { return bytes_; }
    void* data() { return data_; }
    const void* data() const { return data_; }
    template <class T> T* as() { return static_cast<T*>(data_); }
    template <class T> const T* as() const { return static_cast<const T*>(data_); }

private:
    void release() noexcept;
    Device device_ = Device::CPU;
    size_t bytes_ = 0;
    void* data_ = nullptr;
};

}  // namespace twinfer::compute
