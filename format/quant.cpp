#include "format/quant.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

// The float dequantizers reproduce gguf-py's numpy arithmetic operation by operation (each product
// and sum rounded to float32), so their results are bit-identical to gguf.quants.dequantize. That
// holds as long as the compiler does not fuse a*b+c into one FMA. GCC in ISO mode (-std=c++20, as
// CMake sets it) does not contract; clang does by default when the target has FMA, and would then
// need -ffp-contract=off here (tests/format/quant_test.cpp checks bit for bit, -march=haswell too).
// The double dequantizers are the same templates instantiated with double: the same formulas,
// starting from the exact half-precision scales.

namespace twinfer {

float fp16_to_fp32(ggml_half h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, exact in float.
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

ggml_half fp32_to_fp16(float f) {
    const uint32_t bits = std::bit_cast<uint32_t>(f);
    const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    const uint32_t magnitude_bits = bits & 0x7fffffffu;
    if (magnitude_bits > 0x7f800000u) {
        // NaN: keep the top mantissa bits, as numpy does, and never turn it into infinity.
        const auto payload = static_cast<uint16_t>((magnitude_bits & 0x7fffffu) >> 13);
        return static_cast<ggml_half>(sign | 0x7c00u | (payload ? payload : 1u));
    }
    if (magnitude_bits >= 0x47800000u) return static_cast<ggml_half>(sign | 0x7c00u);  // >= 2^16: inf
    if (magnitude_bits < 0x38800000u) {
        // Below the smallest normal half (2^-14): a subnormal in units of 2^-24. Scaling by 2^24 is
        // exact and nearbyint rounds to nearest even; 1024 correctly encodes the smallest normal.
        const float units = std::nearbyint(std::fabs(f) * 16777216.0f);
        return static_cast<ggml_half>(sign | static_cast<uint16_t>(units));
    }
    const uint32_t exponent = (magnitude_bits >> 23) - 127 + 15;
    const uint32_t mantissa = magnitude_bits & 0x7fffffu;
    uint32_t half = (exponent << 10) | (mantissa >> 13);
    const uint32_t remainder = mantissa & 0x1fffu;
    // Round to nearest even; a carry out of the mantissa correctly bumps the exponent (up to inf).
    if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
    return static_cast<ggml_half>(sign | half);
}

float bf16_to_fp32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

namespace {

// ggml_compute_fp32_to_bf16: NaNs become quiet NaNs, everything else rounds to nearest even.
uint16_t fp32_to_bf16(float f) {
    uint32_t bits = std::bit_cast<uint32_t>(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) bits = (bits & 0xffff0000u) | (64u << 16);
    return static_cast<uint16_t>((static_cast<uint64_t>(bits) + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <typename Block>
Block load_block(std::span<const std::byte> src, size_t index) {
    Block block;
    std::memcpy(&block, src.data() + index * sizeof(Block), sizeof(Block));
    return block;
}

template <typename Block>
void store_block(std::span<std::byte> dst, size_t index, const Block& block) {
    std::memcpy(dst.data() + index * sizeof(Block), &block, sizeof(Block));
}

template <typename T>
T half_value(ggml_half h) {
    return static_cast<T>(fp16_to_fp32(h));
}

// ---- dequantization (T is float or double) ----

template <typename T>
void dequantize_f32(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = static_cast<T>(load_block<float>(src, i));
}

template <typename T>
void dequantize_f16(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = half_value<T>(load_block<uint16_t>(src, i));
}

template <typename T>
void dequantize_bf16(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t i = 0; i < dst.size(); ++i)
        dst[i] = static_cast<T>(bf16_to_fp32(load_block<uint16_t>(src, i)));
}

// 4-bit nibbles of the 32-element blocks: element j < 16 is the low nibble of qs[j], element
// j >= 16 the high nibble of qs[j - 16].
uint8_t low_block_nibble(const uint8_t* qs, size_t j) {
    return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

uint8_t q5_high_bit(const uint8_t qh[4], size_t j) { return (qh[j / 8] >> (j % 8)) & 1; }

template <typename T>
void dequantize_q4_0(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK4_0; ++b) {
        const auto block = load_block<BlockQ4_0>(src, b);
        const T d = half_value<T>(block.d);
        for (size_t j = 0; j < QK4_0; ++j)
            dst[b * QK4_0 + j] = d * static_cast<T>(low_block_nibble(block.qs, j) - 8);
    }
}

template <typename T>
void dequantize_q4_1(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK4_1; ++b) {
        const auto block = load_block<BlockQ4_1>(src, b);
        const T d = half_value<T>(block.d), m = half_value<T>(block.m);
        for (size_t j = 0; j < QK4_1; ++j)
            dst[b * QK4_1 + j] = d * static_cast<T>(low_block_nibble(block.qs, j)) + m;
    }
}

template <typename T>
void dequantize_q5_0(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK5_0; ++b) {
        const auto block = load_block<BlockQ5_0>(src, b);
        const T d = half_value<T>(block.d);
        for (size_t j = 0; j < QK5_0; ++j) {
            const int q = low_block_nibble(block.qs, j) | (q5_high_bit(block.qh, j) << 4);
            dst[b * QK5_0 + j] = d * static_cast<T>(q - 16);
        }
    }
}

template <typename T>
void dequantize_q5_1(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK5_1; ++b) {
        const auto block = load_block<BlockQ5_1>(src, b);
        const T d = half_value<T>(block.d), m = half_value<T>(block.m);
        for (size_t j = 0; j < QK5_1; ++j) {
            const int q = low_block_nibble(block.qs, j) | (q5_high_bit(block.qh, j) << 4);
            dst[b * QK5_1 + j] = d * static_cast<T>(q) + m;
        }
    }
}

template <typename T>
void dequantize_q8_0(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK8_0; ++b) {
        const auto block = load_block<BlockQ8_0>(src, b);
        const T d = half_value<T>(block.d);
        for (size_t j = 0; j < QK8_0; ++j) dst[b * QK8_0 + j] = static_cast<T>(block.qs[j]) * d;
    }
}

// d * kvalue in float, as gguf-py multiplies them: exact (a power of two of at least 2^-128 times
// an integer of at most 12, nothing below float's subnormal unit 2^-149), but from e = 253 up the
// largest codes overflow float to infinity, as in gguf-py (double keeps them finite).
template <typename T>
void dequantize_mxfp4(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_MXFP4; ++b) {
        const auto block = load_block<BlockMXFP4>(src, b);
        const T d = static_cast<T>(e8m0_to_fp32_half(block.e));
        for (size_t j = 0; j < QK_MXFP4; ++j)
            dst[b * QK_MXFP4 + j] = d * static_cast<T>(kvalues_mxfp4[low_block_nibble(block.qs, j)]);
    }
}

// In Q2_K, Q3_K and Q6_K each 128-element half of a block takes 32 bytes of 2-bit fields: element
// 32 * s + l of the half is bits 2s..2s+1 of byte l.
uint8_t two_bit_field(const uint8_t* half_bytes, size_t element_in_half) {
    return (half_bytes[element_in_half % 32] >> (2 * (element_in_half / 32))) & 3;
}

template <typename T>
void dequantize_q2_k(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_K; ++b) {
        const auto block = load_block<BlockQ2_K>(src, b);
        const T d = half_value<T>(block.d), dmin = half_value<T>(block.dmin);
        for (size_t i = 0; i < QK_K; ++i) {
            const uint8_t scale = block.scales[i / 16];
            const T dl = d * static_cast<T>(scale & 0x0f);
            const T ml = dmin * static_cast<T>(scale >> 4);
            const uint8_t q = two_bit_field(block.qs + 32 * (i / 128), i % 128);
            dst[b * QK_K + i] = dl * static_cast<T>(q) - ml;
        }
    }
}

// Q3_K's sixteen 6-bit scales: low 4 bits from nibbles of bytes 0..7 (scale j < 8 in the low
// nibble of byte j, j >= 8 in the high nibble of byte j - 8), high 2 bits from bytes 8..11 (scale
// j in bits 2*(j/4) of byte 8 + j%4); stored with an offset of 32.
int q3_k_scale(const uint8_t scales[12], size_t j) {
    const int low = j < 8 ? (scales[j] & 0x0f) : (scales[j - 8] >> 4);
    const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | (high << 4)) - 32;
}

template <typename T>
void dequantize_q3_k(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_K; ++b) {
        const auto block = load_block<BlockQ3_K>(src, b);
        const T d = half_value<T>(block.d);
        for (size_t i = 0; i < QK_K; ++i) {
            const T dl = d * static_cast<T>(q3_k_scale(block.scales, i / 16));
            const int low = two_bit_field(block.qs + 32 * (i / 128), i % 128);
            // A set hmask bit means no offset; a clear one subtracts 4.
            const bool high = (block.hmask[i % 32] >> (i / 32)) & 1;
            dst[b * QK_K + i] = dl * static_cast<T>(low - (high ? 0 : 4));
        }
    }
}

// Q4_K / Q5_K eight 6-bit scales and mins packed in 12 bytes (ggml's get_scale_min_k4).
struct ScaleMin {
    uint8_t scale, min;
};

ScaleMin k4_scale_min(const uint8_t scales[K_SCALE_SIZE], size_t j) {
    if (j < 4) return {static_cast<uint8_t>(scales[j] & 0x3f), static_cast<uint8_t>(scales[j + 4] & 0x3f)};
    return {static_cast<uint8_t>((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4)),
            static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))};
}

// Q4_K / Q5_K low nibbles: sub-block j (32 elements) uses bytes 32*(j/2).. of qs, the low nibble
// for even j, the high nibble for odd j.
uint8_t k4_nibble(const uint8_t qs[QK_K / 2], size_t i) {
    const size_t sub_block = i / 32;
    return (qs[32 * (sub_block / 2) + i % 32] >> (4 * (sub_block % 2))) & 0x0f;
}

template <typename T>
void dequantize_q4_k(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_K; ++b) {
        const auto block = load_block<BlockQ4_K>(src, b);
        const T d = half_value<T>(block.d), dmin = half_value<T>(block.dmin);
        for (size_t i = 0; i < QK_K; ++i) {
            const ScaleMin sm = k4_scale_min(block.scales, i / 32);
            const T scale = d * static_cast<T>(sm.scale);
            const T min = dmin * static_cast<T>(sm.min);
            dst[b * QK_K + i] = scale * static_cast<T>(k4_nibble(block.qs, i)) - min;
        }
    }
}

template <typename T>
void dequantize_q5_k(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_K; ++b) {
        const auto block = load_block<BlockQ5_K>(src, b);
        const T d = half_value<T>(block.d), dmin = half_value<T>(block.dmin);
        for (size_t i = 0; i < QK_K; ++i) {
            const ScaleMin sm = k4_scale_min(block.scales, i / 32);
            const T scale = d * static_cast<T>(sm.scale);
            const T min = dmin * static_cast<T>(sm.min);
            const int high = (block.qh[i % 32] >> (i / 32)) & 1;
            const int q = k4_nibble(block.qs, i) | (high << 4);
            dst[b * QK_K + i] = scale * static_cast<T>(q) - min;
        }
    }
}

template <typename T>
void dequantize_q6_k(std::span<const std::byte> src, std::span<T> dst) {
    for (size_t b = 0; b < dst.size() / QK_K; ++b) {
        const auto block = load_block<BlockQ6_K>(src, b);
        const T d = half_value<T>(block.d);
        for (size_t i = 0; i < QK_K; ++i) {
            const size_t half = i / 128, in_half = i % 128;
            // Low 4 bits: 64 bytes per half, low nibbles for the first 64 elements, high after.
            const int low = (block.ql[64 * half + in_half % 64] >> (4 * (in_half / 64))) & 0x0f;
            const int high = two_bit_field(block.qh + 32 * half, in_half);
            const T scale = d * static_cast<T>(block.scales[i / 16]);
            dst[b * QK_K + i] = scale * static_cast<T>((low | (high << 4)) - 32);
        }
    }
}

// ---- quantization (gguf-py's reference formulas, float32 throughout) ----

void quantize_f32(std::span<const float> src, std::span<std::byte> dst) {
    std::memcpy(dst.data(), src.data(), src.size_bytes());
}

void quantize_f16(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t i = 0; i < src.size(); ++i) store_block(dst, i, fp32_to_fp16(src[i]));
}

void quantize_bf16(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t i = 0; i < src.size(); ++i) store_block(dst, i, fp32_to_bf16(src[i]));
}

// The element of largest magnitude, keeping its sign; the first one on ties.
float signed_absmax(std::span<const float> block) {
    float max = 0.0f, amax = 0.0f;
    for (float x : block) {
        if (std::fabs(x) > amax) {
            amax = std::fabs(x);
            max = x;
        }
    }
    return amax == 0.0f ? block[0] : max;
}

float inverse_or_zero(float d) { return d == 0.0f ? 0.0f : 1.0f / d; }

// Symmetric 4/5-bit codes: trunc(x / d + offset + 0.5) clipped to [0, max_code], d = max / -offset.
void symmetric_codes(std::span<const float> block, float offset, uint8_t max_code, uint8_t* codes,
                     float& d) {
    d = signed_absmax(block) / -offset;
    const float id = inverse_or_zero(d);
    for (size_t j = 0; j < block.size(); ++j) {
        const float shifted = block[j] * id + (offset + 0.5f);
        codes[j] = std::min(static_cast<uint8_t>(std::trunc(shifted)), max_code);
    }
}

// Asymmetric 4/5-bit codes: trunc((x - min) / d + 0.5) clipped, d = (max - min) / max_code.
void asymmetric_codes(std::span<const float> block, uint8_t max_code, uint8_t* codes, float& d,
                      float& min) {
    const auto [min_it, max_it] = std::minmax_element(block.begin(), block.end());
    min = *min_it;
    d = (*max_it - min) / static_cast<float>(max_code);
    const float id = inverse_or_zero(d);
    for (size_t j = 0; j < block.size(); ++j) {
        const float shifted = (block[j] - min) * id + 0.5f;
        codes[j] = std::min(static_cast<uint8_t>(std::trunc(shifted)), max_code);
    }
}

// Element j < 16 in the low nibble of byte j, element j + 16 in its high nibble.
void pack_nibbles(const uint8_t codes[32], uint8_t qs[16]) {
    for (size_t j = 0; j < 16; ++j)
        qs[j] = static_cast<uint8_t>((codes[j] & 0x0f) | (codes[j + 16] << 4));
}

void pack_fifth_bits(const uint8_t codes[32], uint8_t qh[4]) {
    std::memset(qh, 0, 4);
    for (size_t j = 0; j < 32; ++j) qh[j / 8] |= static_cast<uint8_t>(((codes[j] >> 4) & 1) << (j % 8));
}

void quantize_q4_0(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t b = 0; b < src.size() / QK4_0; ++b) {
        uint8_t codes[QK4_0];
        float d;
        symmetric_codes(src.subspan(b * QK4_0, QK4_0), 8.0f, 15, codes, d);
        BlockQ4_0 block;
        block.d = fp32_to_fp16(d);
        pack_nibbles(codes, block.qs);
        store_block(dst, b, block);
    }
}

void quantize_q4_1(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t b = 0; b < src.size() / QK4_1; ++b) {
        uint8_t codes[QK4_1];
        float d, min;
        asymmetric_codes(src.subspan(b * QK4_1, QK4_1), 15, codes, d, min);
        BlockQ4_1 block;
        block.d = fp32_to_fp16(d);
        block.m = fp32_to_fp16(min);
        pack_nibbles(codes, block.qs);
        store_block(dst, b, block);
    }
}

void quantize_q5_0(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t b = 0; b < src.size() / QK5_0; ++b) {
        uint8_t codes[QK5_0];
        float d;
        symmetric_codes(src.subspan(b * QK5_0, QK5_0), 16.0f, 31, codes, d);
        BlockQ5_0 block;
        block.d = fp32_to_fp16(d);
        pack_fifth_bits(codes, block.qh);
        pack_nibbles(codes, block.qs);
        store_block(dst, b, block);
    }
}

void quantize_q5_1(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t b = 0; b < src.size() / QK5_1; ++b) {
        uint8_t codes[QK5_1];
        float d, min;
        asymmetric_codes(src.subspan(b * QK5_1, QK5_1), 31, codes, d, min);
        BlockQ5_1 block;
        block.d = fp32_to_fp16(d);
        block.m = fp32_to_fp16(min);
        pack_fifth_bits(codes, block.qh);
        pack_nibbles(codes, block.qs);
        store_block(dst, b, block);
    }
}

void quantize_q8_0(std::span<const float> src, std::span<std::byte> dst) {
    for (size_t b = 0; b < src.size() / QK8_0; ++b) {
        const std::span<const float> values = src.subspan(b * QK8_0, QK8_0);
        float amax = 0.0f;
        for (float x : values) amax = std::max(amax, std::fabs(x));
        const float d = amax / 127.0f;
        const float id = inverse_or_zero(d);
        BlockQ8_0 block;
        block.d = fp32_to_fp16(d);
        // roundf rounds halves away from zero, like gguf-py's np_roundf and ggml's reference.
        for (size_t j = 0; j < QK8_0; ++j) block.qs[j] = static_cast<int8_t>(std::round(values[j] * id));
        store_block(dst, b, block);
    }
}

// Checks that `elements` fills whole blocks and `bytes` is exactly their size.
void check_sizes(const char* operation, GGMLType type, size_t elements, size_t bytes) {
    const GGMLTypeTraits& traits = type_traits(type);
    if (elements % traits.block_size != 0)
        throw std::invalid_argument(std::string(operation) + " " + std::string(traits.name) + ": " +
                                    std::to_string(elements) +
                                    " elements is not a multiple of the block size " +
                                    std::to_string(traits.block_size));
    const size_t expected = row_size_bytes(type, elements);
    if (bytes != expected)
        throw std::invalid_argument(std::string(operation) + " " + std::string(traits.name) + ": " +
                                    std::to_string(elements) + " elements take " +
                                    std::to_string(expected) + " bytes, the buffer has " +
                                    std::to_string(bytes));
}

template <typename T>
void dequantize_any(GGMLType type, std::span<const std::byte> src, std::span<T> dst) {
    check_sizes("dequantize", type, dst.size(), src.size());
    switch (type) {
        case GGMLType::F32: return dequantize_f32(src, dst);
        case GGMLType::F16: return dequantize_f16(src, dst);
        case GGMLType::BF16: return dequantize_bf16(src, dst);
        case GGMLType::Q4_0: return dequantize_q4_0(src, dst);
        case GGMLType::Q4_1: return dequantize_q4_1(src, dst);
        case GGMLType::Q5_0: return dequantize_q5_0(src, dst);
        case GGMLType::Q5_1: return dequantize_q5_1(src, dst);
        case GGMLType::Q8_0: return dequantize_q8_0(src, dst);
        case GGMLType::Q2_K: return dequantize_q2_k(src, dst);
        case GGMLType::Q3_K: return dequantize_q3_k(src, dst);
        case GGMLType::Q4_K: return dequantize_q4_k(src, dst);
        case GGMLType::Q5_K: return dequantize_q5_k(src, dst);
        case GGMLType::Q6_K: return dequantize_q6_k(src, dst);
        case GGMLType::MXFP4: return dequantize_mxfp4(src, dst);
        default:
            throw std::invalid_argument("dequantize: type " + std::string(type_name(type)) +
                                        " is not supported");
    }
}

}  // namespace

void dequantize(GGMLType type, std::span<const std::byte> src, std::span<float> dst) {
    dequantize_any(type, src, dst);
}

void dequantize(GGMLType type, std::span<const std::byte> src, std::span<double> dst) {
    dequantize_any(type, src, dst);
}

bool can_quantize(GGMLType type) {
    switch (type) {
        case GGMLType::F32:
        case GGMLType::F16:
        case GGMLType::BF16:
        case GGMLType::Q4_0:
        case GGMLType::Q4_1:
        case GGMLType::Q5_0:
        case GGMLType::Q5_1:
        case GGMLType::Q8_0: return true;
        default: return false;
    }
}

void quantize(GGMLType type, std::span<const float> src, std::span<std::byte> dst) {
    if (!can_quantize(type))
        throw std::invalid_argument("quantize: type " + std::string(type_name(type)) +
                                    " is not supported");
    check_sizes("quantize", type, src.size(), dst.size());
    switch (type) {
        case GGMLType::F32: return quantize_f32(src, dst);
        case GGMLType::F16: return quantize_f16(src, dst);
        case GGMLType::BF16: return quantize_bf16(src, dst);
        case GGMLType::Q4_0: return quantize_q4_0(src, dst);
        case GGMLType::Q4_1: return quantize_q4_1(src, dst);
        case GGMLType::Q5_0: return quantize_q5_0(src, dst);
        case GGMLType::Q5_1: return quantize_q5_1(src, dst);
        case GGMLType::Q8_0: return quantize_q8_0(src, dst);
        default: break;  // excluded by can_quantize above
    }
}

}  // namespace twinfer
