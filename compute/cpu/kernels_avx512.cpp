// AVX-512 kernels (F, BW, VL, VNNI): 16-float vectors for the float kernels, VNNI integer dot
// products for the int8 ones. Compiled under a target pragma, chosen at run time (kernels.hpp).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "compute/cpu/kernels.hpp"
#include "format/quant.hpp"

#pragma GCC push_options
// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused source of unmasked
// intrinsics (reduce_add, cvtph, roundscale, scalef), which -Wuninitialized reports once inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")
#include <immintrin.h>

namespace twinfer::compute::cpu {
namespace {

struct FloatVec {
    using V = __m512;
    static constexpr size_t width = 16;
    static constexpr size_t gemm_rows = 12;   // 24 accumulators + 2 token vectors + 1 broadcast of 32 registers
    static V zero() { return _mm512_setzero_ps(); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V set1(float f) { return _mm512_set1_ps(f); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V div(V a, V b) { return _mm512_div_ps(a, b); }
    static V min(V a, V b) { return _mm512_min_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static float hsum(V v) { return _mm512_reduce_add_ps(v); }
    static V round(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static V scale_pow2(V y, V n) { return _mm512_scalef_ps(y, n); }
    static V load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static V load_bf16(const uint16_t* p) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    }
};
constexpr bool avx512 = true;

}  // namespace

#include "compute/cpu/simd_int8.inl"
#include "compute/cpu/simd_float.inl"

const Kernels& avx512_kernels() {
    static const Kernels table{CpuIsa::AVX512, matvec, matvec_q8<Q8Block>, matvec_q8<Q8x2Block>, quantize_q8x2, dequantize_row, NR, gemm, attend, swiglu, gelu, widen};
    return table;
}

}  // namespace twinfer::compute::cpu
#pragma GCC diagnostic pop
#pragma GCC pop_options
