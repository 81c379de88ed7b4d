#include "models/transformer_model.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/experts.hpp"
#include "compute/memory.hpp"
#include "compute/norm.hpp"

namespace twinfer {
namespace {

// The activation buffers of one forward pass, by name; widths in TransformerModel::reserve_workspace.
// XN2: the parallel block's FFN input; O: an output normalized before its residual add (sandwich
// norms), or a rank's partial sums before their all-reduce; ROUTER: the router's logits.
enum Buffer { X, XN, XN2, Q, KCUR, VCUR, ATT, O, GATE, UP, ROUTER, LOGITS, N_BUFFERS };

// The most positions one pass writes into a slot when the model has ring layers: longer prompts
// are fed in parts of this size (F32ModelBase::forward), as llama.cpp sizes its sliding-window
// cache by its batch.
constexpr size_t max_rows_with_rings = 512;

// Per layer, the ring a sliding-window layer keeps in the KV cache (models/kv_cache.hpp): its
// window plus the rows one pass may add, so that no pass overwrites a position its own tokens'
// windows still read. 0 for global layers, and where the ring would not be smaller than the context.
std::vector<size_t> kv_ring_rows(const ModelConfig& c, size_t n_ctx) {
    std::vector<size_t> rings;
    bool any = false;
    for (const LayerSpec& layer : c.transformer.layers) {
        const size_t ring = layer.window ? layer.window + max_rows_with_rings - 1 : 0;
        rings.push_back(ring && 2 * ring < n_ctx ? ring : 0);
        any = any || rings.back();
    }
    return any ? rings : std::vector<size_t>{};
}

// Rows [first, first + count) of a matrix: a fused QKV or gate+up split where it lies.
compute::WeightMatrix row_slice(const compute::WeightMatrix& w, size_t first, size_t count) {
    return {w.type, count, w.cols, w.data + first * w.row_bytes(), w.planar};
}

}  // namespace

TransformerModel::TransformerModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                                   std::optional<ModelPart> part, std::vector<size_t> kv_rings)
    : F32ModelBase(std::move(file), std::move(config), options, std::move(part), LOGITS, kv_rings,
                   kv_rings.empty() ? 0 : max_rows_with_rings) {}

TransformerModel TransformerModel::load(std::shared_ptr<const gguf::File> file, const F32Options& options,
                                        std::optional<ModelPart> part) {
    if (!file) throw std::invalid_argument("TransformerModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::Transformer)
        throw std::runtime_error(file->origin() + ": TransformerModel runs " + transformer_architecture_names() + ", not '" +
                                 c.architecture_name + "'");
    const TransformerSpec& spec = c.transformer;
    const ArchitectureDescription& d = *spec.description;
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, D = c.head_dim, QD = c.n_head * D, KVD = c.n_embd_kv();
    if (spec.n_expert > 0 && spec.post_norms)
        throw std::runtime_error(file->origin() + ": experts with sandwich norms are not implemented");
    if (spec.n_expert_used > static_cast<int>(compute::max_top_k))   // the router's choice is compute::top_k's
        throw std::runtime_error(file->origin() + ": more than " + std::to_string(compute::max_top_k) +
                                 " experts per token is not implemented");
    for (const LayerSpec& layer : spec.layers)
        if (options.device == compute::Device::CUDA && layer.window > compute::max_attention_window)
            throw std::runtime_error(file->origin() + ": a sliding window of " + std::to_string(layer.window) +
                                     " positions exceeds the CUDA attention's " + std::to_string(compute::max_attention_window));

    const size_t n_ctx = context_length(options, c.n_ctx_train);
    std::vector<size_t> kv_rings = kv_ring_rows(c, n_ctx);
    if (!part)
        check_device_memory(options.device, *file, KvCache::bytes(c.n_layer, 1, n_ctx, c.n_embd_kv(), options.cache_type, kv_rings));
    TransformerModel m(file, c, options, std::move(part), kv_rings);
    // The shard's pieces: rows of whole heads (q) and KV heads (k, v), their columns of the
    // attention output; rows of the feed-forward units (gate, up) and their columns of the down
    // product, each expert's likewise; the shard's vocabulary rows of the output. A bias of a
    // column-split product (attention output, down, the experts' down) is added once, by rank 0:
    // the all-reduce sums the ranks' partial outputs, bias included.
    const RankShard& s = m.part_.shard;
    const IndexRange q_rows = s.heads.scaled(D), kv_rows = s.kv_heads.scaled(D);
    const bool sums_bias = s.rank == 0;
    const F32WeightLoader load(*file);
    ShardPlacer placer(m.ctx_, m.device_weights_);
    auto place = [&](const compute::WeightMatrix& w) { return placer.rows(w, {0, w.rows}); };
    auto rows = [&](const compute::WeightMatrix& w, IndexRange range) { return placer.rows(w, range); };
    auto columns = [&](const std::string& name, size_t n_rows, size_t n_cols, IndexRange range) {
        return placer.columns(load.matrix(name, n_rows, n_cols), range, name);
    };
    auto floats = [&](const std::vector<float>& values) { return DeviceFloats(m.ctx_, values); };
    // Biases: optional, or required where the description says so (gpt-oss's attention output,
    // router and experts); count > 1: one bias of n per expert.
    auto bias = [&](const std::string& name, size_t n, size_t count = 1) {
        return d.required_biases || load.has(name) ? load.vectors(name, n, count) : std::vector<float>{};
    };
    auto part_of = [](const std::vector<float>& v, IndexRange range) { return part_of_each(v, 1, range); };
    auto norm = [&](const std::string& name, bool required) {
        Norm n;
        if (!required && !load.has(name + ".weight")) return n;
        n.weight = floats(load.vector(name + ".weight", E));
        if (spec.norm == NormKind::LayerNorm) {
            std::vector<float> bias = load.optional_vector(name + ".bias", E);
            n.bias = floats(bias.empty() ? std::vector<float>(E, 0.0f) : bias);
        }
        return n;
    };
    // Experts: a [n_expert, rows, cols] tensor (ggml dims [cols, rows, n_expert]), in the file as a
    // [n_expert * rows, cols] matrix.
    auto experts = [&](const std::string& name, size_t rows, size_t cols) -> compute::WeightMatrix {
        const gguf::TensorInfo* t = file->find_tensor(name);
        const size_t n = spec.n_expert;
        if (!t) throw std::runtime_error(file->origin() + ": tensor " + name + " is missing");
        if (t->dims != std::vector<uint64_t>{cols, rows, n})
            throw std::runtime_error(file->origin() + ": tensor " + name + " has the wrong shape for " + std::to_string(n) +
                                     " experts of [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
        if (!compute::matmul_supports(t->type))
            throw std::runtime_error(file->origin() + ": tensor " + name + ": no matmul kernel for its type");
        return {t->type, rows * n, cols, t->data.data()};
    };

    // YaRN and LongRoPE: one set of divisors for every scaled layer (the model's base), and the
    // magnitude on the rotation itself: with partial rotary it scales only the rotated dimensions
    // (llama.cpp, HF), which the attention's scale could not. The divisors go to the kernels as
    // float, as rope_freqs.weight does (a relative 6e-8 of each frequency: within float32's budget).
    const RopeFrequencyScaling rope_scaling = rope_frequency_scaling(c, n_ctx);
    m.rope_factors_ = floats(std::vector<float>(rope_scaling.divisors.begin(), rope_scaling.divisors.end()));
    m.token_embd_ = place(load.matrix("token_embd.weight", V, E));
    const bool tied = !load.has("output.weight");
    m.output_ = tied && s.vocab == IndexRange{0, V} ? m.token_embd_ : rows(load.matrix(tied ? "token_embd.weight" : "output.weight", V, E), s.vocab);
    m.output_norm_ = norm("output_norm", true);
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        const LayerSpec& layer = spec.layers[il];
        Layer& L = m.layers_.emplace_back();
        L.attn_norm = norm(p + "attn_norm", true);
        if (load.has(p + "attn_qkv.weight")) {
            const compute::WeightMatrix qkv = load.matrix(p + "attn_qkv.weight", QD + 2 * KVD, E);
            L.wq = rows(row_slice(qkv, 0, QD), q_rows), L.wk = rows(row_slice(qkv, QD, KVD), kv_rows);
            L.wv = rows(row_slice(qkv, QD + KVD, KVD), kv_rows);
            const std::vector<float> b = load.optional_vector(p + "attn_qkv.bias", QD + 2 * KVD);
            L.bq = floats(part_of(b, q_rows)), L.bk = floats(part_of(b, {QD + kv_rows.begin, QD + kv_rows.end}));
            L.bv = floats(part_of(b, {QD + KVD + kv_rows.begin, QD + KVD + kv_rows.end}));
        } else {
            L.wq = rows(load.matrix(p + "attn_q.weight", QD, E), q_rows);
            L.wk = rows(load.matrix(p + "attn_k.weight", KVD, E), kv_rows);
            L.wv = rows(load.matrix(p + "attn_v.weight", KVD, E), kv_rows);
            L.bq = floats(part_of(load.optional_vector(p + "attn_q.bias", QD), q_rows));
            L.bk = floats(part_of(load.optional_vector(p + "attn_k.bias", KVD), kv_rows));
            L.bv = floats(part_of(load.optional_vector(p + "attn_v.bias", KVD), kv_rows));
        }
        L.wo = columns(p + "attn_output.weight", E, QD, q_rows);
        if (sums_bias) L.bo = floats(bias(p + "attn_output.bias", E));
        if (d.attention_sinks) L.sinks = floats(part_of(load.vector(p + "attn_sinks.weight", c.n_head), s.heads));
        if (spec.qk_norm) {
            L.q_norm = floats(load.vector(p + "attn_q_norm.weight", D));
            L.k_norm = floats(load.vector(p + "attn_k_norm.weight", D));
        }
        if (spec.post_norms) {
            L.attn_post_norm = norm(p + "post_attention_norm", true);
            L.ffn_post_norm = norm(p + "post_ffw_norm", true);
        }
        L.ffn_norm = norm(p + std::string(d.ffn_norm), spec.residual == ResidualKind::Sequential);
        if (spec.n_expert > 0) {
            const size_t X = spec.n_expert, FE = spec.n_ff_expert;
            L.router = place(load.matrix(p + "ffn_gate_inp.weight", X, E));
            L.router_bias = floats(bias(p + "ffn_gate_inp.bias", X));
            L.gate_exps_bias = floats(part_of_each(bias(p + "ffn_gate_exps.bias", FE, X), X, s.expert_ff));
            L.up_exps_bias = floats(part_of_each(bias(p + "ffn_up_exps.bias", FE, X), X, s.expert_ff));
            if (sums_bias) L.down_exps_bias = floats(bias(p + "ffn_down_exps.bias", E, X));
            L.gate_exps = {placer.rows_of_each(experts(p + "ffn_gate_exps.weight", FE, E), X, s.expert_ff), X};
            L.up_exps = {placer.rows_of_each(experts(p + "ffn_up_exps.weight", FE, E), X, s.expert_ff), X};
            L.down_exps = {placer.columns(experts(p + "ffn_down_exps.weight", E, FE), s.expert_ff, p + "ffn_down_exps.weight"), X};
            L.gate_exps.bias = L.gate_exps_bias.empty() ? nullptr : L.gate_exps_bias.data();
            L.up_exps.bias = L.up_exps_bias.empty() ? nullptr : L.up_exps_bias.data();
            L.down_exps.bias = L.down_exps_bias.empty() ? nullptr : L.down_exps_bias.data();
        } else {
            const bool gated = spec.feed_forward != FeedForwardKind::GeluTanh && spec.feed_forward != FeedForwardKind::GeluErf;
            if (gated && !load.has(p + "ffn_gate.weight")) {
                const compute::WeightMatrix gate_up = load.matrix(p + "ffn_up.weight", 2 * F, E);
                L.w_gate = rows(row_slice(gate_up, 0, F), s.ff), L.w_up = rows(row_slice(gate_up, F, F), s.ff);
            } else {
                if (gated) L.w_gate = rows(load.matrix(p + "ffn_gate.weight", F, E), s.ff);
                L.w_up = rows(load.matrix(p + "ffn_up.weight", F, E), s.ff);
                L.b_up = floats(part_of(load.optional_vector(p + "ffn_up.bias", F), s.ff));
            }
            L.w_down = columns(p + "ffn_down.weight", E, F, s.ff);
            if (sums_bias) L.b_down = floats(load.optional_vector(p + "ffn_down.bias", E));
        }
        L.rope = {.pairing = spec.rope == RopeKind::Normal ? compute::RopeParams::Pairing::Adjacent
                                                           : compute::RopeParams::Pairing::Halves,
                  .n_rot = static_cast<size_t>(c.n_rot),
                  .freq_base = layer.rope_freq_base,
                  .position_scale = layer.rope_position_scale,
                  .freq_factors = layer.rope_scaled && !m.rope_factors_.empty() ? m.rope_factors_.data() : nullptr,
                  .magnitude = layer.rope_scaled ? rope_scaling.magnitude : 1.0};
        L.attention = {.n_head = s.heads.size(),
                       .n_head_kv = s.kv_heads.size(),
                       .head_dim = D,
                       .kv_stride = kv_rows.size(),
                       .scale = static_cast<float>(spec.attention_scale),
                       .window = layer.window,
                       .ring = kv_rings.empty() ? 0 : kv_rings[il],
                       .sinks = L.sinks.empty() ? nullptr : L.sinks.data()};
    }
    if (spec.n_expert > 0)
        m.one_by_one_ = compute::Buffer(options.device, compute::one_by_one_scratch_bytes(m.expert_layer(m.layers_.front())));
    return m;
}

void TransformerModel::reserve_workspace(size_t n_tokens) {
    const ModelConfig& c = config_;
    const RankShard& s = part_.shard;
    const size_t E = c.n_embd, Fr = s.ff.size(), QDr = s.heads.size() * c.head_dim, KVDr = kv_width();
    const size_t widths[N_BUFFERS] = {E, E, E, QDr, KVDr, KVDr, QDr, E, Fr, Fr, static_cast<size_t>(c.transformer.n_expert),
                                      n_logits()};
    workspace_.reserve(options_.device, n_tokens, widths);
    if (c.transformer.n_expert && n_tokens >= compute::min_tiled_tokens(options_.device)) {
        const size_t bytes = compute::grouped_scratch_bytes(expert_layer(layers_.front()), n_tokens,
                                                            compute::expert_group_rows(options_.device));
        if (bytes > expert_groups_.bytes()) expert_groups_ = compute::Buffer(options_.device, bytes);
    }
}

void TransformerModel::normalize(const Norm& norm, const float* x, size_t n_rows, float* out) {
    const size_t E = config_.n_embd;
    const float eps = static_cast<float>(config_.norm_eps);
    if (config_.transformer.norm == NormKind::RMSNorm) return compute::rms_norm(ctx_, x, norm.weight.data(), n_rows, E, eps, out);
    compute::layer_norm(ctx_, x, norm.weight.data(), norm.bias.data(), n_rows, E, eps, out);
}

// x += norm(o) for N rows (no norm: x += o), o first summed over the ranks on a tensor-parallel
// rank (o its partial output until then). next_norm: the RMSNorm the next products apply to x,
// which the add may prepare (compute::add_rms_norm).
void TransformerModel::add_residual(const Norm* norm, float* o, size_t N, float* x, const compute::RmsNorm* next_norm) {
    const size_t E = config_.n_embd;
    if (const RankReduce* r = reduce()) r->collective->all_reduce_sum(r->rank, ctx_, o, N * E);
    if (norm && config_.transformer.norm == NormKind::RMSNorm)
        return compute::add_rms_norm(ctx_, x, o, norm->weight.data(), N, E, static_cast<float>(config_.norm_eps), next_norm);
    if (norm) normalize(*norm, o, N, o);
    compute::add(ctx_, x, o, N * E);
}

// A single sequence's pass (F32ModelBase's prompt and decode step): one run of T rows in the
// selected slot, every product over all rows at once.
void TransformerModel::enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position,
                                       size_t n_out) {
    enqueue_pass(sequence_batch(ids, slot_, T, p0, n_out), device_position);
}

void TransformerModel::enqueue_rows(const RowBatch& batch) { enqueue_pass(batch, nullptr); }

// The matrix products of a pass (rows_matmul: Single rows as the decode step computes them, the
// others in one product; a row never depends on the rest).
void TransformerModel::products(std::span<const compute::MatmulOutput> outputs, const float* x, size_t n_single,
                                size_t n_tiled, const compute::RmsNorm* norm) {
    rows_matmul(ctx_, outputs, x, n_single, n_tiled, activations_for(options_), norm, batched_);
}

// Shapes: N = batch.n_padded rows (each run's tokens at its slot and positions, then padding), E =
// n_embd, H heads and Hkv KV heads of D dims, F = n_ff, V = n_vocab. With device_position (a
// decode step: one row) the position is read there, so a captured CUDA graph replays it. The pass
// GPTModel::transformer_forward computes in float64, step for step.
void TransformerModel::enqueue_pass(const RowBatch& batch, const int32_t* device_position) {
    const ModelConfig& c = config_;
    const TransformerSpec& spec = c.transformer;
    const size_t E = c.n_embd, H = part_.shard.heads.size(), Hkv = part_.shard.kv_heads.size(), D = c.head_dim;
    const size_t QD = H * D, KVD = Hkv * D;
    const size_t N = batch.n_padded, n_single = batch.n_single, n_tiled = N - n_single;
    const float eps = static_cast<float>(c.norm_eps);
    float *x = workspace_.buffer(X), *xn = workspace_.buffer(XN), *q = workspace_.buffer(Q), *att = workspace_.buffer(ATT);
    float *o = workspace_.buffer(O), *logits = workspace_.buffer(LOGITS);
    // An RMSNorm before products goes into them (a GPU's int8 decode products fold it into their
    // quantization: no launch of its own). Not for the parallel block, whose FFN reads the
    // attention's normalized input after the attention has run.
    const bool fold_norms = spec.norm == NormKind::RMSNorm && spec.residual == ResidualKind::Sequential;
    // A sequence's prompt writes its K and V rows straight into the cache.
    const bool into_cache = !batch.batched && !device_position;
    // A sequence's residual adds (one device: its residual products, or its post-norms' adds) are
    // handed the norm the next products fold in, which a GPU's decode step prepares in the same
    // launch; not while an observer reads the normalized rows, which that leaves unwritten.
    const bool prepare_norms = fold_norms && !batch.batched && !reduce() && !observer_;
    batched_ = batch.batched;
    const SlotRun& first_run = batch.runs.front();

    compute::get_rows(ctx_, token_embd_, batch.ids, N, x);                           // x: [N, E]
    if (spec.embedding_scale != 1.0) compute::scale(ctx_, x, N * E, static_cast<float>(spec.embedding_scale));
    observe(ctx_, observer_, "inp_embd", -1, x, N * E);
    for (size_t il = 0; il < layers_.size(); ++il) {
        const Layer& L = layers_[il];
        const bool rope = spec.layers[il].rope;
        const size_t ring = L.attention.ring;                                        // a ring layer of the cache
        const bool direct = into_cache && !ring && cache_.type() == compute::KvType::F32;
        float* k = direct ? cache_.keys(il, first_run.slot).f32() + first_run.first_position * KVD : workspace_.buffer(KCUR);
        float* v = direct ? cache_.values(il, first_run.slot).f32() + first_run.first_position * KVD : workspace_.buffer(VCUR);

        // Attention: q, k, v = W xn + b; QK-norm per head; RoPE (not in a NoPE layer); attention
        // over the layer's window, each run in its slot.
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};       // q: [N, H, D]; k, v: [N, Hkv, D]
        const compute::RmsNorm attn_norm{L.attn_norm.weight.data(), eps, xn};        // xn: [N, E]
        if (fold_norms) {
            products(qkv, x, n_single, n_tiled, &attn_norm);
        } else {
            normalize(L.attn_norm, x, N, xn);
            products(qkv, xn, n_single, n_tiled);
        }
        observe(ctx_, observer_, "attn_norm", il, xn, N * E);
        if (!L.bq.empty()) compute::add_bias(ctx_, q, L.bq.data(), N, QD);
        if (!L.bk.empty()) compute::add_bias(ctx_, k, L.bk.data(), N, KVD);
        if (!L.bv.empty()) compute::add_bias(ctx_, v, L.bv.data(), N, KVD);
        const compute::HeadNorms qk_norms{spec.qk_norm ? L.q_norm.data() : nullptr, spec.qk_norm ? L.k_norm.data() : nullptr, eps};
        if (device_position) {                                                       // the norms, RoPE and the stores: one launch on a GPU
            const compute::CacheRows keys = cache_.keys(il, first_run.slot), values = cache_.values(il, first_run.slot);
            compute::norm_rope_store_at(ctx_, q, H, k, v, Hkv, D, device_position, rope ? &L.rope : nullptr, qk_norms, keys,
                                        values, ring);
            compute::attention_at(ctx_, q, keys, values, device_position, cache_.n_ctx(), L.attention, att);
        } else {
            if (spec.qk_norm) {
                compute::rms_norm(ctx_, q, qk_norms.q, N * H, D, eps, q);
                compute::rms_norm(ctx_, k, qk_norms.k, N * Hkv, D, eps, k);
            }
            attend_runs(ctx_, cache_, il, batch, q, k, v, rope ? &L.rope : nullptr, L.attention, direct, att);   // att: [N, H, D]
        }
        observe(ctx_, observer_, "Qcur", il, q, N * QD);
        observe(ctx_, observer_, "kqv_out", il, att, N * QD);

        // The parallel block's FFN reads the layer's input, normalized before the attention adds to it.
        const compute::RmsNorm ffn_norm{L.ffn_norm.weight.data(), eps, xn};
        const float* ffn_in = xn;
        if (spec.residual == ResidualKind::Parallel && !L.ffn_norm.weight.empty()) {
            normalize(L.ffn_norm, x, N, workspace_.buffer(XN2));
            ffn_in = workspace_.buffer(XN2);
        }
        const bool ffn_folds = spec.residual == ResidualKind::Sequential && !L.gate_exps.n_experts;
        const compute::RmsNorm* prepared_ffn_norm = prepare_norms && ffn_folds ? &ffn_norm : nullptr;
        if (spec.post_norms || reduce()) {                                           // x += post_norm(sum(Wo att + bo))
            const compute::MatmulOutput out{L.wo, o};
            products(std::span(&out, 1), att, n_single, n_tiled);
            if (!L.bo.empty()) compute::add_bias(ctx_, o, L.bo.data(), N, E);
            add_residual(spec.post_norms ? &L.attn_post_norm : nullptr, o, N, x, prepared_ffn_norm);
        } else if (!batched_) {                                                      // x += Wo att + bo
            residual_project(ctx_, L.wo, L.bo, att, N, x, activations_for(options_), prepared_ffn_norm);
        } else {
            const compute::MatmulOutput out{L.wo, x, /*accumulate=*/true};
            products(std::span(&out, 1), att, n_single, n_tiled);
            if (!L.bo.empty()) compute::add_bias(ctx_, x, L.bo.data(), N, E);
        }
        observe(ctx_, observer_, "ffn_inp", il, x, N * E);

        const compute::RmsNorm* ffn_in_norm = nullptr;                               // the norm the FFN's products apply
        if (spec.residual == ResidualKind::Sequential) {
            if (fold_norms && !L.gate_exps.n_experts) {
                ffn_in = x, ffn_in_norm = &ffn_norm;
            } else {
                normalize(L.ffn_norm, x, N, xn);
                ffn_in = xn;
            }
        }
        const compute::RmsNorm next_norm{il + 1 < layers_.size() ? layers_[il + 1].attn_norm.weight.data() : nullptr, eps, xn};
        const compute::RmsNorm* prepared_next_norm = prepare_norms && il + 1 < layers_.size() ? &next_norm : nullptr;
        if (spec.post_norms || reduce()) {                                           // x += post_norm(sum(ffn(xn)))
            feed_forward(L, ffn_in, ffn_in_norm, N, n_single, o, false);
            add_residual(spec.post_norms ? &L.ffn_post_norm : nullptr, o, N, x, prepared_next_norm);
        } else {
            feed_forward(L, ffn_in, ffn_in_norm, N, n_single, x, true, prepared_next_norm);   // x += ffn(xn)
        }
        observe(ctx_, observer_, "l_out", il, x, N * E);
    }

    // The rows asked for, gathered at the front of x (ascending: none is overwritten before it is
    // read), normalized and projected as the batch says.
    const size_t n_out = batch.logit_rows.size();
    for (size_t i = 0; i < n_out; ++i)
        if (batch.logit_rows[i] != i) copy_on_device(ctx_, x + i * E, x + batch.logit_rows[i] * E, E * sizeof(float));
    const bool tiled = batch.logits_products == RowProducts::Tiled;
    const size_t n_logit_rows = tiled ? batch.n_logits_padded : n_out;
    normalize(output_norm_, x, n_logit_rows, xn);                                     // xn: [n_logits, E]
    observe(ctx_, observer_, "result_norm", -1, xn, n_out * E);
    const compute::MatmulOutput output{output_, logits};
    products(std::span(&output, 1), xn, tiled ? 0 : n_out, tiled ? n_logit_rows : 0);   // logits: [rows, V]
    if (spec.final_logit_softcap > 0)
        compute::softcap(ctx_, logits, n_logit_rows * n_logits(), static_cast<float>(spec.final_logit_softcap));
}

// A batched pass's activations run as each_row says: a row's values must not depend on the other rows. A
// sequence's gated products and activation are one matmul_glu (one launch for a decode step's).
void TransformerModel::feed_forward(const Layer& L, const float* h, const compute::RmsNorm* norm, size_t N, size_t n_single,
                                    float* y, bool accumulate, const compute::RmsNorm* next_norm) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd, F = part_.shard.ff.size();   // this part's units
    if (L.gate_exps.n_experts) {                                                    // h normalized (no norm)
        if (!accumulate) zero_on_device(ctx_, y, N * E * sizeof(float));
        return mixture_of_experts(L, h, N, n_single, y);
    }
    float *gate = workspace_.buffer(GATE), *up = workspace_.buffer(UP);             // [N, F]
    const FeedForwardKind kind = c.transformer.feed_forward;
    if (!batched_ && (kind == FeedForwardKind::SwiGLU || kind == FeedForwardKind::GeGLU)) {   // one launch where the device can
        compute::matmul_glu(ctx_, L.w_gate, L.w_up, h, N, gate, up, activations_for(options_), norm,
                            kind == FeedForwardKind::GeGLU ? compute::Glu::GeluTanh : compute::Glu::SiLU);
    } else if (kind != FeedForwardKind::GeluTanh && kind != FeedForwardKind::GeluErf) {
        const compute::MatmulOutput outputs[] = {{L.w_gate, gate}, {L.w_up, up}};
        products(outputs, h, n_single, N - n_single, norm);
        each_row(ctx_, N, F, [&](size_t first, size_t n) {
            if (kind == FeedForwardKind::SwiGLU) compute::swiglu(ctx_, gate + first, up + first, n, gate + first);
            else if (kind == FeedForwardKind::SwiGLUOai) compute::swiglu_oai(ctx_, gate + first, up + first, n, gate + first);
            else compute::geglu(ctx_, gate + first, up + first, n, gate + first);
        });
    } else {
        const compute::MatmulOutput output{L.w_up, gate};
        products(std::span(&output, 1), h, n_single, N - n_single, norm);
        if (!L.b_up.empty()) compute::add_bias(ctx_, gate, L.b_up.data(), N, F);
        each_row(ctx_, N, F, [&](size_t first, size_t n) {
            if (kind == FeedForwardKind::GeluTanh) compute::gelu(ctx_, gate + first, n);
            else compute::gelu_erf(ctx_, gate + first, n);
        });
    }
    if (accumulate && !batched_) return residual_project(ctx_, L.w_down, L.b_down, gate, N, y, activations_for(options_), next_norm);
    const compute::MatmulOutput down{L.w_down, y, accumulate};
    products(std::span(&down, 1), gate, n_single, N - n_single);
    if (!L.b_down.empty()) compute::add_bias(ctx_, y, L.b_down.data(), N, E);
}

compute::ExpertLayer TransformerModel::expert_layer(const Layer& L) const {
    const TransformerSpec& spec = config_.transformer;
    return {L.gate_exps, L.up_exps, L.down_exps, static_cast<size_t>(spec.n_expert_used), spec.normalize_expert_weights,
            spec.feed_forward == FeedForwardKind::SwiGLUOai ? compute::ExpertActivation::SwiGLUOai
                                                             : compute::ExpertActivation::SwiGLU};
}

// y += sum over each token's top-k experts of weight_e * expert_e(h): the router's softmax over
// all experts, the k largest kept (the lower index first on ties) and renormalized when the spec
// says so (compute/experts.hpp). Single rows and short prompts one token after another, the
// choice left on the device (a GPU decode step needs no copy to the host); the Tiled rows of a
// pass grouped by expert once they are as many as a tiled product takes, as the other products
// compute them (each expert's weights read once for its tokens; a row's result independent of
// the others: Single or Tiled, never chosen by the batch size).
void TransformerModel::mixture_of_experts(const Layer& L, const float* h, size_t T, size_t n_single, float* y) {
    const size_t E = config_.n_embd, X = config_.transformer.n_expert;
    const compute::Activations activations = activations_for(options_);
    const compute::ExpertLayer experts = expert_layer(L);
    float* router = workspace_.buffer(ROUTER);                                       // [T, X]
    const compute::MatmulOutput output{L.router, router};
    products(std::span(&output, 1), h, n_single, T - n_single);
    if (!L.router_bias.empty()) compute::add_bias(ctx_, router, L.router_bias.data(), T, X);
    const size_t tiled_rows = compute::min_tiled_tokens(options_.device);
    const size_t n_grouped = T - n_single >= tiled_rows ? T - n_single : 0, n_alone = T - n_grouped;
    compute::add_experts_one_by_one(ctx_, experts, h, n_alone, router, compute::one_by_one_scratch_in(one_by_one_.data(), experts),
                                    activations, y);
    if (!n_grouped) return;
    const size_t group_rows = compute::expert_group_rows(options_.device);
    const compute::GroupedScratch grouped =
        compute::grouped_scratch_in(expert_groups_.data(), experts, n_grouped, group_rows);
    compute::add_experts_grouped(ctx_, experts, h + n_alone * E, n_grouped, router + n_alone * X, group_rows,
                                 grouped, activations, y + n_alone * E);
}

}  // namespace twinfer
