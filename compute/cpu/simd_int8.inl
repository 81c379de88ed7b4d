// Integer dot products of quantized weight blocks with Q8Block or Q8x2Block activations on 256-bit
// vectors (one 32-value block is 256 bits of int8), compiled by kernels_avx2.cpp and kernels_avx512.cpp. The
// including file defines `constexpr bool avx512`: true uses AVX-512 VNNI's vpdpbusd and BW masks,
// false AVX2's maddubs + madd. Each block's integer dot is exact; its scales are applied in float.
// Formulas: llama.cpp ggml-quants.c, dequantize_row_* (the layouts are documented in format/quant.hpp).
namespace {

// 8 int32 lanes, lane i = Σ_{j<4} u[4i+j] s[4i+j] (u unsigned, s signed bytes). maddubs saturates
// at 16 bits, never reached here: |u| <= 128 and |s| <= 127 give at most 2 * 128 * 127 per pair.
inline __m256i dot_u8s8_add(__m256i acc, __m256i u, __m256i s) {
    if constexpr (avx512) return _mm256_dpbusd_epi32(acc, u, s);
    else return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
inline __m256i dot_u8s8(__m256i u, __m256i s) {
    if constexpr (avx512) return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
    else return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
inline __m256 dot_u8s8_float(__m256i u, __m256i s) { return _mm256_cvtepi32_ps(dot_u8s8(u, s)); }
// Signed weights: |w| . (y with w's sign).
inline __m256 dot_s8s8_float(__m256i w, __m256i y) {
    return dot_u8s8_float(_mm256_abs_epi8(w), _mm256_sign_epi8(y, w));
}

inline __m256i load_bytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// A block's integer dot with 32 weight values, as 8 float lanes for the caller to scale by its
// weight scale times y.d: unsigned weight bytes u (block_dot) or signed ones w (block_dot_signed).
// Q8x2Block's two digits combine in int32 as 256 hi + lo, the low digit's dot accumulated onto the
// high one's shifted (one more vpdpbusd a block); every lane stays below 2^24 (at most
// 257 * 4 * 128 * 127), so its conversion to float is exact.
inline __m256 block_dot(__m256i u, const Q8Block& y) { return dot_u8s8_float(u, load_bytes(y.qs)); }
inline __m256 block_dot(__m256i u, const Q8x2Block& y) {
    const __m256i hi = dot_u8s8(u, load_bytes(y.hi));
    return _mm256_cvtepi32_ps(dot_u8s8_add(_mm256_slli_epi32(hi, 8), u, load_bytes(y.lo)));
}
inline __m256 block_dot_signed(__m256i w, const Q8Block& y) { return dot_s8s8_float(w, load_bytes(y.qs)); }
inline __m256 block_dot_signed(__m256i w, const Q8x2Block& y) {
    const __m256i u = _mm256_abs_epi8(w);
    const __m256i hi = dot_u8s8(u, _mm256_sign_epi8(load_bytes(y.hi), w));
    return _mm256_cvtepi32_ps(dot_u8s8_add(_mm256_slli_epi32(hi, 8), u, _mm256_sign_epi8(load_bytes(y.lo), w)));
}

inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float half(ggml_half h) { return _cvtsh_ss(h); }
inline __m256i low_nibbles(__m256i q) { return _mm256_and_si256(q, _mm256_set1_epi8(0x0F)); }
inline __m256i high_nibbles(__m256i q) { return _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F)); }

// The 32 values of a 32-block of nibbles: qs[j] & 15 are values 0..15, qs[j] >> 4 values 16..31.
inline __m256i block_nibbles(const uint8_t* qs) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}

// Byte j = 16 where bit j of qh (32 bits) is set: the fifth bit of Q5_0/Q5_1 values.
inline __m256i fifth_bits(const uint8_t* qh) {
    uint32_t bits;
    std::memcpy(&bits, qh, 4);
    if constexpr (avx512) {
        return _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(16));
    } else {
        // Broadcast byte j/8 to byte j, set all bits but bit j%8, compare with all-ones.
        const __m256i spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(static_cast<int>(bits)),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
                                              _mm256_set1_epi64x(-1));
        return _mm256_and_si256(set, _mm256_set1_epi8(16));
    }
}

// Byte j = 16 where byte j of `bytes` has the bit `mask` set (Q5_K's fifth bits).
inline __m256i bit_to_16(__m256i bytes, uint8_t mask) {
    const __m256i m = _mm256_set1_epi8(static_cast<char>(mask));
    if constexpr (avx512) {
        return _mm256_maskz_mov_epi8(_mm256_test_epi8_mask(bytes, m), _mm256_set1_epi8(16));
    } else {
        return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, m), m), _mm256_set1_epi8(16));
    }
}

// The block loops below keep two accumulators, even and odd blocks (unrolled by hand: an array
// indexed by i & 1 ends up in memory): one block's body is about as long as an FMA's latency,
// so a single accumulator chain would be the bottleneck.
//
// Each dot product takes G activation rows (x, x + x_stride, ...; x_stride in blocks) and writes
// G results (out[0], out[y_stride], ...): a weight block is decoded once and dotted with every
// row, while each row's own arithmetic (its accumulators, their order, the final sums) is the one
// G = 1 does. So a row's result is the same bits whichever G computes it and whichever rows are
// beside it (tests/compute/matmul_test.cpp, MatmulRowsTest): matmul_rows' batch invariance.
// The per-row state is in arrays indexed by g only inside fully unrolled loops, which keeps it in
// registers.
#define TWINFER_FOR_ROWS _Pragma("GCC unroll 8") for (int g = 0; g < G; ++g)

// Σ (q - offset) d_w . y over the blocks, q unsigned: Σ d_w d_y (q.y) - offset Σ d_w sum_y.
template <class Act, class Block, class Values, int Offset>
struct DotSymmetric {
    using WeightBlock = Block;
    template <int G>
    static void dot(const Block* w, const Act* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m256 acc0[G], acc1[G];
        float offset0[G], offset1[G];
        TWINFER_FOR_ROWS { acc0[g] = acc1[g] = _mm256_setzero_ps(); offset0[g] = offset1[g] = 0.0f; }
        auto block = [&](size_t i, __m256* acc, float* offset_sum) {
            const float d = half(w[i].d);
            const __m256i u = Values::of(w[i]);
            TWINFER_FOR_ROWS {
                const Act& y = x[g * x_stride + i];
                acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), block_dot(u, y), acc[g]);
                offset_sum[g] += d * y.sum;
            }
        };
        const size_t nb = n_cols / 32;
        size_t i = 0;
        for (; i + 1 < nb; i += 2) {
            block(i, acc0, offset0);
            block(i + 1, acc1, offset1);
        }
        if (i < nb) block(i, acc0, offset0);
        TWINFER_FOR_ROWS out[g * y_stride] = hsum8(_mm256_add_ps(acc0[g], acc1[g])) - Offset * (offset0[g] + offset1[g]);
    }
};

// Σ (q d_w + m) . y over the blocks: Σ d_w d_y (q.y) + Σ m sum_y.
template <class Act, class Block, class Values>
struct DotWithMin {
    using WeightBlock = Block;
    template <int G>
    static void dot(const Block* w, const Act* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m256 acc0[G], acc1[G];
        float min0[G], min1[G];
        TWINFER_FOR_ROWS { acc0[g] = acc1[g] = _mm256_setzero_ps(); min0[g] = min1[g] = 0.0f; }
        auto block = [&](size_t i, __m256* acc, float* min_sum) {
            const float d = half(w[i].d), m = half(w[i].m);
            const __m256i u = Values::of(w[i]);
            TWINFER_FOR_ROWS {
                const Act& y = x[g * x_stride + i];
                acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), block_dot(u, y), acc[g]);
                min_sum[g] += m * y.sum;
            }
        };
        const size_t nb = n_cols / 32;
        size_t i = 0;
        for (; i + 1 < nb; i += 2) {
            block(i, acc0, min0);
            block(i + 1, acc1, min1);
        }
        if (i < nb) block(i, acc0, min0);
        TWINFER_FOR_ROWS out[g * y_stride] = hsum8(_mm256_add_ps(acc0[g], acc1[g])) + min0[g] + min1[g];
    }
};

// A 32-value block's unsigned values (types, not functions: a function returning __m256i as a
// template argument loses its vector attributes, which GCC warns about).
struct Q4Values {
    template <class Block> static __m256i of(const Block& b) { return block_nibbles(b.qs); }
};
struct Q5Values {
    template <class Block> static __m256i of(const Block& b) { return _mm256_or_si256(block_nibbles(b.qs), fifth_bits(b.qh)); }
};
// Signed values: Q8_0's bytes as they are; MXFP4's codes looked up in kvalues_mxfp4 (a byte
// shuffle, each 128-bit lane holding the whole table), small enough (|v| <= 12) for every dot.
struct SignedValues {
    template <class Block> static __m256i of(const Block& b) { return load_bytes(b.qs); }
};
struct MXFP4Values {
    static __m256i of(const BlockMXFP4& b) {
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kvalues_mxfp4)));
        return _mm256_shuffle_epi8(table, block_nibbles(b.qs));
    }
};

// A 32-value block's scale: its half d, or MXFP4's E8M0 exponent (halved: its values are doubled).
template <class Block> inline float scale_of(const Block& b) { return half(b.d); }
inline float scale_of(const BlockMXFP4& b) { return e8m0_to_fp32_half(b.e); }

// Signed codes times one scale a block: Q8_0's bytes and half d, MXFP4's codebook values and
// E8M0 exponent. Σ d_w d_y (q.y).
template <class Act, class Block, class Values>
struct DotSigned {
    using WeightBlock = Block;
    template <int G>
    static void dot(const Block* w, const Act* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m256 acc0[G], acc1[G];
        TWINFER_FOR_ROWS acc0[g] = acc1[g] = _mm256_setzero_ps();
        auto block = [&](size_t i, __m256* acc) {
            const float d = scale_of(w[i]);
            const __m256i q = Values::of(w[i]);
            TWINFER_FOR_ROWS {
                const Act& y = x[g * x_stride + i];
                acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), block_dot_signed(q, y), acc[g]);
            }
        };
        const size_t nb = n_cols / 32;
        size_t i = 0;
        for (; i + 1 < nb; i += 2) {
            block(i, acc0);
            block(i + 1, acc1);
        }
        if (i < nb) block(i, acc0);
        TWINFER_FOR_ROWS out[g * y_stride] = hsum8(_mm256_add_ps(acc0[g], acc1[g]));
    }
};
template <class Act> using DotQ8_0 = DotSigned<Act, BlockQ8_0, SignedValues>;
template <class Act> using DotMXFP4 = DotSigned<Act, BlockMXFP4, MXFP4Values>;

// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block: 6 bits each, packed in 12 bytes
// (ggml's get_scale_min_k4).
inline void k4_scale_min(const uint8_t* q, int j, float& scale, float& min) {
    if (j < 4) {
        scale = q[j] & 63;
        min = q[j + 4] & 63;
    } else {
        scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K/Q5_K: 8 sub-blocks of 32, value = d * scale_j * q - dmin * min_j. 64 values share 32 bytes
// of nibbles (low: sub-block 2g, high: 2g+1); Q5_K's fifth bits are bits 2g, 2g+1 of qh[l].
template <class Act, class Block, bool FifthBit>
struct DotKWithMin {
    using WeightBlock = Block;
    template <int G>
    static void dot(const Block* w, const Act* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m256 acc0[G], acc1[G];
        float min_sum[G];
        TWINFER_FOR_ROWS { acc0[g] = acc1[g] = _mm256_setzero_ps(); min_sum[g] = 0.0f; }
        for (size_t i = 0; i < n_cols / 256; ++i) {
            const Block& b = w[i];
            const float d = half(b.d), dmin = half(b.dmin);
            __m256i high_bits = _mm256_setzero_si256();
            if constexpr (FifthBit) high_bits = load_bytes(b.qh);
            for (int s = 0; s < 4; ++s) {
                const __m256i q = load_bytes(b.qs + 32 * s);
                __m256i lo = low_nibbles(q), hi = high_nibbles(q);
                if constexpr (FifthBit) {
                    lo = _mm256_or_si256(lo, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * s))));
                    hi = _mm256_or_si256(hi, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * s + 1))));
                }
                float scale0, min0, scale1, min1;
                k4_scale_min(b.scales, 2 * s, scale0, min0);
                k4_scale_min(b.scales, 2 * s + 1, scale1, min1);
                TWINFER_FOR_ROWS {
                    const Act* y = x + g * x_stride + 8 * i;
                    acc0[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * scale0 * y[2 * s].d), block_dot(lo, y[2 * s]), acc0[g]);
                    acc1[g] = _mm256_fmadd_ps(_mm256_set1_ps(d * scale1 * y[2 * s + 1].d), block_dot(hi, y[2 * s + 1]), acc1[g]);
                    min_sum[g] += dmin * (min0 * y[2 * s].sum + min1 * y[2 * s + 1].sum);
                }
            }
        }
        TWINFER_FOR_ROWS out[g * y_stride] = hsum8(_mm256_add_ps(acc0[g], acc1[g])) - min_sum[g];
    }
};

// Q6_K: 16 sub-blocks of 16, value = d * scale_s * (q - 32), q 6 bits: 4 from ql, 2 from qh. Each
// half (128 values) has 4 groups of 32; group j's values come from nibble (j / 2) of ql[32 (j % 2) + l]
// and bits 2j..2j+1 of qh[l], and use scales 2j (first 16) and 2j + 1 (last 16).
template <class Act>
struct DotQ6_K {
    using WeightBlock = BlockQ6_K;
    template <int G>
    static void dot(const BlockQ6_K* w, const Act* x, size_t x_stride, size_t n_cols, float* out, size_t y_stride) {
        __m256 acc0[G], acc1[G];
        TWINFER_FOR_ROWS acc0[g] = acc1[g] = _mm256_setzero_ps();
        const __m256i three = _mm256_set1_epi8(3), thirty_two = _mm256_set1_epi8(32);
        for (size_t i = 0; i < n_cols / 256; ++i) {
            const BlockQ6_K& b = w[i];
            const float d = half(b.d);
            for (int h = 0; h < 2; ++h) {
                const __m256i ql0 = load_bytes(b.ql + 64 * h), ql1 = load_bytes(b.ql + 64 * h + 32);
                const __m256i qh = load_bytes(b.qh + 32 * h);
                const __m256i q[4] = {
                    _mm256_or_si256(low_nibbles(ql0), _mm256_slli_epi16(_mm256_and_si256(qh, three), 4)),
                    _mm256_or_si256(low_nibbles(ql1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4)),
                    _mm256_or_si256(high_nibbles(ql0), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), three), 4)),
                    _mm256_or_si256(high_nibbles(ql1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), three), 4)),
                };
                const int8_t* scales = b.scales + 8 * h;
                auto group = [&](int j, __m256* acc) {
                    const __m256i values = _mm256_sub_epi8(q[j], thirty_two);
                    const __m256 s = _mm256_set_m128(_mm_set1_ps(scales[2 * j + 1]), _mm_set1_ps(scales[2 * j]));
                    TWINFER_FOR_ROWS {
                        const Act& y = x[g * x_stride + 8 * i + 4 * h + j];
                        acc[g] = _mm256_fmadd_ps(_mm256_mul_ps(s, _mm256_set1_ps(d * y.d)), block_dot_signed(values, y), acc[g]);
                    }
                };
                group(0, acc0);
                group(1, acc1);
                group(2, acc0);
                group(3, acc1);
            }
        }
        TWINFER_FOR_ROWS out[g * y_stride] = hsum8(_mm256_add_ps(acc0[g], acc1[g]));
    }
};
#undef TWINFER_FOR_ROWS

// Activation rows dotted with each weight row together (Dot::dot<act_group>), the rest in one
// smaller group: a weight row is read from memory once for all n_x rows, and re-read from L1 by
// each further group. Four rows: 8 accumulators, and the decoded block, stay in 16 registers.
constexpr size_t act_group = 4;

// Dot::dot<G> for the last G < act_group rows (G = 0: nothing).
template <class Dot>
void dot_rest(size_t G, const typename Dot::WeightBlock* w, const auto* x, size_t x_stride, size_t n_cols, float* y,
              size_t y_stride) {
    static_assert(act_group == 4);
    switch (G) {
    case 3: return Dot::template dot<3>(w, x, x_stride, n_cols, y, y_stride);
    case 2: return Dot::template dot<2>(w, x, x_stride, n_cols, y, y_stride);
    case 1: return Dot::template dot<1>(w, x, x_stride, n_cols, y, y_stride);
    default: return;
    }
}

template <class Act, class Dot>
void rows_q8(const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const Act* x, size_t n_x, float* y,
             size_t y_stride) {
    using Block = typename Dot::WeightBlock;
    const size_t x_stride = n_cols / 32;
    const std::byte* end = w + n_rows * row_bytes;
    for (size_t r = 0; r < n_rows; ++r) {
        const std::byte* row = w + r * row_bytes;
        prefetch_ahead(row, row_bytes, end);
        const Block* blocks = reinterpret_cast<const Block*>(row);
        size_t b = 0;
        for (; b + act_group <= n_x; b += act_group)
            Dot::template dot<act_group>(blocks, x + b * x_stride, x_stride, n_cols, y + b * y_stride + r, y_stride);
        dot_rest<Dot>(n_x - b, blocks, x + b * x_stride, x_stride, n_cols, y + b * y_stride + r, y_stride);
    }
}

template <class Act>
void matvec_q8(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const Act* x, size_t n_x,
               float* y, size_t y_stride) {
    switch (type) {
    case GGMLType::Q4_0:
        return rows_q8<Act, DotSymmetric<Act, BlockQ4_0, Q4Values, 8>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q4_1:
        return rows_q8<Act, DotWithMin<Act, BlockQ4_1, Q4Values>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q5_0:
        return rows_q8<Act, DotSymmetric<Act, BlockQ5_0, Q5Values, 16>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q5_1:
        return rows_q8<Act, DotWithMin<Act, BlockQ5_1, Q5Values>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q8_0: return rows_q8<Act, DotQ8_0<Act>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q4_K: return rows_q8<Act, DotKWithMin<Act, BlockQ4_K, false>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q5_K: return rows_q8<Act, DotKWithMin<Act, BlockQ5_K, true>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::Q6_K: return rows_q8<Act, DotQ6_K<Act>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::MXFP4: return rows_q8<Act, DotMXFP4<Act>>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    default: throw std::invalid_argument("no int8 matvec kernel for " + std::string(type_name(type)));
    }
}

// Q8x2Block's quantization (kernels.hpp), 8 values a vector: code = round(x / d) (the rounding
// mode's nearest-even, as nearbyint), hi = (code + 128) >> 8, lo = code - 256 hi raised to -127.
void quantize_q8x2(const float* x, size_t n, Q8x2Block* out) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256i limit = _mm256_set1_epi32(32512), half_step = _mm256_set1_epi32(128), lowest = _mm256_set1_epi32(-127);
    // packs interleave 128-bit lanes; this puts the 32 bytes back in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t b = 0; b < n / 32; ++b) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm256_loadu_ps(x + 32 * b + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / (127.0f * 256.0f);
        const __m256 inverse = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        __m256i hi[4], lo[4], sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
            const __m256i code = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v[j], inverse)), limit),
                                                  _mm256_sub_epi32(_mm256_setzero_si256(), limit));
            hi[j] = _mm256_srai_epi32(_mm256_add_epi32(code, half_step), 8);
            lo[j] = _mm256_max_epi32(_mm256_sub_epi32(code, _mm256_slli_epi32(hi[j], 8)), lowest);
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_slli_epi32(hi[j], 8), lo[j]));
        }
        auto pack = [&](const __m256i* q, int8_t* dst) {
            const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(bytes, order));
        };
        pack(hi, out[b].hi);
        pack(lo, out[b].lo);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
        out[b].d = d;
        out[b].sum = d * static_cast<float>(_mm_cvtsi128_si32(s));
    }
}

}  // namespace

// Dequantization to float of whole rows, for the tiled product's weight tiles and the float-
// activation matrix-vector product: the same unpacking as the dot products above, widened to
// float 8 values at a time, value = scale * q + offset.
namespace {

template <bool Signed>
inline void store8(__m128i bytes, float scale, float offset, float* dst) {
    const __m256i q = Signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
    _mm256_storeu_ps(dst, _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(q), _mm256_set1_ps(offset)));
}

// 16 values: bytes 0..15 of `half`.
template <bool Signed>
inline void store16(__m128i half, float scale, float offset, float* dst) {
    store8<Signed>(half, scale, offset, dst);
    store8<Signed>(_mm_srli_si128(half, 8), scale, offset, dst + 8);
}

template <bool Signed>
inline void store32(__m256i q, float scale, float offset, float* dst) {
    store16<Signed>(_mm256_castsi256_si128(q), scale, offset, dst);
    store16<Signed>(_mm256_extracti128_si256(q, 1), scale, offset, dst + 16);
}

template <class Block, class Values, int Offset>
void dequantize_symmetric(const std::byte* src, size_t n, float* dst) {
    const Block* b = reinterpret_cast<const Block*>(src);
    for (size_t i = 0; i < n / 32; ++i) {
        const float d = half(b[i].d);
        store32<false>(Values::of(b[i]), d, -Offset * d, dst + 32 * i);
    }
}

template <class Block, class Values>
void dequantize_with_min(const std::byte* src, size_t n, float* dst) {
    const Block* b = reinterpret_cast<const Block*>(src);
    for (size_t i = 0; i < n / 32; ++i) store32<false>(Values::of(b[i]), half(b[i].d), half(b[i].m), dst + 32 * i);
}

// Signed values times the block's scale (Q8_0, MXFP4): fma(d, v, 0) is d * v rounded once, the
// bits of format/quant.cpp's product.
template <class Block, class Values>
void dequantize_signed(const std::byte* src, size_t n, float* dst) {
    const Block* b = reinterpret_cast<const Block*>(src);
    for (size_t i = 0; i < n / 32; ++i) store32<true>(Values::of(b[i]), scale_of(b[i]), 0.0f, dst + 32 * i);
}

template <class Block, bool FifthBit>
void dequantize_k_with_min(const std::byte* src, size_t n, float* dst) {
    const Block* blocks = reinterpret_cast<const Block*>(src);
    for (size_t i = 0; i < n / 256; ++i) {
        const Block& b = blocks[i];
        const float d = half(b.d), dmin = half(b.dmin);
        __m256i high_bits = _mm256_setzero_si256();
        if constexpr (FifthBit) high_bits = load_bytes(b.qh);
        for (int g = 0; g < 4; ++g) {
            const __m256i q = load_bytes(b.qs + 32 * g);
            __m256i lo = low_nibbles(q), hi = high_nibbles(q);
            if constexpr (FifthBit) {
                lo = _mm256_or_si256(lo, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * g))));
                hi = _mm256_or_si256(hi, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * g + 1))));
            }
            float scale0, min0, scale1, min1;
            k4_scale_min(b.scales, 2 * g, scale0, min0);
            k4_scale_min(b.scales, 2 * g + 1, scale1, min1);
            store32<false>(lo, d * scale0, -dmin * min0, dst + 256 * i + 64 * g);
            store32<false>(hi, d * scale1, -dmin * min1, dst + 256 * i + 64 * g + 32);
        }
    }
}

void dequantize_q6_k(const std::byte* src, size_t n, float* dst) {
    const BlockQ6_K* blocks = reinterpret_cast<const BlockQ6_K*>(src);
    const __m256i three = _mm256_set1_epi8(3);
    for (size_t i = 0; i < n / 256; ++i) {
        const BlockQ6_K& b = blocks[i];
        const float d = half(b.d);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = load_bytes(b.ql + 64 * h), ql1 = load_bytes(b.ql + 64 * h + 32);
            const __m256i qh = load_bytes(b.qh + 32 * h);
            const __m256i q[4] = {
                _mm256_or_si256(low_nibbles(ql0), _mm256_slli_epi16(_mm256_and_si256(qh, three), 4)),
                _mm256_or_si256(low_nibbles(ql1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4)),
                _mm256_or_si256(high_nibbles(ql0), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), three), 4)),
                _mm256_or_si256(high_nibbles(ql1), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), three), 4)),
            };
            const int8_t* scales = b.scales + 8 * h;
            for (int g = 0; g < 4; ++g) {
                float* out = dst + 256 * i + 128 * h + 32 * g;
                const float s0 = d * scales[2 * g], s1 = d * scales[2 * g + 1];
                store16<false>(_mm256_castsi256_si128(q[g]), s0, -32.0f * s0, out);
                store16<false>(_mm256_extracti128_si256(q[g], 1), s1, -32.0f * s1, out + 16);
            }
        }
    }
}

// n values (whole blocks) of `type` at src into dst.
void dequantize_row(GGMLType type, const std::byte* src, size_t n, float* dst) {
    switch (type) {
    case GGMLType::Q4_0: return dequantize_symmetric<BlockQ4_0, Q4Values, 8>(src, n, dst);
    case GGMLType::Q4_1: return dequantize_with_min<BlockQ4_1, Q4Values>(src, n, dst);
    case GGMLType::Q5_0: return dequantize_symmetric<BlockQ5_0, Q5Values, 16>(src, n, dst);
    case GGMLType::Q5_1: return dequantize_with_min<BlockQ5_1, Q5Values>(src, n, dst);
    case GGMLType::Q8_0: return dequantize_signed<BlockQ8_0, SignedValues>(src, n, dst);
    case GGMLType::Q4_K: return dequantize_k_with_min<BlockQ4_K, false>(src, n, dst);
    case GGMLType::Q5_K: return dequantize_k_with_min<BlockQ5_K, true>(src, n, dst);
    case GGMLType::Q6_K: return dequantize_q6_k(src, n, dst);
    case GGMLType::MXFP4: return dequantize_signed<BlockMXFP4, MXFP4Values>(src, n, dst);
    default: return dequantize(type, {src, row_size_bytes(type, n)}, std::span<float>(dst, n));
    }
}

}  // namespace
