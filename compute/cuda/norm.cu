// RMSNorm and LayerNorm: one block per row, the row's sums reduced in float32 across the block
// (the CPU sums in double; a tree of float partial sums errs by about 1e-7 relative).
#include "compute/cuda/device_context.cuh"
#include "compute/cuda/ops.hpp"

namespace twinfer::compute::cuda {
namespace {

// A row is one block; 1024 threads keep a 4096-wide row to four loads per thread, all in flight.
constexpr int norm_threads = 1024;

__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight, int n, float eps,
                                float* out) {
    const float* row = x + size_t(blockIdx.x) * n;
    float* dst = out + size_t(blockIdx.x) * n;
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum_squares += row[i] * row[i];
    const float inv_rms = rsqrtf(block_sum(sum_squares) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * inv_rms * weight[i];
}

__global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                  const float* __restrict__ bias, int n, float eps, float* out) {
    const float* row = x + size_t(blockIdx.x) * n;
    float* dst = out + size_t(blockIdx.x) * n;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += row[i];
    const float mean = block_sum(sum) / n;
    float sum_squares = 0.0f;  // around the mean: no cancellation
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum_squares += (row[i] - mean) * (row[i] - mean);
    const float inv_std = rsqrtf(block_sum(sum_squares) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = (row[i] - mean) * inv_std * weight[i] + bias[i];
}

}  // namespace

void rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out) {
    if (n_rows == 0) return;
    rms_norm_kernel<<<unsigned(n_rows), norm_threads, 0, stream(ctx)>>>(x, weight, int(n), eps, out);
    TWINFER_CUDA_CHECK_LAUNCH();
}

void layer_norm(Context& ctx, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n,
                float eps, float* out) {
    if (n_rows == 0) return;
    layer_norm_kernel<<<unsigned(n_rows), norm_threads, 0, stream(ctx)>>>(x, weight, bias, int(n), eps, out);
    TWINFER_CUDA_CHECK_LAUNCH();
}

}  // namespace twinfer::compute::cuda
