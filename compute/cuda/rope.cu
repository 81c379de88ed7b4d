// Rotary position embedding: one thread per (token, head, pair), so that every load is in flight at
// once (a thread looping over the heads waited out a memory round trip per head: 16 us for one
// token). The angles: rope.cuh.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/attention.hpp"
#include "compute/cuda/cache_rows.cuh"
#include "compute/cuda/device_context.cuh"
#include "compute/cuda/ops.hpp"
#include "compute/cuda/rope.cuh"
#include "compute/rope.hpp"

namespace twinfer::compute::cuda {
namespace {

// Turns pair `pair` of one head in place.
__device__ __forceinline__ void rotate_pair(float* head, size_t position, int pair, const Rotation& r) {
    float2 cs = rotation_at(position, pair_frequency(pair, r));
    cs.x *= r.magnitude, cs.y *= r.magnitude;
    const int a = r.adjacent ? 2 * pair : pair;
    const int b = r.adjacent ? 2 * pair + 1 : pair + r.n_rot / 2;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * cs.x - x1 * cs.y;
    head[b] = x0 * cs.y + x1 * cs.x;
}

// device_position (device memory), when not null, replaces first_position.
__global__ void rope_kernel(float* x, int n_tokens, size_t row_stride, int n_heads, int head_dim, size_t first_position,
                            const int32_t* device_position, Rotation rotation) {
    grid_dependency_wait();
    const int n_pairs = rotation.n_rot / 2;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tokens * n_heads * n_pairs) return;
    if (device_position) first_position = size_t(*device_position);
    const int t = i / (n_heads * n_pairs), h = i / n_pairs % n_heads, pair = i % n_pairs;
    rotate_pair(x + t * row_stride + size_t(h) * head_dim, first_position + t, pair, rotation);
}

// A decode step's q and k rotated and its k and v rows stored in the cache, in one launch: one
// thread per (head, pair) of q, then of k, then per value of v. k's dimensions beyond n_rot are
// copied by the threads of the pairs beyond n_rot / 2.
__global__ void rope_store_kernel(float* q, int n_head, float* k, const float* v, int n_head_kv, int head_dim,
                                  const int32_t* device_position, Rotation rotation, DeviceCacheRows keys,
                                  DeviceCacheRows values) {
    grid_dependency_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int q_threads = n_head * (rotation.n_rot / 2), k_threads = n_head_kv * (head_dim / 2);
    const int kv_width = n_head_kv * head_dim;
    const size_t position = size_t(*device_position);
    if (i < q_threads) {
        rotate_pair(q + size_t(i / (rotation.n_rot / 2)) * head_dim, position, i % (rotation.n_rot / 2), rotation);
    } else if (i < q_threads + k_threads) {
        const int j = i - q_threads, h = j / (head_dim / 2), pair = j % (head_dim / 2);
        float* head = k + size_t(h) * head_dim;
        const size_t cached = position * kv_width + size_t(h) * head_dim;
        if (pair < rotation.n_rot / 2) {
            rotate_pair(head, position, pair, rotation);
            const int a = rotation.adjacent ? 2 * pair : pair;
            const int b = rotation.adjacent ? 2 * pair + 1 : pair + rotation.n_rot / 2;
            store_cached(keys, cached + a, head[a]), store_cached(keys, cached + b, head[b]);
        } else {
            const int d = rotation.n_rot + 2 * (pair - rotation.n_rot / 2);
            store_cached(keys, cached + d, head[d]), store_cached(keys, cached + d + 1, head[d + 1]);
        }
    } else if (i < q_threads + k_threads + kv_width) {
        const int j = i - q_threads - k_threads;
        store_cached(values, position * kv_width + j, v[j]);
    }
}

// The decode rows of a batched pass (compute::decode_rows_rope_store): a row of blocks per row (y), its
// threads as rope_store_kernel's (q's pairs, k's pairs, v's values), at the row's own slot and
// position; a rotation of no pairs (n_rot 0: NoPE) stores k as it is. A ring layer's row goes
// to both of its rows.
__global__ void decode_rows_rope_store_kernel(float* q, int n_head, float* k, const float* v, int n_head_kv, int head_dim,
                                       const int32_t* slot_positions, size_t slot_stride, size_t ring, Rotation rotation,
                                       DeviceCacheRows keys, DeviceCacheRows values) {
    grid_dependency_wait();
    const int row = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int n_pairs = rotation.n_rot / 2;
    const int q_threads = n_head * n_pairs, k_threads = n_head_kv * (head_dim / 2), kv_width = n_head_kv * head_dim;
    if (i >= q_threads + k_threads + kv_width) return;
    const size_t slot = size_t(slot_positions[2 * row]), position = size_t(slot_positions[2 * row + 1]);
    const size_t cached = slot * slot_stride + (ring ? position % ring : position) * kv_width;
    const auto store = [&](DeviceCacheRows table, size_t c, float x) {
        store_cached(table, cached + c, x);
        if (ring) store_cached(table, cached + ring * kv_width + c, x);
    };
    q += size_t(row) * n_head * head_dim;
    k += size_t(row) * kv_width;
    v += size_t(row) * kv_width;
    if (i < q_threads) {
        rotate_pair(q + size_t(i / n_pairs) * head_dim, position, i % n_pairs, rotation);
    } else if (i < q_threads + k_threads) {
        const int j = i - q_threads, h = j / (head_dim / 2), pair = j % (head_dim / 2);
        float* head = k + size_t(h) * head_dim;
        if (pair < n_pairs) {
            rotate_pair(head, position, pair, rotation);
            const int a = rotation.adjacent ? 2 * pair : pair;
            const int b = rotation.adjacent ? 2 * pair + 1 : pair + n_pairs;
            store(keys, size_t(h) * head_dim + a, head[a]), store(keys, size_t(h) * head_dim + b, head[b]);
        } else {
            const int d = 2 * n_pairs + 2 * (pair - n_pairs);
            store(keys, size_t(h) * head_dim + d, head[d]), store(keys, size_t(h) * head_dim + d + 1, head[d + 1]);
        }
    } else {
        const int j = i - q_threads - k_threads;
        store(values, j, v[j]);
    }
}

// compute::norm_rope_store_at: a block a head (q's, then k's, then v's), a thread two of its
// dimensions (a pair RoPE turns, or two consecutive ones past n_rot): the head's RMSNorm reduced
// over the block, the rotation, and k's and v's heads stored at the position's cache row (both of
// a ring's). One launch where the norms, the rotations and the stores took two to six.
__global__ void norm_rope_store_kernel(float* q, int n_head, float* k, const float* v, int n_head_kv, int head_dim,
                                       const int32_t* device_position, Rotation rotation, const float* q_norm, const float* k_norm, float eps, DeviceCacheRows keys,
                                       DeviceCacheRows values, size_t ring) {
    grid_dependency_wait();
    const int head = blockIdx.x, pair = threadIdx.x;
    const bool is_q = head < n_head, is_k = !is_q && head < n_head + n_head_kv;
    const int kv_head = is_q ? 0 : is_k ? head - n_head : head - n_head - n_head_kv;
    const int n_pairs = rotation.n_rot / 2;
    const bool active = pair < head_dim / 2;
    const int a = pair < n_pairs && !rotation.adjacent ? pair : 2 * pair;
    const int b = pair < n_pairs && !rotation.adjacent ? pair + n_pairs : 2 * pair + 1;
    float* x = is_q ? q + size_t(head) * head_dim : is_k ? k + size_t(kv_head) * head_dim : nullptr;
    const float* in = x ? x : v + size_t(kv_head) * head_dim;
    float x0 = active ? in[a] : 0.0f, x1 = active ? in[b] : 0.0f;
    const float* norm = is_q ? q_norm : is_k ? k_norm : nullptr;
    if (norm) {   // the same for the whole block
        const float inv_rms = rsqrtf(block_sum(x0 * x0 + x1 * x1) / head_dim + eps);
        if (active) x0 = x0 * inv_rms * norm[a], x1 = x1 * inv_rms * norm[b];
    }
    if (!active) return;
    const size_t position = size_t(*device_position);
    if (x && pair < n_pairs) {
        float2 cs = rotation_at(position, pair_frequency(pair, rotation));
        cs.x *= rotation.magnitude, cs.y *= rotation.magnitude;
        const float y0 = x0 * cs.x - x1 * cs.y, y1 = x0 * cs.y + x1 * cs.x;
        x0 = y0, x1 = y1;
    }
    if (x) x[a] = x0, x[b] = x1;
    if (is_q) return;
    const DeviceCacheRows table = is_k ? keys : values;
    const size_t width = size_t(n_head_kv) * head_dim;
    const size_t cached = (ring ? position % ring : position) * width + size_t(kv_head) * head_dim;
    store_cached(table, cached + a, x0), store_cached(table, cached + b, x1);
    if (ring) store_cached(table, cached + ring * width + a, x0), store_cached(table, cached + ring * width + b, x1);
}

}  // namespace

Rotation rotation_of(Context& ctx, const RopeParams& params) {
    DeviceContext& device = device_of(ctx);
    const size_t n_pairs = params.n_rot / 2;
    const auto same = [&](const RopeFrequencies& t) {
        return t.n_rot == params.n_rot && t.freq_base == params.freq_base && t.position_scale == params.position_scale &&
               t.freq_factors == params.freq_factors;
    };
    auto table = std::find_if(device.rope_frequencies.begin(), device.rope_frequencies.end(), same);
    if (table == device.rope_frequencies.end()) {
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        TWINFER_CUDA_CHECK(cudaStreamIsCapturing(device.stream, &capture));
        if (capture != cudaStreamCaptureStatusNone)
            throw Error("rope: new rotation parameters while a CUDA graph is being captured");
        std::vector<float> factors(params.freq_factors ? n_pairs : 0);
        if (params.freq_factors) download(ctx, factors.data(), params.freq_factors, n_pairs * sizeof(float));
        const std::vector<double> frequencies = pair_frequencies(params, factors);
        table = device.rope_frequencies.emplace(device.rope_frequencies.end());
        void* values = table->values.get(std::max<size_t>(n_pairs, 1) * sizeof(double), device.stream);
        upload(ctx, values, frequencies.data(), n_pairs * sizeof(double));
        table->n_rot = params.n_rot, table->freq_base = params.freq_base, table->position_scale = params.position_scale;
        table->freq_factors = params.freq_factors;
    }
    return {int(params.n_rot), static_cast<const double*>(table->values.address()),
            params.pairing == RopeParams::Pairing::Adjacent, float(params.magnitude)};
}

namespace {

void check_rotation(const RopeParams& params, size_t head_dim) {
    if (params.n_rot % 2 != 0 || params.n_rot > head_dim || head_dim % 2 != 0)
        throw std::invalid_argument("rope: n_rot " + std::to_string(params.n_rot) + " must be even and at most head_dim " +
                                    std::to_string(head_dim) + " (even)");
}

void launch_rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
                 size_t first_position, const int32_t* device_position, const RopeParams& params) {
    check_rotation(params, head_dim);
    const size_t n = n_tokens * n_heads * (params.n_rot / 2);
    if (n == 0) return;
    launch_after_previous(ctx, rope_kernel, blocks_for(n, 128), 128, 0, x, int(n_tokens), row_stride, int(n_heads),
                          int(head_dim), first_position, device_position, rotation_of(ctx, params));
}

// rope's rotation, or one of no pairs where there is none (a NoPE layer); head_dim even either way.
Rotation rotation_or_none(Context& ctx, const RopeParams* rope, size_t head_dim, const char* op) {
    if (head_dim % 2 != 0) throw std::invalid_argument(std::string(op) + ": head_dim " + std::to_string(head_dim) + " must be even");
    if (!rope) return {0, nullptr, true, 1.0f};
    check_rotation(*rope, head_dim);
    return rotation_of(ctx, *rope);
}

}  // namespace

void rope(Context& ctx, float* x, size_t n_tokens, size_t row_stride, size_t n_heads, size_t head_dim,
          size_t first_position, const RopeParams& params) {
    launch_rope(ctx, x, n_tokens, row_stride, n_heads, head_dim, first_position, nullptr, params);
}

void rope_at(Context& ctx, float* x, size_t n_heads, size_t head_dim, const int32_t* position, const RopeParams& params) {
    launch_rope(ctx, x, 1, n_heads * head_dim, n_heads, head_dim, 0, position, params);
}

void rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                   const int32_t* position, const RopeParams& params, CacheRows keys, CacheRows values) {
    check_rotation(params, head_dim);
    const size_t n = n_head * (params.n_rot / 2) + n_head_kv * (head_dim / 2) + n_head_kv * head_dim;
    launch_after_previous(ctx, rope_store_kernel, blocks_for(n, 128), 128, 0, q, int(n_head), k, v, int(n_head_kv),
                          int(head_dim), position, rotation_of(ctx, params), device_rows(keys), device_rows(values));
}

void decode_rows_rope_store(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv,
                            size_t head_dim, const DecodeRows& rows, const RopeParams* rope, CacheRows keys,
                            CacheRows values, size_t slot_stride, size_t ring) {
    const Rotation rotation = rotation_or_none(ctx, rope, head_dim, "decode_rows_rope_store");
    if (rows.n_rows == 0) return;
    const size_t n = n_head * size_t(rotation.n_rot / 2) + n_head_kv * (head_dim / 2) + n_head_kv * head_dim;
    launch_after_previous(ctx, decode_rows_rope_store_kernel, dim3(blocks_for(n, 128), unsigned(rows.n_rows)), 128, 0, q,
                          int(n_head), k, v, int(n_head_kv), int(head_dim), rows.slot_positions, slot_stride, ring, rotation,
                          device_rows(keys), device_rows(values));
}

void norm_rope_store_at(Context& ctx, float* q, size_t n_head, float* k, const float* v, size_t n_head_kv, size_t head_dim,
                        const int32_t* position, const RopeParams* rope, const HeadNorms& norms, CacheRows keys,
                        CacheRows values, size_t ring) {
    if (head_dim > 2048) throw std::invalid_argument("norm_rope_store_at: head_dim " + std::to_string(head_dim) + " above 2048");
    const Rotation rotation = rotation_or_none(ctx, rope, head_dim, "norm_rope_store_at");
    const unsigned threads = unsigned((head_dim / 2 + 31) / 32 * 32);
    launch_after_previous(ctx, norm_rope_store_kernel, unsigned(n_head + 2 * n_head_kv), threads, 0, q, int(n_head), k, v,
                          int(n_head_kv), int(head_dim), position, rotation, norms.q, norms.k, norms.eps, device_rows(keys),
                          device_rows(values), ring);
}

}  // namespace twinfer::compute::cuda
