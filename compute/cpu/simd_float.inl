// Float kernels written once over a vector type, compiled by each kernels_*.cpp under its own
// `#pragma GCC target` (see kernels.hpp). The including file defines, before including this:
//   struct FloatVec {
//     using V = ...; static constexpr size_t width, gemm_rows;
//     zero() load(p) store(p, v) set1(f) add sub mul div min max fma(a, b, c)=a*b+c hsum(v)
//     hsums(v) (lane i: hsum(v[i]) for W vectors v[0..W), by hsum's order of additions)
//     round(v) (to nearest) scale_pow2(y, n)=y*2^n load_f16(p) load_bf16(p) load_i8(p)   (all static)
//   };
//   void dequantize_row(GGMLType type, const std::byte* src, size_t n, float* dst);
// Everything here has internal linkage: each ISA's copy stays in its own translation unit.
// PlainRows takes a loader returning V as a template argument: GCC notes that V's vector attributes
// do not take part in that argument's type, which is harmless here.
#pragma GCC diagnostic ignored "-Wignored-attributes"
namespace {

using V = FloatVec::V;
constexpr size_t W = FloatVec::width;

// exp(x) for a vector: x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes' expf polynomial (about one
// ulp), times 2^n. Above 88.3 it is +inf; at -87 and below, 0 (e^-87 is 1.6e-38): never a
// subnormal, which, like its products, costs a microcode assist in every FMA it enters (the
// softmax weights of distant positions: half of a 1B model's pp128 time once went to attention's
// V sums; BENCHMARKS.md, "CPU int8 prompt products").
inline V vexp(V x) {
    // 1 where x > -87, else 0 (x + 87 is 0 or at least ~7.6e-6 there).
    const V kept = FloatVec::min(FloatVec::max(FloatVec::mul(FloatVec::add(x, FloatVec::set1(87.0f)), FloatVec::set1(0x1p100f)),
                                               FloatVec::zero()),
                                 FloatVec::set1(1.0f));
    x = FloatVec::max(FloatVec::min(x, FloatVec::set1(88.7f)), FloatVec::set1(-87.0f));
    const V n = FloatVec::round(FloatVec::mul(x, FloatVec::set1(1.44269504088896341f)));
    V r = FloatVec::fma(n, FloatVec::set1(-0.693359375f), x);
    r = FloatVec::fma(n, FloatVec::set1(2.12194440e-4f), r);
    V p = FloatVec::set1(1.9875691500e-4f);
    p = FloatVec::fma(p, r, FloatVec::set1(1.3981999507e-3f));
    p = FloatVec::fma(p, r, FloatVec::set1(8.3334519073e-3f));
    p = FloatVec::fma(p, r, FloatVec::set1(4.1665795894e-2f));
    p = FloatVec::fma(p, r, FloatVec::set1(1.6666665459e-1f));
    p = FloatVec::fma(p, r, FloatVec::set1(5.0000001201e-1f));
    p = FloatVec::fma(FloatVec::mul(p, r), r, FloatVec::add(r, FloatVec::set1(1.0f)));
    return FloatVec::mul(FloatVec::scale_pow2(p, n), kept);
}

// Rows of values as the float kernels read them: element d of row p alone (at) or as a vector of W
// from d (load; d a multiple of W). Plain: rows of one element type, `stride` elements apart.
template <class T, V (*Load)(const T*), float (*ToFloat)(T)>
struct PlainRows {
    const T* base;
    size_t stride;
    V load(size_t p, size_t d) const { return Load(base + p * stride + d); }
    float at(size_t p, size_t d) const { return ToFloat(base[p * stride + d]); }
};

// Σ row_p[i] b[i] over the whole vectors of n (i < n - n % W), as W lanes to be summed: four
// accumulators (enough to hide the FMA latency), added.
template <class Rows>
V dot_lanes(const Rows& rows, size_t p, const float* b, size_t n) {
    V s0 = FloatVec::zero(), s1 = FloatVec::zero(), s2 = FloatVec::zero(), s3 = FloatVec::zero();
    size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        s0 = FloatVec::fma(rows.load(p, i), FloatVec::load(b + i), s0);
        s1 = FloatVec::fma(rows.load(p, i + W), FloatVec::load(b + i + W), s1);
        s2 = FloatVec::fma(rows.load(p, i + 2 * W), FloatVec::load(b + i + 2 * W), s2);
        s3 = FloatVec::fma(rows.load(p, i + 3 * W), FloatVec::load(b + i + 3 * W), s3);
    }
    for (; i + W <= n; i += W) s0 = FloatVec::fma(rows.load(p, i), FloatVec::load(b + i), s0);
    return FloatVec::add(FloatVec::add(s0, s1), FloatVec::add(s2, s3));
}

// Σ row_p[i] b[i].
template <class Rows>
float dot_row(const Rows& rows, size_t p, const float* b, size_t n) {
    float s = FloatVec::hsum(dot_lanes(rows, p, b, n));
    for (size_t i = n - n % W; i < n; ++i) s += rows.at(p, i) * b[i];
    return s;
}

// Σ a[i] b[i]; `Load` widens a's elements.
template <class T, V (*Load)(const T*), float (*ToFloat)(T)>
float dot(const T* a, const float* b, size_t n) {
    return dot_row(PlainRows<T, Load, ToFloat>{a, 0}, 0, b, n);
}

float identity(float f) { return f; }
float half_to_float(uint16_t h) { return fp16_to_fp32(h); }
float bfloat_to_float(uint16_t b) { return bf16_to_fp32(b); }
constexpr auto dot_f32 = dot<float, FloatVec::load, identity>;
constexpr auto dot_f16 = dot<uint16_t, FloatVec::load_f16, half_to_float>;
constexpr auto dot_bf16 = dot<uint16_t, FloatVec::load_bf16, bfloat_to_float>;

// A Q8_0 cache's rows (ggml's blocks: a float16 scale, then 32 signed codes), `row_bytes` apart,
// each whole blocks: element d is scale * code, in float, as format/quant's dequantize computes it,
// so attend reads the values a float32 cache of the dequantized rows would hold, at 34 bytes a 32
// where widening them first wrote and read 128 more.
struct Q8_0Rows {
    const std::byte* base;
    size_t row_bytes;
    // The block holding element d (kv_bytes counts the whole blocks before it).
    const std::byte* block_of(size_t p, size_t d) const { return base + p * row_bytes + kv_bytes(KvType::Q8_0, d); }
    static float scale(const std::byte* b) {
        uint16_t h;
        std::memcpy(&h, b, sizeof h);
        return fp16_to_fp32(h);
    }
    V load(size_t p, size_t d) const {
        const std::byte* b = block_of(p, d);
        return FloatVec::mul(FloatVec::load_i8(reinterpret_cast<const int8_t*>(b + 2 + d % kv_q8_0_block)), FloatVec::set1(scale(b)));
    }
    float at(size_t p, size_t d) const {
        const std::byte* b = block_of(p, d);
        return float(static_cast<int8_t>(b[2 + d % kv_q8_0_block])) * scale(b);
    }
};
static_assert(kv_q8_0_block % W == 0, "a vector of a Q8_0 row lies in one block");

// f(k_rows, v_rows): a KV head's keys and values (rows kv_stride elements of `type` apart) as the
// rows accessor of their type.
template <class F>
void with_cached_rows(KvType type, const void* k, const void* v, size_t kv_stride, F&& f) {
    using F32Rows = PlainRows<float, FloatVec::load, identity>;
    using F16Rows = PlainRows<uint16_t, FloatVec::load_f16, half_to_float>;
    switch (type) {
    case KvType::F16:
        return f(F16Rows{static_cast<const uint16_t*>(k), kv_stride}, F16Rows{static_cast<const uint16_t*>(v), kv_stride});
    case KvType::Q8_0: {
        const size_t row_bytes = kv_bytes(KvType::Q8_0, kv_stride);
        return f(Q8_0Rows{static_cast<const std::byte*>(k), row_bytes}, Q8_0Rows{static_cast<const std::byte*>(v), row_bytes});
    }
    case KvType::F32:
        return f(F32Rows{static_cast<const float*>(k), kv_stride}, F32Rows{static_cast<const float*>(v), kv_stride});
    }
}

// The float-activation products take n_x activation rows (x: [n_x, n_cols]) and write
// y[b * y_stride + r]: each weight row is read from memory once, then from L1 for every further
// activation row, whose dot product is the one a lone row gets (matmul_rows' batch invariance).
template <class T, float (*Dot)(const T*, const float*, size_t)>
void matvec_plain(const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const float* x, size_t n_x, float* y,
                  size_t y_stride) {
    const std::byte* end = w + n_rows * row_bytes;
    for (size_t r = 0; r < n_rows; ++r) {
        prefetch_ahead(w + r * row_bytes, row_bytes, end);
        for (size_t b = 0; b < n_x; ++b) y[b * y_stride + r] = Dot(reinterpret_cast<const T*>(w + r * row_bytes), x + b * n_cols, n_cols);
    }
}

// Quantized rows with float activations: dequantize 256 values at a time (every block size
// divides 256) into a buffer that stays in L1, then a float dot product with each activation row.
void matvec_dequantized(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols,
                        const float* x, size_t n_x, float* y, size_t y_stride) {
    const GGMLTypeTraits& traits = type_traits(type);
    alignas(64) float values[256];
    float sums[matvec_max_rows];
    const std::byte* end = w + n_rows * row_bytes;
    for (size_t r = 0; r < n_rows; ++r) {
        const std::byte* row = w + r * row_bytes;
        prefetch_ahead(row, row_bytes, end);
        for (size_t b = 0; b < n_x; ++b) sums[b] = 0.0f;
        for (size_t c = 0; c < n_cols; c += 256) {
            const size_t n = std::min<size_t>(256, n_cols - c);
            dequantize_row(type, row + c / traits.block_size * traits.type_size, n, values);
            for (size_t b = 0; b < n_x; ++b) sums[b] += dot_f32(values, x + b * n_cols + c, n);
        }
        for (size_t b = 0; b < n_x; ++b) y[b * y_stride + r] = sums[b];
    }
}

void matvec(GGMLType type, const std::byte* w, size_t row_bytes, size_t n_rows, size_t n_cols, const float* x, size_t n_x,
            float* y, size_t y_stride) {
    switch (type) {
    case GGMLType::F32: return matvec_plain<float, dot_f32>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::F16: return matvec_plain<uint16_t, dot_f16>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    case GGMLType::BF16: return matvec_plain<uint16_t, dot_bf16>(w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    default: return matvec_dequantized(type, w, row_bytes, n_rows, n_cols, x, n_x, y, y_stride);
    }
}

// Register-blocked product of `Rows` weight rows with one block of NR packed tokens: 2 x Rows
// vector accumulators; per k, two loads of tokens and Rows broadcasts of weights.
constexpr size_t NR = 2 * W;
constexpr size_t MR = FloatVec::gemm_rows;

template <size_t Rows>
void gemm_tile(const float* w, size_t w_stride, size_t n_cols, const float* xp, float* y, size_t y_stride, size_t n_tokens) {
    V acc0[Rows], acc1[Rows];
    for (size_t r = 0; r < Rows; ++r) acc0[r] = acc1[r] = FloatVec::zero();
    for (size_t k = 0; k < n_cols; ++k) {
        const V x0 = FloatVec::load(xp + k * NR), x1 = FloatVec::load(xp + k * NR + W);
#pragma GCC unroll 16
        for (size_t r = 0; r < Rows; ++r) {
            const V b = FloatVec::set1(w[r * w_stride + k]);
            acc0[r] = FloatVec::fma(b, x0, acc0[r]);
            acc1[r] = FloatVec::fma(b, x1, acc1[r]);
        }
    }
    alignas(64) float out[NR];
    for (size_t r = 0; r < Rows; ++r) {
        FloatVec::store(out, acc0[r]);
        FloatVec::store(out + W, acc1[r]);
        for (size_t t = 0; t < n_tokens; ++t) y[t * y_stride + r] = out[t];
    }
}

using GemmTile = void (*)(const float*, size_t, size_t, const float*, float*, size_t, size_t);
template <size_t... I>
constexpr std::array<GemmTile, sizeof...(I)> gemm_tiles(std::index_sequence<I...>) { return {gemm_tile<I + 1>...}; }
constexpr auto gemm_tile_for_rows = gemm_tiles(std::make_index_sequence<MR>());

void gemm(const float* w, size_t w_stride, size_t n_rows, size_t n_cols, const float* x_packed, size_t n_tokens,
          float* y, size_t y_stride) {
    for (size_t r0 = 0; r0 < n_rows; r0 += MR) {
        const size_t rows = std::min(MR, n_rows - r0);
        for (size_t t0 = 0; t0 < n_tokens; t0 += NR) {
            gemm_tile_for_rows[rows - 1](w + r0 * w_stride, w_stride, n_cols, x_packed + t0 * n_cols,
                                         y + t0 * y_stride + r0, y_stride, std::min(NR, n_tokens - t0));
        }
    }
}

// The most query heads one attend_rows group takes: 16 value accumulators, 4 loaded values, 4 weights.
constexpr size_t max_attend_heads = 4;

// The scores of n_heads (<= max_attend_heads) query heads (q: head j at q + j * head_dim; scores: head j's n_kv at
// scores + j * n_kv), a block of keys for every head before the next block, so that all but the
// first head read its rows from L1. W keys at a time: their dot products' lanes summed by one
// tree for all W (hsums) rather than a horizontal sum each; the same sums as dot_row's, so the
// same scores as the keys past the last whole W. max_score[j] takes head j's largest.
template <class Rows>
void attend_scores(const float* q, size_t n_heads, const Rows& k, size_t n_kv, size_t head_dim, float scale, float* scores,
                   float* max_score) {
    size_t p = 0;
    if (head_dim % W == 0 && n_kv >= W) {
        V vmax[max_attend_heads];
        for (size_t j = 0; j < n_heads; ++j) vmax[j] = FloatVec::set1(max_score[j]);
        for (; p + W <= n_kv; p += W)
            for (size_t j = 0; j < n_heads; ++j) {
                V lanes[W];
#pragma GCC unroll 16
                for (size_t i = 0; i < W; ++i) lanes[i] = dot_lanes(k, p + i, q + j * head_dim, head_dim);
                const V s = FloatVec::mul(FloatVec::set1(scale), FloatVec::hsums(lanes));
                FloatVec::store(scores + j * n_kv + p, s);
                vmax[j] = FloatVec::max(vmax[j], s);
            }
        for (size_t j = 0; j < n_heads; ++j) {
            alignas(64) float maxima[W];
            FloatVec::store(maxima, vmax[j]);
            max_score[j] = *std::max_element(maxima, maxima + W);
        }
    }
    for (; p < n_kv; ++p)
        for (size_t j = 0; j < n_heads; ++j) {
            const float s = scale * dot_row(k, p, q + j * head_dim, head_dim);
            scores[j * n_kv + p] = s;
            max_score[j] = std::max(max_score[j], s);
        }
}

// A head's scores to softmax weights in place (unnormalized: exp(score - max)); returns 1 / their
// sum, the sink's exp(sink - max) included.
float softmax_weights(float* scores, size_t n_kv, float max_score, float sink) {
    const V vmax = FloatVec::set1(max_score);
    V vsum = FloatVec::zero();
    size_t p = 0;
    for (; p + W <= n_kv; p += W) {
        const V e = vexp(FloatVec::sub(FloatVec::load(scores + p), vmax));
        FloatVec::store(scores + p, e);
        vsum = FloatVec::add(vsum, e);
    }
    float sum = FloatVec::hsum(vsum);
    for (; p < n_kv; ++p) sum += scores[p] = std::exp(scores[p] - max_score);
    if (sink > -INFINITY) sum += std::exp(sink - max_score);
    return 1.0f / sum;
}

// out_j = Σ_p weights_j[p] v_p * inv_sum[j] for H heads, each value vector loaded once for all H.
// Four column chunks at once, each its own FMA chain over the positions in order (the same
// arithmetic as one chunk at a time): with one chain, bound by the FMA's latency, this loop took
// ~88% of attend's time in a 16-stream serve run (perf; BENCHMARKS.md, issue 19).
template <size_t H, class Rows>
void attend_values(const float* weights, const Rows& v, size_t n_kv, size_t head_dim, const float* inv_sum, float* out) {
    size_t d = 0;
    for (; d + 4 * W <= head_dim; d += 4 * W) {
        V acc[H][4];
        for (size_t j = 0; j < H; ++j)
            for (size_t c = 0; c < 4; ++c) acc[j][c] = FloatVec::zero();
        for (size_t p = 0; p < n_kv; ++p) {
            const V x[4] = {v.load(p, d), v.load(p, d + W), v.load(p, d + 2 * W), v.load(p, d + 3 * W)};
            for (size_t j = 0; j < H; ++j) {
                const V s = FloatVec::set1(weights[j * n_kv + p]);
                for (size_t c = 0; c < 4; ++c) acc[j][c] = FloatVec::fma(s, x[c], acc[j][c]);
            }
        }
        for (size_t j = 0; j < H; ++j)
            for (size_t c = 0; c < 4; ++c)
                FloatVec::store(out + j * head_dim + d + c * W, FloatVec::mul(acc[j][c], FloatVec::set1(inv_sum[j])));
    }
    for (; d + W <= head_dim; d += W) {
        V acc[H];
        for (size_t j = 0; j < H; ++j) acc[j] = FloatVec::zero();
        for (size_t p = 0; p < n_kv; ++p) {
            const V x = v.load(p, d);
            for (size_t j = 0; j < H; ++j) acc[j] = FloatVec::fma(FloatVec::set1(weights[j * n_kv + p]), x, acc[j]);
        }
        for (size_t j = 0; j < H; ++j) FloatVec::store(out + j * head_dim + d, FloatVec::mul(acc[j], FloatVec::set1(inv_sum[j])));
    }
    for (; d < head_dim; ++d)
        for (size_t j = 0; j < H; ++j) {
            float acc = 0.0f;
            for (size_t p = 0; p < n_kv; ++p) acc += weights[j * n_kv + p] * v.at(p, d);
            out[j * head_dim + d] = acc * inv_sum[j];
        }
}

// Kernels::attend: the heads in groups of up to max_attend_heads, each head's arithmetic what it
// would be alone.

template <class Rows>
void attend_rows(const float* q, size_t n_heads, const Rows& k, const Rows& v, size_t n_kv, size_t head_dim, float scale,
                 const float* sinks, float* scores, float* out) {
    for (size_t j0 = 0; j0 < n_heads; j0 += max_attend_heads) {
        const size_t h = std::min(max_attend_heads, n_heads - j0);
        float* weights = scores + j0 * n_kv;
        float max_score[max_attend_heads], inv_sum[max_attend_heads];
        for (size_t j = 0; j < h; ++j) max_score[j] = sinks ? sinks[j0 + j] : -INFINITY;
        attend_scores(q + j0 * head_dim, h, k, n_kv, head_dim, scale, weights, max_score);
        for (size_t j = 0; j < h; ++j)
            inv_sum[j] = softmax_weights(weights + j * n_kv, n_kv, max_score[j], sinks ? sinks[j0 + j] : -INFINITY);
        float* o = out + j0 * head_dim;
        switch (h) {
        case 1: attend_values<1>(weights, v, n_kv, head_dim, inv_sum, o); break;
        case 2: attend_values<2>(weights, v, n_kv, head_dim, inv_sum, o); break;
        case 3: attend_values<3>(weights, v, n_kv, head_dim, inv_sum, o); break;
        default: attend_values<4>(weights, v, n_kv, head_dim, inv_sum, o); break;
        }
    }
}

void attend(const float* q, size_t n_heads, const void* k, const void* v, KvType type, size_t kv_stride, size_t n_kv,
            size_t head_dim, float scale, const float* sinks, float* scores, float* out) {
    with_cached_rows(type, k, v, kv_stride, [&](const auto& k_rows, const auto& v_rows) {
        attend_rows(q, n_heads, k_rows, v_rows, n_kv, head_dim, scale, sinks, scores, out);
    });
}

// Prompt attention a block of query rows at a time (Kernels::attend_block). The vectors run along
// the block's rows (RV vectors of W: one or two), so every step is vertical: the scores of AK
// keys are AK x RV accumulators fed by broadcasts of the keys' elements, one FMA a (row, key,
// element) and no horizontal sums; the online softmax keeps a running max and sum a row (lane);
// the values' sums are AK head elements x RV accumulators fed by broadcasts of the values. A tile
// of keys is copied (a float16 one widened) into scratch once for the block's rows.
//
// A row's values are the same bits whatever block it is computed in (its lane's operations do not
// depend on the other lanes, nor on RV), and tiles break at fixed positions (multiples of
// attn_tile), so they are the same whatever prompt call, chunk or block the row comes in:
// keys outside a row's range weigh exactly 0 and leave its sums as they were.
constexpr size_t AR = 2 * W;
constexpr size_t AK = MR;
constexpr size_t attn_tile = 4 * AK;
static_assert(AR <= max_attention_block_rows);
// A masked score becomes attn_masked; a row's running max starts at attn_floor, so a masked
// key's weight is exp(-1e30 + 1e20) = 0 even before the row has met a visible key, and the first
// visible one's rescale factor exp(-1e20 - max) = 0 leaves its sums as they were (zero).
constexpr float attn_masked = -1e30f, attn_floor = -1e20f;

// s[i * RV W ..] = sum_d kt[i * kd + d] qt[d * RV W ..] for i < N: the scores of N keys (rows of
// kt, kd apart; kd = KD when known when compiled) with the block's (transposed) query rows. Each
// lane's sum is one FMA chain per attn_score_chunk elements, the chunks' sums added in s: a chain
// over all of a 256-wide head strayed ~3x further from float64 than attend's dot (its 4 W lanes of
// chains and a tree of adds) in OpsTest.PromptAttentionInBlocksMatchesRowsAndFloat64.
constexpr size_t attn_score_chunk = 16;
template <size_t RV, size_t N, size_t KD>
void attn_scores(const float* kt, size_t kd, size_t n_d, const float* qt, float* s) {
    constexpr size_t R = RV * W;
    if constexpr (KD != 0) kd = KD;
    for (size_t d0 = 0; d0 < n_d; d0 += attn_score_chunk) {
        const size_t d1 = std::min(n_d, d0 + attn_score_chunk);
        V acc[N][RV];
        for (size_t i = 0; i < N; ++i)
            for (size_t v = 0; v < RV; ++v) acc[i][v] = FloatVec::zero();
        for (size_t d = d0; d < d1; ++d) {
            V x[RV];
            for (size_t v = 0; v < RV; ++v) x[v] = FloatVec::load(qt + d * R + v * W);
#pragma GCC unroll 16
            for (size_t i = 0; i < N; ++i) {
                const V b = FloatVec::set1(kt[i * kd + d]);
                for (size_t v = 0; v < RV; ++v) acc[i][v] = FloatVec::fma(b, x[v], acc[i][v]);
            }
        }
        for (size_t i = 0; i < N; ++i)
            for (size_t v = 0; v < RV; ++v) {
                if (d0 > 0) acc[i][v] = FloatVec::add(acc[i][v], FloatVec::load(s + i * R + v * W));
                FloatVec::store(s + i * R + v * W, acc[i][v]);
            }
    }
}

// ot[i * RV W ..] += sum_j vt[j * vd + i] p[j * RV W ..] for i < N: N head elements of the
// block's (transposed) outputs, over n_keys value rows vd apart and their weights p.
template <size_t RV, size_t N>
void attn_values(const float* vt, size_t vd, size_t n_keys, const float* p, float* ot) {
    constexpr size_t R = RV * W;
    V acc[N][RV];
    for (size_t i = 0; i < N; ++i)
        for (size_t v = 0; v < RV; ++v) acc[i][v] = FloatVec::load(ot + i * R + v * W);
    for (size_t j = 0; j < n_keys; ++j) {
        V x[RV];
        for (size_t v = 0; v < RV; ++v) x[v] = FloatVec::load(p + j * R + v * W);
        const float* row = vt + j * vd;
#pragma GCC unroll 16
        for (size_t i = 0; i < N; ++i) {
            const V b = FloatVec::set1(row[i]);
            for (size_t v = 0; v < RV; ++v) acc[i][v] = FloatVec::fma(b, x[v], acc[i][v]);
        }
    }
    for (size_t i = 0; i < N; ++i)
        for (size_t v = 0; v < RV; ++v) FloatVec::store(ot + i * R + v * W, acc[i][v]);
}

template <size_t RV, size_t KD, size_t... I>
constexpr auto attn_scores_table(std::index_sequence<I...>) {
    return std::array<void (*)(const float*, size_t, size_t, const float*, float*), sizeof...(I)>{attn_scores<RV, I + 1, KD>...};
}
template <size_t RV, size_t... I>
constexpr auto attn_values_table(std::index_sequence<I...>) {
    return std::array<void (*)(const float*, size_t, size_t, const float*, float*), sizeof...(I)>{attn_values<RV, I + 1>...};
}

size_t attend_block_scratch_bytes(size_t head_dim) {
    // qt and ot [head_dim][AR], scores [attn_tile][AR], the key and value tiles [attn_tile][head_dim].
    return (2 * head_dim * AR + attn_tile * AR + 2 * attn_tile * head_dim) * sizeof(float);
}

// Rows [first, first + n) of `rows` (head_dim elements each) into dst as floats, head_dim apart.
template <class Rows>
void widen_rows(const Rows& rows, size_t first, size_t n, size_t head_dim, float* dst) {
    const size_t whole = head_dim / W * W;
    for (size_t j = 0; j < n; ++j) {
        float* out = dst + j * head_dim;
        for (size_t d = 0; d < whole; d += W) FloatVec::store(out + d, rows.load(first + j, d));
        for (size_t d = whole; d < head_dim; ++d) out[d] = rows.at(first + j, d);
    }
}

template <class Rows, size_t KD, size_t RV>
void attend_block_rows(const AttentionBlock& b, const Rows& k, const Rows& v, float* scratch) {
    constexpr size_t R = RV * W;
    static constexpr auto scores_for = attn_scores_table<RV, KD>(std::make_index_sequence<AK>());
    static constexpr auto values_for = attn_values_table<RV>(std::make_index_sequence<AK>());
    const size_t D = KD != 0 ? KD : b.head_dim;
    float* qt = scratch;               // [D][R]: scale q, transposed
    float* ot = qt + D * R;            // [D][R]: the unnormalized outputs, transposed
    float* st = ot + D * R;            // [attn_tile][R]: a tile's scores, then its weights
    float* kt = st + attn_tile * R;    // [attn_tile][D]
    float* vt = kt + attn_tile * D;    // [attn_tile][D]
    alignas(64) float m[R], l[R], first[R], end[R];
    size_t lo = SIZE_MAX, hi = 0, max_first = 0, min_end = SIZE_MAX;
    for (size_t r = 0; r < R; ++r) {
        // Padding rows (zero queries) repeat the last row's range, so they widen no key range.
        const size_t rr = std::min(r, b.n_rows - 1);
        first[r] = static_cast<float>(b.first[rr]), end[r] = static_cast<float>(b.end[rr]);
        lo = std::min(lo, b.first[rr]), max_first = std::max(max_first, b.first[rr]);
        hi = std::max(hi, b.end[rr]), min_end = std::min(min_end, b.end[rr]);
        for (size_t d = 0; d < D; ++d) qt[d * R + r] = r < b.n_rows ? b.scale * b.q[r][d] : 0.0f;
        m[r] = attn_floor, l[r] = 0.0f;
    }
    std::fill_n(ot, D * R, 0.0f);
    for (size_t j0 = lo, j1; j0 < hi; j0 = j1) {
        j1 = std::min(hi, ((b.position + j0) / attn_tile + 1) * attn_tile - b.position);
        const size_t n = j1 - j0;
        widen_rows(k, j0, n, D, kt);
        widen_rows(v, j0, n, D, vt);
        size_t j = 0;
        for (; j + AK <= n; j += AK) attn_scores<RV, AK, KD>(kt + j * D, D, D, qt, st + j * R);
        if (j < n) scores_for[n - j - 1](kt + j * D, D, D, qt, st + j * R);

        // Some row sees only part of the tile: its other scores become attn_masked, through
        // keep = [key < end] [key >= first] as 0/1 from clamped differences (exact: small integers).
        const bool masked = j0 < max_first || j1 > min_end;
        for (size_t h = 0; h < R; h += W) {
            const V m_old = FloatVec::load(m + h);
            V mx = m_old;
            if (masked) {
                const V vfirst = FloatVec::load(first + h), vend = FloatVec::load(end + h);
                const V zero = FloatVec::zero(), one = FloatVec::set1(1.0f);
                for (size_t jj = 0; jj < n; ++jj) {
                    const V key = FloatVec::set1(static_cast<float>(j0 + jj));
                    const V below_end = FloatVec::min(FloatVec::max(FloatVec::sub(vend, key), zero), one);
                    const V from_first = FloatVec::min(FloatVec::max(FloatVec::add(FloatVec::sub(key, vfirst), one), zero), one);
                    const V bound = FloatVec::fma(FloatVec::mul(below_end, from_first),
                                                  FloatVec::set1(-2.0f * attn_masked), FloatVec::set1(attn_masked));
                    const V s = FloatVec::min(FloatVec::load(st + jj * R + h), bound);
                    FloatVec::store(st + jj * R + h, s);
                    mx = FloatVec::max(mx, s);
                }
            } else {
                for (size_t jj = 0; jj < n; ++jj) mx = FloatVec::max(mx, FloatVec::load(st + jj * R + h));
            }
            V sum = FloatVec::zero();
            for (size_t jj = 0; jj < n; ++jj) {
                const V p = vexp(FloatVec::sub(FloatVec::load(st + jj * R + h), mx));
                FloatVec::store(st + jj * R + h, p);
                sum = FloatVec::add(sum, p);
            }
            const V alpha = vexp(FloatVec::sub(m_old, mx));
            FloatVec::store(l + h, FloatVec::fma(FloatVec::load(l + h), alpha, sum));
            FloatVec::store(m + h, mx);
            for (size_t d = 0; d < D; ++d)
                FloatVec::store(ot + d * R + h, FloatVec::mul(FloatVec::load(ot + d * R + h), alpha));
        }

        size_t d = 0;
        for (; d + AK <= D; d += AK) attn_values<RV, AK>(vt + d, D, n, st, ot + d * R);
        if (d < D) values_for[D - d - 1](vt + d, D, n, st, ot + d * R);
    }
    for (size_t r = 0; r < b.n_rows; ++r) {
        float inverse = 1.0f / l[r];
        if (b.sinks) {   // the sink's term joins the denominator, both rescaled to the larger of m and the sink
            const float mx = std::max(m[r], b.sinks[r]), alpha = std::exp(m[r] - mx);
            inverse = alpha / (l[r] * alpha + std::exp(b.sinks[r] - mx));
        }
        for (size_t d = 0; d < D; ++d) b.out[r][d] = ot[d * R + r] * inverse;
    }
}

// One vector of rows where they fit in one (fewer lanes to fill), else two.
template <class Rows, size_t KD>
void attend_block_sized(const AttentionBlock& b, const Rows& k, const Rows& v, float* scratch) {
    if (b.n_rows <= W) return attend_block_rows<Rows, KD, 1>(b, k, v, scratch);
    attend_block_rows<Rows, KD, 2>(b, k, v, scratch);
}

template <class Rows>
void attend_block_typed(const AttentionBlock& b, const Rows& k, const Rows& v, float* scratch) {
    switch (b.head_dim) {
    case 64: return attend_block_sized<Rows, 64>(b, k, v, scratch);
    case 128: return attend_block_sized<Rows, 128>(b, k, v, scratch);
    case 256: return attend_block_sized<Rows, 256>(b, k, v, scratch);
    default: return attend_block_sized<Rows, 0>(b, k, v, scratch);
    }
}

void attend_block(const AttentionBlock& b, std::byte* scratch) {
    with_cached_rows(b.type, b.k, b.v, b.kv_stride, [&](const auto& k_rows, const auto& v_rows) {
        attend_block_typed(b, k_rows, v_rows, reinterpret_cast<float*>(scratch));
    });
}

// A plain loop, vectorized by the compiler for the table's instruction set. Compiled for baseline
// x86-64 instead (SSE2), the same loop took ~100 us for a 49,152-float logits row inside twinfer on
// the H100 machine's Xeon, between decode steps, against ~12 us under AVX2; why the SSE code is that
// slow there is not known (vzeroupper before it did not help).
void widen(const float* x, size_t n, double* out) {
    for (size_t i = 0; i < n; ++i) out[i] = x[i];
}

// Element-wise kernels: every element through the vector arithmetic, the last partial vector via a
// padded copy, so that an element's value does not depend on where a call's range starts or ends
// (a batched pass's rows one call each, a sequence's all in one: the same bits).
template <class F>
void each_vector(size_t n, F&& f) {
    size_t i = 0;
    for (; i + W <= n; i += W) f(i, W);
    if (i < n) f(i, n - i);
}

void swiglu(const float* gate, const float* up, size_t n, float* out) {
    const V one = FloatVec::set1(1.0f);
    each_vector(n, [&](size_t i, size_t count) {
        alignas(64) float g_tail[W] = {}, u_tail[W] = {}, o_tail[W];
        const bool tail = count < W;
        if (tail) std::copy(gate + i, gate + i + count, g_tail), std::copy(up + i, up + i + count, u_tail);
        const V g = FloatVec::load(tail ? g_tail : gate + i);
        const V silu = FloatVec::div(g, FloatVec::add(one, vexp(FloatVec::sub(FloatVec::zero(), g))));
        FloatVec::store(tail ? o_tail : out + i, FloatVec::mul(silu, FloatVec::load(tail ? u_tail : up + i)));
        if (tail) std::copy(o_tail, o_tail + count, out + i);
    });
}

// tanh(z) = 1 - 2 / (exp(2z) + 1), which saturates correctly at both ends.
void gelu(float* x, size_t n) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    const V one = FloatVec::set1(1.0f), two = FloatVec::set1(2.0f), half = FloatVec::set1(0.5f);
    const V c = FloatVec::set1(sqrt_2_over_pi), c3 = FloatVec::set1(sqrt_2_over_pi * 0.044715f);
    each_vector(n, [&](size_t i, size_t count) {
        alignas(64) float tail_values[W] = {};
        const bool tail = count < W;
        if (tail) std::copy(x + i, x + i + count, tail_values);
        float* p = tail ? tail_values : x + i;
        const V v = FloatVec::load(p);
        const V z = FloatVec::mul(v, FloatVec::fma(c3, FloatVec::mul(v, v), c));
        const V tanh = FloatVec::sub(one, FloatVec::div(two, FloatVec::add(vexp(FloatVec::mul(two, z)), one)));
        FloatVec::store(p, FloatVec::mul(FloatVec::mul(half, v), FloatVec::add(one, tanh)));
        if (tail) std::copy(tail_values, tail_values + count, x + i);
    });
}

}  // namespace
