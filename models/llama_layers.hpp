#pragma once
// The Llama family's weights and forward pass, written once for F32LlamaModel (one device) and for
// each rank of TensorParallelLlamaModel (models/tp_model.hpp). A rank's weights are the rows and columns its shard owns
// (models/tensor_parallel.hpp), one device's are the whole matrices (whole_shard); the pass differs
// only where a rank's partial sums are added up: one all-reduce after attention's output product
// and one after the MLP's down product (RankReduce).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "compute/attention.hpp"
#include "compute/context.hpp"
#include "compute/matmul.hpp"
#include "compute/memory.hpp"
#include "compute/rope.hpp"
#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/kv_cache.hpp"
#include "models/model_config.hpp"
#include "models/shards.hpp"
#include "models/tensor_parallel.hpp"

namespace twinfer {

struct LlamaLayer {
    const float* attn_norm = nullptr;                  // [E]
    const float* ffn_norm = nullptr;                   // [E]
    compute::WeightMatrix wq, wk, wv, wo;              // the shard's [Hr*D, E], [Hkv_r*D, E] (twice), [E, Hr*D]
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;   // optional biases (Qwen-style files)
    compute::WeightMatrix w_gate, w_up, w_down;        // the shard's [Fr, E], [Fr, E], [E, Fr]
};

// A shard's weights and the attention and RoPE settings of its heads.
struct LlamaWeights {
    std::vector<compute::Buffer> storage;              // the copies the matrices and vectors below point into
    compute::WeightMatrix token_embd;                  // [V, E], whole on every rank
    compute::WeightMatrix output;                      // [Vr, E]: the shard's vocabulary rows (token_embd when tied and whole)
    std::vector<LlamaLayer> layers;
    const float* output_norm = nullptr;                // [E]
    compute::RopeParams rope;
    compute::AttentionShape attention;                 // the shard's heads; kv_stride its KV heads' width

    // Placed on ctx's device: views into the GGUF mapping where a CPU can use the file's bytes as
    // they are (whole rows), copies otherwise (column shards; everything on a GPU, laid out by
    // compute::place_weights). Throws std::runtime_error naming a missing or misshapen tensor, or
    // one whose type has no kernel; std::invalid_argument for a column cut off a block boundary.
    static LlamaWeights load(compute::Context& ctx, const gguf::File& file, const ModelConfig& c, const RankShard& shard);
};

// A pass's activation buffers ([T, width] each; out only with a RankReduce). k_rows and v_rows
// hold a decode step's (or a float16 cache's) key and value rows until they are stored.
struct LlamaPassBuffers {
    float *x, *xn, *q, *k_rows, *v_rows, *att, *out, *gate, *up, *logits;
};

// Queues the pass of T tokens (ids in device memory) at positions p0.. of `slot` up to the logits
// of the last n_out in b.logits ([n_out, Vr]). With device_position (device memory; T = 1) the
// position is read there and p0 is unused, so a captured graph can replay it. reduce: null on one
// device, whose residual products add into x themselves (and may prepare the next norm).
void enqueue_llama_pass(compute::Context& ctx, const ModelConfig& c, const LlamaWeights& w, KvCache& cache, size_t slot,
                        const LlamaPassBuffers& b, compute::Activations activations, const int32_t* ids, size_t T,
                        size_t p0, const int32_t* device_position, size_t n_out, const RankReduce* reduce,
                        const F32Observer& observer);

}  // namespace twinfer
