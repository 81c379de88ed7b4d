#pragma once
// The decoder architectures TransformerModel (float32) and GPTModel (float64) run from a
// description: what differs between Qwen, Gemma 3, Phi-3, GPT-NeoX, ... is data here, not code in
// the models. An ArchitectureDescription says what the architecture always is (norm kind and
// placement, feed-forward kind, RoPE layout, per-layer patterns); TransformerSpec is one model's
// resolved plan, its hyper-parameters from the GGUF metadata laid over the description, with one
// LayerSpec per layer. Adding an architecture is one entry in architecture.cpp's table
// (docs/adding-an-architecture.md).
#include <string>
#include <string_view>
#include <vector>

#include "format/gguf.hpp"

namespace twinfer {

enum class NormKind { RMSNorm, LayerNorm };   // LayerNorm: with a bias where the file has one
// Sequential: x += attn(norm1(x)); x += ffn(norm2(x)). Parallel (GPT-NeoX): x += attn(norm1(x)) +
// ffn(norm2(x)), both from the same x.
enum class ResidualKind { Sequential, Parallel };
// SwiGLU: silu(gate) * up; GeGLU: gelu_tanh(gate) * up; SwiGLUOai: gpt-oss's clamped SwiGLU,
// g sigmoid(1.702 g) (u + 1) with g = min(gate, 7), u = clamp(up, -7, 7) (compute::swiglu_oai);
// the two GELUs: a plain up/down MLP. A fused gate+up matrix (Phi-3's ffn_up of 2F rows) holds
// the gate in its first half. With experts, the experts' activation (SwiGLU or SwiGLUOai).
enum class FeedForwardKind { SwiGLU, GeGLU, SwiGLUOai, GeluTanh, GeluErf };
enum class RopeKind { Normal, NeoX };         // pairs (2i, 2i+1) or (i, i + n_rot/2)

struct ArchitectureDescription {
    std::string_view name;                    // general.architecture
    NormKind norm = NormKind::RMSNorm;
    ResidualKind residual = ResidualKind::Sequential;
    bool residual_from_metadata = false;      // <arch>.use_parallel_residual overrides `residual`
    FeedForwardKind feed_forward = FeedForwardKind::SwiGLU;
    RopeKind rope = RopeKind::NeoX;
    bool post_norms = false;                  // sandwich: attention and FFN outputs normalized before the residual add
    bool qk_norm = false;                     // per-head norm of Q and K before RoPE
    bool embedding_scale = false;             // embeddings multiplied by sqrt(n_embd)
    // Sliding-window layers in groups of swa_group: the last of each group attends to the whole
    // context, the others to the window (<arch>.attention.sliding_window; no window: all global).
    // 0: no sliding window unless the metadata sets a pattern.
    int swa_group = 0;
    // The RoPE of those windowed layers: false, the short-context one (rope.freq_base_swa, default
    // 10000, no scaling: Gemma 3); true, the global layers' (rope.freq_base_swa where the file
    // has it, else rope.freq_base; YaRN included: gpt-oss, as llama.cpp and transformers).
    bool swa_rope_scaled = false;
    // Every no_rope_interval-th layer (1-based) has no positional encoding (NoPE); 0: none.
    int no_rope_interval = 0;
    bool mixture_of_experts = false;          // ffn_gate_inp + ffn_{gate,up,down}_exps, top-k routing
    // gpt-oss: each head's attention sink (attn_sinks.weight, [n_head]: a logit in every softmax's
    // denominator that weighs no value), and biases required where elsewhere optional: the
    // attention output's, the router's and every expert's (ffn_{gate,up,down}_exps.bias).
    bool attention_sinks = false;
    bool required_biases = false;
    // The sequential block's second norm (before the FFN): "ffn_norm", or gpt-oss's
    // "post_attention_norm" (the converter's name for the same norm, transformers'
    // post_attention_layernorm).
    std::string_view ffn_norm = "ffn_norm";
    // YaRN's ramp between the corrected dimensions rounded outwards (floor, ceil), as llama.cpp
    // always does and transformers does unless the config says "truncate": false, which gpt-oss's
    // does (OpenAI's reference rotary embedding does not round).
    bool yarn_truncate = true;
};

// The architectures TransformerModel knows, by general.architecture; nullptr if none.
const ArchitectureDescription* find_architecture(std::string_view name);
// Their names, comma-separated (for the error an unknown architecture gets).
std::string transformer_architecture_names();

struct LayerSpec {
    size_t window = 0;          // positions a token attends to (itself included); 0: all
    bool rope = true;           // false: NoPE layer
    double rope_freq_base = 10000.0;
    double rope_position_scale = 1.0;   // linear RoPE scaling: positions times this
    bool rope_scaled = true;            // false: a local layer keeps the short-context RoPE (no YaRN, LongRoPE)
};

struct TransformerSpec {
    const ArchitectureDescription* description = nullptr;
    NormKind norm = NormKind::RMSNorm;
    ResidualKind residual = ResidualKind::Sequential;
    FeedForwardKind feed_forward = FeedForwardKind::SwiGLU;
    RopeKind rope = RopeKind::NeoX;
    bool post_norms = false;
    bool qk_norm = false;
    double embedding_scale = 1.0;
    double attention_scale = 0;          // scale of q.k (1/sqrt(head_dim))
    double final_logit_softcap = 0;      // logits = c tanh(logits / c); 0: none
    int n_expert = 0, n_expert_used = 0, n_ff_expert = 0;
    bool normalize_expert_weights = true;   // the top-k routing weights renormalized to sum to 1
    std::vector<LayerSpec> layers;
};

}  // namespace twinfer
