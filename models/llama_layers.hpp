#pragma once
// The Llama family's weights and forward pass, written once for F32LlamaModel on one device and
// for each rank of a TensorParallelModel (models/tp_model.hpp), for a sequence's pass and for the
// server's batched pass. A rank's weights are the rows and columns its shard owns
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

// A pass's activation buffers ([N, width] each; out only with a RankReduce). k_rows and v_rows
// hold the rows' keys and values until they are stored (a float32 cache takes a prompt's directly).
struct LlamaPassBuffers {
    float *x, *xn, *q, *k_rows, *v_rows, *att, *out, *gate, *up, *logits;
};

// Queues the pass of `batch` (ids in device memory) up to the logits of its logit_rows in b.logits
// ([rows, Vr]). A sequence's pass (RowBatch::batched false: one run of tokens) fuses each step
// where the device has a launch for it (the Q/K/V products with RoPE and a decode step's cache
// write, gate/up with SwiGLU, a residual product that prepares the next norm); a batched pass
// computes each row as its kind does alone (RowProducts, attention_rows), no fused step whose rows
// would round otherwise. With device_position (device memory; a sequence's one token) the position
// is read there and the run's first_position is unused, so a captured graph can replay it.
// reduce: null on one device, whose residual products add into x themselves.
void enqueue_llama_pass(compute::Context& ctx, const ModelConfig& c, const LlamaWeights& w, KvCache& cache,
                        const LlamaPassBuffers& b, compute::Activations activations, const RowBatch& batch,
                        const int32_t* device_position, const RankReduce* reduce, const F32Observer& observer);

}  // namespace twinfer
