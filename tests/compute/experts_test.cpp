// A mixture-of-experts layer grouped by expert (compute::add_experts_grouped, a prompt's path)
// against the same layer one token after another (add_experts_one_by_one, the decode step's), on
// the CPU and on CUDA; and the grouping itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/vector_error.hpp"
#include "compute/experts.hpp"
#include "compute/memory.hpp"
#include "format/quant.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer::compute {
namespace {

// The CPU's grouping: its threshold of a tiled product (compute::min_tiled_tokens).
const size_t group_rows = expert_group_rows(Device::CPU);

std::vector<float> gaussian(size_t n, std::mt19937& rng, float sigma = 1.0f) {
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

using test::l2_relative_error;

// n_experts experts of `type` (gate and up [rows, cols], down [cols, rows]), in host memory; gate
// and up gate_up_scale times as large as unit outputs take (gpt-oss's activation clamps at 7).
struct RandomExperts {
    size_t n_experts, rows, cols;
    std::vector<std::byte> gate_bytes, up_bytes, down_bytes;

    RandomExperts(GGMLType type, size_t n_experts_, size_t rows_, size_t cols_, std::mt19937& rng, float gate_up_scale = 1.0f)
        : n_experts(n_experts_), rows(rows_), cols(cols_) {
        gate_bytes = quantized(type, n_experts * rows, cols, rng, gate_up_scale / std::sqrt(float(cols)));
        up_bytes = quantized(type, n_experts * rows, cols, rng, gate_up_scale / std::sqrt(float(cols)));
        down_bytes = quantized(type, n_experts * cols, rows, rng, 1.0f / std::sqrt(float(rows)));
    }
    static std::vector<std::byte> quantized(GGMLType type, size_t rows, size_t cols, std::mt19937& rng, float sigma) {
        std::vector<std::byte> bytes(rows * row_size_bytes(type, cols));
        const std::vector<float> values = gaussian(rows * cols, rng, sigma);
        if (type == GGMLType::MXFP4) return mxfp4_nearest(values);
        quantize(type, values, bytes);
        return bytes;
    }
    // twinfer has no MXFP4 quantizer (gguf-py's picks its exponent by a float32 log2): each block's
    // exponent from its largest value as gguf-py sets it, each value the nearest of the codes.
    static std::vector<std::byte> mxfp4_nearest(const std::vector<float>& values) {
        std::vector<std::byte> bytes(row_size_bytes(GGMLType::MXFP4, values.size()));
        for (size_t b = 0; b < values.size() / QK_MXFP4; ++b) {
            const float* v = values.data() + b * QK_MXFP4;
            float amax = 0;
            for (size_t j = 0; j < QK_MXFP4; ++j) amax = std::max(amax, std::fabs(v[j]));
            BlockMXFP4 block{};
            block.e = amax > 0 ? uint8_t(std::ilogb(amax) - 2 + 127) : 0;
            const float d = e8m0_to_fp32_half(block.e);
            for (size_t j = 0; j < QK_MXFP4; ++j) {
                uint8_t best = 0;
                for (uint8_t c = 1; c < 16; ++c)
                    if (std::fabs(d * kvalues_mxfp4[c] - v[j]) < std::fabs(d * kvalues_mxfp4[best] - v[j])) best = c;
                block.qs[j % 16] |= uint8_t(best << (j < 16 ? 0 : 4));
            }
            std::memcpy(bytes.data() + b * sizeof(BlockMXFP4), &block, sizeof block);
        }
        return bytes;
    }
};

// A router that every token sends to expert 0 and none to the last; the others at random.
std::vector<float> router_logits(size_t n_tokens, size_t n_experts, std::mt19937& rng) {
    std::vector<float> logits = gaussian(n_tokens * n_experts, rng);
    for (size_t t = 0; t < n_tokens; ++t) logits[t * n_experts] = 8.0f, logits[t * n_experts + n_experts - 1] = -8.0f;
    return logits;
}

// Device memory for the tests' arrays, kept alive by the object.
class DeviceArrays {
public:
    explicit DeviceArrays(Context& ctx) : ctx_(ctx) {}
    template <class T> T* copy(const std::vector<T>& host) {
        T* p = static_cast<T*>(allocate(host.size() * sizeof(T)));
        upload(ctx_, p, host.data(), host.size() * sizeof(T));
        return p;
    }
    void* allocate(size_t bytes) { return buffers_.emplace_back(ctx_.device(), std::max<size_t>(bytes, 1)).data(); }
    template <class T> std::vector<T> read(const T* device, size_t n) {
        std::vector<T> host(n);
        download(ctx_, host.data(), device, n * sizeof(T));
        return host;
    }

private:
    Context& ctx_;
    std::vector<Buffer> buffers_;
};

// gpt-oss's experts' biases ([n_experts, rows] for gate and up, [n_experts, cols] for down), in
// host memory.
struct ExpertBiases {
    std::vector<float> gate, up, down;
};

// One layer on one context: the experts (and their biases) placed where its kernels read them,
// y = y0 + layer(x) either way.
class ExpertsOn {
public:
    ExpertsOn(Context& ctx, GGMLType type, const RandomExperts& e, size_t k, bool renormalize,
              const ExpertBiases* biases = nullptr, ExpertActivation activation = ExpertActivation::SwiGLU)
        : ctx_(ctx), arrays_(ctx),
          gate_{place_weights(ctx, {type, e.n_experts * e.rows, e.cols, e.gate_bytes.data()}, weights_), e.n_experts,
                biases ? arrays_.copy(biases->gate) : nullptr},
          up_{place_weights(ctx, {type, e.n_experts * e.rows, e.cols, e.up_bytes.data()}, weights_), e.n_experts,
              biases ? arrays_.copy(biases->up) : nullptr},
          down_{place_weights(ctx, {type, e.n_experts * e.cols, e.rows, e.down_bytes.data()}, weights_), e.n_experts,
                biases ? arrays_.copy(biases->down) : nullptr},
          layer_{gate_, up_, down_, k, renormalize, activation} {}

    std::vector<float> one_by_one(const std::vector<float>& x, const std::vector<float>& router, const std::vector<float>& y0,
                                  Activations activations) {
        const size_t n_tokens = y0.size() / gate_.all.cols;
        const OneByOneScratch s = one_by_one_scratch_in(arrays_.allocate(one_by_one_scratch_bytes(layer_)), layer_);
        float* y = arrays_.copy(y0);
        add_experts_one_by_one(ctx_, layer_, arrays_.copy(x), n_tokens, arrays_.copy(router), s, activations, y);
        return arrays_.read(y, y0.size());
    }
    // Groups of the context's device's expert_group_rows unless told.
    std::vector<float> grouped(const std::vector<float>& x, const std::vector<float>& router, const std::vector<float>& y0,
                               Activations activations, std::optional<size_t> group_rows = std::nullopt) {
        const size_t n_tokens = y0.size() / gate_.all.cols, rows = group_rows.value_or(expert_group_rows(ctx_.device()));
        last_scratch_ = grouped_scratch_in(arrays_.allocate(grouped_scratch_bytes(layer_, n_tokens, rows)), layer_, n_tokens, rows);
        float* y = arrays_.copy(y0);
        add_experts_grouped(ctx_, layer_, arrays_.copy(x), n_tokens, arrays_.copy(router), rows, last_scratch_, activations, y);
        return arrays_.read(y, y0.size());
    }
    // The last grouped call's choice and grouping, on the host.
    std::vector<int32_t> last_ids(size_t n_tokens) { return arrays_.read(last_scratch_.ids, n_tokens * layer_.k); }
    std::vector<int32_t> last_offsets() { return arrays_.read(last_scratch_.offsets, gate_.n_experts + 1); }
    std::vector<int32_t> last_row_token() {
        const std::vector<int32_t> offsets = last_offsets();
        return arrays_.read(last_scratch_.row_token, size_t(offsets.back()));
    }
    std::vector<int32_t> last_pair_row(size_t n_tokens) { return arrays_.read(last_scratch_.pair_row, n_tokens * layer_.k); }

private:
    Context& ctx_;
    DeviceArrays arrays_;
    std::vector<Buffer> weights_;
    ExpertMatrices gate_, up_, down_;
    ExpertLayer layer_;
    GroupedScratch last_scratch_{};
};

ContextOptions options_for(Device device) {
    ContextOptions options;
    options.device = device;
    options.n_threads = 2;
    return options;
}

// Expert 0 chosen by every token, the last by none, groups of one token padded; float weights of
// a ragged width (24) and quantized ones; prompts of a few tokens to a few dozen. Float
// activations: the two differ only in the order of each product's sums (matrix-vector against
// tiled; measured 1-2e-7). The CPU's default int8x2 activations (x = d (256 hi + lo), ~15 bits):
// with AVX-512 VNNI the tiled products quantize their tokens as the one-token products do, so
// again only the order of the sums differs (measured 2-5e-6); without it they run on float
// tiles, and the one-by-one products' rounding shows (measured 2-3e-5).
TEST(ExpertsTest, GroupedMatchesOneByOne) {
    Context cpu(options_for(Device::CPU));
    std::mt19937 rng(7);
    struct Case {
        GGMLType type;
        size_t n_experts, k, rows, cols;
    };
    for (auto [type, n_experts, k, rows, cols] : {Case{GGMLType::F32, 6, 2, 24, 32}, Case{GGMLType::Q8_0, 8, 3, 64, 96},
                                                  Case{GGMLType::Q4_0, 16, 4, 96, 64}, Case{GGMLType::MXFP4, 32, 4, 64, 96}}) {
        const RandomExperts experts(type, n_experts, rows, cols, rng);
        for (bool renormalize : {true, false}) {
            ExpertsOn on(cpu, type, experts, k, renormalize);
            for (size_t n_tokens : {4, 5, 9, 33}) {
                const auto x = gaussian(n_tokens * cols, rng), y0 = gaussian(n_tokens * cols, rng);
                const auto router = router_logits(n_tokens, n_experts, rng);
                const std::string what = std::string(type_name(type)) + " tokens " + std::to_string(n_tokens) +
                                         (renormalize ? " renormalized" : "");
                const auto grouped = on.grouped(x, router, y0, Activations::Float32);
                EXPECT_LT(l2_relative_error(grouped, on.one_by_one(x, router, y0, Activations::Float32)), 1e-6) << what;
                EXPECT_LT(l2_relative_error(on.grouped(x, router, y0, Activations::Int8x2),
                                         on.one_by_one(x, router, y0, Activations::Int8x2)), 1e-4) << what;
                const std::vector<int32_t> offsets = on.last_offsets();
                const size_t every_token = (n_tokens + group_rows - 1) / group_rows * group_rows;   // expert 0, padded
                EXPECT_EQ(offsets[1] - offsets[0], int32_t(every_token)) << what;
                EXPECT_EQ(offsets[n_experts], offsets[n_experts - 1]) << what;             // the last: none
            }
        }
    }
}

// gpt-oss's experts (CPU): the router's choice, each expert's gate, up and down biases, and the
// clamped SwiGLU (gate and up values reaching past 7), one by one and grouped, each against the
// layer's formula in double: y += sum_j w_j (W_down (act(W_gate x + b_gate, W_up x + b_up)) + b_down).
TEST(ExpertsTest, BiasesAndClampedSwigluAgainstTheFormula) {
    Context cpu(options_for(Device::CPU));
    std::mt19937 rng(17);
    const size_t n_experts = 6, k = 2, rows = 24, cols = 32, n_tokens = 9;
    const auto gate_w = gaussian(n_experts * rows * cols, rng, 8.0f / std::sqrt(float(cols)));
    const auto up_w = gaussian(n_experts * rows * cols, rng, 8.0f / std::sqrt(float(cols)));
    const auto down_w = gaussian(n_experts * cols * rows, rng, 1.0f / std::sqrt(float(rows)));
    const auto gate_b = gaussian(n_experts * rows, rng), up_b = gaussian(n_experts * rows, rng);
    const auto down_b = gaussian(n_experts * cols, rng);
    auto matrices = [&](const std::vector<float>& w, size_t r, size_t c, const std::vector<float>& b) {
        return ExpertMatrices{{GGMLType::F32, n_experts * r, c, reinterpret_cast<const std::byte*>(w.data())}, n_experts, b.data()};
    };
    const ExpertMatrices gate = matrices(gate_w, rows, cols, gate_b), up = matrices(up_w, rows, cols, up_b);
    const ExpertMatrices down = matrices(down_w, cols, rows, down_b);
    const ExpertLayer layer{gate, up, down, k, true, ExpertActivation::SwiGLUOai};
    const auto x = gaussian(n_tokens * cols, rng), y0 = gaussian(n_tokens * cols, rng);
    const auto router = router_logits(n_tokens, n_experts, rng);

    std::vector<double> want(y0.begin(), y0.end());
    size_t clamped = 0;
    for (size_t t = 0; t < n_tokens; ++t) {
        std::vector<size_t> order(n_experts);
        for (size_t e = 0; e < n_experts; ++e) order[e] = e;
        const float* logits = router.data() + t * n_experts;
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
        double total = 0;
        for (size_t j = 0; j < k; ++j) total += std::exp(double(logits[order[j]]) - logits[order[0]]);
        for (size_t j = 0; j < k; ++j) {
            const size_t e = order[j];
            const double weight = std::exp(double(logits[e]) - logits[order[0]]) / total;
            std::vector<double> act(rows);
            for (size_t r = 0; r < rows; ++r) {
                double g = gate_b[e * rows + r], u = up_b[e * rows + r];
                for (size_t i = 0; i < cols; ++i) {
                    g += double(gate_w[(e * rows + r) * cols + i]) * x[t * cols + i];
                    u += double(up_w[(e * rows + r) * cols + i]) * x[t * cols + i];
                }
                clamped += g > 7 || std::fabs(u) > 7;
                g = std::min(g, 7.0), u = std::clamp(u, -7.0, 7.0);
                act[r] = g / (1 + std::exp(-1.702 * g)) * (u + 1);
            }
            for (size_t i = 0; i < cols; ++i) {
                double d = down_b[e * cols + i];
                for (size_t r = 0; r < rows; ++r) d += double(down_w[(e * cols + i) * rows + r]) * act[r];
                want[t * cols + i] += weight * d;
            }
        }
    }
    EXPECT_GT(clamped, 20u);

    std::vector<std::byte> one_scratch(one_by_one_scratch_bytes(layer));
    std::vector<float> y1 = y0;
    add_experts_one_by_one(cpu, layer, x.data(), n_tokens, router.data(), one_by_one_scratch_in(one_scratch.data(), layer),
                           Activations::Float32, y1.data());
    std::vector<std::byte> grouped_scratch(grouped_scratch_bytes(layer, n_tokens, group_rows));
    std::vector<float> y2 = y0;
    add_experts_grouped(cpu, layer, x.data(), n_tokens, router.data(), group_rows,
                        grouped_scratch_in(grouped_scratch.data(), layer, n_tokens, group_rows), Activations::Float32, y2.data());
    const std::vector<float> want_f(want.begin(), want.end());
    EXPECT_LT(l2_relative_error(y1, want_f), 1e-6) << "one by one";
    EXPECT_LT(l2_relative_error(y2, want_f), 1e-6) << "grouped";
}

// A token's row does not depend on the other tokens (a server's Tiled rows beside others, as a
// prompt computes them): its experts' groups have other members and other sizes, the bits stay.
// 72 tokens: on a GPU some groups span more than one row tile.
void check_grouped_rows_do_not_depend_on_other_tokens(Context& ctx, GGMLType type, Activations activations) {
    std::mt19937 rng(11);
    const size_t n_experts = 8, k = 2, rows = 64, cols = 64, n_tokens = 72;
    const RandomExperts experts(type, n_experts, rows, cols, rng);
    ExpertsOn on(ctx, type, experts, k, true);
    const auto x = gaussian(n_tokens * cols, rng), y0 = gaussian(n_tokens * cols, rng);
    const auto router = gaussian(n_tokens * n_experts, rng);
    const auto all = on.grouped(x, router, y0, activations);
    for (auto [first, count] : {std::pair<size_t, size_t>{0, 4}, {3, 5}, {20, 4}, {30, 42}}) {
        auto part = [&](const std::vector<float>& v, size_t width) {
            return std::vector<float>(v.begin() + std::ptrdiff_t(first * width), v.begin() + std::ptrdiff_t((first + count) * width));
        };
        EXPECT_EQ(on.grouped(part(x, cols), part(router, n_experts), part(y0, cols), activations), part(all, cols))
            << type_name(type) << " tokens " << first << ".." << first + count;
    }
}

TEST(ExpertsTest, GroupedRowsDoNotDependOnOtherTokens) {
    Context cpu(options_for(Device::CPU));
    for (GGMLType type : {GGMLType::Q8_0, GGMLType::F32}) check_grouped_rows_do_not_depend_on_other_tokens(cpu, type, Activations::Int8x2);
}

// The grouping against its definition: each expert's rows in token order, padded with copies of
// its last to a multiple of group_rows, every pair's row pointing at its own token.
TEST(ExpertsTest, GroupByExpert) {
    Context cpu(options_for(Device::CPU));
    const size_t n_experts = 5, k = 2, n_tokens = 4;
    const std::vector<int32_t> ids = {0, 2, 2, 0, 0, 3, 0, 2};   // expert 1 and 4: none; 3: one token
    std::vector<int32_t> offsets(n_experts + 1), row_token(max_grouped_rows(n_tokens, k, n_experts, group_rows));
    std::vector<int32_t> pair_row(n_tokens * k);
    group_by_expert(cpu, ids.data(), n_tokens, k, n_experts, group_rows, offsets.data(), row_token.data(), pair_row.data());
    EXPECT_EQ(offsets, (std::vector<int32_t>{0, 4, 4, 8, 12, 12}));
    EXPECT_EQ(std::vector<int32_t>(row_token.begin(), row_token.begin() + 12),
              (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 3, 3, 2, 2, 2, 2}));
    EXPECT_EQ(pair_row, (std::vector<int32_t>{0, 4, 5, 1, 2, 8, 3, 6}));
    // Groups of 3: expert 0's four rows take two.
    group_by_expert(cpu, ids.data(), n_tokens, k, n_experts, 3, offsets.data(), row_token.data(), pair_row.data());
    EXPECT_EQ(offsets, (std::vector<int32_t>{0, 6, 6, 9, 12, 12}));
    EXPECT_EQ(std::vector<int32_t>(row_token.begin(), row_token.begin() + 12),
              (std::vector<int32_t>{0, 1, 2, 3, 3, 3, 0, 1, 3, 2, 2, 2}));
    EXPECT_EQ(pair_row, (std::vector<int32_t>{0, 6, 7, 1, 2, 9, 3, 8}));
    const std::vector<int32_t> bad = {0, 5};
    EXPECT_THROW(group_by_expert(cpu, bad.data(), 1, k, n_experts, 1, offsets.data(), row_token.data(), pair_row.data()),
                 std::out_of_range);
}

#ifdef TWINFER_WITH_CUDA
// The GPU's grouped layer against the CPU's: the same choice and grouping (bit for bit), and
// outputs within the float16 products' error (cuda_ops_test.cpp's 1e-3; the three chained float16
// products of these shapes simulated in numpy: 2.7e-4). Quantized and F16 experts
// take the tiled kernel that decodes them (tiles cut at a partial K step of 96 columns, a partial
// row tile of 96 rows, an expert of 200 rows over four token tiles, 128 experts), F32 ones matmul
// per expert (a ragged width of 24). Then the GPU's one-by-one path, the decode step's.
TEST(ExpertsCudaTest, GroupedMatchesCpu) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << cuda::describe_device();
    Context cpu(options_for(Device::CPU)), gpu(options_for(Device::CUDA));
    std::mt19937 rng(5);
    struct Case {
        GGMLType type;
        size_t n_experts, k, rows, cols;
    };
    for (auto [type, n_experts, k, rows, cols] : {Case{GGMLType::Q8_0, 8, 3, 64, 96}, Case{GGMLType::Q4_0, 128, 8, 96, 256},
                                                  Case{GGMLType::MXFP4, 32, 4, 96, 2880},
                                                  Case{GGMLType::F16, 16, 4, 64, 128}, Case{GGMLType::F32, 6, 2, 24, 32}}) {
        const RandomExperts experts(type, n_experts, rows, cols, rng);
        ExpertsOn on_cpu(cpu, type, experts, k, true), on_gpu(gpu, type, experts, k, true);
        for (size_t n_tokens : {4, 9, 200}) {
            const auto x = gaussian(n_tokens * cols, rng), y0 = gaussian(n_tokens * cols, rng);
            const auto router = router_logits(n_tokens, n_experts, rng);
            const std::string what = std::string(type_name(type)) + " tokens " + std::to_string(n_tokens);
            // The GPU's grouping on both, so that the two can be compared row for row.
            const auto want = on_cpu.grouped(x, router, y0, Activations::Float32, expert_group_rows(Device::CUDA));
            EXPECT_LT(l2_relative_error(on_gpu.grouped(x, router, y0, Activations::Int8), want), 1e-3) << what;
            EXPECT_EQ(on_gpu.last_ids(n_tokens), on_cpu.last_ids(n_tokens)) << what;
            EXPECT_EQ(on_gpu.last_offsets(), on_cpu.last_offsets()) << what;
            EXPECT_EQ(on_gpu.last_row_token(), on_cpu.last_row_token()) << what;
            EXPECT_EQ(on_gpu.last_pair_row(n_tokens), on_cpu.last_pair_row(n_tokens)) << what;
            EXPECT_LT(l2_relative_error(on_gpu.one_by_one(x, router, y0, Activations::Float32), want), 1e-3) << what;
        }
    }
}

// As ExpertsTest.GroupedRowsDoNotDependOnOtherTokens on the GPU: the tiled kernel that decodes
// quantized and F16 experts, cuBLAS for F32 ones (whole row tiles).
TEST(ExpertsCudaTest, GroupedRowsDoNotDependOnOtherTokens) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << cuda::describe_device();
    Context gpu(options_for(Device::CUDA));
    for (GGMLType type : {GGMLType::Q8_0, GGMLType::F16, GGMLType::F32})
        check_grouped_rows_do_not_depend_on_other_tokens(gpu, type, Activations::Int8);
}

// gpt-oss's experts on the GPU against the CPU's (whose own test holds them to the layer's formula
// in double): each expert's gate, up and down biases and the clamped SwiGLU, gate and up values
// reaching past the clamps; MXFP4 experts of gpt-oss's width (2880) among them. Grouped (the
// tiled kernel, then the grouped biases and activation) within the float16 products' 1e-3 as
// above; one by one (the decode step's: the products, then the biases and activation in one
// launch) with float activations within float32 rounding (1e-4), with int8 ones (quantized types)
// against the CPU's int8 products on the same codes (1e-3: the activation's output is quantized
// again on each side for down, where a code may round the other way).
TEST(ExpertsCudaTest, BiasesAndClampedSwigluMatchCpu) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << cuda::describe_device();
    Context cpu(options_for(Device::CPU)), gpu(options_for(Device::CUDA));
    std::mt19937 rng(23);
    struct Case {
        GGMLType type;
        size_t n_experts, k, rows, cols;
    };
    for (auto [type, n_experts, k, rows, cols] : {Case{GGMLType::MXFP4, 32, 4, 96, 2880}, Case{GGMLType::Q8_0, 8, 3, 64, 96},
                                                  Case{GGMLType::F16, 16, 4, 64, 128}, Case{GGMLType::F32, 6, 2, 24, 32}}) {
        const RandomExperts experts(type, n_experts, rows, cols, rng, 6.0f);
        const ExpertBiases biases{gaussian(n_experts * rows, rng, 2.0f), gaussian(n_experts * rows, rng, 2.0f),
                                  gaussian(n_experts * cols, rng, 0.5f)};
        ExpertsOn on_cpu(cpu, type, experts, k, true, &biases, ExpertActivation::SwiGLUOai);
        ExpertsOn on_gpu(gpu, type, experts, k, true, &biases, ExpertActivation::SwiGLUOai);
        ExpertsOn plain_cpu(cpu, type, experts, k, true);
        const bool quantized = type != GGMLType::F16 && type != GGMLType::F32;
        for (size_t n_tokens : {4, 9, 200}) {
            const auto x = gaussian(n_tokens * cols, rng), y0 = gaussian(n_tokens * cols, rng);
            const auto router = router_logits(n_tokens, n_experts, rng);
            const std::string what = std::string(type_name(type)) + " tokens " + std::to_string(n_tokens);
            const auto want = on_cpu.grouped(x, router, y0, Activations::Float32);
            EXPECT_GT(l2_relative_error(plain_cpu.grouped(x, router, y0, Activations::Float32), want), 1e-2)
                << what << ": the biases and the activation must weigh";
            EXPECT_LT(l2_relative_error(on_gpu.grouped(x, router, y0, Activations::Int8), want), 1e-3) << what << " grouped";
            EXPECT_LT(l2_relative_error(on_gpu.one_by_one(x, router, y0, Activations::Float32),
                                        on_cpu.one_by_one(x, router, y0, Activations::Float32)), 1e-4)
                << what << " one by one";
            if (quantized) {
                EXPECT_LT(l2_relative_error(on_gpu.one_by_one(x, router, y0, Activations::Int8),
                                            on_cpu.one_by_one(x, router, y0, Activations::Int8)), 1e-3)
                    << what << " one by one, int8";
            }
        }
    }
}
#endif

}  // namespace
}  // namespace twinfer::compute
