#include "models/f32_common.hpp"

#include <stdexcept>

#include "format/quant.hpp"

namespace twinfer {
namespace {

std::string dims_string(const std::vector<uint64_t>& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

}  // namespace

const gguf::TensorInfo& F32WeightLoader::find(const std::string& name, std::vector<uint64_t> dims) const {
    const gguf::TensorInfo* tensor = file_.find_tensor(name);
    if (!tensor) throw std::runtime_error(file_.origin() + ": tensor " + name + " is missing");
    if (tensor->dims != dims)
        throw std::runtime_error(file_.origin() + ": tensor " + name + " has dims " + dims_string(tensor->dims) +
                                 ", the model's hyper-parameters need " + dims_string(dims));
    return *tensor;
}

compute::WeightMatrix F32WeightLoader::matrix(const std::string& name, size_t rows, size_t cols) const {
    try {
        return compute::WeightMatrix::from_tensor(find(name, {cols, rows}));
    } catch (const std::exception& e) {
        throw std::runtime_error(file_.origin() + ": loading " + name + ": " + e.what());
    }
}

std::vector<float> F32WeightLoader::vector(const std::string& name, size_t n) const {
    const gguf::TensorInfo& tensor = find(name, {n});
    std::vector<float> values(n);
    try {
        dequantize(tensor.type, tensor.data, values);
    } catch (const std::exception& e) {
        throw std::runtime_error(file_.origin() + ": loading " + name + ": " + e.what());
    }
    return values;
}

std::vector<float> F32WeightLoader::optional_vector(const std::string& name, size_t n) const {
    return has(name) ? vector(name, n) : std::vector<float>{};
}

void F32Workspace::reserve(compute::Device device, size_t n_tokens, std::span<const size_t> widths) {
    if (n_tokens <= capacity_tokens_ && buffers_.size() == widths.size()) return;
    buffers_.clear();
    for (size_t width : widths) buffers_.emplace_back(device, n_tokens * width * sizeof(float));
    capacity_tokens_ = n_tokens;
}

void check_token_ids(std::span<const Token> ids, size_t n_vocab) {
    if (ids.empty()) throw std::invalid_argument("forward: no tokens given");
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= n_vocab)
            throw std::out_of_range("forward: token " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                                    " is outside the vocabulary of " + std::to_string(n_vocab));
}

Logits widen_logits(const float* values, size_t n_positions, size_t n_vocab) {
    Logits logits;
    logits.n_vocab = n_vocab;
    logits.n_positions = n_positions;
    logits.values.assign(values, values + n_positions * n_vocab);
    return logits;
}

compute::Activations activations_for(const F32Options& options) {
    return options.exact_activations ? compute::Activations::Float32 : compute::Activations::Int8;
}

size_t context_length(const F32Options& options, size_t n_ctx_train) {
    return options.n_ctx == 0 ? n_ctx_train : options.n_ctx;
}

}  // namespace twinfer
