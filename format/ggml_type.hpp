#pragma once
// Tensor element types as GGUF numbers them (ggml's enum ggml_type), and their block geometry.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace twinfer {

enum class GGMLType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30, MXFP4 = 39,
};

struct GGMLTypeTraits {
    std::string_view name;
    size_t block_size;   // elements per block (1 for plain types)
    size_t type_size;    // bytes per block
    bool supported;      // twinfer can dequantize it
};

// Throws std::runtime_error naming the id if the type is unknown to ggml.
const GGMLTypeTraits& type_traits(GGMLType type);
bool is_known_type(uint32_t id);
std::string_view type_name(GGMLType type);

// Bytes taken by n_elements of `type`; throws if n_elements is not a multiple of the block size
// or the product overflows.
size_t row_size_bytes(GGMLType type, uint64_t n_elements);

}  // namespace twinfer
