// Normalization, RoPE, attention, activations and the thread pool against float64 references.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <string_view>
#include <random>
#include <vector>

#include "compute/attention.hpp"
#include "compute/cpu/kernels.hpp"
#include "compute/cpu/thread_pool.hpp"
#include "compute/elementwise.hpp"
#include "compute/experts.hpp"
#include "compute/memory.hpp"
#include "compute/norm.hpp"
#include "compute/rope.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {
namespace {

std::vector<float> gaussian(size_t n, unsigned seed, float sigma = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

std::vector<CpuIsa> available_isas() {
    std::vector<CpuIsa> isas;
    for (CpuIsa isa : {CpuIsa::Generic, CpuIsa::AVX2, CpuIsa::AVX512})
        if (cpu_supports(isa)) isas.push_back(isa);
    return isas;
}

TEST(ThreadPoolTest, ParallelForVisitsEveryIndexOnce) {
    cpu::ThreadPool pool(3);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
        std::vector<std::atomic<int>> seen(n);
        for (int repeat = 0; repeat < 50; ++repeat)
            pool.parallel_for(n, 3, [&](size_t b, size_t e, int) { for (size_t i = b; i < e; ++i) seen[i]++; });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 50) << i;
    }
}

// Joinable regions (parallel_for, which a late worker may miss) between every-thread regions (run,
// which every worker must serve once), back to back and tiny, so that workers arrive while the
// caller is already closing a region or writing the next one's parameters.
TEST(ThreadPoolTest, RegionsOfBothKindsInterleaved) {
    for (int n_threads : {2, 3}) {
        cpu::ThreadPool pool(n_threads);
        std::vector<std::atomic<int>> seen(16);
        std::vector<std::atomic<int>> runs(n_threads);
        constexpr int repeats = 20000;
        for (int repeat = 0; repeat < repeats; ++repeat) {
            pool.parallel_for(seen.size(), 1, [&](size_t b, size_t e, int) { for (size_t i = b; i < e; ++i) seen[i]++; });
            if (repeat % 7 == 0) pool.run([&](int thread) { runs[thread]++; });
        }
        for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i].load(), repeats) << i;
        for (int t = 0; t < n_threads; ++t) EXPECT_EQ(runs[t].load(), (repeats + 6) / 7) << "thread " << t;
    }
}

TEST(OpsTest, RmsNormAndLayerNorm) {
    const size_t rows = 3, n = 100;
    const auto x = gaussian(rows * n, 1, 3.0f), w = gaussian(n, 2), b = gaussian(n, 3);
    Context ctx;
    std::vector<float> out(rows * n);
    rms_norm(ctx, x.data(), w.data(), rows, n, 1e-5f, out.data());
    for (size_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (size_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
        for (size_t i = 0; i < n; ++i)
            EXPECT_NEAR(out[r * n + i], x[r * n + i] / std::sqrt(ss / n + 1e-5) * w[i], 1e-5);
    }
    layer_norm(ctx, x.data(), w.data(), b.data(), rows, n, 1e-5f, out.data());
    for (size_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (size_t i = 0; i < n; ++i) mean += x[r * n + i] / double(n);
        for (size_t i = 0; i < n; ++i) var += (x[r * n + i] - mean) * (x[r * n + i] - mean) / n;
        for (size_t i = 0; i < n; ++i)
            EXPECT_NEAR(out[r * n + i], (x[r * n + i] - mean) / std::sqrt(var + 1e-5) * w[i] + b[i], 1e-5);
    }
}

// With a magnitude (YaRN's, LongRoPE's attention factor) the rotated pairs grow by it and the
// dimensions past n_rot stay as they were.
TEST(OpsTest, RopeRotatesPairsByPositionAngle) {
    const size_t tokens = 3, heads = 2, head_dim = 8, first = 5;
    const std::vector<float> freq_factors = {1.0f, 2.0f, 4.0f};
    for (const double magnitude : {1.0, 1.5})
    for (auto pairing : {RopeParams::Pairing::Adjacent, RopeParams::Pairing::Halves}) {
        const RopeParams params{pairing, 6, 500.0, 0.5, freq_factors.data(), magnitude};
        auto x = gaussian(tokens * heads * head_dim, 4);
        const auto original = x;
        Context ctx;
        rope(ctx, x.data(), tokens, heads * head_dim, heads, head_dim, first, params);
        for (size_t t = 0; t < tokens; ++t)
            for (size_t h = 0; h < heads; ++h) {
                const size_t base = (t * heads + h) * head_dim;
                for (size_t i = 0; i < 3; ++i) {
                    const size_t a = pairing == RopeParams::Pairing::Adjacent ? 2 * i : i;
                    const size_t b = pairing == RopeParams::Pairing::Adjacent ? 2 * i + 1 : i + 3;
                    const double theta = (first + t) * 0.5 * std::pow(500.0, -2.0 * i / 6) / freq_factors[i];
                    const double c = magnitude * std::cos(theta), s = magnitude * std::sin(theta);
                    EXPECT_NEAR(x[base + a], original[base + a] * c - original[base + b] * s, 1e-5);
                    EXPECT_NEAR(x[base + b], original[base + a] * s + original[base + b] * c, 1e-5);
                }
                EXPECT_EQ(x[base + 6], original[base + 6]);   // past n_rot: untouched
                EXPECT_EQ(x[base + 7], original[base + 7]);
            }
    }
}

// A float16 cache: stored values are fp32_to_fp16's rounding, and attention over them computes
// exactly what it computes over a float32 table holding the rounded values (the kernels widen each
// element and do the same arithmetic), decode steps, prompts and sliding-window rings alike.
TEST(OpsTest, Float16CacheIsTheFloat32CacheOfItsRoundedValues) {
    const size_t n_head = 6, n_head_kv = 2, head_dim = 64, kv_stride = n_head_kv * head_dim, n_kv = 70;
    const auto k = gaussian(n_kv * kv_stride, 11), v = gaussian(n_kv * kv_stride, 12);
    for (CpuIsa isa : available_isas()) {
        Context ctx({.cpu_isa = isa});
        std::vector<uint16_t> k16(k.size()), v16(v.size());
        store_rows(ctx, k.data(), n_kv, kv_stride, CacheRows(k16.data(), KvType::F16), 0);
        store_rows(ctx, v.data(), n_kv, kv_stride, CacheRows(v16.data(), KvType::F16), 0);
        std::vector<float> k_rounded(k.size()), v_rounded(v.size());
        for (size_t i = 0; i < k.size(); ++i) {
            ASSERT_EQ(k16[i], fp32_to_fp16(k[i])) << i;
            ASSERT_EQ(v16[i], fp32_to_fp16(v[i])) << i;
            k_rounded[i] = fp16_to_fp32(k16[i]), v_rounded[i] = fp16_to_fp32(v16[i]);
        }
        struct Case {
            size_t tokens, first, window;
        };
        for (const Case c : {Case{1, 69, 0}, Case{1, 0, 0}, Case{9, 61, 0}, Case{5, 40, 16}}) {
            AttentionShape shape{n_head, n_head_kv, head_dim, kv_stride, 1.0f / std::sqrt(float(head_dim))};
            shape.window = c.window;
            const auto q = gaussian(c.tokens * n_head * head_dim, 13);
            std::vector<float> want(q.size()), got(q.size());
            attention(ctx, q.data(), k_rounded.data(), v_rounded.data(), c.tokens, c.first, shape, want.data());
            attention(ctx, q.data(), CacheRows(k16.data(), KvType::F16), CacheRows(v16.data(), KvType::F16), c.tokens, c.first,
                      shape, got.data());
            EXPECT_EQ(got, want) << isa_name(isa) << " " << c.tokens << " tokens after " << c.first;
        }
        // A ring layer: rows p % ring and p % ring + ring, rounded likewise (11 rows into a ring of
        // 8: the last 8 stay).
        const size_t ring = 8;
        std::vector<uint16_t> table(2 * ring * kv_stride);
        store_ring(ctx, k.data(), 11, kv_stride, CacheRows(table.data(), KvType::F16), 3, nullptr, ring);
        for (size_t r = 11 - ring; r < 11; ++r)
            for (size_t copy : {size_t{0}, ring})
                for (size_t i = 0; i < kv_stride; ++i)
                    ASSERT_EQ(table[((3 + r) % ring + copy) * kv_stride + i], k16[r * kv_stride + i]) << r;
    }
    Context ctx(ContextOptions{});
    EXPECT_THROW(attention(ctx, k.data(), k.data(), CacheRows(nullptr, KvType::F16), 1, 0,
                           AttentionShape{n_head, n_head_kv, head_dim, kv_stride, 1.0f}, nullptr),
                 std::invalid_argument);
}

// A Q8_0 cache: stored rows are format/quant's Q8_0 blocks of the values (gguf-py's bytes), and
// attention over them computes exactly what it computes over a float32 table holding their
// dequantized values (each head's rows are widened into scratch first), decode steps, prompts and
// windows alike; a ring keeps its blocks as a float16 ring keeps its values. Heads that are not
// whole blocks are refused before any work.
TEST(OpsTest, Q8_0CacheIsTheFloat32CacheOfItsDequantizedValues) {
    const size_t n_head = 6, n_head_kv = 2, head_dim = 64, kv_stride = n_head_kv * head_dim, n_kv = 70;
    const auto k = gaussian(n_kv * kv_stride, 21), v = gaussian(n_kv * kv_stride, 22);
    const size_t row_bytes = kv_bytes(KvType::Q8_0, kv_stride);
    ASSERT_EQ(row_bytes, kv_stride / 32 * 34);
    for (CpuIsa isa : available_isas()) {
        Context ctx({.cpu_isa = isa});
        std::vector<std::byte> k8(n_kv * row_bytes), v8(n_kv * row_bytes);
        store_rows(ctx, k.data(), n_kv, kv_stride, CacheRows(k8.data(), KvType::Q8_0), 0);
        store_rows(ctx, v.data(), n_kv, kv_stride, CacheRows(v8.data(), KvType::Q8_0), 0);
        std::vector<std::byte> k_expected(k8.size());
        quantize(GGMLType::Q8_0, k, k_expected);
        ASSERT_EQ(k8, k_expected);
        std::vector<float> k_held(k.size()), v_held(v.size());
        dequantize(GGMLType::Q8_0, k8, std::span<float>(k_held));
        dequantize(GGMLType::Q8_0, v8, std::span<float>(v_held));
        struct Case {
            size_t tokens, first, window;
        };
        for (const Case c : {Case{1, 69, 0}, Case{1, 0, 0}, Case{9, 61, 0}, Case{5, 40, 16}, Case{40, 30, 0}}) {
            AttentionShape shape{n_head, n_head_kv, head_dim, kv_stride, 1.0f / std::sqrt(float(head_dim))};
            shape.window = c.window;
            const auto q = gaussian(c.tokens * n_head * head_dim, 23);
            for (AttentionRows rows : {AttentionRows::Prompt, AttentionRows::Decode}) {
                std::vector<float> want(q.size()), got(q.size());
                attention(ctx, q.data(), k_held.data(), v_held.data(), c.tokens, c.first, shape, want.data(), rows);
                attention(ctx, q.data(), CacheRows(k8.data(), KvType::Q8_0), CacheRows(v8.data(), KvType::Q8_0), c.tokens,
                          c.first, shape, got.data(), rows);
                EXPECT_EQ(got, want) << isa_name(isa) << " " << c.tokens << " tokens after " << c.first
                                     << (rows == AttentionRows::Prompt ? " (prompt rows)" : " (decode rows)");
            }
        }
        const size_t ring = 8;
        std::vector<std::byte> table(2 * ring * row_bytes);
        store_ring(ctx, k.data(), 11, kv_stride, CacheRows(table.data(), KvType::Q8_0), 3, nullptr, ring);
        for (size_t r = 11 - ring; r < 11; ++r)
            for (size_t copy : {size_t{0}, ring})
                ASSERT_TRUE(std::equal(k8.begin() + std::ptrdiff_t(r * row_bytes), k8.begin() + std::ptrdiff_t((r + 1) * row_bytes),
                                       table.begin() + std::ptrdiff_t(((3 + r) % ring + copy) * row_bytes)))
                    << r;
    }
    Context ctx(ContextOptions{});
    std::vector<std::byte> rows(4 * 80 / 32 * 34 + 64);
    const auto q = gaussian(2 * 40, 24);
    std::vector<float> out(q.size());
    EXPECT_THROW(attention(ctx, q.data(), CacheRows(rows.data(), KvType::Q8_0), CacheRows(rows.data(), KvType::Q8_0), 1, 0,
                           AttentionShape{2, 2, 40, 80, 1.0f}, out.data()),
                 std::invalid_argument);
}

TEST(OpsTest, CausalGroupedQueryAttention) {
    const size_t tokens = 5, first = 20, n_head = 4, n_head_kv = 2, head_dim = 40, kv_stride = 96;
    const size_t n_kv = first + tokens;
    const auto q = gaussian(tokens * n_head * head_dim, 5);
    const auto k = gaussian(n_kv * kv_stride, 6), v = gaussian(n_kv * kv_stride, 7);
    const AttentionShape shape{n_head, n_head_kv, head_dim, kv_stride, 1.0f / std::sqrt(float(head_dim))};
    for (CpuIsa isa : available_isas()) {
        Context ctx({.cpu_isa = isa});
        std::vector<float> out(tokens * n_head * head_dim);
        attention(ctx, q.data(), k.data(), v.data(), tokens, first, shape, out.data());
        for (size_t t = 0; t < tokens; ++t)
            for (size_t h = 0; h < n_head; ++h) {
                const size_t g = h / (n_head / n_head_kv);
                std::vector<double> s(first + t + 1);
                double mx = -1e300, sum = 0;
                for (size_t p = 0; p < s.size(); ++p) {
                    double d = 0;
                    for (size_t i = 0; i < head_dim; ++i) d += double(q[(t * n_head + h) * head_dim + i]) * k[p * kv_stride + g * head_dim + i];
                    s[p] = d * shape.scale;
                    mx = std::max(mx, s[p]);
                }
                for (double& e : s) sum += e = std::exp(e - mx);
                for (size_t i = 0; i < head_dim; ++i) {
                    double o = 0;
                    for (size_t p = 0; p < s.size(); ++p) o += s[p] / sum * v[p * kv_stride + g * head_dim + i];
                    ASSERT_NEAR(out[(t * n_head + h) * head_dim + i], o, 2e-6) << isa_name(isa) << " t=" << t << " h=" << h;
                }
            }
    }
}

// A prompt that ends within a sliding window's first positions attends as causal attention does,
// over a plain table and over a ring (positions below the ring's size sit at their own rows): the
// CUDA backend hands such prompts to its causal prompt kernels on that ground.
TEST(OpsTest, WindowNotYetReachedIsCausalAttention) {
    const size_t n_head = 4, n_head_kv = 1, head_dim = 64, kv_stride = 64, window = 32;
    for (size_t ring : {size_t{0}, size_t{47}}) {
        // {20, 13}: the last row's window starts at position 1, so there the two differ.
        for (auto [tokens, first] : {std::pair<size_t, size_t>{32, 0}, {20, 12}, {1, 31}, {20, 13}}) {
            const size_t n_rows = ring ? 2 * ring : first + tokens;
            const auto q = gaussian(tokens * n_head * head_dim, 8);
            const auto k = gaussian(n_rows * kv_stride, 9), v = gaussian(n_rows * kv_stride, 10);
            const AttentionShape causal{n_head, n_head_kv, head_dim, kv_stride, 0.125f};
            AttentionShape windowed = causal;
            windowed.window = window;
            windowed.ring = ring;
            Context ctx({.cpu_isa = available_isas().back()});
            std::vector<float> want(q.size()), got(q.size());
            attention(ctx, q.data(), k.data(), v.data(), tokens, first, causal, want.data());
            attention(ctx, q.data(), k.data(), v.data(), tokens, first, windowed, got.data());
            float worst = 0.0f;
            for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]) / (1.0f + std::fabs(want[i])));
            if (first + tokens <= window) EXPECT_LT(worst, 1e-5f) << "ring " << ring << ", " << tokens << " tokens from " << first;
            else EXPECT_GT(worst, 1e-3f) << "ring " << ring << ": the window cuts the last row";
        }
    }
}

// Float64 attention of query q (head_dim values) over key/value rows [first, end) of k and v
// (row i at i * kv_stride), scaled by `scale`: the formula in compute/attention.hpp, plainly; a
// sink's exp(sink) in the denominator too.
std::vector<double> attention_f64(const float* q, const float* k, const float* v, size_t kv_stride, size_t first,
                                  size_t end, size_t head_dim, double scale, double sink = -INFINITY) {
    std::vector<double> s(end - first), out(head_dim, 0.0);
    double mx = sink, sum = 0;
    for (size_t i = first; i < end; ++i) {
        double d = 0;
        for (size_t j = 0; j < head_dim; ++j) d += double(q[j]) * k[i * kv_stride + j];
        mx = std::max(mx, s[i - first] = d * scale);
    }
    for (double& e : s) sum += e = std::exp(e - mx);
    sum += std::exp(sink - mx);
    for (size_t i = first; i < end; ++i)
        for (size_t j = 0; j < head_dim; ++j) out[j] += s[i - first] / sum * v[i * kv_stride + j];
    return out;
}

// The values a cache of `type` holds of x (float16: rounded), in position order, for the float64
// reference.
std::vector<float> held(const std::vector<float>& x, KvType type) {
    std::vector<float> out = x;
    if (type == KvType::F16)
        for (float& e : out) e = fp16_to_fp32(fp32_to_fp16(e));
    return out;
}

// K and V of positions 0..n_kv-1 stored by ctx's store ops in tables of `type`: rows in position
// order, or a ring of `ring` positions (twice as many rows) as sliding-window layers keep them.
class StoredKv {
public:
    StoredKv(Context& ctx, const std::vector<float>& k, const std::vector<float>& v, size_t n_kv, size_t kv_stride, KvType type,
             size_t ring)
        : type_(type), keys16_((ring ? 2 * ring : n_kv) * kv_stride), values16_(keys16_.size()), keys32_(keys16_.size()),
          values32_(keys16_.size()) {
        if (ring) {
            store_ring(ctx, k.data(), n_kv, kv_stride, keys(), 0, nullptr, ring);
            store_ring(ctx, v.data(), n_kv, kv_stride, values(), 0, nullptr, ring);
        } else {
            store_rows(ctx, k.data(), n_kv, kv_stride, keys(), 0);
            store_rows(ctx, v.data(), n_kv, kv_stride, values(), 0);
        }
    }
    StoredKv(const StoredKv&) = delete;   // the tables point into its vectors
    StoredKv& operator=(const StoredKv&) = delete;

    CacheRows keys() const { return table(keys16_, keys32_); }
    CacheRows values() const { return table(values16_, values32_); }

private:
    CacheRows table(const std::vector<uint16_t>& f16, const std::vector<float>& f32) const {
        return type_ == KvType::F16 ? CacheRows(const_cast<uint16_t*>(f16.data()), type_) : CacheRows(f32.data());
    }

    KvType type_;
    std::vector<uint16_t> keys16_, values16_;
    std::vector<float> keys32_, values32_;
};

// Attention sinks (gpt-oss) on every CPU path a model reaches: decode rows (Kernels::attend) and
// prompt blocks (Kernels::attend_block, a GQA group's heads in one block, each row its own head's
// sink), causal, windowed, and over a ring; float32 and float16 caches; head sizes of a
// specialized block kernel (64) and the general one (40). Against float64 with the sinks (the
// attention tests' 2e-6), and apart from the same attention without them: one sink far above the
// scores (8: that head's rows weigh little), one far below (-8: nearly none), two in between.
TEST(OpsTest, AttentionSinksOnEveryCpuPath) {
    struct Case {
        size_t tokens, first, window, ring;
    };
    const size_t n_head = 4, n_head_kv = 2;
    const std::vector<float> sinks = {8.0f, -8.0f, 0.5f, 1.5f};
    for (size_t head_dim : {size_t{64}, size_t{40}}) {
        const size_t kv_stride = n_head_kv * head_dim;
        for (const Case c : {Case{1, 30, 0, 0}, Case{37, 0, 0, 0}, Case{30, 40, 16, 0}, Case{40, 60, 24, 64}}) {
            const size_t n_kv = c.first + c.tokens;
            AttentionShape shape{n_head, n_head_kv, head_dim, kv_stride, 1.0f / std::sqrt(float(head_dim))};
            shape.window = c.window, shape.ring = c.ring, shape.sinks = sinks.data();
            AttentionShape no_sinks = shape;
            no_sinks.sinks = nullptr;
            const auto q = gaussian(c.tokens * n_head * head_dim, 41, 2.0f);
            const auto k = gaussian(n_kv * kv_stride, 42), v = gaussian(n_kv * kv_stride, 43);
            for (KvType type : {KvType::F32, KvType::F16}) {
                const std::vector<float> k_held = held(k, type), v_held = held(v, type);
                for (CpuIsa isa : available_isas()) {
                    Context ctx({.cpu_isa = isa});
                    const StoredKv stored(ctx, k, v, n_kv, kv_stride, type, c.ring);
                    const CacheRows keys = stored.keys(), values = stored.values();
                    for (AttentionRows rows : {AttentionRows::Prompt, AttentionRows::Decode}) {
                        const std::string what = std::string(isa_name(isa)) + " " + std::string(kv_type_name(type)) +
                                                 (rows == AttentionRows::Prompt ? " prompt" : " decode") + " rows, head_dim " +
                                                 std::to_string(head_dim) + ", " + std::to_string(c.tokens) + " tokens after " +
                                                 std::to_string(c.first) + ", window " + std::to_string(c.window) + ", ring " +
                                                 std::to_string(c.ring);
                        std::vector<float> got(q.size(), NAN), without(q.size(), NAN);
                        attention(ctx, q.data(), keys, values, c.tokens, c.first, shape, got.data(), rows);
                        attention(ctx, q.data(), keys, values, c.tokens, c.first, no_sinks, without.data(), rows);
                        double apart = 0;
                        for (size_t t = 0; t < c.tokens; ++t) {
                            const size_t n_seen = c.first + t + 1, from = c.window && n_seen > c.window ? n_seen - c.window : 0;
                            for (size_t h = 0; h < n_head; ++h) {
                                const size_t off = (h / (n_head / n_head_kv)) * head_dim, at = (t * n_head + h) * head_dim;
                                const auto want = attention_f64(q.data() + at, k_held.data() + off, v_held.data() + off, kv_stride,
                                                                from, n_seen, head_dim, shape.scale, sinks[h]);
                                for (size_t j = 0; j < head_dim; ++j) {
                                    ASSERT_NEAR(got[at + j], want[j], 2e-6) << what << ": token " << t << " head " << h;
                                    apart = std::max(apart, double(std::fabs(got[at + j] - without[at + j])));
                                }
                            }
                        }
                        EXPECT_GT(apart, 1e-2) << what << ": the sinks changed nothing";
                    }
                }
            }
        }
    }
}

// The prompt kernel alone: a block of query rows with ranges of keys of their own (some past the
// first tiles, some inside one tile, one key alone, n_rows below the block's size), float32 and
// float16 tables, every head size path (the 64/128/256 instances and the general one).
TEST(OpsTest, AttendBlockKernelAgainstFloat64) {
    for (CpuIsa isa : available_isas()) {
        const cpu::Kernels& kern = cpu::kernels(isa);
        for (size_t head_dim : {size_t{64}, size_t{128}, size_t{256}, size_t{40}}) {
            const size_t kv_stride = 2 * head_dim + 8, n_keys = 150;
            const auto k = gaussian(n_keys * kv_stride, 21), v = gaussian(n_keys * kv_stride, 22);
            std::vector<uint16_t> k16(k.size()), v16(v.size());
            std::vector<float> k_rounded(k.size()), v_rounded(v.size());
            for (size_t i = 0; i < k.size(); ++i) {
                k16[i] = fp32_to_fp16(k[i]), v16[i] = fp32_to_fp16(v[i]);
                k_rounded[i] = fp16_to_fp32(k16[i]), v_rounded[i] = fp16_to_fp32(v16[i]);
            }
            for (size_t n_rows : {kern.attention_block_rows, kern.attention_block_rows - 1, size_t{1}}) {
                const auto q = gaussian(n_rows * head_dim, 23, 2.0f);
                std::vector<size_t> first(n_rows), end(n_rows);
                std::mt19937 rng(24);
                for (size_t r = 0; r < n_rows; ++r) {
                    first[r] = rng() % 120;
                    end[r] = first[r] + 1 + rng() % (n_keys - first[r]);
                }
                first[0] = 0, end[0] = n_keys;            // every tile
                if (n_rows > 2) first[1] = 97, end[1] = 98;   // one key, in the third tile
                std::vector<float> out(n_rows * head_dim, NAN);
                std::vector<const float*> qs(n_rows);
                std::vector<float*> outs(n_rows);
                for (size_t r = 0; r < n_rows; ++r) qs[r] = q.data() + r * head_dim, outs[r] = out.data() + r * head_dim;
                std::vector<std::byte> scratch(kern.attend_block_scratch_bytes(head_dim));
                const float scale = 1.0f / std::sqrt(float(head_dim));
                for (KvType type : {KvType::F32, KvType::F16}) {
                    const bool f16 = type == KvType::F16;
                    const cpu::AttentionBlock block{n_rows, qs.data(), outs.data(), first.data(), end.data(),
                                                    f16 ? static_cast<const void*>(k16.data()) : k.data(),
                                                    f16 ? static_cast<const void*>(v16.data()) : v.data(),
                                                    type, kv_stride, head_dim, scale, 30};
                    kern.attend_block(block, scratch.data());
                    // Each row alone in a block: the same bits (a row's lane never mixes with the others).
                    std::vector<float> alone(head_dim);
                    for (size_t r = 0; r < n_rows; ++r) {
                        float* alone_out = alone.data();
                        cpu::AttentionBlock one = block;
                        one.n_rows = 1, one.q = &qs[r], one.out = &alone_out, one.first = &first[r], one.end = &end[r];
                        kern.attend_block(one, scratch.data());
                        ASSERT_TRUE(std::equal(alone.begin(), alone.end(), out.begin() + r * head_dim))
                            << isa_name(isa) << " " << kv_type_name(type) << " head_dim " << head_dim << " row " << r;
                    }
                    for (size_t r = 0; r < n_rows; ++r) {
                        const auto want = attention_f64(q.data() + r * head_dim, (f16 ? k_rounded : k).data(),
                                                        (f16 ? v_rounded : v).data(), kv_stride, first[r], end[r], head_dim, scale);
                        for (size_t j = 0; j < head_dim; ++j)
                            ASSERT_NEAR(out[r * head_dim + j], want[j], 2e-6)
                                << isa_name(isa) << " " << kv_type_name(type) << " head_dim " << head_dim << " rows "
                                << n_rows << " row " << r << " [" << first[r] << ", " << end[r] << ")";
                    }
                }
            }
        }
    }
}

// Prompts through attention(): in blocks of query rows (a KV head's group of heads and several
// tokens together), against float64 (the attention tests' 2e-6), against the same tokens one at a
// time (the decode step's path; each within 2e-6 of float64, so within 4e-6 of each other), and
// against the same prompt cut into calls (bitwise). Group sizes 1, 2, 3, 4, 8; head sizes 64,
// 128, 256 and 40; a cache of both types; prompts from position 0 and continuing a cache; sliding
// windows; a ring layer (rows p % ring and p % ring + ring) wide enough for whole blocks, and one
// narrower (narrower blocks); sizes over the 48-key tiles' and the blocks' edges.
TEST(OpsTest, PromptAttentionInBlocksMatchesRowsAndFloat64) {
    struct Shape {
        size_t n_head_kv, group, head_dim;
    };
    struct Case {
        size_t tokens, first, window, ring;
    };
    const Shape shapes[] = {{2, 1, 64}, {2, 2, 64}, {3, 3, 64}, {2, 4, 64}, {1, 8, 64},
                            {2, 3, 128}, {1, 4, 256}, {2, 2, 40}};
    const Case cases[] = {{37, 0, 0, 0}, {70, 30, 0, 0}, {6, 91, 0, 0}, {50, 40, 20, 0}, {40, 60, 24, 64}, {20, 60, 24, 48}};
    for (const Shape sh : shapes) {
        const size_t n_head = sh.n_head_kv * sh.group, kv_stride = sh.n_head_kv * sh.head_dim;
        for (const Case c : cases) {
            const size_t n_kv = c.first + c.tokens;
            AttentionShape shape{n_head, sh.n_head_kv, sh.head_dim, kv_stride, 1.0f / std::sqrt(float(sh.head_dim))};
            shape.window = c.window, shape.ring = c.ring;
            const auto q = gaussian(c.tokens * n_head * sh.head_dim, 31, 2.0f);
            const auto k = gaussian(n_kv * kv_stride, 32), v = gaussian(n_kv * kv_stride, 33);
            for (KvType type : {KvType::F32, KvType::F16}) {
                const std::vector<float> k_held = held(k, type), v_held = held(v, type);
                std::vector<std::vector<float>> want(c.tokens * n_head);
                for (size_t t = 0; t < c.tokens; ++t) {
                    const size_t n_seen = c.first + t + 1, from = c.window && n_seen > c.window ? n_seen - c.window : 0;
                    for (size_t h = 0; h < n_head; ++h) {
                        const size_t off = (h / sh.group) * sh.head_dim;
                        const auto o = attention_f64(q.data() + (t * n_head + h) * sh.head_dim, k_held.data() + off,
                                                     v_held.data() + off, kv_stride, from, n_seen, sh.head_dim, shape.scale);
                        want[t * n_head + h].assign(o.begin(), o.end());
                    }
                }
                for (CpuIsa isa : available_isas()) {
                    Context ctx({.cpu_isa = isa});
                    const StoredKv stored(ctx, k, v, n_kv, kv_stride, type, c.ring);
                    const CacheRows keys = stored.keys(), values = stored.values();
                    std::vector<float> got(q.size(), NAN), rows(q.size(), NAN), chunked(q.size(), NAN);
                    attention(ctx, q.data(), keys, values, c.tokens, c.first, shape, got.data());
                    for (size_t t = 0; t < c.tokens; ++t) {
                        const size_t at = t * n_head * sh.head_dim;
                        attention(ctx, q.data() + at, keys, values, 1, c.first + t, shape, rows.data() + at);
                    }
                    // The same prompt cut into calls of 1, 5, 17, 1, 5, 17, ... tokens (as a server
                    // pass may cut it): the same bits, every row (a lone prompt row included).
                    for (size_t t = 0, part = 0; t < c.tokens; ++part) {
                        const size_t n = std::min(c.tokens - t, std::array<size_t, 3>{1, 5, 17}[part % 3]);
                        const size_t at = t * n_head * sh.head_dim;
                        attention(ctx, q.data() + at, keys, values, n, c.first + t, shape, chunked.data() + at,
                                  AttentionRows::Prompt);
                        t += n;
                    }
                    EXPECT_EQ(chunked, got) << isa_name(isa) << " " << kv_type_name(type) << " group " << sh.group
                                            << " head_dim " << sh.head_dim << ", " << c.tokens << " tokens after "
                                            << c.first << ", window " << c.window << ", ring " << c.ring;
                    for (size_t t = 0; t < c.tokens; ++t)
                        for (size_t h = 0; h < n_head; ++h)
                            for (size_t j = 0; j < sh.head_dim; ++j) {
                                const size_t i = (t * n_head + h) * sh.head_dim + j;
                                ASSERT_NEAR(got[i], want[t * n_head + h][j], 2e-6)
                                    << isa_name(isa) << " " << kv_type_name(type) << " group " << sh.group << " head_dim "
                                    << sh.head_dim << ", " << c.tokens << " tokens after " << c.first << ", window "
                                    << c.window << ", ring " << c.ring << ": token " << t << " head " << h;
                                ASSERT_NEAR(got[i], rows[i], 4e-6) << "against rows at a time: " << isa_name(isa) << " "
                                                                   << kv_type_name(type) << " group " << sh.group << " token " << t;
                            }
                }
            }
        }
    }
}

TEST(OpsTest, ActivationsAndAdds) {
    const size_t n = 20000 + 5;   // over one parallel chunk, with a tail
    auto gate = gaussian(n, 8, 4.0f), up = gaussian(n, 9);
    gate[0] = -100.0f;
    gate[1] = 100.0f;
    for (CpuIsa isa : available_isas()) {
        Context ctx({.cpu_isa = isa});
        std::vector<float> out(n);
        swiglu(ctx, gate.data(), up.data(), n, out.data());
        for (size_t i = 0; i < n; ++i) {
            const double g = gate[i];
            ASSERT_NEAR(out[i], g / (1 + std::exp(-g)) * up[i], 2e-6 * (1 + std::fabs(g * up[i]))) << isa_name(isa) << " " << i;
        }
        auto x = gate;
        gelu(ctx, x.data(), n);
        for (size_t i = 0; i < n; ++i) {
            const double g = gate[i];
            const double expected = 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
            ASSERT_NEAR(x[i], expected, 2e-6 * (1 + std::fabs(g))) << isa_name(isa) << " " << i;
        }
    }
    Context ctx;
    std::vector<float> a = {1, 2, 3, 4, 5, 6};
    const std::vector<float> bias = {10, 20, 30};
    add_bias(ctx, a.data(), bias.data(), 2, 3);
    EXPECT_EQ(a, (std::vector<float>{11, 22, 33, 14, 25, 36}));
    add(ctx, a.data(), bias.data(), 3);
    EXPECT_EQ(a, (std::vector<float>{21, 42, 63, 14, 25, 36}));
}

// gpt-oss's activation against its formula in double: the gate clamped above at 7 only, up at
// both -7 and 7 (values placed on each side of the clamps and on them).
TEST(OpsTest, SwigluOaiIsTheClampedFormula) {
    const size_t n = 20000 + 5;
    auto gate = gaussian(n, 12, 6.0f), up = gaussian(n, 13, 6.0f);
    const float edges[] = {-100.0f, -7.0f, -6.99f, 0.0f, 6.99f, 7.0f, 7.01f, 100.0f};
    for (size_t i = 0; i < 8; ++i)
        for (size_t j = 0; j < 8; ++j) gate[i * 8 + j] = edges[i], up[i * 8 + j] = edges[j];
    Context ctx;
    std::vector<float> out(n);
    swiglu_oai(ctx, gate.data(), up.data(), n, out.data());
    size_t clamped_gate = 0, clamped_up = 0;
    for (size_t i = 0; i < n; ++i) {
        const double g = std::min(double(gate[i]), 7.0), u = std::clamp(double(up[i]), -7.0, 7.0);
        const double want = g / (1 + std::exp(-1.702 * g)) * (u + 1);
        ASSERT_NEAR(out[i], want, 2e-6 * (1 + std::fabs(want))) << i << ": gate " << gate[i] << ", up " << up[i];
        clamped_gate += gate[i] > 7, clamped_up += std::fabs(up[i]) > 7;
    }
    EXPECT_GT(clamped_gate, 100u);
    EXPECT_GT(clamped_up, 100u);
    swiglu_oai(ctx, gate.data(), up.data(), n, gate.data());   // in place
    EXPECT_EQ(gate, out);
}

// top_k on the CPU against a full sort by (value descending, index ascending), and its bounds.
TEST(OpsTest, TopKIsTheSortedPrefix) {
    Context ctx;
    auto x = gaussian(3000, 11);
    for (size_t i = 0; i < x.size(); i += 50) x[i] = 1.25f;   // ties
    std::vector<int32_t> order(x.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    for (size_t k : {size_t{1}, size_t{40}, max_top_k}) {
        std::vector<int32_t> ids(k);
        std::vector<float> values(k);
        top_k(ctx, x.data(), x.size(), k, ids.data(), values.data());
        for (size_t r = 0; r < k; ++r) {
            ASSERT_EQ(ids[r], order[r]) << k << " " << r;
            ASSERT_EQ(values[r], x[order[r]]);
        }
    }
    std::vector<int32_t> ids(max_top_k + 1);
    std::vector<float> values(max_top_k + 1);
    EXPECT_THROW(top_k(ctx, x.data(), x.size(), 0, ids.data(), values.data()), std::invalid_argument);
    EXPECT_THROW(top_k(ctx, x.data(), x.size(), max_top_k + 1, ids.data(), values.data()), std::invalid_argument);
    EXPECT_THROW(top_k(ctx, x.data(), 10, 11, ids.data(), values.data()), std::invalid_argument);
}

// The router's weights against their formula (softmax over all experts, or over the chosen), and
// each chosen expert's product against the product with its own rows, ids out of range refused.
TEST(OpsTest, RoutedExperts) {
    Context ctx;
    const size_t n_experts = 6, k = 3, n = 5;
    const std::vector<float> router = {0.5f, -1.0f, 2.0f, 1.5f, 0.0f, 2.0f};
    std::vector<int32_t> chosen(k);
    std::vector<float> chosen_logits(k);
    top_k(ctx, router.data(), n_experts, k, chosen.data(), chosen_logits.data());
    ASSERT_EQ(chosen, (std::vector<int32_t>{2, 5, 3}));
    const auto outputs = gaussian(k * n, 21);
    double all = 0;
    for (float r : router) all += std::exp(double(r) - 2.0);
    const double chosen_sum = 2 + std::exp(-0.5);
    for (bool renormalize : {false, true}) {
        std::vector<float> y(n, 1.0f);
        add_routed(ctx, y.data(), outputs.data(), n, router.data(), n_experts, chosen_logits.data(), k, renormalize);
        const double total = renormalize ? chosen_sum : all;
        for (size_t i = 0; i < n; ++i) {
            const double want = 1 + (outputs[i] + outputs[n + i] + std::exp(-0.5) * outputs[2 * n + i]) / total;
            EXPECT_NEAR(y[i], want, 1e-6) << renormalize << " " << i;
        }
    }

    const size_t rows = 4, cols = 8;
    const auto weights = gaussian(n_experts * rows * cols, 22), x = gaussian(2 * cols, 23);
    const ExpertMatrices experts{{GGMLType::F32, n_experts * rows, cols, reinterpret_cast<const std::byte*>(weights.data())},
                                 n_experts};
    const std::vector<int32_t> ids = {4, 1};
    std::vector<float> y(2 * rows);
    matmul_experts(ctx, experts, ids.data(), 2, x.data(), cols, y.data(), Activations::Float32);
    for (size_t j = 0; j < 2; ++j)
        for (size_t r = 0; r < rows; ++r) {
            double want = 0;
            for (size_t c = 0; c < cols; ++c) want += double(weights[(ids[j] * rows + r) * cols + c]) * x[j * cols + c];
            EXPECT_NEAR(y[j * rows + r], want, 1e-5) << j << " " << r;
        }
    const std::vector<int32_t> bad = {6};
    EXPECT_THROW(matmul_experts(ctx, experts, bad.data(), 1, x.data(), 0, y.data(), Activations::Float32), std::out_of_range);
}

// Exact on every instruction set (a double holds every float), with a tail shorter than a vector,
// and through widen_to_double, the one the models call.
TEST(OpsTest, WidenToDoubleIsExact) {
    const size_t n = 49152 + 13;
    auto x = gaussian(n, 10, 30.0f);
    x[0] = -0.0f, x[1] = std::numeric_limits<float>::denorm_min(), x[2] = std::numeric_limits<float>::max();
    x[3] = -std::numeric_limits<float>::infinity(), x[4] = std::numeric_limits<float>::quiet_NaN();
    const auto check = [&](const std::vector<double>& out, std::string_view name) {
        for (size_t i = 0; i < n; ++i) {
            if (std::isnan(x[i])) ASSERT_TRUE(std::isnan(out[i])) << name << " " << i;
            else ASSERT_EQ(out[i], static_cast<double>(x[i])) << name << " " << i;
        }
        EXPECT_TRUE(std::signbit(out[0])) << name;
    };
    for (CpuIsa isa : available_isas()) {
        std::vector<double> out(n);
        cpu::kernels(isa).widen(x.data(), n, out.data());
        check(out, isa_name(isa));
    }
    std::vector<double> out(n);
    widen_to_double(x.data(), n, out.data());
    check(out, "widen_to_double");
}

}  // namespace
}  // namespace twinfer::compute
