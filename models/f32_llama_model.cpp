#include "models/f32_llama_model.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/norm.hpp"
#include "models/llama_layers.hpp"

namespace twinfer {
namespace {

// The activation buffers of one forward pass, by name; widths in F32LlamaModel::reserve_workspace.
// KCUR and VCUR hold a decode step's key and value rows until they are stored at its position.
// OUT: a rank's partial sums before their all-reduce.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, OUT, GATE, UP, LOGITS, N_BUFFERS };

}  // namespace

F32LlamaModel::F32LlamaModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options,
                             std::optional<ModelPart> part)
    : F32ModelBase(std::move(file), std::move(config), options, std::move(part), LOGITS) {}

F32LlamaModel F32LlamaModel::load(std::shared_ptr<const gguf::File> file, const F32Options& options,
                                  std::optional<ModelPart> part) {
    if (!file) throw std::invalid_argument("F32LlamaModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::Llama)
        throw std::runtime_error(file->origin() + ": F32LlamaModel runs the Llama family, not '" + c.architecture_name + "'");

    if (!part)
        check_device_memory(options.device, *file,
                            KvCache::bytes(c.n_layer, 1, context_length(options, c.n_ctx_train), c.n_embd_kv(), options.cache_type));
    F32LlamaModel m(file, c, options, std::move(part));
    m.weights_ = LlamaWeights::load(m.ctx_, *file, m.config_, m.part_.shard);
    return m;
}

void F32LlamaModel::reserve_workspace(size_t n_tokens) {
    const RankShard& s = part_.shard;
    const size_t E = config_.n_embd, Fr = s.ff.size(), Vr = s.vocab.size(), QDr = s.heads.size() * config_.head_dim;
    const size_t KVDr = kv_width();
    const size_t widths[N_BUFFERS] = {E, E, QDr, KVDr, KVDr, QDr, reduce() ? E : 0, Fr, Fr, Vr};
    workspace_.reserve(options_.device, n_tokens, widths);
}

// The pass is llama_layers.cpp's, over this part's shard.
void F32LlamaModel::enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position,
                                    size_t n_out) {
    const LlamaPassBuffers buffers{workspace_.buffer(X),    workspace_.buffer(XN),   workspace_.buffer(Q),
                                   workspace_.buffer(KCUR), workspace_.buffer(VCUR), workspace_.buffer(ATT),
                                   workspace_.buffer(OUT),  workspace_.buffer(GATE), workspace_.buffer(UP),
                                   workspace_.buffer(LOGITS)};
    enqueue_llama_pass(ctx_, config_, weights_, cache_, slot_, buffers, activations_for(options_), ids, T, p0, device_position,
                       n_out, reduce(), observer_);
}

// The batched pass: enqueue_llama_pass's layer over rows of several sequences. Shapes: N =
// batch.n_padded rows (the fed ones, then the Tiled padding), E, H, Hkv, D, F, V as there (a
// tensor-parallel rank's share of them).
void F32LlamaModel::enqueue_rows(const RowBatch& batch) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd;
    const size_t H = part_.shard.heads.size(), Hkv = part_.shard.kv_heads.size(), D = c.head_dim, QD = H * D, KVD = Hkv * D;
    const size_t N = batch.n_padded, n_single = batch.n_single, n_tiled = N - n_single;
    const float eps = static_cast<float>(c.norm_eps);
    const compute::Activations activations = activations_for(options_);
    float *x = workspace_.buffer(X), *xn = workspace_.buffer(XN), *q = workspace_.buffer(Q), *att = workspace_.buffer(ATT);
    float *k = workspace_.buffer(KCUR), *v = workspace_.buffer(VCUR), *gate = workspace_.buffer(GATE), *up = workspace_.buffer(UP);
    float* logits = workspace_.buffer(LOGITS);
    const auto products = [&](std::span<const compute::MatmulOutput> outputs, const float* in, const compute::RmsNorm* norm) {
        rows_matmul(ctx_, outputs, in, n_single, n_tiled, activations, norm);
    };
    // x += W a (+ bias); on a tensor-parallel rank its share into OUT, summed over the ranks first.
    const auto residual = [&](const compute::WeightMatrix& w, const float* bias, const float* a) {
        const RankReduce* r = reduce();
        float* out = r ? workspace_.buffer(OUT) : x;
        const compute::MatmulOutput product{w, out, /*accumulate=*/!r};
        products(std::span(&product, 1), a, nullptr);
        if (r) r->collective->all_reduce_sum(r->rank, ctx_, out, N * E);
        if (bias) compute::add_bias(ctx_, out, bias, N, E);
        if (r) compute::add(ctx_, x, out, N * E);
    };

    compute::get_rows(ctx_, weights_.token_embd, batch.ids, N, x);                          // x: [N, E]
    observe(ctx_, observer_, "inp_embd", -1, x, N * E);
    for (size_t il = 0; il < weights_.layers.size(); ++il) {
        const LlamaLayer& L = weights_.layers[il];
        // Attention block, as in enqueue_llama_pass; q, k, v: [N, H*D], [N, Hkv*D] beside the cache.
        const compute::RmsNorm attn_norm{L.attn_norm, eps, xn};
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};
        products(qkv, x, &attn_norm);
        if (L.bq) compute::add_bias(ctx_, q, L.bq, N, QD);
        if (L.bk) compute::add_bias(ctx_, k, L.bk, N, KVD);
        if (L.bv) compute::add_bias(ctx_, v, L.bv, N, KVD);
        observe(ctx_, observer_, "attn_norm", il, xn, N * E);
        for (const SlotRun& run : batch.runs) {
            float* q_run = q + run.first_row * QD;
            float* k_run = k + run.first_row * KVD;
            const float* v_run = v + run.first_row * KVD;
            const compute::CacheRows keys = cache_.keys(il, run.slot);                // [n_ctx, KVD]
            const compute::CacheRows values = cache_.values(il, run.slot);
            compute::rope(ctx_, q_run, run.n_rows, QD, H, D, run.first_position, weights_.rope);
            compute::rope(ctx_, k_run, run.n_rows, KVD, Hkv, D, run.first_position, weights_.rope);
            compute::store_rows(ctx_, k_run, run.n_rows, KVD, keys, run.first_position);
            compute::store_rows(ctx_, v_run, run.n_rows, KVD, values, run.first_position);
            // A run's rows get the attention their kind gets alone: Tiled rows a prompt's, Single
            // rows the decode step's (the two round differently; compute::AttentionRows).
            const auto rows =
                run.first_row >= batch.n_single ? compute::AttentionRows::Prompt : compute::AttentionRows::Decode;
            compute::attention(ctx_, q_run, keys, values, run.n_rows, run.first_position, weights_.attention,
                               att + run.first_row * QD, rows);                       // att: [n_rows, H, D]
        }
        // The padding rows have no position: their attention output is a copy of the last fed
        // row's, so the products read finite values (a row's products never mix rows).
        for (size_t r = batch.n_rows; r < N; ++r)
            copy_on_device(ctx_, att + r * QD, att + (batch.n_rows - 1) * QD, QD * sizeof(float));
        observe(ctx_, observer_, "kqv_out", il, att, N * QD);
        residual(L.wo, L.bo, att);                                                   // x += Wo att
        observe(ctx_, observer_, "ffn_inp", il, x, N * E);

        // Feed-forward block
        const compute::RmsNorm ffn_norm{L.ffn_norm, eps, xn};
        const compute::MatmulOutput gate_up[] = {{L.w_gate, gate}, {L.w_up, up}};
        products(gate_up, x, &ffn_norm);
        // A row's values must not depend on the row count (each_row).
        each_row(ctx_, N, part_.shard.ff.size(), [&](size_t first, size_t n) {          // gate: [N, F]
            compute::swiglu(ctx_, gate + first, up + first, n, gate + first);
        });
        residual(L.w_down, nullptr, gate);                                           // x += W_down gate
        observe(ctx_, observer_, "l_out", il, x, N * E);
    }

    // The rows asked for, gathered at the front of x (ascending, so no row is overwritten before
    // it is read), then normalized and projected as logits_products says.
    for (size_t i = 0; i < batch.logit_rows.size(); ++i)
        if (batch.logit_rows[i] != i) copy_on_device(ctx_, x + i * E, x + batch.logit_rows[i] * E, E * sizeof(float));
    const compute::RmsNorm output_norm{weights_.output_norm, eps, xn};
    const compute::MatmulOutput output{weights_.output, logits};
    if (batch.logits_products == RowProducts::Tiled)
        rows_matmul(ctx_, std::span(&output, 1), x, 0, batch.n_logits_padded, activations, &output_norm);
    else
        rows_matmul(ctx_, std::span(&output, 1), x, batch.logit_rows.size(), 0, activations, &output_norm);
    observe(ctx_, observer_, "result_norm", -1, xn, batch.n_logits_padded * E);
}

}  // namespace twinfer
