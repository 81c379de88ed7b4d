#pragma once
// Decoding GGUF weight blocks on the GPU, 32 weights (a "unit") at a time, for every type the
// matrix kernels take. A unit decodes to small integer codes q[k], exact in float (non-negative
// but for MXFP4's signed codebook values), and an affine map per 16 weights: w[k] = a[k / 16] *
// q[k] + b[k / 16]. The matrix-vector
// kernel then needs one multiply-add per weight (sum q x) and two per 16 (a * that + b * sum x);
// the dequantize kernel writes a * q + b. Float types decode to their values with a = 1, b = 0.
// Layouts are ggml's, as format/quant.cpp reads them on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "format/ggml_type.hpp"

namespace twinfer::compute::cuda {

struct Unit {
    float q[32];
    float a[2];
    float b[2];
};

// Exact int -> float for 0 <= v < 2^23 in two cheap ops (the integer converter has a quarter of the
// multiply-add rate): 2^23 + v has v in its mantissa.
__device__ __forceinline__ float code(uint32_t v) { return __uint_as_float(0x4B000000u | v) - 8388608.0f; }
__device__ __forceinline__ float half_at(const uint8_t* p) { return __half2float(*reinterpret_cast<const __half*>(p)); }
// 4 bytes from a 2-byte aligned address (blocks of 18, 22, 34 and 210 bytes).
__device__ __forceinline__ uint32_t u32_a2(const uint8_t* p) {
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
}
__device__ __forceinline__ uint32_t u32_a4(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t byte_of(uint32_t word, int i) { return (word >> (8 * i)) & 0xffu; }

// MXFP4 (format/quant.hpp): 2^(e - 128), ggml's GGML_E8M0_TO_FP32_HALF (float subnormals below e = 2).
__device__ __forceinline__ float e8m0_half(uint32_t e) { return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23); }
// Code c's doubled E2M1 value (kvalues_mxfp4): magnitudes {0, 1, 2, 3, 4, 6, 8, 12} by its low three
// bits, negative where bit 3 is set; from a constant, not a table in memory.
__device__ __forceinline__ int mxfp4_value(uint32_t c) {
    const int magnitude = int((0x0C08060403020100ull >> (8 * (c & 7u))) & 0xffu);
    return c & 8u ? -magnitude : magnitude;
}

__device__ __forceinline__ void set_affine(Unit& u, float a, float b) {
    u.a[0] = u.a[1] = a;
    u.b[0] = u.b[1] = b;
}

// 16 bytes of 4-bit codes: element k < 16 is the low nibble of byte k, element 16 + k the high one.
template <class Load>
__device__ __forceinline__ void nibbles(Unit& u, const uint8_t* qs, Load load) {
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const uint32_t word = load(qs + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u.q[4 * w + i] = code(byte_of(word, i) & 0xf);
            u.q[16 + 4 * w + i] = code(byte_of(word, i) >> 4);
        }
    }
}

// Adds the fifth bit: element k's is bit k of qh.
__device__ __forceinline__ void fifth_bits(Unit& u, uint32_t qh) {
#pragma unroll
    for (int k = 0; k < 32; ++k) u.q[k] += float((qh >> k) & 1u) * 16.0f;
}

template <GGMLType T> __device__ __forceinline__ void decode_unit(const uint8_t* row, int unit, Unit& u);

template <> __device__ __forceinline__ void decode_unit<GGMLType::F32>(const uint8_t* row, int unit, Unit& u) {
    const auto* v = reinterpret_cast<const float4*>(row) + 8 * unit;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float4 f = v[i];
        u.q[4 * i] = f.x, u.q[4 * i + 1] = f.y, u.q[4 * i + 2] = f.z, u.q[4 * i + 3] = f.w;
    }
    set_affine(u, 1.0f, 0.0f);
}

template <> __device__ __forceinline__ void decode_unit<GGMLType::F16>(const uint8_t* row, int unit, Unit& u) {
    const auto* v = reinterpret_cast<const uint4*>(row) + 4 * unit;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint4 p = v[i];
        const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[j]));
            u.q[8 * i + 2 * j] = f.x, u.q[8 * i + 2 * j + 1] = f.y;
        }
    }
    set_affine(u, 1.0f, 0.0f);
}

template <> __device__ __forceinline__ void decode_unit<GGMLType::BF16>(const uint8_t* row, int unit, Unit& u) {
    const auto* v = reinterpret_cast<const uint4*>(row) + 4 * unit;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint4 p = v[i];
        const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            u.q[8 * i + 2 * j] = __uint_as_float(words[j] << 16);
            u.q[8 * i + 2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
        }
    }
    set_affine(u, 1.0f, 0.0f);
}

// Two bits per element, 32 bytes per 128-element half: element 32 * s + e of the half is bits
// 2s..2s+1 of byte e (Q2_K, Q3_K). Fills q[k] for the unit's s.
__device__ __forceinline__ void two_bits(Unit& u, const uint8_t* half_bytes, int s) {
#pragma unroll
    for (int w = 0; w < 8; ++w) {
        const uint32_t word = u32_a2(half_bytes + 4 * w) >> (2 * s);
#pragma unroll
        for (int i = 0; i < 4; ++i) u.q[4 * w + i] = code(byte_of(word, i) & 3u);
    }
}

template <> __device__ __forceinline__ void decode_unit<GGMLType::Q2_K>(const uint8_t* row, int unit, Unit& u) {
    const uint8_t* block = row + 84 * (unit / 8);
    const int sub = unit % 8;
    const float d = half_at(block + 80), dmin = half_at(block + 82);
    two_bits(u, block + 16 + 32 * (sub / 4), sub % 4);
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        const uint32_t scale = block[2 * sub + g];
        u.a[g] = d * float(scale & 0xf);
        u.b[g] = -dmin * float(scale >> 4);
    }
}

template <> __device__ __forceinline__ void decode_unit<GGMLType::Q3_K>(const uint8_t* row, int unit, Unit& u) {
    const uint8_t* block = row + 110 * (unit / 8);
    const int sub = unit % 8;
    const float d = half_at(block + 108);
    two_bits(u, block + 32 + 32 * (sub / 4), sub % 4);
    // A set hmask bit adds 4 to the code (stored offset -4: a clear bit means code - 4).
#pragma unroll
    for (int w = 0; w < 8; ++w) {
        const uint32_t word = u32_a2(block + 4 * w) >> sub;
#pragma unroll
        for (int i = 0; i < 4; ++i) u.q[4 * w + i] += float(byte_of(word, i) & 1u) * 4.0f;
    }
    const uint8_t* scales = block + 96;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        const int j = 2 * sub + g;
        const int low = j < 8 ? (scales[j] & 0xf) : (scales[j - 8] >> 4);
        const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        u.a[g] = d * float((low | (high << 4)) - 32);
        u.b[g] = -4.0f * u.a[g];
    }
}

// The GPU's layout of the types of the int8 kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
// Q6_K, MXFP4): a matrix's 32-weight blocks (a K type's sub-blocks) split into three planes -- every
// block's codes (16 or 32 bytes), then every block's high bits (Q5_0, Q5_1, Q5_K: the fifth, 4
// bytes; Q6_K: the fifth and sixth, 8 bytes), then the scales: every block's (d, or d and m: 2 or
// 4 bytes; MXFP4's exponent: 1 byte), or for the K types every 256-weight super-block's header (Q4_K, Q5_K: d, dmin and the
// 12 bytes of 6-bit scales and mins; Q6_K: the 16 int8 scales, then d) -- block i = row *
// blocks_per_row + b at i times the plane's width. Same size as the file's layout. A warp's lanes
// then read 32 neighbouring blocks' codes with one 16-byte load each, 512 contiguous bytes, where
// GGUF's 18- to 34-byte blocks allow only 2-byte loads (up to 17 per block) spread over the warp's
// span: a 4096-wide Q4_0 product went from 9 load instructions per block to 2. Every type's codes
// are in Q4_0's order (byte k: weight k in the low nibble, weight 16 + k in the high one; Q8_0:
// byte k is weight k), and high bits in weight order (bit k, or bits 2k..2k+1 counting from
// weight 16's for the second word), so that one integer dot product serves them all.
// compute::place_weights lays weights out so on upload (repack_kernel in matmul.cu).
template <GGMLType T> struct Planar {
    static constexpr bool used = false;
};
// A planar type's bytes per block in each plane (Group: per super-block of 8 blocks, the K types).
template <int Code, int High, int Scale, int Group = 0> struct PlanarBlock {
    static constexpr bool used = true;
    static constexpr int code_bytes = Code, high_bytes = High, scale_bytes = Scale, group_bytes = Group;
};
template <> struct Planar<GGMLType::Q4_0> : PlanarBlock<16, 0, 2> {};   // d
template <> struct Planar<GGMLType::Q4_1> : PlanarBlock<16, 0, 4> {};   // d, m
template <> struct Planar<GGMLType::Q5_0> : PlanarBlock<16, 4, 2> {};
template <> struct Planar<GGMLType::Q5_1> : PlanarBlock<16, 4, 4> {};
template <> struct Planar<GGMLType::Q8_0> : PlanarBlock<32, 0, 2> {};
template <> struct Planar<GGMLType::Q4_K> : PlanarBlock<16, 0, 0, 16> {};
template <> struct Planar<GGMLType::Q5_K> : PlanarBlock<16, 4, 0, 16> {};
template <> struct Planar<GGMLType::Q6_K> : PlanarBlock<16, 8, 0, 18> {};
template <> struct Planar<GGMLType::MXFP4> : PlanarBlock<16, 0, 1> {};   // e
template <GGMLType T> constexpr bool k_type = Planar<T>::used && Planar<T>::group_bytes != 0;

// The three planes of a planar matrix of n_blocks blocks.
template <GGMLType T> struct PlanarView {
    const uint8_t* codes = nullptr;
    const uint8_t* high = nullptr;
    const uint8_t* scales = nullptr;
    PlanarView() = default;
    __host__ __device__ PlanarView(const uint8_t* data, size_t n_blocks)
        : codes(data), high(data + n_blocks * Planar<T>::code_bytes),
          scales(data + n_blocks * (Planar<T>::code_bytes + Planar<T>::high_bytes)) {}
    // Block i's codes, high bits and scales (a K type's: its super-block's header).
    __device__ const uint8_t* codes_of(size_t i) const { return codes + i * Planar<T>::code_bytes; }
    __device__ const uint8_t* high_of(size_t i) const { return high + i * Planar<T>::high_bytes; }
    __device__ const uint8_t* scales_of(size_t i) const {
        return scales + i * Planar<T>::scale_bytes + i / 8 * Planar<T>::group_bytes;
    }
};

// Q4_K / Q5_K's scale and min of sub-block j from the words of its super-block's header (as
// k4_scale_min, without indexing the words by j).
__device__ __forceinline__ void k4_scale_min(const uint32_t header[4], int j, int& scale, int& min) {
    const int shift = 8 * (j & 3);
    const uint32_t low = header[1] >> shift, middle = header[2] >> shift, high = header[3] >> shift;
    if (j < 4) {
        scale = int(low & 63);
        min = int(middle & 63);
    } else {
        scale = int((high & 0xf) | ((low >> 6) & 3) << 4);
        min = int(((high >> 4) & 0xf) | ((middle >> 6) & 3) << 4);
    }
}

// Block i of a planar matrix as a unit of 32 weights (one block is one unit for these types).
template <GGMLType T> __device__ __forceinline__ void decode_planar(const PlanarView<T>& v, size_t i, Unit& u) {
    const uint8_t* codes = v.codes_of(i);
    const uint8_t* scales = v.scales_of(i);
    if constexpr (T == GGMLType::Q8_0) {
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            const uint32_t word = u32_a4(codes + 4 * w) ^ 0x80808080u;  // int8 + 128, as a byte
#pragma unroll
            for (int b = 0; b < 4; ++b) u.q[4 * w + b] = code(byte_of(word, b));
        }
        const float d = half_at(scales);
        set_affine(u, d, -128.0f * d);
    } else if constexpr (T == GGMLType::MXFP4) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const uint32_t word = u32_a4(codes + 4 * w);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                u.q[4 * w + i] = float(mxfp4_value(byte_of(word, i) & 0xfu));
                u.q[16 + 4 * w + i] = float(mxfp4_value(byte_of(word, i) >> 4));
            }
        }
        set_affine(u, e8m0_half(scales[0]), 0.0f);
    } else if constexpr (T == GGMLType::Q6_K) {
        nibbles(u, codes, u32_a4);
        const int sub = int(i % 8);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t word = u32_a4(v.high_of(i) + 4 * h);
#pragma unroll
            for (int k = 0; k < 16; ++k) u.q[16 * h + k] += float((word >> (2 * k)) & 3u) * 16.0f;
        }
        const float d = half_at(scales + 16);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            u.a[g] = d * float(int8_t(scales[2 * sub + g]));
            u.b[g] = -32.0f * u.a[g];
        }
    } else {
        nibbles(u, codes, u32_a4);
        if constexpr (Planar<T>::high_bytes != 0) fifth_bits(u, u32_a4(v.high_of(i)));
        if constexpr (k_type<T>) {
            const uint32_t header[4] = {u32_a4(scales), u32_a4(scales + 4), u32_a4(scales + 8), u32_a4(scales + 12)};
            int scale, min;
            k4_scale_min(header, int(i % 8), scale, min);
            set_affine(u, half_at(scales) * float(scale), -half_at(scales + 2) * float(min));
        } else {
            const float d = half_at(scales);
            if constexpr (T == GGMLType::Q4_0) set_affine(u, d, -8.0f * d);
            else if constexpr (T == GGMLType::Q5_0) set_affine(u, d, -16.0f * d);
            else set_affine(u, d, half_at(scales + 2));   // Q4_1, Q5_1: d and m
        }
    }
}

// A matrix on the GPU as the kernels see it: planar for the types with a Planar layout, GGUF's rows
// otherwise. Unit `unit` of row `row`, whichever.
struct DeviceMatrix {
    const uint8_t* data;
    size_t row_bytes;
    int rows;
    int cols;
};
template <GGMLType T>
__device__ __forceinline__ void load_unit(const DeviceMatrix& w, int row, int unit, Unit& u) {
    if constexpr (Planar<T>::used) {
        decode_planar<T>(PlanarView<T>(w.data, size_t(w.rows) * (w.cols / 32)), size_t(row) * (w.cols / 32) + unit, u);
    } else {
        decode_unit<T>(w.data + size_t(row) * w.row_bytes, unit, u);
    }
}

// Calls f.template operator()<T>() with the type as a template argument; false for a type with no
// decoder.
template <class F>
bool with_decoder(GGMLType type, F&& f) {
    switch (type) {
    case GGMLType::F32: f.template operator()<GGMLType::F32>(); return true;
    case GGMLType::F16: f.template operator()<GGMLType::F16>(); return true;
    case GGMLType::BF16: f.template operator()<GGMLType::BF16>(); return true;
    case GGMLType::Q4_0: f.template operator()<GGMLType::Q4_0>(); return true;
    case GGMLType::Q4_1: f.template operator()<GGMLType::Q4_1>(); return true;
    case GGMLType::Q5_0: f.template operator()<GGMLType::Q5_0>(); return true;
    case GGMLType::Q5_1: f.template operator()<GGMLType::Q5_1>(); return true;
    case GGMLType::Q8_0: f.template operator()<GGMLType::Q8_0>(); return true;
    case GGMLType::Q2_K: f.template operator()<GGMLType::Q2_K>(); return true;
    case GGMLType::Q3_K: f.template operator()<GGMLType::Q3_K>(); return true;
    case GGMLType::Q4_K: f.template operator()<GGMLType::Q4_K>(); return true;
    case GGMLType::Q5_K: f.template operator()<GGMLType::Q5_K>(); return true;
    case GGMLType::Q6_K: f.template operator()<GGMLType::Q6_K>(); return true;
    case GGMLType::MXFP4: f.template operator()<GGMLType::MXFP4>(); return true;
    default: return false;
    }
}

// Whether the GPU keeps `type` in the planar layout (the int8 kernels' types).
inline bool planar_layout(GGMLType type) {
    bool planar = false;
    with_decoder(type, [&]<GGMLType T>() { planar = Planar<T>::used; });
    return planar;
}

}  // namespace twinfer::compute::cuda
