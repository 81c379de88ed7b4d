#pragma once
// The rows of a KV cache as the attention ops read and write them: float32, or float16 (half the
// bytes a decode step reads at long contexts, llama.cpp's default cache type; each stored value
// rounded to 11 significant bits, the accuracy `twinfer verify` measures).
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace twinfer::compute {

enum class KvType { F32, F16 };

inline size_t kv_element_bytes(KvType type) { return type == KvType::F16 ? 2 : 4; }
inline std::string_view kv_type_name(KvType type) { return type == KvType::F16 ? "f16" : "f32"; }
inline KvType parse_kv_type(std::string_view name) {
    for (KvType type : {KvType::F32, KvType::F16})
        if (name == kv_type_name(type)) return type;
    throw std::invalid_argument("unknown KV cache type '" + std::string(name) + "' (f32, f16)");
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

    // The table from element `elements` on.
    CacheRows plus(size_t elements) const {
        return {static_cast<std::byte*>(data) + elements * kv_element_bytes(type), type};
    }
    float* f32() const {
        if (type != KvType::F32) throw std::logic_error("a float16 KV cache table read as float32");
        return static_cast<float*>(data);
    }
};

}  // namespace twinfer::compute
