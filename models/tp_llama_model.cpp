#include "models/tp_llama_model.hpp"

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
#include "models/llama_layers.hpp"
#include "models/tensor_parallel.hpp"

namespace twinfer {
namespace {

// The activation buffers of one rank's forward pass, by name; widths in Rank::forward. KCUR and
// VCUR hold a decode step's key and value rows until they are stored at its position.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, OUT, GATE, UP, LOGITS, N_BUFFERS };

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

// One forward pass's arguments, the same for every rank.
struct Pass {
    std::span<const Token> ids;
    size_t first_position;   // = the cache's length
    size_t n_out;            // logits rows asked for: the last n_out positions
    Logits* result;          // [n_out, V]: each rank writes its vocabulary columns
};

// One rank: its shard of every weight, its cache, buffers and Context. Built and run on the rank's
// own thread (on CUDA that thread's current device is the rank's GPU).
struct Rank {
    Rank(const gguf::File& file, const ModelConfig& c, const RankShard& shard, const compute::ContextOptions& context,
         size_t n_ctx, compute::KvType cache_type);
    // The pass over this rank's share; a single token goes through decode_step (with use_graph,
    // on CUDA, a graph per rank, its all-reduces captured with it).
    void forward(const ModelConfig& c, compute::Collective& collective, compute::Activations activations, const Pass& pass,
                 bool use_graph);
    // Queues the pass of T tokens (ids in device memory) at positions p0..; with device_position
    // (T = 1) the position is read there, as F32LlamaModel::enqueue_forward does.
    void enqueue(const ModelConfig& c, compute::Collective& collective, compute::Activations activations, const int32_t* ids,
                 size_t T, size_t p0, const int32_t* device_position, size_t n_out);

    RankShard shard;
    compute::Context ctx;
    LlamaWeights weights;                                // this rank's shard (llama_layers.hpp)
    KvCache cache;                                       // this rank's KV heads: [n_layer][1][n_ctx][Hkv_r*D]
    F32Workspace workspace;
    compute::Buffer device_ids;                          // CUDA: the pass's token ids
    F32DecodeStep decode_step;                           // a single token's id and position on the device; logits back
};

Rank::Rank(const gguf::File& file, const ModelConfig& c, const RankShard& s, const compute::ContextOptions& context,
           size_t n_ctx, compute::KvType cache_type)
    : shard(s), ctx(context), weights(LlamaWeights::load(ctx, file, c, s)),
      cache(context.device, c.n_layer, 1, n_ctx, s.kv_heads.size() * c.head_dim, cache_type) {}

void Rank::forward(const ModelConfig& c, compute::Collective& collective, compute::Activations activations, const Pass& pass,
                   bool use_graph) {
    const size_t T = pass.ids.size(), E = c.n_embd, D = c.head_dim;
    const size_t QDr = shard.heads.size() * D, KVDr = shard.kv_heads.size() * D;
    const size_t Fr = shard.ff.size(), Vr = shard.vocab.size(), V = c.n_vocab;
    const size_t p0 = pass.first_position, n_out = pass.n_out;

    const size_t widths[N_BUFFERS] = {E, E, QDr, KVDr, KVDr, QDr, E, Fr, Fr, Vr};
    workspace.reserve(ctx.device(), T, widths);
    if (T == 1) {
        decode_step.run(ctx, pass.ids[0], p0, use_graph, workspace.addresses(), [&] {
            enqueue(c, collective, activations, decode_step.token(), 1, p0, decode_step.position(), n_out);
        });
    } else {
        const Token* ids = pass.ids.data();
        if (ctx.device() != compute::Device::CPU) {
            if (device_ids.bytes() < T * sizeof(Token)) device_ids = compute::Buffer(ctx.device(), T * sizeof(Token));
            compute::upload(ctx, device_ids.data(), ids, T * sizeof(Token));
            ids = device_ids.as<Token>();
        }
        enqueue(c, collective, activations, ids, T, p0, nullptr, n_out);
    }
    cache.commit(0, T);

    const float* rows = workspace.buffer(LOGITS);
    if (ctx.device() != compute::Device::CPU) rows = decode_step.logits_on_host(ctx, rows, n_out * Vr);   // pinned on CUDA
    for (size_t p = 0; p < n_out; ++p)                                              // into columns [v0, v1) of the result
        compute::widen_to_double(rows + p * Vr, Vr, pass.result->values.data() + p * V + shard.vocab.begin);
}

// The pass of llama_layers.cpp over this rank's shard, its two all-reduces turning the partial
// attention and MLP outputs into the whole ones, so x (the residual stream) is the same on every rank.
void Rank::enqueue(const ModelConfig& c, compute::Collective& collective, compute::Activations activations, const int32_t* ids,
                   size_t T, size_t p0, const int32_t* device_position, size_t n_out) {
    const LlamaPassBuffers buffers{workspace.buffer(X),    workspace.buffer(XN),  workspace.buffer(Q),
                                   workspace.buffer(KCUR), workspace.buffer(VCUR), workspace.buffer(ATT),
                                   workspace.buffer(OUT),  workspace.buffer(GATE), workspace.buffer(UP),
                                   workspace.buffer(LOGITS)};
    const RankReduce reduce{collective, shard.rank};
    enqueue_llama_pass(ctx, c, weights, cache, 0, buffers, activations, ids, T, p0, device_position, n_out, &reduce, {});
}

// The split's inputs from the file: the column-split matrices' types, the coarsest block where
// the layers differ (a block size divides every larger one: 1, 32, 256).
TensorParallelShape shape_of(const gguf::File& file, const ModelConfig& c) {
    TensorParallelShape shape{.n_head = static_cast<size_t>(c.n_head),
                              .n_head_kv = static_cast<size_t>(c.n_head_kv),
                              .head_dim = static_cast<size_t>(c.head_dim),
                              .n_ff = static_cast<size_t>(c.n_ff),
                              .n_vocab = static_cast<size_t>(c.n_vocab)};
    auto coarsest = [&](GGMLType& type, const std::string& suffix) {
        for (int il = 0; il < c.n_layer; ++il)
            if (const gguf::TensorInfo* t = file.find_tensor("blk." + std::to_string(il) + "." + suffix))
                if (type_traits(t->type).block_size > type_traits(type).block_size) type = t->type;
    };
    coarsest(shape.attn_output_type, "attn_output.weight");
    coarsest(shape.ffn_down_type, "ffn_down.weight");
    return shape;
}

}  // namespace

struct TensorParallelLlamaModel::Ranks {
    Ranks(std::shared_ptr<const gguf::File> f, std::unique_ptr<compute::Collective> c)
        : file(std::move(f)), collective(std::move(c)), ranks(collective->n_ranks()),
          threads(collective->n_ranks(), [this] { collective->abort(); }) {}
    // Each rank's state is freed on its own thread: on CUDA its GPU is current there.
    ~Ranks() {
        try {
            threads.run([this](int r) { ranks[r].reset(); });
        } catch (...) {   // freeing failed on a broken device: nothing left to do about it
        }
    }

    std::shared_ptr<const gguf::File> file;   // the mapping the CPU ranks' row shards point into
    std::unique_ptr<compute::Collective> collective;
    std::vector<std::unique_ptr<Rank>> ranks;
    RankThreads threads;
};

TensorParallelLlamaModel::TensorParallelLlamaModel(ModelConfig config, const F32Options& options, int n_ranks)
    : config_(std::move(config)), options_(options), n_ranks_(n_ranks),
      n_ctx_(context_length(options, config_.n_ctx_train)) {}

TensorParallelLlamaModel::TensorParallelLlamaModel(TensorParallelLlamaModel&&) noexcept = default;
TensorParallelLlamaModel& TensorParallelLlamaModel::operator=(TensorParallelLlamaModel&&) noexcept = default;
TensorParallelLlamaModel::~TensorParallelLlamaModel() = default;

TensorParallelLlamaModel TensorParallelLlamaModel::load(std::shared_ptr<const gguf::File> file, int n_ranks,
                                                        const F32Options& options) {
    if (!file) throw std::invalid_argument("TensorParallelLlamaModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::Llama)
        throw std::runtime_error(file->origin() + ": TensorParallelLlamaModel runs the Llama family, not '" + c.architecture_name + "'");
    const std::vector<RankShard> shards = [&] {
        try {
            return plan_tensor_parallel(n_ranks, shape_of(*file, c));
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(file->origin() + ": " + e.what());
        }
    }();

    TensorParallelLlamaModel m(c, options, n_ranks);
    m.ranks_ = std::make_unique<Ranks>(file, compute::make_collective(options.device, n_ranks));
    // The CPU simulation shares the thread budget among the ranks; a GPU rank's thread only
    // launches kernels.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int n_threads = options.device == compute::Device::CPU ? std::max(1, (options.n_threads == 0 ? cores : options.n_threads) / n_ranks) : 1;
    const compute::ContextOptions context{.device = options.device, .n_threads = n_threads, .cpu_isa = std::nullopt};
    Ranks& ranks = *m.ranks_;
    ranks.threads.run([&](int r) {
        ranks.collective->bind_thread(r);
        ranks.ranks[r] = std::make_unique<Rank>(*file, m.config_, shards[r], context, m.n_ctx_, options.cache_type);
    });
    return m;
}

Logits TensorParallelLlamaModel::forward(std::span<const Token> ids, LogitsMode mode) {
    if (broken_) throw std::runtime_error("tensor-parallel model: a rank failed in an earlier call; load the model again");
    check_token_ids(ids, config_.n_vocab);
    Ranks& ranks = *ranks_;
    const size_t p0 = ranks.ranks[0]->cache.reserve(0, ids.size());   // throws ContextOverflow before any rank starts
    Logits result;
    result.n_vocab = config_.n_vocab;
    result.n_positions = mode == LogitsMode::All ? ids.size() : 1;
    result.values.resize(result.n_positions * result.n_vocab);
    const Pass pass{.ids = ids, .first_position = p0, .n_out = result.n_positions, .result = &result};
    const compute::Activations activations = activations_for(options_);
    try {
        const bool use_graph = use_cuda_graph(options_);
        ranks.threads.run([&](int r) { ranks.ranks[r]->forward(config_, *ranks.collective, activations, pass, use_graph); });
    } catch (...) {
        broken_ = true;
        throw;
    }
    n_past_ = p0 + ids.size();
    return result;
}

void TensorParallelLlamaModel::clear_cache() {
    for (auto& rank : ranks_->ranks) rank->cache.clear(0);   // host-side lengths: the rank threads are idle
    n_past_ = 0;
}

void TensorParallelLlamaModel::truncate_cache(size_t n) {
    for (auto& rank : ranks_->ranks) rank->cache.truncate(0, n);   // host-side lengths, as clear_cache
    n_past_ = n;
}

}  // namespace twinfer
