// A prompt's attention over a float16 KV cache on the tensor cores, as flash-attention 2 computes
// it: a block takes 64 (token, query head) rows of one KV head's group, 16 a warp, and walks the
// positions in tiles of 64 staged in shared memory (cp.async, two buffers: the next tile loads
// while this one is used). S = Q K^T and O += P V are mma.sync m16n8k16 products, float16
// operands and float32 sums; the softmax runs online on S's accumulators, which are already laid
// out as the A operand of P V, so S never leaves the registers. The T x T scores are never
// written, and each staged key and value serves 64 rows.
//
// Rounding: Q and P are rounded to float16 (the cache already is); sums, the running maximum and
// the softmax's denominator are float32. Attention sinks join each row's denominator at the end
// (with_sink). Only for float16 caches: a float32 cache keeps the
// float32 products of attention.cu, the default path's arithmetic.
#include <cstdint>

#include <cuda_fp16.h>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/flash_attention.cuh"
#include "compute/cuda/runtime.hpp"
#include "compute/cuda/tensor_core.cuh"

namespace twinfer::compute::cuda {
namespace {

constexpr int flash_warps = 4;
constexpr int flash_rows = 16 * flash_warps;   // (token, head) rows a block
constexpr int flash_keys = 64;                 // positions a staged tile
template <int HD> constexpr size_t staged_bytes() { return size_t(2) * 2 * flash_keys * (HD + row_pad) * sizeof(__half); }

// Block (x, y): rows x * 64 .. x * 64 + 63 of KV head y's group, row r being token r / group and
// query head y * group + r % group. In a warp's fragments, lane l holds rows l / 4 and l / 4 + 8
// and, of each 8-column tile, columns 2 (l % 4) and 2 (l % 4) + 1.
template <int HD>
__global__ void __launch_bounds__(flash_warps * 32)
flash_attention_kernel(const float* q, const __half* keys, const __half* values, int n_tokens, int first_position,
                       int n_head, int group, int kv_stride, float scale_log2e, const float* sinks, float* out) {
    constexpr int stride = HD + row_pad;
    constexpr int dim_steps = HD / 16;        // k-steps of Q K^T
    constexpr int key_columns = flash_keys / 8;
    constexpr int dim_columns = HD / 8;
    extern __shared__ __align__(16) __half staged[];   // [buffer][keys, values][flash_keys][stride]
    grid_dependency_wait();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kv_head = blockIdx.y, n_rows = n_tokens * group, block_row = blockIdx.x * flash_rows;

    int last_seen[2];   // the last position each of this thread's two rows attends to; -1: no row
    float* out_row[2];
    float sink[2];      // each row's sink, times log2(e) as the scores; -inf: none
    uint32_t qa[dim_steps][4];   // Q as the A operand, times scale * log2(e): the softmax uses exp2
    for (int i = 0; i < 2; ++i) {
        const int r = block_row + warp * 16 + lane / 4 + 8 * i;
        const int t = r / group, h = kv_head * group + r % group;
        const bool valid = r < n_rows;
        last_seen[i] = valid ? first_position + t : -1;
        const float* q_row = q + (size_t(t) * n_head + h) * HD;
        out_row[i] = valid ? out + (size_t(t) * n_head + h) * HD : nullptr;
        sink[i] = valid && sinks ? sinks[h] * 1.4426950408889634f : -INFINITY;
#pragma unroll
        for (int k = 0; k < dim_steps; ++k)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float2 v = valid ? *reinterpret_cast<const float2*>(q_row + k * 16 + half * 8 + 2 * (lane % 4))
                                       : make_float2(0.0f, 0.0f);
                qa[k][i + 2 * half] = half2_bits(v.x * scale_log2e, v.y * scale_log2e);
            }
    }

    const int last_token = (min(n_rows, block_row + flash_rows) - 1) / group;
    const int n_keys = first_position + last_token + 1;
    const int seen_by_all = first_position + block_row / group + 1;   // positions below: no row masks them
    const int n_tiles = (n_keys + flash_keys - 1) / flash_keys;
    const __half* k_head = keys + size_t(kv_head) * HD;
    const __half* v_head = values + size_t(kv_head) * HD;
    const auto stage = [&](int tile) {
        __half* k_to = staged + (tile & 1) * 2 * flash_keys * stride;
        __half* v_to = k_to + flash_keys * stride;
        constexpr int pieces = HD / 8;   // 16-byte pieces of a row
        for (int c = threadIdx.x; c < flash_keys * pieces; c += blockDim.x) {
            const int row = c / pieces, column = c % pieces * 8, position = tile * flash_keys + row;
            const bool valid = position < n_keys;
            const size_t from = size_t(valid ? position : 0) * kv_stride + column;
            copy_16_async(k_to + row * stride + column, k_head + from, valid);
            copy_16_async(v_to + row * stride + column, v_head + from, valid);
        }
        commit_copies();
    };

    float o[dim_columns][4] = {};
    float running_max[2] = {-1e30f, -1e30f}, denominator[2] = {0.0f, 0.0f};
    stage(0);
    for (int tile = 0; tile < n_tiles; ++tile) {
        if (tile + 1 < n_tiles) {
            stage(tile + 1);
            wait_copies<1>();
        } else {
            wait_copies<0>();
        }
        __syncthreads();
        const __half* ks = staged + (tile & 1) * 2 * flash_keys * stride;
        const __half* vs = ks + flash_keys * stride;
        const int m = lane / 8, r = lane % 8;   // this lane's matrix and row in load_matrices

        float s[key_columns][4] = {};
#pragma unroll
        for (int j = 0; j < key_columns; ++j)
#pragma unroll
            for (int k = 0; k < dim_steps; k += 2) {
                uint32_t b[4];
                load_matrices(b, ks + (j * 8 + r) * stride + k * 16 + m * 8);
                mma_16x8x16(s[j], qa[k], b[0], b[1]);
                mma_16x8x16(s[j], qa[k + 1], b[2], b[3]);
            }

        const int tile_start = tile * flash_keys;
        if (tile_start + flash_keys > seen_by_all)
#pragma unroll
            for (int j = 0; j < key_columns; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (tile_start + j * 8 + 2 * (lane % 4) + (e & 1) > last_seen[e / 2]) s[j][e] = -INFINITY;

        float rescale[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float tile_max = running_max[i];
#pragma unroll
            for (int j = 0; j < key_columns; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            rescale[i] = exp2f(running_max[i] - tile_max);
            running_max[i] = tile_max;
            denominator[i] *= rescale[i];
        }
#pragma unroll
        for (int j = 0; j < key_columns; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - running_max[e / 2]);
                denominator[e / 2] += s[j][e];
            }
#pragma unroll
        for (int d = 0; d < dim_columns; ++d)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[d][e] *= rescale[e / 2];

#pragma unroll
        for (int k = 0; k < key_columns / 2; ++k) {   // 16 positions a step
            const uint32_t pa[4] = {half2_bits(s[2 * k][0], s[2 * k][1]), half2_bits(s[2 * k][2], s[2 * k][3]),
                                    half2_bits(s[2 * k + 1][0], s[2 * k + 1][1]),
                                    half2_bits(s[2 * k + 1][2], s[2 * k + 1][3])};
#pragma unroll
            for (int d = 0; d < dim_columns; d += 2) {
                uint32_t b[4];
                load_matrices_transposed(b, vs + (k * 16 + (m & 1) * 8 + r) * stride + (d + (m >> 1)) * 8);
                mma_16x8x16(o[d], pa, b[0], b[1]);
                mma_16x8x16(o[d + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();   // every warp is done with this buffer before the next tile but one is staged into it
    }

    for (int i = 0; i < 2; ++i) {
        float sum = denominator[i];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (!out_row[i]) continue;
        const float inverse = with_sink<true>(1.0f, sum, running_max[i], sink[i]);
#pragma unroll
        for (int d = 0; d < dim_columns; ++d)
            *reinterpret_cast<float2*>(out_row[i] + d * 8 + 2 * (lane % 4)) =
                make_float2(o[d][2 * i] * inverse, o[d][2 * i + 1] * inverse);
    }
}

template <int HD>
void launch_flash_attention(Context& ctx, const float* q, const __half* keys, const __half* values, size_t n_tokens,
                            size_t first_position, const AttentionShape& shape, float* out) {
    const int group = int(shape.n_head / shape.n_head_kv);
    const dim3 grid(unsigned((n_tokens * group + flash_rows - 1) / flash_rows), unsigned(shape.n_head_kv));
    constexpr size_t shared = staged_bytes<HD>();
    allow_shared_memory(reinterpret_cast<const void*>(&flash_attention_kernel<HD>), shared);
    launch_after_previous(ctx, flash_attention_kernel<HD>, grid, flash_warps * 32, shared, q, keys, values,
                          int(n_tokens), int(first_position), int(shape.n_head), group, int(shape.kv_stride),
                          float(shape.scale * 1.4426950408889634), shape.sinks, out);
}

}  // namespace

bool flash_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                     size_t first_position, const AttentionShape& shape, float* out) {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (keys.type != KvType::F16 || shape.window || shape.n_head_kv == 0 || shape.n_head % shape.n_head_kv != 0 ||
        shape.kv_stride % 8 != 0 || !aligned(keys.data) || !aligned(values.data))
        return false;
    const auto* k = static_cast<const __half*>(keys.data);
    const auto* v = static_cast<const __half*>(values.data);
    if (shape.head_dim == 64) return launch_flash_attention<64>(ctx, q, k, v, n_tokens, first_position, shape, out), true;
    if (shape.head_dim == 128) return launch_flash_attention<128>(ctx, q, k, v, n_tokens, first_position, shape, out), true;
    return false;
}

}  // namespace twinfer::compute::cuda
