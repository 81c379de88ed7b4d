#pragma once
// A checkpoint's tensors by name, widened to float64, whichever file holds them: a GGUF file
// (any type format/quant.hpp dequantizes, and F64) or a safetensors file (F64, F32, F16, BF16).
// Shapes are row-major, outermost first — a GGUF tensor's ggml dims reversed, a PyTorch
// tensor's shape as is — so a loader checks both formats the same way; messages about a GGUF
// tensor still print its dims in ggml order, the order its tools show.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "format/gguf.hpp"
#include "format/safetensors.hpp"

namespace twinfer {

class WeightsSource {
public:
    virtual ~WeightsSource() = default;
    virtual const std::string& origin() const = 0;
    virtual std::vector<std::string> names() const = 0;
    virtual bool has(std::string_view name) const = 0;
    // Row-major shape; throws std::runtime_error naming a missing tensor.
    virtual std::vector<uint64_t> shape(std::string_view name) const = 0;
    // The elements as float64; throws std::runtime_error naming the tensor and the problem.
    virtual std::vector<double> read(std::string_view name) const = 0;
    // How this format writes a (row-major) shape in messages.
    virtual std::string shape_string(const std::vector<uint64_t>& row_major) const = 0;
};

class GGUFWeights final : public WeightsSource {
public:
    explicit GGUFWeights(const gguf::File& file) : file_(file) {}
    const std::string& origin() const override { return file_.origin(); }
    std::vector<std::string> names() const override;
    bool has(std::string_view name) const override { return file_.find_tensor(name) != nullptr; }
    std::vector<uint64_t> shape(std::string_view name) const override;
    std::vector<double> read(std::string_view name) const override;
    std::string shape_string(const std::vector<uint64_t>& row_major) const override;

private:
    const gguf::File& file_;
};

class SafetensorsWeights final : public WeightsSource {
public:
    explicit SafetensorsWeights(const safetensors::File& file) : file_(file) {}
    const std::string& origin() const override { return file_.origin(); }
    std::vector<std::string> names() const override;
    bool has(std::string_view name) const override { return file_.find_tensor(name) != nullptr; }
    std::vector<uint64_t> shape(std::string_view name) const override { return file_.tensor(name).shape; }
    std::vector<double> read(std::string_view name) const override { return file_.to_double(file_.tensor(name)); }
    std::string shape_string(const std::vector<uint64_t>& row_major) const override;

private:
    const safetensors::File& file_;
};

}  // namespace twinfer
