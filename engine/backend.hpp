#pragma once
// ModelBackend: the models as one closed set, dispatched statically. Which alternative a file
// gets is decided by make_backend() from the file's architecture and the user's precision and
// device (docs/choosing-a-model.md).
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "format/gguf.hpp"
#include "models/f32_gpt_model.hpp"
#include "models/f32_llama_model.hpp"
#include "models/gpt_model.hpp"
#include "models/inference.hpp"
#include "models/tp_model.hpp"
#include "models/transformer_model.hpp"

namespace twinfer {

using ModelBackend = std::variant<GPTModel, F32GPTModel, F32LlamaModel, TensorParallelLlamaModel, TransformerModel,
                                  TensorParallelTransformerModel>;

static_assert(GPTInference<GPTModel> && GPTInference<F32GPTModel> && GPTInference<F32LlamaModel> &&
              GPTInference<TensorParallelLlamaModel> && GPTInference<TransformerModel> &&
              GPTInference<TensorParallelTransformerModel>);

enum class Precision { F64, F32 };
enum class DeviceChoice { Auto, CPU, CUDA };

std::string_view precision_name(Precision p);
std::string_view device_choice_name(DeviceChoice d);
Precision parse_precision(std::string_view s);        // throws std::invalid_argument
DeviceChoice parse_device_choice(std::string_view s); // throws std::invalid_argument

struct BackendOptions {
    std::filesystem::path model;
    Precision precision = Precision::F32;
    DeviceChoice device = DeviceChoice::Auto;
    size_t n_ctx = 0;            // 0: the model's trained context
    int n_threads = 0;           // 0: every core
    std::optional<compute::Activations> activations = std::nullopt;   // unset: the device's default (models/f32_common.hpp)
    compute::KvType cache_type = compute::KvType::F32;                 // the float32 models' KV cache elements
    size_t max_workspace_bytes = 0;   // the float32 models' F32Options::max_workspace_bytes (0: no limit)
    size_t max_kv_bytes = 0;          // the float32 models' F32Options::max_kv_bytes (0: the device's memory)
    // > 1: a Llama-family or TransformerModel model split over this many ranks
    // (TensorParallelModel): GPUs over NCCL on cuda, simulated ranks on cpu.
    int tensor_parallel = 1;
};

// True when this build has CUDA and a usable GPU is present.
bool cuda_device_available();

ModelBackend make_backend(std::shared_ptr<const gguf::File> file, const BackendOptions& options);
std::string backend_description(const ModelBackend& backend);

}  // namespace twinfer
