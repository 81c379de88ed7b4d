#pragma once
// compute/: the kernels the models call, one entry point per op family (matmul.hpp, norm.hpp,
// rope.hpp, attention.hpp, elementwise.hpp). An entry point takes raw pointers, sizes and a
// Context, and dispatches on the context's device: compute/cpu/ implements every op; a device
// whose backend is not built throws BackendUnavailable naming the op. compute/ knows block layouts
// (format/) and nothing of models.
#include <cstddef>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "compute/buffer.hpp"

namespace twinfer::compute {

// Which CPU instruction set the kernels use: the best this CPU has, unless a test forces a lower
// one to check that path. AVX512 means AVX-512 F/BW/VL with VNNI (integer dot products).
enum class CpuIsa { Generic, AVX2, AVX512 };
std::string_view isa_name(CpuIsa isa);
CpuIsa best_cpu_isa();
bool cpu_supports(CpuIsa isa);

namespace cpu { class ThreadPool; }
namespace cuda { struct DeviceContext; }

struct ContextOptions {
    Device device = Device::CPU;
    int n_threads = 0;                // CPU threads, the caller included; 0: one per core
    std::optional<CpuIsa> cpu_isa;    // default: best_cpu_isa()
};

// Where and how ops run: the device, the CPU thread pool and ISA, scratch memory, and (for the
// CUDA backend) the stream. One per model; not thread-safe (one forward pass at a time).
class Context {
public:
    explicit Context(const ContextOptions& options = {});
    Context(Context&&) noexcept;
    Context& operator=(Context&&) noexcept;
    ~Context();

    Device device() const { return device_; }
    int n_threads() const { return n_threads_; }
    CpuIsa cpu_isa() const { return cpu_isa_; }
    cpu::ThreadPool& pool() { return *pool_; }

    // Scratch memory, 64-byte aligned, grown on demand, valid until the next request for the same
    // kind: one shared region (e.g. packed activations every thread reads) and one per thread.
    std::byte* shared_scratch(size_t bytes);
    std::byte* thread_scratch(int thread, size_t bytes);

    void* stream = nullptr;  // the CUDA stream (cudaStream_t) the CUDA backend runs on; null on the CPU
    std::shared_ptr<cuda::DeviceContext> cuda_state;  // that stream, the cuBLAS handle and GPU scratch

private:
    Device device_ = Device::CPU;
    int n_threads_ = 1;
    CpuIsa cpu_isa_ = CpuIsa::Generic;
    std::unique_ptr<cpu::ThreadPool> pool_;
    Buffer shared_scratch_;
    std::vector<Buffer> thread_scratch_;
};

// An op asked of a device whose backend this build lacks.
struct BackendUnavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};
[[noreturn]] void throw_backend_unavailable(std::string_view op, Device device);

}  // namespace twinfer::compute
