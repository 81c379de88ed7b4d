#include "format/ggml_type.hpp"

#include <limits>
#include <stdexcept>
#include <string>

namespace twinfer {
namespace {

struct TypeEntry {
    GGMLType type;
    GGMLTypeTraits traits;
};

// Block geometry from ggml's type_traits (ggml.c) / gguf-py's GGML_QUANT_SIZES.
constexpr TypeEntry kTypes[] = {
    {GGMLType::F32, {"F32", 1, 4, true}},
    {GGMLType::F16, {"F16", 1, 2, true}},
    {GGMLType::Q4_0, {"Q4_0", 32, 18, true}},
    {GGMLType::Q4_1, {"Q4_1", 32, 20, true}},
    {GGMLType::Q5_0, {"Q5_0", 32, 22, true}},
    {GGMLType::Q5_1, {"Q5_1", 32, 24, true}},
    {GGMLType::Q8_0, {"Q8_0", 32, 34, true}},
    {GGMLType::Q8_1, {"Q8_1", 32, 36, false}},
    {GGMLType::Q2_K, {"Q2_K", 256, 84, true}},
    {GGMLType::Q3_K, {"Q3_K", 256, 110, true}},
    {GGMLType::Q4_K, {"Q4_K", 256, 144, true}},
    {GGMLType::Q5_K, {"Q5_K", 256, 176, true}},
    {GGMLType::Q6_K, {"Q6_K", 256, 210, true}},
    {GGMLType::Q8_K, {"Q8_K", 256, 292, false}},
    {GGMLType::I8, {"I8", 1, 1, false}},
    {GGMLType::I16, {"I16", 1, 2, false}},
    {GGMLType::I32, {"I32", 1, 4, false}},
    {GGMLType::I64, {"I64", 1, 8, false}},
    {GGMLType::F64, {"F64", 1, 8, false}},
    {GGMLType::BF16, {"BF16", 1, 2, true}},
    {GGMLType::MXFP4, {"MXFP4", 32, 17, true}},
};

const TypeEntry* find_type(uint32_t id) {
    for (const TypeEntry& entry : kTypes)
        if (static_cast<uint32_t>(entry.type) == id) return &entry;
    return nullptr;
}

}  // namespace

const GGMLTypeTraits& type_traits(GGMLType type) {
    const uint32_t id = static_cast<uint32_t>(type);
    const TypeEntry* entry = find_type(id);
    if (!entry) throw std::runtime_error("unknown ggml type id " + std::to_string(id));
    return entry->traits;
}

bool is_known_type(uint32_t id) { return find_type(id) != nullptr; }

std::string_view type_name(GGMLType type) { return type_traits(type).name; }

size_t row_size_bytes(GGMLType type, uint64_t n_elements) {
    const GGMLTypeTraits& traits = type_traits(type);
    if (n_elements % traits.block_size != 0)
        throw std::runtime_error(std::string(traits.name) + ": " + std::to_string(n_elements) +
                                 " elements is not a multiple of the block size " +
                                 std::to_string(traits.block_size));
    const uint64_t n_blocks = n_elements / traits.block_size;
    if (n_blocks > std::numeric_limits<size_t>::max() / traits.type_size)
        throw std::runtime_error(std::string(traits.name) + ": " + std::to_string(n_elements) +
                                 " elements overflow the byte size");
    return static_cast<size_t>(n_blocks) * traits.type_size;
}

}  // namespace twinfer
