#include "models/weights_source.hpp"

#include <cstring>

#include "format/quant.hpp"

namespace twinfer {
namespace {

std::string join_dims(const std::vector<uint64_t>& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

}  // namespace

std::vector<std::string> GGUFWeights::names() const {
    std::vector<std::string> names;
    for (const auto& t : file_.tensors()) names.push_back(t.name);
    return names;
}

std::vector<uint64_t> GGUFWeights::shape(std::string_view name) const {
    const auto& dims = file_.tensor(name).dims;
    return {dims.rbegin(), dims.rend()};
}

std::vector<double> GGUFWeights::read(std::string_view name) const {
    const gguf::TensorInfo& t = file_.tensor(name);
    std::vector<double> values(t.n_elements);
    // F64 is a storage type, not a quantization: quant.hpp's dequantize does not take it.
    if (t.type == GGMLType::F64) {
        std::memcpy(values.data(), t.data.data(), values.size() * sizeof(double));
        return values;
    }
    try {
        dequantize(t.type, t.data, std::span<double>(values));
    } catch (const std::exception& e) {
        throw std::runtime_error(file_.origin() + ": loading tensor " + t.name + " (" + std::string(type_name(t.type)) + "): " + e.what());
    }
    return values;
}

std::string GGUFWeights::shape_string(const std::vector<uint64_t>& row_major) const {
    return "ggml dims " + join_dims({row_major.rbegin(), row_major.rend()});
}

std::vector<std::string> SafetensorsWeights::names() const {
    std::vector<std::string> names;
    for (const auto& t : file_.tensors()) names.push_back(t.name);
    return names;
}

std::string SafetensorsWeights::shape_string(const std::vector<uint64_t>& row_major) const {
    return "shape " + join_dims(row_major);
}

}  // namespace twinfer
