// Quantization against gguf-py (the `gguf` package's gguf.quants), bit for bit: tools/quant_oracle.py
// writes random blocks and quantized rows with their gguf dequantization; twinfer must reproduce
// the float32 values and the quantized bytes exactly.
#include "format/quant.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/test_data.hpp"

namespace twinfer {
namespace {

namespace fs = std::filesystem;

struct OracleData {
    fs::path dir;
    std::string error;  // empty when the data was made
};

// Runs tools/quant_oracle.py once per test process. A missing python3 or gguf module is a test
// failure, not a skip: scripts/setup.sh installs them, and without them nothing here is checked.
const OracleData& oracle() {
    static const OracleData data = [] {
        OracleData result{test::scratch_dir() / "quant_oracle", {}};
        const std::string probe = "python3 -c \"import gguf, numpy\" > /dev/null 2>&1";
        if (std::system(probe.c_str()) != 0) {
            result.error = "python3 with the gguf and numpy modules is required to make the "
                           "reference data (run scripts/setup.sh)";
            return result;
        }
        const fs::path script = test::repo_root() / "tools" / "quant_oracle.py";
        const std::string command = "python3 \"" + script.string() + "\" \"" + result.dir.string() + "\"";
        if (std::system(command.c_str()) != 0) result.error = "failed: " + command;
        return result;
    }();
    return data;
}

#define REQUIRE_ORACLE() ASSERT_TRUE(oracle().error.empty()) << oracle().error

std::vector<std::byte> read_bytes(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + path.string());
    std::vector<char> chars((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(chars.size());
    std::memcpy(bytes.data(), chars.data(), chars.size());
    return bytes;
}

std::vector<float> read_floats(const fs::path& path) {
    const std::vector<std::byte> bytes = read_bytes(path);
    std::vector<float> values(bytes.size() / sizeof(float));
    std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
    return values;
}

fs::path oracle_file(GGMLType type, const std::string& suffix) {
    return oracle().dir / (std::string(type_name(type)) + "." + suffix);
}

// Bit-for-bit comparison (NaN payloads and the sign of zero included); reports the first mismatch.
void expect_same_bits(const std::vector<float>& expected, const std::vector<float>& actual) {
    ASSERT_EQ(expected.size(), actual.size());
    size_t mismatches = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        if (std::bit_cast<uint32_t>(expected[i]) == std::bit_cast<uint32_t>(actual[i])) continue;
        if (mismatches++ == 0)
            ADD_FAILURE() << "element " << i << ": gguf " << expected[i] << ", twinfer " << actual[i];
    }
    EXPECT_EQ(mismatches, 0u) << "of " << expected.size() << " elements";
}

std::vector<float> dequantize_to_float(GGMLType type, const std::vector<std::byte>& bytes,
                                       size_t n_elements) {
    std::vector<float> values(n_elements);
    dequantize(type, bytes, values);
    return values;
}

size_t element_count(GGMLType type, size_t n_bytes) {
    const GGMLTypeTraits& traits = type_traits(type);
    return n_bytes / traits.type_size * traits.block_size;
}

const GGMLType kDequantizable[] = {
    GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0, GGMLType::Q4_1,
    GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0, GGMLType::Q2_K, GGMLType::Q3_K,
    GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::MXFP4,
};
const GGMLType kQuantizable[] = {
    GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0,
    GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0,
};

std::string param_name(const testing::TestParamInfo<GGMLType>& info) {
    return std::string(type_name(info.param));
}

class DequantizeAgainstGguf : public testing::TestWithParam<GGMLType> {};

TEST_P(DequantizeAgainstGguf, RandomBlocksBitExact) {
    REQUIRE_ORACLE();
    const GGMLType type = GetParam();
    const std::vector<std::byte> bytes = read_bytes(oracle_file(type, "random.bytes"));
    const std::vector<float> expected = read_floats(oracle_file(type, "random.f32"));
    ASSERT_EQ(element_count(type, bytes.size()), expected.size());
    expect_same_bits(expected, dequantize_to_float(type, bytes, expected.size()));
}

TEST_P(DequantizeAgainstGguf, DoubleAgreesWithFloat) {
    REQUIRE_ORACLE();
    const GGMLType type = GetParam();
    const std::vector<std::byte> bytes = read_bytes(oracle_file(type, "random.bytes"));
    const size_t n = element_count(type, bytes.size());
    const std::vector<float> as_float = dequantize_to_float(type, bytes, n);
    std::vector<double> as_double(n);
    dequantize(type, bytes, as_double);

    const size_t block = type_traits(type).block_size;
    for (size_t start = 0; start < n; start += block) {
        // The float path rounds each product and sum; its error is a few float epsilons of the
        // largest magnitude in the block (plain types convert exactly).
        double block_max = 0.0;
        for (size_t i = start; i < start + block; ++i)
            if (std::isfinite(as_double[i])) block_max = std::max(block_max, std::fabs(as_double[i]));
        const double tolerance = block == 1 ? 0.0 : 8.0 * FLT_EPSILON * block_max;
        for (size_t i = start; i < start + block; ++i) {
            if (std::isnan(as_double[i])) {
                ASSERT_TRUE(std::isnan(as_float[i])) << "element " << i;
                continue;
            }
            if (std::isinf(as_double[i])) {
                ASSERT_EQ(as_double[i], static_cast<double>(as_float[i])) << "element " << i;
                continue;
            }
            ASSERT_LE(std::fabs(as_double[i] - static_cast<double>(as_float[i])), tolerance)
                << "element " << i << ": double " << as_double[i] << ", float " << as_float[i];
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantizeAgainstGguf, testing::ValuesIn(kDequantizable), param_name);

class QuantizeAgainstGguf : public testing::TestWithParam<GGMLType> {};

TEST_P(QuantizeAgainstGguf, SameBytesAndDequantization) {
    REQUIRE_ORACLE();
    const GGMLType type = GetParam();
    ASSERT_TRUE(can_quantize(type));
    const std::vector<float> input = read_floats(oracle_file(type, "input.f32"));
    const std::vector<std::byte> expected_bytes = read_bytes(oracle_file(type, "quant.bytes"));
    const std::vector<float> expected_values = read_floats(oracle_file(type, "quant.f32"));

    std::vector<std::byte> bytes(row_size_bytes(type, input.size()));
    quantize(type, input, bytes);
    ASSERT_EQ(bytes.size(), expected_bytes.size());
    size_t first_difference = bytes.size();
    for (size_t i = 0; i < bytes.size() && first_difference == bytes.size(); ++i)
        if (bytes[i] != expected_bytes[i]) first_difference = i;
    EXPECT_EQ(first_difference, bytes.size())
        << "first differing byte " << first_difference << " (block "
        << first_difference / type_traits(type).type_size << ")";

    expect_same_bits(expected_values, dequantize_to_float(type, expected_bytes, input.size()));
}

INSTANTIATE_TEST_SUITE_P(Quantizable, QuantizeAgainstGguf, testing::ValuesIn(kQuantizable), param_name);

TEST(HalfConversion, EveryHalfRoundTrips) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = fp16_to_fp32(static_cast<ggml_half>(h));
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(f)))) << h;
            continue;
        }
        ASSERT_EQ(fp32_to_fp16(f), h) << "half 0x" << std::hex << h << " -> " << f;
    }
}

TEST(HalfConversion, RoundsToNearestEven) {
    EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
    EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);
    EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);
    EXPECT_EQ(fp32_to_fp16(-1e6f), 0xfc00);
    EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);      // tie between 0 and 2^-24
    EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);      // tie between 1 and 2 units
    EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
    EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
    EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
    EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
    EXPECT_EQ(bf16_to_fp32(0xc000), -2.0f);
}

TEST(QuantErrors, SizesAndTypesAreChecked) {
    std::vector<std::byte> bytes(18);
    std::vector<float> floats(33);
    std::vector<double> doubles(32);
    try {
        dequantize(GGMLType::Q4_0, bytes, std::span<float>(floats));
        ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& error) {
        const std::string message = error.what();
        EXPECT_NE(message.find("Q4_0"), std::string::npos) << message;
        EXPECT_NE(message.find("33"), std::string::npos) << message;
    }
    try {
        dequantize(GGMLType::Q4_0, bytes, std::span<double>(doubles));  // 32 elements need 18 bytes: fine
        dequantize(GGMLType::Q4_0, std::span<const std::byte>(bytes).first(17), std::span<double>(doubles));
        ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& error) {
        const std::string message = error.what();
        EXPECT_NE(message.find("17"), std::string::npos) << message;
        EXPECT_NE(message.find("18"), std::string::npos) << message;
    }
    std::vector<float> block(256);
    std::vector<std::byte> large(1024);
    EXPECT_THROW(dequantize(GGMLType::Q8_1, std::span<const std::byte>(large).first(36),
                            std::span<float>(block).first(32)),
                 std::invalid_argument);
    EXPECT_THROW(dequantize(GGMLType::F64, std::span<const std::byte>(large).first(8),
                            std::span<float>(block).first(1)),
                 std::invalid_argument);
    EXPECT_THROW(dequantize(static_cast<GGMLType>(99), large, std::span<float>(block)),
                 std::runtime_error);

    EXPECT_FALSE(can_quantize(GGMLType::Q4_K));
    EXPECT_THROW(quantize(GGMLType::Q4_K, block, std::span<std::byte>(large).first(144)),
                 std::invalid_argument);
    EXPECT_THROW(quantize(GGMLType::Q8_0, std::span<const float>(block).first(31),
                          std::span<std::byte>(large).first(34)),
                 std::invalid_argument);
    EXPECT_THROW(quantize(GGMLType::Q8_0, std::span<const float>(block).first(32),
                          std::span<std::byte>(large).first(35)),
                 std::invalid_argument);
}

// MXFP4 by hand, apart from the oracle: ggml's E8M0 halving (2^(e - 128), subnormal below e = 2),
// the doubled E2M1 codes with their sign bit, and element j + 16 in the high nibble of byte j.
TEST(MXFP4, ScalesCodesAndNibbleOrder) {
    EXPECT_EQ(e8m0_to_fp32_half(0), std::ldexp(1.0f, -128));
    EXPECT_EQ(e8m0_to_fp32_half(1), std::ldexp(1.0f, -127));
    EXPECT_EQ(e8m0_to_fp32_half(2), std::ldexp(1.0f, -126));
    EXPECT_EQ(e8m0_to_fp32_half(127), 0.5f);
    EXPECT_EQ(e8m0_to_fp32_half(255), std::ldexp(1.0f, 127));
    BlockMXFP4 block{};
    block.e = 128;   // scale 1: the values are the doubled codes
    for (uint8_t j = 0; j < 16; ++j) block.qs[j] = static_cast<uint8_t>(j | (15 - j) << 4);
    std::vector<std::byte> bytes(sizeof block);
    std::memcpy(bytes.data(), &block, sizeof block);
    std::vector<float> values(32);
    dequantize(GGMLType::MXFP4, bytes, std::span<float>(values));
    const float codes[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    for (size_t j = 0; j < 16; ++j) {
        EXPECT_EQ(values[j], codes[j]) << "element " << j;
        EXPECT_EQ(values[16 + j], codes[15 - j]) << "element " << 16 + j;
    }
}

// An MXFP4 buffer must be exactly its 17-byte blocks: 16 bytes (a block without its exponent, or a
// Q4_0-sized reading) or 18 are refused, naming the type and both sizes.
TEST(MXFP4, SizeMismatchIsRefused) {
    std::vector<std::byte> bytes(18);
    std::vector<float> values(32);
    for (size_t size : {size_t{16}, size_t{18}}) {
        try {
            dequantize(GGMLType::MXFP4, std::span<const std::byte>(bytes).first(size), std::span<float>(values));
            ADD_FAILURE() << "no exception for " << size << " bytes";
        } catch (const std::invalid_argument& error) {
            const std::string message = error.what();
            EXPECT_NE(message.find("MXFP4"), std::string::npos) << message;
            EXPECT_NE(message.find("17"), std::string::npos) << message;
            EXPECT_NE(message.find(std::to_string(size)), std::string::npos) << message;
        }
    }
    EXPECT_THROW(dequantize(GGMLType::MXFP4, std::span<const std::byte>(bytes).first(17), std::span<float>(values).first(16)),
                 std::invalid_argument);
    EXPECT_FALSE(can_quantize(GGMLType::MXFP4));
}

}  // namespace
}  // namespace twinfer
