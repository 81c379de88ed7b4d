// A prompt's (token, choice) pairs grouped by expert (compute::group_by_expert) on the GPU.
#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
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
group_by_expert_kernel(const int32_t* __restrict__ ids, int n_pairs, int k, int n_experts, int min_group_rows,
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
            row += count ? max(count, min_group_rows) : 0;
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
        for (int row = start + filled + lane; row < start + max(filled, min_group_rows); row += 32)
            row_token[row] = row_token[start + filled - 1];
    }
}

}  // namespace

void group_by_expert(Context& ctx, const int32_t* ids, size_t n_tokens, size_t k, size_t n_experts, size_t min_group_rows,
                     int32_t* offsets, int32_t* row_token, int32_t* pair_row) {
    const size_t shared = n_experts * sizeof(int32_t);
    if (shared > 48 * 1024 || n_tokens * k > size_t(INT32_MAX))
        throw std::invalid_argument("CUDA group_by_expert: " + std::to_string(n_tokens) + " tokens of " + std::to_string(k) +
                                    " of " + std::to_string(n_experts) + " experts");
    launch_after_previous(ctx, group_by_expert_kernel, 1, group_threads, shared, ids, int(n_tokens * k), int(k),
                          int(n_experts), int(min_group_rows), offsets, row_token, pair_row);
}

}  // namespace twinfer::compute::cuda
