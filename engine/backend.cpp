#include "engine/backend.hpp"

#include <stdexcept>

namespace twinfer {

std::string_view precision_name(Precision p) { return p == Precision::F64 ? "f64" : "f32"; }

std::string_view device_choice_name(DeviceChoice d) {
    switch (d) {
        case DeviceChoice::Auto: return "auto";
        case DeviceChoice::CPU: return "cpu";
        case DeviceChoice::CUDA: return "cuda";
    }
    return "?";
}

Precision parse_precision(std::string_view s) {
    if (s == "f64") return Precision::F64;
    if (s == "f32") return Precision::F32;
    throw std::invalid_argument("unknown precision '" + std::string(s) + "' (expected f64 or f32)");
}

DeviceChoice parse_device_choice(std::string_view s) {
    if (s == "auto") return DeviceChoice::Auto;
    if (s == "cpu") return DeviceChoice::CPU;
    if (s == "cuda" || s == "gpu") return DeviceChoice::CUDA;
    throw std::invalid_argument("unknown device '" + std::string(s) + "' (expected auto, cpu or cuda)");
}

bool cuda_device_available() { return false; }

ModelBackend make_backend(std::shared_ptr<const gguf::File> file, const BackendOptions& options) {
    if (options.precision == Precision::F64) {
        if (options.device == DeviceChoice::CUDA)
            throw std::invalid_argument("the float64 reference runs on the CPU only (--precision f64 with --device cuda)");
        return GPTModel::from_gguf(*file, options.n_ctx);
    }
    // The float32 models join here as they land; until then f32 is served by the reference.
    return GPTModel::from_gguf(*file, options.n_ctx);
}

std::string backend_description(const ModelBackend& backend, const BackendOptions&) {
    return std::visit([](const auto&) -> std::string { return "GPTModel (f64, cpu)"; }, backend);
}

}  // namespace twinfer
