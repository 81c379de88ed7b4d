// Float kernels written once over a vector type, compiled by each kernels_*.cpp under its own
// `#pragma GCC target` (see kernels.hpp). The including file defines, before including this:
//   struct FloatVec {
//     using V = ...; static constexpr size_t width, gemm_rows;
//     zero() load(p) store(p, v) set1(f) add sub mul div min max fma(a, b, c)=a*b+c hsum(v)
//     round(v) (to nearest) scale_pow2(y, n)=y*2^n load_f16(p) load_bf16(p)   (all static)
//   };
//   void dequantize_row(GGMLType type, const std::byte* src, size_t n, float* dst);
// Everything here has internal linkage: each ISA's copy stays in its own translation unit.
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

// Σ a[i] b[i] with four accumulators (enough to hide the FMA latency); `Load` widens a's elements.
template <class T, V (*Load)(const T*), float (*ToFloat)(T)>
float dot(const T* a, const float* b, size_t n) {
    V s0 = FloatVec::zero(), s1 = FloatVec::zero(), s2 = FloatVec::zero(), s3 = FloatVec::zero();
    size_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        s0 = FloatVec::fma(Load(a + i), FloatVec::load(b + i), s0);
        s1 = FloatVec::fma(Load(a + i + W), FloatVec::load(b + i + W), s1);
        s2 = FloatVec::fma(Load(a + i + 2 * W), FloatVec::load(b + i + 2 * W), s2);
        s3 = FloatVec::fma(Load(a + i + 3 * W), FloatVec::load(b + i + 3 * W), s3);
    }
    for (; i + W <= n; i += W) s0 = FloatVec::fma(Load(a + i), FloatVec::load(b + i), s0);
    float s = FloatVec::hsum(FloatVec::add(FloatVec::add(s0, s1), FloatVec::add(s2, s3)));
    for (; i < n; ++i) s += ToFloat(a[i]) * b[i];
    return s;
}

float identity(float f) { return f; }
float half_to_float(uint16_t h) { return fp16_to_fp32(h); }
float bfloat_to_float(uint16_t b) { return bf16_to_fp32(b); }
constexpr auto dot_f32 = dot<float, FloatVec::load, identity>;
constexpr auto dot_f16 = dot<uint16_t, FloatVec::load_f16, half_to_float>;
constexpr auto dot_bf16 = dot<uint16_t, FloatVec::load_bf16, bfloat_to_float>;

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

template <class T, V (*Load)(const T*), float (*ToFloat)(T)>
void attend_rows(const float* q, const T* k, const T* v, size_t kv_stride, size_t n_kv, size_t head_dim, float scale,
                 float* scores, float* out) {
    float max_score = -INFINITY;
    for (size_t p = 0; p < n_kv; ++p) {
        scores[p] = scale * dot<T, Load, ToFloat>(k + p * kv_stride, q, head_dim);
        max_score = std::max(max_score, scores[p]);
    }
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
    const float inv_sum = 1.0f / sum;

    // Four column chunks at once, each its own FMA chain over the positions in order (the same
    // arithmetic as one chunk at a time): with one chain, bound by the FMA's latency, this loop
    // took ~88% of attend's time in a 16-stream serve run (perf; BENCHMARKS.md, issue 19).
    size_t d = 0;
    for (; d + 4 * W <= head_dim; d += 4 * W) {
        V acc[4] = {FloatVec::zero(), FloatVec::zero(), FloatVec::zero(), FloatVec::zero()};
        for (size_t p2 = 0; p2 < n_kv; ++p2) {
            const V s = FloatVec::set1(scores[p2]);
            for (size_t j = 0; j < 4; ++j) acc[j] = FloatVec::fma(s, Load(v + p2 * kv_stride + d + j * W), acc[j]);
        }
        for (size_t j = 0; j < 4; ++j) FloatVec::store(out + d + j * W, FloatVec::mul(acc[j], FloatVec::set1(inv_sum)));
    }
    for (; d + W <= head_dim; d += W) {
        V acc = FloatVec::zero();
        for (size_t p2 = 0; p2 < n_kv; ++p2) acc = FloatVec::fma(FloatVec::set1(scores[p2]), Load(v + p2 * kv_stride + d), acc);
        FloatVec::store(out + d, FloatVec::mul(acc, FloatVec::set1(inv_sum)));
    }
    for (; d < head_dim; ++d) {
        float acc = 0.0f;
        for (size_t p2 = 0; p2 < n_kv; ++p2) acc += scores[p2] * ToFloat(v[p2 * kv_stride + d]);
        out[d] = acc * inv_sum;
    }
}

void attend(const float* q, const void* k, const void* v, KvType type, size_t kv_stride, size_t n_kv, size_t head_dim,
            float scale, float* scores, float* out) {
    if (type == KvType::F16)
        return attend_rows<uint16_t, FloatVec::load_f16, half_to_float>(q, static_cast<const uint16_t*>(k),
                                                                       static_cast<const uint16_t*>(v), kv_stride, n_kv,
                                                                       head_dim, scale, scores, out);
    attend_rows<float, FloatVec::load, identity>(q, static_cast<const float*>(k), static_cast<const float*>(v), kv_stride,
                                                 n_kv, head_dim, scale, scores, out);
}

// A plain loop, vectorized by the compiler for the table's instruction set. Compiled for baseline
// x86-64 instead (SSE2), the same loop took ~100 us for a 49,152-float logits row inside twinfer on
// the H100 machine's Xeon, between decode steps, against ~12 us under AVX2; why the SSE code is that
// slow there is not known (vzeroupper before it did not help).
void widen(const float* x, size_t n, double* out) {
    for (size_t i = 0; i < n; ++i) out[i] = x[i];
}

void swiglu(const float* gate, const float* up, size_t n, float* out) {
    const V one = FloatVec::set1(1.0f);
    size_t i = 0;
    for (; i + W <= n; i += W) {
        const V g = FloatVec::load(gate + i);
        const V silu = FloatVec::div(g, FloatVec::add(one, vexp(FloatVec::sub(FloatVec::zero(), g))));
        FloatVec::store(out + i, FloatVec::mul(silu, FloatVec::load(up + i)));
    }
    for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// tanh(z) = 1 - 2 / (exp(2z) + 1), which saturates correctly at both ends.
void gelu(float* x, size_t n) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    const V one = FloatVec::set1(1.0f), two = FloatVec::set1(2.0f), half = FloatVec::set1(0.5f);
    const V c = FloatVec::set1(sqrt_2_over_pi), c3 = FloatVec::set1(sqrt_2_over_pi * 0.044715f);
    size_t i = 0;
    for (; i + W <= n; i += W) {
        const V v = FloatVec::load(x + i);
        const V z = FloatVec::mul(v, FloatVec::fma(c3, FloatVec::mul(v, v), c));
        const V tanh = FloatVec::sub(one, FloatVec::div(two, FloatVec::add(vexp(FloatVec::mul(two, z)), one)));
        FloatVec::store(x + i, FloatVec::mul(FloatVec::mul(half, v), FloatVec::add(one, tanh)));
    }
    for (; i < n; ++i) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(sqrt_2_over_pi * (v + 0.044715f * v * v * v)));
    }
}

}  // namespace
