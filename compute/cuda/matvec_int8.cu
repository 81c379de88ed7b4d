// Matrix-vector products over int8 activations, llama.cpp's mmvq scheme: the token's activations
// are quantized once per product (a small kernel, with the RMSNorm where there is one, or by the
// kernel that produced them: PreparedInt8), then each warp streams one or two weight rows,
// every lane taking whole 32-weight blocks in turn (lane, lane + 32, ...) and multiplying its
// 4-, 5-, 6- or 8-bit codes (MXFP4's looked up as signed bytes first) by the int8 activations
// four at a time (__dp4a), in integers, with one or two float multiply-adds per block for the
// scales.
//
// Why not the float kernel (matmul.cu): decoding every weight to float costs 32 conversions and 32
// FMAs per block per lane, and the staging that made its loads coalesced needs up to 96 KiB of
// shared memory per block, so few blocks fit on an SM and too few loads are in flight to cover
// DRAM's latency. Here a block is 4 warps and no shared memory.
//
// Loads: the weights are in the planar layout (quant_decode.cuh), so a lane reads its block's codes
// with one 16-byte load (two for Q8_0), its high bits and scales with one or two more (a K type's
// header is shared by the eight lanes of a super-block: one transaction); a warp's load
// instruction for codes covers 512 contiguous bytes.
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/matvec_int8.cuh"
#include "compute/cuda/quant_decode.cuh"
#include "compute/cuda/rope.cuh"
#include "compute/cuda/tensor_core.cuh"

namespace twinfer::compute::cuda {
namespace {

constexpr int warps_per_block = 4;

// One warp per 32-value block of x.
__global__ void quantize_kernel(const float* __restrict__ x, int n, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    grid_dependency_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;   // n is a multiple of 32: whole warps leave
    quantize_in_warp(x[i], i, qs, ds);
}

// RMSNorm and quantization in one launch (where there were two), over as many blocks as the row
// has 256-value slices: every block sums the squares of the whole row (the same threads in the
// same order, so every block gets the same inv_rms; a 4096-value row is 16 KiB of L2 reads per
// block), then normalizes, writes and quantizes its own slice, a warp per 32-value block. One block
// of 1024 threads doing the whole row took 5.8 us for Llama 2 7B's 4096 values (Nsight Compute),
// twice a layer. Grid row y: row y of x, out, qs and ds (rows of n values, matmul_rows), each as
// it would be alone.
constexpr int norm_threads = 256;
__global__ void __launch_bounds__(norm_threads)
rms_norm_quantize_kernel(const float* __restrict__ x, const float* __restrict__ weight, int n, float eps,
                         float* __restrict__ out, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    // The norm's weight is not the previous kernel's output: loaded before waiting for it, and the
    // thread's own value of x with the row's, so that the chain after the wait is one round trip.
    const int i = blockIdx.x * norm_threads + threadIdx.x;
    const float w = i < n ? __ldg(weight + i) : 0.0f;
    const size_t row = size_t(blockIdx.y) * n;
    x += row, out += row, qs += row, ds += row / 32;
    grid_dependency_wait();
    const float xi = i < n ? __ldg(x + i) : 0.0f;
    float sum_squares = 0.0f;
#pragma unroll 4
    for (int j = 4 * threadIdx.x; j < n; j += 4 * norm_threads) {   // n is a multiple of 32
        const float4 v = __ldg(reinterpret_cast<const float4*>(x + j));
        sum_squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float inv_rms = rsqrtf(block_sum(sum_squares) / n + eps);
    if (i >= n) return;   // whole warps leave
    const float y = xi * inv_rms * w;
    out[i] = y;
    quantize_in_warp(y, i, qs, ds);
}

// The 32 activations of one block as 8 words of 4 int8 each: a[k] holds values 4k .. 4k+3.
struct ActivationBlock {
    int a[8];
    float2 ds;
};

// Activation block b of a row (codes qs, scales ds), from shared memory or through the read-only cache.
__device__ __forceinline__ ActivationBlock load_activations(const int8_t* qs, const float2* ds, int b, bool shared) {
    const int4* a4 = reinterpret_cast<const int4*>(qs + 32 * b);
    const int4 lo = shared ? a4[0] : __ldg(a4), hi = shared ? a4[1] : __ldg(a4 + 1);
    ActivationBlock x;
    x.a[0] = lo.x, x.a[1] = lo.y, x.a[2] = lo.z, x.a[3] = lo.w;
    x.a[4] = hi.x, x.a[5] = hi.y, x.a[6] = hi.z, x.a[7] = hi.w;
    x.ds = shared ? ds[b] : __ldg(ds + b);
    return x;
}

// One weight block in registers, loaded apart from its use so that a lane's loads for several
// blocks are all in flight before the first is needed: its codes (16 or 32 bytes), high bits
// (Q5_0, Q5_1, Q5_K: one word; Q6_K: two) and scale bits (d, or d and m, as float16; Q4_K and
// Q5_K: the super-block's 16-byte header; Q6_K: the block's two int8 scales and d; MXFP4: the
// exponent byte), and which
// sub-block of its super-block it is (the K types).
template <GGMLType T> struct WeightBlock {
    using P = Planar<T>;
    uint32_t codes[P::code_bytes / 4];
    uint32_t high[P::high_bytes > 4 ? 2 : 1];
    uint32_t scale[P::group_bytes == 16 ? 4 : 1];
    int sub;
};

// Block i's scale bits (WeightBlock::scale), through the read-only cache.
template <GGMLType T, int N> __device__ __forceinline__ void load_scale_words(const PlanarView<T>& v, size_t i, uint32_t (&scale)[N]) {
    using P = Planar<T>;
    const uint8_t* scales = v.scales_of(i);
    if constexpr (P::group_bytes == 16) {
        const uint4 h = __ldg(reinterpret_cast<const uint4*>(scales));
        scale[0] = h.x, scale[1] = h.y, scale[2] = h.z, scale[3] = h.w;
    } else if constexpr (P::group_bytes == 18) {   // Q6_K: scales 2 sub, 2 sub + 1, then d at byte 16
        const auto* halves = reinterpret_cast<const unsigned short*>(scales);
        scale[0] = uint32_t(__ldg(halves + i % 8)) | uint32_t(__ldg(halves + 8)) << 16;
    } else if constexpr (P::scale_bytes == 2) {
        scale[0] = __ldg(reinterpret_cast<const unsigned short*>(scales));
    } else if constexpr (P::scale_bytes == 1) {
        scale[0] = __ldg(scales);
    } else {
        scale[0] = __ldg(reinterpret_cast<const uint32_t*>(scales));
    }
}

template <GGMLType T> __device__ __forceinline__ WeightBlock<T> load_block(const PlanarView<T>& v, size_t i) {
    using P = Planar<T>;
    WeightBlock<T> b;
#pragma unroll
    for (int k = 0; k < P::code_bytes / 16; ++k) {
        const uint4 c = __ldg(reinterpret_cast<const uint4*>(v.codes_of(i)) + k);
        b.codes[4 * k] = c.x, b.codes[4 * k + 1] = c.y, b.codes[4 * k + 2] = c.z, b.codes[4 * k + 3] = c.w;
    }
    if constexpr (P::high_bytes == 8) {
        const uint2 h = __ldg(reinterpret_cast<const uint2*>(v.high_of(i)));
        b.high[0] = h.x, b.high[1] = h.y;
    } else {
        b.high[0] = P::high_bytes != 0 ? __ldg(reinterpret_cast<const uint32_t*>(v.high_of(i))) : 0u;
    }
    b.sub = int(i % 8);
    load_scale_words(v, i, b.scale);
    return b;
}

// The fifth bits of four weights 4k.. (qh shifted so that bit 0 is weight 4k's) at bit 4 of each byte.
__device__ __forceinline__ uint32_t fifth_bits_of(uint32_t qh) {
    return ((qh << 4) & 0x10u) | ((qh << 11) & 0x1000u) | ((qh << 18) & 0x100000u) | ((qh << 25) & 0x10000000u);
}

// Q6_K's fifth and sixth bits of four weights (bits 2b..2b+1 of h, weight b) at bits 4..5 of byte b.
__device__ __forceinline__ uint32_t high_two_bits_of(uint32_t h) {
    return ((h & 0x3u) << 4) | ((h & 0xCu) << 10) | ((h & 0x30u) << 16) | ((h & 0xC0u) << 22);
}

// Four MXFP4 codes (bytes of `codes`, each 0..15) as four signed bytes, kvalues_mxfp4 of each: the
// magnitude picked by the low three bits from eight constant bytes (one byte permute), negated
// ((m ^ 0xff) - 0xff) where the sign bit 3 is set.
__device__ __forceinline__ uint32_t mxfp4_bytes(uint32_t codes) {
    const uint32_t selector = (codes & 0x7u) | ((codes >> 4) & 0x70u) | ((codes >> 8) & 0x700u) | ((codes >> 12) & 0x7000u);
    const uint32_t magnitude = __byte_perm(0x03020100u, 0x0C080604u, selector);
    const uint32_t negative = ((codes >> 3) & 0x01010101u) * 0xffu;
    return __vsub4(magnitude ^ negative, negative);
}

// A block's weights 4k .. 4k+3 (x) and 16+4k .. 16+4k+3 (y) as the signed bytes the integer dot
// products take, from its code words (word k: bytes 4k ..) and high bits. Codes c in [0, 16) or
// [0, 32) as they are (their offset or min is the float part's, accumulate_block); Q6_K's
// [0, 64) as c - 32; MXFP4's looked up (|v| <= 12); Q8_0's bytes as they are.
template <GGMLType T> __device__ __forceinline__ uint2 signed_codes(const uint32_t* codes, const uint32_t* high, int k) {
    if constexpr (T == GGMLType::Q8_0) {
        return make_uint2(codes[k], codes[4 + k]);
    } else {
        const uint32_t low = codes[k] & 0x0F0F0F0Fu, upper = (codes[k] >> 4) & 0x0F0F0F0Fu;
        if constexpr (T == GGMLType::MXFP4) {
            return make_uint2(mxfp4_bytes(low), mxfp4_bytes(upper));
        } else if constexpr (T == GGMLType::Q6_K) {
            return make_uint2(__vsubss4(low | high_two_bits_of(high[0] >> (8 * k)), 0x20202020u),
                              __vsubss4(upper | high_two_bits_of(high[1] >> (8 * k)), 0x20202020u));
        } else if constexpr (Planar<T>::high_bytes != 0) {
            return make_uint2(low | fifth_bits_of(high[0] >> (4 * k)), upper | fifth_bits_of(high[0] >> (16 + 4 * k)));
        } else {
            return make_uint2(low, upper);
        }
    }
}

// A block's integer dot products with an activation block: x over its 32 weights (Q6_K: its first
// 16, whose scale differs from its last 16's, y).
template <GGMLType T> __device__ __forceinline__ int2 block_dots(const WeightBlock<T>& w, const ActivationBlock& x) {
    int first = 0, second = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint2 c = signed_codes<T>(w.codes, w.high, k);
        first = __dp4a(int(c.x), x.a[k], first);
        second = __dp4a(int(c.y), x.a[4 + k], second);
    }
    return T == GGMLType::Q6_K ? make_int2(first, second) : make_int2(first + second, 0);
}

__device__ __forceinline__ float half_bits(uint32_t bits) { return __half2float(__ushort_as_half(uint16_t(bits))); }

// A block's scales (WeightBlock::scale; sub: a K type's sub-block) as its float part takes them:
// (d, -) for Q4_0, Q5_0, Q8_0 and MXFP4 (2^(e - 128)); (d, m) for Q4_1 and Q5_1; (d * scale,
// dmin * min) for Q4_K and Q5_K; Q6_K: (d, the bits of its two int8 scales).
template <GGMLType T, int N> __device__ __forceinline__ float2 block_scale(const uint32_t (&scale)[N], int sub) {
    if constexpr (k_type<T> && T != GGMLType::Q6_K) {
        int s, m;
        k4_scale_min(scale, sub, s, m);
        const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&scale[0]));
        return make_float2(__fmul_rn(dm.x, float(s)), __fmul_rn(dm.y, float(m)));
    } else if constexpr (T == GGMLType::Q6_K) {
        return make_float2(half_bits(scale[0] >> 16), __uint_as_float(scale[0] & 0xffffu));
    } else if constexpr (T == GGMLType::Q4_1 || T == GGMLType::Q5_1) {
        return __half22float2(*reinterpret_cast<const __half2*>(&scale[0]));
    } else if constexpr (T == GGMLType::MXFP4) {
        return make_float2(e8m0_half(scale[0]), 0.0f);
    } else {
        return make_float2(half_bits(scale[0]), 0.0f);
    }
}

// acc plus a block's product: its scales (block_scale) and integer dots (block_dots) with an
// activation block whose (d, d * sum(q)) is xds. The codes stand for d * (c - offset) (Q4_0,
// Q5_0), d * c + m (Q4_1, Q5_1), d * scale * c - dmin * min (Q4_K, Q5_K), d * scale * c (Q6_K, a
// scale per 16), d * c (Q8_0, MXFP4); the offset or min term uses xds.y. Written in intrinsics,
// which the compiler may not contract into other multiply-adds, so that every kernel that sums a
// row's blocks in the same order gets the same bits (batch invariance: int8_mma_rows_kernel's
// rows against int8_matvec_kernel's row alone).
template <GGMLType T> __device__ __forceinline__ float accumulate_block(float acc, float2 scale, int2 dots, float2 xds) {
    if constexpr (T == GGMLType::Q8_0 || T == GGMLType::MXFP4) {
        return __fmaf_rn(__fmul_rn(scale.x, xds.x), float(dots.x), acc);
    } else if constexpr (T == GGMLType::Q6_K) {
        const uint32_t bits = __float_as_uint(scale.y);
        const int low = int(int8_t(bits & 0xffu)), high = int(int8_t(bits >> 8));
        return __fmaf_rn(__fmul_rn(scale.x, xds.x), float(low * dots.x + high * dots.y), acc);
    } else if constexpr (k_type<T>) {
        return __fadd_rn(acc, __fmaf_rn(__fmul_rn(scale.x, xds.x), float(dots.x), -__fmul_rn(scale.y, xds.y)));
    } else if constexpr (T == GGMLType::Q4_0 || T == GGMLType::Q5_0) {
        constexpr float offset = T == GGMLType::Q4_0 ? 8.0f : 16.0f;
        return __fadd_rn(acc, __fmul_rn(scale.x, __fmaf_rn(xds.x, float(dots.x), -__fmul_rn(offset, xds.y))));
    } else {
        return __fadd_rn(acc, __fmaf_rn(__fmul_rn(scale.x, xds.x), float(dots.x), __fmul_rn(scale.y, xds.y)));
    }
}

template <GGMLType T> __device__ __forceinline__ float accumulate_block(float acc, const WeightBlock<T>& w, const ActivationBlock& x) {
    return accumulate_block<T>(acc, block_scale<T>(w.scale, w.sub), block_dots(w, x), x.ds);
}

// The matrices of one launch: products of one x (Q, K and V; gate and up) share it, so that a
// decoding step spends one launch on them, not one each. Target i owns blocks first_block[i] ..
// first_block[i + 1].
struct Target {
    const uint8_t* w;   // planar (quant_decode.cuh)
    float* y;
    int rows;
    int first_block;
    bool accumulate;   // y += W x (a residual add folded into the product)
};
constexpr int max_targets = 3;
struct Targets {
    Target t[max_targets];
    int n;
    bool gelu;   // the gated epilogues: GELU's tanh form of gate (GeGLU), not SiLU
};

// Gives targets 0 .. n - 1 their runs of a launch's grid blocks, rows_per_block rows a block, one
// after the other (Target::first_block); returns the blocks of all n.
int place_blocks(Targets& targets, int n, int rows_per_block) {
    int blocks = 0;
    for (int i = 0; i < n; ++i) {
        targets.t[i].first_block = blocks;
        blocks += int(blocks_for(targets.t[i].rows, rows_per_block));
    }
    return blocks;
}

// A decode step's Q, K and V launch that finishes their rotary embedding and KV-cache write itself
// (int8_matvec_rope_store): targets q, k, v, two rows a warp, a pair (2i, 2i + 1) of a head, which
// the warp rotates where it has them. Saves the decode step a RoPE launch a layer (~1.5 us in the
// pipeline). (Pairs split between two warps of a block, exchanged through shared memory, cost
// launches of several waves more than that launch: every block's end waited at the barrier.)
struct RopeStore {
    const int32_t* position;   // device memory
    Rotation rotation;
    int head_dim;
    DeviceCacheRows keys;      // [positions, k rows]
    DeviceCacheRows values;    // [positions, v rows]
};

// Row `row`'s pair_frequency in target q (0) or k (1), or 0 where it is not rotated (v, or past n_rot).
__device__ __forceinline__ double rope_frequency(int row, int target_index, const RopeStore& rope_store) {
    const int d = row % rope_store.head_dim;
    return target_index < 2 && d < rope_store.rotation.n_rot ? pair_frequency(d / 2, rope_store.rotation) : 0.0;
}

// What a launch does with its products besides writing them. Each kind is a kernel of its own:
// the RoPE epilogue's registers in every plain product cost a 7B model's bandwidth-bound products
// a block per SM (84 registers a thread instead of 78: 5 blocks of 128 threads, not 6).
enum class Epilogue {
    Plain,      // y = W x, or y += W x
    Swiglu,     // the targets are gate and up; a warp takes row r of both and writes
                // silu(gate x) * (up x) to target 0's y (Rows is then 2: one row of each)
    RopeStore,  // RopeStore's rotation and cache write (Rows 2: a pair)
    SwigluQuantize,  // Swiglu, two rows of each a warp (Rows 4: gate, up, gate, up), 16 warps a
                     // block: the block's 32 outputs also quantized for the down product, which
                     // then needs no quantize launch of its own (one-wave launches)
    AccumulateNorm,  // y += W x (one target, Rows 2), 16 warps a block, and the next RMSNorm's
                     // input prepared (NormOut, PreparedNorm): weight * y quantized, the block's
                     // sum of y^2 (one-wave launches). Given x in float (no kernel quantized it),
                     // each block quantizes it into shared memory first.
    Experts,    // y_j = W_{ids[j]} x_j (compute::matmul_experts): grid row j takes the rows of the
                // expert the router chose j-th (ExpertChoice), as Plain does the whole matrix's
    Rows,       // y_j = W x_j, or y_j += W x_j (compute::matmul_rows): grid row j does Plain's work
                // for token j's activations (ExpertChoice::x_blocks apart) into its own rows of y
    ExpertsSwiglu,   // Swiglu over the chosen experts' gate and up rows (matmul_experts_swiglu)
};
__host__ __device__ constexpr bool gated(Epilogue E) {
    return E == Epilogue::Swiglu || E == Epilogue::SwigluQuantize || E == Epilogue::ExpertsSwiglu;
}
__host__ __device__ constexpr bool chosen_rows(Epilogue E) { return E == Epilogue::Experts || E == Epilogue::ExpertsSwiglu; }

// Experts' products: the router's choice in device memory, the matrix of all experts' rows, and
// the distance between the quantized inputs x_j in 32-value blocks (0: one x for every expert).
// Epilogue::Rows: n_chosen rows of x, x_blocks apart, no ids.
struct ExpertChoice {
    const int32_t* ids = nullptr;
    int n_chosen = 1;
    int all_rows = 0;
    int x_blocks = 0;
};

// Warps a block: 32 output rows for SwigluQuantize and AccumulateNorm, so that a 32-value block of
// the output is the block's own.
template <Epilogue E>
constexpr int warps_of = E == Epilogue::SwigluQuantize || E == Epilogue::AccumulateNorm ? 16 : warps_per_block;
__host__ __device__ constexpr bool whole_blocks(Epilogue E) { return E == Epilogue::SwigluQuantize || E == Epilogue::AccumulateNorm; }

// AccumulateNorm's norm: its weight, and where each block leaves its sum of squares.
struct NormOut {
    const float* weight;
    float* partial_sums;
};

// Blocks per SM the register budget is held to: six (80 registers a thread) for Q4_0 and Q4_1,
// which fit that without spilling, five (102) for the 5-bit, 8-bit and K types, which spill at 80.
// (SwigluQuantize's and AccumulateNorm's blocks of 16 warps: one.)
template <GGMLType T> constexpr bool four_bit = T == GGMLType::Q4_0 || T == GGMLType::Q4_1;
template <GGMLType T> constexpr int min_blocks_per_sm = four_bit<T> ? 6 : 5;

// The target whose rows grid block `block` computes, and its index, by constant indices: a runtime
// index into the parameters would copy them to the stack (local memory) first.
__device__ __forceinline__ Target block_target(const Targets& targets, int block, int& index) {
    Target target = targets.t[0];
    index = 0;
#pragma unroll
    for (int i = 1; i < max_targets; ++i)
        if (i < targets.n && block >= targets.t[i].first_block) target = targets.t[i], index = i;
    return target;
}

// Rows: rows per warp.
template <GGMLType T, int Rows, Epilogue E>
__global__ void __launch_bounds__(warps_of<E> * 32, whole_blocks(E) ? 1 : min_blocks_per_sm<T>)
int8_matvec_kernel(Targets targets, int n_blocks, const int8_t* __restrict__ qs, const float2* __restrict__ ds,
                   NormScale norm_scale, RopeStore rope_store, bool early_loads, QuantizedActivations out_int8,
                   NormOut norm_out, const float* __restrict__ x_float, ExpertChoice experts) {
    constexpr bool Swiglu = gated(E);
    int target_index = 0;
    Target target = Swiglu ? targets.t[0] : block_target(targets, int(blockIdx.x), target_index);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    constexpr int rows_of_target = Swiglu ? Rows / 2 : Rows;
    const int first_row = ((int(blockIdx.x) - target.first_block) * warps_of<E> + warp) * rows_of_target;
    if (!whole_blocks(E) && first_row >= target.rows) return;   // (whole_blocks: every warp has rows)
    // Experts: which rows, known only once the router's top_k has finished (no early loads).
    int first_expert_row = 0;
    if constexpr (chosen_rows(E)) {
        grid_dependency_wait();
        first_expert_row = __ldg(experts.ids + blockIdx.y) * target.rows;
        qs += size_t(blockIdx.y) * experts.x_blocks * 32;
        ds += size_t(blockIdx.y) * experts.x_blocks;
        target.y += size_t(blockIdx.y) * target.rows;
    }
    if constexpr (E == Epilogue::Rows) {
        qs += size_t(blockIdx.y) * experts.x_blocks * 32;
        ds += size_t(blockIdx.y) * experts.x_blocks;
        target.y += size_t(blockIdx.y) * target.rows;
    }
    // Row r's block b is block r * n_blocks + b of its matrix.
    PlanarView<T> view[Rows];
    size_t first_block_of[Rows];
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
        const Target& m = Swiglu && r % 2 == 1 ? targets.t[1] : target;
        view[r] = PlanarView<T>(m.w, size_t(chosen_rows(E) ? experts.all_rows : m.rows) * n_blocks);
        first_block_of[r] = size_t(first_expert_row + min(first_row + (Swiglu ? r / 2 : r), target.rows - 1)) * n_blocks;
    }
    // A lane's blocks lane, lane + 32, ... in batches whose loads are all issued before the first
    // is used: a plain loop over them (unrolled by 4, with a remainder loop) waited out one memory
    // round trip per block past the last multiple of 4. early_loads: the first batch's weights are
    // loaded before waiting for the previous kernel (they are not its output), so that their DRAM
    // round trip overlaps that kernel instead of following it; on the small models that is the
    // whole row. Four or eight rows a warp (launches made one wave that way): one block of each
    // row a lane at a time, which keeps the 4-bit types within six blocks an SM.
    constexpr int batch = Rows == 1 ? 4 : Rows >= 4 && !whole_blocks(E) ? 1 : 2;
    WeightBlock<T> w[batch][Rows];
    auto load_weights = [&](int b0) {
#pragma unroll
        for (int j = 0; j < batch; ++j) {
            if (b0 + 32 * j >= n_blocks) break;
#pragma unroll
            for (int r = 0; r < Rows; ++r) w[j][r] = load_block(view[r], first_block_of[r] + b0 + 32 * j);
        }
    };
    if (early_loads) load_weights(lane);
    // AccumulateNorm: warp 0 quantizes the block's 32 rows times the norm's weight, loaded now.
    const float norm_weight =
        E == Epilogue::AccumulateNorm && warp == 0 ? __ldg(norm_out.weight + blockIdx.x * 32 + lane) : 0.0f;
    // RopeStore: each pair's frequency, read from the rotation's table while the loads are in flight.
    double frequency[(Rows + 1) / 2] = {};
    if constexpr (E == Epilogue::RopeStore)
#pragma unroll
        for (int p = 0; p < Rows / 2; ++p) frequency[p] = rope_frequency(first_row + 2 * p, target_index, rope_store);
    grid_dependency_wait();
    // RopeStore: the position loaded with the activations, not after the products (a memory round
    // trip at the end of every block cost a 7B model's multi-wave Q/K/V launch ~6% of its decoding).
    const int position = E == Epilogue::RopeStore ? __ldg(rope_store.position) : 0;
    // A residual add's old y loaded now, with the activations, not after the products (a memory
    // round trip at the end of the chain).
    float old_y[Rows] = {};
    if constexpr (E == Epilogue::Plain || E == Epilogue::Rows || E == Epilogue::AccumulateNorm) {
        if (target.accumulate && lane == 0)
#pragma unroll
            for (int r = 0; r < Rows; ++r)
                if (first_row + r < target.rows) old_y[r] = target.y[first_row + r];
    }
    // An RMSNorm still to apply (PreparedNorm): the row's sum of squares from the parts its
    // producer left, loaded with the activations, summed in the same order by every warp.
    float norm_factor = 1.0f;
    if (norm_scale.partial_sums) {
        float sum = 0.0f;
        for (int i = lane; i < norm_scale.n_parts; i += 32) sum += __ldg(norm_scale.partial_sums + i);
        norm_factor = rsqrtf(warp_sum(sum) * norm_scale.inverse_cols + norm_scale.eps);
    }
    // AccumulateNorm given x in float (x_float: no kernel quantized it, as after a gate/up launch
    // of several waves): the block quantizes the whole row into shared memory, a thread a 32-value
    // block, while its first weights are in flight; a quantize launch of its own was a link more in
    // the chain (TinyLlama +2%, BENCHMARKS.md session 7). Every block repeats it: 11,008 values are
    // one pass of its 512 threads.
    const int8_t* activation_qs = qs;
    const float2* activation_ds = ds;
    if (E == Epilogue::AccumulateNorm && x_float) {
        extern __shared__ int4 shared_activations[];
        int8_t* shared_qs = reinterpret_cast<int8_t*>(shared_activations);
        float2* shared_ds = reinterpret_cast<float2*>(shared_qs + 32 * n_blocks);
        for (int b = threadIdx.x; b < n_blocks; b += warps_of<E> * 32)
            quantize_block(x_float + 32 * b, shared_qs + 32 * b, shared_ds + b);
        __syncthreads();
        activation_qs = shared_qs;
        activation_ds = shared_ds;
    }
    const bool activations_shared = E == Epilogue::AccumulateNorm && x_float;
    float acc[Rows] = {};
    for (int b0 = lane; b0 < n_blocks; b0 += 32 * batch) {
        if (b0 != lane || !early_loads) load_weights(b0);
        ActivationBlock x[batch];
#pragma unroll
        for (int j = 0; j < batch; ++j) {
            const int b = b0 + 32 * j;
            if (b >= n_blocks) break;
            x[j] = load_activations(activation_qs, activation_ds, b, activations_shared);
        }
#pragma unroll
        for (int j = 0; j < batch; ++j) {
            if (b0 + 32 * j >= n_blocks) break;
#pragma unroll
            for (int r = 0; r < Rows; ++r) acc[r] = accumulate_block(acc[r], w[j][r], x[j]);
        }
    }
    float total[Rows];
#pragma unroll
    for (int r = 0; r < Rows; ++r) total[r] = warp_sum(acc[r]) * norm_factor;
    if constexpr (E == Epilogue::RopeStore) {
        static_assert(Rows % 2 == 0);
        if (lane != 0) return;
#pragma unroll
        for (int p = 0; p < Rows / 2; ++p) {
            float y0 = total[2 * p], y1 = total[2 * p + 1];
            if (frequency[p] != 0.0) {
                float2 cs = rotation_at(size_t(position), frequency[p]);
                cs.x *= rope_store.rotation.magnitude, cs.y *= rope_store.rotation.magnitude;
                const float x0 = y0;
                y0 = x0 * cs.x - y1 * cs.y;
                y1 = x0 * cs.y + y1 * cs.x;
            }
            const int row = first_row + 2 * p;
            target.y[row] = y0;
            target.y[row + 1] = y1;
            if (target_index > 0) {
                const DeviceCacheRows table = target_index == 1 ? rope_store.keys : rope_store.values;
                const size_t cached = size_t(position) * target.rows + row;
                store_cached(table, cached, y0);
                store_cached(table, cached + 1, y1);
            }
        }
        return;
    }
    if constexpr (Swiglu) {
        float y[Rows / 2];
#pragma unroll
        for (int k = 0; k < Rows / 2; ++k)
            y[k] = (targets.gelu ? gelu_tanh(total[2 * k]) : total[2 * k] / (1.0f + expf(-total[2 * k]))) * total[2 * k + 1];
        if (lane == 0)
#pragma unroll
            for (int k = 0; k < Rows / 2; ++k)
                if (first_row + k < target.rows) target.y[first_row + k] = y[k];
        if constexpr (E == Epilogue::SwigluQuantize) {
            __shared__ float block_out[warps_of<E> * Rows / 2];
            static_assert(warps_of<E> * Rows / 2 == 32);
            if (lane == 0)
#pragma unroll
                for (int k = 0; k < Rows / 2; ++k) block_out[warp * (Rows / 2) + k] = y[k];
            __syncthreads();
            if (warp == 0) quantize_in_warp(block_out[lane], int(blockIdx.x) * 32 + lane, out_int8.qs, out_int8.ds);
        }
        return;
    }
    if constexpr (E == Epilogue::AccumulateNorm) {
        __shared__ float block_out[32];
        static_assert(warps_of<E> * Rows == 32);
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < Rows; ++r) {
                const float y = old_y[r] + total[r];
                target.y[first_row + r] = y;
                block_out[warp * Rows + r] = y;
            }
        __syncthreads();
        if (warp != 0) return;
        const float y = block_out[lane];
        quantize_in_warp(y * norm_weight, int(blockIdx.x) * 32 + lane, out_int8.qs, out_int8.ds);
        const float sum_squares = warp_sum(y * y);
        if (lane == 0) norm_out.partial_sums[blockIdx.x] = sum_squares;
        return;
    }
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
        if (first_row + r >= target.rows) break;
        target.y[first_row + r] = old_y[r] + total[r];
    }
}

// compute::matmul_rows over several activation rows (a batched decode step's rows): a warp takes
// Rows weight rows and Tokens rows of x (grid row y: x rows y * Tokens ..), each lane loading a
// weight block once for all the tokens and an activation block once for all the rows, so that a
// step of N sequences reads the weights about N / Tokens times instead of N (Epilogue::Rows: once
// per row of x, from L2 at best). Every output is summed as int8_matvec_kernel sums it, a lane's
// blocks lane, lane + 32, ... in order, then the warp's sum, plus the old y where it accumulates:
// the same bits as that row of x alone.
constexpr int tokens_per_warp = 8, min_shared_tokens = 4;
template <GGMLType T, int Rows, int Tokens>
__global__ void __launch_bounds__(warps_per_block * 32)
int8_matvec_tokens_kernel(Targets targets, int n_blocks, const int8_t* __restrict__ qs, const float2* __restrict__ ds,
                          int n_tokens) {
    int target_index;
    const Target target = block_target(targets, int(blockIdx.x), target_index);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_row = ((int(blockIdx.x) - target.first_block) * warps_per_block + warp) * Rows;
    if (first_row >= target.rows) return;
    const int first_token = int(blockIdx.y) * Tokens, tokens = min(Tokens, n_tokens - first_token);
    const PlanarView<T> view(target.w, size_t(target.rows) * n_blocks);
    size_t first_block_of[Rows];
#pragma unroll
    for (int r = 0; r < Rows; ++r) first_block_of[r] = size_t(min(first_row + r, target.rows - 1)) * n_blocks;
    qs += size_t(first_token) * n_blocks * 32;
    ds += size_t(first_token) * n_blocks;
    grid_dependency_wait();
    float acc[Rows][Tokens] = {};
    for (int b = lane; b < n_blocks; b += 32) {
        WeightBlock<T> w[Rows];
#pragma unroll
        for (int r = 0; r < Rows; ++r) w[r] = load_block(view, first_block_of[r] + b);
#pragma unroll
        for (int t = 0; t < Tokens; ++t) {
            if (t >= tokens) break;
            const ActivationBlock x = load_activations(qs + size_t(t) * n_blocks * 32, ds + size_t(t) * n_blocks, b, false);
#pragma unroll
            for (int r = 0; r < Rows; ++r) acc[r][t] = accumulate_block(acc[r][t], w[r], x);
        }
    }
#pragma unroll
    for (int r = 0; r < Rows; ++r)
#pragma unroll
        for (int t = 0; t < Tokens; ++t) {
            const float total = warp_sum(acc[r][t]);
            if (lane == 0 && t < tokens && first_row + r < target.rows) {
                float* y = target.y + size_t(first_token + t) * target.rows + first_row + r;
                *y = (target.accumulate ? *y : 0.0f) + total;
            }
        }
}

// int8_matvec_tokens_kernel over the targets' rows, Rows a warp.
template <GGMLType T, int Rows>
void launch_tokens(Context& ctx, Targets targets, int n_blocks, const QuantizedActivations& q, size_t n_tokens) {
    const int blocks = place_blocks(targets, targets.n, warps_per_block * Rows);
    const dim3 grid(unsigned(blocks), unsigned(blocks_for(n_tokens, tokens_per_warp)));
    launch_after_previous(ctx, int8_matvec_tokens_kernel<T, Rows, tokens_per_warp>, grid, warps_per_block * 32, 0, targets,
                          n_blocks, q.qs, q.ds, int(n_tokens));
}

// compute::matmul_rows on the int8 tensor cores (a batched decode step's rows, from
// min_mma_tokens rows of x on): a block of 8 warps takes 32 weight rows and 8 * Tiles rows of x
// ("tokens"), and walks the row's blocks in groups of 32, copying each group's codes, high bits
// and activations into shared memory (cp.async, whole 16-byte words: a row's 32 neighbouring
// blocks are contiguous in the planar layout; the scales through registers, as block_scale) while
// it multiplies the group before. A warp takes 16 of the weight rows and 8 of the 32 blocks
// ("slots") of every group; each block is two mma.sync m16n8k16 a tile of 8 tokens, its float part
// accumulate_block, as the one-row kernel's.
//
// Batch invariance: int8_matvec_kernel's lane s sums blocks s, s + 32, ... in order, then
// warp_sum folds the 32 lanes' sums (offsets 16, 8, 4, 2, 1). Here slot s keeps that lane's
// running sum for every (row, token), and a warp owns the slots c, c + 4, ..., c + 28 (c = its
// slot class): the folds of offsets 16, 8 and 4 stay within the warp, and those of 2 and 1 combine
// the four classes through shared memory at the end, in the same order. Every output then has the
// bits of that row of x alone. From 8 rows of x on it is faster than int8_matvec_tokens_kernel on
// the H100, at 4 it is not (BENCHMARKS.md, session 25).
constexpr int mma_warps = 8, mma_rows = 32, min_mma_tokens = 8;

template <GGMLType T, int Tiles> struct MmaStage {
    using P = Planar<T>;
    static constexpr int code_words = P::code_bytes / 4, high_words = P::high_bytes / 4, tokens = 8 * Tiles;
    // Rows padded by 16 bytes: the 8 rows (or tokens) that one load instruction reads then fall on
    // different banks.
    alignas(16) uint32_t codes[mma_rows][32 * code_words + 4];
    alignas(16) uint32_t high[mma_rows][high_words != 0 ? 32 * high_words + 4 : 1];
    alignas(16) uint32_t x[tokens][32 * 8 + 4];
    alignas(16) float2 ds[32][tokens + 2];     // [slot][token]: the activations' (d, d * sum(q))
    alignas(16) float2 scale[32][mma_rows + 1];   // [slot][row]: block_scale
};

// What one block of int8_mma_rows_kernel copies, where from.
template <GGMLType T, int Tiles> struct MmaRowsBlock {
    using P = Planar<T>;
    using Stage = MmaStage<T, Tiles>;
    // Each thread's (row, slot) pairs of scale bits: a warp's lanes take a row's 32 slots (coalesced loads).
    static constexpr int scale_pairs = mma_rows * 32 / (mma_warps * 32);

    PlanarView<T> view;
    int rows, first_row, n_blocks;
    const int8_t* qs;
    const float2* ds;
    int first_token, n_tokens;
    uint32_t scale_words[scale_pairs][P::group_bytes == 16 ? 4 : 1];

    // Rows past the matrix's last read its last row, and are not written.
    __device__ size_t block_of(int r, int b) const { return size_t(min(first_row + r, rows - 1)) * n_blocks + b; }

    __device__ void stage_weights(Stage& st, int g0) const {
        constexpr int words_a_row = 2 * P::code_bytes;   // 16-byte words of a row's 32 blocks
        for (int i = threadIdx.x; i < mma_rows * words_a_row; i += mma_warps * 32) {
            const int r = i / words_a_row, w = i % words_a_row, b = g0 + w * 16 / P::code_bytes;
            const bool valid = b < n_blocks;
            const uint8_t* from = view.codes_of(block_of(r, valid ? g0 : 0)) + (valid ? 16 * w : 0);
            copy_16_async(&st.codes[r][4 * w], from, valid);
        }
        if constexpr (P::high_bytes != 0)
            for (int i = threadIdx.x; i < mma_rows * 32; i += mma_warps * 32) {
                const int r = i / 32, s = i % 32, b = g0 + s;
                copy_async<P::high_bytes>(&st.high[r][s * Stage::high_words], view.high_of(block_of(r, min(b, n_blocks - 1))),
                                          b < n_blocks);
            }
    }

    __device__ void stage_activations(Stage& st, int g0) const {
        for (int i = threadIdx.x; i < Stage::tokens * 64; i += mma_warps * 32) {
            const int t = i / 64, w = i % 64, b = g0 + w / 2;
            const bool valid = first_token + t < n_tokens && b < n_blocks;
            const int8_t* from = valid ? qs + (size_t(first_token + t) * n_blocks + b) * 32 + 16 * (w % 2) : qs;
            copy_16_async(&st.x[t][4 * w], from, valid);
        }
        for (int i = threadIdx.x; i < Stage::tokens * 32; i += mma_warps * 32) {
            const int t = i / 32, s = i % 32, b = g0 + s;
            const bool valid = first_token + t < n_tokens && b < n_blocks;
            copy_async<8>(&st.ds[s][t], valid ? ds + size_t(first_token + t) * n_blocks + b : ds, valid);
        }
    }

    __device__ void load_scales(int g0) {
#pragma unroll
        for (int j = 0; j < scale_pairs; ++j) {
            const int i = int(threadIdx.x) + j * mma_warps * 32, r = i / 32, s = i % 32;
            load_scale_words(view, block_of(r, min(g0 + s, n_blocks - 1)), scale_words[j]);
        }
    }

    __device__ void store_scales(Stage& st) const {
#pragma unroll
        for (int j = 0; j < scale_pairs; ++j) {
            const int i = int(threadIdx.x) + j * mma_warps * 32, r = i / 32, s = i % 32;
            st.scale[s][r] = block_scale<T>(scale_words[j], s % 8);   // a K type's n_blocks is a multiple of 8
        }
    }
};

// Slot s of a staged group (rows r0 and r0 + 8 of the stage, Tiles tiles of 8 tokens) added to
// acc, the lane's part of each tile's mma_16x8x16_s8 sums.
template <GGMLType T, int Tiles>
__device__ __forceinline__ void multiply_slot(const MmaStage<T, Tiles>& st, int s, int r0, float (&acc)[Tiles][4]) {
    using Stage = MmaStage<T, Tiles>;
    const int lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4, r1 = r0 + 8;
    const uint2 a0 = signed_codes<T>(&st.codes[r0][s * Stage::code_words], &st.high[r0][s * Stage::high_words], quad);
    const uint2 a1 = signed_codes<T>(&st.codes[r1][s * Stage::code_words], &st.high[r1][s * Stage::high_words], quad);
    const float2 scale0 = st.scale[s][r0], scale1 = st.scale[s][r1];
#pragma unroll
    for (int tile = 0; tile < Tiles; ++tile) {
        const uint32_t* x = st.x[tile * 8 + group] + s * 8;
        int first[4] = {}, second[4] = {};
        mma_16x8x16_s8(first, a0.x, a1.x, x[quad]);
        if constexpr (T == GGMLType::Q6_K) mma_16x8x16_s8(second, a0.y, a1.y, x[4 + quad]);
        else mma_16x8x16_s8(first, a0.y, a1.y, x[4 + quad]);
        const float4 xds = *reinterpret_cast<const float4*>(&st.ds[s][tile * 8 + 2 * quad]);
        const float2 xds0 = make_float2(xds.x, xds.y), xds1 = make_float2(xds.z, xds.w);
        acc[tile][0] = accumulate_block<T>(acc[tile][0], scale0, make_int2(first[0], second[0]), xds0);
        acc[tile][1] = accumulate_block<T>(acc[tile][1], scale0, make_int2(first[1], second[1]), xds1);
        acc[tile][2] = accumulate_block<T>(acc[tile][2], scale1, make_int2(first[2], second[2]), xds0);
        acc[tile][3] = accumulate_block<T>(acc[tile][3], scale1, make_int2(first[3], second[3]), xds1);
    }
}

template <GGMLType T, int Tiles>
__global__ void __launch_bounds__(mma_warps * 32, 2)
int8_mma_rows_kernel(Targets targets, int n_blocks, const int8_t* __restrict__ qs, const float2* __restrict__ ds,
                     int n_tokens) {
    using Stage = MmaStage<T, Tiles>;
    extern __shared__ int4 shared_words[];
    Stage* stages = reinterpret_cast<Stage*>(shared_words);
    int target_index;
    const Target target = block_target(targets, int(blockIdx.y), target_index);
    const int first_row = (int(blockIdx.y) - target.first_block) * mma_rows;
    const int first_token = int(blockIdx.x) * Stage::tokens;
    MmaRowsBlock<T, Tiles> block{PlanarView<T>(target.w, size_t(target.rows) * n_blocks),
                                 target.rows, first_row, n_blocks, qs, ds, first_token, n_tokens, {}};
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int row_tile = warp % 2, slot_class = warp / 2, r0 = row_tile * 16 + group;

    // The first group's weights are not the previous kernel's output: copied before waiting for it.
    block.stage_weights(stages[0], 0);
    block.load_scales(0);
    grid_dependency_wait();
    block.stage_activations(stages[0], 0);
    commit_copies();
    block.store_scales(stages[0]);
    float acc[8][Tiles][4] = {};   // [k: slot slot_class + 4k][tile][mma_16x8x16_s8's c]
    // A K type's next scales (16-byte headers) are loaded after the products, not held across them,
    // where the registers are short.
    constexpr bool late_scales = Planar<T>::group_bytes == 16 && Tiles == 2;
    const int n_groups = (n_blocks + 31) / 32;
    for (int g = 0; g < n_groups; ++g) {
        const bool more = g + 1 < n_groups;
        Stage& next = stages[(g + 1) % 2];
        if (more) {
            block.stage_weights(next, 32 * (g + 1));
            block.stage_activations(next, 32 * (g + 1));
            if constexpr (!late_scales) block.load_scales(32 * (g + 1));
        }
        commit_copies();   // (an empty group where none: the wait below is for group g's)
        wait_copies<1>();
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int s = slot_class + 4 * k;
            if (32 * g + s >= n_blocks) break;
            multiply_slot<T, Tiles>(stages[g % 2], s, r0, acc[k]);
        }
        if (more) {
            if constexpr (late_scales) block.load_scales(32 * (g + 1));
            block.store_scales(next);
        }
        __syncthreads();
    }

    // warp_sum's folds of offsets 16, 8 and 4 within the warp: slots c + 4k and c + 4k + 16 are
    // k and k + 4 here, and so on. Then those of 2 and 1 across the classes, through shared
    // memory: [slot_class][row_tile][lane][Tiles * 4].
    float* folded = reinterpret_cast<float*>(shared_words) + (row_tile * 32 + lane) * Tiles * 4;
    constexpr int class_floats = 2 * 32 * Tiles * 4;
#pragma unroll
    for (int j = 0; j < Tiles * 4; ++j) {
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = acc[k][j / 4][j % 4];
        folded[slot_class * class_floats + j] = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    }
    __syncthreads();
    if (slot_class != 0) return;
#pragma unroll
    for (int j = 0; j < Tiles * 4; ++j) {
        const float total = (folded[j] + folded[2 * class_floats + j]) + (folded[class_floats + j] + folded[3 * class_floats + j]);
        const int i = j % 4, row = first_row + r0 + (i < 2 ? 0 : 8), token = first_token + j / 4 * 8 + 2 * quad + i % 2;
        if (row < target.rows && token < n_tokens) {
            float* y = target.y + size_t(token) * target.rows + row;
            *y = (target.accumulate ? *y : 0.0f) + total;
        }
    }
}

// int8_mma_rows_kernel over the targets' rows; grid x: groups of tokens, so that the blocks of
// one group of weight rows run together and read its weights from DRAM once.
template <GGMLType T, int Tiles>
void launch_mma_rows(Context& ctx, Targets targets, int n_blocks, const QuantizedActivations& q, size_t n_tokens) {
    const int blocks = place_blocks(targets, targets.n, mma_rows);
    constexpr size_t shared = 2 * sizeof(MmaStage<T, Tiles>);
    static_assert(shared >= mma_warps * 32 * Tiles * 4 * sizeof(float));   // the final folds'
    allow_shared_memory(reinterpret_cast<const void*>(int8_mma_rows_kernel<T, Tiles>), shared);
    const dim3 grid(unsigned(blocks_for(n_tokens, 8 * Tiles)), unsigned(blocks));
    launch_after_previous(ctx, int8_mma_rows_kernel<T, Tiles>, grid, mma_warps * 32, shared, targets, n_blocks, q.qs,
                          q.ds, int(n_tokens));
}

// Room for one token's quantized activations in `scratch`.
QuantizedActivations quantized_scratch(DeviceContext& device, Scratch& scratch, size_t cols) {
    const size_t qs_bytes = (cols + 15) / 16 * 16;
    auto* bytes = static_cast<uint8_t*>(scratch.get(qs_bytes + cols / 32 * sizeof(float2), device.stream));
    return {reinterpret_cast<int8_t*>(bytes), reinterpret_cast<float2*>(bytes + qs_bytes)};
}

QuantizedActivations activation_scratch(Context& ctx, size_t cols) {
    DeviceContext& device = device_of(ctx);
    return quantized_scratch(device, device.activations_int8, cols);
}

// x quantized by a kernel of its own (one warp per 32 values), or RMSNorm(x) in the same launch.
QuantizedActivations quantize_activations(Context& ctx, const float* x, size_t cols) {
    const QuantizedActivations q = activation_scratch(ctx, cols);
    launch_after_previous(ctx, quantize_kernel, blocks_for(cols, 256), 256, 0, x, int(cols), q.qs, q.ds);
    return q;
}

// n_rows rows of cols values (one launch; each row as alone), into scratch as n_rows * cols.
QuantizedActivations rms_norm_quantize(Context& ctx, const float* x, const RmsNorm& norm, size_t cols, size_t n_rows = 1) {
    const QuantizedActivations q = activation_scratch(ctx, n_rows * cols);
    launch_after_previous(ctx, rms_norm_quantize_kernel, dim3(unsigned(blocks_for(cols, norm_threads)), unsigned(n_rows)),
                          norm_threads, 0, x, norm.weight, int(cols), norm.eps, norm.out, q.qs, q.ds);
    return q;
}

// x (after norm, if any) quantized for the products: as the kernel that wrote x left it, if it did.
QuantizedActivations quantized(Context& ctx, const float* x, const RmsNorm* norm, size_t cols) {
    if (norm) {
        const PreparedNorm& p = device_of(ctx).prepared_norm;
        if (p.source == x && p.weight == norm->weight && p.cols == cols)
            return {const_cast<int8_t*>(p.qs), const_cast<float2*>(p.ds), {p.partial_sums, p.n_parts, 1.0f / float(cols), norm->eps}};
        return rms_norm_quantize(ctx, x, *norm, cols);
    }
    const PreparedInt8& prepared = device_of(ctx).prepared;
    if (prepared.source == x && prepared.cols == cols)
        return {const_cast<int8_t*>(prepared.qs), const_cast<float2*>(prepared.ds)};
    return quantize_activations(ctx, x, cols);
}

// A row of n_blocks 32-value blocks quantized in shared memory (x_float): codes, then (d, d * sum).
constexpr size_t shared_activation_bytes(int n_blocks) { return size_t(n_blocks) * (32 + sizeof(float2)); }
// Without asking for more (allow_shared_memory), which would change the kernel's occupancy figures.
constexpr size_t max_shared_activation_bytes = 48 * 1024;

// How many blocks of the kernel the GPU holds at once (one wave).
template <GGMLType T, int Rows, Epilogue E> int resident_blocks(Context& ctx) {
    static const int blocks_per_sm = [] {
        int n = 0;
        TWINFER_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, int8_matvec_kernel<T, Rows, E>,
                                                                         warps_of<E> * 32, 0));
        return n;
    }();
    return blocks_per_sm * device_of(ctx).n_sms;
}

template <GGMLType T, int Rows, Epilogue E>
void launch(Context& ctx, Targets targets, int n_blocks, const QuantizedActivations& q, const RopeStore& rope_store,
            const QuantizedActivations& out_int8 = {}, const NormOut& norm_out = {}, const float* x_float = nullptr,
            const ExpertChoice& experts = {}) {
    constexpr bool Swiglu = gated(E);
    // Swiglu: one grid over the rows that gate and up share.
    const int blocks = place_blocks(targets, Swiglu ? 1 : targets.n, warps_of<E> * (Swiglu ? Rows / 2 : Rows));
    // Early weight loads only where the whole grid is resident at once: a launch of several waves
    // is bandwidth-bound, and its early loads only took bandwidth from the kernel before it
    // (Llama 2 7B decoding -3%, SmolLM2 and TinyLlama +1..5%; BENCHMARKS.md, session 4).
    const bool early_loads = !chosen_rows(E) && blocks * experts.n_chosen <= resident_blocks<T, Rows, E>(ctx);
    const size_t shared_bytes = x_float ? shared_activation_bytes(n_blocks) : 0;
    launch_after_previous(ctx, int8_matvec_kernel<T, Rows, E>, dim3(unsigned(blocks), unsigned(experts.n_chosen)),
                          warps_of<E> * 32, shared_bytes, targets, n_blocks, q.qs, q.ds, q.norm_scale, rope_store,
                          early_loads, out_int8, norm_out, x_float, experts);
}

template <GGMLType T>
void launch(Context& ctx, const Targets& targets, int n_blocks, const QuantizedActivations& q, bool swiglu) {
    const RopeStore rope_store{};
    if (swiglu) {
        // Where gate/up is one wave of blocks either way, its output quantized in the same launch
        // for the down product (PreparedInt8), which saves that product a quantize launch.
        const int rows = targets.t[0].rows;
        // (In launches of several waves, as Llama 2 7B's, this lost 3%: 16 warps a block, one block an SM.)
        if (rows % 32 == 0 && int(blocks_for(rows, warps_per_block)) <= resident_blocks<T, 2, Epilogue::Swiglu>(ctx) &&
            rows / 32 <= resident_blocks<T, 4, Epilogue::SwigluQuantize>(ctx)) {
            const QuantizedActivations out_int8 = prepared_int8_scratch(ctx, size_t(rows));
            launch<T, 4, Epilogue::SwigluQuantize>(ctx, targets, n_blocks, q, rope_store, out_int8);
            publish_prepared_int8(ctx, targets.t[0].y, size_t(rows), out_int8);
            return;
        }
        // Two or four rows of each a warp where that makes the launch one wave (as
        // int8_matvec_rope_store's four rows), for the 4-bit types.
        if constexpr (four_bit<T>) {
            if (int(blocks_for(rows, warps_per_block * 2)) <= resident_blocks<T, 4, Epilogue::Swiglu>(ctx))
                return launch<T, 4, Epilogue::Swiglu>(ctx, targets, n_blocks, q, rope_store);
            if (int(blocks_for(rows, warps_per_block * 4)) <= resident_blocks<T, 8, Epilogue::Swiglu>(ctx))
                return launch<T, 8, Epilogue::Swiglu>(ctx, targets, n_blocks, q, rope_store);
        }
        return launch<T, 2, Epilogue::Swiglu>(ctx, targets, n_blocks, q, rope_store);
    }
    // Two rows per warp where one row each would take more than one wave of blocks (bandwidth-
    // bound): each activation load serves two rows, and the kernel's fewer registers (68 against
    // 77 for Q4_0) fit seven blocks on an SM instead of six. Where one row each fits in one wave,
    // twice the warps finish sooner. (This bound instead of 16,896 rows, H200 tg128: 7B 523 ->
    // 546, 13B 320 -> 334, TinyLlama unchanged.)
    size_t rows = 0;
    for (int i = 0; i < targets.n; ++i) rows += size_t(targets.t[i].rows);
    if (rows > size_t(warps_per_block) * resident_blocks<T, 1, Epilogue::Plain>(ctx))
        launch<T, 2, Epilogue::Plain>(ctx, targets, n_blocks, q, rope_store);
    else launch<T, 1, Epilogue::Plain>(ctx, targets, n_blocks, q, rope_store);
}

// Calls f.template operator()<T>() with an int8 kernel's type (with_decoder's, planar ones only).
template <class F> void with_int8_type(GGMLType type, F&& f) {
    bool planar = false;
    with_decoder(type, [&]<GGMLType T>() {
        if constexpr (Planar<T>::used) {
            planar = true;
            f.template operator()<T>();
        }
    });
    if (!planar) throw std::invalid_argument("CUDA int8 matvec: no kernel for " + std::string(type_name(type)));
}

void launch(Context& ctx, GGMLType type, const Targets& targets, size_t cols, const QuantizedActivations& q, bool swiglu) {
    with_int8_type(type, [&]<GGMLType T>() { launch<T>(ctx, targets, int(cols / 32), q, swiglu); });
}

Target target_of(const WeightMatrix& w, float* y, bool accumulate) {
    return {reinterpret_cast<const uint8_t*>(w.data), y, int(w.rows), 0, accumulate};
}

}  // namespace

QuantizedActivations prepared_int8_scratch(Context& ctx, size_t cols) {
    DeviceContext& device = device_of(ctx);
    return quantized_scratch(device, device.prepared_int8, cols);
}

void publish_prepared_int8(Context& ctx, const float* source, size_t cols, const QuantizedActivations& q) {
    device_of(ctx).prepared = {source, cols, q.qs, q.ds};
}

// Its own scratch: the producer's input may be PreparedInt8's.
NormPreparation prepared_norm_scratch(Context& ctx, size_t cols, int n_parts) {
    DeviceContext& device = device_of(ctx);
    return {quantized_scratch(device, device.norm_int8, cols),
            static_cast<float*>(device.norm_partials.get(size_t(n_parts) * sizeof(float), device.stream)), n_parts};
}

void publish_prepared_norm(Context& ctx, const float* source, const float* weight, size_t cols, const NormPreparation& p) {
    device_of(ctx).prepared_norm = {source, weight, cols, p.input.qs, p.input.ds, p.partial_sums, p.n_parts};
}

// The kernels read the planar layout: exactly the types the GPU keeps planar.
bool int8_matvec_supports(GGMLType type) { return planar_layout(type); }

void int8_matvec(Context& ctx, std::span<const MatmulOutput> outputs, size_t token, const float* x, const RmsNorm* norm) {
    if (outputs.empty()) return;
    const QuantizedActivations q = quantized(ctx, x, norm, outputs[0].w.cols);
    // Matrices of one type share a launch, up to max_targets of them (Q, K and V; gate and up).
    for (size_t first = 0; first < outputs.size();) {
        Targets targets{};
        const GGMLType type = outputs[first].w.type;
        size_t next = first;
        while (next < outputs.size() && targets.n < max_targets && outputs[next].w.type == type) {
            const MatmulOutput& o = outputs[next++];
            targets.t[targets.n++] = target_of(o.w, o.y + token * o.w.rows, o.accumulate);
        }
        launch(ctx, type, targets, outputs[first].w.cols, q, false);
        first = next;
    }
}

void int8_matvec_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, const RmsNorm* norm) {
    if (outputs.empty() || n_rows == 0) return;
    const size_t cols = outputs[0].w.cols;
    const QuantizedActivations q = norm ? rms_norm_quantize(ctx, x, *norm, cols, n_rows) : quantize_activations(ctx, x, n_rows * cols);
    const int n_blocks = int(cols / 32);
    const ExpertChoice rows_of_x{nullptr, int(n_rows), 0, n_blocks};
    for (size_t first = 0; first < outputs.size();) {
        Targets targets{};
        const GGMLType type = outputs[first].w.type;
        size_t next = first, rows = 0;
        while (next < outputs.size() && targets.n < max_targets && outputs[next].w.type == type) {
            const MatmulOutput& o = outputs[next++];
            targets.t[targets.n++] = target_of(o.w, o.y, o.accumulate);
            rows += o.w.rows;
        }
        // From min_mma_tokens rows of x on, the tensor cores; from min_shared_tokens on, a warp's
        // weight row serves several of them; below, two rows a warp where one each would take
        // more than a wave, as int8_matvec's (the sums of an output are the same every way: the
        // one-row kernel's lane's blocks in order, then its warp's).
        with_int8_type(type, [&]<GGMLType T>() {
            if (n_rows >= min_mma_tokens) {
                if (n_rows > 8) launch_mma_rows<T, 2>(ctx, targets, n_blocks, q, n_rows);
                else launch_mma_rows<T, 1>(ctx, targets, n_blocks, q, n_rows);
            } else if (n_rows >= min_shared_tokens) {
                // Four weight rows a warp (each activation block read once for four) where that
                // still makes two blocks an SM.
                const size_t blocks_of_one_row = blocks_for(rows, warps_per_block) * blocks_for(n_rows, tokens_per_warp);
                if (blocks_of_one_row >= size_t(8 * device_of(ctx).n_sms)) launch_tokens<T, 4>(ctx, targets, n_blocks, q, n_rows);
                else launch_tokens<T, 1>(ctx, targets, n_blocks, q, n_rows);
            } else if (rows * n_rows > size_t(warps_per_block) * resident_blocks<T, 1, Epilogue::Rows>(ctx))
                launch<T, 2, Epilogue::Rows>(ctx, targets, n_blocks, q, RopeStore{}, {}, {}, nullptr, rows_of_x);
            else launch<T, 1, Epilogue::Rows>(ctx, targets, n_blocks, q, RopeStore{}, {}, {}, nullptr, rows_of_x);
        });
        first = next;
    }
}

bool int8_matvec_then_norm(Context& ctx, const MatmulOutput& out, const float* x, const RmsNorm& next_norm) {
    const size_t rows = out.w.rows;
    if (!out.accumulate || rows % 32 != 0) return false;
    bool launched = false;
    with_int8_type(out.w.type, [&]<GGMLType T>() {
        if (rows / 32 > size_t(resident_blocks<T, 2, Epilogue::AccumulateNorm>(ctx))) return;
        DeviceContext& device = device_of(ctx);
        // x quantized by the kernel that wrote it, or else by this launch's blocks (x_float).
        const int n_blocks = int(out.w.cols / 32);
        const bool prepared = device.prepared.source == x && device.prepared.cols == out.w.cols;
        const bool quantize_here = !prepared && shared_activation_bytes(n_blocks) <= max_shared_activation_bytes &&
                                   reinterpret_cast<uintptr_t>(x) % 16 == 0;
        const QuantizedActivations q = quantize_here ? QuantizedActivations{} : quantized(ctx, x, nullptr, out.w.cols);
        const NormPreparation next = prepared_norm_scratch(ctx, rows, int(rows / 32));
        Targets targets{};
        targets.t[0] = target_of(out.w, out.y, true);
        targets.n = 1;
        launch<T, 2, Epilogue::AccumulateNorm>(ctx, targets, n_blocks, q, RopeStore{}, next.input,
                                               NormOut{next_norm.weight, next.partial_sums}, quantize_here ? x : nullptr);
        publish_prepared_norm(ctx, out.y, next_norm.weight, rows, next);
        launched = true;
    });
    return launched;
}

bool int8_matvec_experts(Context& ctx, const WeightMatrix& all, size_t rows, const int32_t* ids, size_t k,
                         const float* x, size_t x_stride, float* y, const WeightMatrix* up) {
    if (x_stride != 0 && x_stride != all.cols) return false;
    if (up && (up->type != all.type || up->rows != all.rows || up->cols != all.cols || x_stride != 0)) return false;
    // Each x_j quantized: one launch over the k contiguous rows.
    const QuantizedActivations q = quantized(ctx, x, nullptr, (x_stride ? k : 1) * all.cols);
    Targets targets{};
    targets.t[0] = target_of(all, y, false);
    targets.t[0].rows = int(rows);
    if (up) targets.t[1] = target_of(*up, nullptr, false);
    targets.n = up ? 2 : 1;
    const int n_blocks = int(all.cols / 32);
    const ExpertChoice experts{ids, int(k), int(all.rows), x_stride ? n_blocks : 0};
    with_int8_type(all.type, [&]<GGMLType T>() {
        if (up) return launch<T, 2, Epilogue::ExpertsSwiglu>(ctx, targets, n_blocks, q, RopeStore{}, {}, {}, nullptr, experts);
        // Two rows a warp where one each would take more than a wave, as for a plain product.
        if (k * rows > size_t(warps_per_block) * resident_blocks<T, 1, Epilogue::Experts>(ctx))
            launch<T, 2, Epilogue::Experts>(ctx, targets, n_blocks, q, RopeStore{}, {}, {}, nullptr, experts);
        else launch<T, 1, Epilogue::Experts>(ctx, targets, n_blocks, q, RopeStore{}, {}, {}, nullptr, experts);
    });
    return true;
}

void int8_matvec_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, const RmsNorm* norm,
                     float* out, Glu glu) {
    Targets targets{};
    targets.t[0] = target_of(gate, out, false);
    targets.t[1] = target_of(up, nullptr, false);
    targets.n = 2;
    targets.gelu = glu == Glu::GeluTanh;
    launch(ctx, gate.type, targets, gate.cols, quantized(ctx, x, norm, gate.cols), true);
}

bool int8_matvec_rope_store(Context& ctx, std::span<const MatmulOutput, 3> qkv, const float* x, const RmsNorm* norm,
                            const RopeParams& rope, size_t head_dim, const int32_t* position, CacheRows keys,
                            CacheRows values) {
    const GGMLType type = qkv[0].w.type;
    const bool fits = rope.pairing == RopeParams::Pairing::Adjacent && head_dim % 2 == 0 && rope.n_rot % 2 == 0 &&
                      rope.n_rot <= head_dim &&
                      std::all_of(qkv.begin(), qkv.end(), [&](const MatmulOutput& o) {
                          return o.w.type == type && !o.accumulate && o.w.rows % head_dim == 0;
                      });
    if (!fits) return false;
    Targets targets{};
    for (int i = 0; i < 3; ++i) targets.t[i] = target_of(qkv[i].w, qkv[i].y, false);
    targets.n = 3;
    const RopeStore rope_store{position, rotation_of(ctx, rope), int(head_dim), device_rows(keys), device_rows(values)};
    const QuantizedActivations q = quantized(ctx, x, norm, qkv[0].w.cols);
    const int n_blocks = int(qkv[0].w.cols / 32);
    with_int8_type(type, [&]<GGMLType T>() {
        // Four rows a warp (two pairs, one block of weights a lane in flight for each) where that
        // makes a launch of several waves one wave: its weights' first loads then start before the
        // wait, and no wave of it runs part-full.
        int blocks_of_2 = 0, blocks_of_4 = 0;
        for (int i = 0; i < 3; ++i) {
            blocks_of_2 += int(blocks_for(qkv[i].w.rows, warps_per_block * 2));
            blocks_of_4 += int(blocks_for(qkv[i].w.rows, warps_per_block * 4));
        }
        if (head_dim % 4 == 0 && blocks_of_2 > resident_blocks<T, 2, Epilogue::RopeStore>(ctx) &&
            blocks_of_4 <= resident_blocks<T, 4, Epilogue::RopeStore>(ctx))
            launch<T, 4, Epilogue::RopeStore>(ctx, targets, n_blocks, q, rope_store);
        else launch<T, 2, Epilogue::RopeStore>(ctx, targets, n_blocks, q, rope_store);
    });
    return true;
}

}  // namespace twinfer::compute::cuda
