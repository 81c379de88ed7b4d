#pragma once
// The CUDA backend's host side, in plain C++ (no CUDA headers), for the code outside compute/cuda:
// device memory, copies, the per-Context stream and handles, and graphs of a captured forward pass.
// Every pointer an op receives on a CUDA Context is device memory (weights, activations, token
// ids), except the parameter structs themselves.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace twinfer::compute {
class Context;
}

namespace twinfer::compute::cuda {

// A failed CUDA or cuBLAS call: what was called, the error, and where (file:line).
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Number of usable CUDA devices: 0 when there is no GPU or no driver (never throws).
int device_count();
// A line describing device 0 ("NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB, CUDA 13.0"), or why none.
std::string describe_device();

// Device memory. allocate throws compute::OutOfMemory saying how much was asked and how much is
// free, or Error when there is no GPU or the driver is too old; release accepts null.
void* allocate(size_t bytes);
void release(void* data) noexcept;
// Free and total bytes of device 0's memory; throws Error when there is no usable GPU.
struct MemoryInfo {
    size_t free = 0, total = 0;
};
MemoryInfo memory_info();

// Virtual memory (compute::ReservedMemory): address space without memory, and pages of the
// driver's allocation granularity mapped into it and out again. The driver's calls are looked up
// at run time (cudaGetDriverEntryPointByVersion), so the binary needs no libcuda to start on a
// machine without a GPU. reserve_address_space and map_page throw compute::OutOfMemory when the
// device has no more; the others never throw.
// The pages of the current device; a range belongs to the device current when it was reserved,
// and map_page and wait_for_device name it (a tensor-parallel model's ranks are on several).
int current_device();
size_t page_bytes();
void* reserve_address_space(size_t bytes);
void free_address_space(void* base, size_t bytes) noexcept;
// Backs the page of `bytes` (page_bytes()) at `at` (page-aligned, inside a reserved range) with
// new memory, readable and writable by the current device; returns its handle for unmap_page.
uint64_t map_page(void* at, size_t bytes, int device);
// Unmaps the page at `at` and frees its memory: after wait_for_device, if queued work may read it.
void unmap_page(void* at, size_t bytes, uint64_t handle) noexcept;
void wait_for_device(int device) noexcept;

// Copies on the context's stream. upload returns once `host` may be reused; download returns once
// `host` holds the data.
void upload(Context& ctx, void* device, const void* host, size_t bytes);
void download(Context& ctx, void* host, const void* device, size_t bytes);
void fill_zero(Context& ctx, void* device, size_t bytes);
void synchronize(Context& ctx);

// Page-locked host memory for what a decode step exchanges with the device (its token and position
// in; the sampled token or the logits out). A copy to or from it (copy_async) is queued without the
// host waiting, takes no staging copy (pageable memory does: ~47 us for SmolLM2's 49,152 logits),
// and a graph captured with such a copy reads or writes this memory each time it replays. The host
// must not touch it while a queued copy may run.
class PinnedHostMemory {
public:
    PinnedHostMemory() = default;
    explicit PinnedHostMemory(size_t bytes);   // throws Error
    PinnedHostMemory(PinnedHostMemory&& other) noexcept;
    PinnedHostMemory& operator=(PinnedHostMemory&& other) noexcept;
    PinnedHostMemory(const PinnedHostMemory&) = delete;
    PinnedHostMemory& operator=(const PinnedHostMemory&) = delete;
    ~PinnedHostMemory();
    void* data() { return data_; }
    template <class T> T* as() { return static_cast<T*>(data_); }
    size_t bytes() const { return bytes_; }

private:
    void* data_ = nullptr;
    size_t bytes_ = 0;
};
// Queued on the context's stream, returning at once: between device memory and PinnedHostMemory.
void copy_async(Context& ctx, void* destination, const void* source, size_t bytes);
// bytes zero bytes at destination (device memory), queued on ctx's stream.
void zero_async(Context& ctx, void* destination, size_t bytes);

// The stream, cuBLAS handle and scratch memory of one Context (defined in device_context.cuh).
struct DeviceContext;
std::shared_ptr<DeviceContext> create_device_context();
void* stream_of(DeviceContext& device);
// Where the context's scratch memory is now. A graph captured earlier bakes in the addresses it
// saw; when these differ (a larger call grew a scratch region, freeing the old one) it must be
// captured again.
std::vector<const void*> scratch_addresses(Context& ctx);

// A forward pass recorded and replayed with one launch: small models spend more time launching
// kernels than running them. Capture records the ops `ctx` runs between begin and end (nothing
// executes); replay runs them with the pointers and sizes captured. Capturing the same sequence of
// ops again with other arguments (the next token's position) updates the graph in place.
class Graph {
public:
    Graph() = default;
    Graph(Graph&& other) noexcept;
    Graph& operator=(Graph&& other) noexcept;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    ~Graph();

    void begin_capture(Context& ctx);
    void end_capture(Context& ctx);
    // Ends a capture that failed part-way (an op threw), dropping what it recorded, so that the
    // stream runs ops again; the graph captured before, if any, is kept.
    void cancel_capture(Context& ctx) noexcept;
    void replay(Context& ctx);
    bool captured() const { return exec_ != nullptr; }

private:
    void reset() noexcept;
    void* graph_ = nullptr;   // cudaGraph_t
    void* exec_ = nullptr;    // cudaGraphExec_t
};

}  // namespace twinfer::compute::cuda
