#pragma once
// TensorParallelLlamaModel: F32LlamaModel's forward pass split over N ranks, Megatron-style
// (models/tensor_parallel.hpp says who owns what): each rank computes its heads' attention and
// its share of the MLP, one all-reduce after each adds the partial outputs, and every rank keeps
// the whole residual stream. The KV cache is sharded by KV heads; the logits by vocabulary rows,
// each rank copying its slice into the result.
//
// One process, one thread per rank, each rank with its own compute::Context (and, on CUDA, its
// own GPU and stream): compute/cuda/nccl_collective.cpp says why. On the CPU the same code runs N
// ranks over an in-memory all-reduce: the simulation that tests the split against F32LlamaModel
// without GPUs. The threads live as long as the model; the caller's thread only hands out work
// and waits.
//
// Weights: rows of a matrix are contiguous, so a CPU rank's row shards are views into the GGUF
// mapping; column shards (attention output, down projection) cut every row and are copied out at
// load. On CUDA every shard is uploaded to its rank's GPU.
#include <memory>
#include <span>

#include "format/gguf.hpp"
#include "models/f32_common.hpp"
#include "models/inference.hpp"
#include "models/model_config.hpp"

namespace twinfer {

class TensorParallelLlamaModel {
public:
    // n_ranks ranks on options.device: CPU (simulated ranks, options.n_threads shared among them)
    // or CUDA (GPUs 0 .. n_ranks-1, over NCCL). Throws std::invalid_argument when the model does
    // not split over n_ranks (saying which sizes would), BackendUnavailable for CUDA without
    // NCCL, std::runtime_error as F32LlamaModel::load does for a bad file.
    static TensorParallelLlamaModel load(std::shared_ptr<const gguf::File> file, int n_ranks, const F32Options& options = {});

    TensorParallelLlamaModel(TensorParallelLlamaModel&&) noexcept;
    TensorParallelLlamaModel& operator=(TensorParallelLlamaModel&&) noexcept;
    ~TensorParallelLlamaModel();

    // As F32LlamaModel::forward (ids and context checked before any rank starts). A failure on
    // one rank mid-pass (a CUDA error) aborts the collective and leaves the ranks out of step:
    // every later forward throws, and the model must be loaded again.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last);
    const ModelConfig& config() const { return config_; }
    size_t n_past() const { return n_past_; }
    size_t n_ctx() const { return n_ctx_; }
    void clear_cache();
    // Forgets the positions from n on. Throws std::out_of_range if n is beyond what was seen.
    void truncate_cache(size_t n);

    const F32Options& options() const { return options_; }
    int n_ranks() const { return n_ranks_; }

private:
    struct Ranks;
    TensorParallelLlamaModel(ModelConfig config, const F32Options& options, int n_ranks);

    ModelConfig config_;
    F32Options options_;
    int n_ranks_ = 1;
    size_t n_ctx_ = 0;
    size_t n_past_ = 0;
    bool broken_ = false;
    std::unique_ptr<Ranks> ranks_;
};

static_assert(GPTInference<TensorParallelLlamaModel>);

}  // namespace twinfer
