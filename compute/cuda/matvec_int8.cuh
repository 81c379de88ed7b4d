#pragma once
// Inside the CUDA backend: the matrix-vector product over int8 activations (matvec_int8.cu), which
// matmul.cu calls for one token when the model asks for Activations::Int8, and the quantization of
// its input by the kernels that produce it.
#include <cstddef>
#include <cstdint>
#include <span>

#include "compute/cuda/cache_rows.cuh"
#include "compute/cuda/device_context.cuh"
#include "compute/matmul.hpp"
#include "compute/rope.hpp"

namespace twinfer::compute::cuda {

// An RMSNorm still to apply to products of activations quantized before it (PreparedNorm): their
// sums scaled by 1 / sqrt(sum(partial_sums) / cols + eps).
struct NormScale {
    const float* partial_sums = nullptr;   // [n_parts]; none where null
    int n_parts = 0;
    float inverse_cols = 0.0f, eps = 0.0f;
};

// One token's activations quantized per 32 values (d = max|x| / 127, q = round(x / d), as the
// CPU's quantize_q8 and llama.cpp's Q8_0), with each block's d * sum(q).
struct QuantizedActivations {
    int8_t* qs;    // [cols]
    float2* ds;    // [cols / 32]: (d, d * sum(q))
    NormScale norm_scale = {};
};

// For a kernel that produces one token's [cols] activations in float and quantizes them on the way
// out (quantize_in_warp): where it writes them. Once it is launched, publish_prepared_int8 hands
// them to the next launch, if that is an int8 product over `source` (PreparedInt8).
QuantizedActivations prepared_int8_scratch(Context& ctx, size_t cols);
void publish_prepared_int8(Context& ctx, const float* source, size_t cols, const QuantizedActivations& q);

// For a kernel that leaves one token's row ready for the next products' RMSNorm (PreparedNorm):
// where it writes weight * row quantized per 32 values and the row's sum of squares in n_parts
// parts. Once it is launched, publish_prepared_norm hands them to the next launch, if that is an
// int8 product with that norm over `source`.
struct NormPreparation {
    QuantizedActivations input;
    float* partial_sums;   // [n_parts]
    int n_parts;
};
NormPreparation prepared_norm_scratch(Context& ctx, size_t cols, int n_parts);
void publish_prepared_norm(Context& ctx, const float* source, const float* weight, size_t cols, const NormPreparation& p);

// Value i of the activations, held by a lane whose warp holds the whole 32-value block (i / 32):
// the block's max|x| and sum of codes by shuffles.
__device__ __forceinline__ void quantize_in_warp(float v, int i, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    float amax = fabsf(v);
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = __float2int_rn(v * inverse);
    qs[i] = int8_t(q);
    int sum = q;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (i % 32 == 0) ds[i / 32] = make_float2(d, d * float(sum));
}

// The same quantization by one thread for a whole 32-value block x (16-byte aligned; a kernel that
// quantizes a row it did not write, each thread a block, with no shuffles): qs (16-byte aligned)
// gets the 32 codes, *ds (d, d * sum(q)). Bit for bit quantize_in_warp's: the max is exact, the
// rest the same operations on the same values.
__device__ __forceinline__ void quantize_block(const float* __restrict__ x, int8_t* qs, float2* ds) {
    float4 v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __ldg(reinterpret_cast<const float4*>(x) + k);
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k)
        amax = fmaxf(fmaxf(amax, fmaxf(fabsf(v[k].x), fabsf(v[k].y))), fmaxf(fabsf(v[k].z), fabsf(v[k].w)));
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    int words[8], sum = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int q0 = __float2int_rn(v[k].x * inverse), q1 = __float2int_rn(v[k].y * inverse);
        const int q2 = __float2int_rn(v[k].z * inverse), q3 = __float2int_rn(v[k].w * inverse);
        sum += q0 + q1 + q2 + q3;
        words[k] = (q0 & 0xff) | (q1 & 0xff) << 8 | (q2 & 0xff) << 16 | int(uint32_t(q3 & 0xff) << 24);
    }
    reinterpret_cast<int4*>(qs)[0] = make_int4(words[0], words[1], words[2], words[3]);
    reinterpret_cast<int4*>(qs)[1] = make_int4(words[4], words[5], words[6], words[7]);
    *ds = make_float2(d, d * float(sum));
}

// The same quantization for a row held as float4s, a thread's v being float4 i of the row: value
// block i / 8 reduced by the 8 lanes that hold its float4s (lanes 8k .. 8k + 7 of a warp), by
// shuffles among themselves, with quantize_in_warp's operations on the same values.
__device__ __forceinline__ void quantize_in_lanes(float4 v, int i, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    const unsigned lanes = 0xffu << (threadIdx.x % 32 / 8 * 8);
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    for (int offset = 4; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(lanes, amax, offset));
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    const int q0 = __float2int_rn(v.x * inverse), q1 = __float2int_rn(v.y * inverse);
    const int q2 = __float2int_rn(v.z * inverse), q3 = __float2int_rn(v.w * inverse);
    reinterpret_cast<int*>(qs)[i] = (q0 & 0xff) | (q1 & 0xff) << 8 | (q2 & 0xff) << 16 | int(uint32_t(q3 & 0xff) << 24);
    int sum = q0 + q1 + q2 + q3;
    for (int offset = 4; offset > 0; offset /= 2) sum += __shfl_xor_sync(lanes, sum, offset);
    if (i % 8 == 0) ds[i / 8] = make_float2(d, d * float(sum));
}

bool int8_matvec_supports(GGMLType type);
// y = W x (or y += W x, MatmulOutput::accumulate) for token `token` of every output, whose types
// int8_matvec_supports (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4): up to three matrices of one type per launch.
// x: the token's [cols] floats; norm (or null): x := RMSNorm(x) * norm.weight first, also written
// to norm->out (the token's row) — except where x's producer prepared that norm (PreparedNorm,
// int8_matvec_then_norm): then its quantized input and sums of squares are used, nothing written.
void int8_matvec(Context& ctx, std::span<const MatmulOutput> outputs, size_t token, const float* x, const RmsNorm* norm);
// y_t = W x_t (or +=) for each of n_rows rows of x ([n_rows, cols]) into row t of every output's y,
// one launch per type: each row's sums exactly those of int8_matvec of that row alone (norm: each
// row normalized alone, written to its row of norm->out, in one launch too).
void int8_matvec_rows(Context& ctx, std::span<const MatmulOutput> outputs, const float* x, size_t n_rows, const RmsNorm* norm);
// A decode step's q, k, v = the products qkv (as int8_matvec, token 0), with RoPE on q and k at
// *position and k and v written to row *position of keys and values, in the products' one launch
// (compute::project_rope_store_at). False, with nothing done, where that launch cannot: pairs
// other than Adjacent, matrices of different types, rows not whole heads.
bool int8_matvec_rope_store(Context& ctx, std::span<const MatmulOutput, 3> qkv, const float* x, const RmsNorm* norm,
                            const RopeParams& rope, size_t head_dim, const int32_t* position, CacheRows keys,
                            CacheRows values);
// y += W x for one token, the single output `out` (accumulate) a residual that the caller's next
// products normalize with next_norm: that norm's input prepared in the same launch
// (PreparedNorm), so that those products, given next_norm on out.y, launch no norm (and leave
// next_norm.out unwritten). False, with nothing done, where it cannot: rows not a multiple of 32,
// more than one wave of its blocks. x: as the kernel that wrote it quantized it (PreparedInt8), or
// else quantized by this launch's blocks themselves.
bool int8_matvec_then_norm(Context& ctx, const MatmulOutput& out, const float* x, const RmsNorm& next_norm);
// y_j = W_{ids[j]} x_j for j < k (compute::matmul_experts): `all` the experts' matrices stacked,
// `rows` rows each, planar and of a type int8_matvec_supports; x_j = x + j * x_stride. With `up`
// (the up experts, of all's type and shape; one x): y_j = silu(all_j x) * (up_j x) in the same
// launch (compute::matmul_experts_swiglu). False, with nothing done, for an x_stride other than 0
// (one x) or all.cols (k contiguous rows), or an up unlike all.
bool int8_matvec_experts(Context& ctx, const WeightMatrix& all, size_t rows, const int32_t* ids, size_t k,
                         const float* x, size_t x_stride, float* y, const WeightMatrix* up = nullptr);
// out = act(W_gate x) * (W_up x) (compute::matmul_glu), gate and up of one shape and type, in one launch.
void int8_matvec_glu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const float* x, const RmsNorm* norm,
                     float* out, Glu glu);

}  // namespace twinfer::compute::cuda
