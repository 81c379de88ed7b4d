// Residual adds, biases, activation functions, argmax and top-k.
#include <cfloat>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cub/block/block_radix_sort.cuh>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/experts.cuh"
#include "compute/cuda/ops.hpp"
#include "compute/elementwise.hpp"

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

__global__ void swiglu_oai_kernel(const float* gate, const float* up, size_t n, float* out) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = swiglu_oai_value(gate[i], up[i]);
}

__global__ void gelu_kernel(float* x, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] = gelu_tanh(x[i]);
}

__global__ void gelu_erf_kernel(float* x, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

__global__ void geglu_kernel(const float* gate, const float* up, size_t n, float* out) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gelu_tanh(gate[i]) * up[i];
}

__global__ void scale_kernel(float* x, size_t n, float factor) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}

__global__ void add_scaled_kernel(float* x, const float* y, float factor, size_t n) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] += factor * y[i];
}

__global__ void softcap_kernel(float* x, size_t n, float cap) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cap * tanhf(x[i] / cap);
}

// A token's k routing weights into shared memory, worked out by warp 0 of every block (the sums in
// double, as the CPU's); the block's threads may read them after it returns.
__device__ void routing_weights(const float* router_logits, int n_experts, const float* chosen_logits, int k,
                                bool renormalize, float* weights) {
    if (threadIdx.x < 32) {
        const double max_logit = chosen_logits[0];
        const float* logits = renormalize ? chosen_logits : router_logits;
        const int count = renormalize ? k : n_experts;
        double sum = 0;
        for (int e = threadIdx.x; e < count; e += 32) sum += exp(double(logits[e]) - max_logit);
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        for (int j = threadIdx.x; j < k; j += 32) weights[j] = float(exp(double(chosen_logits[j]) - max_logit) / sum);
    }
    __syncthreads();
}

// Every block works out the k weights itself, then adds the weighted expert outputs to its share
// of y, expert after expert.
__global__ void add_routed_kernel(float* y, const float* expert_out, int n, const float* router_logits, int n_experts,
                                  const float* chosen_logits, int k, bool renormalize) {
    grid_dependency_wait();
    __shared__ float weights[max_top_k];
    routing_weights(router_logits, n_experts, chosen_logits, k, renormalize, weights);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = y[i];
    for (int j = 0; j < k; ++j) acc = fmaf(weights[j], expert_out[size_t(j) * n + i], acc);
    y[i] = acc;
}

// add_routed_kernel for token blockIdx.y, its experts' outputs gathered from the grouped rows.
__global__ void add_routed_rows_kernel(float* y, const float* rows, int n, const int32_t* pair_row, const float* router_logits,
                                       int n_experts, const float* chosen_logits, int k, bool renormalize) {
    grid_dependency_wait();
    __shared__ float weights[max_top_k];
    const size_t t = blockIdx.y;
    routing_weights(router_logits + t * n_experts, n_experts, chosen_logits + t * k, k, renormalize, weights);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = y[t * n + i];
    for (int j = 0; j < k; ++j) acc = fmaf(weights[j], rows[size_t(pair_row[t * k + j]) * n + i], acc);
    y[t * n + i] = acc;
}

// A block a row: each thread scans a strided slice, then the block reduces (value, index) pairs,
// keeping the lower index on ties.
__global__ void argmax_kernel(const float* x, size_t n, int32_t* out) {
    grid_dependency_wait();
    x += size_t(blockIdx.x) * n;
    out += blockIdx.x;
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

// top_k: each block sorts 2,048 candidates (CUB's block radix sort, descending) and keeps its
// first k, pass after pass, until one block is left. A candidate is one 64-bit key: the value's
// bits in an order that sorts as the floats do (-0 made +0 first) above the complement of its
// index, so that equal values put the lower index first.
constexpr int sort_threads = 256, sort_items = 8;
constexpr int sort_block = sort_threads * sort_items;

__device__ __forceinline__ uint64_t candidate_key(float v, int32_t i) {
    const uint32_t bits = __float_as_uint(v + 0.0f);
    const uint32_t ordered = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
    return uint64_t(ordered) << 32 | uint32_t(~uint32_t(i));
}
__device__ __forceinline__ int32_t candidate_index(uint64_t key) { return int32_t(~uint32_t(key)); }

// One pass over n candidates: x's values (first pass, in == null) or the keys a pass left. The last
// pass (one block) writes ids and values (from x, as they were); the others k keys a block to out.
__global__ void __launch_bounds__(sort_threads)
top_k_kernel(const float* __restrict__ x, const uint64_t* __restrict__ in, int n, int k, uint64_t* __restrict__ out,
             int32_t* __restrict__ ids, float* __restrict__ values) {
    using Sort = cub::BlockRadixSort<uint64_t, sort_threads, sort_items>;
    __shared__ typename Sort::TempStorage storage;
    grid_dependency_wait();
    uint64_t keys[sort_items];
#pragma unroll
    for (int j = 0; j < sort_items; ++j) {
        const int i = int(blockIdx.x) * sort_block + j * sort_threads + int(threadIdx.x);   // coalesced
        keys[j] = i >= n ? 0 : in ? in[i] : candidate_key(x[i], i);
    }
    Sort(storage).SortDescending(keys);   // thread t then holds ranks t * sort_items ..
#pragma unroll
    for (int j = 0; j < sort_items; ++j) {
        const int rank = int(threadIdx.x) * sort_items + j;
        if (rank >= k) break;
        if (gridDim.x == 1) {
            const int32_t id = candidate_index(keys[j]);
            ids[rank] = id;
            values[rank] = x[id];
        } else {
            out[blockIdx.x * k + rank] = keys[j];
        }
    }
}

// top_k of a router's few logits (a mixture-of-experts layer: 128 of them, 8 chosen, every layer
// of every token): one warp, each lane holding its candidates' keys in registers; k rounds of a
// warp-wide maximum, the lane that held it taking it out. The block sort above spends most of its
// time on the 2,048 slots whatever n is. Block b takes row b of x ([blocks, n]; ids, values [blocks, k]).
constexpr int small_top_k_items = 16;
constexpr size_t small_top_k_n = 32 * small_top_k_items, small_top_k_k = 32;
__global__ void __launch_bounds__(32)
small_top_k_kernel(const float* __restrict__ x, int n, int k, int32_t* __restrict__ ids, float* __restrict__ values) {
    grid_dependency_wait();
    x += size_t(blockIdx.x) * n, ids += size_t(blockIdx.x) * k, values += size_t(blockIdx.x) * k;
    const int lane = int(threadIdx.x);
    uint64_t keys[small_top_k_items];   // 0: none (every candidate's key is larger, x having no NaN)
    uint64_t best = 0;
#pragma unroll
    for (int j = 0; j < small_top_k_items; ++j) {
        const int i = lane + 32 * j;
        keys[j] = i < n ? candidate_key(x[i], i) : 0;
        best = max(best, keys[j]);
    }
    for (int rank = 0; rank < k; ++rank) {
        uint64_t top = best;
        for (int offset = 16; offset > 0; offset /= 2) top = max(top, __shfl_xor_sync(0xffffffffu, top, offset));
        if (best != top) continue;   // keys are unique: one lane holds it
        const int32_t id = candidate_index(top);
        ids[rank] = id;
        values[rank] = x[id];
        best = 0;
#pragma unroll
        for (int j = 0; j < small_top_k_items; ++j) {
            if (keys[j] == top) keys[j] = 0;
            best = max(best, keys[j]);
        }
    }
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

void swiglu_oai(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (n == 0) return;
    launch_after_previous(ctx, swiglu_oai_kernel, blocks_for(n, threads), threads, 0, gate, up, n, out);
}

void gelu(Context& ctx, float* x, size_t n) {
    if (n == 0) return;
    launch_after_previous(ctx, gelu_kernel, blocks_for(n, threads), threads, 0, x, n);
}

void gelu_erf(Context& ctx, float* x, size_t n) {
    if (n == 0) return;
    launch_after_previous(ctx, gelu_erf_kernel, blocks_for(n, threads), threads, 0, x, n);
}

void geglu(Context& ctx, const float* gate, const float* up, size_t n, float* out) {
    if (n == 0) return;
    launch_after_previous(ctx, geglu_kernel, blocks_for(n, threads), threads, 0, gate, up, n, out);
}

void scale(Context& ctx, float* x, size_t n, float factor) {
    if (n == 0) return;
    launch_after_previous(ctx, scale_kernel, blocks_for(n, threads), threads, 0, x, n, factor);
}

void add_scaled(Context& ctx, float* x, const float* y, float factor, size_t n) {
    if (n == 0) return;
    launch_after_previous(ctx, add_scaled_kernel, blocks_for(n, threads), threads, 0, x, y, factor, n);
}

void softcap(Context& ctx, float* x, size_t n, float cap) {
    if (n == 0) return;
    launch_after_previous(ctx, softcap_kernel, blocks_for(n, threads), threads, 0, x, n, cap);
}

void add_routed(Context& ctx, float* y, const float* expert_out, size_t n, const float* router_logits, size_t n_experts,
                const float* chosen_logits, size_t k, bool renormalize) {
    if (k == 0 || k > max_top_k || k > n_experts)
        throw std::invalid_argument("CUDA add_routed: " + std::to_string(k) + " of " + std::to_string(n_experts) + " experts");
    launch_after_previous(ctx, add_routed_kernel, blocks_for(n, threads), threads, 0, y, expert_out, int(n), router_logits,
                          int(n_experts), chosen_logits, int(k), renormalize);
}

void add_routed_rows(Context& ctx, float* y, const float* rows, size_t n, const int32_t* pair_row, size_t n_tokens,
                     const float* router_logits, size_t n_experts, const float* chosen_logits, size_t k, bool renormalize) {
    if (k == 0 || k > max_top_k || k > n_experts)
        throw std::invalid_argument("CUDA add_routed_rows: " + std::to_string(k) + " of " + std::to_string(n_experts) + " experts");
    if (n_tokens == 0) return;
    launch_after_previous(ctx, add_routed_rows_kernel, dim3(blocks_for(n, threads), unsigned(n_tokens)), threads, 0, y, rows,
                          int(n), pair_row, router_logits, int(n_experts), chosen_logits, int(k), renormalize);
}

void route(Context& ctx, const float* router_logits, size_t n_tokens, size_t n_experts, size_t k, int32_t* ids,
           float* chosen_logits) {
    if (n_tokens == 0) return;
    if (n_experts <= small_top_k_n && k <= small_top_k_k)
        return launch_after_previous(ctx, small_top_k_kernel, unsigned(n_tokens), 32, 0, router_logits, int(n_experts),
                                     int(k), ids, chosen_logits);
    for (size_t t = 0; t < n_tokens; ++t)   // routers of more than 512 experts: the block sort, token by token
        cuda::top_k(ctx, router_logits + t * n_experts, n_experts, k, ids + t * k, chosen_logits + t * k);
}

void argmax(Context& ctx, const float* x, size_t n_rows, size_t n, int32_t* out) {
    if (n_rows == 0) return;
    launch_after_previous(ctx, argmax_kernel, unsigned(n_rows), 1024, 0, x, n, out);
}

void top_k(Context& ctx, const float* x, size_t n, size_t k, int32_t* ids, float* values) {
    if (n <= small_top_k_n && k <= small_top_k_k)
        return launch_after_previous(ctx, small_top_k_kernel, 1, 32, 0, x, int(n), int(k), ids, values);
    DeviceContext& device = device_of(ctx);
    // Keys between passes, in two halves (a pass reads one, writes the other): the first pass's
    // output is the largest.
    const size_t first_blocks = blocks_for(n, sort_block);
    auto* keys = static_cast<uint64_t*>(device.top_k_keys.get(2 * first_blocks * k * sizeof(uint64_t), device.stream));
    uint64_t* halves[2] = {keys, keys + first_blocks * k};
    const uint64_t* in = nullptr;
    for (int pass = 0;; ++pass) {
        const unsigned blocks = blocks_for(n, sort_block);
        uint64_t* out = halves[pass % 2];
        launch_after_previous(ctx, top_k_kernel, blocks, sort_threads, 0, x, in, int(n), int(k), out, ids, values);
        if (blocks == 1) return;
        in = out;
        n = size_t(blocks) * k;   // k <= max_top_k < sort_block / 2: each pass leaves fewer
    }
}

}  // namespace twinfer::compute::cuda
