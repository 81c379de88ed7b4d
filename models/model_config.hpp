#pragma once
// What a model is, independent of where its weights live: the hyper-parameters every
// implementation (float64 reference, float32 CPU/CUDA) reads. Filled from GGUF metadata or from a
// Hugging Face config.json.
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "format/gguf.hpp"
#include "models/architecture.hpp"

namespace twinfer {

// Transformer: every architecture of architecture.hpp's table, run from its TransformerSpec.
enum class Architecture { GPT2, Llama, Transformer };

// How RoPE pairs the dimensions of a head. Normal: (x[2i], x[2i+1]) — GGUF Llama files, whose
// converter permuted Q/K for it. NeoX: (x[i], x[i + n_rot/2]) — Hugging Face checkpoints.
enum class RopeLayout { Normal, NeoX };

struct RopeScaling {
    enum class Kind { None, Linear, Llama3 };
    Kind kind = Kind::None;
    double factor = 1.0;             // Linear: positions divided by it; Llama3: low-frequency divisor
    double low_freq_factor = 1.0;    // Llama3 only
    double high_freq_factor = 4.0;   // Llama3 only
    int original_context = 8192;     // Llama3 only
};

struct ModelConfig {
    Architecture architecture = Architecture::Llama;
    std::string architecture_name;   // as the file says: "llama", "gpt2", "gemma3", ...
    int n_vocab = 0;
    int n_ctx_train = 0;             // trained context length
    int n_embd = 0;
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;               // < n_head: grouped-query attention
    int n_ff = 0;
    int head_dim = 0;                // n_embd / n_head unless the file says otherwise
    int n_rot = 0;                   // rotated dimensions per head (Llama)
    double norm_eps = 1e-5;          // RMSNorm (Llama) or LayerNorm (GPT-2) epsilon
    double rope_freq_base = 10000.0;
    RopeLayout rope_layout = RopeLayout::Normal;
    RopeScaling rope_scaling;
    TransformerSpec transformer;     // Architecture::Transformer only

    int n_embd_kv() const { return n_head_kv * head_dim; }

    // Throws gguf::FormatError naming the key for a missing or inconsistent hyper-parameter, and
    // std::runtime_error naming the architecture for one twinfer does not implement.
    static ModelConfig from_gguf(const gguf::File& file);
    // Hugging Face config.json (model_type "gpt2" or "llama"). Checkpoints use the NeoX layout.
    static ModelConfig from_hf_config(const nlohmann::json& config);

    void validate() const;  // throws std::runtime_error naming the first inconsistent field
};

}  // namespace twinfer
