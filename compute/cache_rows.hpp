#pragma once
// The rows of a KV cache as the attention ops read and write them: float32, float16 (half the
// bytes a decode step reads at long contexts, llama.cpp's default cache type; each stored value
// rounded to 11 significant bits, the accuracy `twinfer verify` measures), or Q8_0 (ggml's blocks
// of 32 int8 values and a float16 scale, 34 bytes: 0.53 of float16's memory; the CPU only).
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace twinfer::compute {

enum class KvType { F32, F16, Q8_0 };

// A Q8_0 cache's values come in blocks of 32: its rows, and the offsets into them, are whole blocks.
inline constexpr size_t kv_q8_0_block = 32, kv_q8_0_block_bytes = 34;
// The bytes of n values (for Q8_0 a multiple of 32), and the values in n bytes (whole blocks).
inline size_t kv_bytes(KvType type, size_t n) {
    return type == KvType::Q8_0 ? n / kv_q8_0_block * kv_q8_0_block_bytes : n * (type == KvType::F16 ? 2 : 4);
}
inline size_t kv_values(KvType type, size_t bytes) {
    return type == KvType::Q8_0 ? bytes / kv_q8_0_block_bytes * kv_q8_0_block : bytes / (type == KvType::F16 ? 2 : 4);
}
// The bytes of the smallest whole unit: an element, or a Q8_0 block.
inline size_t kv_unit_bytes(KvType type) { return kv_bytes(type, type == KvType::Q8_0 ? kv_q8_0_block : 1); }
inline std::string_view kv_type_name(KvType type) {
    return type == KvType::Q8_0 ? "q8_0" : type == KvType::F16 ? "f16" : "f32";
}
inline KvType parse_kv_type(std::string_view name) {
    for (KvType type : {KvType::F32, KvType::F16, KvType::Q8_0})
        if (name == kv_type_name(type)) return type;
    throw std::invalid_argument("unknown KV cache type '" + std::string(name) + "' (f32, f16, q8_0)");
}

// A table of cache rows (row r at element r * width for the table's width): an address and the
// element type. Implicit from float pointers, so code and tests that hold a float32 table pass it
// as they did; the ops never write through a table they were given to read.
struct CacheRows {
    void* data = nullptr;
    KvType type = KvType::F32;

    CacheRows() = default;
    CacheRows(void* data_, KvType type_) : data(data_), type(type_) {}
    CacheRows(float* rows) : data(rows) {}
    CacheRows(const float* rows) : data(const_cast<float*>(rows)) {}

    // The table from element `elements` on (for Q8_0 the first of a block).
    CacheRows plus(size_t elements) const {
        if (type == KvType::Q8_0 && elements % kv_q8_0_block)
            throw std::logic_error("a Q8_0 KV cache table entered at element " + std::to_string(elements) + ", inside a block");
        return {static_cast<std::byte*>(data) + kv_bytes(type, elements), type};
    }
    float* f32() const {
        if (type != KvType::F32) throw std::logic_error("a " + std::string(kv_type_name(type)) + " KV cache table read as float32");
        return static_cast<float*>(data);
    }
};

}  // namespace twinfer::compute
