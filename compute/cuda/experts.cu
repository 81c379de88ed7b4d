// A prompt's (token, choice) pairs grouped by expert (compute::group_by_expert) on the GPU, and
// the experts' biases and gated activations after their products (experts.cuh).
#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/experts.cuh"
#include "compute/cuda/ops.hpp"
#include "compute/experts.hpp"

namespace twinfer::compute::cuda {
namespace {

constexpr int group_threads = 1024;

// One block of 32 warps, a warp per expert in turn, the pairs read 32 at a time: a ballot of the
// lanes whose pair chose the expert gives each its rank among them, so the rows keep token order
// without atomics (the grouping is the same on every run). First every expert's count, then the
// padded starts (one thread: a few hundred experts), then the rows. counts: [n_experts] of shared
// memory. A prompt of 512 tokens and 8 of 128 experts: 4 experts a warp, 128 ballots each, twice.
__global__ void __launch_bounds__(group_threads)
group_by_expert_kernel(const int32_t* __restrict__ ids, int n_pairs, int k, int n_experts, int group_rows,
                       int32_t* __restrict__ offsets, int32_t* __restrict__ row_token, int32_t* __restrict__ pair_row) {
    grid_dependency_wait();
    extern __shared__ int32_t starts[];   // counts, then each expert's first row
    const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32, n_warps = int(blockDim.x) / 32;
    for (int e = warp; e < n_experts; e += n_warps) {
        int count = 0;
        for (int base = 0; base < n_pairs; base += 32) {
            const int i = base + lane;
            count += __popc(__ballot_sync(0xffffffffu, i < n_pairs && ids[i] == e));
        }
        if (lane == 0) starts[e] = count;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int row = 0;
        for (int e = 0; e < n_experts; ++e) {
            const int count = starts[e];
            offsets[e] = starts[e] = row;
            row += (count + group_rows - 1) / group_rows * group_rows;
        }
        offsets[n_experts] = row;
    }
    __syncthreads();
    const unsigned lanes_below = (1u << lane) - 1u;
    for (int e = warp; e < n_experts; e += n_warps) {
        const int start = starts[e];
        int filled = 0;
        for (int base = 0; base < n_pairs; base += 32) {
            const int i = base + lane;
            const bool mine = i < n_pairs && ids[i] == e;
            const unsigned chosen = __ballot_sync(0xffffffffu, mine);
            if (mine) {
                const int row = start + filled + __popc(chosen & lanes_below);
                row_token[row] = i / k;
                pair_row[i] = row;
            }
            filled += __popc(chosen);
        }
        __syncwarp();   // the group's last row, written above by some lane, is read below
        if (filled == 0) continue;
        for (int row = start + filled + lane; row < start + (filled + group_rows - 1) / group_rows * group_rows; row += 32)
            row_token[row] = row_token[start + filled - 1];
    }
}

constexpr int bias_threads = 256;

__global__ void add_expert_bias_kernel(float* y, const float* bias, const int32_t* ids, size_t k, size_t rows) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < k * rows) y[i] += bias[size_t(ids[i / rows]) * rows + i % rows];
}

__global__ void expert_bias_activation_kernel(float* out, const float* up, const float* gate_bias, const float* up_bias,
                                              const int32_t* ids, size_t k, size_t rows, bool oai) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= k * rows) return;
    const size_t b = size_t(ids[i / rows]) * rows + i % rows;
    const float g = gate_bias ? out[i] + gate_bias[b] : out[i], u = up_bias ? up[i] + up_bias[b] : up[i];
    out[i] = oai ? swiglu_oai_value(g, u) : g / (1.0f + expf(-g)) * u;
}

// Row r's expert: the last e with offsets[e] <= r (an expert without rows has offsets[e] =
// offsets[e + 1] and is passed over), by bisection of the n_experts + 1 offsets.
__global__ void add_expert_group_bias_kernel(float* y, const float* bias, const int32_t* offsets, int n_experts,
                                             size_t n_rows, size_t rows) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_rows * rows) return;
    const int r = int(i / rows);
    int lo = 0, hi = n_experts;   // offsets[lo] <= r < offsets[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (offsets[mid] <= r) lo = mid;
        else hi = mid;
    }
    y[i] += bias[size_t(lo) * rows + i % rows];
}

}  // namespace

void add_expert_bias(Context& ctx, float* y, const float* bias, const int32_t* ids, size_t k, size_t rows) {
    if (k * rows == 0) return;
    launch_after_previous(ctx, add_expert_bias_kernel, blocks_for(k * rows, bias_threads), bias_threads, 0, y, bias, ids,
                          k, rows);
}

void expert_bias_activation(Context& ctx, float* out, const float* up, const float* gate_bias, const float* up_bias,
                            const int32_t* ids, size_t k, size_t rows, ExpertActivation activation) {
    if (k * rows == 0) return;
    launch_after_previous(ctx, expert_bias_activation_kernel, blocks_for(k * rows, bias_threads), bias_threads, 0, out, up,
                          gate_bias, up_bias, ids, k, rows, activation == ExpertActivation::SwiGLUOai);
}

void add_expert_group_bias(Context& ctx, float* y, const float* bias, const int32_t* offsets, size_t n_experts,
                           size_t n_rows, size_t rows) {
    if (n_rows * rows == 0) return;
    launch_after_previous(ctx, add_expert_group_bias_kernel, blocks_for(n_rows * rows, bias_threads), bias_threads, 0, y,
                          bias, offsets, int(n_experts), n_rows, rows);
}

void group_by_expert(Context& ctx, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts, size_t group_rows,
                     int32_t* offsets, int32_t* row_token, int32_t* pair_row) {
    const size_t shared = n_experts * sizeof(int32_t);
    if (shared > 48 * 1024 || n_tokens * k > size_t(INT32_MAX))
        throw std::invalid_argument("CUDA group_by_expert: " + std::to_string(n_tokens) + " tokens of " + std::to_string(k) +
                                    " of " + std::to_string(n_experts) + " experts");
    launch_after_previous(ctx, group_by_expert_kernel, 1, group_threads, shared, ids, int(n_tokens * k), int(k),
                          int(n_experts), int(group_rows), offsets, row_token, pair_row);
}

}  // namespace twinfer::compute::cuda
