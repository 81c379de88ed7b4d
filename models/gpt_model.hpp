#pragma once
// GPTModel: the float64 CPU reference for the GPT-2 and Llama families and every architecture
// TransformerModel runs (models/architecture.hpp). It exists to be right,
// not fast: every weight is dequantized to double at load, each call recomputes the whole token
// history (no KV cache), and each step is a plain loop citing its formula (BLAS dgemm does the
// matrix products). The float32 models, quantized files and ports are measured against it.
#include <cstddef>
#include <filesystem>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "format/gguf.hpp"
#include "models/inference.hpp"
#include "models/model_config.hpp"
#include "models/tensor.hpp"

namespace twinfer {

class GPTModel {
public:
    // Named intermediates of a forward pass (llama.cpp's names: "attn_norm", "ffn_out", ...), each
    // a row-major [T, width] tensor over the whole sequence; layer is -1 outside the blocks.
    using Observer = std::function<void(std::string_view name, int layer, std::span<const double> values)>;

    // n_ctx = 0: the trained context. Throws std::runtime_error naming a missing tensor, or one
    // whose shape disagrees with the metadata (both shapes given), or an unknown architecture.
    static GPTModel from_gguf(const gguf::File& file, size_t n_ctx = 0);
    // A Hugging Face checkpoint folder: model.safetensors and config.json.
    static GPTModel from_safetensors(const std::filesystem::path& dir, size_t n_ctx = 0);

    // Appends ids to the history and recomputes it all. Returns the logits of the last position,
    // or (LogitsMode::All) of each position fed in this call. Throws ContextOverflow (history
    // unchanged) when the history would exceed n_ctx(), std::out_of_range for an id outside the
    // vocabulary, std::invalid_argument for an empty ids.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last);
    const ModelConfig& config() const { return config_; }
    size_t n_past() const { return history_.size(); }
    size_t n_ctx() const { return n_ctx_; }
    void clear_cache() { history_.clear(); }
    // Forgets the tokens from n on. Throws std::out_of_range if n is beyond the history.
    void truncate_cache(size_t n);

    void set_observer(Observer observer) { observer_ = std::move(observer); }

    // The weights, float64, in the shapes the forward pass uses: matrices row-major [out, in]
    // (a GGUF tensor's dims reversed; a PyTorch Linear's weight as is). Empty tensors are absent.
    struct Layer {
        Tensor<double> attn_norm, attn_norm_bias;            // [E]
        Tensor<double> wq, wk, wv, wo;                       // [H*D, E], [Hkv*D, E], [Hkv*D, E], [E, H*D]
        Tensor<double> bq, bk, bv, bo;                       // [H*D], [Hkv*D], [Hkv*D], [E]
        Tensor<double> ffn_norm, ffn_norm_bias;              // [E]
        Tensor<double> w_gate, w_up, w_down;                 // [F, E], [F, E], [E, F] (no gate for GPT-2)
        Tensor<double> b_up, b_down;                         // [F], [E]
        Tensor<double> q_norm, k_norm;                       // [D] (QK-norm)
        Tensor<double> attn_post_norm, ffn_post_norm;        // [E] (sandwich norms)
        Tensor<double> attn_sinks;                           // [H] (gpt-oss)
        Tensor<double> router, router_bias;                  // [n_expert, E], [n_expert] (mixture of experts)
        std::vector<Tensor<double>> expert_gate, expert_up;  // n_expert x [F_e, E]
        std::vector<Tensor<double>> expert_down;             // n_expert x [E, F_e]
        Tensor<double> expert_gate_bias, expert_up_bias;     // [n_expert, F_e] (gpt-oss)
        Tensor<double> expert_down_bias;                     // [n_expert, E] (gpt-oss)
    };
    struct Weights {
        Tensor<double> token_embd;                           // [V, E]
        Tensor<double> position_embd;                        // [n_ctx_train, E] (GPT-2)
        std::vector<Layer> layers;
        Tensor<double> output_norm, output_norm_bias;        // [E]
        Tensor<double> output;                               // [V, E]; empty: tied to token_embd
        std::vector<double> rope_inv_freq;                   // [n_rot / 2] (Llama): theta_i = pos * inv_freq[i]
    };

    GPTModel(ModelConfig config, Weights weights, size_t n_ctx);

private:
    Tensor<double> gpt2_forward(std::span<const Token> ids) const;
    Tensor<double> llama_forward(std::span<const Token> ids) const;
    Tensor<double> transformer_forward(std::span<const Token> ids) const;
    Tensor<double> transformer_feed_forward(const Layer& layer, const Tensor<double>& h) const;
    void observe(std::string_view name, int layer, const Tensor<double>& t) const;

    ModelConfig config_;
    Weights weights_;
    size_t n_ctx_ = 0;
    std::vector<Token> history_;
    Observer observer_;
};

}  // namespace twinfer
