#include "compute/context.hpp"

#include <cpuid.h>

#include <string>
#include <thread>

#include "compute/cpu/thread_pool.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer::compute {
namespace {

// F16C (CPUID leaf 1, ECX bit 29) read directly: clang before 15 knows no "f16c" for
// __builtin_cpu_supports, and the fuzz build compiles this file with clang 14.
bool cpu_has_f16c() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

void grow(Buffer& buffer, size_t bytes) {
    if (buffer.bytes() < bytes) buffer = Buffer(Device::CPU, round_up(bytes + bytes / 2, 4096));
}

}  // namespace

std::string_view isa_name(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::Generic: return "generic";
    case CpuIsa::AVX2: return "avx2";
    case CpuIsa::AVX512: return "avx512";
    }
    return "?";
}

bool cpu_supports(CpuIsa isa) {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    switch (isa) {
    case CpuIsa::Generic: return true;
    case CpuIsa::AVX2: return avx2;
    case CpuIsa::AVX512:
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return false;
}

CpuIsa best_cpu_isa() {
    if (cpu_supports(CpuIsa::AVX512)) return CpuIsa::AVX512;
    if (cpu_supports(CpuIsa::AVX2)) return CpuIsa::AVX2;
    return CpuIsa::Generic;
}

Context::Context(const ContextOptions& options) : device_(options.device) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (options.n_threads < 0) throw std::invalid_argument("thread count must not be negative, got " + std::to_string(options.n_threads));
    n_threads_ = options.n_threads == 0 ? cores : options.n_threads;
    cpu_isa_ = options.cpu_isa.value_or(best_cpu_isa());
    if (!cpu_supports(cpu_isa_))
        throw std::runtime_error("this CPU lacks the " + std::string(isa_name(cpu_isa_)) + " instructions the kernels were asked to use");
    pool_ = std::make_unique<cpu::ThreadPool>(n_threads_);
    thread_scratch_.resize(n_threads_);
#ifdef TWINFER_WITH_CUDA
    if (device_ == Device::CUDA) {
        cuda_state = cuda::create_device_context();
        stream = cuda::stream_of(*cuda_state);
    }
#endif
}

Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;
Context::~Context() = default;

std::byte* Context::shared_scratch(size_t bytes) {
    grow(shared_scratch_, bytes);
    return shared_scratch_.as<std::byte>();
}

std::byte* Context::thread_scratch(int thread, size_t bytes) {
    Buffer& buffer = thread_scratch_.at(thread);
    grow(buffer, bytes);
    return buffer.as<std::byte>();
}

void throw_backend_unavailable(std::string_view op, Device device) {
    throw BackendUnavailable(std::string(op) + " on " + std::string(device_name(device)) + ": the " +
                             std::string(device_name(device)) + " backend is not built into this twinfer");
}

}  // namespace twinfer::compute
