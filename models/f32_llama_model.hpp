#pragma once
// F32LlamaModel: the Llama family (RMSNorm, RoPE, grouped-query attention, SwiGLU; SmolLM2,
// TinyLlama, Llama 2/3, Mistral-style) with float32 activations and a KV cache. The weights stay
// in the file's block format inside the GGUF mapping; compute/ dequantizes them inside its
// products. Each forward pass computes only the new tokens.
#include <memory>
#include <optional>
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
#include "models/llama_layers.hpp"
#include "models/model_config.hpp"

namespace twinfer {

class F32LlamaModel : public F32ModelBase<F32LlamaModel> {
public:

    // Throws std::runtime_error naming a missing or misshapen tensor, or one whose type has no
    // kernel; the file must be a Llama-family GGUF. part: a tensor-parallel rank's shard
    // (TensorParallelModel builds its ranks so); unset, the whole model.
    static F32LlamaModel load(std::shared_ptr<const gguf::File> file, const F32Options& options = {},
                              std::optional<ModelPart> part = std::nullopt);

private:
    friend class F32ModelBase<F32LlamaModel>;

    F32LlamaModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                  std::optional<ModelPart> part);
    void reserve_workspace(size_t n_tokens);
    // Queues the pass of T tokens (ids in device memory) at positions p0.. up to the logits of the
    // last n_out, in the LOGITS buffer: a sequence's pass on this model's slot.
    void enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position, size_t n_out);
    // Queues a batched pass (F32ModelBase::forward_rows), each run of rows at its own slot and
    // positions.
    void enqueue_rows(const RowBatch& batch);
    // enqueue_llama_pass on this model's buffers.
    void enqueue_pass(const RowBatch& batch, const int32_t* device_position);

    LlamaWeights weights_;                                      // the part's shard (llama_layers.hpp)
};

static_assert(GPTInference<F32LlamaModel>);

}  // namespace twinfer
