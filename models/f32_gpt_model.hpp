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

class F32GPTModel : public F32ModelBase<F32GPTModel> {
public:
    // Throws std::runtime_error naming a missing or misshapen tensor, or one whose type has no
    // kernel, and for an n_ctx beyond the position embeddings the file has.
    static F32GPTModel load(std::shared_ptr<const gguf::File> file, const F32Options& options = {});

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

    friend class F32ModelBase<F32GPTModel>;

    F32GPTModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options);
    void project(const compute::WeightMatrix& w, const DeviceFloats& bias, const float* x, size_t n_tokens, float* y);
    void reserve_workspace(size_t n_tokens);
    // F32ModelBase's hooks, with the positions enqueue_forward reads: p0.. uploaded for a prompt,
    // the decode step's own device position for a step.
    void enqueue_prompt(std::span<const Token> ids, size_t p0, size_t n_out);
    void enqueue_decode_step();
    // As F32LlamaModel's; positions: the T positions' ids into position_embd_, in device memory.
    void enqueue_forward(const int32_t* ids, const int32_t* positions, size_t T, size_t p0,
                         const int32_t* device_position, size_t n_out);

    compute::WeightMatrix token_embd_, position_embd_, output_;   // [V, E], [n_ctx_train, E], [V, E] (tied: token_embd_)
    std::vector<Layer> layers_;
    DeviceFloats output_norm_, output_norm_bias_;                 // [E]
    compute::AttentionShape attention_shape_;
    std::vector<int32_t> positions_;
    compute::Buffer positions_on_device_;                         // this call's positions, on the device
};

static_assert(GPTInference<F32GPTModel>);

}  // namespace twinfer
