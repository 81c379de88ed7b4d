#pragma once
// Device memory owned RAII-style: the models allocate activations and the KV cache through it, so
// the same code holds CPU memory now and CUDA memory once that backend is built.
#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <string_view>

namespace twinfer::compute {

enum class Device { CPU, CUDA };
std::string_view device_name(Device device);

// Memory ran out: host memory (a Buffer, CUDA's pinned memory), GPU memory (cudaMalloc, cuBLAS's
// allocations), or a limit the caller set (F32Options::max_workspace_bytes). It is a std::bad_alloc,
// so that one handler catches it and the standard library's allocation failures alike (the
// server's scheduler retries a step that ran out of memory in smaller parts); what() says what
// was asked and, where known, how much there was.
class OutOfMemory : public std::bad_alloc {
public:
    explicit OutOfMemory(std::string message) : message_(std::make_shared<const std::string>(std::move(message))) {}
    const char* what() const noexcept override { return message_->c_str(); }

private:
    std::shared_ptr<const std::string> message_;   // shared: copying an exception must not throw
};

class Buffer {
public:
    Buffer() = default;
    // `bytes` of uninitialized memory, 64-byte aligned (CPU). Throws BackendUnavailable for a
    // device this build lacks, OutOfMemory when memory runs out.
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
