#pragma once
// F32LlamaModel: the Llama family (RMSNorm, RoPE, grouped-query attention, SwiGLU; SmolLM2,
// TinyLlama, Llama 2/3, Mistral-style) with float32 activations and a KV cache. The weights stay
// in the file's block format inside the GGUF mapping; compute/ dequantizes them inside its
// products. Each forward pass computes only the new tokens.
#include <memory>
#include <span>
#include <vector>

#include "compute/attention.hpp"
#include "compute/context.hpp"
#include "compute/matmul.hpp"
#include "compute/rope.hpp"
#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/inference.hpp"
#include "models/kv_cache.hpp"
#include "models/model_config.hpp"

namespace twinfer {

class F32LlamaModel : public F32ModelBase<F32LlamaModel> {
public:
    // Throws std::runtime_error naming a missing or misshapen tensor, or one whose type has no
    // kernel; the file must be a Llama-family GGUF.
    static F32LlamaModel load(std::shared_ptr<const gguf::File> file, const F32Options& options = {});

private:
    struct Layer {
        DeviceFloats attn_norm, ffn_norm;                         // [E]
        compute::WeightMatrix wq, wk, wv, wo;                     // [H*D, E], [Hkv*D, E], [Hkv*D, E], [E, H*D]
        DeviceFloats bq, bk, bv, bo;                              // optional biases (Qwen-style files)
        compute::WeightMatrix w_gate, w_up, w_down;               // [F, E], [F, E], [E, F]
    };

    friend class F32ModelBase<F32LlamaModel>;

    F32LlamaModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options);
    void reserve_workspace(size_t n_tokens);
    // Queues the pass of T tokens (ids in device memory) at positions p0.. up to the logits of the
    // last n_out, in the LOGITS buffer. With device_position (device memory; T = 1), the position
    // is read there and p0 is unused: nothing in the queued ops depends on the host's position,
    // which lets a captured graph replay it.
    void enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position, size_t n_out);
    // Queues a batched pass (F32ModelBase::forward_rows): the products of all rows at once (the
    // Tiled ones) or row by row (the Single ones); RoPE, the cache write and attention for each
    // run of rows at its own slot and positions.
    void enqueue_rows(const RowBatch& batch);

    compute::WeightMatrix token_embd_, output_;                 // [V, E]; output_ is token_embd_ when tied
    std::vector<Layer> layers_;
    DeviceFloats output_norm_;                                  // [E]
    DeviceFloats rope_freq_factors_;                            // [n_rot/2] rope_freqs.weight, or empty
    compute::RopeParams rope_;
    compute::AttentionShape attention_shape_;
};

static_assert(GPTInference<F32LlamaModel>);

}  // namespace twinfer
