#pragma once
// Quantized block layouts (ggml's, bit for bit) and conversion to and from float.
// Dequantization exists for every type twinfer reads; quantization for the types used to make
// test and benchmark models.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>

#include "format/ggml_type.hpp"

namespace twinfer {

constexpr size_t QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK_MXFP4 = 32, QK_K = 256;
constexpr size_t K_SCALE_SIZE = 12;

using ggml_half = uint16_t;  // IEEE binary16 bits

#pragma pack(push, 1)
struct BlockQ4_0 { ggml_half d; uint8_t qs[QK4_0 / 2]; };
struct BlockQ4_1 { ggml_half d; ggml_half m; uint8_t qs[QK4_1 / 2]; };
struct BlockQ5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct BlockQ5_1 { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct BlockQ8_0 { ggml_half d; int8_t qs[QK8_0]; };
// OCP microscaling FP4: a shared E8M0 exponent byte and 32 E2M1 codes (4 bits: sign, 2 exponent
// bits, 1 mantissa bit), element j < 16 in the low nibble of qs[j], j + 16 in its high nibble.
struct BlockMXFP4 { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; };
struct BlockQ2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; ggml_half d; ggml_half dmin; };
struct BlockQ3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; ggml_half d; };
struct BlockQ4_K { ggml_half d; ggml_half dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { ggml_half d; ggml_half dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ggml_half d; };
#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockMXFP4) == 17);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

float fp16_to_fp32(ggml_half h);
ggml_half fp32_to_fp16(float f);     // round to nearest even, as numpy's astype(float16)
float bf16_to_fp32(uint16_t b);

// MXFP4's E2M1 codes as ggml keeps them, doubled so that they are integers (0.5 is 1): code c
// is kvalues_mxfp4[c], sign in bit 3. An MXFP4 weight is kvalues_mxfp4[c] * e8m0_to_fp32_half(e),
// the doubling taken back by the scale: int8 dot products with quantized activations are exact.
inline constexpr int8_t kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
// 2^(e - 128), half of the E8M0 scale 2^(e - 127) (ggml's GGML_E8M0_TO_FP32_HALF): e 0 and 1 are
// float subnormals, e 255 is 2^127 (no NaN, as in ggml and gguf-py). Inline: the CPU kernels take
// it once a block.
inline float e8m0_to_fp32_half(uint8_t e) {
    return std::bit_cast<float>(e < 2 ? uint32_t{0x00200000} << e : static_cast<uint32_t>(e - 1) << 23);
}

// Dequantize n elements (a multiple of the block size) from raw block bytes.
// `src` must hold row_size_bytes(type, n) bytes; throws std::invalid_argument otherwise.
void dequantize(GGMLType type, std::span<const std::byte> src, std::span<float> dst);
void dequantize(GGMLType type, std::span<const std::byte> src, std::span<double> dst);

// Quantize n floats to `type`, the same bytes as gguf-py's gguf.quants.quantize (reference
// rounding). Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. Throws for others.
void quantize(GGMLType type, std::span<const float> src, std::span<std::byte> dst);
bool can_quantize(GGMLType type);

}  // namespace twinfer
