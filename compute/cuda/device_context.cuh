#pragma once
// Inside the CUDA backend: checked calls, the per-Context device state, and launch helpers.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <utility>

#include "compute/context.hpp"
#include "compute/cuda/runtime.hpp"

namespace twinfer::compute::cuda {

[[noreturn]] void throw_error(const char* call, cudaError_t error, const char* file, int line);
[[noreturn]] void throw_error(const char* call, cublasStatus_t status, const char* file, int line);

}  // namespace twinfer::compute::cuda

// Checks a CUDA runtime or cuBLAS call; throws cuda::Error naming the call, the error and file:line
// (compute::OutOfMemory for cudaErrorMemoryAllocation and CUBLAS_STATUS_ALLOC_FAILED).
#define TWINFER_CUDA_CHECK(call)                                                           \
    do {                                                                                   \
        auto twinfer_status_ = (call);                                                     \
        if (twinfer_status_ != decltype(twinfer_status_){})                                \
            ::twinfer::compute::cuda::throw_error(#call, twinfer_status_, __FILE__, __LINE__); \
    } while (0)
// After a kernel launch: a bad configuration shows up here, not at the next call.
#define TWINFER_CUDA_CHECK_LAUNCH() TWINFER_CUDA_CHECK(cudaGetLastError())

namespace twinfer::compute::cuda {

// Device memory grown on demand and kept: scratch an op reuses on every call. Growing while a
// graph is captured would bake a soon-freed pointer into it, so it throws then instead.
class Scratch {
public:
    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { release(data_); }
    void* get(size_t bytes, cudaStream_t stream);
    // The same, filled with zeros when (re)allocated: for counters that their users reset to zero.
    void* get_zeroed(size_t bytes, cudaStream_t stream);
    const void* address() const { return data_; }

private:
    void* data_ = nullptr;
    size_t bytes_ = 0;
};

// One token's activations quantized for the int8 matrix-vector products (matvec_int8.cuh) by the
// kernel that produced them in float (attention): the next int8 product over `source`
// reads these instead of launching a quantization of its own. Valid for the very next launch
// only (launch_after_previous clears it), so nothing can write `source` in between.
struct PreparedInt8 {
    const float* source = nullptr;
    size_t cols = 0;
    const int8_t* qs = nullptr;    // [cols]
    const float2* ds = nullptr;    // [cols / 32]: (d, d * sum(q))
};

// An RMSNorm's input prepared by the product that wrote it (a residual add, int8_matvec_then_norm):
// weight * source quantized per 32 values, and the row's sum of squares in parts, one per block of
// that launch. The next int8 products with this norm on `source` scale their sums by
// 1 / sqrt(sum / cols + eps) instead of launching the norm. Valid for the very next launch only,
// as PreparedInt8.
struct PreparedNorm {
    const float* source = nullptr;
    const float* weight = nullptr;
    size_t cols = 0;
    const int8_t* qs = nullptr;
    const float2* ds = nullptr;
    const float* partial_sums = nullptr;
    int n_parts = 0;
};

// The pairs' frequencies of the last rotation parameters rotation_of saw (rope.cuh).
struct RopeFrequencies {
    Scratch values;   // double [n_rot / 2]
    size_t n_rot = 0;
    double freq_base = 0, position_scale = 0;
    const float* freq_factors = nullptr;
};

struct DeviceContext {
    DeviceContext();
    DeviceContext(const DeviceContext&) = delete;
    DeviceContext& operator=(const DeviceContext&) = delete;
    ~DeviceContext();

    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    int n_sms = 0;
    bool dependent_launch = false;   // programmatic dependent launch (compute capability 9.0 and later)
    Scratch weights_half;     // a weight matrix dequantized for cuBLAS
    Scratch tokens_half;      // activations converted for cuBLAS
    Scratch attention_parts;  // split-KV partial results
    Scratch attention_finished;  // per group of split-KV blocks: how many have written their part
    Scratch attention_kv;     // a prompt's float16 keys and values widened to float32 (gemm_attention)
    Scratch attention_scores; // a prompt's attention scores, [heads, tokens, keys] per chunk of tokens
    Scratch attention_operands;  // their batched products' operands, a pointer per head
    Scratch top_k_keys;       // top_k's candidates between its passes
    Scratch activations_int8; // one token's activations quantized for the int8 matrix-vector product
    Scratch prepared_int8;    // the same, written by the kernel that produced them (PreparedInt8)
    PreparedInt8 prepared;
    Scratch norm_int8;        // PreparedNorm's codes and scales
    Scratch norm_partials;    // PreparedNorm's sums of squares
    PreparedNorm prepared_norm;
    // One table per set of rotation parameters a model uses (Gemma 3's local and global layers
    // rotate with different bases), each made once, before a graph is captured, and kept: a
    // list, so that no table moves while a captured graph reads it.
    std::list<RopeFrequencies> rope_frequencies;
};

DeviceContext& device_of(Context& ctx);
inline cudaStream_t stream(Context& ctx) { return device_of(ctx).stream; }

// Lets `kernel` use up to 200 KiB of dynamic shared memory on the current GPU when `bytes` passes
// the default 48 KiB. The limit is per kernel and GPU (each device loads its own copy of the
// kernel), and the ranks of a tensor-parallel model launch on several GPUs from several threads.
void allow_shared_memory(const void* kernel, size_t bytes);

inline unsigned blocks_for(size_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Programmatic dependent launch (Hopper): a kernel launched by launch_after_previous may be
// launched while the kernel before it on the stream still runs; its blocks get resident and wait
// in grid_dependency_wait() until that kernel has finished and its writes are visible. A decode
// step is hundreds of launches of a few microseconds each; this overlaps each launch and block
// start-up with the previous kernel. Every kernel launched this way must call
// grid_dependency_wait() before it touches memory another kernel writes.
// When: grid_dependency_wait() also lets the next kernel launch (griddepcontrol.launch_dependents)
// as soon as this one has passed its own wait, so at most two kernels are resident at once, the
// second waiting. (Letting it launch before this kernel's wait, at the very start, chained every
// kernel of a step onto the GPU at once and made a 7B model's decoding 10% slower: the waiting
// blocks took SM slots from the bandwidth-bound products. At the end of each kernel, the default,
// decoding was 2-6% slower than with this on the benchmark shapes: BENCHMARKS.md, session 3.)
// Kernels launched the ordinary way (cuBLAS, copies) keep the stream's full ordering.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <class... Params, class... Args>
void launch_after_previous(Context& ctx, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                           Args&&... args) {
    DeviceContext& device = device_of(ctx);
    device.prepared = {};
    device.prepared_norm = {};
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = device.stream;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = device.dependent_launch ? 1 : 0;
    config.attrs = &attribute;
    config.numAttrs = 1;
    TWINFER_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
// Sum or maximum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <bool Max>
__device__ __forceinline__ float block_reduce(float v) {
    __shared__ float partial[32];
    v = Max ? warp_max(v) : warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < blockDim.x / 32 ? partial[lane] : (Max ? -INFINITY : 0.0f);
    return Max ? warp_max(v) : warp_sum(v);
}
__device__ __forceinline__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<true>(v); }

// GELU in its tanh form (GPT-2's, Gemma's GeGLU), as the CPU's Kernels::gelu computes it.
__device__ __forceinline__ float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

}  // namespace twinfer::compute::cuda
