// AVX-512 kernels (F, BW, VL, VNNI): 16-float vectors for the float kernels, VNNI integer dot
// products for the int8 ones. Compiled under a target pragma, chosen at run time (kernels.hpp).
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
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
    // Σ lanes by halves: lanes i and i + 8, then j and j + 4, k and k + 2, 0 and 1.
    static float hsum(V v) {
        const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
    }
    // Lane i: hsum(v[i]), by the same tree for all 16 at once: each level adds the halves of pairs
    // of vectors side by side. The levels leave v[4j + l]'s sum in lane 4l + j; the last permute
    // puts it in lane 4j + l.
    static V hsums(const V* v) {
        V a[8], b[4], c[2];
        for (int i = 0; i < 8; ++i)
            a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        for (int i = 0; i < 4; ++i)
            b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
        for (int i = 0; i < 2; ++i)
            c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        const V sums = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
        return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sums);
    }
    static V round(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static V scale_pow2(V y, V n) { return _mm512_scalef_ps(y, n); }
    static V load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static V load_bf16(const uint16_t* p) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    }
    static V load_i8(const int8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))); }
};
constexpr bool avx512 = true;

}  // namespace

#include "compute/cpu/simd_int8.inl"
#include "compute/cpu/simd_float.inl"
#include "compute/cpu/gemm_q8_avx512.inl"

namespace {

// DotWithMin's and DotSigned's dot<4> with Q8x2 activations (simd_int8.inl), two rows a 512-bit
// vector from the rows' Q8x2Quads: row 2p + h lives in half h of pair p's vectors, where each
// lane holds what the row's own 256-bit dot<1> holds in that lane, by the same operations in the
// same order (the block's dots, the shift, the conversion, the scale d_w d_y, the FMA onto the
// even or odd blocks' accumulator; the final sums as dot<1>'s), so a row's result is the same bits
// (MatmulRowsTest). A many-row step is bound by the per-row vector instructions, not the weight
// reads (BENCHMARKS.md, issue 19): here a row costs about half of dot<4>'s.
inline __m512i both_halves(__m256i v) { return _mm512_broadcast_i64x4(v); }
inline __m512i load512(const int8_t* p) { return _mm512_loadu_si512(p); }

// Two rows' block dots with unsigned weight bytes u (in both halves), 256 hi + lo as in block_dot.
inline __m512 pair_dot(__m512i u, __m512i hi, __m512i lo) {
    const __m512i h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, hi);
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_slli_epi32(h, 8), u, lo));
}

// dot<1>'s final hsum8(acc0 + acc1) of the pair's two rows.
inline void pair_sums(__m512 acc0, __m512 acc1, float* sums) {
    const __m512 s = _mm512_add_ps(acc0, acc1);
    sums[0] = hsum8(_mm512_castps512_ps256(s));
    sums[1] = hsum8(_mm512_extractf32x8_ps(s, 1));
}

// The block loop of dot<G>: even blocks onto acc0, odd ones onto acc1.
template <class F>
inline void alternate_blocks(size_t n_cols, F&& block) {
    const size_t nb = n_cols / 32;
    size_t i = 0;
    for (; i + 1 < nb; i += 2) {
        block(i, 0);
        block(i + 1, 1);
    }
    if (i < nb) block(i, 0);
}

// dot<Q>: Q groups of four rows (their quads x + q * x_stride) at once, so that a weight block's
// decoding is shared by 4Q rows; the 512-bit instructions have two ports where the 256-bit ones
// had three, so the decoding (~9 of them a block) is what 8 rows a call halves again per row.
#define TWINFER_FOR_PAIRS _Pragma("GCC unroll 8") for (int p = 0; p < 2 * Q; ++p)
#define TWINFER_FOR_QUADS _Pragma("GCC unroll 4") for (int q = 0; q < Q; ++q)

template <class Block, class Values>
struct QuadDotWithMin {
    template <int Q>
    static void dot(const Block* w, const Q8x2Quad* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m512 acc[2][2 * Q];
        __m128 min_sum[2][Q];   // lane g: row 4q + g's min0 / min1
        TWINFER_FOR_PAIRS acc[0][p] = acc[1][p] = _mm512_setzero_ps();
        TWINFER_FOR_QUADS min_sum[0][q] = min_sum[1][q] = _mm_setzero_ps();
        alternate_blocks(n_cols, [&](size_t i, int odd) {
            const __m512 d = _mm512_set1_ps(half(w[i].d));
            const __m128 m = _mm_set1_ps(half(w[i].m));
            const __m512i u = both_halves(Values::of(w[i]));
            TWINFER_FOR_PAIRS {
                const Q8x2Quad& y = x[p / 2 * x_stride + i];
                acc[odd][p] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_loadu_ps(y.d[p % 2])),
                                              pair_dot(u, load512(y.hi[p % 2]), load512(y.lo[p % 2])), acc[odd][p]);
            }
            TWINFER_FOR_QUADS min_sum[odd][q] = _mm_fmadd_ps(m, _mm_loadu_ps(x[q * x_stride + i].sum), min_sum[odd][q]);
        });
        TWINFER_FOR_QUADS {
            float sums[4], min0[4], min1[4];
            pair_sums(acc[0][2 * q], acc[1][2 * q], sums);
            pair_sums(acc[0][2 * q + 1], acc[1][2 * q + 1], sums + 2);
            _mm_storeu_ps(min0, min_sum[0][q]);
            _mm_storeu_ps(min1, min_sum[1][q]);
            for (int g = 0; g < 4; ++g) out[(4 * q + g) * y_stride] = sums[g] + min0[g] + min1[g];
        }
    }
};

// DotSigned's (Q8_0, MXFP4).
template <class Block, class Values>
struct QuadDotSigned {
    template <int Q>
    static void dot(const Block* w, const Q8x2Quad* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m512 acc[2][2 * Q];
        TWINFER_FOR_PAIRS acc[0][p] = acc[1][p] = _mm512_setzero_ps();
        alternate_blocks(n_cols, [&](size_t i, int odd) {
            const __m512 d = _mm512_set1_ps(scale_of(w[i]));
            const __m512i q = both_halves(Values::of(w[i]));
            const __m512i u = _mm512_abs_epi8(q);
            // block_dot_signed's sign_epi8 (no 512-bit form): negate where the weight is negative;
            // where it is zero the digit stays, but u is 0 there, so the dot is the same.
            const __mmask64 negative = _mm512_movepi8_mask(q);
            auto with_sign = [&](const int8_t* digits) {
                const __m512i v = load512(digits);
                return _mm512_mask_sub_epi8(v, negative, _mm512_setzero_si512(), v);
            };
            TWINFER_FOR_PAIRS {
                const Q8x2Quad& y = x[p / 2 * x_stride + i];
                acc[odd][p] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_loadu_ps(y.d[p % 2])),
                                              pair_dot(u, with_sign(y.hi[p % 2]), with_sign(y.lo[p % 2])), acc[odd][p]);
            }
        });
        TWINFER_FOR_PAIRS {
            float sums[2];
            pair_sums(acc[0][p], acc[1][p], sums);
            out[2 * p * y_stride] = sums[0];
            out[(2 * p + 1) * y_stride] = sums[1];
        }
    }
};
#undef TWINFER_FOR_QUADS
#undef TWINFER_FOR_PAIRS

// Q4_K / Q5_K and Q6_K with Q8x2 activations, two 32-value blocks a 512-bit vector: the decode
// products of these types were bound by their per-block scalar work (a super-block's eight scales
// unpacked one by one, a scale a block and row broadcast to a 256-bit FMA), not by their weight
// reads (BENCHMARKS.md, issue 21). Here a super-block's scale factors d_w scale_j d_y(j) are one
// vector product, and each pair of blocks one permute and one FMA a row. A row's arithmetic is
// the same whatever G is (MatmulRowsTest).
#define TWINFER_FOR_ROWS _Pragma("GCC unroll 4") for (int g = 0; g < G; ++g)

// The (d, sum) of activation blocks y[0..7], as 16 floats d0, sum0, d1, sum1, ..., by eight 64-bit
// loads (a gather instruction, microcode on Zen 5, was slower: BENCHMARKS.md).
inline __m512 block_d_sums(const Q8x2Block* y) {
    static_assert(offsetof(Q8x2Block, d) == 0 && offsetof(Q8x2Block, sum) == 4);
    auto two = [&](int k) {
        return _mm_castps_si128(_mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&y[k].d))),
                                             reinterpret_cast<const __m64*>(&y[k + 1].d)));
    };
    const __m256i low = _mm256_inserti128_si256(_mm256_castsi128_si256(two(0)), two(2), 1);
    const __m256i high = _mm256_inserti128_si256(_mm256_castsi128_si256(two(4)), two(6), 1);
    return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1));
}
// Two blocks' 32 bytes side by side.
inline __m512i two_blocks(const int8_t* a, const int8_t* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}
// 16-bit lanes shifted right by a in the low half of the vector, by b in the high half.
inline __m512i shift_halves(__m512i v, int a, int b) {
    return _mm512_srlv_epi16(v, _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(a)), _mm256_set1_epi16(static_cast<short>(b)), 1));
}
// Lanes 0-7 of v's lane a, lanes 8-15 of its lane b.
inline __m512 spread_halves(__m512 v, int a, int b) {
    return _mm512_permutexvar_ps(_mm512_inserti64x4(_mm512_set1_epi32(a), _mm256_set1_epi32(b), 1), v);
}

// Q4_K / Q5_K: the eight 6-bit scales and mins of a super-block (ggml's get_scale_min_k4, for
// all eight at once) times d and dmin, interleaved as block_d_sums: d sc0, dmin m0, d sc1, ...
inline __m512 k4_scales_mins(const uint8_t* packed, float d, float dmin) {
    uint32_t u[4];
    std::memcpy(u, packed, 12);
    constexpr uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    u[3] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);   // mins 4-7
    const uint32_t mins0 = u[1] & low6;
    u[1] = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);          // scales 4-7
    u[2] = mins0;
    u[0] &= low6;
    const __m128i scales_mins = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
    const __m128i pairs = _mm_unpacklo_epi8(scales_mins, _mm_srli_si128(scales_mins, 8));
    const __m512 d_dmin = _mm512_castpd_ps(_mm512_set1_pd(std::bit_cast<double>(std::array<float, 2>{d, dmin})));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(pairs)), d_dmin);
}

template <class Block, bool FifthBit>
struct PairDotKWithMin {
    using WeightBlock = Block;
    template <int G>
    static void dot(const Block* w, const Q8x2Block* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m512 acc[2][G], min_sum[G];
        TWINFER_FOR_ROWS acc[0][g] = acc[1][g] = min_sum[g] = _mm512_setzero_ps();
        for (size_t i = 0; i < n_cols / 256; ++i) {
            const Block& b = w[i];
            const __m512 weight_factors = k4_scales_mins(b.scales, half(b.d), half(b.dmin));
            __m512 factors[G];
            TWINFER_FOR_ROWS {
                factors[g] = _mm512_mul_ps(weight_factors, block_d_sums(x + g * x_stride + 8 * i));
                min_sum[g] = _mm512_mask_add_ps(min_sum[g], 0xAAAA, min_sum[g], factors[g]);
            }
            __m512i high_bits = _mm512_setzero_si512();
            if constexpr (FifthBit) high_bits = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh)));
            for (int s = 0; s < 4; ++s) {
                // Blocks 2s (low nibbles) and 2s + 1 (high nibbles) of 32 bytes.
                const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * s)));
                __m512i u = _mm512_and_si512(shift_halves(q, 0, 4), _mm512_set1_epi8(0x0F));
                if constexpr (FifthBit) {
                    const __m512i bits = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1u << (2 * s))),
                                                            _mm256_set1_epi8(static_cast<char>(1u << (2 * s + 1))), 1);
                    u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(high_bits, bits), u, _mm512_set1_epi8(16));
                }
                TWINFER_FOR_ROWS {
                    const Q8x2Block* y = x + g * x_stride + 8 * i + 2 * s;
                    const __m512 dots = pair_dot(u, two_blocks(y[0].hi, y[1].hi), two_blocks(y[0].lo, y[1].lo));
                    acc[s % 2][g] = _mm512_fmadd_ps(spread_halves(factors[g], 4 * s, 4 * s + 2), dots, acc[s % 2][g]);
                }
            }
        }
        TWINFER_FOR_ROWS out[g * y_stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][g], acc[1][g])) - _mm512_reduce_add_ps(min_sum[g]);
    }
};

// Q6_K: value = d scale_j (q - 32) for the 16-value group j, q from 4 bits of ql and 2 of qh
// (DotQ6_K's layout); a pair of blocks is four groups, so four scales a vector.
struct PairDotQ6_K {
    using WeightBlock = BlockQ6_K;
    template <int G>
    static void dot(const BlockQ6_K* w, const Q8x2Block* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m512 acc[2][G];
        TWINFER_FOR_ROWS acc[0][g] = acc[1][g] = _mm512_setzero_ps();
        const __m512i low4 = _mm512_set1_epi8(0x0F), low2 = _mm512_set1_epi8(3), thirty_two = _mm512_set1_epi8(32);
        for (size_t i = 0; i < n_cols / 256; ++i) {
            const BlockQ6_K& b = w[i];
            const __m512 scales = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)))),
                                                _mm512_set1_ps(half(b.d)));
            __m512 d_sums[G];
            TWINFER_FOR_ROWS d_sums[g] = block_d_sums(x + g * x_stride + 8 * i);
            for (int h = 0; h < 2; ++h) {
                const __m512i ql = _mm512_loadu_si512(b.ql + 64 * h);
                const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h)));
                // Blocks 4h + 2t and 4h + 2t + 1: ql's nibble t, qh's bits 4t..4t+1 and 4t+2..4t+3.
                for (int t = 0; t < 2; ++t) {
                    const __m512i low = _mm512_and_si512(t == 0 ? ql : _mm512_srli_epi16(ql, 4), low4);
                    const __m512i high = _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 4 * t, 4 * t + 2), low2), 4);
                    const __m512i values = _mm512_sub_epi8(_mm512_or_si512(low, high), thirty_two);
                    const __m512i u = _mm512_abs_epi8(values);
                    const __mmask64 negative = _mm512_movepi8_mask(values);
                    auto with_sign = [&](__m512i v) { return _mm512_mask_sub_epi8(v, negative, _mm512_setzero_si512(), v); };
                    const int first = 4 * h + 2 * t;   // the pair's first block
                    const __m512 pair_scales = _mm512_permutexvar_ps(
                        _mm512_add_epi32(_mm512_set1_epi32(2 * first), _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2)),
                        scales);
                    TWINFER_FOR_ROWS {
                        const Q8x2Block* y = x + g * x_stride + 8 * i + first;
                        const __m512 dots = pair_dot(u, with_sign(two_blocks(y[0].hi, y[1].hi)), with_sign(two_blocks(y[0].lo, y[1].lo)));
                        const __m512 factor = _mm512_mul_ps(pair_scales, spread_halves(d_sums[g], 2 * first, 2 * first + 2));
                        acc[t][g] = _mm512_fmadd_ps(factor, dots, acc[t][g]);
                    }
                }
            }
        }
        TWINFER_FOR_ROWS out[g * y_stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][g], acc[1][g]));
    }
};
#undef TWINFER_FOR_ROWS

// matvec_q8<Q8x2Block> with the K types on the pair dots above.
void matvec_q8x2(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const Q8x2Block* x,
                 size_t n_x, float* y, size_t y_stride) {
    switch (type) {
    case GGMLType::Q4_K:
        return rows_q8<Q8x2Block, PairDotKWithMin<BlockQ4_K, false>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q5_K:
        return rows_q8<Q8x2Block, PairDotKWithMin<BlockQ5_K, true>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q6_K: return rows_q8<Q8x2Block, PairDotQ6_K>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    default: return matvec_q8<Q8x2Block>(type, w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    }
}

// rows_q8 with whole groups of four rows through QuadDot, and another loop order: a group's quads
// are 20 times the bytes of a Q4_1 weight row (400 a block against 20; 34 for Q8_0), so rather
// than every group's quads read again for each weight row (from L2 once they outgrow L1: 16 rows
// of 1536 columns are 77 KB), the weight rows go in tiles of about quad_tile_bytes, each tile
// dotted with one group after another while it and the group's quads stay in L1.
constexpr size_t quad_tile_bytes = 16384;

template <class Dot, class QuadDot>
void rows_q8x2_quads(const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const Q8x2Block* x,
                     const Q8x2Quad* quads, size_t n_x, float* y, size_t y_stride) {
    using Block = typename Dot::WeightBlock;
    const size_t x_stride = n_cols / 32;
    const size_t tile_rows = std::max<size_t>(1, quad_tile_bytes / row_bytes);
    const std::byte* end = w + n_rows * row_bytes;
    for (size_t r0 = 0; r0 < n_rows; r0 += tile_rows) {
        const size_t r1 = std::min(n_rows, r0 + tile_rows);
        // The tile's first pass reads it from memory: prefetch as rows_q8 does, only then.
        auto blocks = [&](size_t r, bool first_pass) {
            const std::byte* row = w + r * row_bytes;
            if (first_pass) prefetch_ahead(row, row_bytes, end);
            return reinterpret_cast<const Block*>(row);
        };
        size_t b = 0;
        for (; b + 8 <= n_x; b += 8)
            for (size_t r = r0; r < r1; ++r)
                QuadDot::template dot<2>(blocks(r, b == 0), quads + b / 4 * x_stride, x_stride, n_cols, y + b * y_stride + r, y_stride);
        if (b + 4 <= n_x) {
            for (size_t r = r0; r < r1; ++r)
                QuadDot::template dot<1>(blocks(r, b == 0), quads + b / 4 * x_stride, x_stride, n_cols, y + b * y_stride + r, y_stride);
            b += 4;
        }
        if (b < n_x)
            for (size_t r = r0; r < r1; ++r)
                dot_rest<Dot>(n_x - b, blocks(r, b == 0), x + b * x_stride, x_stride, n_cols, y + b * y_stride + r, y_stride);
    }
}

// The types with a QuadDot (those of SmolLM2-class Q4_1/Q5_1 files and their Q8_0 output heads,
// and MXFP4, whose signed values take Q8_0's); the others ignore the quads.
void matvec_q8x2_quads(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                       const Q8x2Block* x, const Q8x2Quad* quads, size_t n_x, float* y, size_t y_stride) {
    switch (type) {
    case GGMLType::Q4_1:
        return rows_q8x2_quads<DotWithMin<Q8x2Block, BlockQ4_1, Q4Values>, QuadDotWithMin<BlockQ4_1, Q4Values>>(
            w, row_bytes, n_rows, n_cols, x, quads, n_x, y, y_stride);
    case GGMLType::Q5_1:
        return rows_q8x2_quads<DotWithMin<Q8x2Block, BlockQ5_1, Q5Values>, QuadDotWithMin<BlockQ5_1, Q5Values>>(
            w, row_bytes, n_rows, n_cols, x, quads, n_x, y, y_stride);
    case GGMLType::Q8_0:
        return rows_q8x2_quads<DotQ8_0<Q8x2Block>, QuadDotSigned<BlockQ8_0, SignedValues>>(w, row_bytes, n_rows, n_cols, x,
                                                                                          quads, n_x, y, y_stride);
    case GGMLType::MXFP4:
        return rows_q8x2_quads<DotMXFP4<Q8x2Block>, QuadDotSigned<BlockMXFP4, MXFP4Values>>(w, row_bytes, n_rows, n_cols, x,
                                                                                            quads, n_x, y, y_stride);
    default: return matvec_q8x2(type, w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    }
}

}  // namespace

const Kernels& avx512_kernels() {
    static const Kernels table{CpuIsa::AVX512, matvec, matvec_q8<Q8Block>, matvec_q8x2, matvec_q8x2_quads, quantize_q8x2, dequantize_row, NR, gemm, pack_q8_tokens, gemm_q8_scratch_bytes, gemm_q8, attend, AR, attend_block_scratch_bytes, attend_block, swiglu, gelu, widen};
    return table;
}

}  // namespace twinfer::compute::cpu
#pragma GCC diagnostic pop
#pragma GCC pop_options
