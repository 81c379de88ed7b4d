// Every weight type's matrix-vector and tiled products, on every ISA this CPU has, against
// dequantize() and a float64 dot product.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "compute/cpu/kernels.hpp"
#include "compute/matmul.hpp"
#include "format/quant.hpp"

namespace twinfer::compute {
namespace {

std::vector<CpuIsa> available_isas() {
    std::vector<CpuIsa> isas;
    for (CpuIsa isa : {CpuIsa::Generic, CpuIsa::AVX2, CpuIsa::AVX512})
        if (cpu_supports(isa)) isas.push_back(isa);
    return isas;
}

// Weights of `type`: quantize() of Gaussian values where twinfer can quantize the type; otherwise
// random bytes with the super-block scales overwritten by sane fp16 values (MXFP4: exponents of
// 2^-9 to 2^-4, weights up to 12 times that).
std::vector<std::byte> random_weights(GGMLType type, size_t rows, size_t cols, std::mt19937& rng) {
    std::vector<std::byte> bytes(rows * row_size_bytes(type, cols));
    if (can_quantize(type)) {
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> values(rows * cols);
        for (float& v : values) v = normal(rng);
        quantize(type, values, bytes);
        return bytes;
    }
    std::uniform_int_distribution<int> byte(0, 255);
    for (std::byte& b : bytes) b = std::byte(byte(rng));
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    std::uniform_int_distribution<int> exponent(128 - 9, 128 - 4);
    const size_t block_bytes = type_traits(type).type_size;
    for (size_t offset = 0; offset < bytes.size(); offset += block_bytes) {
        auto set_half = [&](size_t field) {
            const ggml_half h = fp32_to_fp16(scale(rng));
            std::memcpy(bytes.data() + offset + field, &h, 2);
        };
        switch (type) {
        case GGMLType::Q4_K: set_half(offsetof(BlockQ4_K, d)); set_half(offsetof(BlockQ4_K, dmin)); break;
        case GGMLType::Q5_K: set_half(offsetof(BlockQ5_K, d)); set_half(offsetof(BlockQ5_K, dmin)); break;
        case GGMLType::Q6_K: set_half(offsetof(BlockQ6_K, d)); break;
        case GGMLType::Q2_K: set_half(offsetof(BlockQ2_K, d)); set_half(offsetof(BlockQ2_K, dmin)); break;
        case GGMLType::Q3_K: set_half(offsetof(BlockQ3_K, d)); break;
        case GGMLType::MXFP4: bytes[offset + offsetof(BlockMXFP4, e)] = std::byte(exponent(rng)); break;
        default: ADD_FAILURE() << "no random-block recipe for " << type_name(type);
        }
    }
    return bytes;
}

struct Case {
    GGMLType type;
    size_t cols;
};

class MatmulTest : public ::testing::TestWithParam<Case> {};

// Reference: dequantize to double, dot in double. Error bound per output: float rounding of the
// accumulation (relative 1e-5 of Σ|w x|), plus for int8 activations the quantization of x, which
// moves each x_i by at most half a step (max|x| of its 32-block / 254).
TEST_P(MatmulTest, MatchesDequantizedDoubleProduct) {
    const auto [type, cols] = GetParam();
    const size_t rows = 37;
    std::mt19937 rng(1234 + static_cast<int>(type));
    const std::vector<std::byte> bytes = random_weights(type, rows, cols, rng);
    std::vector<double> w(rows * cols);
    dequantize(type, bytes, w);
    const WeightMatrix matrix{type, rows, cols, bytes.data()};

    for (size_t n_tokens : {size_t{1}, size_t{3}, size_t{5}, size_t{40}}) {
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> x(n_tokens * cols);
        for (float& v : x) v = normal(rng);

        std::vector<double> expected(n_tokens * rows), condition(n_tokens * rows), step_bound(n_tokens * rows);
        for (size_t t = 0; t < n_tokens; ++t) {
            for (size_t r = 0; r < rows; ++r) {
                double sum = 0, abs_sum = 0, step = 0;
                for (size_t c = 0; c < cols; ++c) {
                    const double wx = w[r * cols + c] * x[t * cols + c];
                    sum += wx;
                    abs_sum += std::fabs(wx);
                    if (cols % 32 == 0) {
                        float amax = 0;
                        for (size_t i = c / 32 * 32; i < c / 32 * 32 + 32; ++i) amax = std::max(amax, std::fabs(x[t * cols + i]));
                        step += std::fabs(w[r * cols + c]) * amax / 254.0;
                    }
                }
                expected[t * rows + r] = sum;
                condition[t * rows + r] = abs_sum;
                step_bound[t * rows + r] = step;
            }
        }

        for (CpuIsa isa : available_isas()) {
            for (Activations activations : {Activations::Float32, Activations::Int8, Activations::Int8x2}) {
                Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = isa});
                std::vector<float> y(n_tokens * rows, NAN);
                matmul(ctx, matrix, x.data(), n_tokens, y.data(), activations);
                // Many tokens go through the int8 tiled product where the table has one.
                const bool quantized = activations != Activations::Float32 && isa != CpuIsa::Generic &&
                                       cpu::has_q8_kernel(type) && (n_tokens < 4 || cpu::kernels(isa).gemm_q8);
                // int8x2's second digit makes its step 254 times finer than int8's.
                const double step_scale = !quantized ? 0.0 : activations == Activations::Int8 ? 1.0 : 1.0 / 254;
                double worst = 0;
                for (size_t i = 0; i < y.size(); ++i) {
                    const double bound = 1e-5 * condition[i] + 1.01 * step_scale * step_bound[i] + 1e-6;
                    ASSERT_LE(std::fabs(y[i] - expected[i]), bound)
                        << type_name(type) << " cols=" << cols << " tokens=" << n_tokens << " isa=" << isa_name(isa)
                        << " activations=" << activations_name(activations) << " quantized=" << quantized << " output " << i << ": "
                        << y[i] << " vs " << expected[i];
                    worst = std::max(worst, std::fabs(y[i] - expected[i]) / condition[i]);
                }
                if (n_tokens == 1)
                    std::printf("%-5s cols=%-4zu %-7s %-7s max |error| / sum|w x| = %.2e\n", std::string(type_name(type)).c_str(),
                                cols, std::string(isa_name(isa)).c_str(),
                                quantized ? std::string(activations_name(activations)).c_str() : "float", worst);
            }
        }
    }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
    return std::string(type_name(info.param.type)) + "_" + std::to_string(info.param.cols);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, MatmulTest,
    ::testing::Values(Case{GGMLType::F32, 512}, Case{GGMLType::F32, 172}, Case{GGMLType::F32, 13},
                      Case{GGMLType::F16, 512}, Case{GGMLType::F16, 172}, Case{GGMLType::BF16, 512},
                      Case{GGMLType::BF16, 172}, Case{GGMLType::Q4_0, 576}, Case{GGMLType::Q4_1, 576},
                      Case{GGMLType::Q5_0, 576}, Case{GGMLType::Q5_1, 576}, Case{GGMLType::Q8_0, 576},
                      Case{GGMLType::Q2_K, 512}, Case{GGMLType::Q3_K, 512}, Case{GGMLType::Q4_K, 512},
                      Case{GGMLType::Q5_K, 512}, Case{GGMLType::Q6_K, 512}, Case{GGMLType::MXFP4, 576},
                      Case{GGMLType::MXFP4, 2880}),
    case_name);

// matmul_rows: each row's outputs are the bits matmul gives that row alone (n_tokens = 1), for
// every weight type, activation scheme and ISA, at batch sizes around the kernels' groups of 4
// rows and their slices of cpu::matvec_max_rows (33 = one full slice and one row). The rows'
// scales differ by up to 10^6, so a quantization shared between rows, or a sum that mixed them,
// would show.
std::vector<float> rows_of_mixed_scales(size_t n_rows, size_t cols, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> exponent(-3.0f, 3.0f);
    std::vector<float> x(n_rows * cols);
    for (size_t t = 0; t < n_rows; ++t) {
        const float scale = std::pow(10.0f, exponent(rng));
        for (size_t c = 0; c < cols; ++c) x[t * cols + c] = scale * normal(rng);
    }
    return x;
}

::testing::AssertionResult same_bits(const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]))
            return ::testing::AssertionFailure() << "output " << i << ": " << a[i] << " vs " << b[i] << " alone";
    return ::testing::AssertionSuccess();
}

// The kernels' dequantization (get_rows, the float tiles) of the signed types, one scale times
// a value, is format/quant.cpp's bit for bit on every ISA; MXFP4 with its extreme exponents too
// (subnormal scales 2^-128 and 2^-127, and 2^127, whose larger codes overflow to infinity).
TEST(KernelDequantize, SignedTypesAreTheReferenceBitForBit) {
    std::mt19937 rng(99);
    const size_t rows = 8, cols = 512;
    for (GGMLType type : {GGMLType::Q8_0, GGMLType::MXFP4}) {
        std::vector<std::byte> bytes = random_weights(type, rows, cols, rng);
        if (type == GGMLType::MXFP4)
            for (size_t block = 0; block < 4; ++block) bytes[block * sizeof(BlockMXFP4)] = std::byte(std::array{0, 1, 2, 255}[block]);
        std::vector<float> want(rows * cols);
        dequantize(type, bytes, want);
        for (CpuIsa isa : available_isas()) {
            std::vector<float> got(rows * cols, NAN);
            cpu::kernels(isa).dequantize(type, bytes.data(), rows * cols, got.data());
            EXPECT_TRUE(same_bits(got.data(), want.data(), got.size())) << type_name(type) << " " << isa_name(isa);
        }
    }
}

class MatmulRowsTest : public ::testing::TestWithParam<Case> {};

TEST_P(MatmulRowsTest, EachRowIsTheOneTokenProductBitForBit) {
    const auto [type, cols] = GetParam();
    const size_t rows = 37;
    std::mt19937 rng(4321 + static_cast<int>(type));
    const std::vector<std::byte> bytes = random_weights(type, rows, cols, rng);
    const WeightMatrix w{type, rows, cols, bytes.data()};
    for (CpuIsa isa : available_isas()) {
        Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = isa});
        for (Activations activations : {Activations::Float32, Activations::Int8, Activations::Int8x2}) {
            for (size_t n_rows : {size_t{1}, size_t{2}, size_t{3}, size_t{5}, size_t{8}, size_t{16}, size_t{33}}) {
                const std::vector<float> x = rows_of_mixed_scales(n_rows, cols, rng);
                std::vector<float> together(n_rows * rows, NAN), alone(n_rows * rows, NAN);
                const MatmulOutput output{w, together.data()};
                matmul_rows(ctx, std::span(&output, 1), x.data(), n_rows, activations);
                for (size_t t = 0; t < n_rows; ++t) matmul(ctx, w, x.data() + t * cols, 1, alone.data() + t * rows, activations);
                for (size_t t = 0; t < n_rows; ++t)
                    EXPECT_TRUE(same_bits(together.data() + t * rows, alone.data() + t * rows, rows))
                        << type_name(type) << " cols=" << cols << " isa=" << isa_name(isa)
                        << " activations=" << activations_name(activations) << " rows=" << n_rows << " row " << t;
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, MatmulRowsTest,
    ::testing::Values(Case{GGMLType::F32, 512}, Case{GGMLType::F32, 172}, Case{GGMLType::F16, 512},
                      Case{GGMLType::BF16, 172}, Case{GGMLType::Q4_0, 576}, Case{GGMLType::Q4_1, 576},
                      Case{GGMLType::Q4_1, 1536}, Case{GGMLType::Q5_0, 576}, Case{GGMLType::Q5_1, 576},
                      Case{GGMLType::Q8_0, 576}, Case{GGMLType::Q2_K, 512}, Case{GGMLType::Q3_K, 512},
                      Case{GGMLType::Q4_K, 512}, Case{GGMLType::Q5_K, 768}, Case{GGMLType::Q6_K, 512},
                      Case{GGMLType::MXFP4, 576}),
    case_name);

// The int8 tiled product (prompts: matmul over n_tokens >= 4) against the matrix-vector kernels
// on the same rows (matmul_rows: the one-token products). Both quantize each token alone the same
// way and sum the same exact int32 block dots; only the float arithmetic after them differs (the
// order of the sums, the scales' products, and the tiled product's one conversion of a whole
// block's int32 sum, rounded where it passes 2^24), so each output agrees within a few float
// roundings per block: 4 n_blocks 2^-24 of Σ |w x|. Token counts around the groups of 16 and 64,
// row counts that are no multiple of the 4-row panels or of the 48-row chunks, accumulated
// outputs too.
class Int8TiledProductTest : public ::testing::TestWithParam<Case> {};

TEST_P(Int8TiledProductTest, MatchesTheMatrixVectorProducts) {
    const auto [type, cols] = GetParam();
    if (!cpu_supports(CpuIsa::AVX512) || !cpu::kernels(CpuIsa::AVX512).gemm_q8) GTEST_SKIP() << "no int8 tiled product here";
    std::mt19937 rng(777 + static_cast<int>(type));
    Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = CpuIsa::AVX512});
    const double tolerance = 4.0 * static_cast<double>(cols / 32) * std::ldexp(1.0, -24);
    double worst = 0;
    for (size_t rows : {size_t{7}, size_t{101}}) {
        const std::vector<std::byte> bytes = random_weights(type, rows, cols, rng);
        std::vector<double> w(rows * cols);
        dequantize(type, bytes, w);
        const WeightMatrix matrix{type, rows, cols, bytes.data()};
        for (size_t n_tokens : {size_t{4}, size_t{5}, size_t{16}, size_t{17}, size_t{63}, size_t{64}, size_t{65}, size_t{130}}) {
            const std::vector<float> x = rows_of_mixed_scales(n_tokens, cols, rng);
            std::vector<float> y0(n_tokens * rows);
            std::normal_distribution<float> normal(0.0f, 1.0f);
            for (float& v : y0) v = normal(rng);
            for (Activations activations : {Activations::Int8, Activations::Int8x2}) {
                std::vector<float> tiled(n_tokens * rows, NAN), one_token(n_tokens * rows, NAN), accumulated = y0;
                matmul(ctx, matrix, x.data(), n_tokens, tiled.data(), activations);
                const MatmulOutput one_token_output{matrix, one_token.data()}, accumulated_output{matrix, accumulated.data(), true};
                matmul_rows(ctx, std::span(&one_token_output, 1), x.data(), n_tokens, activations);
                matmul(ctx, std::span(&accumulated_output, 1), x.data(), n_tokens, activations);
                for (size_t t = 0; t < n_tokens; ++t) {
                    for (size_t r = 0; r < rows; ++r) {
                        double condition = 0;
                        for (size_t c = 0; c < cols; ++c) condition += std::fabs(w[r * cols + c] * x[t * cols + c]);
                        const size_t i = t * rows + r;
                        const double error = std::fabs(static_cast<double>(tiled[i]) - one_token[i]);
                        ASSERT_LE(error, tolerance * condition)
                            << type_name(type) << " rows=" << rows << " tokens=" << n_tokens
                            << " activations=" << activations_name(activations) << " token " << t << " row " << r;
                        EXPECT_EQ(accumulated[i], y0[i] + tiled[i]) << "accumulated, token " << t << " row " << r;
                        worst = std::max(worst, error / condition);
                    }
                }
            }
        }
    }
    std::printf("%-5s max |tiled - one-token| / sum|w x| = %.2e (bound %.2e)\n", std::string(type_name(type)).c_str(), worst, tolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Int8Types, Int8TiledProductTest,
    ::testing::Values(Case{GGMLType::Q4_0, 576}, Case{GGMLType::Q4_1, 576}, Case{GGMLType::Q5_0, 576},
                      Case{GGMLType::Q5_1, 576}, Case{GGMLType::Q8_0, 576}, Case{GGMLType::Q8_0, 32},
                      Case{GGMLType::Q4_K, 512}, Case{GGMLType::Q5_K, 768}, Case{GGMLType::Q6_K, 512},
                      Case{GGMLType::Q6_K, 2048}, Case{GGMLType::MXFP4, 576}, Case{GGMLType::MXFP4, 2880}),
    case_name);

// The forms the batched pass uses: several outputs sharing the rows, a residual accumulated, a
// norm applied on the way in; each row as the decode step computes it alone. 300 rows: several
// chunks a thread.
TEST(MatmulRowsTest, SharedInputsNormAndAccumulateMatchOneTokenCalls) {
    std::mt19937 rng(21);
    const size_t cols = 256;
    const GGMLType types[] = {GGMLType::Q4_1, GGMLType::F16, GGMLType::Q6_K};
    const size_t heights[] = {300, 7, 33};
    std::vector<std::vector<std::byte>> bytes;
    for (size_t i = 0; i < 3; ++i) bytes.push_back(random_weights(types[i], heights[i], cols, rng));
    std::vector<float> norm_weight(cols);
    std::normal_distribution<float> normal(1.0f, 0.2f);
    for (float& v : norm_weight) v = normal(rng);
    Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = std::nullopt});
    for (Activations activations : {Activations::Float32, Activations::Int8, Activations::Int8x2}) {
        const size_t n_rows = 11;
        const std::vector<float> x = rows_of_mixed_scales(n_rows, cols, rng);
        std::vector<std::vector<float>> together(3), alone(3);
        std::vector<MatmulOutput> outputs;
        for (size_t i = 0; i < 3; ++i) {
            together[i] = rows_of_mixed_scales(n_rows, heights[i], rng);   // accumulated onto
            alone[i] = together[i];
            outputs.push_back({{types[i], heights[i], cols, bytes[i].data()}, together[i].data(), /*accumulate=*/i != 1});
        }
        std::vector<float> normed_together(n_rows * cols), normed_alone(n_rows * cols);
        const RmsNorm norm{norm_weight.data(), 1e-5f, normed_together.data()};
        matmul_rows(ctx, outputs, x.data(), n_rows, activations, &norm);
        for (size_t t = 0; t < n_rows; ++t) {
            std::vector<MatmulOutput> at_row = outputs;
            for (size_t i = 0; i < 3; ++i) at_row[i].y = alone[i].data() + t * heights[i];
            const RmsNorm row_norm{norm_weight.data(), 1e-5f, normed_alone.data() + t * cols};
            matmul(ctx, at_row, x.data() + t * cols, 1, activations, &row_norm);
        }
        EXPECT_TRUE(same_bits(normed_together.data(), normed_alone.data(), normed_together.size()));
        for (size_t i = 0; i < 3; ++i)
            EXPECT_TRUE(same_bits(together[i].data(), alone[i].data(), together[i].size()))
                << type_name(types[i]) << " activations=" << activations_name(activations);
    }
}

// Matrices of different types and heights sharing one input give what each gives alone.
TEST(MatmulTest, SharedInputMatchesSeparateProducts) {
    std::mt19937 rng(11);
    const size_t cols = 256;
    const GGMLType types[] = {GGMLType::Q4_1, GGMLType::F16, GGMLType::Q6_K};
    const size_t heights[] = {40, 7, 33};
    std::vector<std::vector<std::byte>> bytes;
    for (size_t i = 0; i < 3; ++i) bytes.push_back(random_weights(types[i], heights[i], cols, rng));
    for (size_t n_tokens : {size_t{1}, size_t{9}}) {
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> x(n_tokens * cols);
        for (float& v : x) v = normal(rng);
        Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = std::nullopt});
        std::vector<std::vector<float>> together(3), alone(3);
        std::vector<MatmulOutput> outputs;
        for (size_t i = 0; i < 3; ++i) {
            together[i].resize(n_tokens * heights[i]);
            alone[i].resize(n_tokens * heights[i]);
            const WeightMatrix w{types[i], heights[i], cols, bytes[i].data()};
            outputs.push_back({w, together[i].data()});
            matmul(ctx, w, x.data(), n_tokens, alone[i].data(), Activations::Int8);
        }
        matmul(ctx, outputs, x.data(), n_tokens, Activations::Int8);
        for (size_t i = 0; i < 3; ++i) EXPECT_EQ(together[i], alone[i]) << type_name(types[i]) << " tokens=" << n_tokens;
    }
}

// accumulate = true adds the product to y (a residual connection): y0 + W x, for one token
// (matrix-vector) and many (tiled), float and int8 activations.
TEST(MatmulTest, AccumulateAddsTheProduct) {
    std::mt19937 rng(12);
    const size_t rows = 70, cols = 256;
    const std::vector<std::byte> bytes = random_weights(GGMLType::Q4_0, rows, cols, rng);
    const WeightMatrix w{GGMLType::Q4_0, rows, cols, bytes.data()};
    Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = std::nullopt});
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t n_tokens : {size_t{1}, size_t{9}})
        for (Activations activations : {Activations::Float32, Activations::Int8, Activations::Int8x2}) {
            std::vector<float> x(n_tokens * cols), y0(n_tokens * rows), product(n_tokens * rows);
            for (float& v : x) v = normal(rng);
            for (float& v : y0) v = normal(rng);
            matmul(ctx, w, x.data(), n_tokens, product.data(), activations);
            std::vector<float> y = y0;
            const MatmulOutput output{w, y.data(), /*accumulate=*/true};
            matmul(ctx, std::span(&output, 1), x.data(), n_tokens, activations);
            for (size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(y[i], y0[i] + product[i]) << "tokens=" << n_tokens << " i=" << i;
        }
}

// matmul_glu = silu(gate x) * (up x), computed here from two plain products.
TEST(MatmulTest, SwigluProductMatchesItsDefinition) {
    std::mt19937 rng(13);
    const size_t rows = 48, cols = 128;
    const std::vector<std::byte> gate_bytes = random_weights(GGMLType::Q8_0, rows, cols, rng);
    const std::vector<std::byte> up_bytes = random_weights(GGMLType::Q8_0, rows, cols, rng);
    const WeightMatrix gate{GGMLType::Q8_0, rows, cols, gate_bytes.data()}, up{GGMLType::Q8_0, rows, cols, up_bytes.data()};
    Context ctx({.device = Device::CPU, .n_threads = 2, .cpu_isa = std::nullopt});
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t n_tokens : {size_t{1}, size_t{5}}) {
        std::vector<float> x(n_tokens * cols), g(n_tokens * rows), u(n_tokens * rows), out(n_tokens * rows), scratch(n_tokens * rows);
        for (float& v : x) v = normal(rng);
        matmul(ctx, gate, x.data(), n_tokens, g.data(), Activations::Int8);
        matmul(ctx, up, x.data(), n_tokens, u.data(), Activations::Int8);
        matmul_glu(ctx, gate, up, x.data(), n_tokens, out.data(), scratch.data(), Activations::Int8);
        for (size_t i = 0; i < out.size(); ++i)
            EXPECT_NEAR(out[i], g[i] / (1.0f + std::exp(-g[i])) * u[i], 1e-5f * (1.0f + std::abs(out[i]))) << i;
    }
    const WeightMatrix shorter{GGMLType::Q8_0, rows - 1, cols, up_bytes.data()};
    std::vector<float> x(cols), out(rows), scratch(rows);
    EXPECT_THROW(matmul_glu(ctx, gate, shorter, x.data(), 1, out.data(), scratch.data(), Activations::Int8),
                 std::invalid_argument);
}

TEST(MatmulTest, GetRowsDequantizesTheRequestedRows) {
    std::mt19937 rng(7);
    const size_t rows = 10, cols = 64;
    const std::vector<std::byte> bytes = random_weights(GGMLType::Q8_0, rows, cols, rng);
    std::vector<float> all(rows * cols);
    dequantize(GGMLType::Q8_0, bytes, all);
    Context ctx;
    const int32_t ids[] = {3, 0, 9, 3};
    std::vector<float> out(4 * cols);
    get_rows(ctx, {GGMLType::Q8_0, rows, cols, bytes.data()}, ids, 4, out.data());
    for (size_t i = 0; i < 4; ++i)
        for (size_t c = 0; c < cols; ++c) EXPECT_EQ(out[i * cols + c], all[ids[i] * cols + c]);
    const int32_t bad[] = {10};
    EXPECT_THROW(get_rows(ctx, {GGMLType::Q8_0, rows, cols, bytes.data()}, bad, 1, out.data()), std::out_of_range);
}

TEST(MatmulTest, OtherDevicesSayTheirBackendIsMissing) {
#ifdef TWINFER_WITH_CUDA
    GTEST_SKIP() << "this build has the CUDA backend (tests/compute/cuda_ops_test.cpp covers it)";
#endif
    Context ctx({.device = Device::CUDA, .n_threads = 0, .cpu_isa = std::nullopt});
    const float w = 1, x = 1;
    float y;
    try {
        matmul(ctx, {GGMLType::F32, 1, 1, reinterpret_cast<const std::byte*>(&w)}, &x, 1, &y, Activations::Float32);
        FAIL() << "expected BackendUnavailable";
    } catch (const BackendUnavailable& e) {
        EXPECT_NE(std::string(e.what()).find("cuda backend is not built"), std::string::npos) << e.what();
    }
    EXPECT_THROW(Buffer(Device::CUDA, 16), BackendUnavailable);
}

}  // namespace
}  // namespace twinfer::compute
