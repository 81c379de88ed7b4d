#pragma once
// TransformerModel: every decoder architecture of models/architecture.hpp (Qwen 2/3, Qwen3-MoE,
// Gemma 3, Phi-3, SmolLM3, StableLM, GPT-NeoX, StarCoder 2, gpt-oss) with float32 activations and
// a KV cache, on the CPU and CUDA, from one forward pass driven by the model's TransformerSpec.
// Weights stay in the file's block format (compute/ dequantizes them inside its products), the
// decode step is F32ModelBase's (a CUDA graph on the GPU), as for F32LlamaModel.
#include <memory>
#include <optional>
#include <vector>

#include "compute/attention.hpp"
#include "compute/experts.hpp"
#include "compute/matmul.hpp"
#include "compute/rope.hpp"
#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/inference.hpp"
#include "models/model_config.hpp"

namespace twinfer {

class TransformerModel : public F32ModelBase<TransformerModel> {
public:

    // Throws std::runtime_error naming a missing or misshapen tensor, or one whose type has no
    // kernel; the file's architecture must be one of architecture.hpp's table. part: a
    // tensor-parallel rank's shard (TensorParallelModel builds its ranks so); unset, the whole model.
    static TransformerModel load(std::shared_ptr<const gguf::File> file, const F32Options& options = {},
                                 std::optional<ModelPart> part = std::nullopt);

private:
    struct Norm {
        DeviceFloats weight, bias;                                // [E]; bias: LayerNorm's (zeros if the file has none)
    };
    struct Layer {
        Norm attn_norm, ffn_norm, attn_post_norm, ffn_post_norm; // ffn_norm empty: the parallel block shares attn_norm
        compute::WeightMatrix wq, wk, wv, wo;                     // [H*D, E], [Hkv*D, E], [Hkv*D, E], [E, H*D]
        DeviceFloats bq, bk, bv, bo;                              // optional biases
        DeviceFloats sinks;                                       // [H] attention sinks (gpt-oss)
        DeviceFloats q_norm, k_norm;                              // [D] (QK-norm)
        compute::WeightMatrix w_gate, w_up, w_down;               // [F, E] (gated only), [F, E], [E, F]
        DeviceFloats b_up, b_down;
        compute::WeightMatrix router;                             // [n_expert, E] (mixture of experts)
        DeviceFloats router_bias;                                 // [n_expert] (gpt-oss)
        compute::ExpertMatrices gate_exps, up_exps, down_exps;    // n_expert x [F_e, E], [F_e, E], [E, F_e]
        DeviceFloats gate_exps_bias, up_exps_bias, down_exps_bias;   // [n_expert, F_e], [n_expert, F_e], [n_expert, E] (gpt-oss)
        compute::RopeParams rope;                                 // this layer's base, scale, factors, magnitude
        compute::AttentionShape attention;                        // this layer's window
    };

    friend class F32ModelBase<TransformerModel>;

    TransformerModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                     std::optional<ModelPart> part, std::vector<size_t> kv_rings);
    void reserve_workspace(size_t n_tokens);
    // F32ModelBase's hooks: the pass of T tokens of the selected slot at positions p0.. up to the
    // logits of the last n_out (with device_position, a decode step at the position read there),
    // and the batched pass over rows of several slots (forward_rows). Both are enqueue_pass.
    void enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position, size_t n_out);
    void enqueue_rows(const RowBatch& batch);
    void enqueue_pass(const RowBatch& batch, const int32_t* device_position);
    void products(std::span<const compute::MatmulOutput> outputs, const float* x, size_t n_single, size_t n_tiled,
                  const compute::RmsNorm* norm = nullptr);
    void normalize(const Norm& norm, const float* x, size_t n_rows, float* out);
    void add_residual(const Norm* norm, float* o, size_t N, float* x, const compute::RmsNorm* next_norm = nullptr);
    // y (+)= feed_forward(h) for N rows (the first n_single each alone): the layer's MLP or its
    // routed experts. norm (MLP only): h's RMSNorm, applied by the products on the way in.
    // next_norm (a sequence's MLP adding into y): the norm the next products apply to y, for the
    // down product to prepare (residual_project).
    void feed_forward(const Layer& L, const float* h, const compute::RmsNorm* norm, size_t N, size_t n_single, float* y,
                      bool accumulate, const compute::RmsNorm* next_norm = nullptr);
    void mixture_of_experts(const Layer& L, const float* h, size_t T, size_t n_single, float* y);
    compute::ExpertLayer expert_layer(const Layer& L) const;

    compute::WeightMatrix token_embd_, output_;                 // [V, E]; output_ is token_embd_ when tied
    std::vector<Layer> layers_;
    Norm output_norm_;
    DeviceFloats rope_factors_;                                 // [n_rot/2] YaRN or LongRoPE divisors, or empty
    compute::Buffer one_by_one_;                                // a token's experts (compute::OneByOneScratch)
    compute::Buffer expert_groups_;                             // a prompt's experts grouped (compute::GroupedScratch)
    bool batched_ = false;                                      // the running pass's RowBatch::batched (products)
};

static_assert(GPTInference<TransformerModel>);

}  // namespace twinfer
