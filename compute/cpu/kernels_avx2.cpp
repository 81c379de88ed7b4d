// AVX2 + FMA + F16C kernels: 8-float vectors, integer dot products through maddubs + madd.
// Compiled under a target pragma, chosen at run time (kernels.hpp).
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
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace twinfer::compute::cpu {
namespace {

struct FloatVec {
    using V = __m256;
    static constexpr size_t width = 8;
    static constexpr size_t gemm_rows = 6;   // 12 accumulators + 2 token vectors + 1 broadcast of 16 registers
    static V zero() { return _mm256_setzero_ps(); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V set1(float f) { return _mm256_set1_ps(f); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static V min(V a, V b) { return _mm256_min_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static float hsum(V v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    // Lane i: hsum(v[i]), by the same tree for all 8 at once: each level adds the halves of pairs
    // of vectors side by side. The levels leave v[2j + l]'s sum in lane 4l + j; the last permute
    // puts it in lane 2j + l.
    static V hsums(const V* v) {
        V a[4], b[2];
        for (int i = 0; i < 4; ++i)
            a[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                                 _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
        for (int i = 0; i < 2; ++i)
            b[i] = _mm256_add_ps(_mm256_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        const V sums = _mm256_add_ps(_mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm256_shuffle_ps(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
        return _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    static V round(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    // y * 2^n through the exponent field; n >= -126 after vexp's clamp.
    static V scale_pow2(V y, V n) {
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    }
    static V load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static V load_bf16(const uint16_t* p) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    }
    static V load_i8(const int8_t* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))); }
};
constexpr bool avx512 = false;

}  // namespace

#include "compute/cpu/simd_int8.inl"
#include "compute/cpu/simd_float.inl"

const Kernels& avx2_kernels() {
    static const Kernels table{CpuIsa::AVX2, matvec, matvec_q8<Q8Block>, matvec_q8<Q8x2Block>, nullptr, quantize_q8x2, dequantize_row, NR, gemm, nullptr, nullptr, nullptr, attend, AR, attend_block_scratch_bytes, attend_block, swiglu, gelu, widen};
    return table;
}

}  // namespace twinfer::compute::cpu
#pragma GCC pop_options
