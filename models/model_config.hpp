#pragma once
// What a model is, independent of where its weights live: the hyper-parameters every
// implementation (float64 reference, float32 CPU/CUDA) reads. Filled from GGUF metadata or from a
// Hugging Face config.json.
#include <string>
#include <vector>

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
    enum class Kind { None, Linear, Llama3, Yarn, LongRope };
    Kind kind = Kind::None;
    double factor = 1.0;             // Linear: positions divided by it; Llama3: low-frequency divisor;
                                     // YaRN: the interpolated frequencies' divisor
    double low_freq_factor = 1.0;    // Llama3 only
    double high_freq_factor = 4.0;   // Llama3 only
    int original_context = 8192;     // Llama3, YaRN, LongRoPE: the context the model was trained on
    double beta_fast = 32, beta_slow = 1;   // YaRN: rotations per original context bounding the ramp
    bool truncate = true;                   // YaRN: the ramp's ends rounded (ArchitectureDescription::yarn_truncate)
    // YaRN and LongRoPE: the magnitude cos and sin are multiplied by (llama.cpp's attn_factor, HF's
    // attention_scaling), resolved from the file's keys and the defaults (model_config.cpp).
    double attn_factor = 1.0;
    // LongRoPE: rope_factors_short/long.weight, [n_rot/2] divisors of the pairs' frequencies each.
    std::vector<double> short_factors, long_factors;
};

// The RoPE of one rotating layer at a context of n_ctx positions per sequence, beyond its base: the
// divisor of each pair's frequency (empty: none) and the magnitude of the rotated dimensions.
struct RopeFrequencyScaling {
    std::vector<double> divisors;
    double magnitude = 1.0;
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

// YaRN and LongRoPE as per-pair divisors and a magnitude (Linear and Llama3 stay where they were:
// positions scaled, rope_freqs.weight). n_ctx (per sequence) picks LongRoPE's set: the long factors
// when it exceeds the original context, else the short ones (llama.cpp's get_rope_factors; HF picks
// by the length of the sequence instead, which is the same choice when the context is the sequence).
// Every scaled layer rotates with the model's rope_freq_base (a local layer, !LayerSpec::rope_scaled,
// keeps its own base and takes no scaling).
RopeFrequencyScaling rope_frequency_scaling(const ModelConfig& c, size_t n_ctx);

}  // namespace twinfer
