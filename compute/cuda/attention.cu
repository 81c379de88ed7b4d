// Causal attention over the KV cache, float32, softmax computed online (flash-attention style):
// a block takes up to `max_rows` (token, query head) rows that share one KV head -- the query heads
// of a group for one token when decoding, several tokens when processing a prompt -- and walks the
// cached positions in tiles of 32 staged in shared memory, so that each K and V value read serves
// every row. When that leaves most of the GPU idle (decoding), the positions are also split among
// blocks (flash-decoding); the last block of a group to finish merges the group's partial results,
// found by a counter per group, so a decoding step spends one launch on attention, not two.
//
// Prompts of min_gemm_tokens or more over a float16 cache go to the tensor cores
// (flash_attention.cu); over a float32 cache they take three steps instead: the scores of every
// head by a cuBLAS float32 batched product (S = scale Q K^T), a causal softmax over each row of S,
// and O = P V by cuBLAS again. The kernel above re-reads each key and value once per 8 (token,
// head) rows from L2, in scalar float32, and was 16% of a 7B model's prompt time; the products run
// at the float32 units' rate, and S (at most attention_scores_budget bytes, queries taken in
// chunks) stays in L2 or DRAM. Float32 throughout: no tensor-core rounding for a float32 cache.
//
// Attention sinks (gpt-oss, AttentionShape::sinks) join a row's softmax denominator where the row
// is finished: every kernel here takes them, as the CPU's attend and attend_block do (with_sink).
// Split positions add theirs once, at the merge (merged()), not once a split.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "compute/attention.hpp"
#include "compute/cuda/cache_rows.cuh"
#include "compute/cuda/device_context.cuh"
#include "compute/cuda/flash_attention.cuh"
#include "compute/cuda/matvec_int8.cuh"
#include "compute/cuda/tensor_core.cuh"
#include "compute/cuda/ops.hpp"

namespace twinfer::compute::cuda {
namespace {

constexpr int threads = 128;
constexpr int warps = threads / 32;
constexpr int kv_tile = 32;
constexpr int max_rows = 8;
constexpr int max_head_dim = 256;
constexpr int max_pairs = max_rows * max_head_dim / threads;  // (row, dim) outputs per thread

struct Layout {
    int n_tokens, first_position, n_head, group, heads_per_block, tokens_per_block, head_dim, kv_stride, chunk, n_splits;
    float scale;
    const float* sinks;   // [n_head], or null
    // attention_at: the position in device memory; first_position, chunk and n_splits are then
    // worked out in the kernels from it (split_plan), and split_cap is split_plan's bound.
    const int32_t* position;
    int split_cap;
    // attention_at over a sliding window (AttentionShape::window, ring): the token's last `window`
    // positions, read as a cache of their own from row first_row on (key i at row first_row + i;
    // a ring holds them contiguously, rows p % ring and p % ring + ring).
    int window, ring, first_row;
    // decode_rows_attention: a block column (x) per decode row, each of its own slot and position
    // (DecodeRows), its slot's tables slot_stride elements past the slot-0 tables; planned as
    // attention_at plans its token.
    const int32_t* slot_positions;
    size_t slot_stride;
};

struct SplitPlan {
    int n_splits, chunk;
};

// How n_kv positions are shared among blocks along z: when `blocks` (the grid without splits)
// would not fill the GPU twice over (split_cap = 2 * SMs / blocks), in chunks of whole tiles.
// (At least 4 tiles each left a decoding step's few blocks walking up to 128 positions in turn:
// 10 to 13 us per layer on an H100 for SmolLM2 and TinyLlama.) The host plans attention(); attention_at's kernels plan on the device
// from the position they read, with the same arithmetic.
// `unit`: the positions a block takes at least (a tile, or a tile per warp).
__host__ __device__ inline SplitPlan split_plan(int n_kv, int split_cap, int unit = kv_tile) {
    const int max_splits = (n_kv + unit - 1) / unit;
    int n_splits = max_splits < split_cap ? max_splits : split_cap;
    if (n_splits < 1) n_splits = 1;
    const int chunk = ((n_kv + n_splits - 1) / n_splits + unit - 1) / unit * unit;
    return {(n_kv + chunk - 1) / chunk, chunk};
}

// The host's side of the split plan for a grid of `blocks` blocks without splits: the bound on
// splits (the GPU filled twice over), and attention_at's grid extent along the splits, the most
// that any position up to max_positions plans (the kernels plan again from the position they read
// and the blocks of splits it does not need return).
int split_cap_for(const DeviceContext& device, int blocks) { return std::max(1, 2 * device.n_sms / blocks); }
int max_splits_for(size_t max_positions, int split_cap, int unit = kv_tile) {
    return std::max(1, std::min((int(max_positions) + unit - 1) / unit, split_cap));
}

// The split parts of `rows` (token, head) rows and the finish counters of `groups` block groups
// (last_to_finish); none without splits.
struct SplitScratch {
    float* parts = nullptr;
    unsigned* finished = nullptr;
};
SplitScratch split_scratch(DeviceContext& device, size_t rows, int n_splits, size_t head_dim, size_t groups) {
    if (n_splits <= 1) return {};
    return {static_cast<float*>(device.attention_parts.get(rows * n_splits * (head_dim + 2) * sizeof(float), device.stream)),
            static_cast<unsigned*>(device.attention_finished.get_zeroed(groups * sizeof(unsigned), device.stream))};
}

// The layout of attention_at's kernels once they read the position: that of attention() for one
// token there.
__device__ inline void plan_position(Layout& L, int position) {
    int n_kv = position + 1;
    if (L.window && n_kv > L.window) {
        L.first_row = L.ring ? (n_kv - L.window) % L.ring : n_kv - L.window;
        n_kv = L.window;
    }
    L.first_position = n_kv - 1;
    const SplitPlan plan = split_plan(n_kv, L.split_cap);
    L.n_splits = plan.n_splits;
    L.chunk = plan.chunk;
}
__device__ inline void resolve_position(Layout& L) {
    if (L.position) plan_position(L, *L.position);
}

// Split-KV merging, shared by both kernels: a row's part from split s is (acc[hd], m, l) at
// parts + (row * n_splits + s) * (hd + 2). The last block of a group to finish merges the group:
// the fence publishes this block's parts before the count says they are there, the counter goes
// back to zero for the next launch, and the parts are read from L2, past this SM's L1.
__device__ bool last_to_finish(unsigned& finished, int n_splits) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&finished, 1u) == unsigned(n_splits - 1);
    __syncthreads();
    if (!last) return false;
    __threadfence();
    if (threadIdx.x == 0) finished = 0;
    return true;
}

// out[d] of one row: with_sink(sum_s e^(m_s - M) acc_s[d], sum_s e^(m_s - M) l_s, M), M the largest
// of the m_s. The loads do not wait on one another (no branch on a loaded value), so a merge of
// many splits is not a chain of L2 trips. A row that one split holds whole merges to exactly that
// split's own result (its weight is e^0 = 1, the empty splits' 0), so a prompt row's value does not
// depend on how many splits its call has (AttentionRows::Prompt, prompt_rows_attention).
__device__ float merged(const float* row_parts, int n_splits, int hd, int d, float sink) {
    float m_max = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < n_splits; ++s) m_max = fmaxf(m_max, __ldcg(row_parts + s * (hd + 2) + hd));
    float num = 0.0f, den = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n_splits; ++s) {
        const float* part = row_parts + s * (hd + 2);
        const float l_s = __ldcg(part + hd + 1), m_s = __ldcg(part + hd), acc = __ldcg(part + d);
        const bool empty = l_s == 0.0f;   // a split past this token's last position: whatever its other values
        const float w = empty ? 0.0f : __expf(m_s - m_max);
        num += empty ? 0.0f : w * acc;
        den += w * l_s;
    }
    return with_sink(num, den, m_max, sink);
}

template <class KV>
__global__ void __launch_bounds__(threads)
attention_kernel(const float* __restrict__ q, const KV* __restrict__ keys, const KV* __restrict__ values,
                 Layout L, float* __restrict__ out, QuantizedActivations out_int8, float* __restrict__ parts,
                 unsigned* __restrict__ finished) {
    grid_dependency_wait();
    int t0 = blockIdx.x * L.tokens_per_block;
    if (L.slot_positions) {   // decode_rows_attention: this block column's row, one token alone
        const int row = blockIdx.x;
        const size_t slot_offset = size_t(L.slot_positions[2 * row]) * L.slot_stride;
        keys += slot_offset, values += slot_offset;
        q += size_t(row) * L.n_head * L.head_dim, out += size_t(row) * L.n_head * L.head_dim;
        parts += size_t(row) * L.n_head * gridDim.z * (L.head_dim + 2);
        plan_position(L, L.slot_positions[2 * row + 1]);
        t0 = 0;
    }
    resolve_position(L);
    if (int(blockIdx.z) >= L.n_splits) return;   // attention_at: a split this position does not need
    extern __shared__ float shared[];
    const int hd = L.head_dim;
    const int tokens_per_block = L.tokens_per_block;
    const int rows = tokens_per_block * L.heads_per_block;
    float* qs = shared;                        // [rows][hd], scaled
    float* ks = qs + rows * hd;                // [kv_tile][hd + 1]
    float* vs = ks + kv_tile * (hd + 1);       // [kv_tile][hd + 1]
    float* probs = vs + kv_tile * (hd + 1);    // [rows][kv_tile]
    float* corr = probs + rows * kv_tile;      // [rows]
    float* row_m = corr + rows;                // [rows]
    float* row_l = row_m + rows;               // [rows]

    const int chunks_per_kv = L.group / L.heads_per_block;
    const int kv_head = blockIdx.y / chunks_per_kv;
    const int first_head = kv_head * L.group + (blockIdx.y % chunks_per_kv) * L.heads_per_block;
    keys += size_t(L.first_row) * L.kv_stride;
    values += size_t(L.first_row) * L.kv_stride;
    const int split = blockIdx.z;
    auto token_of = [&](int r) { return t0 + r / L.heads_per_block; };
    auto head_of = [&](int r) { return first_head + r % L.heads_per_block; };
    const int q_stride = L.n_head * hd;

    for (int e = threadIdx.x; e < rows * hd; e += threads) {
        const int r = e / hd, t = token_of(r);
        qs[e] = t < L.n_tokens ? q[size_t(t) * q_stride + head_of(r) * hd + e % hd] * L.scale : 0.0f;
    }
    const int last_token = min(t0 + tokens_per_block, L.n_tokens) - 1;
    const int begin = split * L.chunk;
    const int end = min(L.first_position + last_token + 1, begin + L.chunk);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float m[max_rows / warps], l[max_rows / warps];  // the rows this warp owns: warp, warp + warps, ...
#pragma unroll
    for (int k = 0; k < max_rows / warps; ++k) m[k] = -INFINITY, l[k] = 0.0f;
    float acc[max_pairs] = {};

    for (int tile = begin; tile < end; tile += kv_tile) {
        const int n_in = min(kv_tile, end - tile);
        __syncthreads();  // the previous tile's V and probabilities are used up
        // K and V together, 16 bytes at a time where rows allow: one memory round trip per tile.
        if (hd % 4 == 0 && L.kv_stride % 4 == 0 && reinterpret_cast<uintptr_t>(keys) % (4 * sizeof(KV)) == 0 &&
            reinterpret_cast<uintptr_t>(values) % (4 * sizeof(KV)) == 0) {
            for (int e = 4 * threadIdx.x; e < n_in * hd; e += 4 * threads) {
                const size_t from = size_t(tile + e / hd) * L.kv_stride + kv_head * hd + e % hd;
                const float4 k4 = cached_float4(keys + from);
                const float4 v4 = cached_float4(values + from);
                float* k = ks + (e / hd) * (hd + 1) + e % hd;
                float* v = vs + (e / hd) * (hd + 1) + e % hd;
                k[0] = k4.x, k[1] = k4.y, k[2] = k4.z, k[3] = k4.w;
                v[0] = v4.x, v[1] = v4.y, v[2] = v4.z, v[3] = v4.w;
            }
        } else {
            for (int e = threadIdx.x; e < n_in * hd; e += threads) {
                const size_t from = size_t(tile + e / hd) * L.kv_stride + kv_head * hd + e % hd;
                ks[(e / hd) * (hd + 1) + e % hd] = cached_value(keys + from);
                vs[(e / hd) * (hd + 1) + e % hd] = cached_value(values + from);
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < max_rows / warps; ++k) {
            const int r = warp + k * warps;
            if (r >= rows) break;
            const int position = tile + lane;
            float s = -INFINITY;
            if (lane < n_in && token_of(r) < L.n_tokens && position <= L.first_position + token_of(r)) {
                const float* qr = qs + r * hd;
                const float* kr = ks + lane * (hd + 1);
                float part[4] = {};   // four chains: a single one waits out each multiply-add's latency
                int d = 0;
                for (; d + 4 <= hd; d += 4)
#pragma unroll
                    for (int j = 0; j < 4; ++j) part[j] = fmaf(qr[d + j], kr[d + j], part[j]);
                for (; d < hd; ++d) part[0] = fmaf(qr[d], kr[d], part[0]);
                s = (part[0] + part[1]) + (part[2] + part[3]);
            }
            const float m_new = fmaxf(m[k], warp_max(s));
            const float p = m_new == -INFINITY ? 0.0f : __expf(s - m_new);
            const float c = m_new == -INFINITY ? 1.0f : __expf(m[k] - m_new);
            l[k] = l[k] * c + warp_sum(p);
            m[k] = m_new;
            probs[r * kv_tile + lane] = p;
            if (lane == 0) corr[r] = c;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < max_pairs; ++k) {
            const int pair = threadIdx.x + k * threads;
            if (pair >= rows * hd) break;
            const int r = pair / hd, d = pair % hd;
            float sum = acc[k] * corr[r];
            for (int p = 0; p < n_in; ++p) sum = fmaf(probs[r * kv_tile + p], vs[p * (hd + 1) + d], sum);
            acc[k] = sum;
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < max_rows / warps; ++k) {
            const int r = warp + k * warps;
            if (r < rows) row_m[r] = m[k], row_l[r] = l[k];
        }
    }
    __syncthreads();
    // A warp's 32 pairs are one row's 32-value block (head_dim a multiple of 32 wherever out_int8
    // is asked for), so the conditions below are the same for the whole warp, as quantize_in_warp
    // needs.
    auto write_out = [&](size_t i, float y) {
        out[i] = y;
        if (out_int8.qs) quantize_in_warp(y, int(i), out_int8.qs, out_int8.ds);
    };
    // One split: the result. Several: this split's part, (acc, m, l) per row.
#pragma unroll
    for (int k = 0; k < max_pairs; ++k) {
        const int pair = threadIdx.x + k * threads;
        if (pair >= rows * hd) break;
        const int r = pair / hd, d = pair % hd, t = token_of(r);
        if (t >= L.n_tokens) continue;
        const size_t row = size_t(t) * L.n_head + head_of(r);
        if (L.n_splits == 1) {
            write_out(row * hd + d, with_sink(acc[k], row_l[r], row_m[r], sink_of(L.sinks, head_of(r))));
        } else {
            float* part = parts + (row * L.n_splits + split) * (hd + 2);
            part[d] = acc[k];
            if (d == 0) part[hd] = row_m[r], part[hd + 1] = row_l[r];
        }
    }
    if (L.n_splits == 1 || !last_to_finish(finished[blockIdx.y * gridDim.x + blockIdx.x], L.n_splits)) return;
    for (int pair = threadIdx.x; pair < rows * hd; pair += threads) {
        const int r = pair / hd, d = pair % hd, t = token_of(r);
        if (t >= L.n_tokens) continue;
        const size_t row = size_t(t) * L.n_head + head_of(r);
        write_out(row * hd + d,
                  merged(parts + row * L.n_splits * (hd + 2), L.n_splits, hd, d, sink_of(L.sinks, head_of(r))));
    }
}

// A decoding step's attention (one token, its position in device memory): a block per query head,
// its warps taking the positions' tiles in turn (warp w: tiles w, w + warps, ...). A position's key
// is held by HeadDim / 64 lanes, 64 values each (key_lanes), so that whatever the head size a lane
// holds 64 key values and 64 cached values in registers: a tile is 32 / key_lanes positions, a
// block 4 * key_lanes warps (128 positions, DecodeTiling::unit; heads of 256: 8 warps, 64
// positions). A sliding window reads the window's rows as a cache of its own (plan_position's
// first_row). A lane computes its slice of its
// position's score (q in shared memory, read by every lane at once; the key in float4 loads, all in
// flight together), the position's lanes add their parts and the warp's shuffles give the tile's
// max and sum; for the values each lane owns head_dim / 32 output dimensions, the rows read
// coalesced. A warp's first tile of keys and values is loaded before the grid-dependency wait, all
// but this step's own row (the Q/K/V launch writes it): on short sequences no DRAM round trip of
// cached keys or values follows the wait. The block's warps merge their parts in shared memory;
// positions beyond a block's 128 are also split among blocks along y, merged by the last as in the
// general kernel. (A warp per head and a block per tile left each short sequence's merge to the
// global counters: a fence, an atomic and a re-read of the parts in every layer's longest chain.
// The general kernel above staged every tile in shared memory between barriers: 13.9 us for
// TinyLlama's 32 heads. Heads of 128 a lane each held 128 key registers, so their values were
// loaded after the wait, two round trips in the chain.)
template <int HeadDim> struct DecodeTiling {
    static_assert(HeadDim % 64 == 0 && HeadDim <= 256);
    static constexpr int key_lanes = HeadDim / 64;     // lanes that share a position's key
    static constexpr int tile = 32 / key_lanes;        // positions a warp takes at once
    // Positions a block takes at least: 128, or 64 for heads of 256, whose lanes hold 128 key and
    // value registers each (16 warps a block would cap them at 128 registers and spill).
    static constexpr int unit = HeadDim == 256 ? 64 : 128;
    static constexpr int warps = unit / tile;          // 4 for heads of 64, 8 for heads of 128 and 256
};
template <int HeadDim, class KV>
__global__ void __launch_bounds__(DecodeTiling<HeadDim>::warps * 32)
decode_attention_kernel(const float* __restrict__ q, const KV* __restrict__ keys, const KV* __restrict__ values,
                        const int32_t* position, int group, int kv_stride, float scale, const float* __restrict__ sinks,
                        int window, int ring, int split_cap, int max_kv, float* __restrict__ out,
                        QuantizedActivations out_int8, float* __restrict__ parts, unsigned* __restrict__ finished) {
    constexpr int tile = DecodeTiling<HeadDim>::tile, warps = DecodeTiling<HeadDim>::warps;
    constexpr int decode_unit = DecodeTiling<HeadDim>::unit;
    constexpr int key_part = 64;             // key values a lane holds
    constexpr int per_lane = HeadDim / 32;   // output dimensions lane, lane + 32, ...
    __shared__ float4 q_shared[HeadDim / 4];
    __shared__ float warp_acc[warps][HeadDim];
    __shared__ float warp_m[warps], warp_l[warps];
    // The position is the step's input (written before the step's first kernel), and the cached
    // keys and values before it were written by earlier steps.
    int n_kv = *position + 1;
    if (window && n_kv > window) {   // the window's rows, from the oldest on
        const size_t first_row = size_t(ring ? (n_kv - window) % ring : n_kv - window) * kv_stride;
        keys += first_row, values += first_row;
        n_kv = window;
    }
    if (n_kv > max_kv) {   // grouped_decode_attention_kernel's: done once the launches before are
        grid_dependency_wait();
        return;
    }
    const int last = n_kv - 1;   // this step's own row
    const SplitPlan plan = split_plan(n_kv, split_cap, decode_unit);
    const int split = blockIdx.y;
    if (split >= plan.n_splits) return;   // a split this position does not need
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int slot = lane % tile, slice = lane / tile;   // the lane's position in a tile, its slice of the key
    const int head = blockIdx.x;
    const size_t kv_offset = size_t(head / group) * HeadDim;
    const int begin = split * plan.chunk, end = min(n_kv, begin + plan.chunk);
    const int first_tile = begin + tile * warp;
    float4 k4[key_part / 4];
    auto load_keys = [&](int p) {
        const KV* k = keys + size_t(p) * kv_stride + kv_offset + key_part * slice;
#pragma unroll
        for (int i = 0; i < key_part / 4; ++i) k4[i] = cached_float4(k + 4 * i);
    };
    // A tile's value rows (all loads issued before the first is used), row `skip` left out.
    float v[tile][per_lane];
    auto load_values = [&](int t, int n_in, int skip) {
#pragma unroll
        for (int j = 0; j < tile; ++j) {
            if (j >= n_in) break;
            if (t + j == skip) continue;
            const KV* row = values + size_t(t + j) * kv_stride + kv_offset;
#pragma unroll
            for (int i = 0; i < per_lane; ++i) v[j][i] = cached_value(row + lane + 32 * i);
        }
    };
    const int first_n_in = min(tile, end - first_tile);
    if (first_tile + slot < min(end, last)) load_keys(first_tile + slot);
    if (first_n_in > 0) load_values(first_tile, first_n_in, last);
    grid_dependency_wait();
    if (first_tile + slot == last && last < end) load_keys(last);
    if (first_tile <= last && last < first_tile + first_n_in) {
        const KV* row = values + size_t(last) * kv_stride + kv_offset;
#pragma unroll
        for (int j = 0; j < tile; ++j)
            if (first_tile + j == last)
#pragma unroll
                for (int i = 0; i < per_lane; ++i) v[j][i] = cached_value(row + lane + 32 * i);
    }
    float* qs = reinterpret_cast<float*>(q_shared);
    for (int d = threadIdx.x; d < HeadDim; d += warps * 32) qs[d] = q[size_t(head) * HeadDim + d] * scale;
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[per_lane] = {};
    for (int t = first_tile; t < end; t += decode_unit) {
        const int p = t + slot;
        const int n_in = min(tile, end - t);
        if (t != first_tile) {
            if (p < end) load_keys(p);
            load_values(t, n_in, -1);
        }
        float s = -INFINITY;
        if (p < end) {
            float partial[4] = {};
#pragma unroll
            for (int i = 0; i < key_part / 4; ++i) {
                const float4 q4 = q_shared[slice * (key_part / 4) + i];
                partial[0] = fmaf(q4.x, k4[i].x, partial[0]);
                partial[1] = fmaf(q4.y, k4[i].y, partial[1]);
                partial[2] = fmaf(q4.z, k4[i].z, partial[2]);
                partial[3] = fmaf(q4.w, k4[i].w, partial[3]);
            }
            s = (partial[0] + partial[1]) + (partial[2] + partial[3]);
        }
        // The position's lanes add their parts (every one gets the same sum); then the tile's max
        // and sum over its positions, among the lanes of one slice.
#pragma unroll
        for (int offset = tile; offset < 32; offset *= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        float tile_max = s;
#pragma unroll
        for (int offset = tile / 2; offset > 0; offset /= 2)
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
        const float m_new = fmaxf(m, tile_max);
        const float prob = p < end ? __expf(s - m_new) : 0.0f;
        float tile_sum = prob;
#pragma unroll
        for (int offset = tile / 2; offset > 0; offset /= 2) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
        const float correction = __expf(m - m_new);   // m = -inf on the first tile: 0, acc and l are 0
        l = l * correction + tile_sum;
        m = m_new;
#pragma unroll
        for (int i = 0; i < per_lane; ++i) acc[i] *= correction;
#pragma unroll
        for (int j = 0; j < tile; ++j) {
            if (j >= n_in) break;
            const float pj = __shfl_sync(0xffffffffu, prob, j);
#pragma unroll
            for (int i = 0; i < per_lane; ++i) acc[i] = fmaf(pj, v[j][i], acc[i]);
        }
    }
    // The warps' parts merged by warp 0 (a warp without a tile has m = -inf and adds nothing).
#pragma unroll
    for (int i = 0; i < per_lane; ++i) warp_acc[warp][lane + 32 * i] = acc[i];
    if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
    __syncthreads();
    if (warp == 0) {
        float m_max = -INFINITY;
#pragma unroll
        for (int w = 0; w < warps; ++w) m_max = fmaxf(m_max, warp_m[w]);
        float weight[warps], den = 0.0f;
#pragma unroll
        for (int w = 0; w < warps; ++w) {
            weight[w] = warp_m[w] == -INFINITY ? 0.0f : __expf(warp_m[w] - m_max);
            den += weight[w] * warp_l[w];
        }
#pragma unroll
        for (int i = 0; i < per_lane; ++i) {
            float num = 0.0f;
#pragma unroll
            for (int w = 0; w < warps; ++w) num += weight[w] * warp_acc[w][lane + 32 * i];
            acc[i] = num;
        }
        m = m_max, l = den;
    }
    // Output dimension d of the head (each 32-value block held by warp 0).
    auto write_out = [&](int d, float y) {
        const int i = head * HeadDim + d;
        out[i] = y;
        if (out_int8.qs) quantize_in_warp(y, i, out_int8.qs, out_int8.ds);
    };
    if (plan.n_splits == 1) {
        if (warp == 0)
#pragma unroll
            for (int i = 0; i < per_lane; ++i) write_out(lane + 32 * i, with_sink(acc[i], l, m, sink_of(sinks, head)));
        return;
    }
    if (warp == 0) {
        float* part = parts + (size_t(head) * plan.n_splits + split) * (HeadDim + 2);
#pragma unroll
    for (int i = 0; i < per_lane; ++i) part[lane + 32 * i] = acc[i];
        if (lane == 0) part[HeadDim] = m, part[HeadDim + 1] = l;
    }
    if (!last_to_finish(finished[head], plan.n_splits) || warp != 0) return;
    const float* head_parts = parts + size_t(head) * plan.n_splits * (HeadDim + 2);
#pragma unroll
    for (int i = 0; i < per_lane; ++i)
        write_out(lane + 32 * i, merged(head_parts, plan.n_splits, HeadDim, lane + 32 * i, sink_of(sinks, head)));
}

// A decoding step over a long cache (flash-decoding for grouped heads): a block per (KV head,
// split of the positions) takes the group's query heads together, so each cached key and value is
// read once for all of them (decode_attention_kernel's block per query head read a group's rows
// once per head, and at 16K positions ran with one block of 8 warps per SM, 12% of the SM's warps
// active and 14% of the memory bandwidth: each warp's 17 tiles, one after the other). Here a lane
// owns a position: it reads its key row itself (8 loads in flight at a time) and dots it with every
// head's q from shared memory, so scores take no shuffles; the warp's 32 positions then update
// each head's online softmax, and lanes own head_dim / 32 consecutive dimensions of the values,
// each value row read coalesced and its probability shuffled from the position's lane. Splits fill
// the GPU four blocks per SM over; the last block of a KV head merges its heads (last_to_finish).
constexpr int grouped_warps = 4;
constexpr int grouped_unit = grouped_warps * 32;   // positions a block takes at least
template <int HeadDim, class KV, int Group>
__global__ void __launch_bounds__(grouped_warps * 32)
grouped_decode_attention_kernel(const float* __restrict__ q, const KV* __restrict__ keys, const KV* __restrict__ values,
                                const int32_t* position, int group, int kv_stride, float scale,
                                const float* __restrict__ sinks, int split_cap, int min_kv, float* __restrict__ out,
                                QuantizedActivations out_int8, float* __restrict__ parts, unsigned* __restrict__ finished) {
    constexpr int per_lane = HeadDim / 32;   // value dimensions lane * per_lane ..
    constexpr int key_loads = 8;             // a key row's float4 loads in flight at once
    __shared__ float4 q_shared[Group][HeadDim / 4];
    __shared__ float acc_shared[grouped_warps][Group][HeadDim];
    __shared__ float m_shared[grouped_warps][Group], l_shared[grouped_warps][Group];
    grid_dependency_wait();   // q and this step's key and value rows come from the launch before
    const int n_kv = *position + 1;
    if (n_kv < min_kv) return;   // decode_attention_kernel's
    const SplitPlan plan = split_plan(n_kv, split_cap, grouped_unit);
    const int split = blockIdx.y;
    if (split >= plan.n_splits) return;   // a split this position does not need
    const int kv_head = blockIdx.x, first_head = kv_head * group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* qs = reinterpret_cast<float*>(q_shared);
    for (int i = threadIdx.x; i < Group * HeadDim; i += blockDim.x)
        qs[i] = i < group * HeadDim ? q[size_t(first_head) * HeadDim + i] * scale : 0.0f;
    __syncthreads();
    const size_t kv_offset = size_t(kv_head) * HeadDim;
    const int begin = split * plan.chunk, end = min(n_kv, begin + plan.chunk);
    float m[Group], l[Group], acc[Group][per_lane];
#pragma unroll
    for (int g = 0; g < Group; ++g) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int d = 0; d < per_lane; ++d) acc[g][d] = 0.0f;
    }
    for (int base = begin + warp * 32; base < end; base += grouped_unit) {
        const int p = base + lane;
        float s[Group] = {};
        if (p < end) {
            const KV* k = keys + size_t(p) * kv_stride + kv_offset;
#pragma unroll
            for (int c = 0; c < HeadDim / 4; c += key_loads) {
                float4 k4[key_loads];
#pragma unroll
                for (int i = 0; i < key_loads; ++i) k4[i] = cached_float4(k + 4 * (c + i));
#pragma unroll
                for (int g = 0; g < Group; ++g)
#pragma unroll
                    for (int i = 0; i < key_loads; ++i) {
                        const float4 qv = q_shared[g][c + i];
                        s[g] = fmaf(qv.x, k4[i].x, fmaf(qv.y, k4[i].y, fmaf(qv.z, k4[i].z, fmaf(qv.w, k4[i].w, s[g]))));
                    }
            }
        }
        // Each head's online softmax over the warp's positions (base < end: lane 0's is one).
        float prob[Group];
#pragma unroll
        for (int g = 0; g < Group; ++g) {
            const float score = p < end ? s[g] : -INFINITY;
            const float m_new = fmaxf(m[g], warp_max(score));
            prob[g] = p < end ? __expf(score - m_new) : 0.0f;
            const float correction = __expf(m[g] - m_new);   // 0 on the first positions (m = -inf)
            l[g] = l[g] * correction + warp_sum(prob[g]);
            m[g] = m_new;
#pragma unroll
            for (int d = 0; d < per_lane; ++d) acc[g][d] *= correction;
        }
        const int n_in = min(32, end - base);
#pragma unroll
        for (int j0 = 0; j0 < 32; j0 += key_loads) {
            if (j0 >= n_in) break;
            float v[key_loads][per_lane];
#pragma unroll
            for (int i = 0; i < key_loads; ++i)
                if (j0 + i < n_in) cached_values<per_lane>(values + size_t(base + j0 + i) * kv_stride + kv_offset + lane * per_lane, v[i]);
#pragma unroll
            for (int i = 0; i < key_loads; ++i) {
                if (j0 + i >= n_in) break;
#pragma unroll
                for (int g = 0; g < Group; ++g) {
                    const float pj = __shfl_sync(0xffffffffu, prob[g], j0 + i);
#pragma unroll
                    for (int d = 0; d < per_lane; ++d) acc[g][d] = fmaf(pj, v[i][d], acc[g][d]);
                }
            }
        }
    }
    // The warps' parts merged through shared memory (a warp without positions has m = -inf, l = 0).
#pragma unroll
    for (int g = 0; g < Group; ++g) {
#pragma unroll
        for (int d = 0; d < per_lane; ++d) acc_shared[warp][g][lane * per_lane + d] = acc[g][d];
        if (lane == 0) m_shared[warp][g] = m[g], l_shared[warp][g] = l[g];
    }
    __syncthreads();
    // Output i = g * HeadDim + d: a warp's 32 outputs are one 32-value block of one head, as
    // quantize_in_warp needs (HeadDim a multiple of 32; warps past group * HeadDim take none).
    auto write_out = [&](int i, float y) {
        const int index = first_head * HeadDim + i;
        out[index] = y;
        if (out_int8.qs) quantize_in_warp(y, index, out_int8.qs, out_int8.ds);
    };
    for (int i = threadIdx.x; i < group * HeadDim; i += blockDim.x) {
        const int g = i / HeadDim, d = i % HeadDim;
        float m_max = -INFINITY;
#pragma unroll
        for (int w = 0; w < grouped_warps; ++w) m_max = fmaxf(m_max, m_shared[w][g]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int w = 0; w < grouped_warps; ++w) {
            const float weight = m_shared[w][g] == -INFINITY ? 0.0f : __expf(m_shared[w][g] - m_max);
            num += weight * acc_shared[w][g][d];
            den += weight * l_shared[w][g];
        }
        if (plan.n_splits == 1) {
            write_out(i, with_sink(num, den, m_max, sink_of(sinks, first_head + g)));
        } else {
            float* part = parts + (size_t(first_head + g) * plan.n_splits + split) * (HeadDim + 2);
            part[d] = num;
            if (d == 0) part[HeadDim] = m_max, part[HeadDim + 1] = den;
        }
    }
    if (plan.n_splits == 1 || !last_to_finish(finished[kv_head], plan.n_splits)) return;
    for (int i = threadIdx.x; i < group * HeadDim; i += blockDim.x) {
        const int g = i / HeadDim, d = i % HeadDim;
        write_out(i, merged(parts + size_t(first_head + g) * plan.n_splits * (HeadDim + 2), plan.n_splits, HeadDim, d,
                            sink_of(sinks, first_head + g)));
    }
}

// The grouped kernel's work over a float16 cache on the tensor cores: a block per (KV head, split)
// stages the split's positions 64 at a time (cp.async, two buffers) and each warp takes 16 of a
// tile's positions for the group's heads (up to 16 rows of an m16n8k16 product, the rest zero):
// S = Q K^T and O += P V as mma.sync with the online softmax on S's accumulators, as
// flash_attention.cu does for prompts. The grouped kernel's lane a position read each key row in
// 8-byte pieces, 32 rows a load; here each staged row is read whole by 16-byte copies. Q and P are
// rounded to float16 (as in flash_attention.cu); the merges are those of the grouped kernel.
constexpr int flash_decode_warps = 4;
constexpr int flash_decode_tile = 64;   // positions a stage
constexpr int flash_decode_max_group = 16;
template <int HeadDim> constexpr size_t flash_decode_staged_bytes() {
    return size_t(2) * 2 * flash_decode_tile * (HeadDim + row_pad) * sizeof(__half);
}
template <int HeadDim>
__global__ void __launch_bounds__(flash_decode_warps * 32)
flash_decode_attention_kernel(const float* __restrict__ q, const __half* __restrict__ keys,
                              const __half* __restrict__ values, const int32_t* position, int group, int kv_stride,
                              float scale_log2e, const float* __restrict__ sinks, int split_cap, int min_kv,
                              float* __restrict__ out, QuantizedActivations out_int8, float* __restrict__ parts,
                              unsigned* __restrict__ finished) {
    constexpr int stride = HeadDim + row_pad, dim_steps = HeadDim / 16, dim_columns = HeadDim / 8;
    constexpr float ln2 = 0.6931471805599453f, log2e = 1.4426950408889634f;
    extern __shared__ __align__(16) __half staged[];   // [buffer][keys, values][tile][stride]; then the warps' parts
    __shared__ float m_shared[flash_decode_warps][flash_decode_max_group];
    __shared__ float l_shared[flash_decode_warps][flash_decode_max_group];
    grid_dependency_wait();   // q and this step's key and value rows come from the launch before
    const int n_kv = *position + 1;
    if (n_kv < min_kv) return;   // decode_attention_kernel's
    const SplitPlan plan = split_plan(n_kv, split_cap, flash_decode_tile);
    const int split = blockIdx.y;
    if (split >= plan.n_splits) return;   // a split this position does not need
    const int kv_head = blockIdx.x, first_head = kv_head * group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    uint32_t qa[dim_steps][4];   // rows lane / 4 and lane / 4 + 8: the group's heads, zero past them
    for (int i = 0; i < 2; ++i) {
        const int row = lane / 4 + 8 * i;
        const float* q_row = q + size_t(first_head + row) * HeadDim;
#pragma unroll
        for (int k = 0; k < dim_steps; ++k)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float2 v = row < group ? *reinterpret_cast<const float2*>(q_row + k * 16 + half * 8 + 2 * (lane % 4))
                                             : make_float2(0.0f, 0.0f);
                qa[k][i + 2 * half] = half2_bits(v.x * scale_log2e, v.y * scale_log2e);
            }
    }

    const int begin = split * plan.chunk, end = min(n_kv, begin + plan.chunk);
    const int n_tiles = (end - begin + flash_decode_tile - 1) / flash_decode_tile;
    const __half* k_head = keys + size_t(kv_head) * HeadDim;
    const __half* v_head = values + size_t(kv_head) * HeadDim;
    const auto stage = [&](int tile) {
        __half* k_to = staged + (tile & 1) * 2 * flash_decode_tile * stride;
        __half* v_to = k_to + flash_decode_tile * stride;
        constexpr int pieces = HeadDim / 8;   // 16-byte pieces of a row
        for (int c = threadIdx.x; c < flash_decode_tile * pieces; c += blockDim.x) {
            const int row = c / pieces, column = c % pieces * 8, p = begin + tile * flash_decode_tile + row;
            const bool valid = p < end;
            const size_t from = size_t(valid ? p : 0) * kv_stride + column;
            copy_16_async(k_to + row * stride + column, k_head + from, valid);
            copy_16_async(v_to + row * stride + column, v_head + from, valid);
        }
        commit_copies();
    };

    float o[dim_columns][4] = {};
    float running_max[2] = {-1e30f, -1e30f}, denominator[2] = {0.0f, 0.0f};
    const int m = lane / 8, r = lane % 8;   // this lane's matrix and row in load_matrices
    stage(0);
    for (int tile = 0; tile < n_tiles; ++tile) {
        if (tile + 1 < n_tiles) {
            stage(tile + 1);
            wait_copies<1>();
        } else {
            wait_copies<0>();
        }
        __syncthreads();
        const __half* ks = staged + (tile & 1) * 2 * flash_decode_tile * stride + warp * 16 * stride;
        const __half* vs = ks + flash_decode_tile * stride;
        float s[2][4] = {};
#pragma unroll
        for (int k = 0; k < dim_steps; k += 2)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                uint32_t b[4];
                load_matrices(b, ks + (j * 8 + r) * stride + k * 16 + m * 8);
                mma_16x8x16(s[j], qa[k], b[0], b[1]);
                mma_16x8x16(s[j], qa[k + 1], b[2], b[3]);
            }
        const int first = begin + tile * flash_decode_tile + warp * 16;
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (first + j * 8 + 2 * (lane % 4) + (e & 1) >= end) s[j][e] = -INFINITY;
        float rescale[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float tile_max = fmaxf(running_max[i], fmaxf(fmaxf(s[0][2 * i], s[0][2 * i + 1]), fmaxf(s[1][2 * i], s[1][2 * i + 1])));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            rescale[i] = exp2f(running_max[i] - tile_max);
            running_max[i] = tile_max;
            denominator[i] *= rescale[i];
        }
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - running_max[e / 2]);
                denominator[e / 2] += s[j][e];
            }
        const uint32_t pa[4] = {half2_bits(s[0][0], s[0][1]), half2_bits(s[0][2], s[0][3]), half2_bits(s[1][0], s[1][1]),
                                half2_bits(s[1][2], s[1][3])};
#pragma unroll
        for (int d = 0; d < dim_columns; d += 2) {
            uint32_t b[4];
            load_matrices_transposed(b, vs + ((m & 1) * 8 + r) * stride + (d + (m >> 1)) * 8);
#pragma unroll
            for (int e = 0; e < 4; ++e) o[d][e] *= rescale[e / 2], o[d + 1][e] *= rescale[e / 2];
            mma_16x8x16(o[d], pa, b[0], b[1]);
            mma_16x8x16(o[d + 1], pa, b[2], b[3]);
        }
        __syncthreads();   // every warp is done with this buffer before the next tile but one is staged into it
    }

    // The warps' parts merged through shared memory (the staged tiles' space, free now), in exp2's
    // units; a warp that saw no position has denominator 0.
    float* acc_shared = reinterpret_cast<float*>(staged);   // [warp][group row][HeadDim]
    for (int i = 0; i < 2; ++i) {
        const int row = lane / 4 + 8 * i;
        float sum = denominator[i];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (row >= group) continue;
        float* acc_row = acc_shared + (warp * flash_decode_max_group + row) * HeadDim;
#pragma unroll
        for (int d = 0; d < dim_columns; ++d)
            *reinterpret_cast<float2*>(acc_row + d * 8 + 2 * (lane % 4)) = make_float2(o[d][2 * i], o[d][2 * i + 1]);
        if (lane % 4 == 0) m_shared[warp][row] = running_max[i], l_shared[warp][row] = sum;
    }
    __syncthreads();
    // Output i = g * HeadDim + d: a warp's 32 outputs are one 32-value block of one head, as
    // quantize_in_warp needs (warps past group * HeadDim take none).
    auto write_out = [&](int i, float y) {
        const int index = first_head * HeadDim + i;
        out[index] = y;
        if (out_int8.qs) quantize_in_warp(y, index, out_int8.qs, out_int8.ds);
    };
    for (int i = threadIdx.x; i < group * HeadDim; i += blockDim.x) {
        const int g = i / HeadDim, d = i % HeadDim;
        float m_max = -INFINITY;
#pragma unroll
        for (int w = 0; w < flash_decode_warps; ++w) m_max = fmaxf(m_max, m_shared[w][g]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int w = 0; w < flash_decode_warps; ++w) {
            const float weight = exp2f(m_shared[w][g] - m_max);
            num += weight * acc_shared[(w * flash_decode_max_group + g) * HeadDim + d];
            den += weight * l_shared[w][g];
        }
        if (plan.n_splits == 1) {
            write_out(i, with_sink<true>(num, den, m_max, sink_of(sinks, first_head + g) * log2e));
        } else {
            float* part = parts + (size_t(first_head + g) * plan.n_splits + split) * (HeadDim + 2);
            part[d] = num;
            if (d == 0) part[HeadDim] = m_max * ln2, part[HeadDim + 1] = den;   // merged() takes natural units
        }
    }
    if (plan.n_splits == 1 || !last_to_finish(finished[kv_head], plan.n_splits)) return;
    // The group's merge, its weights e^(m_s - M) once a (head, split) in shared memory (the staged
    // tiles' space again): then each output is one pass of independent loads (merged() per output
    // made the last block walk the splits twice an output, the longest part of the kernel at 16K).
    float* weights = reinterpret_cast<float*>(staged);   // [group][n_splits]
    __shared__ float inverse_denominator[flash_decode_max_group];
    const size_t part_size = HeadDim + 2;
    for (int g = warp; g < group; g += flash_decode_warps) {
        const float* row_parts = parts + size_t(first_head + g) * plan.n_splits * part_size;
        const float sink = sink_of(sinks, first_head + g);   // in the max: no exponential exceeds 1
        float m_max = sink;
        for (int s = lane; s < plan.n_splits; s += 32) m_max = fmaxf(m_max, __ldcg(row_parts + s * part_size + HeadDim));
        m_max = warp_max(m_max);
        float den = 0.0f;
        for (int s = lane; s < plan.n_splits; s += 32) {
            const float l_s = __ldcg(row_parts + s * part_size + HeadDim + 1);
            const float w = l_s == 0.0f ? 0.0f : __expf(__ldcg(row_parts + s * part_size + HeadDim) - m_max);
            weights[g * plan.n_splits + s] = w;
            den += w * l_s;
        }
        den = warp_sum(den);
        if (sink != -INFINITY) den += __expf(sink - m_max);
        if (lane == 0) inverse_denominator[g] = 1.0f / den;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * HeadDim; i += blockDim.x) {
        const int g = i / HeadDim, d = i % HeadDim;
        const float* row_parts = parts + size_t(first_head + g) * plan.n_splits * part_size + d;
        const float* w = weights + g * plan.n_splits;
        float num = 0.0f;
#pragma unroll 8
        for (int s = 0; s < plan.n_splits; ++s) {
            const float acc = __ldcg(row_parts + s * part_size);
            num += w[s] == 0.0f ? 0.0f : w[s] * acc;
        }
        write_out(i, num * inverse_denominator[g]);
    }
}

// The grouped kernel's instance for a head size (64, 128) and group (up to 8, rounded up to a power
// of two); null where it has none.
template <class KV>
auto grouped_decode_kernel(size_t head_dim, size_t group) {
    using Kernel = decltype(&grouped_decode_attention_kernel<64, KV, 1>);
    auto for_group = [&]<int HeadDim>() -> Kernel {
        return group <= 1   ? grouped_decode_attention_kernel<HeadDim, KV, 1>
               : group <= 2 ? grouped_decode_attention_kernel<HeadDim, KV, 2>
               : group <= 4 ? grouped_decode_attention_kernel<HeadDim, KV, 4>
               : group <= 8 ? grouped_decode_attention_kernel<HeadDim, KV, 8>
                            : nullptr;
    };
    return head_dim == 64 ? for_group.template operator()<64>() : head_dim == 128 ? for_group.template operator()<128>() : nullptr;
}

// attention_at on the decode kernels, for the head sizes they are built for (64, 128, 256); false
// otherwise. A sliding window's max_positions is the window's. Caches of up to
// grouped_min_positions positions take decode_attention_kernel (a block per query head, its first
// tile loaded before the grid-dependency wait: the shorter chain while a step reads few
// positions), longer ones grouped_decode_attention_kernel (each key and value read
// once for a group of up to 8 heads, the GPU filled with splits). A captured step serves every
// position, so where the cache can outgrow the threshold both are launched and each leaves the
// other's positions (the idle one returns once the launches before it are done, so that the chain
// of dependent launches holds). Heads without groups (Llama 2) take them too:
// decode_attention_kernel loads its first tile of keys before the wait (H200, tg128: 7B 574 -> 627
// tok/s against the general kernel; before that change it measured slower there, 523 -> 494).
constexpr int grouped_min_positions = 1024;
template <class KV>
bool launch_decode_attention(Context& ctx, const float* q, const KV* keys, const KV* values, const int32_t* position,
                             size_t max_positions, const AttentionShape& shape, float* out, const QuantizedActivations& out_int8) {
    auto kernel = shape.head_dim == 64    ? decode_attention_kernel<64, KV>
                  : shape.head_dim == 128 ? decode_attention_kernel<128, KV>
                  : shape.head_dim == 256 ? decode_attention_kernel<256, KV>
                                          : nullptr;
    const int threads = shape.head_dim == 64    ? DecodeTiling<64>::warps * 32
                        : shape.head_dim == 128 ? DecodeTiling<128>::warps * 32
                                                : DecodeTiling<256>::warps * 32;
    const int unit = shape.head_dim == 256 ? DecodeTiling<256>::unit : DecodeTiling<128>::unit;
    if (!kernel || shape.n_head_kv == 0 || shape.n_head % shape.n_head_kv != 0 || shape.kv_stride % 4 != 0 ||
        reinterpret_cast<uintptr_t>(keys) % 16 != 0 || reinterpret_cast<uintptr_t>(values) % 16 != 0)
        return false;
    const size_t group = shape.n_head / shape.n_head_kv;
    // The long caches' kernels know neither heads of 256 nor windows: those take the per-head
    // kernel at every length.
    const bool long_cache = max_positions > size_t(grouped_min_positions) && shape.head_dim != 256 && !shape.window;
    // Over a float16 cache, the tensor cores' kernel (three blocks of its shared memory an SM).
    bool tensor_cores = false;
    if constexpr (std::is_same_v<KV, __half>) tensor_cores = long_cache && group <= flash_decode_max_group && shape.kv_stride % 8 == 0;
    const auto grouped = long_cache && !tensor_cores ? grouped_decode_kernel<KV>(shape.head_dim, group) : nullptr;
    DeviceContext& device = device_of(ctx);
    const int per_head_cap = split_cap_for(device, int(shape.n_head));
    const int per_head_splits = max_splits_for(max_positions, per_head_cap, unit);
    const int grouped_cap = std::max(1, (tensor_cores ? 3 : 4) * device.n_sms / int(shape.n_head_kv));
    const int grouped_splits = grouped || tensor_cores
                                   ? max_splits_for(max_positions, grouped_cap, tensor_cores ? flash_decode_tile : grouped_unit)
                                   : 0;
    // One scratch for both (a second request could move the first's), the counters per query head.
    const SplitScratch scratch =
        split_scratch(device, shape.n_head, std::max(per_head_splits, grouped_splits), shape.head_dim, shape.n_head);
    launch_after_previous(ctx, kernel, dim3(unsigned(shape.n_head), unsigned(per_head_splits)), threads, 0, q, keys, values,
                          position, int(group), int(shape.kv_stride), shape.scale, shape.sinks, int(shape.window),
                          int(shape.ring), per_head_cap, grouped || tensor_cores ? grouped_min_positions - 1 : INT_MAX, out,
                          out_int8, scratch.parts, scratch.finished);
    const dim3 grouped_grid(unsigned(shape.n_head_kv), unsigned(grouped_splits));
    if (grouped)
        launch_after_previous(ctx, grouped, grouped_grid, grouped_warps * 32, 0, q, keys, values, position, int(group),
                              int(shape.kv_stride), shape.scale, shape.sinks, grouped_cap, grouped_min_positions, out,
                              out_int8, scratch.parts, scratch.finished);
    if constexpr (std::is_same_v<KV, __half>) {
        if (tensor_cores) {
            auto flash = shape.head_dim == 64 ? flash_decode_attention_kernel<64> : flash_decode_attention_kernel<128>;
            const size_t shared = shape.head_dim == 64 ? flash_decode_staged_bytes<64>() : flash_decode_staged_bytes<128>();
            allow_shared_memory(reinterpret_cast<const void*>(flash), shared);
            launch_after_previous(ctx, flash, grouped_grid, flash_decode_warps * 32, shared, q, keys, values, position,
                                  int(group), int(shape.kv_stride), float(shape.scale * 1.4426950408889634), shape.sinks,
                                  grouped_cap, grouped_min_positions, out, out_int8, scratch.parts, scratch.finished);
        }
    }
    return true;
}

int largest_divisor_at_most(int n, int limit) {
    for (int d = std::min(n, limit); d > 1; --d)
        if (n % d == 0) return d;
    return 1;
}

// A launch of attention() (position null) or attention_at() (position in device memory, one token,
// the grid sized for the plan of max_positions: no plan for fewer positions has more splits).
// fixed_chunk (prompt rows, position null): the positions split in chunks of that many from
// position 0, whatever the call, instead of by the plan that fills the GPU. decode_rows
// (decode_rows_attention; n_tokens 1, position null): a block column per row, each planned as its token
// alone at its position (the split bound that of one row's grid), the grid sized for
// max_positions.
template <class KV>
void launch_attention(Context& ctx, const float* q, const KV* keys, const KV* values, size_t n_tokens,
                      size_t first_position, const int32_t* position, size_t max_positions, const AttentionShape& shape,
                      float* out, const QuantizedActivations& out_int8 = {}, int fixed_chunk = 0,
                      const DecodeRows* decode_rows = nullptr, size_t slot_stride = 0) {
    if (n_tokens == 0 || (decode_rows && decode_rows->n_rows == 0)) return;
    if (shape.head_dim > max_head_dim || shape.n_head_kv == 0 || shape.n_head % shape.n_head_kv != 0)
        throw std::invalid_argument("CUDA attention: head_dim " + std::to_string(shape.head_dim) + " (at most " +
                                    std::to_string(max_head_dim) + "), " + std::to_string(shape.n_head) +
                                    " heads over " + std::to_string(shape.n_head_kv) + " KV heads");
    DeviceContext& device = device_of(ctx);
    Layout L{};
    L.n_tokens = int(n_tokens);
    L.first_position = int(first_position);
    L.n_head = int(shape.n_head);
    L.group = int(shape.n_head / shape.n_head_kv);
    L.heads_per_block = largest_divisor_at_most(L.group, max_rows);
    L.head_dim = int(shape.head_dim);
    L.kv_stride = int(shape.kv_stride);
    L.scale = shape.scale;
    L.sinks = shape.sinks;
    L.position = position;
    if (position || decode_rows) L.window = int(shape.window), L.ring = int(shape.ring);
    if (decode_rows) L.slot_positions = decode_rows->slot_positions, L.slot_stride = slot_stride;
    // As many tokens per block as fit in max_rows, but no more than there are: a decoding step with
    // one head per block (Llama 2 7B) computed seven rows of nothing beside its one.
    L.tokens_per_block = int(std::min<size_t>(max_rows / L.heads_per_block, n_tokens));
    const int tokens_per_block = L.tokens_per_block;
    const int rows = tokens_per_block * L.heads_per_block;
    const size_t n_columns = decode_rows ? decode_rows->n_rows : (n_tokens + tokens_per_block - 1) / tokens_per_block;
    const dim3 grid_2d(unsigned(n_columns), unsigned(shape.n_head_kv * (L.group / L.heads_per_block)));
    const int blocks = int(grid_2d.x * grid_2d.y);
    L.split_cap = split_cap_for(device, decode_rows ? int(grid_2d.y) : blocks);
    if (decode_rows) {
        L.n_splits = max_splits_for(shape.window ? std::min(max_positions, shape.window) : max_positions, L.split_cap);
    } else if (fixed_chunk) {
        L.chunk = fixed_chunk;
        L.n_splits = int((first_position + n_tokens + fixed_chunk - 1) / fixed_chunk);
    } else if (position) {
        L.n_splits = max_splits_for(max_positions, L.split_cap);
    } else {
        const SplitPlan plan = split_plan(int(first_position + n_tokens), L.split_cap);
        L.n_splits = plan.n_splits;
        L.chunk = plan.chunk;
    }

    const size_t hd = shape.head_dim;
    const size_t shared = (rows * hd + 2 * kv_tile * (hd + 1) + rows * kv_tile + 3 * rows) * sizeof(float);
    const SplitScratch scratch = split_scratch(device, n_columns * tokens_per_block * shape.n_head, L.n_splits, hd, size_t(blocks));
    allow_shared_memory(reinterpret_cast<const void*>(attention_kernel<KV>), shared);
    launch_after_previous(ctx, attention_kernel<KV>, dim3(grid_2d.x, grid_2d.y, unsigned(L.n_splits)), threads, shared, q, keys,
                          values, L, out, out_int8, scratch.parts, scratch.finished);
}

constexpr size_t min_gemm_tokens = 16;
constexpr size_t attention_scores_budget = size_t(256) << 20;

// One block per row of S ([head][token][n_keys]): row (h, t) keeps keys 0 ..= first_key + t,
// softmax in place (head h's sink in the denominator, the max taken with it); the masked tail
// becomes 0, so that P V sums over every key.
__global__ void causal_softmax_kernel(float* scores, int n_tokens, int n_keys, int first_key, const float* sinks) {
    grid_dependency_wait();
    float* row = scores + size_t(blockIdx.x) * n_keys;
    const int valid = min(n_keys, first_key + int(blockIdx.x) % n_tokens + 1);
    const float sink = sink_of(sinks, int(blockIdx.x) / n_tokens);
    float m = -INFINITY;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) m = fmaxf(m, row[i]);
    m = fmaxf(block_max(m), sink);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) sum += __expf(row[i] - m);
    sum = block_sum(sum);
    const float inverse = 1.0f / (sink == -INFINITY ? sum : sum + __expf(sink - m));
    for (int i = threadIdx.x; i < n_keys; i += blockDim.x) row[i] = i < valid ? __expf(row[i] - m) * inverse : 0.0f;
}

// The operands of one chunk's two batched products, a pointer per head h (of KV head h / group):
// S_h^T = K_g Q_h^T and O_h^T = V_g^T P_h^T, column-major as cuBLAS sees them (gemm_attention).
struct HeadOperands {
    const float** k;
    const float** q;
    float** s;
    const float** v;
    const float** p;
    float** o;
};
constexpr int operand_arrays = 6;

__global__ void head_operands_kernel(HeadOperands ops, const float* q, const float* keys, const float* values,
                                     float* scores, float* out, int H, int group, int D, size_t head_scores) {
    grid_dependency_wait();
    const int h = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (h >= H) return;
    const int g = h / group;
    ops.k[h] = keys + size_t(g) * D;
    ops.q[h] = q + size_t(h) * D;
    ops.s[h] = scores + size_t(h) * head_scores;
    ops.v[h] = values + size_t(g) * D;
    ops.p[h] = scores + size_t(h) * head_scores;
    ops.o[h] = out + size_t(h) * D;
}

void gemm_attention(Context& ctx, const float* q, const float* keys, const float* values, size_t n_tokens,
                    size_t first_position, const AttentionShape& shape, float* out) {
    DeviceContext& device = device_of(ctx);
    const int H = int(shape.n_head), Hkv = int(shape.n_head_kv), group = H / Hkv, D = int(shape.head_dim);
    const int kv_stride = int(shape.kv_stride);
    const size_t all_keys = first_position + n_tokens;
    const size_t chunk = std::max<size_t>(1, std::min(n_tokens, attention_scores_budget / (sizeof(float) * H * all_keys)));
    float* scores = static_cast<float*>(device.attention_scores.get(sizeof(float) * H * chunk * all_keys, device.stream));
    // Every chunk's operands apart: a chunk's products may still be queued when the next is set up.
    const size_t n_chunks = (n_tokens + chunk - 1) / chunk;
    void* pointers = device.attention_operands.get(n_chunks * operand_arrays * size_t(H) * sizeof(void*), device.stream);
    const float zero = 0.0f, one = 1.0f;
    for (size_t t0 = 0, c = 0; t0 < n_tokens; t0 += chunk, ++c) {
        const int tokens = int(std::min(chunk, n_tokens - t0));
        const int n_keys = int(first_position + t0 + tokens);
        const size_t head_scores = size_t(tokens) * n_keys;
        // All heads in one batched product each, grouped heads included (one strided product per
        // head of a group left TinyLlama's 8 batches of 4 heads at a fraction of the GPU: 37% of its
        // prompt time).
        const size_t first = c * operand_arrays * size_t(H);
        const auto array = [&](int i) { return static_cast<float**>(pointers) + first + size_t(i) * H; };
        const auto const_array = [&](int i) { return static_cast<const float**>(pointers) + first + size_t(i) * H; };
        const HeadOperands ops{const_array(0), const_array(1), array(2), const_array(3), const_array(4), array(5)};
        launch_after_previous(ctx, head_operands_kernel, blocks_for(size_t(H), 128), 128, 0, ops, q + t0 * H * D, keys,
                              values, scores, out + t0 * H * D, H, group, D, head_scores);
        TWINFER_CUDA_CHECK(cublasSgemmBatched(device.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_keys, tokens, D, &shape.scale,
                                              ops.k, kv_stride, ops.q, H * D, &zero, ops.s, n_keys, H));
        launch_after_previous(ctx, causal_softmax_kernel, unsigned(H * tokens), 256, 0, scores, tokens, n_keys,
                              int(first_position + t0), shape.sinks);
        TWINFER_CUDA_CHECK(cublasSgemmBatched(device.cublas, CUBLAS_OP_N, CUBLAS_OP_N, D, tokens, n_keys, &one, ops.v,
                                              kv_stride, ops.p, n_keys, &zero, ops.o, H * D, H));
    }
}

// x's n_rows rows to table from row first_row on, or (row in device memory, one row) to row *row.
__global__ void store_rows_kernel(const float* x, size_t n_rows, size_t width, DeviceCacheRows table, size_t first_row,
                                  const int32_t* row) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n_rows * width) store_cached(table, (row ? size_t(*row) : first_row) * width + i, x[i]);
}

// A float16 table's first n values as float32 (gemm_attention's operands).
__global__ void widen_kernel(const __half* table, size_t n, float* out) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __half2float(table[i]);
}

// Sliding-window attention, one block per (token, head): the window's scores in shared memory,
// their softmax, then each output dimension's weighted sum of values by one thread. The window
// bounds the work (at most max_attention_window keys), so no split over the keys is needed.
constexpr int window_threads = 256;

__device__ float block_reduce(float v, bool is_max, float* scratch) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();   // scratch free from the last reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < int(blockDim.x / 32); ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
    return v;
}

template <class KV>
__global__ void __launch_bounds__(window_threads)
windowed_attention_kernel(const float* q, const KV* keys, const KV* values, int first_position, int n_head, int group,
                          int head_dim, int kv_stride, int window, int ring, float scale,
                          const float* sinks, float* out) {
    grid_dependency_wait();
    extern __shared__ float scores[];   // [window], then 32 floats of reduction scratch
    float* scratch = scores + window;
    const int t = blockIdx.x / n_head, h = blockIdx.x % n_head;
    const int seen = first_position + t + 1;
    const int first = max(0, seen - window), n = seen - first;
    const float* qh = q + (size_t(t) * n_head + h) * head_dim;
    const size_t kv_offset = size_t(ring ? first % ring : first) * kv_stride + size_t(h / group) * head_dim;
    float max_score = -FLT_MAX;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const KV* k = keys + kv_offset + size_t(j) * kv_stride;
        float dot = 0;
        for (int d = 0; d < head_dim; ++d) dot += qh[d] * cached_value(k + d);
        scores[j] = dot * scale;
        max_score = fmaxf(max_score, scores[j]);
    }
    const float sink = sink_of(sinks, h);   // in the max and the denominator
    max_score = fmaxf(block_reduce(max_score, true, scratch), sink);
    float sum = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sum += scores[j] = expf(scores[j] - max_score);
    sum = block_reduce(sum, false, scratch);   // its barriers also publish every score
    if (sink != -INFINITY) sum += expf(sink - max_score);
    float* oh = out + (size_t(t) * n_head + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0;
        for (int j = 0; j < n; ++j) acc += scores[j] * cached_value(values + kv_offset + size_t(j) * kv_stride + d);
        oh[d] = acc / sum;
    }
}

template <class KV>
void windowed_attention(Context& ctx, const float* q, const KV* keys, const KV* values, size_t n_tokens,
                        size_t first_position, const AttentionShape& shape, float* out) {
    if (shape.window > max_attention_window)
        throw std::invalid_argument("attention: a sliding window of " + std::to_string(shape.window) +
                                    " positions exceeds the CUDA kernel's " + std::to_string(max_attention_window));
    const size_t shared = (shape.window + 32) * sizeof(float);
    launch_after_previous(ctx, windowed_attention_kernel<KV>, unsigned(n_tokens * shape.n_head), window_threads, shared, q, keys,
                          values, int(first_position), int(shape.n_head), int(shape.n_head / shape.n_head_kv),
                          int(shape.head_dim), int(shape.kv_stride), int(shape.window), int(shape.ring), shape.scale,
                          shape.sinks, out);
}

// Row r of x to rows p % ring and p % ring + ring of table, p its position (first_position + r, or
// *device_position for a decode step's one row).
__global__ void store_ring_kernel(const float* x, size_t n_rows, size_t width, DeviceCacheRows table,
                                  size_t first_position, const int32_t* device_position, size_t ring) {
    grid_dependency_wait();
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_rows * width) return;
    const size_t r = i / width, c = i % width;
    const size_t row = ((device_position ? size_t(*device_position) : first_position) + r) % ring;
    store_cached(table, row * width + c, x[i]);
    store_cached(table, (row + ring) * width + c, x[i]);
}

// f(keys, values) with the tables as pointers to their element type.
template <class F>
void with_cache_type(CacheRows keys, CacheRows values, F&& f) {
    if (keys.type == KvType::F16) return f(static_cast<const __half*>(keys.data), static_cast<const __half*>(values.data));
    f(static_cast<const float*>(keys.data), static_cast<const float*>(values.data));
}

// A prompt's attention over a float16 cache: gemm_attention's float32 products over the positions
// so far, widened into scratch first (a read of the half-size tables and a write of float32 ones:
// a small part of a prompt's time beside its matrix products; float32 products keep the prompt's
// arithmetic that of a float32 cache).
void gemm_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
                    const AttentionShape& shape, float* out) {
    if (keys.type == KvType::F32) return gemm_attention(ctx, q, keys.f32(), values.f32(), n_tokens, first_position, shape, out);
    DeviceContext& device = device_of(ctx);
    const size_t n = (first_position + n_tokens) * shape.kv_stride;
    float* wide = static_cast<float*>(device.attention_kv.get(2 * n * sizeof(float), device.stream));
    launch_after_previous(ctx, widen_kernel, blocks_for(n, 256), 256, 0, static_cast<const __half*>(keys.data), n, wide);
    launch_after_previous(ctx, widen_kernel, blocks_for(n, 256), 256, 0, static_cast<const __half*>(values.data), n, wide + n);
    gemm_attention(ctx, q, wide, wide + n, n_tokens, first_position, shape, out);
}

// Prompt rows on the general kernel: the positions split in chunks of prompt_chunk (whole tiles)
// counted from position 0, so a row's splits, their tiles and its merge are the same in any call
// (a tile past the row's own position is an exact no-op for it: every score -inf, its rescale
// e^0); tokens taken in groups whose split parts fit prompt_parts_budget.
constexpr int prompt_chunk = 8 * kv_tile;
constexpr size_t prompt_parts_budget = size_t(64) << 20;
template <class KV>
void prompt_rows_attention(Context& ctx, const float* q, const KV* keys, const KV* values, size_t n_tokens,
                           size_t first_position, const AttentionShape& shape, float* out) {
    const size_t row_width = shape.n_head * shape.head_dim;
    const size_t most_splits = (first_position + n_tokens + prompt_chunk - 1) / prompt_chunk;
    const size_t group =
        std::max<size_t>(1, prompt_parts_budget / (shape.n_head * (shape.head_dim + 2) * sizeof(float) * most_splits));
    for (size_t t = 0; t < n_tokens; t += group)
        launch_attention(ctx, q + t * row_width, keys, values, std::min(group, n_tokens - t), first_position + t, nullptr,
                         0, shape, out + t * row_width, {}, prompt_chunk);
}

// AttentionRows::Prompt: every row as it is in any call, whatever the call's other rows and
// wherever a prompt was cut into calls (the server's batch invariance across reused prefixes).
// Sliding windows: windowed_attention_kernel, a block a row, at every position (attention()'s
// shortcut, the causal kernels for a prompt within the window's first positions, would give a row
// another kernel in another call). A float16 cache: the tensor cores' kernel at any length
// (64-position tiles from position 0; a row's tiles past its position are exact no-ops for it).
// Otherwise prompt_rows_attention, never the cuBLAS products (their arithmetic follows the
// problem's size).
void prompt_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens,
                      size_t first_position, const AttentionShape& shape, float* out) {
    if (!shape.window && flash_attention(ctx, q, keys, values, n_tokens, first_position, shape, out)) return;
    with_cache_type(keys, values, [&](auto* k, auto* v) {
        if (shape.window) return windowed_attention(ctx, q, k, v, n_tokens, first_position, shape, out);
        prompt_rows_attention(ctx, q, k, v, n_tokens, first_position, shape, out);
    });
}

}  // namespace

void store_ring(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_position,
                const int32_t* device_position, size_t ring) {
    if (n_rows * width == 0) return;
    launch_after_previous(ctx, store_ring_kernel, blocks_for(n_rows * width, 256), 256, 0, x, n_rows, width,
                          device_rows(table), first_position, device_position, ring);
}

void attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, size_t n_tokens, size_t first_position,
               const AttentionShape& shape, float* out, AttentionRows rows) {
    if (shape.ring && !shape.window) throw std::invalid_argument("attention: a ring layer of the KV cache needs a window");
    if (rows == AttentionRows::Prompt) return prompt_attention(ctx, q, keys, values, n_tokens, first_position, shape, out);
    if (rows == AttentionRows::Decode && n_tokens > 1) {   // each token as one alone
        const size_t row_width = shape.n_head * shape.head_dim;
        for (size_t t = 0; t < n_tokens; ++t)
            cuda::attention(ctx, q + t * row_width, keys, values, 1, first_position + t, shape, out + t * row_width, rows);
        return;
    }
    // A prompt that ends within a window's first positions is causal attention (no row's window
    // starts past position 0), and a ring holds those positions at their own rows (position <
    // window <= ring): the prompt kernels take it (windowed_attention_kernel's block a (token, head)
    // took 0.63 ms a layer for a 512-token prompt of Gemma 3 270M).
    if (shape.window && first_position + n_tokens <= shape.window) {
        AttentionShape causal = shape;
        causal.window = causal.ring = 0;
        return cuda::attention(ctx, q, keys, values, n_tokens, first_position, causal, out, rows);
    }
    if (!shape.window && n_tokens >= min_gemm_tokens && shape.n_head_kv != 0 && shape.n_head % shape.n_head_kv == 0) {
        if (flash_attention(ctx, q, keys, values, n_tokens, first_position, shape, out)) return;
        return gemm_attention(ctx, q, keys, values, n_tokens, first_position, shape, out);
    }
    with_cache_type(keys, values, [&](auto* k, auto* v) {
        if (shape.window) return windowed_attention(ctx, q, k, v, n_tokens, first_position, shape, out);
        launch_attention(ctx, q, k, v, n_tokens, first_position, nullptr, 0, shape, out);
    });
}

void attention_at(Context& ctx, const float* q, CacheRows keys, CacheRows values, const int32_t* position,
                  size_t max_positions, const AttentionShape& shape, float* out) {
    with_cache_type(keys, values, [&](auto* k, auto* v) {
        // The output also quantized for the int8 product that reads it next (Wo), where head_dim
        // splits into whole 32-value blocks, saving that product a quantization launch.
        const size_t width = shape.n_head * shape.head_dim;
        const QuantizedActivations out_int8 =
            shape.head_dim % 32 == 0 ? prepared_int8_scratch(ctx, width) : QuantizedActivations{};
        // A sliding window: the decode kernels over the window's positions (the general kernel,
        // one block staging tiles for all of a KV head's query heads, was Gemma 3's slowest decode
        // launch: BENCHMARKS.md, session 23).
        const size_t positions = shape.window ? std::min(max_positions, shape.window) : max_positions;
        if (!launch_decode_attention(ctx, q, k, v, position, positions, shape, out, out_int8))
            launch_attention(ctx, q, k, v, 1, 0, position, positions, shape, out, out_int8);
        if (out_int8.qs) publish_prepared_int8(ctx, out, width, out_int8);
    });
}

void decode_rows_attention(Context& ctx, const float* q, CacheRows keys, CacheRows values, const DecodeRows& rows,
                    size_t slot_stride, const AttentionShape& shape, float* out) {
    if (shape.ring && !shape.window) throw std::invalid_argument("decode_rows_attention: a ring layer of the KV cache needs a window");
    with_cache_type(keys, values, [&](auto* k, auto* v) {
        launch_attention(ctx, q, k, v, 1, 0, nullptr, rows.max_length, shape, out, {}, 0, &rows, slot_stride);
    });
}

void store_rows(Context& ctx, const float* x, size_t n_rows, size_t width, CacheRows table, size_t first_row) {
    if (n_rows * width == 0) return;
    launch_after_previous(ctx, store_rows_kernel, blocks_for(n_rows * width, 256), 256, 0, x, n_rows, width,
                          device_rows(table), first_row, static_cast<const int32_t*>(nullptr));
}

void store_row(Context& ctx, const float* x, size_t width, CacheRows table, const int32_t* row) {
    if (width == 0) return;
    launch_after_previous(ctx, store_rows_kernel, blocks_for(width, 256), 256, 0, x, size_t(1), width, device_rows(table),
                          size_t(0), row);
}

}  // namespace twinfer::compute::cuda
