// RMSNorm and LayerNorm: one block per row, the row's sums reduced in float32 across the block
// (the CPU sums in double; a tree of float partial sums errs by about 1e-7 relative).
#include <algorithm>
#include <cstdint>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/matvec_int8.cuh"
#include "compute/cuda/ops.hpp"

namespace twinfer::compute::cuda {
namespace {

// A row is one block. Rows of whole float4s up to 8192 wide (every model's n_embd) are read once,
// into registers, with 16-byte loads: each thread's loads are all in flight before the reduction,
// so a one-token norm costs one DRAM round trip and two block reductions, not a chain of loads.
// Other widths take the strided float loop, reading the row twice.
constexpr int max_vectors = 8;
constexpr int vector_threads = 256;
constexpr int max_vector_width = 4 * max_vectors * vector_threads;
constexpr int scalar_threads = 1024;

bool aligned(const float* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }
bool vectorizable(size_t n, const float* x, const float* weight, const float* bias, const float* out) {
    return n % 4 == 0 && n <= size_t(max_vector_width) && aligned(x) && aligned(weight) && aligned(bias) && aligned(out);
}
unsigned vector_block(size_t n) { return unsigned(std::min<size_t>(vector_threads, (n / 4 + 31) / 32 * 32)); }

__device__ __forceinline__ float4 scaled(float4 v, float s, float4 w) {
    return make_float4(v.x * s * w.x, v.y * s * w.y, v.z * s * w.z, v.w * s * w.w);
}

// This thread's float4s of a row (i = threadIdx.x + k * blockDim.x, i < n4) into v, all loads
// issued before any is used.
__device__ __forceinline__ void load_row(const float4* row, int n4, float4 (&v)[max_vectors]) {
#pragma unroll
    for (int k = 0; k < max_vectors; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n4) v[k] = row[i];
    }
}

// The sum of term(component) over this thread's float4s in v.
template <class Term> __device__ __forceinline__ float thread_sum(const float4 (&v)[max_vectors], int n4, Term term) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < max_vectors; ++k)
        if (threadIdx.x + k * blockDim.x < n4) sum += term(v[k].x) + term(v[k].y) + term(v[k].z) + term(v[k].w);
    return sum;
}

// Accumulate: out += the normalized row (add_rms_norm).
template <bool Accumulate>
__global__ void rms_norm_vector_kernel(const float* __restrict__ x, const float* __restrict__ weight, int n, float eps,
                                       float* out) {
    grid_dependency_wait();
    const auto* row = reinterpret_cast<const float4*>(x + size_t(blockIdx.x) * n);
    auto* dst = reinterpret_cast<float4*>(out + size_t(blockIdx.x) * n);
    const auto* w4 = reinterpret_cast<const float4*>(weight);
    const int n4 = n / 4;
    float4 v[max_vectors];
    load_row(row, n4, v);
    const float inv_rms = rsqrtf(block_sum(thread_sum(v, n4, [](float a) { return a * a; })) / n + eps);
#pragma unroll
    for (int k = 0; k < max_vectors; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i >= n4) continue;
        const float4 y = scaled(v[k], inv_rms, w4[i]);
        if constexpr (Accumulate) {
            const float4 d = dst[i];
            dst[i] = make_float4(d.x + y.x, d.y + y.y, d.z + y.z, d.w + y.w);
        } else {
            dst[i] = y;
        }
    }
}

// add_rms_norm of one row (x += RMSNorm(y) * weight) that also prepares the next products' RMSNorm
// of x (PreparedNorm): next_weight * x quantized per 32 values and x's sum of squares, one part.
// The row's width a multiple of 32 and the block's of 8 lanes: a block's 8 float4s are 8 lanes of
// one warp.
__global__ void add_rms_norm_prepare_kernel(float* __restrict__ x, const float* __restrict__ y,
                                            const float* __restrict__ weight, const float* __restrict__ next_weight,
                                            int n, float eps, int8_t* __restrict__ qs, float2* __restrict__ ds,
                                            float* __restrict__ sum_squares) {
    grid_dependency_wait();
    auto* x4 = reinterpret_cast<float4*>(x);
    const auto* w4 = reinterpret_cast<const float4*>(weight);
    const auto* next4 = reinterpret_cast<const float4*>(next_weight);
    const int n4 = n / 4;
    const auto square = [](float a) { return a * a; };
    float4 v[max_vectors];
    load_row(reinterpret_cast<const float4*>(y), n4, v);
    const float inv_rms = rsqrtf(block_sum(thread_sum(v, n4, square)) / n + eps);
#pragma unroll
    for (int k = 0; k < max_vectors; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i >= n4) continue;
        const float4 s = scaled(v[k], inv_rms, w4[i]), d = x4[i];
        v[k] = make_float4(d.x + s.x, d.y + s.y, d.z + s.z, d.w + s.w);
        x4[i] = v[k];
    }
    const float total = block_sum(thread_sum(v, n4, square));
    if (threadIdx.x == 0) *sum_squares = total;
#pragma unroll
    for (int k = 0; k < max_vectors; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i >= n4) continue;   // whole groups of 8 lanes leave
        const float4 w = next4[i];
        quantize_in_lanes(make_float4(v[k].x * w.x, v[k].y * w.y, v[k].z * w.z, v[k].w * w.w), i, qs, ds);
    }
}

__global__ void layer_norm_vector_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                         const float* __restrict__ bias, int n, float eps, float* out) {
    grid_dependency_wait();
    const auto* row = reinterpret_cast<const float4*>(x + size_t(blockIdx.x) * n);
    auto* dst = reinterpret_cast<float4*>(out + size_t(blockIdx.x) * n);
    const auto* w4 = reinterpret_cast<const float4*>(weight);
    const auto* b4 = reinterpret_cast<const float4*>(bias);
    const int n4 = n / 4;
    float4 v[max_vectors];
    load_row(row, n4, v);
    const float mean = block_sum(thread_sum(v, n4, [](float a) { return a; })) / n;
    // The squares around the mean: no cancellation.
    const float variance = block_sum(thread_sum(v, n4, [mean](float a) { return (a - mean) * (a - mean); })) / n;
    const float inv_std = rsqrtf(variance + eps);
#pragma unroll
    for (int k = 0; k < max_vectors; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n4) {
            const float4 centered = make_float4(v[k].x - mean, v[k].y - mean, v[k].z - mean, v[k].w - mean);
            const float4 s = scaled(centered, inv_std, w4[i]), b = b4[i];
            dst[i] = make_float4(s.x + b.x, s.y + b.y, s.z + b.z, s.w + b.w);
        }
    }
}

template <bool Accumulate>
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight, int n, float eps,
                                float* out) {
    grid_dependency_wait();
    const float* row = x + size_t(blockIdx.x) * n;
    float* dst = out + size_t(blockIdx.x) * n;
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum_squares += row[i] * row[i];
    const float inv_rms = rsqrtf(block_sum(sum_squares) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float y = row[i] * inv_rms * weight[i];
        dst[i] = Accumulate ? dst[i] + y : y;
    }
}

__global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                  const float* __restrict__ bias, int n, float eps, float* out) {
    grid_dependency_wait();
    const float* row = x + size_t(blockIdx.x) * n;
    float* dst = out + size_t(blockIdx.x) * n;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += row[i];
    const float mean = block_sum(sum) / n;
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum_squares += (row[i] - mean) * (row[i] - mean);
    const float inv_std = rsqrtf(block_sum(sum_squares) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = (row[i] - mean) * inv_std * weight[i] + bias[i];
}

}  // namespace

namespace {

template <bool Accumulate>
void launch_rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out) {
    if (n_rows == 0) return;
    if (vectorizable(n, x, weight, nullptr, out))
        launch_after_previous(ctx, rms_norm_vector_kernel<Accumulate>, unsigned(n_rows), vector_block(n), 0, x, weight,
                              int(n), eps, out);
    else
        launch_after_previous(ctx, rms_norm_kernel<Accumulate>, unsigned(n_rows), scalar_threads, 0, x, weight, int(n), eps,
                              out);
}

}  // namespace

void rms_norm(Context& ctx, const float* x, const float* weight, size_t n_rows, size_t n, float eps, float* out) {
    launch_rms_norm<false>(ctx, x, weight, n_rows, n, eps, out);
}

void add_rms_norm(Context& ctx, float* x, const float* y, const float* weight, size_t n_rows, size_t n, float eps,
                  const RmsNorm* next_norm) {
    if (next_norm && n_rows == 1 && n % 32 == 0 && vectorizable(n, x, weight, next_norm->weight, y)) {
        const NormPreparation next = prepared_norm_scratch(ctx, n, 1);
        launch_after_previous(ctx, add_rms_norm_prepare_kernel, 1u, vector_block(n), 0, x, y, weight, next_norm->weight,
                              int(n), eps, next.input.qs, next.input.ds, next.partial_sums);
        return publish_prepared_norm(ctx, x, next_norm->weight, n, next);
    }
    launch_rms_norm<true>(ctx, y, weight, n_rows, n, eps, x);
}

void layer_norm(Context& ctx, const float* x, const float* weight, const float* bias, size_t n_rows, size_t n,
                float eps, float* out) {
    if (n_rows == 0) return;
    if (vectorizable(n, x, weight, bias, out))
        launch_after_previous(ctx, layer_norm_vector_kernel, unsigned(n_rows), vector_block(n), 0, x, weight, bias, int(n), eps, out);
    else
        launch_after_previous(ctx, layer_norm_kernel, unsigned(n_rows), scalar_threads, 0, x, weight, bias, int(n), eps, out);
}

}  // namespace twinfer::compute::cuda
