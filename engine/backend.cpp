#include "engine/backend.hpp"

#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

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

bool cuda_device_available() {
#ifdef TWINFER_WITH_CUDA
    return compute::cuda::device_count() > 0;
#else
    return false;
#endif
}

namespace {
compute::Device resolve_device(DeviceChoice choice) {
    switch (choice) {
        case DeviceChoice::CPU: return compute::Device::CPU;
        case DeviceChoice::Auto: return cuda_device_available() ? compute::Device::CUDA : compute::Device::CPU;
        case DeviceChoice::CUDA:
#ifndef TWINFER_WITH_CUDA
            throw std::runtime_error("--device cuda: this twinfer was built without CUDA (rebuild with nvcc installed, -DTWINFER_CUDA=ON)");
#else
            if (!cuda_device_available()) throw std::runtime_error("--device cuda: " + compute::cuda::describe_device());
            return compute::Device::CUDA;
#endif
    }
    return compute::Device::CPU;
}
// The trained context when its KV cache fits in half of the free memory, else the largest
// multiple of 1024 that does (users of long-context models would otherwise get a failed
// allocation before their first token). An explicit --ctx-size is always honoured.
size_t default_context(const ModelConfig& config, compute::KvType cache_type) {
    const size_t trained = static_cast<size_t>(config.n_ctx_train);
    const size_t bytes_per_token = KvCache::bytes(config.n_layer, 1, 1, config.n_embd_kv(), cache_type);
    const long pages = ::sysconf(_SC_AVPHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0) return trained;
    const size_t budget = static_cast<size_t>(pages) * static_cast<size_t>(page_size) / 2;
    if (trained * bytes_per_token <= budget) return trained;
    return std::max<size_t>(1024, budget / bytes_per_token / 1024 * 1024);
}

}  // namespace

ModelBackend make_backend(std::shared_ptr<const gguf::File> file, const BackendOptions& options) {
    if (options.tensor_parallel < 1)
        throw std::invalid_argument("--tensor-parallel must be at least 1, got " + std::to_string(options.tensor_parallel));
    if (options.precision == Precision::F64) {
        if (options.tensor_parallel > 1)
            throw std::invalid_argument("the float64 reference runs on one CPU (--precision f64 with --tensor-parallel)");
        if (options.device == DeviceChoice::CUDA)
            throw std::invalid_argument("the float64 reference runs on the CPU only (--precision f64 with --device cuda)");
        if (options.cache_type != compute::KvType::F32)
            throw std::invalid_argument("the float64 reference keeps its cache in float64 (--precision f64 with --cache-type " +
                                        std::string(compute::kv_type_name(options.cache_type)) + ")");
        return GPTModel::from_gguf(*file, options.n_ctx);
    }
    F32Options f32;
    const ModelConfig config = ModelConfig::from_gguf(*file);
    f32.n_ctx = options.n_ctx ? options.n_ctx : default_context(config, options.cache_type);
    f32.cache_type = options.cache_type;
    f32.n_threads = options.n_threads;
    f32.max_workspace_bytes = options.max_workspace_bytes;
    f32.max_kv_bytes = options.max_kv_bytes;
    f32.activations = options.activations;
    f32.device = resolve_device(options.device);
    switch (config.architecture) {
        case Architecture::GPT2:
            if (options.tensor_parallel > 1)
                throw std::invalid_argument("--tensor-parallel does not split " + config.architecture_name +
                                            " models (GPT-2's fused attention weights)");
            return F32GPTModel::load(std::move(file), f32);
        case Architecture::Llama:
            if (options.tensor_parallel > 1) return TensorParallelLlamaModel::load(std::move(file), options.tensor_parallel, f32);
            return F32LlamaModel::load(std::move(file), f32);
        case Architecture::Transformer:
            if (options.tensor_parallel > 1)
                return TensorParallelTransformerModel::load(std::move(file), options.tensor_parallel, f32);
            return TransformerModel::load(std::move(file), f32);
    }
    throw std::runtime_error("no float32 model for architecture " + config.architecture_name);
}

std::string backend_description(const ModelBackend& backend) {
    return std::visit(
        [&](const auto& model) -> std::string {
            using M = std::decay_t<decltype(model)>;
            if constexpr (std::is_same_v<M, GPTModel>) {
                return "GPTModel (f64, cpu)";
            } else {
                const char* name = std::is_same_v<M, F32LlamaModel>              ? "F32LlamaModel"
                                   : std::is_same_v<M, F32GPTModel>              ? "F32GPTModel"
                                   : std::is_same_v<M, TransformerModel>         ? "TransformerModel"
                                   : std::is_same_v<M, TensorParallelLlamaModel> ? "TensorParallelLlamaModel"
                                                                                 : "TensorParallelTransformerModel";
                std::string ranks;
                if constexpr (requires { model.n_ranks(); }) ranks = ", " + std::to_string(model.n_ranks()) + " ranks";
                return std::string(name) + " (f32, " + std::string(compute::device_name(model.options().device)) + ranks + ", " +
                       std::string(compute::activations_name(activations_for(model.options()))) + " activations" +
                       (model.options().cache_type == compute::KvType::F32
                            ? std::string()
                            : ", " + std::string(compute::kv_type_name(model.options().cache_type)) + " KV cache") +
                       ")";
            }
        },
        backend);
}

}  // namespace twinfer
