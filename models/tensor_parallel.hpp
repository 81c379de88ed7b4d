#pragma once
// The sharding arithmetic of Megatron-style tensor parallelism (Shoeybi et al. 2019): which rows
// and columns of each weight matrix rank r of N owns. Pure arithmetic and validation;
// models/shards.hpp places a shard's pieces, models/tp_model.hpp runs the ranks.
//
//   attention  Q, K, V   rows of whole heads: rank r owns KV heads [g0, g1) and the query heads
//                        that read them, [g0 * G, g1 * G) with G = n_head / n_head_kv. With fewer
//                        KV heads than ranks (Gemma 3 270M has one), each KV head is replicated
//                        on the N / n_head_kv ranks that share its query heads
//              output    the matching columns [h0 * D, h1 * D): each rank's product is a partial
//                        sum of the full output, added up by one all-reduce
//   MLP        gate, up  rows [f0, f1) of the n_ff units
//              down      the matching columns [f0, f1), then the second all-reduce
//   experts    every expert split as the MLP is, over its own units [e0, e1): each rank computes
//                        the same routing and its share of each chosen expert, so a token's work
//                        is divided evenly whichever experts it picks (whole experts per rank
//                        would leave one rank with most of a token's experts as often as not)
//   output     rows [v0, v1) of the vocabulary: each rank computes its slice of the logits
//   KV cache   the rank's KV heads only
//
// A column split cuts every row of a block-format matrix (Q4_0: 32 values a block, K-quants:
// 256), so each cut must fall on a block boundary of that matrix's type.
#include <cstddef>
#include <vector>

#include "format/ggml_type.hpp"

namespace twinfer {

// [begin, end), in the unit its name says.
struct IndexRange {
    size_t begin = 0;
    size_t end = 0;
    size_t size() const { return end - begin; }
    IndexRange scaled(size_t factor) const { return {begin * factor, end * factor}; }
    bool operator==(const IndexRange&) const = default;
};

// What one rank owns.
struct RankShard {
    int rank = 0;
    IndexRange heads;      // query heads; Q rows and attention-output columns are heads.scaled(head_dim)
    IndexRange kv_heads;   // KV heads; K and V rows (and the cache's width) are kv_heads.scaled(head_dim)
    IndexRange ff;         // feed-forward units: gate/up rows, down columns
    IndexRange expert_ff;  // each expert's units, as ff (empty without experts)
    IndexRange vocab;      // output rows: this rank's logits
};

// The shape facts the split depends on. The column-split matrices' types give the block sizes
// the cuts must respect: where the layers mix types, the one with the largest block.
struct TensorParallelShape {
    size_t n_head = 0;
    size_t n_head_kv = 0;
    size_t head_dim = 0;
    size_t n_ff = 0;
    size_t n_vocab = 0;
    size_t n_ff_expert = 0;   // 0: no experts
    GGMLType attn_output_type = GGMLType::F32;
    GGMLType ffn_down_type = GGMLType::F32;
    GGMLType ffn_down_exps_type = GGMLType::F32;
};

// One shard per rank, rank order. Throws std::invalid_argument saying what does not divide, and
// which sizes would: n_ranks < 1; n_head_kv neither a multiple nor a divisor of n_ranks, or
// n_head not a multiple of n_ranks; an attention-output or down-projection (an expert's too) cut
// off a block boundary; fewer feed-forward blocks or vocabulary rows than ranks.
std::vector<RankShard> plan_tensor_parallel(int n_ranks, const TensorParallelShape& shape);

}  // namespace twinfer
