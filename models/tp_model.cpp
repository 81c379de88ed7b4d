#include "models/tp_model.hpp"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "compute/collective.hpp"
#include "compute/context.hpp"
#include "compute/memory.hpp"
#include "models/kv_cache.hpp"
#include "models/tensor_parallel.hpp"

namespace twinfer {
namespace {

// One thread per rank, alive as long as the model: run() hands every rank the same job and waits
// for all of them. A rank that throws calls on_failure (which aborts the collective, so that the
// others stop waiting in an all-reduce) and run() rethrows its error.
class RankThreads {
public:
    RankThreads(int n_ranks, std::function<void()> on_failure)
        : on_failure_(std::move(on_failure)), errors_(n_ranks) {
        for (int r = 0; r < n_ranks; ++r) threads_.emplace_back([this, r] { loop(r); });
    }
    RankThreads(const RankThreads&) = delete;
    RankThreads& operator=(const RankThreads&) = delete;
    ~RankThreads() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        start_cv_.notify_all();
        for (std::thread& t : threads_) t.join();
    }

    void run(const std::function<void(int rank)>& job) {
        {
            std::lock_guard lock(mutex_);
            job_ = &job;
            std::fill(errors_.begin(), errors_.end(), nullptr);
            pending_ = static_cast<int>(threads_.size());
            ++generation_;
        }
        start_cv_.notify_all();
        {
            std::unique_lock lock(mutex_);
            done_cv_.wait(lock, [&] { return pending_ == 0; });
        }
        // The root cause first: the others' CollectiveAborted only says that some rank failed.
        for (const std::exception_ptr& error : errors_) {
            if (!error) continue;
            try {
                std::rethrow_exception(error);
            } catch (const compute::CollectiveAborted&) {
            }
        }
        for (const std::exception_ptr& error : errors_)
            if (error) std::rethrow_exception(error);
    }

private:
    void loop(int rank) {
        uint64_t seen = 0;
        for (;;) {
            const std::function<void(int)>* job;
            {
                std::unique_lock lock(mutex_);
                start_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
                if (stopping_) return;
                seen = generation_;
                job = job_;
            }
            std::exception_ptr error;
            try {
                (*job)(rank);
            } catch (...) {
                error = std::current_exception();
                on_failure_();
            }
            std::lock_guard lock(mutex_);
            errors_[rank] = error;
            if (--pending_ == 0) done_cv_.notify_one();
        }
    }

    std::function<void()> on_failure_;
    std::mutex mutex_;
    std::condition_variable start_cv_, done_cv_;
    const std::function<void(int)>* job_ = nullptr;
    uint64_t generation_ = 0;
    int pending_ = 0;
    bool stopping_ = false;
    std::vector<std::exception_ptr> errors_;
    std::vector<std::thread> threads_;   // last: started once everything above exists
};

// The split's inputs from the file: the column-split matrices' types, the coarsest block where
// the layers differ (a block size divides every larger one: 1, 32, 256).
TensorParallelShape shape_of(const gguf::File& file, const ModelConfig& c) {
    TensorParallelShape shape{.n_head = static_cast<size_t>(c.n_head),
                              .n_head_kv = static_cast<size_t>(c.n_head_kv),
                              .head_dim = static_cast<size_t>(c.head_dim),
                              .n_ff = static_cast<size_t>(c.n_ff),
                              .n_vocab = static_cast<size_t>(c.n_vocab),
                              .n_ff_expert = static_cast<size_t>(c.transformer.n_ff_expert)};
    auto coarsest = [&](GGMLType& type, const std::string& suffix) {
        for (int il = 0; il < c.n_layer; ++il)
            if (const gguf::TensorInfo* t = file.find_tensor("blk." + std::to_string(il) + "." + suffix))
                if (type_traits(t->type).block_size > type_traits(type).block_size) type = t->type;
    };
    coarsest(shape.attn_output_type, "attn_output.weight");
    coarsest(shape.ffn_down_type, "ffn_down.weight");
    coarsest(shape.ffn_down_exps_type, "ffn_down_exps.weight");
    return shape;
}

// A rank's logits ([n_positions, Vr]) into columns [v0, v0 + Vr) of the whole model's.
void copy_columns(const Logits& part, size_t v0, Logits& result) {
    for (size_t p = 0; p < result.n_positions; ++p)
        std::copy(part.row(p).begin(), part.row(p).end(), result.values.begin() + std::ptrdiff_t(p * result.n_vocab + v0));
}

}  // namespace

template <class RankModel>
struct TensorParallelModel<RankModel>::Ranks {
    Ranks(std::shared_ptr<const gguf::File> f, std::vector<RankShard> s, std::unique_ptr<compute::Collective> c)
        : file(std::move(f)), shards(std::move(s)), collective(std::move(c)), models(collective->n_ranks()),
          threads(collective->n_ranks(), [this] { collective->abort(); }) {}
    // Each rank's model is freed on its own thread: on CUDA its GPU is current there.
    ~Ranks() {
        try {
            threads.run([this](int r) { models[r].reset(); });
        } catch (...) {   // freeing failed on a broken device: nothing left to do about it
        }
    }

    std::shared_ptr<const gguf::File> file;   // the mapping the CPU ranks' row shards point into
    std::vector<RankShard> shards;
    std::unique_ptr<compute::Collective> collective;
    std::vector<std::unique_ptr<RankModel>> models;
    RankThreads threads;
};

template <class RankModel>
TensorParallelModel<RankModel>::TensorParallelModel(ModelConfig config, const F32Options& options, int n_ranks)
    : config_(std::move(config)), options_(options), n_ranks_(n_ranks) {}

template <class RankModel>
TensorParallelModel<RankModel>::TensorParallelModel(TensorParallelModel&&) noexcept = default;
template <class RankModel>
TensorParallelModel<RankModel>& TensorParallelModel<RankModel>::operator=(TensorParallelModel&&) noexcept = default;
template <class RankModel>
TensorParallelModel<RankModel>::~TensorParallelModel() = default;

template <class RankModel>
TensorParallelModel<RankModel> TensorParallelModel<RankModel>::load(std::shared_ptr<const gguf::File> file, int n_ranks,
                                                                    const F32Options& options) {
    if (!file) throw std::invalid_argument("TensorParallelModel::load: no file");
    const ModelConfig c = ModelConfig::from_gguf(*file);
    const std::vector<RankShard> shards = [&] {
        try {
            return plan_tensor_parallel(n_ranks, shape_of(*file, c));
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(file->origin() + ": " + e.what());
        }
    }();

    TensorParallelModel m(c, options, n_ranks);
    m.ranks_ = std::make_unique<Ranks>(file, shards, compute::make_collective(options.device, n_ranks));
    // The CPU simulation shares the thread budget among the ranks; a GPU rank's thread only
    // launches kernels.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    F32Options rank_options = options;
    rank_options.n_threads =
        options.device == compute::Device::CPU ? std::max(1, (options.n_threads == 0 ? cores : options.n_threads) / n_ranks) : 1;
    Ranks& ranks = *m.ranks_;
    ranks.threads.run([&](int r) {
        ranks.collective->bind_thread(r);
        ranks.models[r] = std::make_unique<RankModel>(
            RankModel::load(file, rank_options, ModelPart{ranks.shards[r], RankReduce{ranks.collective.get(), r}}));
    });
    return m;
}

template <class RankModel>
template <class Job>
void TensorParallelModel<RankModel>::on_every_rank(Job&& job) {
    check_usable();
    Ranks& ranks = *ranks_;
    try {
        ranks.threads.run([&](int r) { job(*ranks.models[r], r); });
    } catch (...) {
        broken_ = true;
        throw;
    }
}

template <class RankModel>
const RankModel& TensorParallelModel<RankModel>::first() const {
    return *ranks_->models.front();
}

template <class RankModel>
void TensorParallelModel<RankModel>::check_usable() const {
    if (broken_) throw std::runtime_error("tensor-parallel model: a rank failed in an earlier call; load the model again");
}

template <class RankModel>
Logits TensorParallelModel<RankModel>::forward(std::span<const Token> ids, LogitsMode mode) {
    // What a rank would refuse, refused here, before any rank starts (every rank must take part
    // in every all-reduce).
    if (ids.empty()) throw std::invalid_argument("forward: no tokens");
    check_token_ids(ids, config_.n_vocab);
    check_context(n_past(), ids.size(), n_ctx());
    const size_t V = config_.n_vocab;
    Logits result{V, mode == LogitsMode::All ? ids.size() : 1, {}};
    result.values.resize(result.n_positions * V);
    on_every_rank([&](RankModel& model, int r) {
        copy_columns(model.forward(ids, mode), ranks_->shards[r].vocab.begin, result);
    });
    return result;
}
template <class RankModel>
size_t TensorParallelModel<RankModel>::n_past() const {
    return first().n_past();
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::n_ctx() const {
    return first().n_ctx();
}

// The cache's host-side lengths: the rank threads are idle between calls.
template <class RankModel>
void TensorParallelModel<RankModel>::clear_cache() {
    for (auto& model : ranks_->models) model->clear_cache();
}

template <class RankModel>
void TensorParallelModel<RankModel>::truncate_cache(size_t n) {
    for (auto& model : ranks_->models) model->truncate_cache(n);   // the ranks' caches alike: the first refuses for all
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::reusable_prefix(size_t n) const {
    return first().reusable_prefix(n);
}

template <class RankModel>
void TensorParallelModel<RankModel>::set_slot_count(size_t n_slots)
{
    check_usable();
    ranks_->threads.run([&](int r) { ranks_->models[r]->set_slot_count(n_slots); });   // on the rank's GPU
}

template <class RankModel>
Logits TensorParallelModel<RankModel>::forward_rows(std::span<const SlotToken> rows, RowProducts logits_products)
{
    // As forward: what a rank would refuse (empty rows, bad ids or slots, overflow), refused before
    // any rank starts.
    first().check_rows(rows);
    const size_t V = config_.n_vocab;
    Logits result{V, 0, {}};
    for (const SlotToken& row : rows) result.n_positions += row.logits;
    result.values.resize(result.n_positions * V);
    on_every_rank([&](RankModel& model, int r) {
        const Logits part = model.forward_rows(rows, logits_products);
        copy_columns(part, ranks_->shards[r].vocab.begin, result);
    });
    return result;
}

template <class RankModel>
RowOutputs TensorParallelModel<RankModel>::run_rows(std::span<const SlotToken> rows, RowProducts logits_products)
{
    std::vector<SlotToken> with_logits(rows.begin(), rows.end());
    for (SlotToken& row : with_logits) row.argmax_only = false;
    return outputs_from_logits(rows, forward_rows(with_logits, logits_products));
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::slot_length(size_t slot) const
{
    return first().slot_length(slot);
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::kv_backed_bytes() const
{
    size_t bytes = 0;
    for (const auto& model : ranks_->models) bytes += model->kv_backed_bytes();
    return bytes;
}

template <class RankModel>
void TensorParallelModel<RankModel>::trim_cache()
{
    for (auto& model : ranks_->models) model->trim_cache();
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::reusable_prefix(size_t slot, size_t n) const
{
    return first().reusable_prefix(slot, n);
}

template <class RankModel>
void TensorParallelModel<RankModel>::truncate_slot(size_t slot, size_t n)
{
    for (auto& model : ranks_->models) model->truncate_slot(slot, n);   // alike: the first refuses for all
}

template <class RankModel>
size_t TensorParallelModel<RankModel>::max_run_rows() const
{
    return first().max_run_rows();
}

template class TensorParallelModel<F32LlamaModel>;
template class TensorParallelModel<TransformerModel>;

}  // namespace twinfer
