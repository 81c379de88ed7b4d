// The int8 product over many tokens (Kernels::pack_q8_tokens, Kernels::gemm_q8), AVX-512 VNNI
// only: included by kernels_avx512.cpp after simd_int8.inl, whose unpacking it reuses.
//
// The matrix-vector kernels put one 32-value block of one token in a vector and reduce it across
// lanes; for many tokens that leaves the unpacking and the reduction per (row, token, block).
// Here a vector's 16 lanes are 16 tokens, each lane dotting a few consecutive values of its token
// with the same weights (broadcast), and a panel of 4 rows by up to 4 vectors of tokens keeps 16
// int32 accumulators in registers, each weight broadcast read by 4 vectors and each token vector
// by 4 rows. The weights are decoded once per tile (PanelBlock), the tokens quantized once per
// call. Per block and (row, token) the int32 sum is exact, converted to float once and scaled by
// d_w d_x onto a float sum.
//
// Two digits (int8x2): a token's value is one int16 code, 256 hi + lo, and vpdpwssd takes pairs
// of int16 codes and int16 weights: 16 instructions a block, as many as two vpdpbusd digits, with
// no shift to join the digits and no offset (|sum| <= 32 * 128 * 32,512 < 2^31). One digit
// (int8): vpdpbusd multiplies unsigned by signed bytes, so the tokens' bytes are q + 128 and the
// offset comes back as -128 Σ v per weight block, the accumulator's starting value.
namespace {

// Each kind of weight block as blocks of 32 signed values: decode(block, emit) calls
// emit(j, v, scale0, scale1, min) for its 32-value blocks j, value = scale * v + min, scale0 for
// values 0..15 and scale1 for 16..31 (equal but for Q6_K's 16-value sub-blocks).
template <class Block_, class Values, int Offset, bool HasMin_>
struct GemmBlock32 {
    using Block = Block_;
    static constexpr int blocks = 1;
    static constexpr bool halves = false, has_min = HasMin_;
    template <class Emit>
    static void decode(const Block& b, Emit&& emit) {
        const float d = scale_of(b);
        float m = 0.0f;
        if constexpr (HasMin_) m = half(b.m);
        emit(0, _mm256_sub_epi8(Values::of(b), _mm256_set1_epi8(Offset)), d, d, m);
    }
};

// Q4_K/Q5_K: the 8 sub-blocks' 6-bit scales and mins unpacked together from their 12 bytes
// (ggml's get_scale_min_k4 for all j at once, llama.cpp's kmask shuffle), then scaled in float.
template <class Block_, bool FifthBit>
struct GemmBlockK4 {
    using Block = Block_;
    static constexpr int blocks = 8;
    static constexpr bool halves = false, has_min = true;
    template <class Emit>
    static void decode(const Block& b, Emit&& emit) {
        uint32_t packed[3], unpacked[4];
        std::memcpy(packed, b.scales, 12);
        unpacked[0] = packed[0] & 0x3f3f3f3f;                                                    // scales 0..3
        unpacked[1] = (packed[2] & 0x0f0f0f0f) | (((packed[0] >> 6) & 0x03030303) << 4);          // scales 4..7
        unpacked[2] = packed[1] & 0x3f3f3f3f;                                                    // mins 0..3
        unpacked[3] = ((packed[2] >> 4) & 0x0f0f0f0f) | (((packed[1] >> 6) & 0x03030303) << 4);   // mins 4..7
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(unpacked));
        alignas(32) float scales[8], mins[8];
        _mm256_store_ps(scales, _mm256_mul_ps(_mm256_set1_ps(half(b.d)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))));
        _mm256_store_ps(mins, _mm256_mul_ps(_mm256_set1_ps(-half(b.dmin)),
                                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)))));
        __m256i high_bits = _mm256_setzero_si256();
        if constexpr (FifthBit) high_bits = load_bytes(b.qh);
        for (int s = 0; s < 4; ++s) {
            const __m256i q = load_bytes(b.qs + 32 * s);
            __m256i lo = low_nibbles(q), hi = high_nibbles(q);
            if constexpr (FifthBit) {
                lo = _mm256_or_si256(lo, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * s))));
                hi = _mm256_or_si256(hi, bit_to_16(high_bits, static_cast<uint8_t>(1u << (2 * s + 1))));
            }
            emit(2 * s, lo, scales[2 * s], scales[2 * s], mins[2 * s]);
            emit(2 * s + 1, hi, scales[2 * s + 1], scales[2 * s + 1], mins[2 * s + 1]);
        }
    }
};

struct GemmBlockQ6_K {
    using Block = BlockQ6_K;
    static constexpr int blocks = 8;
    static constexpr bool halves = true, has_min = false;
    template <class Emit>
    static void decode(const BlockQ6_K& b, Emit&& emit) {
        const float d = half(b.d);
        const __m256i three = _mm256_set1_epi8(3), thirty_two = _mm256_set1_epi8(32);
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
            for (int j = 0; j < 4; ++j)
                emit(4 * h + j, _mm256_sub_epi8(q[j], thirty_two), d * scales[2 * j], d * scales[2 * j + 1], 0.0f);
        }
    }
};

constexpr size_t R = 4;                   // rows a panel
constexpr size_t max_token_vectors = 4;   // 16 int32 accumulators (R x 4) + 4 token vectors + a broadcast

// A panel's 32-value block: value = scale * v (+ min: Q4_1, Q5_1, Q4_K, Q5_K; unset for the
// others), Q6_K's two 16-value halves with a scale each (scale[1], unset for the others). v as
// int16 for vpdpwssd (two digits), int8 for vpdpbusd (one), whose offset[h] = -128 Σ v over the
// block (or half) is the accumulator's start.
// 64-byte aligned: each row's values are whole cache lines (two digits), so the decode's stores
// never split a line.
template <int Digits>
struct alignas(64) PanelBlock {
    std::conditional_t<Digits == 2, int16_t, int8_t> v[R][32];
    float scale[2][R];
    int32_t offset[2][R];
    float min[R];
};

constexpr size_t sums_floats = R * max_token_vectors * q8_gemm_group;   // a panel's float sums

size_t gemm_q8_scratch_bytes(size_t n_rows, size_t n_cols, int digits) {
    const size_t panels = (n_rows + R - 1) / R;
    const size_t block = digits == 2 ? sizeof(PanelBlock<2>) : sizeof(PanelBlock<1>);
    return panels * (n_cols / 32 * block + sums_floats * sizeof(float));
}

// Rows w[0..n_rows) into panels of R rows (the last one's missing rows zero: they add nothing),
// out[p * n_blocks + b] for panel p, column block b.
template <int Digits, class Decoder>
void decode_tile(const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, PanelBlock<Digits>* out) {
    using Block = typename Decoder::Block;
    const size_t n_blocks = n_cols / 32, panels = (n_rows + R - 1) / R;
    if (n_rows % R) std::memset(static_cast<void*>(out + (panels - 1) * n_blocks), 0, n_blocks * sizeof(PanelBlock<Digits>));
    const __m256i ones = _mm256_set1_epi8(1);
    const std::byte* end = w + n_rows * row_bytes;
    for (size_t r = 0; r < n_rows; ++r) {
        prefetch_ahead(w + r * row_bytes, row_bytes, end);   // the rows come from memory once
        const Block* blocks = reinterpret_cast<const Block*>(w + r * row_bytes);
        PanelBlock<Digits>* panel = out + r / R * n_blocks;
        const size_t lane = r % R;
        for (size_t i = 0; i < n_blocks / Decoder::blocks; ++i) {
            Decoder::decode(blocks[i], [&](int j, __m256i v, float scale0, float scale1, float min) {
                PanelBlock<Digits>& o = panel[i * Decoder::blocks + j];
                o.scale[0][lane] = scale0;
                if constexpr (Decoder::halves) o.scale[1][lane] = scale1;
                if constexpr (Decoder::has_min) o.min[lane] = min;
                if constexpr (Digits == 2) {
                    _mm512_storeu_si512(o.v[lane], _mm512_cvtepi8_epi16(v));
                    return;
                }
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.v[lane]), v);
                // Σ v per 4 values (lanes 0..3: values 0..15, lanes 4..7: 16..31).
                const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, v);
                const __m128i first = _mm256_castsi256_si128(sums), second = _mm256_extracti128_si256(sums, 1);
                auto total = [](__m128i s) {
                    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
                    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1))));
                };
                if constexpr (Decoder::halves) {
                    o.offset[0][lane] = -128 * total(first);
                    o.offset[1][lane] = -128 * total(second);
                } else {
                    o.offset[0][lane] = o.offset[1][lane] = -128 * total(_mm_add_epi32(first, second));
                }
            });
        }
    }
}

#define TWINFER_FOR_R _Pragma("GCC unroll 4") for (size_t r = 0; r < R; ++r)
#define TWINFER_FOR_T _Pragma("GCC unroll 4") for (int t = 0; t < T; ++t)

// One panel of R rows against T vectors of 16 tokens over n_blocks column blocks:
// c[(r * max_token_vectors + t) * 16 + lane] += Σ_blocks (row r's block) . (token's block).
// x: the first token vector's packed blocks, the next vector group_bytes further.
template <int Digits, class Decoder, int T>
void gemm_q8_panel(const PanelBlock<Digits>* w, const std::byte* x, size_t group_bytes, size_t n_blocks, float* c) {
    constexpr size_t block_bytes = q8_gemm_block_bytes(Digits);
    // 4-byte steps a block: 16 pairs of int16 codes, or 8 quads of bytes. Q6_K's 16-value halves
    // each end with their own scale: two int32 sums a block.
    constexpr int steps = Digits == 2 ? 16 : 8, parts = Decoder::halves ? 2 : 1, part_steps = steps / parts;
    for (size_t b = 0; b < n_blocks; ++b) {
        const PanelBlock<Digits>& wb = w[b];
        const std::byte* xb = x + b * block_bytes;
        auto x_at = [&](int t, size_t offset) { return xb + t * group_bytes + offset; };
        for (int part = 0; part < parts; ++part) {
            __m512i acc[R][T];
            TWINFER_FOR_R TWINFER_FOR_T acc[r][t] = Digits == 2 ? _mm512_setzero_si512() : _mm512_set1_epi32(wb.offset[part][r]);
#pragma GCC unroll 16
            for (int step = part * part_steps; step < (part + 1) * part_steps; ++step) {
                __m512i xv[T];
                TWINFER_FOR_T xv[t] = _mm512_loadu_si512(x_at(t, 64 * step));
                TWINFER_FOR_R {
                    int32_t bytes;
                    std::memcpy(&bytes, reinterpret_cast<const char*>(wb.v[r]) + 4 * step, 4);
                    const __m512i weights = _mm512_set1_epi32(bytes);
                    TWINFER_FOR_T acc[r][t] = Digits == 2 ? _mm512_dpwssd_epi32(acc[r][t], xv[t], weights)
                                                          : _mm512_dpbusd_epi32(acc[r][t], xv[t], weights);
                }
            }
            __m512 dx[T], sum[T];
            TWINFER_FOR_T {
                dx[t] = _mm512_loadu_ps(reinterpret_cast<const float*>(x_at(t, Digits * 512)));
                if constexpr (Decoder::has_min) sum[t] = _mm512_loadu_ps(reinterpret_cast<const float*>(x_at(t, Digits * 512 + 64)));
            }
            TWINFER_FOR_R {
                const __m512 scale = _mm512_set1_ps(wb.scale[part][r]);
                __m512 min;
                if constexpr (Decoder::has_min) min = _mm512_set1_ps(wb.min[r]);
                TWINFER_FOR_T {
                    float* out = c + (r * max_token_vectors + t) * 16;
                    __m512 f = _mm512_loadu_ps(out);
                    if constexpr (Decoder::has_min) f = _mm512_fmadd_ps(min, sum[t], f);
                    f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), _mm512_mul_ps(dx[t], scale), f);
                    _mm512_storeu_ps(out, f);
                }
            }
            // The float sums go through memory (L1) between blocks: kept in registers beside the
            // int32 ones (GCC's choice otherwise), 32 registers spill.
            __asm__ volatile("" ::: "memory");
        }
    }
}
#undef TWINFER_FOR_T
#undef TWINFER_FOR_R

// The tile's panels against the tokens, max_token_vectors vectors at a time. Column blocks go in
// slices whose tokens (~20 KB) stay in L1 while every panel reads them; the float sums wait in
// scratch (c) between slices, as between blocks.
template <int Digits, class Decoder>
void gemm_q8_typed(const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const std::byte* x_packed,
                   size_t n_tokens, std::byte* scratch, float* y, size_t y_stride, bool accumulate) {
    constexpr size_t block_bytes = q8_gemm_block_bytes(Digits), vector_floats = max_token_vectors * 16;
    const size_t n_blocks = n_cols / 32, panels = (n_rows + R - 1) / R;
    auto* tile = reinterpret_cast<PanelBlock<Digits>*>(scratch);
    auto* c = reinterpret_cast<float*>(scratch + panels * n_blocks * sizeof(PanelBlock<Digits>));
    decode_tile<Digits, Decoder>(w, row_bytes, n_rows, n_cols, tile);
    const size_t group_bytes = n_blocks * block_bytes, n_groups = (n_tokens + q8_gemm_group - 1) / q8_gemm_group;
    for (size_t g0 = 0; g0 < n_groups; g0 += max_token_vectors) {
        const size_t T = std::min(max_token_vectors, n_groups - g0);
        std::fill_n(c, panels * sums_floats, 0.0f);
        // The tokens' outputs are written (or read and written) once the sums are done: their
        // lines are requested now, to arrive during the products instead of stalling the stores.
        const size_t t0 = g0 * q8_gemm_group, t1 = std::min(n_tokens, t0 + T * q8_gemm_group);
        for (size_t t = t0; t < t1; ++t)
            for (size_t r = 0; r < n_rows; r += 16) __builtin_prefetch(y + t * y_stride + r, 1, 3);
        const size_t slice = std::max<size_t>(1, 20480 / (T * block_bytes));
        const std::byte* x = x_packed + g0 * group_bytes;
        for (size_t k0 = 0; k0 < n_blocks; k0 += slice) {
            const size_t n = std::min(slice, n_blocks - k0);
            for (size_t p = 0; p < panels; ++p) {
                const PanelBlock<Digits>* wp = tile + p * n_blocks + k0;
                const std::byte* xk = x + k0 * block_bytes;
                float* cp = c + p * sums_floats;
                switch (T) {
                case 1: gemm_q8_panel<Digits, Decoder, 1>(wp, xk, group_bytes, n, cp); break;
                case 2: gemm_q8_panel<Digits, Decoder, 2>(wp, xk, group_bytes, n, cp); break;
                case 3: gemm_q8_panel<Digits, Decoder, 3>(wp, xk, group_bytes, n, cp); break;
                default: gemm_q8_panel<Digits, Decoder, 4>(wp, xk, group_bytes, n, cp); break;
                }
            }
        }
        // c holds [row][token] (row r's sums at c + r * vector_floats); y wants [token][row]: 16
        // rows of a token a gather.
        const __m512i rows_at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                   _mm512_set1_epi32(static_cast<int>(vector_floats)));
        for (size_t t = t0; t < t1; ++t) {
            for (size_t r0 = 0; r0 < n_rows; r0 += 16) {
                const __mmask16 rows = n_rows - r0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n_rows - r0)) - 1);
                float* out = y + t * y_stride + r0;
                __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows, rows_at, c + r0 * vector_floats + (t - t0), 4);
                if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(rows, out));
                _mm512_mask_storeu_ps(out, rows, v);
            }
        }
    }
}

template <int Digits>
void gemm_q8_digits(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                    const std::byte* x_packed, size_t n_tokens, std::byte* scratch, float* y, size_t y_stride, bool accumulate) {
    auto run = [&]<class Decoder>(Decoder) {
        gemm_q8_typed<Digits, Decoder>(w, row_bytes, n_rows, n_cols, x_packed, n_tokens, scratch, y, y_stride, accumulate);
    };
    switch (type) {
    case GGMLType::Q4_0: return run(GemmBlock32<BlockQ4_0, Q4Values, 8, false>{});
    case GGMLType::Q4_1: return run(GemmBlock32<BlockQ4_1, Q4Values, 0, true>{});
    case GGMLType::Q5_0: return run(GemmBlock32<BlockQ5_0, Q5Values, 16, false>{});
    case GGMLType::Q5_1: return run(GemmBlock32<BlockQ5_1, Q5Values, 0, true>{});
    case GGMLType::Q8_0: return run(GemmBlock32<BlockQ8_0, SignedValues, 0, false>{});
    case GGMLType::Q4_K: return run(GemmBlockK4<BlockQ4_K, false>{});
    case GGMLType::Q5_K: return run(GemmBlockK4<BlockQ5_K, true>{});
    case GGMLType::Q6_K: return run(GemmBlockQ6_K{});
    case GGMLType::MXFP4: return run(GemmBlock32<BlockMXFP4, MXFP4Values, 0, false>{});
    default: throw std::invalid_argument("no int8 tiled product for " + std::string(type_name(type)));
    }
}

void gemm_q8(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const std::byte* x_packed,
             size_t n_tokens, int digits, std::byte* scratch, float* y, size_t y_stride, bool accumulate) {
    if (digits == 2) return gemm_q8_digits<2>(type, w, row_bytes, n_rows, n_cols, x_packed, n_tokens, scratch, y, y_stride, accumulate);
    gemm_q8_digits<1>(type, w, row_bytes, n_rows, n_cols, x_packed, n_tokens, scratch, y, y_stride, accumulate);
}

// Each token's blocks quantized as the matrix-vector products quantize them, 16 tokens' blocks
// then gathered into [step][token] order (a lane of each gather: 4 bytes of one token).
void pack_q8_tokens(const float* x, size_t n_tokens, size_t n_cols, int digits, std::byte* out) {
    const size_t block_bytes = q8_gemm_block_bytes(digits);
    const __m512i token = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (size_t b = 0; b < n_cols / 32; ++b) {
        std::byte* o = out + b * block_bytes;
        auto store = [&](size_t offset, __m512i v) { _mm512_storeu_si512(o + offset, v); };
        if (digits == 2) {
            Q8x2Block q[q8_gemm_group] = {};
            alignas(64) int16_t codes[q8_gemm_group][32];
            for (size_t t = 0; t < q8_gemm_group; ++t) {
                if (t < n_tokens) quantize_q8x2(x + t * n_cols + 32 * b, 32, &q[t]);
                const __m512i hi = _mm512_cvtepi8_epi16(load_bytes(q[t].hi)), lo = _mm512_cvtepi8_epi16(load_bytes(q[t].lo));
                _mm512_store_si512(codes[t], _mm512_add_epi16(_mm512_slli_epi16(hi, 8), lo));
            }
            const __m512i at = _mm512_mullo_epi32(token, _mm512_set1_epi32(sizeof(codes[0])));
            for (int step = 0; step < 16; ++step) store(64 * step, _mm512_i32gather_epi32(at, codes[0] + 2 * step, 1));
            const __m512i block_at = _mm512_mullo_epi32(token, _mm512_set1_epi32(sizeof(Q8x2Block)));
            store(1024, _mm512_i32gather_epi32(block_at, &q[0].d, 1));
            store(1088, _mm512_i32gather_epi32(block_at, &q[0].sum, 1));
        } else {
            Q8Block q[q8_gemm_group] = {};
            for (size_t t = 0; t < n_tokens; ++t) quantize_q8(x + t * n_cols + 32 * b, 32, &q[t]);
            const __m512i at = _mm512_mullo_epi32(token, _mm512_set1_epi32(sizeof(Q8Block)));
            for (int step = 0; step < 8; ++step)
                store(64 * step, _mm512_xor_si512(_mm512_i32gather_epi32(at, q[0].qs + 4 * step, 1),
                                                  _mm512_set1_epi8(static_cast<char>(0x80))));
            store(512, _mm512_i32gather_epi32(at, &q[0].d, 1));
            store(576, _mm512_i32gather_epi32(at, &q[0].sum, 1));
        }
    }
}

}  // namespace
