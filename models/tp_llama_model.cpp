#include "models/tp_llama_model.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "compute/attention.hpp"
#include "compute/collective.hpp"
#include "compute/context.hpp"
#include "compute/elementwise.hpp"
#include "compute/matmul.hpp"
#include "compute/memory.hpp"
#include "compute/rope.hpp"
#include "models/kv_cache.hpp"
#include "models/tensor_parallel.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif

namespace twinfer {
namespace {

// The activation buffers of one rank's forward pass, by name; widths in Rank::forward. KCUR and
// VCUR hold a decode step's key and value rows until they are stored at its position.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, OUT, GATE, UP, LOGITS, N_BUFFERS };

void copy_to_device([[maybe_unused]] compute::Context& ctx, void* device, const void* host, size_t bytes) {
#ifdef TWINFER_WITH_CUDA
    if (ctx.device() == compute::Device::CUDA) return compute::cuda::upload(ctx, device, host, bytes);
#endif
    std::memcpy(device, host, bytes);
}

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

// A rank's weights on its device: views into the GGUF mapping where a CPU rank can use the file's
// bytes as they are (whole rows), copies otherwise (column shards; everything on a GPU, laid out
// by compute::place_weights).
class RankWeights {
public:
    explicit RankWeights(compute::Context& ctx) : ctx_(ctx) {}

    compute::WeightMatrix rows(const compute::WeightMatrix& w, IndexRange rows) {
        return compute::place_weights(ctx_, {w.type, rows.size(), w.cols, w.data + rows.begin * w.row_bytes()}, buffers_);
    }

    // Columns [cols.begin, cols.end) of every row, gathered: both ends on block boundaries.
    compute::WeightMatrix columns(const compute::WeightMatrix& w, IndexRange cols, const std::string& name) {
        const GGMLTypeTraits& traits = type_traits(w.type);
        if (cols.begin % traits.block_size != 0 || cols.end % traits.block_size != 0)
            throw std::invalid_argument(name + ": columns [" + std::to_string(cols.begin) + ", " + std::to_string(cols.end) +
                                        ") do not start and end on the " + std::to_string(traits.block_size) +
                                        "-value blocks of " + std::string(type_name(w.type)));
        const size_t offset = cols.begin / traits.block_size * traits.type_size;
        const size_t shard_row_bytes = row_size_bytes(w.type, cols.size());
        std::vector<std::byte> gathered(w.rows * shard_row_bytes);
        for (size_t r = 0; r < w.rows; ++r)
            std::memcpy(gathered.data() + r * shard_row_bytes, w.data + r * w.row_bytes() + offset, shard_row_bytes);
        // On the CPU the gathered bytes need a home that outlives this call.
        if (ctx_.device() == compute::Device::CPU) return {w.type, w.rows, cols.size(), place(gathered.data(), gathered.size())};
        return compute::place_weights(ctx_, {w.type, w.rows, cols.size(), gathered.data()}, buffers_);
    }

    // A float vector (or the part `range` of it) on the device; null when empty.
    const float* floats(const std::vector<float>& v, IndexRange range) {
        if (v.empty()) return nullptr;
        return reinterpret_cast<const float*>(place(v.data() + range.begin, range.size() * sizeof(float)));
    }
    const float* floats(const std::vector<float>& v) { return floats(v, {0, v.size()}); }

private:
    const std::byte* place(const void* host, size_t bytes) {
        compute::Buffer& buffer = buffers_.emplace_back(ctx_.device(), bytes);
        copy_to_device(ctx_, buffer.data(), host, bytes);
        return buffer.as<std::byte>();
    }

    compute::Context& ctx_;
    std::vector<compute::Buffer> buffers_;
};

struct LayerShard {
    const float *attn_norm, *ffn_norm;                // [E]
    compute::WeightMatrix wq, wk, wv, wo;             // [Hr*D, E], [Hkv_r*D, E], [Hkv_r*D, E], [E, Hr*D]
    const float *bq, *bk, *bv, *bo;                   // optional biases: this rank's rows; bo whole
    compute::WeightMatrix w_gate, w_up, w_down;       // [Fr, E], [Fr, E], [E, Fr]
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
    RankWeights weights;
    compute::WeightMatrix token_embd, output;           // [V, E] whole; [Vr, E] this rank's vocabulary rows
    std::vector<LayerShard> layers;
    const float* output_norm = nullptr;                  // [E]
    const float* rope_freq_factors = nullptr;            // [n_rot/2] or null
    compute::RopeParams rope;
    compute::AttentionShape attention;
    KvCache cache;                                       // this rank's KV heads: [n_layer][1][n_ctx][Hkv_r*D]
    F32Workspace workspace;
    compute::Buffer device_ids;                          // CUDA: the pass's token ids
    F32DecodeStep decode_step;                           // a single token's id and position on the device; logits back
};

Rank::Rank(const gguf::File& file, const ModelConfig& c, const RankShard& s, const compute::ContextOptions& context,
           size_t n_ctx, compute::KvType cache_type)
    : shard(s), ctx(context), weights(ctx),
      cache(context.device, c.n_layer, 1, n_ctx, s.kv_heads.size() * c.head_dim, cache_type) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, D = c.head_dim, QD = c.n_head * D, KVD = c.n_embd_kv();
    const IndexRange q_rows = s.heads.scaled(D), kv_rows = s.kv_heads.scaled(D);
    const F32WeightLoader load(file);
    token_embd = weights.rows(load.matrix("token_embd.weight", V, E), {0, V});
    // Tied: this rank's rows of the embedding table, placed on their own (views of the mapping on
    // the CPU; on a GPU a copy, since a planar matrix cannot be cut into row ranges in place).
    output = weights.rows(load.matrix(load.has("output.weight") ? "output.weight" : "token_embd.weight", V, E), s.vocab);
    output_norm = weights.floats(load.vector("output_norm.weight", E));
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        LayerShard& L = layers.emplace_back();
        L.attn_norm = weights.floats(load.vector(p + "attn_norm.weight", E));
        L.wq = weights.rows(load.matrix(p + "attn_q.weight", QD, E), q_rows);
        L.wk = weights.rows(load.matrix(p + "attn_k.weight", KVD, E), kv_rows);
        L.wv = weights.rows(load.matrix(p + "attn_v.weight", KVD, E), kv_rows);
        L.wo = weights.columns(load.matrix(p + "attn_output.weight", E, QD), q_rows, p + "attn_output.weight");
        L.bq = weights.floats(load.optional_vector(p + "attn_q.bias", QD), q_rows);
        L.bk = weights.floats(load.optional_vector(p + "attn_k.bias", KVD), kv_rows);
        L.bv = weights.floats(load.optional_vector(p + "attn_v.bias", KVD), kv_rows);
        L.bo = weights.floats(load.optional_vector(p + "attn_output.bias", E));
        L.ffn_norm = weights.floats(load.vector(p + "ffn_norm.weight", E));
        L.w_gate = weights.rows(load.matrix(p + "ffn_gate.weight", F, E), s.ff);
        L.w_up = weights.rows(load.matrix(p + "ffn_up.weight", F, E), s.ff);
        L.w_down = weights.columns(load.matrix(p + "ffn_down.weight", E, F), s.ff, p + "ffn_down.weight");
    }
    // As F32LlamaModel::load.
    rope_freq_factors = weights.floats(load.optional_vector("rope_freqs.weight", c.n_rot / 2));
    rope = {.pairing = c.rope_layout == RopeLayout::Normal ? compute::RopeParams::Pairing::Adjacent
                                                           : compute::RopeParams::Pairing::Halves,
            .n_rot = static_cast<size_t>(c.n_rot),
            .freq_base = c.rope_freq_base,
            .position_scale = c.rope_scaling.kind == RopeScaling::Kind::Linear ? 1.0 / c.rope_scaling.factor : 1.0,
            .freq_factors = rope_freq_factors};
    attention = {.n_head = s.heads.size(),
                 .n_head_kv = s.kv_heads.size(),
                 .head_dim = D,
                 .kv_stride = kv_rows.size(),
                 .scale = static_cast<float>(1.0 / std::sqrt(double(D)))};
}

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
            copy_to_device(ctx, device_ids.data(), ids, T * sizeof(Token));
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

// F32LlamaModel::enqueue_forward over this rank's heads and feed-forward units; the two all-reduces
// turn the partial attention and MLP outputs into the whole ones, so x (the residual stream) is the
// same on every rank. Shapes: T new tokens, E = n_embd, this rank's Hr heads, Hkv_r KV heads of
// D dims, Fr feed-forward units, Vr vocabulary rows.
void Rank::enqueue(const ModelConfig& c, compute::Collective& collective, compute::Activations activations, const int32_t* ids,
                   size_t T, size_t p0, const int32_t* device_position, size_t n_out) {
    const size_t E = c.n_embd, D = c.head_dim;
    const size_t Hr = shard.heads.size(), Hkv_r = shard.kv_heads.size(), KVDr = Hkv_r * D;
    const float eps = static_cast<float>(c.norm_eps);
    float *x = workspace.buffer(X), *xn = workspace.buffer(XN), *q = workspace.buffer(Q), *att = workspace.buffer(ATT);
    float *out = workspace.buffer(OUT), *gate = workspace.buffer(GATE), *up = workspace.buffer(UP);
    float* logits = workspace.buffer(LOGITS);

    compute::get_rows(ctx, token_embd, ids, T, x);                                  // x: [T, E]
    for (size_t il = 0; il < layers.size(); ++il) {
        const LayerShard& L = layers[il];
        const compute::CacheRows keys = cache.keys(il, 0);                          // [n_ctx, KVDr]
        const compute::CacheRows values = cache.values(il, 0);
        // This call's K and V rows: straight into a float32 cache at p0, or beside it (a decode
        // step, or a float16 cache), stored after RoPE.
        const bool direct = !device_position && keys.type == compute::KvType::F32;
        float* k = direct ? keys.f32() + p0 * KVDr : workspace.buffer(KCUR);       // [T, KVDr]
        float* v = direct ? values.f32() + p0 * KVDr : workspace.buffer(VCUR);

        // Attention block: x += sum over ranks of Wo_r attention_r(...), xn = rms_norm(x)
        const compute::RmsNorm attn_norm{L.attn_norm, eps, xn};                     // xn: [T, E]
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};      // q: [T, Hr, D]; k, v: [T, Hkv_r, D]
        project_qkv(ctx, qkv, x, T, activations, attn_norm, {L.bq, L.bk, L.bv}, Hr, Hkv_r, D, p0, device_position, rope, keys,
                    values);
        if (!direct && !device_position)
            compute::store_rows(ctx, k, T, KVDr, keys, p0), compute::store_rows(ctx, v, T, KVDr, values, p0);
        if (device_position)
            compute::attention_at(ctx, q, keys, values, device_position, cache.n_ctx(), attention, att);
        else
            compute::attention(ctx, q, keys, values, T, p0, attention, att);        // att: [T, Hr, D]
        compute::matmul(ctx, L.wo, att, T, out, activations);                       // out: [T, E], this rank's heads' share
        collective.all_reduce_sum(shard.rank, ctx, out, T * E);                     // out: [T, E], all heads
        if (L.bo) compute::add_bias(ctx, out, L.bo, T, E);
        compute::add(ctx, x, out, T * E);

        // Feed-forward block: x += sum over ranks of W_down_r (silu(W_gate_r xn) * W_up_r xn)
        const compute::RmsNorm ffn_norm{L.ffn_norm, eps, xn};
        compute::matmul_swiglu(ctx, L.w_gate, L.w_up, x, T, gate, up, activations, &ffn_norm);  // gate: [T, Fr]
        compute::matmul(ctx, L.w_down, gate, T, out, activations);                  // out: [T, E], this rank's share
        collective.all_reduce_sum(shard.rank, ctx, out, T * E);
        compute::add(ctx, x, out, T * E);
    }

    const float* last = x + (T - n_out) * E;                                        // the rows asked for
    const compute::RmsNorm final_norm{output_norm, eps, xn};                        // xn: [n_out, E]
    const compute::MatmulOutput vocabulary{output, logits};
    compute::matmul(ctx, std::span(&vocabulary, 1), last, n_out, activations, &final_norm);  // logits: [n_out, Vr]
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
