#pragma once
// What F32LlamaModel and F32GPTModel share: their options, weight lookup with shape checks, the
// activation buffers of a forward pass, and F32ModelBase (the calls around the forward pass).
#include <algorithm>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "compute/attention.hpp"
#include "compute/buffer.hpp"
#include "compute/context.hpp"
#include "compute/elementwise.hpp"
#include "compute/matmul.hpp"
#include "compute/memory.hpp"
#include "compute/rope.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif
#include "format/gguf.hpp"
#include "models/inference.hpp"
#include "models/kv_cache.hpp"
#include "models/model_config.hpp"
#include "models/shards.hpp"

namespace twinfer {

struct F32Options {
    size_t n_ctx = 0;            // tokens the KV cache holds; 0: the model's trained context
    int n_threads = 0;           // CPU threads; 0: one per core
    compute::Device device = compute::Device::CPU;
    // How matrix-vector products against quantized weights read the activations
    // (compute::Activations); unset: the device's default, default_activations(device).
    std::optional<compute::Activations> activations = std::nullopt;
    // The KV cache's element type (`--cache-type`): float32 keeps the values as computed, float16
    // halves the cache's memory and the bytes a long context's decode step reads.
    compute::KvType cache_type = compute::KvType::F32;
    // CUDA: single-token steps captured once as a graph and replayed (one launch a step instead
    // of ~15 per layer). The environment variable TWINFER_CUDA_GRAPH=0 turns it off whatever
    // this says (see use_cuda_graph).
    bool cuda_graph = true;
    // The most bytes the activation buffers of one pass may take (F32Workspace); 0: no limit. A
    // pass that would need more throws compute::OutOfMemory before anything is allocated, as if
    // the device had run out: the server then runs the step in smaller parts (`serve
    // --max-activation-memory`, in MiB; docs/serving.md).
    size_t max_workspace_bytes = 0;
    // The most memory behind the KV cache, all slots together (KvCache's max_backed_bytes; `serve
    // --kv-memory`, in MiB); 0: as much as the device has. Its pages are backed as sequences grow.
    size_t max_kv_bytes = 0;
};

// Whether a model with these options replays its single-token steps as a CUDA graph: on CUDA,
// options.cuda_graph, and TWINFER_CUDA_GRAPH not "0".
bool use_cuda_graph(const F32Options& options);

// A float array in the model's device memory (norm weights, biases, RoPE frequency factors).
class DeviceFloats {
public:
    DeviceFloats() = default;
    DeviceFloats(compute::Context& ctx, std::span<const float> values);
    const float* data() const { return buffer_.as<float>(); }
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

private:
    compute::Buffer buffer_;
    size_t size_ = 0;
};

// Finds a model's tensors by name and checks their shapes, naming the tensor in every error.
class F32WeightLoader {
public:
    explicit F32WeightLoader(const gguf::File& file) : file_(file) {}

    // A [rows, cols] matrix (ggml dims [cols, rows]), left in the mapping.
    compute::WeightMatrix matrix(const std::string& name, size_t rows, size_t cols) const;
    // An n-vector as float32 (norm weights and biases; any type dequantize() reads). Empty if
    // absent and optional. vectors: count of them, [count, n] (ggml dims [n, count]): experts' biases.
    std::vector<float> vector(const std::string& name, size_t n) const { return vectors(name, n, 1); }
    std::vector<float> optional_vector(const std::string& name, size_t n) const;
    std::vector<float> vectors(const std::string& name, size_t n, size_t count) const;
    bool has(const std::string& name) const { return file_.find_tensor(name) != nullptr; }

private:
    const gguf::TensorInfo& find(const std::string& name, std::vector<uint64_t> dims) const;
    const gguf::File& file_;
};

// On a GPU: throws std::runtime_error before anything is allocated when the file's weights and a KV
// cache of kv_cache_bytes would not fit in the device's free memory, saying how much each needs.
void check_device_memory(compute::Device device, const gguf::File& file, size_t kv_cache_bytes);

// Named intermediates of a forward pass (llama.cpp's names, as GPTModel reports them: "attn_norm",
// "kqv_out", "l_out", ...), each a row-major [T, width] array over this call's tokens, on the
// host; layer is -1 outside the blocks. Costs nothing when unset.
using F32Observer = std::function<void(std::string_view name, int layer, std::span<const float> values)>;

// Calls `observer` (if set) with `count` floats of device memory.
void observe(compute::Context& ctx, const F32Observer& observer, std::string_view name, int layer,
             const float* values, size_t count);

// Activation buffers sized for the largest call so far, on the model's device, within an optional
// limit (F32Options::max_workspace_bytes).
class F32Workspace {
public:
    explicit F32Workspace(size_t max_bytes = 0) : max_bytes_(max_bytes) {}
    // Makes every buffer hold n_tokens rows of its width (widths fixed at construction by name).
    // Throws compute::OutOfMemory, the buffers unchanged, when that would pass the limit; and
    // when an allocation fails (the buffers then empty: the next call allocates again).
    void reserve(compute::Device device, size_t n_tokens, std::span<const size_t> widths);
    float* buffer(size_t index) { return buffers_[index].as<float>(); }
    // Every buffer's address: a captured step reads them, and a reserve() that grows moves them.
    std::vector<const void*> addresses() const;

private:
    size_t max_bytes_ = 0;   // 0: no limit
    size_t capacity_tokens_ = 0;
    std::vector<compute::Buffer> buffers_;
};

// One token's forward pass with its inputs in fixed device memory (the token id and its position),
// so that on CUDA the step is captured once as a graph and replayed at any position and for any
// token; the argmax of its logits can be left there too (greedy decoding copies back 4 bytes).
class F32DecodeStep {
public:
    // Device memory the step's ops read (token, position) and write (next_token, the argmax);
    // valid inside run()'s enqueue.
    const int32_t* token() const { return io_.as<int32_t>(); }
    const int32_t* position() const { return io_.as<int32_t>() + 1; }
    int32_t* next_token() { return io_.as<int32_t>() + 2; }

    // Puts token and position where the ops read them, then runs enqueue (which queues the step's
    // ops): with use_graph (CUDA only), as a graph captured the first time and again whenever
    // `buffers` (the addresses of the activations the ops use) or the CUDA scratch memory moved,
    // replayed otherwise; without, directly.
    void run(compute::Context& ctx, Token token, size_t position, bool use_graph, const std::vector<const void*>& buffers,
             const std::function<void()>& enqueue);
    // next_token() after run(), once the step has finished.
    Token read_next_token(compute::Context& ctx);
    // The step's logits ([n_vocab] floats in device memory) after run(): on CUDA through pinned
    // memory (one copy; pageable memory takes the driver's staging copy too).
    Logits read_logits(compute::Context& ctx, const float* logits, size_t n_vocab);
    // The same as floats in host memory, valid until the next call: `count` floats from `logits`.
    const float* logits_on_host(compute::Context& ctx, const float* logits, size_t count);
    // compute::top_k's k ids and k values, adjacent in device memory at `pairs`, after run().
    TopLogits read_top(compute::Context& ctx, const void* pairs, size_t k);

private:
    compute::Buffer io_;                // int32 [token, position, next token]
    std::vector<float> host_logits_;    // logits_on_host's off CUDA
#ifdef TWINFER_WITH_CUDA
    compute::cuda::PinnedHostMemory mailbox_;   // io_'s host side on CUDA
    compute::cuda::PinnedHostMemory logits_;    // logits_on_host's on CUDA
    compute::cuda::Graph graph_;
    std::vector<const void*> captured_addresses_;   // buffers + scratch when graph_ was captured
#endif
};

// ids must be non-empty and inside the vocabulary: std::invalid_argument / std::out_of_range.
void check_token_ids(std::span<const Token> ids, size_t n_vocab);

// Token ids (or positions) copied to where the device reads them, in a buffer grown on demand.
const int32_t* upload_ids(compute::Context& ctx, std::span<const int32_t> ids, compute::Buffer& buffer);

// The lowest id of the largest logit in the last row (forward_greedy when logits are needed anyway).
Token argmax_of_last(const Logits& logits);

// Float32 logits [n_positions, n_vocab] in device memory, widened into the interface's float64 Logits.
Logits download_logits(compute::Context& ctx, const float* values, size_t n_positions, size_t n_vocab);

// The CPU's default is Int8x2 (the float64 reference's top token where Int8 flips it, for a little
// of Int8's speed: BENCHMARKS.md, "Trust"); CUDA's is Int8, whose kernels are the only quantized
// ones there.
compute::Activations default_activations(compute::Device device);
// options.activations or the device's default; std::invalid_argument for Int8x2 on CUDA.
compute::Activations activations_for(const F32Options& options);

// y += W x (+ bias, when not null): a residual connection, the add folded into the product.
// x: [n_tokens, w.cols], y: [n_tokens, w.rows]. next_norm: the RMSNorm the next products apply to
// y, for the backend to prepare in this launch (compute::matmul; without a bias only).
void residual_project(compute::Context& ctx, const compute::WeightMatrix& w, const float* bias, const float* x,
                      size_t n_tokens, float* y, compute::Activations activations, const compute::RmsNorm* next_norm = nullptr);
inline void residual_project(compute::Context& ctx, const compute::WeightMatrix& w, const DeviceFloats& bias, const float* x,
                             size_t n_tokens, float* y, compute::Activations activations,
                             const compute::RmsNorm* next_norm = nullptr) {
    residual_project(ctx, w, bias.empty() ? nullptr : bias.data(), x, n_tokens, y, activations, next_norm);
}

// A Llama layer's attention inputs for T tokens of x: q, k, v = the products qkv (x normalized by
// norm first, as in compute::matmul), plus their biases where the layer has them (null: none), q and
// k rotated at positions p0.. (rows of n_head and n_head_kv heads of head_dim). With device_position
// (a decode step, T = 1) the position is read there and k and v are also stored as that row of keys
// and values: in the products' own launch on a GPU where there are no biases
// (compute::project_rope_store_at).
struct QkvBiases {
    const float* q = nullptr;
    const float* k = nullptr;
    const float* v = nullptr;
};
void project_qkv(compute::Context& ctx, std::span<const compute::MatmulOutput, 3> qkv, const float* x, size_t T,
                 compute::Activations activations, const compute::RmsNorm& norm, const QkvBiases& biases, size_t n_head,
                 size_t n_head_kv, size_t head_dim, size_t p0, const int32_t* device_position, const compute::RopeParams& rope,
                 compute::CacheRows keys, compute::CacheRows values);

size_t context_length(const F32Options& options, size_t n_ctx_train);

// dst <- src, both in the context's device memory (regions may not overlap).
void copy_on_device(compute::Context& ctx, void* dst, const void* src, size_t bytes);
// bytes zero bytes at dst, in ctx's device memory.
void zero_on_device(compute::Context& ctx, void* dst, size_t bytes);

// How a batched pass (F32ModelBase::forward_rows) computes a row's matrix products. Single: the
// row alone, as the decode step does (matrix-vector products with the model's activations, e.g.
// int8x2 on the CPU). Tiled: together with the pass's other Tiled rows in one tiled product
// (compute::matmul over many tokens: weights dequantized once per pass, float activations). Either
// way a row's values do not depend on the other rows of the pass: that is what makes a request's
// greedy ids independent of what else runs beside it.
enum class RowProducts { Single, Tiled };


// One row of a batched pass: `token` fed to KV-cache slot `slot` after what the slot holds.
struct SlotToken {
    size_t slot = 0;
    Token token = 0;
    bool logits = false;                        // hand back this row's logits
    RowProducts products = RowProducts::Single;
    // With logits: hand back only the id of the row's largest logit (the lowest id among equals,
    // as a greedy sampler picks), found where the logits are (run_rows): from a GPU 4 bytes come
    // back instead of the vocabulary's floats, and the host widens and scans none of them.
    bool argmax_only = false;
};

// What a batched pass hands back (run_rows), each in row order: the logits of the rows with
// `logits` set and not argmax_only, and the largest logit's id of the argmax_only ones.
struct RowOutputs {
    Logits logits;
    std::vector<Token> argmax;
};
// The outputs of `rows` from the logits of every row with `logits` set (in row order): the
// argmax_only rows' ids picked on the host.
RowOutputs outputs_from_logits(std::span<const SlotToken> rows, Logits all);

// The rows of a batched pass as a model's enqueue_rows receives them: consecutive rows of one
// slot, fed at consecutive positions.
struct SlotRun {
    size_t slot = 0;
    size_t first_row = 0;
    size_t n_rows = 0;
    size_t first_position = 0;
};
struct RowBatch {
    const int32_t* ids = nullptr;        // [n_padded] token ids in device memory
    size_t n_rows = 0;                   // rows fed: Single rows [0, n_single), then Tiled rows
    size_t n_single = 0;
    size_t n_padded = 0;                 // rows the Tiled products compute: the Tiled ones padded
                                         // to compute::min_tiled_tokens with copies of the last
    std::vector<SlotRun> runs;           // every fed row in exactly one run, in row order
    std::vector<size_t> logit_rows;      // rows whose logits are asked, ascending
    RowProducts logits_products = RowProducts::Single;   // how the output product computes them
    size_t n_logits_padded = 0;          // logit_rows.size(), padded as n_padded for Tiled
    // forward_rows: every row computed as its kind computes it alone, whatever the pass holds
    // (Tiled rows through compute::matmul_row_tiles, n_padded and n_logits_padded counting whole
    // tiles; attention_rows by kind). False: a sequence's pass (enqueue_forward), each step the
    // fastest the device has for its size.
    bool batched = false;
    // A batched pass's runs of Single rows only (the first runs: rows [0, decode_rows.n_rows)),
    // their slots and positions in device memory, attended as one group (attend_runs).
    compute::DecodeRows decode_rows = {};
};

// A sequence's pass as a RowBatch: T tokens (ids in device memory) of `slot` at positions p0..,
// the logits of the last n_out, every product over all the rows at once.
inline RowBatch sequence_batch(const int32_t* ids, size_t slot, size_t T, size_t p0, size_t n_out) {
    RowBatch batch{.ids = ids, .n_rows = T, .n_single = 0, .n_padded = T, .runs = {{slot, 0, T, p0}}, .logit_rows = {},
                   .logits_products = RowProducts::Tiled, .n_logits_padded = n_out};
    for (size_t r = T - n_out; r < T; ++r) batch.logit_rows.push_back(r);
    return batch;
}

// The attention a run's rows take: in a batched pass the way their kind takes it alone (Tiled rows
// a prompt's, Single rows the decode step's; the two round differently), in a sequence's pass the
// device's choice for its size (compute::AttentionRows).
inline compute::AttentionRows attention_rows(const RowBatch& batch, const SlotRun& run) {
    if (!batch.batched) return compute::AttentionRows::Auto;
    return run.first_row >= batch.n_single ? compute::AttentionRows::Prompt : compute::AttentionRows::Decode;
}

// Rows [batch.n_rows, batch.n_padded) of `rows` (width floats a row) as copies of the last fed
// row: padding rows have no position, and the products after them read finite values (a row's
// products never mix rows).
void fill_padding_rows(compute::Context& ctx, float* rows, const RowBatch& batch, size_t width);

// One layer's RoPE, KV-cache stores and attention for every run of `batch`: q [N, n_head, D], k, v
// [N, kv width] -> att [N, n_head, D], padding rows filled (fill_padding_rows). rope: null where the
// rows are rotated already, or in a NoPE layer. stored: a sequence's K and V rows are in the cache
// already (written there by their products). A batched pass's decode rows (RowBatch::decode_rows)
// go as one group (compute::decode_rows_rope_store, compute::decode_rows_attention: on a GPU one launch each for
// all of them, where a launch a sequence made the server's step thousands of launches); every
// other run in its slot, attended as attention_rows says.
void attend_runs(compute::Context& ctx, KvCache& cache, size_t layer, const RowBatch& batch, float* q, float* k,
                 const float* v, const compute::RopeParams* rope, const compute::AttentionShape& shape, bool stored,
                 float* att);

// The products of a pass (RowBatch): rows [0, n_single) each as the decode step computes its token
// (compute::matmul_rows: one call, the weights read once for all of them), then the next n_tiled
// (padded) as one product, as a prompt's tokens are (compute::matmul_row_tiles in a batched pass,
// RowBatch::batched). outputs' y and x are the pass's row arrays; norm (if any) normalizes each
// row of x into its `out` first.
void rows_matmul(compute::Context& ctx, std::span<const compute::MatmulOutput> outputs, const float* x, size_t n_single,
                 size_t n_tiled, compute::Activations activations, const compute::RmsNorm* norm, bool batched);

// An elementwise activation over n_rows rows of `width` values, as f(first, count) calls: on the
// CPU one call a row (its kernels split a call into vectors and a tail by its length, so a row's
// bits must not depend on how many rows a pass holds), on a GPU one call for all of them (a thread
// an element: the same bits whatever the count; a launch a row made a 512-token prompt of Gemma 3
// 270M 9,216 launches of the activation alone).
template <class F>
void each_row(compute::Context& ctx, size_t n_rows, size_t width, F&& f) {
    if (ctx.device() != compute::Device::CPU) return f(size_t(0), n_rows * width);
    for (size_t r = 0; r < n_rows; ++r) f(r * width, width);
}

// The GPTInference interface of an F32 model around its forward pass: the choice between a
// prompt and a decode step, the decode step (a CUDA graph) with its argmax, and the state they
// use. Derived (CRTP, a friend) supplies its weights, loading, and these:
//   void reserve_workspace(size_t n_tokens);   // its buffers' widths
//   void enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position, size_t n_out);
//                                              // the forward pass, up to the logits in its logits buffer
// A model whose pass takes more inputs than the token ids (GPT-2's learned positions) declares
// its own enqueue_prompt and enqueue_decode_step, which hide the ones here.
// A model may also supply the batched pass of several sequences (forward_rows):
//   void enqueue_rows(const RowBatch& batch);  // every row at its slot and position, up to the
//                                              // logits of batch.logit_rows in its logits buffer
// Without it forward_rows runs each slot's rows through forward(), one sequence after another.
//
// The KV cache has slots (set_slot_count): independent sequences. forward, forward_greedy,
// forward_top_k, n_past, clear_cache and truncate_cache act on the selected one (select_slot;
// slot 0 by default); forward_rows feeds any of them.
template <class Derived>
class F32ModelBase {
public:
    // Feeds ids after what the cache holds. Returns the logits of the last position, or
    // (LogitsMode::All) of each position fed. Throws ContextOverflow (cache unchanged) past
    // n_ctx(), std::out_of_range for an id outside the vocabulary, std::invalid_argument if empty.
    // A single id (without an observer) goes through the decode step: on CUDA a graph replayed
    // at every position (F32Options::cuda_graph), the same logits as without it.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last) {
        check_token_ids(ids, config_.n_vocab);
        if (ids.size() == 1 && !observer_) {
            decode(ids[0], false);
            return decode_step_.read_logits(ctx_, workspace_.buffer(logits_buffer_), n_logits());
        }
        const size_t T = ids.size();
        cache_.reserve(slot_, T);                       // the whole prompt fits, or nothing changes
        cache_.provision(slot_, T);
        // A model with ring layers in its cache takes at most max_run_rows_ tokens a pass.
        const size_t chunk = max_run_rows_ ? max_run_rows_ : T;
        Logits logits{n_logits(), 0, {}};
        for (size_t first = 0; first < T; first += chunk) {
            const auto part = ids.subspan(first, std::min(chunk, T - first));
            const size_t p0 = cache_.reserve(slot_, part.size());   // positions p0 .. p0+n-1
            const bool last = first + part.size() == T;
            const size_t n_out = mode == LogitsMode::All ? part.size() : 1;
            derived().reserve_workspace(part.size());
            derived().enqueue_prompt(part, p0, n_out);
            cache_.commit(slot_, part.size());
            if (mode == LogitsMode::All || last) {
                const Logits part_logits = download_logits(ctx_, workspace_.buffer(logits_buffer_), n_out, n_logits());
                logits.values.insert(logits.values.end(), part_logits.values.begin(), part_logits.values.end());
                logits.n_positions += n_out;
            }
        }
        return logits;
    }
    // forward({token}) and the argmax of its logits (the lowest id on ties), computed where the
    // model runs: on CUDA only the id comes back. Throws as forward.
    Token forward_greedy(Token token) {
        if (observer_) return argmax_of_last(forward(std::span<const Token>(&token, 1)));
        check_token_ids(std::span<const Token>(&token, 1), config_.n_vocab);
        decode(token, true);
        return decode_step_.read_next_token(ctx_);
    }
    // forward({token}) and its k largest logits with their ids (TopLogits), computed where the
    // model runs (compute::top_k): on CUDA only the k pairs come back. k: 1..compute::max_top_k,
    // below n_vocab (std::invalid_argument otherwise). Throws as forward.
    TopLogits forward_top_k(Token token, size_t k) {
        if (k == 0 || k > compute::max_top_k || k >= static_cast<size_t>(config_.n_vocab))
            throw std::invalid_argument("forward_top_k: k = " + std::to_string(k) + " must be 1.." +
                                        std::to_string(std::min<size_t>(compute::max_top_k, config_.n_vocab - 1)));
        if (observer_) return top_logits_of_last(forward(std::span<const Token>(&token, 1)), k);
        check_token_ids(std::span<const Token>(&token, 1), config_.n_vocab);
        decode(token, false);
        if (top_.bytes() < 2 * k * sizeof(int32_t))
            top_ = compute::Buffer(ctx_.device(), 2 * compute::max_top_k * sizeof(int32_t));
        int32_t* ids = top_.as<int32_t>();
        compute::top_k(ctx_, workspace_.buffer(logits_buffer_), n_logits(), k, ids, reinterpret_cast<float*>(ids + k));
        return decode_step_.read_top(ctx_, top_.data(), k);
    }
    const ModelConfig& config() const { return config_; }
    size_t n_past() const { return cache_.length(slot_); }
    size_t n_ctx() const { return cache_.n_ctx(); }
    size_t kv_cache_bytes() const { return cache_.bytes(); }
    size_t kv_backed_bytes() const { return cache_.backed_bytes(); }   // the memory behind it now (KvCache)
    void clear_cache() { cache_.clear(slot_); }
    // Hands back the KV cache's memory that no slot's positions use (KvCache::trim).
    void trim_cache() { cache_.trim(); }
    // Forgets the positions from n on (InferenceEngine keeps a shared prompt prefix this way).
    // std::invalid_argument when the cache cannot keep that prefix (reusable_prefix).
    void truncate_cache(size_t n) { truncate_slot(slot_, n); }
    // The longest prefix of at most n positions of `slot` that truncating keeps whole: n, or 0 when
    // a ring layer has already overwritten positions the window ending at n still needs.
    size_t reusable_prefix(size_t slot, size_t n) const {
        const size_t length = cache_.length(slot);
        if (n >= length || !max_run_rows_) return std::min(n, length);
        for (size_t layer = 0; layer < cache_.n_layer(); ++layer) {
            const size_t ring = cache_.ring_rows(layer);
            // The ring holds the last `ring` positions; the window before n needs ring - max_run_rows_ + 1.
            if (ring && length > ring && length - n >= max_run_rows_) return 0;
        }
        return n;
    }
    size_t reusable_prefix(size_t n) const { return reusable_prefix(slot_, n); }
    // Rows of one slot a pass may take (forward chunks longer prompts; forward_rows refuses more).
    // 0: no limit.
    size_t max_run_rows() const { return max_run_rows_; }

    const F32Options& options() const { return options_; }
    void set_observer(F32Observer observer) { observer_ = std::move(observer); }

    size_t n_slots() const { return cache_.n_slots(); }
    // Replaces the KV cache by one of n_slots empty slots of n_ctx() positions each: address
    // space, with memory behind the positions as sequences fill them (KvCache).
    void set_slot_count(size_t n_slots) {
        if (n_slots == 0) throw std::invalid_argument("set_slot_count: a cache needs at least one slot");
        cache_ = KvCache(options_.device, config_.n_layer, n_slots, cache_.n_ctx(), kv_width(), cache_.type(),
                         cache_.ring_rows(), options_.max_kv_bytes);
        slot_ = 0;
    }
    void select_slot(size_t slot) {
        if (slot >= cache_.n_slots())
            throw std::out_of_range("select_slot: slot " + std::to_string(slot) + " of " + std::to_string(cache_.n_slots()));
        slot_ = slot;
    }
    size_t slot_length(size_t slot) const { return cache_.length(slot); }
    void truncate_slot(size_t slot, size_t n) {
        if (reusable_prefix(slot, n) != std::min(n, cache_.length(slot)))
            throw std::invalid_argument("truncate: the sliding-window layers no longer hold the positions before " +
                                        std::to_string(n) + " (reusable_prefix says what can be kept)");
        cache_.truncate(slot, n);
    }

    // Throws what forward_rows would throw for these rows before it changes anything.
    void check_rows(std::span<const SlotToken> rows) const { plan_rows(rows, RowProducts::Single); }

    // Whether Derived has its own batched pass (enqueue_rows) or forward_rows feeds one slot
    // after another.
    static constexpr bool has_batched_pass() { return requires(Derived& d, const RowBatch& b) { d.enqueue_rows(b); }; }
    // One pass over rows of several sequences: each row's token is fed to its slot after what
    // the slot holds (rows of one slot adjacent and in order; Single rows before Tiled ones).
    // Returns the logits of the rows with `logits` set, in row order, computed as logits_products
    // says. Throws ContextOverflow (no slot changed) when a slot's rows would not fit,
    // std::out_of_range for a bad slot or token id, std::invalid_argument for rows out of order
    // or argmax_only (run_rows takes those).
    Logits forward_rows(std::span<const SlotToken> rows, RowProducts logits_products = RowProducts::Single) {
        if (std::ranges::any_of(rows, &SlotToken::argmax_only))
            throw std::invalid_argument("forward_rows: argmax_only rows hand back ids (run_rows)");
        return run_rows(rows, logits_products).logits;
    }
    // forward_rows with rows that may ask only for their largest logit's id (SlotToken::argmax_only).
    RowOutputs run_rows(std::span<const SlotToken> rows, RowProducts logits_products = RowProducts::Single) {
        RowBatch batch = plan_rows(rows, logits_products);
        if constexpr (has_batched_pass()) {
            std::vector<int32_t> ids(batch.n_padded);
            for (size_t i = 0; i < ids.size(); ++i) ids[i] = rows[std::min(i, rows.size() - 1)].token;
            derived().reserve_workspace(batch.n_padded);
            batch.ids = upload_ids(ctx_, ids, ids_);
            // The runs of Single rows only, from the first run on, as one group of decode rows.
            std::vector<int32_t> slot_positions;
            size_t max_length = 0;
            for (const SlotRun& run : batch.runs) {
                if (run.first_row + run.n_rows > batch.n_single) break;
                for (size_t i = 0; i < run.n_rows; ++i)
                    slot_positions.insert(slot_positions.end(), {int32_t(run.slot), int32_t(run.first_position + i)});
                max_length = std::max(max_length, run.first_position + run.n_rows);
            }
            if (!slot_positions.empty())
                batch.decode_rows = {upload_ids(ctx_, slot_positions, decode_rows_), slot_positions.size() / 2, max_length};
            for (const SlotRun& run : batch.runs) cache_.provision(run.slot, run.n_rows);
            derived().enqueue_rows(batch);
            for (const SlotRun& run : batch.runs) cache_.commit(run.slot, run.n_rows);
            return read_row_outputs(rows);
        } else {
            return outputs_from_logits(rows, forward_runs_one_by_one(rows, batch));
        }
    }

protected:
    // part: the whole model, or a tensor-parallel rank's shard (its KV heads in the cache, its
    // vocabulary rows in the logits). logits_buffer: the workspace buffer Derived's
    // enqueue_forward leaves the logits in. kv_ring_rows: per layer, 0 or the length of its ring
    // in the KV cache (models/kv_cache.hpp); with rings, max_run_rows: the most rows of one slot a
    // pass may write (the rings are sized for it).
    F32ModelBase(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                 std::optional<ModelPart> part, size_t logits_buffer, std::vector<size_t> kv_ring_rows = {},
                 size_t max_run_rows = 0)
        : file_(std::move(file)), config_(std::move(config)), options_(options),
          part_(part ? std::move(*part) : ModelPart{whole_shard(config_), std::nullopt}),
          ctx_({.device = options.device, .n_threads = options.n_threads, .cpu_isa = std::nullopt}),
          cache_(options.device, config_.n_layer, 1, context_length(options, config_.n_ctx_train), kv_width(),
                 options.cache_type, std::move(kv_ring_rows), options.max_kv_bytes),
          max_run_rows_(max_run_rows), workspace_(options.max_workspace_bytes), logits_buffer_(logits_buffer) {
        activations_for(options_);   // refuses a scheme the device has no kernels for, before any weight is placed
        if (options.cache_type == compute::KvType::Q8_0 && config_.head_dim % compute::kv_q8_0_block)
            throw std::invalid_argument("a q8_0 KV cache needs heads of whole blocks of 32 values; this model's have " +
                                        std::to_string(config_.head_dim) + " (--cache-type f16 or f32)");
    }

    // The pass of a prompt's T tokens at positions p0.. (cache reserved, workspace sized).
    void enqueue_prompt(std::span<const Token> ids, size_t p0, size_t n_out) {
        derived().enqueue_forward(upload_ids(ctx_, ids, ids_), ids.size(), p0, nullptr, n_out);
    }
    // A batch's runs, positions and padding; checks everything forward_rows promises to check
    // before the cache changes.
    RowBatch plan_rows(std::span<const SlotToken> rows, RowProducts logits_products) const {
        if (rows.empty()) throw std::invalid_argument("forward_rows: no rows");
        RowBatch batch;
        batch.n_rows = rows.size();
        batch.logits_products = logits_products;
        std::vector<bool> seen(cache_.n_slots(), false);
        for (size_t i = 0; i < rows.size(); ++i) {
            const SlotToken& row = rows[i];
            if (row.slot >= cache_.n_slots())
                throw std::out_of_range("forward_rows: row " + std::to_string(i) + " names slot " + std::to_string(row.slot) +
                                        " of " + std::to_string(cache_.n_slots()));
            check_token_ids(std::span<const Token>(&row.token, 1), config_.n_vocab);
            if (row.products == RowProducts::Single) {
                if (batch.n_single != i)
                    throw std::invalid_argument("forward_rows: row " + std::to_string(i) + " is Single after a Tiled row");
                ++batch.n_single;
            }
            if (row.logits) batch.logit_rows.push_back(i);
            if (!batch.runs.empty() && batch.runs.back().slot == row.slot) {
                ++batch.runs.back().n_rows;
                continue;
            }
            if (seen[row.slot])
                throw std::invalid_argument("forward_rows: the rows of slot " + std::to_string(row.slot) + " are not adjacent");
            seen[row.slot] = true;
            batch.runs.push_back({row.slot, i, 1, cache_.length(row.slot)});
        }
        for (const SlotRun& run : batch.runs) {
            cache_.reserve(run.slot, run.n_rows);
            if (max_run_rows_ && run.n_rows > max_run_rows_)
                throw std::invalid_argument("forward_rows: " + std::to_string(run.n_rows) + " rows of slot " +
                                            std::to_string(run.slot) + " in one pass; this model takes at most " +
                                            std::to_string(max_run_rows_));
        }
        const size_t n_tiled = batch.n_rows - batch.n_single;
        // compute::matmul takes fewer rows than its device's min_tiled_tokens one by one: padded
        // up to that many, and to whole tiles of compute::matmul_row_tiles, a lone Tiled row is
        // computed as it would be among others (tests/server/batched_rows_test.cpp fails if the
        // two disagree).
        const size_t tiled_rows = compute::min_tiled_tokens(options_.device), tile = compute::row_tile_rows(options_.device);
        const auto padded = [&](size_t n) { return n ? (std::max(n, tiled_rows) + tile - 1) / tile * tile : 0; };
        batch.batched = true;
        batch.n_padded = batch.n_single + padded(n_tiled);
        batch.n_logits_padded =
            logits_products == RowProducts::Tiled ? padded(batch.logit_rows.size()) : batch.logit_rows.size();
        // Logit rows beyond the pass's rows: the products' Tiled rows padded to them, whole tiles.
        if (batch.n_logits_padded > batch.n_padded) batch.n_padded = batch.n_single + padded(batch.n_logits_padded - batch.n_single);
        return batch;
    }
    // The outputs of a batched pass whose logits rows (those of `rows` with `logits` set) are in
    // the logits buffer: the argmax_only rows' ids picked there, the other rows' logits copied back
    // through pinned memory (on CUDA) and widened.
    RowOutputs read_row_outputs(std::span<const SlotToken> rows) {
        const float* logits = workspace_.buffer(logits_buffer_);
        const size_t V = n_logits();
        std::vector<size_t> full, picked;   // indices among the logits rows
        for (const SlotToken& row : rows)
            if (row.logits) (row.argmax_only ? picked : full).push_back(full.size() + picked.size());
        RowOutputs out{Logits{V, full.size(), std::vector<double>(full.size() * V)}, {}};
        if (!picked.empty()) {
            const size_t n_out = full.size() + picked.size();
            if (row_argmax_.bytes() < n_out * sizeof(int32_t)) row_argmax_ = compute::Buffer(options_.device, n_out * sizeof(int32_t));
            compute::argmax(ctx_, logits, n_out, V, row_argmax_.as<int32_t>());
            std::vector<int32_t> ids(n_out);
            compute::download(ctx_, ids.data(), row_argmax_.data(), n_out * sizeof(int32_t));
            for (size_t i : picked) out.argmax.push_back(Token(ids[i]));
        }
        if (full.empty()) return out;
        if (picked.empty()) {   // every logits row: one copy
            const size_t count = full.size() * V;
            compute::widen_to_double(decode_step_.logits_on_host(ctx_, logits, count), count, out.logits.values.data());
        } else {
            for (size_t j = 0; j < full.size(); ++j)
                compute::widen_to_double(decode_step_.logits_on_host(ctx_, logits + full[j] * V, V), V, out.logits.values.data() + j * V);
        }
        return out;
    }
    // forward_rows for a model without enqueue_rows: each run through forward() in its slot.
    Logits forward_runs_one_by_one(std::span<const SlotToken> rows, const RowBatch& batch) {
        Logits result{n_logits(), batch.logit_rows.size(), {}};
        result.values.reserve(result.n_positions * n_logits());
        const size_t selected = slot_;
        try {
            for (const SlotRun& run : batch.runs) {
                const auto run_rows = rows.subspan(run.first_row, run.n_rows);
                std::vector<Token> ids;
                size_t n_logit_rows = 0;
                for (const SlotToken& row : run_rows) ids.push_back(row.token), n_logit_rows += row.logits;
                slot_ = run.slot;
                const bool only_last = n_logit_rows == 0 || (n_logit_rows == 1 && run_rows.back().logits);
                const Logits logits = forward(ids, only_last ? LogitsMode::Last : LogitsMode::All);
                for (size_t i = 0; i < run_rows.size(); ++i) {
                    if (!run_rows[i].logits) continue;
                    const auto row = only_last ? logits.last() : logits.row(i);
                    result.values.insert(result.values.end(), row.begin(), row.end());
                }
            }
        } catch (...) {
            slot_ = selected;
            throw;
        }
        slot_ = selected;
        return result;
    }
    // The pass of decode_step_'s token at its position, both in device memory.
    void enqueue_decode_step() { derived().enqueue_forward(decode_step_.token(), 1, 0, decode_step_.position(), 1); }

    // The widths this part computes: its KV heads' cache rows, its vocabulary rows of logits.
    size_t kv_width() const { return part_.shard.kv_heads.size() * config_.head_dim; }
    size_t n_logits() const { return part_.shard.vocab.size(); }
    // Where a rank's partial sums are added up; null on one device.
    const RankReduce* reduce() const { return part_.reduce ? &*part_.reduce : nullptr; }

    std::shared_ptr<const gguf::File> file_;   // the mapping the weight matrices point into (CPU)
    ModelConfig config_;
    F32Options options_;
    ModelPart part_;
    compute::Context ctx_;
    std::vector<compute::Buffer> device_weights_;   // the matrices' copies on another device
    KvCache cache_;
    size_t max_run_rows_ = 0;                       // 0: no limit (no ring layers)
    size_t slot_ = 0;
    F32Workspace workspace_;
    F32Observer observer_;
    compute::Buffer ids_;                           // this call's token ids, on the device
    compute::Buffer decode_rows_;                   // a batched pass's decode rows (RowBatch::decode_rows)
    compute::Buffer top_;                           // forward_top_k's ids, then its values
    compute::Buffer row_argmax_;                    // a batched pass's argmax_only ids
    F32DecodeStep decode_step_;

private:
    Derived& derived() { return static_cast<Derived&>(*this); }

    // One token through decode_step_: its logits in the logits buffer, and with `greedy` their
    // argmax in decode_step_.next_token().
    void decode(Token token, bool greedy) {
        const size_t position = cache_.reserve(slot_, 1);
        cache_.provision(slot_, 1);
        derived().reserve_workspace(1);
        const bool graph = use_cuda_graph(options_);
        // A captured step holds the selected slot's cache addresses: another slot recaptures it.
        std::vector<const void*> addresses = workspace_.addresses();
        addresses.push_back(cache_.keys(0, slot_).data);
        decode_step_.run(ctx_, token, position, graph, addresses, [&] {
            derived().enqueue_decode_step();
            // A graph serves forward() and forward_greedy() alike: it always ends with the argmax.
            if (graph || greedy)
                compute::argmax(ctx_, workspace_.buffer(logits_buffer_), 1, n_logits(), decode_step_.next_token());
        });
        cache_.commit(slot_, 1);
    }

    size_t logits_buffer_;
};

}  // namespace twinfer
