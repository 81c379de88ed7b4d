#pragma once
// TensorParallelModel: a model's forward pass split over N ranks, Megatron-style
// (models/tensor_parallel.hpp says who owns what). Each rank is the model itself, F32LlamaModel or
// TransformerModel, loaded as a shard (models/shards.hpp): its heads' attention and its share of
// the MLP (of every expert's), one all-reduce after each adding the partial outputs, and every rank
// keeping the whole residual stream. The KV cache is sharded by KV heads (replicated where a model
// has fewer KV heads than ranks); the logits by vocabulary rows, each rank copying its slice into
// the result. Tensor parallelism is thus how a model's weights are cut and where its all-reduces
// go, not another copy of its forward pass.
//
// One process, one thread per rank, each rank with its own compute::Context (and, on CUDA, its
// own GPU and stream): compute/cuda/nccl_collective.cpp says why. On the CPU the same code runs N
// ranks over an in-memory all-reduce: the simulation that tests the split against one device
// without GPUs. The threads live as long as the model; the caller's thread only hands out work
// and waits.
//
// Weights: rows of a matrix are contiguous, so a CPU rank's row shards are views into the GGUF
// mapping; column shards (attention output, down projections) cut every row and are copied out
// at load. On CUDA every shard is uploaded to its rank's GPU.
#include <memory>
#include <span>

#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/f32_llama_model.hpp"
#include "models/inference.hpp"
#include "models/model_config.hpp"
#include "models/transformer_model.hpp"

namespace twinfer {

template <class RankModel>
class TensorParallelModel {
public:
    // n_ranks ranks on options.device: CPU (simulated ranks, options.n_threads shared among them)
    // or CUDA (GPUs 0 .. n_ranks-1, over NCCL). Throws std::invalid_argument when the model does
    // not split over n_ranks (saying which sizes would), BackendUnavailable for CUDA without
    // NCCL, std::runtime_error as RankModel::load does for a bad file.
    static TensorParallelModel load(std::shared_ptr<const gguf::File> file, int n_ranks, const F32Options& options = {});

    TensorParallelModel(TensorParallelModel&&) noexcept;
    TensorParallelModel& operator=(TensorParallelModel&&) noexcept;
    ~TensorParallelModel();

    // As RankModel::forward (ids and context checked before any rank starts). A failure on one
    // rank mid-pass (a CUDA error, running out of memory) aborts the collective and leaves the
    // ranks out of step: every later call throws, and the model must be loaded again.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last);
    const ModelConfig& config() const { return config_; }
    size_t n_past() const;
    size_t n_ctx() const;
    void clear_cache();
    // As RankModel's: forgets the positions from n on.
    void truncate_cache(size_t n);
    size_t reusable_prefix(size_t n) const;

    // KV-cache slots and the batched pass (F32ModelBase's), for twinfer serve.
    void set_slot_count(size_t n_slots);
    Logits forward_rows(std::span<const SlotToken> rows, RowProducts logits_products = RowProducts::Single);
    // Each rank holds a part of the vocabulary: argmax_only rows' ids are picked from the whole
    // logits on the host.
    RowOutputs run_rows(std::span<const SlotToken> rows, RowProducts logits_products = RowProducts::Single);
    size_t slot_length(size_t slot) const;
    size_t kv_backed_bytes() const;   // over every rank
    void trim_cache();
    size_t reusable_prefix(size_t slot, size_t n) const;
    void truncate_slot(size_t slot, size_t n);
    size_t max_run_rows() const;

    const F32Options& options() const { return options_; }
    int n_ranks() const { return n_ranks_; }

private:
    struct Ranks;
    TensorParallelModel(ModelConfig config, const F32Options& options, int n_ranks);
    // Runs job(rank model, rank) on every rank's thread; marks the model broken if one throws.
    template <class Job>
    void on_every_rank(Job&& job);
    const RankModel& first() const;
    void check_usable() const;

    ModelConfig config_;
    F32Options options_;
    int n_ranks_ = 1;
    bool broken_ = false;
    std::unique_ptr<Ranks> ranks_;
};

using TensorParallelLlamaModel = TensorParallelModel<F32LlamaModel>;
using TensorParallelTransformerModel = TensorParallelModel<TransformerModel>;

static_assert(GPTInference<TensorParallelLlamaModel> && GPTInference<TensorParallelTransformerModel>);

}  // namespace twinfer
