// Matrix products against quantized weights on the GPU: the file's block format for K-quants and
// float types, the planar layout (quant_decode.cuh, made by place_weights) for the int8 kernels'
// types.
//
// One token (decode), float activations: y = W x is a read of W, so the kernel streams each row
// once, decoding 32 weights per lane per step (quant_decode.cuh), with x staged in shared memory
// and each warp carrying two rows so that every x value loaded serves both. Int8 activations take
// matvec_int8.cu.
//
// Several tokens (prompt): W is dequantized to float16 once and multiplied by the float16-rounded
// activations in cuBLAS on the tensor cores, accumulating in float32. The error is the two
// roundings to float16 (relative 2^-11 at most, each): a relative error of a few 1e-4 in y, the
// size of the error the tests allow (cuda_ops_test.cpp). F32 weights use a float32 cuBLAS product.
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>
#include <type_traits>
#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/experts.cuh"
#include "compute/cuda/matvec_int8.cuh"
#include "compute/cuda/ops.hpp"
#include "compute/cuda/quant_decode.cuh"
#include "compute/experts.hpp"
#include "compute/matmul.hpp"

namespace twinfer::compute::cuda {
namespace {

constexpr int matvec_warps = 8;
constexpr int rows_per_warp = 2;
constexpr int rows_per_block = matvec_warps * rows_per_warp;
// x in shared memory: 32 values per unit, padded to 36 so that the lanes' 16-byte reads of
// consecutive units fall in different banks; then the sum of each 16 values.
constexpr int padded_unit = 36;
// Fewer tokens than this run one matrix-vector product each: below it, reading W once per token
// costs less than writing and reading its float16 copy.
constexpr size_t min_gemm_tokens = 8;
// matmul_row_tiles' cuBLAS calls: rows each (a multiple of min_gemm_tokens).
constexpr size_t row_tile = 32;

size_t matvec_shared_bytes(size_t cols) { return (cols / 32 * padded_unit + (cols / 16 + 3) / 4 * 4) * sizeof(float); }

// Rows in the file's layout that are staged through shared memory (Q2_K, Q3_K: the planar types
// are read in place, their codes already contiguous, and so are the float types): a warp's 32
// consecutive units of one row, four whole blocks, in bytes; 0 for a type read in place.
template <GGMLType T> __host__ __device__ constexpr size_t segment_bytes() {
    switch (T) {
    case GGMLType::Q2_K: return 4 * 84;
    case GGMLType::Q3_K: return 4 * 110;
    default: return 0;
    }
}
// Staged rows are loaded per warp into shared memory with coalesced 4-byte loads, many in flight,
// then decoded from there: a lane reading its own block straight from global memory would touch a
// sector per lane per load, and L1 traffic and latency, not DRAM, would bound the kernel.
template <GGMLType T> __host__ __device__ constexpr bool staged() { return segment_bytes<T>() != 0; }
// Segments staged at once, as many as fit in `staging_budget` bytes per block (up to the whole
// row): all their loads are in flight together, which is what hides DRAM's latency.
constexpr size_t staging_budget = 96 * 1024;
template <GGMLType T> int segments_per_stage(size_t cols) {
    if constexpr (!staged<T>()) {
        return 0;  // read in place
    } else {
        const size_t per_segment = matvec_warps * rows_per_warp * segment_bytes<T>();
        const size_t segments = (cols / 32 + 31) / 32;
        return int(std::max<size_t>(1, std::min(segments, staging_budget / per_segment)));
    }
}

// Stage: staged<T>() and rows a whole number of 4-byte words (not so for an odd number of Q3_K
// blocks, which are read in place).
template <GGMLType T, bool Stage>
__global__ void __launch_bounds__(matvec_warps * 32)
matvec_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int rows, int cols, const float* __restrict__ x,
              float* __restrict__ y, bool accumulate, int stage_segments, const int32_t* __restrict__ expert_ids,
              int all_rows, int x_stride) {
    grid_dependency_wait();
    // Expert products (matmul_experts): block row j multiplies the rows of expert expert_ids[j]
    // (rows of them from all_rows) by x_j into y_j.
    const int first_expert_row = expert_ids ? expert_ids[blockIdx.y] * rows : 0;
    x += size_t(blockIdx.y) * x_stride;
    y += size_t(blockIdx.y) * rows;
    extern __shared__ __align__(16) float shared[];
    const int units = cols / 32;
    float* xs = shared;
    float* sums = shared + units * padded_unit;
    const size_t stage_bytes = (stage_segments * segment_bytes<T>() + 15) / 16 * 16;  // per row
    auto* staging = reinterpret_cast<uint8_t*>(sums + (cols / 16 + 3) / 4 * 4);
    // x in 16-byte pieces, four loads in flight per thread before the stores (a load-store chain
    // per piece would wait out the L2 latency cols / 1024 times in a row).
    const auto* x4 = reinterpret_cast<const float4*>(x);
    for (int i0 = threadIdx.x; i0 < cols / 4; i0 += 4 * blockDim.x) {
        float4 v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
            if (i0 + k * int(blockDim.x) < cols / 4) v[k] = x4[i0 + k * blockDim.x];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int i = i0 + k * blockDim.x;
            if (i < cols / 4) *reinterpret_cast<float4*>(xs + (i / 8) * padded_unit + (i % 8) * 4) = v[k];
        }
    }
    __syncthreads();
    for (int g = threadIdx.x; g < cols / 16; g += blockDim.x) {
        const float* v = xs + (g / 2) * padded_unit + (g % 2) * 16;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) s += v[k];
        sums[g] = s;
    }
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_row = (blockIdx.x * matvec_warps + warp) * rows_per_warp;
    if (first_row >= rows) return;
    const uint8_t* row[rows_per_warp];
#pragma unroll
    for (int r = 0; r < rows_per_warp; ++r) row[r] = w + size_t(first_expert_row + min(first_row + r, rows - 1)) * row_bytes;
    uint8_t* my_staging = staging + warp * rows_per_warp * stage_bytes;
    float acc[rows_per_warp] = {};
    const int stage_units = Stage ? 32 * stage_segments : 32;
    for (int stage = 0; stage < units; stage += stage_units) {
        if constexpr (Stage) {
            const size_t begin = size_t(stage / 32) * segment_bytes<T>();   // stage: a multiple of 32 units
            const size_t words = min(stage_segments * segment_bytes<T>(), row_bytes - begin) / 4;
            __syncwarp();  // the previous stage is decoded
#pragma unroll
            for (int r = 0; r < rows_per_warp; ++r) {
                const auto* src = reinterpret_cast<const uint32_t*>(row[r] + begin);
                auto* dst = reinterpret_cast<uint32_t*>(my_staging + r * stage_bytes);
                // Eight loads issued before the first store: one at a time, each would wait out DRAM's latency.
                for (size_t i0 = lane; i0 < words; i0 += 32 * 8) {
                    uint32_t v[8];
#pragma unroll
                    for (int k = 0; k < 8; ++k) v[k] = i0 + 32 * k < words ? __ldg(src + i0 + 32 * k) : 0u;
#pragma unroll
                    for (int k = 0; k < 8; ++k)
                        if (i0 + 32 * k < words) dst[i0 + 32 * k] = v[k];
                }
            }
            __syncwarp();
        }
        for (int base = stage; base < min(units, stage + stage_units); base += 32) {
            const int unit = base + lane;
            if (unit >= units) break;
            float xv[32];
            const auto* x4 = reinterpret_cast<const float4*>(xs + unit * padded_unit);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float4 f = x4[i];
                xv[4 * i] = f.x, xv[4 * i + 1] = f.y, xv[4 * i + 2] = f.z, xv[4 * i + 3] = f.w;
            }
            const float sum0 = sums[2 * unit], sum1 = sums[2 * unit + 1];
#pragma unroll
            for (int r = 0; r < rows_per_warp; ++r) {
                Unit u;
                if constexpr (Stage) {
                    const uint8_t* segment = my_staging + r * stage_bytes + (base - stage) / 32 * segment_bytes<T>();
                    decode_unit<T>(segment, lane, u);
                } else {
                    load_unit<T>(DeviceMatrix{w, row_bytes, all_rows, cols}, first_expert_row + min(first_row + r, rows - 1),
                                 unit, u);
                }
                float dot0 = 0.0f, dot1 = 0.0f;
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    dot0 = fmaf(u.q[k], xv[k], dot0);
                    dot1 = fmaf(u.q[16 + k], xv[16 + k], dot1);
                }
                acc[r] += u.a[0] * dot0 + u.b[0] * sum0 + u.a[1] * dot1 + u.b[1] * sum1;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < rows_per_warp; ++r) {
        const float total = warp_sum(acc[r]);
        if (lane == 0 && first_row + r < rows) y[first_row + r] = accumulate ? y[first_row + r] + total : total;
    }
}

// One thread per unit of 32 weights: out[r, :] = W[r, :] as OutT, written 16 bytes at a time (32
// two-byte stores per thread, each warp instruction touching 32 lines, ran at a tenth of DRAM's
// rate and made this kernel 70% of a 7B model's prompt time).
// Unit `unit` of row r of w as 32 values of OutT at out (16-byte aligned).
template <GGMLType T, class OutT>
__device__ __forceinline__ void dequantize_unit(const DeviceMatrix& w, size_t r, int unit, OutT* __restrict__ out) {
    Unit u;
    load_unit<T>(w, int(r), unit, u);
    constexpr int per_store = 16 / sizeof(OutT);
    auto* dst = reinterpret_cast<uint4*>(out);
#pragma unroll
    for (int s = 0; s < 32 / per_store; ++s) {
        alignas(16) OutT v[per_store];
#pragma unroll
        for (int j = 0; j < per_store; ++j) {
            const int k = s * per_store + j;
            const float value = u.a[k / 16] * u.q[k] + u.b[k / 16];
            if constexpr (std::is_same_v<OutT, float>) v[j] = value;
            else v[j] = __float2half_rn(value);
        }
        dst[s] = *reinterpret_cast<const uint4*>(v);
    }
}

template <GGMLType T, class OutT>
__global__ void dequantize_kernel(const uint8_t* __restrict__ w, size_t row_bytes, size_t rows, int cols,
                                  OutT* __restrict__ out) {
    const int units = cols / 32;
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * units) return;
    dequantize_unit<T>(DeviceMatrix{w, row_bytes, int(rows), cols}, i / units, int(i % units), out + i * 32);
}

// A grouped product's tiles (matmul_expert_groups): 64 of an expert's weight rows by 64 of its
// token rows, four warps of 32 x 32 (2 x 2 WMMA fragments of 16 x 16, float16 in, float32
// accumulated), K in steps of 64. Each step a thread decodes one 32-weight unit of the weight
// tile (dequantize_kernel's arithmetic, into shared memory: the experts are read in their own
// blocks, no float16 copy of them is written) and holds its share of the next step's token tile
// in registers while the tensor cores work. Rows padded by 8 halves (16 bytes): WMMA wants
// 32-byte aligned fragment pointers, and the padding staggers the rows over the banks.
constexpr int group_tile = 64, group_k = 64, group_stride = group_k + 8, group_threads = 128;
constexpr int group_pieces = group_tile * group_k / 8 / group_threads;   // 16-byte loads of x a thread a step
static_assert(group_tile * group_k / 32 == group_threads, "a unit of the weight tile a thread a step");

// y[r] = W_e x[r] for expert e = blockIdx.z's rows r = offsets[e] + blockIdx.y * 64 .., weight rows
// blockIdx.x * 64 ..: w the experts ([gridDim.z * rows, cols], as matvec reads them), x float16
// ([, cols]), y float ([, rows]). cols a multiple of 32 (a unit or a 16-byte piece of x is all in
// or all out of the last step).
template <GGMLType T>
__global__ void __launch_bounds__(group_threads)
expert_groups_gemm_kernel(const uint8_t* __restrict__ w, size_t row_bytes, const __half* __restrict__ x,
                          const int32_t* __restrict__ offsets, int rows, int cols, float* __restrict__ y) {
    using namespace nvcuda;
    const int e = int(blockIdx.z), first = offsets[e], count = offsets[e + 1] - first;
    const int token0 = int(blockIdx.y) * group_tile, row0 = int(blockIdx.x) * group_tile;
    if (token0 >= count) return;
    __shared__ __align__(128) __half ws[group_tile][group_stride];
    __shared__ __align__(128) __half xs[group_tile][group_stride];
    __shared__ __align__(128) float cs[group_tile][group_tile + 4];   // [token][row]
    const DeviceMatrix experts{w, row_bytes, rows * int(gridDim.z), cols};
    const __half* x_rows = x + (size_t(first) + token0) * cols;
    const int n_rows = min(group_tile, rows - row0), n_tokens = min(group_tile, count - token0);
    const int unit_row = int(threadIdx.x) / (group_k / 32), unit_in_step = int(threadIdx.x) % (group_k / 32);
    uint4 x_next[group_pieces];
    auto load_x = [&](int k0) {
#pragma unroll
        for (int p = 0; p < group_pieces; ++p) {
            const int piece = int(threadIdx.x) + p * group_threads, r = piece / (group_k / 8), c = k0 + piece % (group_k / 8) * 8;
            x_next[p] = c < cols && r < n_tokens ? *reinterpret_cast<const uint4*>(x_rows + size_t(r) * cols + c) : uint4{};
        }
    };
    const int warp = int(threadIdx.x) / 32, warp_row = warp / 2 * 32, warp_token = warp % 2 * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    load_x(0);
    for (int k0 = 0; k0 < cols; k0 += group_k) {
        __half* unit_out = &ws[unit_row][unit_in_step * 32];
        const int unit = k0 / 32 + unit_in_step;
        if (unit_row < n_rows && unit < cols / 32) {
            dequantize_unit<T>(experts, size_t(e) * rows + row0 + unit_row, unit, unit_out);
        } else {
#pragma unroll
            for (int s = 0; s < 4; ++s) reinterpret_cast<uint4*>(unit_out)[s] = uint4{};
        }
#pragma unroll
        for (int p = 0; p < group_pieces; ++p) {
            const int piece = int(threadIdx.x) + p * group_threads, r = piece / (group_k / 8), c = piece % (group_k / 8) * 8;
            *reinterpret_cast<uint4*>(&xs[r][c]) = x_next[p];
        }
        __syncthreads();
        if (k0 + group_k < cols) load_x(k0 + group_k);
#pragma unroll
        for (int kk = 0; kk < group_k; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];     // W [row][k]
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];     // x^T: x [token][k]
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &ws[warp_row + 16 * i][kk], group_stride);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &xs[warp_token + 16 * j][kk], group_stride);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)   // element (row, token) at cs[token][row]
            wmma::store_matrix_sync(&cs[warp_token + 16 * j][warp_row + 16 * i], acc[i][j], group_tile + 4, wmma::mem_col_major);
    __syncthreads();
    for (int i = int(threadIdx.x); i < group_tile * group_tile; i += group_threads) {
        const int t = i / group_tile, r = i % group_tile;
        if (t < n_tokens && r < n_rows) y[(size_t(first) + token0 + t) * rows + row0 + r] = cs[t][r];
    }
}

template <GGMLType T>
__global__ void get_rows_kernel(const uint8_t* __restrict__ table, size_t row_bytes, int rows, int cols,
                                const int32_t* __restrict__ ids, float* __restrict__ out) {
    const DeviceMatrix m{table, row_bytes, rows, cols};
    const int row = ids[blockIdx.x];
    float* dst = out + size_t(blockIdx.x) * cols;
    for (int unit = threadIdx.x; unit < cols / 32; unit += blockDim.x) {
        Unit u;
        load_unit<T>(m, row, unit, u);
#pragma unroll
        for (int k = 0; k < 32; ++k) dst[unit * 32 + k] = u.a[k / 16] * u.q[k] + u.b[k / 16];
    }
}

__global__ void to_half_kernel(const float* __restrict__ x, size_t n, __half* __restrict__ out) {
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half_rn(x[i]);
}

// Float weights whose rows are not a whole number of 32-weight units (a feed-forward width of
// 172, say): one warp per row reading the weights in place, x from global memory.
bool is_float_type(GGMLType t) { return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16; }
bool ragged_float(const WeightMatrix& w) { return w.cols % 32 != 0 && is_float_type(w.type); }

__device__ float load_weight(GGMLType type, const uint8_t* row, int i) {
    if (type == GGMLType::F32) return reinterpret_cast<const float*>(row)[i];
    if (type == GGMLType::F16) return __half2float(reinterpret_cast<const __half*>(row)[i]);
    return __uint_as_float(uint32_t(reinterpret_cast<const uint16_t*>(row)[i]) << 16);  // BF16
}

// expert_ids, x_stride: as matvec_kernel's (matmul_experts).
__global__ void ragged_matvec_kernel(GGMLType type, const uint8_t* __restrict__ w, size_t row_bytes, int rows, int cols,
                                     const float* __restrict__ x, float* __restrict__ y, bool accumulate,
                                     const int32_t* __restrict__ expert_ids, int x_stride) {
    grid_dependency_wait();
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int first_expert_row = expert_ids ? expert_ids[blockIdx.y] * rows : 0;
    x += size_t(blockIdx.y) * x_stride;
    y += size_t(blockIdx.y) * rows;
    const uint8_t* r = w + size_t(first_expert_row + row) * row_bytes;
    float acc = 0.0f;
    for (int i = lane; i < cols; i += 32) acc = fmaf(load_weight(type, r, i), x[i], acc);
    acc = warp_sum(acc);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

__global__ void ragged_get_rows_kernel(GGMLType type, const uint8_t* __restrict__ table, size_t row_bytes, int cols,
                                       const int32_t* __restrict__ ids, float* __restrict__ out) {
    const uint8_t* row = table + size_t(ids[blockIdx.x]) * row_bytes;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[size_t(blockIdx.x) * cols + i] = load_weight(type, row, i);
}

void check_shape(const WeightMatrix& w) {
    const size_t block = type_traits(w.type).block_size;
    if (w.cols % 32 != 0 || w.cols % block != 0)
        throw std::invalid_argument("CUDA matmul: " + std::to_string(w.cols) + " columns of " +
                                    std::string(type_name(w.type)) + " are not a whole number of 32-weight units");
    if (w.planar != planar_layout(w.type))
        throw std::invalid_argument(std::string("CUDA matmul: ") + std::string(type_name(w.type)) + " weights " +
                                    (w.planar ? "in a planar layout it does not have" : "in the file's layout") +
                                    ": place them with compute::place_weights");
}

// GGUF's blocks to the planar layout (quant_decode.cuh), one thread per 32-weight block of the
// n_blocks (a K type's sub-block: its super-block's header copied by the thread of sub-block 0).
template <GGMLType T>
__global__ void repack_kernel(const uint8_t* __restrict__ blocks, size_t n_blocks, uint8_t* __restrict__ planar) {
    const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    using P = Planar<T>;
    const PlanarView<T> view(planar, n_blocks);
    auto* codes = const_cast<uint8_t*>(view.codes_of(i));
    auto* high = const_cast<uint8_t*>(view.high_of(i));
    auto* scales = const_cast<uint8_t*>(view.scales_of(i));
    if constexpr (!k_type<T>) {
        // The file's block: scales, fifth bits, codes (already in the planar order).
        const uint8_t* block = blocks + i * (P::code_bytes + P::high_bytes + P::scale_bytes);
        for (int k = 0; k < P::scale_bytes; ++k) scales[k] = block[k];
        for (int k = 0; k < P::high_bytes; ++k) high[k] = block[P::scale_bytes + k];
        for (int k = 0; k < P::code_bytes; ++k) codes[k] = block[P::scale_bytes + P::high_bytes + k];
    } else {
        // Sub-block `sub` of a super-block: weight e's low four bits and high bits as ggml lays them
        // (Q4_K, Q5_K: a nibble of byte 32 * (sub / 2) + e of qs, the fifth bit bit `sub` of qh[e];
        // Q6_K: a nibble of ql, two bits of qh, by halves of 128 weights).
        constexpr size_t super_bytes = 8 * (P::code_bytes + P::high_bytes) + P::group_bytes;   // same size as the file's
        const uint8_t* block = blocks + i / 8 * super_bytes;
        const int sub = int(i % 8);
        uint8_t low[32], high_bits[32];
        for (int e = 0; e < 32; ++e) {
            if constexpr (T == GGMLType::Q6_K) {
                const int half = sub / 4, s = sub % 4;
                low[e] = (block[64 * half + 32 * (s % 2) + e] >> (4 * (s / 2))) & 0xf;
                high_bits[e] = (block[128 + 32 * half + e] >> (2 * s)) & 3;
            } else {
                low[e] = (block[(T == GGMLType::Q4_K ? 16 : 48) + 32 * (sub / 2) + e] >> (4 * (sub % 2))) & 0xf;
                high_bits[e] = T == GGMLType::Q5_K ? (block[16 + e] >> sub) & 1 : 0;
            }
        }
        for (int k = 0; k < 16; ++k) codes[k] = uint8_t(low[k] | low[16 + k] << 4);
        // Q5_K: bit e of one word; Q6_K: bits 2e..2e+1 of word e / 16.
        constexpr int bits = T == GGMLType::Q6_K ? 2 : 1;
        for (int k = 0; k < P::high_bytes; ++k) {
            uint32_t byte = 0;
            for (int b = 0; b < 8 / bits; ++b) byte |= uint32_t(high_bits[k * 8 / bits + b]) << (bits * b);
            high[k] = uint8_t(byte);
        }
        // The header: d, dmin and the 12 scale bytes at the block's start (Q4_K, Q5_K); Q6_K's 16
        // scales and d at its end.
        if (sub == 0)
            for (int k = 0; k < P::group_bytes; ++k) scales[k] = block[(T == GGMLType::Q6_K ? 192 : 0) + k];
    }
}

template <class F>
void with_type(const WeightMatrix& w, const char* op, F&& f) {
    check_shape(w);
    if (!with_decoder(w.type, f))
        throw std::invalid_argument(std::string("CUDA ") + op + ": no kernel for " + std::string(type_name(w.type)));
}

// The rows to multiply: all of w's, or (experts) `rows` of them per expert, expert ids[j] for x_j.
struct MatvecRows {
    int rows;
    const int32_t* expert_ids = nullptr;
    int n_experts_chosen = 1;
    int x_stride = 0;
};

template <GGMLType T, bool Stage>
void launch_matvec(Context& ctx, const WeightMatrix& w, const MatvecRows& m, const float* x, float* y, bool accumulate) {
    const int stage_segments = Stage ? segments_per_stage<T>(w.cols) : 0;
    const size_t stage_bytes = (stage_segments * segment_bytes<T>() + 15) / 16 * 16;
    const size_t shared = matvec_shared_bytes(w.cols) + matvec_warps * rows_per_warp * stage_bytes;
    allow_shared_memory(reinterpret_cast<const void*>(matvec_kernel<T, Stage>), shared);
    launch_after_previous(ctx, matvec_kernel<T, Stage>, dim3(blocks_for(m.rows, rows_per_block), m.n_experts_chosen),
                          matvec_warps * 32, shared, reinterpret_cast<const uint8_t*>(w.data), w.row_bytes(), m.rows,
                          int(w.cols), x, y, accumulate, stage_segments, m.expert_ids, int(w.rows), m.x_stride);
}

void matvec(Context& ctx, const WeightMatrix& w, const MatvecRows& m, const float* x, float* y, bool accumulate) {
    if (ragged_float(w)) {
        launch_after_previous(ctx, ragged_matvec_kernel, dim3(blocks_for(m.rows, 8), m.n_experts_chosen), 256, 0, w.type,
                              reinterpret_cast<const uint8_t*>(w.data), w.row_bytes(), m.rows, int(w.cols), x, y,
                              accumulate, m.expert_ids, m.x_stride);
        return;
    }
    with_type(w, "matmul", [&]<GGMLType T>() {
        if (staged<T>() && w.row_bytes() % 4 == 0) launch_matvec<T, staged<T>()>(ctx, w, m, x, y, accumulate);
        else launch_matvec<T, false>(ctx, w, m, x, y, accumulate);
    });
}

void matvec(Context& ctx, const WeightMatrix& w, const float* x, float* y, bool accumulate) {
    matvec(ctx, w, MatvecRows{int(w.rows)}, x, y, accumulate);
}

template <class OutT>
void dequantize_to(Context& ctx, const WeightMatrix& w, OutT* out) {
    with_type(w, "dequantize", [&]<GGMLType T>() {
        dequantize_kernel<T, OutT><<<blocks_for(w.rows * (w.cols / 32), 256), 256, 0, stream(ctx)>>>(
            reinterpret_cast<const uint8_t*>(w.data), w.row_bytes(), w.rows, int(w.cols), out);
        TWINFER_CUDA_CHECK_LAUNCH();
    });
}

// y [T, rows] = x [T, cols] W^T: in cuBLAS's column-major terms, y^T [rows, T] = W^T^T x^T, with W
// read as the column-major [cols, rows] matrix its row-major bytes are. tile_rows: cuBLAS calls of
// that many tokens each (T a multiple of it; matmul_row_tiles), 0: one call.
void gemm(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, bool accumulate,
          size_t tile_rows = 0) {
    DeviceContext& device = device_of(ctx);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const int rows = int(w.rows), cols = int(w.cols);
    const size_t step = tile_rows ? tile_rows : n_tokens;
    if (w.type == GGMLType::F32) {
        for (size_t t = 0; t < n_tokens; t += step)
            TWINFER_CUDA_CHECK(cublasSgemm(device.cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, int(step), cols, &one,
                                           reinterpret_cast<const float*>(w.data), cols, x + t * cols, cols, &beta,
                                           y + t * rows, rows));
        return;
    }
    auto* w_half = static_cast<__half*>(device.weights_half.get(w.rows * w.cols * sizeof(__half), device.stream));
    auto* x_half = static_cast<__half*>(device.tokens_half.get(n_tokens * w.cols * sizeof(__half), device.stream));
    dequantize_to(ctx, w, w_half);
    to_half_kernel<<<blocks_for(n_tokens * w.cols, 256), 256, 0, device.stream>>>(x, n_tokens * w.cols, x_half);
    TWINFER_CUDA_CHECK_LAUNCH();
    for (size_t t = 0; t < n_tokens; t += step)
        TWINFER_CUDA_CHECK(cublasGemmEx(device.cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, int(step), cols, &one, w_half,
                                        CUDA_R_16F, cols, x_half + t * cols, CUDA_R_16F, cols, &beta, y + t * rows,
                                        CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

struct NoOp {
    template <GGMLType> void operator()() const {}
};

}  // namespace

bool matmul_supports(GGMLType type) { return with_decoder(type, NoOp{}); }

size_t min_tiled_tokens() { return min_gemm_tokens; }

WeightMatrix place_weights(Context& ctx, const WeightMatrix& w, void* device) {
    const size_t bytes = w.rows * w.row_bytes();
    WeightMatrix placed = w;
    placed.data = static_cast<const std::byte*>(device);
    placed.planar = planar_layout(w.type);
    if (!placed.planar) {
        cuda::upload(ctx, device, w.data, bytes);
        return placed;
    }
    // The file's bytes through scratch, then rearranged on the device (the host would take a second
    // per gigabyte).
    DeviceContext& state = device_of(ctx);
    void* staging = state.weights_half.get(bytes, state.stream);
    cuda::upload(ctx, staging, w.data, bytes);
    with_decoder(w.type, [&]<GGMLType T>() {
        if constexpr (Planar<T>::used) {
            const size_t n_blocks = w.rows * (w.cols / 32);
            repack_kernel<T><<<blocks_for(n_blocks, 256), 256, 0, state.stream>>>(static_cast<const uint8_t*>(staging),
                                                                                 n_blocks, static_cast<uint8_t*>(device));
            TWINFER_CUDA_CHECK_LAUNCH();
        }
    });
    return placed;
}

void matmul(Context& ctx, const WeightMatrix& w, const float* x, size_t n_tokens, float* y, Activations activations) {
    const MatmulOutput output{w, y};
    cuda::matmul(ctx, std::span<const MatmulOutput>(&output, 1), x, n_tokens, activations);
}

namespace {

// What the products read: x, after `norm` ran as its own op, or x with the norm still to apply,
// folded into the int8 quantization of each token (no launch of its own).
struct ProductInput {
    const float* x;
    const RmsNorm* folded_norm;

    // Token t's norm, its output row in place.
    std::optional<RmsNorm> norm_of(size_t t, size_t cols) const {
        if (!folded_norm) return std::nullopt;
        return RmsNorm{folded_norm->weight, folded_norm->eps, folded_norm->out + t * cols};
    }
};

ProductInput product_input(Context& ctx, const float* x, size_t n_tokens, size_t cols, const RmsNorm* norm, bool int8_path) {
    if (!norm) return {x, nullptr};
    if (int8_path) return {x, norm};
    rms_norm(ctx, x, norm->weight, n_tokens, cols, norm->eps, norm->out);
    return {norm->out, nullptr};
}

// Whether the tiled (cuBLAS) products take `outputs`: ragged float16/bfloat16 rows have no float16
// tile path, and take the matrix-vector route.
bool tiled_products_take(std::span<const MatmulOutput> outputs) {
    return std::all_of(outputs.begin(), outputs.end(),
                       [](const MatmulOutput& o) { return o.w.type == GGMLType::F32 || !ragged_float(o.w); });
}

// Whether one token's products of `outputs` take the int8 kernels (the activations asked for and
// every matrix of their types); their shapes are checked then.
bool int8_products(std::span<const MatmulOutput> outputs, Activations activations) {
    const bool int8 = activations == Activations::Int8 &&
                      std::all_of(outputs.begin(), outputs.end(), [](const MatmulOutput& o) { return int8_matvec_supports(o.w.type); });
    if (int8)
        for (const MatmulOutput& o : outputs) check_shape(o.w);
    return int8;
}

}  // namespace

void matmul(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_tokens, Activations activations,
            const RmsNorm* norm, const RmsNorm* next_norm) {
    if (outputs.empty()) return;
    const size_t cols = outputs[0].w.cols;
    for (const MatmulOutput& o : outputs)
        if (o.w.cols != cols) throw std::invalid_argument("CUDA matmul: products of one input differ in columns");
    const bool gemm_path = n_tokens >= min_gemm_tokens && tiled_products_take(outputs);
    const bool int8 = !gemm_path && int8_products(outputs, activations);
    if (int8 && next_norm && !norm && n_tokens == 1 && outputs.size() == 1 &&
        int8_matvec_then_norm(ctx, outputs[0], x, *next_norm))
        return;
    const ProductInput input = product_input(ctx, x, n_tokens, cols, norm, int8);
    if (gemm_path) {
        for (const MatmulOutput& o : outputs) gemm(ctx, o.w, input.x, n_tokens, o.y, o.accumulate);
        return;
    }
    for (size_t t = 0; t < n_tokens; ++t) {
        if (int8) {
            const std::optional<RmsNorm> norm_t = input.norm_of(t, cols);
            int8_matvec(ctx, outputs, t, input.x + t * cols, norm_t ? &*norm_t : nullptr);
        } else {
            for (const MatmulOutput& o : outputs) matvec(ctx, o.w, input.x + t * cols, o.y + t * o.w.rows, o.accumulate);
        }
    }
}

size_t row_tile_rows() { return row_tile; }

void matmul_row_tiles(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows,
                      Activations activations, const RmsNorm* norm) {
    if (outputs.empty() || n_rows == 0) return;
    if (n_rows % row_tile != 0 || n_rows < min_gemm_tokens)
        throw std::invalid_argument("CUDA matmul_row_tiles: " + std::to_string(n_rows) + " rows, not a multiple of " +
                                   std::to_string(row_tile));
    const size_t cols = outputs[0].w.cols;
    for (const MatmulOutput& o : outputs)
        if (o.w.cols != cols) throw std::invalid_argument("CUDA matmul_row_tiles: products of one input differ in columns");
    // Matrix-vector products one token at a time where there is no tile path: alike in any call.
    if (!tiled_products_take(outputs)) return cuda::matmul(ctx, outputs, x, n_rows, activations, norm);
    const ProductInput input = product_input(ctx, x, n_rows, cols, norm, false);
    for (const MatmulOutput& o : outputs) gemm(ctx, o.w, input.x, n_rows, o.y, o.accumulate, row_tile);
}

void matmul_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, Activations activations,
                 const RmsNorm* norm) {
    if (outputs.empty() || n_rows == 0) return;
    if (int8_products(outputs, activations)) return int8_matvec_rows(ctx, outputs, x, n_rows, norm);
    const size_t cols = outputs[0].w.cols;
    std::vector<MatmulOutput> at_row(outputs.begin(), outputs.end());
    for (size_t t = 0; t < n_rows; ++t) {
        for (size_t i = 0; i < outputs.size(); ++i) at_row[i].y = outputs[i].y + t * outputs[i].w.rows;
        const RmsNorm row_norm = norm ? RmsNorm{norm->weight, norm->eps, norm->out + t * cols} : RmsNorm{};
        cuda::matmul(ctx, at_row, x + t * cols, 1, activations, norm ? &row_norm : nullptr, nullptr);
    }
}

bool project_rope_store_at(Context& ctx, std::span<const MatmulOutput, 3> qkv, const float* x, Activations activations,
                           const RmsNorm* norm, size_t head_dim, const int32_t* position, const RopeParams& rope,
                           CacheRows keys, CacheRows values) {
    return int8_products(qkv, activations) && int8_matvec_rope_store(ctx, qkv, x, norm, rope, head_dim, position, keys, values);
}

void matmul_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, size_t n_tokens,
                float* out, float* up_scratch, Activations activations, const RmsNorm* norm, Glu glu) {
    if (gate.rows != up.rows || gate.cols != up.cols)
        throw std::invalid_argument("CUDA matmul_glu: gate [" + std::to_string(gate.rows) + ", " + std::to_string(gate.cols) +
                                    "] and up [" + std::to_string(up.rows) + ", " + std::to_string(up.cols) + "] differ");
    const bool fused = n_tokens < min_gemm_tokens && activations == Activations::Int8 && gate.type == up.type &&
                       int8_matvec_supports(gate.type);
    if (!fused) {
        const MatmulOutput outputs[] = {{gate, out}, {up, up_scratch}};
        cuda::matmul(ctx, std::span<const MatmulOutput>(outputs), x, n_tokens, activations, norm);
        if (glu == Glu::GeluTanh) return cuda::geglu(ctx, out, up_scratch, n_tokens * gate.rows, out);
        return cuda::swiglu(ctx, out, up_scratch, n_tokens * gate.rows, out);
    }
    check_shape(gate);
    const ProductInput input = product_input(ctx, x, n_tokens, gate.cols, norm, true);
    for (size_t t = 0; t < n_tokens; ++t) {
        const std::optional<RmsNorm> norm_t = input.norm_of(t, gate.cols);
        int8_matvec_glu(ctx, gate, up, input.x + t * gate.cols, norm_t ? &*norm_t : nullptr, out + t * gate.rows, glu);
    }
}

namespace {

// matmul_experts without the biases.
void expert_products(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                     float* y, Activations activations) {
    // Float rows of any width take the ragged kernel; the others read x in 16-byte pieces.
    if (w.all.rows != w.rows() * w.n_experts || k > w.n_experts || (!ragged_float(w.all) && x_stride % 4 != 0))
        throw std::invalid_argument("CUDA matmul_experts: " + std::to_string(k) + " of " + std::to_string(w.n_experts) +
                                    " experts of [" + std::to_string(w.rows()) + ", " + std::to_string(w.all.cols) +
                                    "], input stride " + std::to_string(x_stride));
    const MatmulOutput all{w.all, y};
    if (int8_products(std::span(&all, 1), activations) && int8_matvec_experts(ctx, w.all, w.rows(), ids, k, x, x_stride, y))
        return;
    matvec(ctx, w.all, MatvecRows{int(w.rows()), ids, int(k), int(x_stride)}, x, y, false);
}

}  // namespace

void matmul_experts(Context& ctx, const ExpertMatrices& w, const int32_t* ids, size_t k, const float* x, size_t x_stride,
                    float* y, Activations activations) {
    if (k == 0) return;
    expert_products(ctx, w, ids, k, x, x_stride, y, activations);
    if (w.bias) add_expert_bias(ctx, y, w.bias, ids, k, w.rows());
}

// The int8 kernels' fused launch computes silu(gate) * up from the products themselves: experts
// with biases (gpt-oss) or the clamped activation take the two products and one launch after.
void matmul_experts_swiglu(Context& ctx, const ExpertMatrices& gate, const ExpertMatrices& up, const int32_t* ids,
                           size_t k, const float* x, float* out, float* up_scratch, Activations activations,
                           ExpertActivation activation) {
    if (k == 0) return;
    const MatmulOutput both[] = {{gate.all, out}, {up.all, up_scratch}};
    const bool plain = !gate.bias && !up.bias && activation == ExpertActivation::SwiGLU;
    if (plain && gate.n_experts == up.n_experts && int8_products(both, activations) &&
        int8_matvec_experts(ctx, gate.all, gate.rows(), ids, k, x, 0, out, &up.all))
        return;
    expert_products(ctx, gate, ids, k, x, 0, out, activations);
    expert_products(ctx, up, ids, k, x, 0, up_scratch, activations);
    expert_bias_activation(ctx, out, up_scratch, gate.bias, up.bias, ids, k, gate.rows(), activation);
}

// Every expert's tiles in one launch (expert_groups_gemm_kernel), the experts decoded from their
// own blocks: the prompt path's float16 tensor-core arithmetic (the top of this file) without its
// float16 copy of the weights (all 128 experts of a Qwen3-30B-A3B layer would be 400 MB written and
// read again a product), in two launches a product whatever the number of experts. (cuBLAS's
// product one expert at a time was a launch and a mostly idle GPU an expert, 128 of them a layer;
// its grouped-batched GEMM has no float16-in, float32-out form.) F32 experts (cuBLAS's float32
// product) and float rows of a ragged width (no 32-weight units) go through matmul one expert at
// a time.
void matmul_expert_groups(Context& ctx, const ExpertMatrices& w, const ExpertGroups& groups, const float* x, float* y,
                          Activations activations) {
    const size_t rows = w.rows(), cols = w.all.cols, total = groups.rows();
    if (total == 0) return;
    if (w.all.type == GGMLType::F32 || ragged_float(w.all)) {
        for (size_t e = 0; e < w.n_experts; ++e) {
            const size_t first = size_t(groups.host_offsets[e]), n = size_t(groups.host_offsets[e + 1]) - first;
            const MatmulOutput expert{WeightMatrix{w.all.type, rows, cols, w.all.data + e * rows * w.all.row_bytes(), false},
                                      y + first * rows};
            if (n) cuda::matmul_row_tiles(ctx, std::span(&expert, 1), x + first * cols, n, activations, nullptr);
        }
        if (w.bias) add_expert_group_bias(ctx, y, w.bias, groups.offsets, w.n_experts, total, rows);
        return;
    }
    int32_t most_rows = 0;
    for (size_t e = 0; e < w.n_experts; ++e)
        most_rows = std::max(most_rows, groups.host_offsets[e + 1] - groups.host_offsets[e]);
    DeviceContext& device = device_of(ctx);
    auto* x_half = static_cast<__half*>(device.tokens_half.get(total * cols * sizeof(__half), device.stream));
    to_half_kernel<<<blocks_for(total * cols, 256), 256, 0, device.stream>>>(x, total * cols, x_half);
    TWINFER_CUDA_CHECK_LAUNCH();
    const dim3 grid(blocks_for(rows, group_tile), blocks_for(size_t(most_rows), group_tile), unsigned(w.n_experts));
    with_type(w.all, "matmul_expert_groups", [&]<GGMLType T>() {
        expert_groups_gemm_kernel<T><<<grid, group_threads, 0, device.stream>>>(
            reinterpret_cast<const uint8_t*>(w.all.data), w.all.row_bytes(), x_half, groups.offsets, int(rows), int(cols), y);
        TWINFER_CUDA_CHECK_LAUNCH();
    });
    if (w.bias) add_expert_group_bias(ctx, y, w.bias, groups.offsets, w.n_experts, total, rows);
}

void get_rows(Context& ctx, const WeightMatrix& table, const int32_t* ids, size_t n_ids, float* out) {
    if (n_ids == 0) return;
    if (ragged_float(table)) {
        ragged_get_rows_kernel<<<unsigned(n_ids), 128, 0, stream(ctx)>>>(table.type, reinterpret_cast<const uint8_t*>(table.data),
                                                                         table.row_bytes(), int(table.cols), ids, out);
        TWINFER_CUDA_CHECK_LAUNCH();
        return;
    }
    with_type(table, "get_rows", [&]<GGMLType T>() {
        get_rows_kernel<T><<<unsigned(n_ids), 128, 0, stream(ctx)>>>(reinterpret_cast<const uint8_t*>(table.data),
                                                                    table.row_bytes(), int(table.rows), int(table.cols), ids, out);
        TWINFER_CUDA_CHECK_LAUNCH();
    });
}

void dequantize(Context& ctx, const WeightMatrix& w, float* out) { dequantize_to(ctx, w, out); }

}  // namespace twinfer::compute::cuda
