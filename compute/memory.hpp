#pragma once
// Copies between host memory and the context's device memory: how a model puts its weights and
// token ids on the device and gets its logits back. On the CPU both are memcpy.
#include <cstddef>
#include <cstring>
#include <optional>

#include "compute/context.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer::compute {

// device <- host; returns once `host` may be reused.
inline void upload(Context& ctx, void* device, const void* host, size_t bytes) {
    if (ctx.device() == Device::CPU) {
        if (bytes) std::memcpy(device, host, bytes);
        return;
    }
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::upload(ctx, device, host, bytes);
#endif
    throw_backend_unavailable("upload", ctx.device());
}

// host <- device; returns once `host` holds the data.
inline void download(Context& ctx, void* host, const void* device, size_t bytes) {
    if (ctx.device() == Device::CPU) {
        if (bytes) std::memcpy(host, device, bytes);
        return;
    }
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == Device::CUDA) return cuda::download(ctx, host, device, bytes);
#endif
    throw_backend_unavailable("download", ctx.device());
}

// out[i] = x[i] as double, on the host, with the CPU's widest vectors (the logits a float32 model
// hands back through a float64 interface, once a step: plain SSE2 code was ~8x slower there).
void widen_to_double(const float* x, size_t n, double* out);

struct DeviceMemory {
    size_t free = 0, total = 0;
};
// The device's free and total memory, for a model to check that it fits before it allocates; none
// for the CPU, whose weights stay in the file mapping and whose KV cache is paged in as it fills.
inline std::optional<DeviceMemory> device_memory(Device device) {
#ifdef TWINFER_WITH_CUDA
    if (device == Device::CUDA) {
        const cuda::MemoryInfo info = cuda::memory_info();
        return DeviceMemory{info.free, info.total};
    }
#endif
    (void)device;
    return std::nullopt;
}

}  // namespace twinfer::compute
