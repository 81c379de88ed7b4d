// Matrix-vector products over int8 activations, llama.cpp's mmvq scheme: the token's activations
// are quantized once per product (a small kernel), then each warp streams one or two weight rows,
// every lane taking whole 32-weight blocks in turn (lane, lane + 32, ...) and multiplying its
// 4-bit, 5-bit or 8-bit codes by the int8 activations four at a time (__dp4a), in integers, with
// one float multiply-add per block for the scales.
//
// Why not the float kernel (matmul.cu): decoding every weight to float costs 32 conversions and 32
// FMAs per block per lane, and the staging that made its loads coalesced needs up to 96 KiB of
// shared memory per block, so few blocks fit on an SM and too few loads are in flight to cover
// DRAM's latency. Here a block is 4 warps and no shared memory: an SM holds 16 of them.
//
// Loads: the weights are in the planar layout (quant_decode.cuh), so a lane reads its block's codes
// with one 16-byte load (two for Q8_0) and its scale with one more; a warp's load instruction
// covers 512 contiguous bytes.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "compute/cuda/device_context.cuh"
#include "compute/cuda/matvec_int8.cuh"
#include "compute/cuda/quant_decode.cuh"

namespace twinfer::compute::cuda {
namespace {

constexpr int warps_per_block = 4;

// Value i of x, held by a lane whose warp holds the whole 32-value block: the block's max|x| and
// sum of codes by shuffles.
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

// One warp per 32-value block of x.
__global__ void quantize_kernel(const float* __restrict__ x, int n, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    grid_dependency_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;   // n is a multiple of 32: whole warps leave
    quantize_in_warp(x[i], i, qs, ds);
}

// RMSNorm and quantization in one block (one launch where there were two): x read once into
// registers, the sum of squares reduced over the block, then each warp normalizes, writes and
// quantizes whole 32-value blocks (the block size is a multiple of 32).
constexpr int norm_threads = 1024, norm_values_per_thread = 8;   // rows up to 8192 values
__global__ void __launch_bounds__(norm_threads)
rms_norm_quantize_kernel(const float* __restrict__ x, const float* __restrict__ weight, int n, float eps,
                         float* __restrict__ out, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    grid_dependency_wait();
    float v[norm_values_per_thread];
    float sum_squares = 0.0f;
#pragma unroll
    for (int k = 0; k < norm_values_per_thread; ++k) {
        const int i = threadIdx.x + k * norm_threads;
        v[k] = i < n ? x[i] : 0.0f;
        sum_squares += v[k] * v[k];
    }
    const float inv_rms = rsqrtf(block_sum(sum_squares) / n + eps);
#pragma unroll
    for (int k = 0; k < norm_values_per_thread; ++k) {
        const int i = threadIdx.x + k * norm_threads;
        if (i >= n) break;   // n is a multiple of 32: whole warps leave
        const float y = v[k] * inv_rms * weight[i];
        out[i] = y;
        quantize_in_warp(y, i, qs, ds);
    }
}

// The 32 activations of one block as 8 words of 4 int8 each: a[k] holds values 4k .. 4k+3.
struct ActivationBlock {
    int a[8];
    float2 ds;
};

// Per type: block i's dot product with an activation block, from the planar layout
// (quant_decode.cuh): the codes in one or two 16-byte loads. Codes c in [0, 16) or [0, 32) stand
// for d * (c - offset) (Q4_0, Q5_0) or d * c + m (Q4_1, Q5_1); the offset or m term uses the
// activations' d * sum(q).
template <GGMLType T> struct Int8Dot;

// 4-bit codes of word k of the codes (bytes 4k .. 4k+3): low nibbles are weights 4k.., high ones 16+4k..
__device__ __forceinline__ int nibble_dot(uint32_t word, int k, const ActivationBlock& x, int dot) {
    dot = __dp4a(int(word & 0x0F0F0F0Fu), x.a[k], dot);
    return __dp4a(int((word >> 4) & 0x0F0F0F0Fu), x.a[4 + k], dot);
}

// The fifth bits of four weights 4k.. (qh shifted so that bit 0 is weight 4k's) at bit 4 of each byte.
__device__ __forceinline__ uint32_t fifth_bits_of(uint32_t qh) {
    return ((qh << 4) & 0x10u) | ((qh << 11) & 0x1000u) | ((qh << 18) & 0x100000u) | ((qh << 25) & 0x10000000u);
}

__device__ __forceinline__ int five_bit_dot(uint32_t word, uint32_t qh, int k, const ActivationBlock& x, int dot) {
    dot = __dp4a(int((word & 0x0F0F0F0Fu) | fifth_bits_of(qh >> (4 * k))), x.a[k], dot);
    return __dp4a(int(((word >> 4) & 0x0F0F0F0Fu) | fifth_bits_of(qh >> (16 + 4 * k))), x.a[4 + k], dot);
}

__device__ __forceinline__ void words_of(const uint8_t* p, uint32_t (&w)[4]) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
}

template <GGMLType T> __device__ __forceinline__ int four_or_five_bit_dot(const PlanarView<T>& v, size_t i, const ActivationBlock& x) {
    uint32_t w[4];
    words_of(v.codes_of(i), w);
    int dot = 0;
    if constexpr (Planar<T>::high_bytes != 0) {
        const uint32_t qh = __ldg(reinterpret_cast<const uint32_t*>(v.high) + i);
#pragma unroll
        for (int k = 0; k < 4; ++k) dot = five_bit_dot(w[k], qh, k, x, dot);
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) dot = nibble_dot(w[k], k, x, dot);
    }
    return dot;
}

template <> struct Int8Dot<GGMLType::Q4_0> {
    __device__ static float dot(const PlanarView<GGMLType::Q4_0>& v, size_t i, const ActivationBlock& x) {
        const int dot = four_or_five_bit_dot(v, i, x);
        return __half2float(__ldg(reinterpret_cast<const __half*>(v.scales) + i)) * (x.ds.x * float(dot) - 8.0f * x.ds.y);
    }
};

template <> struct Int8Dot<GGMLType::Q5_0> {
    __device__ static float dot(const PlanarView<GGMLType::Q5_0>& v, size_t i, const ActivationBlock& x) {
        const int dot = four_or_five_bit_dot(v, i, x);
        return __half2float(__ldg(reinterpret_cast<const __half*>(v.scales) + i)) * (x.ds.x * float(dot) - 16.0f * x.ds.y);
    }
};

template <GGMLType T> __device__ __forceinline__ float with_min_dot(const PlanarView<T>& v, size_t i, const ActivationBlock& x) {
    const int dot = four_or_five_bit_dot(v, i, x);
    const float2 dm = __half22float2(__ldg(reinterpret_cast<const __half2*>(v.scales) + i));
    return dm.x * x.ds.x * float(dot) + dm.y * x.ds.y;
}
template <> struct Int8Dot<GGMLType::Q4_1> {
    __device__ static float dot(const PlanarView<GGMLType::Q4_1>& v, size_t i, const ActivationBlock& x) {
        return with_min_dot(v, i, x);
    }
};
template <> struct Int8Dot<GGMLType::Q5_1> {
    __device__ static float dot(const PlanarView<GGMLType::Q5_1>& v, size_t i, const ActivationBlock& x) {
        return with_min_dot(v, i, x);
    }
};

template <> struct Int8Dot<GGMLType::Q8_0> {
    __device__ static float dot(const PlanarView<GGMLType::Q8_0>& v, size_t i, const ActivationBlock& x) {
        uint32_t lo[4], hi[4];
        words_of(v.codes_of(i), lo);
        words_of(v.codes_of(i) + 16, hi);
        int dot = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) dot = __dp4a(int(lo[k]), x.a[k], dot);
#pragma unroll
        for (int k = 0; k < 4; ++k) dot = __dp4a(int(hi[k]), x.a[4 + k], dot);
        return __half2float(__ldg(reinterpret_cast<const __half*>(v.scales) + i)) * x.ds.x * float(dot);
    }
};

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
};

// Rows: rows per warp. Swiglu: the launch's two targets are gate and up; a warp takes row r of
// both and writes silu(gate x) * (up x) to target 0's y (Rows is then 2: one row of each).
template <GGMLType T, int Rows, bool Swiglu>
__global__ void __launch_bounds__(warps_per_block * 32)
int8_matvec_kernel(Targets targets, int n_blocks, const int8_t* __restrict__ qs, const float2* __restrict__ ds) {
    grid_dependency_wait();
    // The block's target, by constant indices: a runtime index into the parameters would copy
    // them to the stack (local memory) first.
    Target target = targets.t[0];
    if constexpr (!Swiglu) {
#pragma unroll
        for (int i = 1; i < max_targets; ++i)
            if (i < targets.n && int(blockIdx.x) >= targets.t[i].first_block) target = targets.t[i];
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    constexpr int rows_of_target = Swiglu ? 1 : Rows;
    const int first_row = ((int(blockIdx.x) - target.first_block) * warps_per_block + warp) * rows_of_target;
    if (first_row >= target.rows) return;
    // Row r's block b is block r * n_blocks + b of its matrix.
    PlanarView<T> view[Rows];
    size_t first_block_of[Rows];
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
        const Target& m = Swiglu && r == 1 ? targets.t[1] : target;
        view[r] = PlanarView<T>(m.w, size_t(m.rows) * n_blocks);
        first_block_of[r] = size_t(Swiglu ? first_row : min(first_row + r, target.rows - 1)) * n_blocks;
    }
    float acc[Rows] = {};
#pragma unroll 4
    for (int b = lane; b < n_blocks; b += 32) {
        ActivationBlock x;
        const int4* a4 = reinterpret_cast<const int4*>(qs + 32 * b);
        const int4 lo = __ldg(a4), hi = __ldg(a4 + 1);
        x.a[0] = lo.x, x.a[1] = lo.y, x.a[2] = lo.z, x.a[3] = lo.w;
        x.a[4] = hi.x, x.a[5] = hi.y, x.a[6] = hi.z, x.a[7] = hi.w;
        x.ds = __ldg(ds + b);
#pragma unroll
        for (int r = 0; r < Rows; ++r) acc[r] += Int8Dot<T>::dot(view[r], first_block_of[r] + b, x);
    }
    float total[Rows];
#pragma unroll
    for (int r = 0; r < Rows; ++r) total[r] = warp_sum(acc[r]);
    if (lane != 0) return;
    if constexpr (Swiglu) {
        target.y[first_row] = total[0] / (1.0f + expf(-total[0])) * total[1];
    } else {
#pragma unroll
        for (int r = 0; r < Rows; ++r) {
            if (first_row + r >= target.rows) break;
            float& y = target.y[first_row + r];
            y = target.accumulate ? y + total[r] : total[r];
        }
    }
}

template <GGMLType T, int Rows, bool Swiglu>
void launch(Context& ctx, Targets targets, int n_blocks, const QuantizedActivations& x) {
    int blocks = 0;
    for (int i = 0; i < targets.n; ++i) {
        targets.t[i].first_block = blocks;
        blocks += int(blocks_for(targets.t[i].rows, warps_per_block * (Swiglu ? 1 : Rows)));
        if (Swiglu) break;   // one grid over the rows that gate and up share
    }
    launch_after_previous(ctx, int8_matvec_kernel<T, Rows, Swiglu>, unsigned(blocks), warps_per_block * 32, 0, targets,
                          n_blocks, x.qs, x.ds);
}

template <GGMLType T>
void launch(Context& ctx, const Targets& targets, int n_blocks, const QuantizedActivations& x, bool swiglu) {
    if (swiglu) return launch<T, 2, true>(ctx, targets, n_blocks, x);
    // Two rows per warp share each activation load, which halves the L1 traffic for x; only where
    // there are rows enough to keep every SM busy with half as many warps.
    size_t rows = 0;
    for (int i = 0; i < targets.n; ++i) rows += size_t(targets.t[i].rows);
    const size_t two_row_minimum = size_t(device_of(ctx).n_sms) * 16 * warps_per_block * 2;
    if (rows >= two_row_minimum) launch<T, 2, false>(ctx, targets, n_blocks, x);
    else launch<T, 1, false>(ctx, targets, n_blocks, x);
}

void launch(Context& ctx, GGMLType type, const Targets& targets, size_t cols, const QuantizedActivations& x, bool swiglu) {
    const int n_blocks = int(cols / 32);
    switch (type) {
    case GGMLType::Q4_0: return launch<GGMLType::Q4_0>(ctx, targets, n_blocks, x, swiglu);
    case GGMLType::Q4_1: return launch<GGMLType::Q4_1>(ctx, targets, n_blocks, x, swiglu);
    case GGMLType::Q5_0: return launch<GGMLType::Q5_0>(ctx, targets, n_blocks, x, swiglu);
    case GGMLType::Q5_1: return launch<GGMLType::Q5_1>(ctx, targets, n_blocks, x, swiglu);
    case GGMLType::Q8_0: return launch<GGMLType::Q8_0>(ctx, targets, n_blocks, x, swiglu);
    default: throw std::invalid_argument("CUDA int8 matvec: no kernel for " + std::string(type_name(type)));
    }
}

// The context's scratch for one token's quantized activations.
QuantizedActivations activation_scratch(Context& ctx, size_t cols) {
    DeviceContext& device = device_of(ctx);
    const size_t qs_bytes = (cols + 15) / 16 * 16;
    auto* scratch = static_cast<uint8_t*>(device.activations_int8.get(qs_bytes + cols / 32 * sizeof(float2), device.stream));
    return {reinterpret_cast<int8_t*>(scratch), reinterpret_cast<float2*>(scratch + qs_bytes)};
}

Target target_of(const WeightMatrix& w, float* y, bool accumulate) {
    return {reinterpret_cast<const uint8_t*>(w.data), y, int(w.rows), 0, accumulate};
}

}  // namespace

// The kernels read the planar layout: exactly the types the GPU keeps planar.
bool int8_matvec_supports(GGMLType type) { return planar_layout(type); }

QuantizedActivations quantize_activations(Context& ctx, const float* x, size_t cols) {
    const QuantizedActivations q = activation_scratch(ctx, cols);
    launch_after_previous(ctx, quantize_kernel, blocks_for(cols, 256), 256, 0, x, int(cols),
                          const_cast<int8_t*>(q.qs), const_cast<float2*>(q.ds));
    return q;
}

bool rms_norm_quantize_supports(size_t cols) { return cols % 32 == 0 && cols <= size_t(norm_threads * norm_values_per_thread); }

QuantizedActivations rms_norm_quantize(Context& ctx, const float* x, const RmsNorm& norm, size_t cols) {
    if (!rms_norm_quantize_supports(cols))
        throw std::invalid_argument("CUDA rms_norm_quantize: " + std::to_string(cols) + " values (a multiple of 32 up to " +
                                    std::to_string(norm_threads * norm_values_per_thread) + ")");
    const QuantizedActivations q = activation_scratch(ctx, cols);
    launch_after_previous(ctx, rms_norm_quantize_kernel, 1, norm_threads, 0, x, norm.weight, int(cols), norm.eps, norm.out,
                          const_cast<int8_t*>(q.qs), const_cast<float2*>(q.ds));
    return q;
}

void int8_matvec(Context& ctx, std::span<const MatmulOutput> outputs, size_t token, const QuantizedActivations& x) {
    // Matrices of one type share a launch, up to max_targets of them (Q, K and V; gate and up).
    for (size_t first = 0; first < outputs.size();) {
        Targets targets{};
        const GGMLType type = outputs[first].w.type;
        size_t next = first;
        while (next < outputs.size() && targets.n < max_targets && outputs[next].w.type == type) {
            const MatmulOutput& o = outputs[next++];
            targets.t[targets.n++] = target_of(o.w, o.y + token * o.w.rows, o.accumulate);
        }
        launch(ctx, type, targets, outputs[first].w.cols, x, false);
        first = next;
    }
}

void int8_matvec_swiglu(Context& ctx, const WeightMatrix& gate, const WeightMatrix& up, const QuantizedActivations& x,
                        float* out) {
    Targets targets{};
    targets.t[0] = target_of(gate, out, false);
    targets.t[1] = target_of(up, nullptr, false);
    targets.n = 2;
    launch(ctx, gate.type, targets, gate.cols, x, true);
}

}  // namespace twinfer::compute::cuda
