// Device memory, copies, the per-Context device state and graphs.
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>

#include "compute/cuda/device_context.cuh"

namespace twinfer::compute::cuda {
namespace {

std::string gib(size_t bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / (1024.0 * 1024.0 * 1024.0));
    return text;
}

std::string version_text(int version) { return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10); }

// Why there is no usable device, in words a user can act on.
std::string no_device_reason(cudaError_t error) {
    if (error == cudaErrorInsufficientDriver) {
        int driver = 0;
        cudaDriverGetVersion(&driver);
        // No driver at all reports as "insufficient" too, with version 0.
        if (driver == 0) return "no CUDA GPU found (no NVIDIA driver is installed)";
        return "the NVIDIA driver is too old for this build (it supports CUDA " + version_text(driver) +
               ", twinfer was built with CUDA " + version_text(CUDART_VERSION) + "): update the driver";
    }
    if (error == cudaErrorNoDevice || error == cudaSuccess) return "no CUDA GPU found";
    return std::string("no usable CUDA GPU: ") + cudaGetErrorString(error);
}

void require_device() {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess || count == 0) throw Error(no_device_reason(error));
}

}  // namespace

void throw_error(const char* call, cudaError_t error, const char* file, int line) {
    if (error == cudaErrorMemoryAllocation) {
        cudaGetLastError();   // not sticky, but cleared so that the next check reports its own error
        throw OutOfMemory(std::string(file) + ":" + std::to_string(line) + ": " + call + ": out of memory (" +
                          cudaGetErrorString(error) + ")");
    }
    throw Error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " + cudaGetErrorName(error) + " (" +
                cudaGetErrorString(error) + ")");
}

void throw_error(const char* call, cublasStatus_t status, const char* file, int line) {
    if (status == CUBLAS_STATUS_ALLOC_FAILED)
        throw OutOfMemory(std::string(file) + ":" + std::to_string(line) + ": " + call + ": cuBLAS ran out of GPU memory (" +
                          cublasGetStatusString(status) + ")");
    throw Error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " + cublasGetStatusName(status) + " (" +
                cublasGetStatusString(status) + ")");
}

int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky error so later calls report their own
        return 0;
    }
    return count;
}

std::string describe_device() {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess || count == 0) return no_device_reason(error);
    cudaDeviceProp prop{};
    TWINFER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int driver = 0;
    cudaDriverGetVersion(&driver);
    return std::string(prop.name) + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " + gib(prop.totalGlobalMem) +
           ", driver for CUDA " + version_text(driver) + ", runtime " + version_text(CUDART_VERSION);
}

void* allocate(size_t bytes) {
    require_device();
    void* data = nullptr;
    if (bytes == 0) return nullptr;
    const cudaError_t error = cudaMalloc(&data, bytes);
    if (error == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free = 0, total = 0;
        cudaMemGetInfo(&free, &total);
        throw OutOfMemory("out of GPU memory: asked for " + gib(bytes) + ", " + gib(free) + " free of " + gib(total));
    }
    TWINFER_CUDA_CHECK(error);
    return data;
}

MemoryInfo memory_info() {
    require_device();
    MemoryInfo info;
    TWINFER_CUDA_CHECK(cudaMemGetInfo(&info.free, &info.total));
    return info;
}

void release(void* data) noexcept {
    if (data) cudaFree(data);
}

void upload(Context& ctx, void* device, const void* host, size_t bytes) {
    if (bytes == 0) return;   // empty optional tensors: null pointers
    TWINFER_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream(ctx)));
    TWINFER_CUDA_CHECK(cudaStreamSynchronize(stream(ctx)));  // pageable memory: `host` is free to change after this
}

void download(Context& ctx, void* host, const void* device, size_t bytes) {
    if (bytes == 0) return;
    TWINFER_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream(ctx)));
    TWINFER_CUDA_CHECK(cudaStreamSynchronize(stream(ctx)));
}

void fill_zero(Context& ctx, void* device, size_t bytes) {
    TWINFER_CUDA_CHECK(cudaMemsetAsync(device, 0, bytes, stream(ctx)));
}

void synchronize(Context& ctx) { TWINFER_CUDA_CHECK(cudaStreamSynchronize(stream(ctx))); }

PinnedHostMemory::PinnedHostMemory(size_t bytes) : bytes_(bytes) { TWINFER_CUDA_CHECK(cudaMallocHost(&data_, bytes)); }
PinnedHostMemory::PinnedHostMemory(PinnedHostMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
PinnedHostMemory& PinnedHostMemory::operator=(PinnedHostMemory&& other) noexcept {
    if (this != &other) {
        if (data_) cudaFreeHost(data_);
        data_ = std::exchange(other.data_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
}
PinnedHostMemory::~PinnedHostMemory() {
    if (data_) cudaFreeHost(data_);
}

void copy_async(Context& ctx, void* destination, const void* source, size_t bytes) {
    TWINFER_CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, stream(ctx)));
}

void zero_async(Context& ctx, void* destination, size_t bytes) {
    TWINFER_CUDA_CHECK(cudaMemsetAsync(destination, 0, bytes, stream(ctx)));
}

void* Scratch::get(size_t bytes, cudaStream_t stream) {
    if (bytes <= bytes_) return data_;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    TWINFER_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
        throw Error("CUDA scratch memory must grow to " + std::to_string(bytes) +
                    " bytes while a graph is captured: run the same step once before capturing it");
    TWINFER_CUDA_CHECK(cudaStreamSynchronize(stream));  // the old block may still be in use
    release(std::exchange(data_, nullptr));
    bytes_ = 0;
    data_ = allocate(bytes);
    bytes_ = bytes;
    return data_;
}

void* Scratch::get_zeroed(size_t bytes, cudaStream_t stream) {
    const bool grows = bytes > bytes_;
    void* data = get(bytes, stream);
    if (grows) {
        TWINFER_CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, stream));
        TWINFER_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    return data;
}

void allow_shared_memory(const void* kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return;
    int device = 0;
    TWINFER_CUDA_CHECK(cudaGetDevice(&device));
    static std::mutex mutex;
    static std::set<std::pair<const void*, int>> raised;
    std::lock_guard lock(mutex);
    if (raised.count({kernel, device})) return;
    TWINFER_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    raised.insert({kernel, device});
}

DeviceContext::DeviceContext() {
    require_device();
    cudaDeviceProp prop{};
    TWINFER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    n_sms = prop.multiProcessorCount;
    // TWINFER_CUDA_PDL=0 launches every kernel the ordinary way (to measure what the overlap buys).
    const char* pdl = std::getenv("TWINFER_CUDA_PDL");
    dependent_launch = prop.major >= 9 && !(pdl && std::string_view(pdl) == "0");
    TWINFER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    TWINFER_CUDA_CHECK(cublasCreate(&cublas));
    TWINFER_CUDA_CHECK(cublasSetStream(cublas, stream));
}

DeviceContext::~DeviceContext() {
    if (stream) cudaStreamSynchronize(stream);
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
}

std::shared_ptr<DeviceContext> create_device_context() { return std::make_shared<DeviceContext>(); }
void* stream_of(DeviceContext& device) { return device.stream; }

std::vector<const void*> scratch_addresses(Context& ctx) {
    const DeviceContext& device = device_of(ctx);
    std::vector<const void*> addresses = {device.weights_half.address(), device.tokens_half.address(),
                                          device.attention_parts.address(), device.attention_finished.address(),
                                          device.activations_int8.address(), device.prepared_int8.address(),
                                          device.norm_int8.address(), device.norm_partials.address(),
                                          device.top_k_keys.address(), device.attention_operands.address()};
    for (const RopeFrequencies& table : device.rope_frequencies) addresses.push_back(table.values.address());
    return addresses;
}

DeviceContext& device_of(Context& ctx) {
    if (ctx.device() != Device::CUDA || !ctx.cuda_state)
        throw Error("a CUDA op was given a " + std::string(device_name(ctx.device())) + " context");
    return *ctx.cuda_state;
}

Graph::Graph(Graph&& other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}

Graph& Graph::operator=(Graph&& other) noexcept {
    if (this != &other) {
        reset();
        graph_ = std::exchange(other.graph_, nullptr);
        exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
}

Graph::~Graph() { reset(); }

void Graph::reset() noexcept {
    if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
    if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
    exec_ = graph_ = nullptr;
}

void Graph::begin_capture(Context& ctx) {
    // Relaxed: other threads' unrelated CUDA calls (say, a second model's allocations) stay legal.
    TWINFER_CUDA_CHECK(cudaStreamBeginCapture(stream(ctx), cudaStreamCaptureModeRelaxed));
}

void Graph::end_capture(Context& ctx) {
    cudaGraph_t graph = nullptr;
    TWINFER_CUDA_CHECK(cudaStreamEndCapture(stream(ctx), &graph));
    // A recapture of the same ops with new arguments (the next position) updates the executable
    // graph in place, much cheaper than instantiating it again.
    if (exec_) {
        cudaGraphExecUpdateResultInfo info{};
        if (cudaGraphExecUpdate(static_cast<cudaGraphExec_t>(exec_), graph, &info) == cudaSuccess) {
            cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
            graph_ = graph;
            return;
        }
        cudaGetLastError();  // a different topology: instantiate afresh
    }
    reset();
    graph_ = graph;
    cudaGraphExec_t exec = nullptr;
    TWINFER_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    exec_ = exec;
}

void Graph::cancel_capture(Context& ctx) noexcept {
    if (!ctx.cuda_state) return;
    cudaGraph_t partial = nullptr;
    if (cudaStreamEndCapture(ctx.cuda_state->stream, &partial) == cudaSuccess && partial) cudaGraphDestroy(partial);
    cudaGetLastError();  // an invalidated capture reports here; the stream is usable again either way
}

void Graph::replay(Context& ctx) {
    if (!exec_) throw Error("replaying a CUDA graph that was never captured");
    TWINFER_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream(ctx)));
}

}  // namespace twinfer::compute::cuda
