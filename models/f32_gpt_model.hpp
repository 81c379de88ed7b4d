#pragma once
// F32GPTModel: the GPT-2 family (LayerNorm, learned positions, fused QKV with biases, GELU) with
// float32 activations and a KV cache. The weights stay in the file's block format inside the
// GGUF mapping; compute/ dequantizes them inside its products.
#include <memory>
#include <span>
#include <vector>

#include "compute/attention.hpp"
#include "compute/context.hpp"
#include "compute/matmul.hpp"
#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/inference.hpp"
#include "models/kv_cache.hpp"
#include "models/model_config.hpp"

namespace twinfer {

class F32GPTModel {
public:
    // Throws std::runtime_error naming a missing or misshapen tensor, or one whose type has no
    // kernel, and for an n_ctx beyond the position embeddings the file has.
    static F32GPTModel load(std::shared_ptr<const gguf::File> file, const F32Options& options = {});

    // As F32LlamaModel::forward and forward_greedy.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last);
    Token forward_greedy(Token token);
    const ModelConfig& config() const { return config_; }
    size_t n_past() const { return cache_.length(slot_); }
    size_t n_ctx() const { return cache_.n_ctx(); }
    void clear_cache() { cache_.clear(slot_); }

    const F32Options& options() const { return options_; }
    void set_observer(F32Observer observer) { observer_ = std::move(observer); }

private:
    struct Layer {
        DeviceFloats attn_norm, attn_norm_bias;                   // [E]
        compute::WeightMatrix wq, wk, wv;                         // [E, E] each: row blocks of attn_qkv.weight [3E, E]
        DeviceFloats bq, bk, bv;                                  // [E] each, from attn_qkv.bias [3E]
        compute::WeightMatrix wo;                                 // [E, E]
        DeviceFloats bo;                                          // [E]
        DeviceFloats ffn_norm, ffn_norm_bias;                     // [E]
        compute::WeightMatrix w_up, w_down;                       // [F, E], [E, F]
        DeviceFloats b_up, b_down;                                // [F], [E]
    };

    F32GPTModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options);
    void project(const compute::WeightMatrix& w, const DeviceFloats& bias, const float* x, size_t n_tokens, float* y);
    void reserve_workspace(size_t n_tokens);
    // As F32LlamaModel's; positions: the T positions' ids into position_embd_, in device memory.
    void enqueue_forward(const int32_t* ids, const int32_t* positions, size_t T, size_t p0,
                         const int32_t* device_position, size_t n_out);
    void decode(Token token, bool greedy);

    std::shared_ptr<const gguf::File> file_;   // the mapping the weight matrices point into (CPU)
    ModelConfig config_;
    F32Options options_;
    compute::Context ctx_;
    std::vector<compute::Buffer> device_weights_;                 // the matrices' copies on another device
    compute::WeightMatrix token_embd_, position_embd_, output_;   // [V, E], [n_ctx_train, E], [V, E] (tied: token_embd_)
    std::vector<Layer> layers_;
    DeviceFloats output_norm_, output_norm_bias_;                 // [E]
    compute::AttentionShape attention_shape_;
    KvCache cache_;
    size_t slot_ = 0;
    std::vector<int32_t> positions_;
    F32Workspace workspace_;
    F32Observer observer_;
    compute::Buffer ids_, positions_on_device_;                   // this call's token ids and positions, on the device
    F32DecodeStep decode_step_;
};

static_assert(GPTInference<F32GPTModel>);

}  // namespace twinfer
