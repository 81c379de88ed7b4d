// Portable kernels: the float kernels over one-float "vectors", for CPUs without AVX2. No int8
// kernels: quantized weights are read with float activations.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <utility>

#include "compute/cpu/kernels.hpp"
#include "format/quant.hpp"

namespace twinfer::compute::cpu {
namespace {

struct FloatVec {
    using V = float;
    static constexpr size_t width = 1;
    static constexpr size_t gemm_rows = 4;
    static V zero() { return 0.0f; }
    static V load(const float* p) { return *p; }
    static void store(float* p, V v) { *p = v; }
    static V set1(float f) { return f; }
    static V add(V a, V b) { return a + b; }
    static V sub(V a, V b) { return a - b; }
    static V mul(V a, V b) { return a * b; }
    static V div(V a, V b) { return a / b; }
    static V min(V a, V b) { return std::min(a, b); }
    static V max(V a, V b) { return std::max(a, b); }
    static V fma(V a, V b, V c) { return a * b + c; }
    static float hsum(V v) { return v; }
    static V hsums(const V* v) { return v[0]; }
    static V round(V v) { return std::nearbyint(v); }
    static V scale_pow2(V y, V n) { return std::ldexp(y, static_cast<int>(n)); }
    static V load_f16(const uint16_t* p) { return fp16_to_fp32(*p); }
    static V load_bf16(const uint16_t* p) { return bf16_to_fp32(*p); }
    static V load_i8(const int8_t* p) { return float(*p); }
};

void dequantize_row(GGMLType type, const std::byte* src, size_t n, float* dst) {
    dequantize(type, {src, row_size_bytes(type, n)}, std::span<float>(dst, n));
}

}  // namespace

#include "compute/cpu/simd_float.inl"

const Kernels& generic_kernels() {
    static const Kernels table{CpuIsa::Generic, matvec, nullptr, nullptr, nullptr, nullptr, dequantize_row, NR, gemm, nullptr, nullptr, nullptr, attend, AR, attend_block_scratch_bytes, attend_block, swiglu, gelu, widen};
    return table;
}

}  // namespace twinfer::compute::cpu
