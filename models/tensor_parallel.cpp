#include "models/tensor_parallel.hpp"

#include <stdexcept>
#include <string>

namespace twinfer {
namespace {

// Part r of n of `units` items, the remainder spread over the first parts: sizes differ by at
// most one.
IndexRange part(size_t units, int r, int n) {
    return {units * r / n, units * (r + 1) / n};
}

std::string block_words(GGMLType type) {
    return std::to_string(type_traits(type).block_size) + "-value blocks of " + std::string(type_name(type));
}

// Why a matrix of `units` columns (or units per expert) of type `type`, cut into n parts, does
// not split, or "".
std::string why_not_columns(const std::string& what, size_t units, GGMLType type, size_t n) {
    const size_t block = type_traits(type).block_size;
    if (units % block != 0) return what + " = " + std::to_string(units) + " is not whole " + block_words(type);
    if (units / block < n)
        return what + " = " + std::to_string(units) + " holds only " + std::to_string(units / block) + " " + block_words(type) +
               " to share among " + std::to_string(n) + " ranks";
    return "";
}

// Why n ranks cannot split this shape, or "" if they can.
std::string why_not(int n, const TensorParallelShape& s) {
    const size_t N = static_cast<size_t>(n);
    if (s.n_head_kv % N != 0 && N % s.n_head_kv != 0)
        return "n_head_kv = " + std::to_string(s.n_head_kv) + " is neither a multiple nor a divisor of " + std::to_string(n) +
               " (each rank holds whole KV heads, or one shared with other ranks, with the query heads that read them)";
    if (s.n_head % s.n_head_kv != 0)
        return "n_head = " + std::to_string(s.n_head) + " is not a multiple of n_head_kv = " + std::to_string(s.n_head_kv);
    if (s.n_head % N != 0)
        return "n_head = " + std::to_string(s.n_head) + " is not a multiple of " + std::to_string(n);
    const size_t out_block = type_traits(s.attn_output_type).block_size;
    const size_t columns_per_rank = s.n_head / N * s.head_dim;
    if (columns_per_rank % out_block != 0)
        return "each rank's " + std::to_string(columns_per_rank) + " columns of attn_output (" + std::to_string(s.n_head / N) +
               " heads of " + std::to_string(s.head_dim) + ") do not fill whole " + block_words(s.attn_output_type);
    if (std::string reason = why_not_columns("n_ff", s.n_ff, s.ffn_down_type, N); !reason.empty()) return reason;
    if (s.n_ff_expert)
        if (std::string reason = why_not_columns("an expert's n_ff", s.n_ff_expert, s.ffn_down_exps_type, N); !reason.empty())
            return reason;
    if (s.n_vocab < N)
        return "the vocabulary of " + std::to_string(s.n_vocab) + " has fewer rows than ranks";
    return "";
}

}  // namespace

std::vector<RankShard> plan_tensor_parallel(int n_ranks, const TensorParallelShape& shape) {
    if (n_ranks < 1) throw std::invalid_argument("tensor parallel size must be at least 1, got " + std::to_string(n_ranks));
    if (shape.n_head == 0 || shape.n_head_kv == 0 || shape.head_dim == 0 || shape.n_ff == 0 || shape.n_vocab == 0)
        throw std::invalid_argument("tensor parallel split: a model dimension is zero");
    if (const std::string reason = why_not(n_ranks, shape); !reason.empty()) {
        std::string sizes;
        for (size_t n = 1; n <= shape.n_head; ++n)
            if (why_not(static_cast<int>(n), shape).empty()) sizes += (sizes.empty() ? "" : ", ") + std::to_string(n);
        throw std::invalid_argument("cannot split the model over " + std::to_string(n_ranks) + " ranks: " + reason +
                                    " (sizes that work for this model: " + sizes + ")");
    }
    const size_t down_block = type_traits(shape.ffn_down_type).block_size;
    const size_t exps_block = type_traits(shape.ffn_down_exps_type).block_size;
    const size_t N = static_cast<size_t>(n_ranks);
    // Query heads per rank; with fewer KV heads than ranks, ranks per KV head.
    const size_t heads = shape.n_head / N, sharing = N > shape.n_head_kv ? N / shape.n_head_kv : 1;
    std::vector<RankShard> shards;
    for (int r = 0; r < n_ranks; ++r) {
        const size_t R = static_cast<size_t>(r);
        shards.push_back({.rank = r,
                          .heads = {R * heads, (R + 1) * heads},
                          .kv_heads = sharing > 1 ? IndexRange{R / sharing, R / sharing + 1} : part(shape.n_head_kv, r, n_ranks),
                          .ff = part(shape.n_ff / down_block, r, n_ranks).scaled(down_block),
                          .expert_ff = shape.n_ff_expert ? part(shape.n_ff_expert / exps_block, r, n_ranks).scaled(exps_block)
                                                         : IndexRange{},
                          .vocab = part(shape.n_vocab, r, n_ranks)});
    }
    return shards;
}

}  // namespace twinfer
