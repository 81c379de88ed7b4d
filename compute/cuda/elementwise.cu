// Residual adds, biases, activation functions, and argmax.
#include <cfloat>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/ops.hpp"

namespace twinfer::compute::cuda {
namespace {

constexpr int threads = 256;

__global__ void add_kernel(float* x, const float* y, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void add_bias_kernel(float* x, const float* bias, size_t n_rows, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n_rows * n) x[i] += bias[i % n];
}

__global__ void swiglu_kernel(const float* gate, const float* up, size_t n, float* out) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void gelu_kernel(float* x, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// One block: each thread scans a strided slice, then the block reduces (value, index) pairs,
// keeping the lower index on ties.
__global__ void argmax_kernel(const float* x, size_t n, int32_t* out) {
    grid_dependency_wait();
    float best = -FLT_MAX;
    int32_t best_index = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x)
        if (x[i] > best) best = x[i], best_index = int32_t(i);
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const int32_t other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
        if (other > best || (other == best && other_index < best_index)) best = other, best_index = other_index;
    }
    __shared__ float values[32];
    __shared__ int32_t indices[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) values[warp] = best, indices[warp] = best_index;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < int(blockDim.x / 32); ++w)
        if (values[w] > best || (values[w] == best && indices[w] < best_index)) best = values[w], best_index = indices[w];
    *out = best_index;
}

}  // namespace

void add(Context& ctx, float* x, const float* y, size_t n) {
    if (n == 0) return;
    launch_after_previous(ctx, add_kernel, blocks_for(n, threads), threads, 0, x, y, n);
}

void add_bias(Context& ctx, float* x, const float* bias, size_t n_rows, size_t n) {
    if (n_rows * n == 0) return;
    launch_after_previous(ctx, add_bias_kernel, blocks_for(n_rows * n, threads), threads, 0, x, bias, n_rows, n);
}

void swiglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (n == 0) return;
    launch_after_previous(ctx, swiglu_kernel, blocks_for(n, threads), threads, 0, gate, up, n, out);
}

void gelu(Context& ctx, float* x, size_t n) {
    if (n == 0) return;
    launch_after_previous(ctx, gelu_kernel, blocks_for(n, threads), threads, 0, x, n);
}

void argmax(Context& ctx, const float* x, size_t n, int32_t* out) {
    launch_after_previous(ctx, argmax_kernel, 1, 1024, 0, x, n, out);
}

}  // namespace twinfer::compute::cuda
