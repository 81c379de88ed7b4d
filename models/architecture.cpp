#include "models/architecture.hpp"

#include <array>

namespace twinfer {
namespace {

// Each entry follows the architecture's Hugging Face modeling file and llama.cpp's graph of it.
constexpr std::array architectures{
    ArchitectureDescription{.name = "qwen2"},
    ArchitectureDescription{.name = "qwen3", .qk_norm = true},
    ArchitectureDescription{.name = "qwen3moe", .qk_norm = true, .mixture_of_experts = true},
    ArchitectureDescription{.name = "gemma3", .feed_forward = FeedForwardKind::GeGLU, .post_norms = true,
                            .qk_norm = true, .embedding_scale = true, .swa_group = 6},
    // Fused QKV and gate+up; a sliding window, where the file gives one, on every layer.
    ArchitectureDescription{.name = "phi3"},
    ArchitectureDescription{.name = "smollm3", .rope = RopeKind::Normal, .no_rope_interval = 4},
    ArchitectureDescription{.name = "stablelm", .norm = NormKind::LayerNorm, .residual_from_metadata = true},
    ArchitectureDescription{.name = "gptneox", .norm = NormKind::LayerNorm, .residual = ResidualKind::Parallel,
                            .residual_from_metadata = true, .feed_forward = FeedForwardKind::GeluErf},
    ArchitectureDescription{.name = "starcoder2", .norm = NormKind::LayerNorm, .feed_forward = FeedForwardKind::GeluTanh},
    // Sliding (window 128) and full layers alternating, the first sliding; every layer YaRN.
    ArchitectureDescription{.name = "gpt-oss", .feed_forward = FeedForwardKind::SwiGLUOai, .swa_group = 2,
                            .swa_rope_scaled = true, .mixture_of_experts = true, .attention_sinks = true,
                            .required_biases = true, .ffn_norm = "post_attention_norm", .yarn_truncate = false},
};

}  // namespace

const ArchitectureDescription* find_architecture(std::string_view name) {
    for (const ArchitectureDescription& d : architectures)
        if (d.name == name) return &d;
    return nullptr;
}

std::string transformer_architecture_names() {
    std::string names;
    for (const ArchitectureDescription& d : architectures) names += (names.empty() ? "" : ", ") + std::string(d.name);
    return names;
}

}  // namespace twinfer
