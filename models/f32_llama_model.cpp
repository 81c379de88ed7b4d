#include "models/f32_llama_model.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/norm.hpp"

namespace twinfer {
namespace {

// The activation buffers of one forward pass, by name; widths in F32LlamaModel::reserve_workspace.
// KCUR and VCUR hold a decode step's key and value rows until they are stored at its position.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, GATE, UP, LOGITS, N_BUFFERS };

}  // namespace

F32LlamaModel::F32LlamaModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options)
    : F32ModelBase(std::move(file), std::move(config), options, LOGITS) {}

F32LlamaModel F32LlamaModel::load(std::shared_ptr<const gguf::File> file, const F32Options& options) {
    if (!file) throw std::invalid_argument("F32LlamaModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::Llama)
        throw std::runtime_error(file->origin() + ": F32LlamaModel runs the Llama family, not '" + c.architecture_name + "'");
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, QD = c.n_head * c.head_dim, KVD = c.n_embd_kv();

    check_device_memory(options.device, *file,
                        KvCache::bytes(c.n_layer, 1, context_length(options, c.n_ctx_train), c.n_embd_kv(), options.cache_type));
    F32LlamaModel m(file, c, options);
    const F32WeightLoader load(*file);
    auto matrix = [&](const std::string& name, size_t rows, size_t cols) {
        return compute::place_weights(m.ctx_, load.matrix(name, rows, cols), m.device_weights_);
    };
    auto floats = [&](const std::vector<float>& values) { return DeviceFloats(m.ctx_, values); };
    m.token_embd_ = matrix("token_embd.weight", V, E);
    m.output_ = load.has("output.weight") ? matrix("output.weight", V, E) : m.token_embd_;
    m.output_norm_ = floats(load.vector("output_norm.weight", E));
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        Layer& L = m.layers_.emplace_back();
        L.attn_norm = floats(load.vector(p + "attn_norm.weight", E));
        L.wq = matrix(p + "attn_q.weight", QD, E);
        L.wk = matrix(p + "attn_k.weight", KVD, E);
        L.wv = matrix(p + "attn_v.weight", KVD, E);
        L.wo = matrix(p + "attn_output.weight", E, QD);
        L.bq = floats(load.optional_vector(p + "attn_q.bias", QD));
        L.bk = floats(load.optional_vector(p + "attn_k.bias", KVD));
        L.bv = floats(load.optional_vector(p + "attn_v.bias", KVD));
        L.bo = floats(load.optional_vector(p + "attn_output.bias", E));
        L.ffn_norm = floats(load.vector(p + "ffn_norm.weight", E));
        L.w_gate = matrix(p + "ffn_gate.weight", F, E);
        L.w_up = matrix(p + "ffn_up.weight", F, E);
        L.w_down = matrix(p + "ffn_down.weight", E, F);
    }
    // Llama 3.1 frequency scaling reaches GGUF as per-pair divisors of the frequencies.
    m.rope_freq_factors_ = floats(load.optional_vector("rope_freqs.weight", c.n_rot / 2));
    m.rope_ = {.pairing = c.rope_layout == RopeLayout::Normal ? compute::RopeParams::Pairing::Adjacent
                                                              : compute::RopeParams::Pairing::Halves,
               .n_rot = static_cast<size_t>(c.n_rot),
               .freq_base = c.rope_freq_base,
               .position_scale = c.rope_scaling.kind == RopeScaling::Kind::Linear ? 1.0 / c.rope_scaling.factor : 1.0,
               .freq_factors = m.rope_freq_factors_.empty() ? nullptr : m.rope_freq_factors_.data()};
    m.attention_shape_ = {.n_head = static_cast<size_t>(c.n_head),
                          .n_head_kv = static_cast<size_t>(c.n_head_kv),
                          .head_dim = static_cast<size_t>(c.head_dim),
                          .kv_stride = KVD,
                          .scale = static_cast<float>(1.0 / std::sqrt(double(c.head_dim)))};
    return m;
}

void F32LlamaModel::reserve_workspace(size_t n_tokens) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, QD = c.n_head * c.head_dim, KVD = c.n_embd_kv();
    const size_t widths[N_BUFFERS] = {E, E, QD, KVD, KVD, QD, F, F, V};
    workspace_.reserve(options_.device, n_tokens, widths);
}

// Shapes: T new tokens, E = n_embd, H heads and Hkv KV heads of D dims, F = n_ff, V = n_vocab.
// Reference: llama.cpp llm_build_llama; Touvron et al. 2023.
void F32LlamaModel::enqueue_forward(const int32_t* ids, size_t T, size_t p0, const int32_t* device_position,
                                    size_t n_out) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd;
    const size_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim, QD = H * D, KVD = Hkv * D;
    const float eps = static_cast<float>(c.norm_eps);
    float *x = workspace_.buffer(X), *xn = workspace_.buffer(XN), *q = workspace_.buffer(Q), *att = workspace_.buffer(ATT);
    float *gate = workspace_.buffer(GATE), *up = workspace_.buffer(UP);
    float* logits = workspace_.buffer(LOGITS);

    compute::get_rows(ctx_, token_embd_, ids, T, x);                                // x: [T, E]
    observe(ctx_, observer_, "inp_embd", -1, x, T * E);
    // The next norm is handed to each residual product, which may prepare it (compute::matmul's
    // next_norm) — not while an observer reads the normalized rows, which that leaves unwritten.
    const bool prepare_norms = !observer_;
    for (size_t il = 0; il < layers_.size(); ++il) {
        const Layer& L = layers_[il];
        const compute::CacheRows keys = cache_.keys(il, slot_);                      // [n_ctx, KVD]
        const compute::CacheRows values = cache_.values(il, slot_);
        // This call's K and V rows: straight into a float32 cache at p0, or beside it (a decode
        // step, or a float16 cache), stored after RoPE.
        const bool direct = !device_position && keys.type == compute::KvType::F32;
        float* k = direct ? keys.f32() + p0 * KVD : workspace_.buffer(KCUR);        // [T, KVD]
        float* v = direct ? values.f32() + p0 * KVD : workspace_.buffer(VCUR);

        // Attention block: x += Wo attention(rope(Wq xn), rope(Wk xn), Wv xn), xn = rms_norm(x) (in the product)
        const compute::RmsNorm attn_norm{L.attn_norm.data(), eps, xn};              // xn: [T, E]
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};      // q: [T, H, D]; k, v: [T, Hkv, D]
        project_qkv(ctx_, qkv, x, T, activations_for(options_), attn_norm, {L.bq.data(), L.bk.data(), L.bv.data()}, H, Hkv, D,
                    p0, device_position, rope_, keys, values);
        if (!direct && !device_position) {
            compute::store_rows(ctx_, k, T, KVD, keys, p0);
            compute::store_rows(ctx_, v, T, KVD, values, p0);
        }
        observe(ctx_, observer_, "attn_norm", il, xn, T * E);
        observe(ctx_, observer_, "Qcur", il, q, T * QD);
        observe(ctx_, observer_, "Kcur", il, k, T * KVD);
        observe(ctx_, observer_, "Vcur", il, v, T * KVD);
        if (device_position)
            compute::attention_at(ctx_, q, keys, values, device_position, cache_.n_ctx(), attention_shape_, att);
        else
            compute::attention(ctx_, q, keys, values, T, p0, attention_shape_, att);  // att: [T, H, D]
        observe(ctx_, observer_, "kqv_out", il, att, T * QD);
        const compute::RmsNorm ffn_norm{L.ffn_norm.data(), eps, xn};
        residual_project(ctx_, L.wo, L.bo, att, T, x, activations_for(options_), prepare_norms ? &ffn_norm : nullptr);  // x += Wo att
        observe(ctx_, observer_, "ffn_inp", il, x, T * E);

        // Feed-forward block: x += W_down (silu(W_gate xn) * W_up xn), xn = rms_norm(x) (in the product)
        compute::matmul_swiglu(ctx_, L.w_gate, L.w_up, x, T, gate, up, activations_for(options_), &ffn_norm);  // gate: [T, F]
        observe(ctx_, observer_, "ffn_norm", il, xn, T * E);
        const compute::RmsNorm next_norm{il + 1 < layers_.size() ? layers_[il + 1].attn_norm.data() : output_norm_.data(), eps, xn};
        residual_project(ctx_, L.w_down, {}, gate, T, x, activations_for(options_),
                         prepare_norms && T == n_out ? &next_norm : nullptr);        // x += W_down gate
        observe(ctx_, observer_, "l_out", il, x, T * E);
    }

    const float* last = x + (T - n_out) * E;                                        // the rows asked for
    const compute::RmsNorm output_norm{output_norm_.data(), eps, xn};               // xn: [n_out, E]
    const compute::MatmulOutput output{output_, logits};
    compute::matmul(ctx_, std::span(&output, 1), last, n_out, activations_for(options_), &output_norm);  // logits: [n_out, V]
    observe(ctx_, observer_, "result_norm", -1, xn, n_out * E);
}

// The batched pass: the layer of enqueue_forward over rows of several sequences. Shapes: N =
// batch.n_padded rows (the fed ones, then the Tiled padding), E, H, Hkv, D, F, V as there.
void F32LlamaModel::enqueue_rows(const RowBatch& batch) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd;
    const size_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim, QD = H * D, KVD = Hkv * D;
    const size_t N = batch.n_padded, n_single = batch.n_single, n_tiled = N - n_single;
    const float eps = static_cast<float>(c.norm_eps);
    const compute::Activations activations = activations_for(options_);
    float *x = workspace_.buffer(X), *xn = workspace_.buffer(XN), *q = workspace_.buffer(Q), *att = workspace_.buffer(ATT);
    float *k = workspace_.buffer(KCUR), *v = workspace_.buffer(VCUR), *gate = workspace_.buffer(GATE), *up = workspace_.buffer(UP);
    float* logits = workspace_.buffer(LOGITS);
    const auto products = [&](std::span<const compute::MatmulOutput> outputs, const float* in, const compute::RmsNorm* norm) {
        rows_matmul(ctx_, outputs, in, n_single, n_tiled, activations, norm);
    };

    compute::get_rows(ctx_, token_embd_, batch.ids, N, x);                          // x: [N, E]
    observe(ctx_, observer_, "inp_embd", -1, x, N * E);
    for (size_t il = 0; il < layers_.size(); ++il) {
        const Layer& L = layers_[il];
        // Attention block, as in enqueue_forward; q, k, v: [N, H*D], [N, Hkv*D] beside the cache.
        const compute::RmsNorm attn_norm{L.attn_norm.data(), eps, xn};
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};
        products(qkv, x, &attn_norm);
        if (!L.bq.empty()) compute::add_bias(ctx_, q, L.bq.data(), N, QD);
        if (!L.bk.empty()) compute::add_bias(ctx_, k, L.bk.data(), N, KVD);
        if (!L.bv.empty()) compute::add_bias(ctx_, v, L.bv.data(), N, KVD);
        observe(ctx_, observer_, "attn_norm", il, xn, N * E);
        for (const SlotRun& run : batch.runs) {
            float* q_run = q + run.first_row * QD;
            float* k_run = k + run.first_row * KVD;
            const float* v_run = v + run.first_row * KVD;
            const compute::CacheRows keys = cache_.keys(il, run.slot);                // [n_ctx, KVD]
            const compute::CacheRows values = cache_.values(il, run.slot);
            compute::rope(ctx_, q_run, run.n_rows, QD, H, D, run.first_position, rope_);
            compute::rope(ctx_, k_run, run.n_rows, KVD, Hkv, D, run.first_position, rope_);
            compute::store_rows(ctx_, k_run, run.n_rows, KVD, keys, run.first_position);
            compute::store_rows(ctx_, v_run, run.n_rows, KVD, values, run.first_position);
            // A run's rows get the attention their kind gets alone: Tiled rows a prompt's, Single
            // rows the decode step's (the two round differently; compute::AttentionRows).
            const auto rows =
                run.first_row >= batch.n_single ? compute::AttentionRows::Prompt : compute::AttentionRows::Decode;
            compute::attention(ctx_, q_run, keys, values, run.n_rows, run.first_position, attention_shape_,
                               att + run.first_row * QD, rows);                       // att: [n_rows, H, D]
        }
        // The padding rows have no position: their attention output is a copy of the last fed
        // row's, so the products read finite values (a row's products never mix rows).
        for (size_t r = batch.n_rows; r < N; ++r)
            copy_on_device(ctx_, att + r * QD, att + (batch.n_rows - 1) * QD, QD * sizeof(float));
        observe(ctx_, observer_, "kqv_out", il, att, N * QD);
        const compute::MatmulOutput wo{L.wo, x, /*accumulate=*/true};
        products(std::span(&wo, 1), att, nullptr);                                   // x += Wo att
        if (!L.bo.empty()) compute::add_bias(ctx_, x, L.bo.data(), N, E);
        observe(ctx_, observer_, "ffn_inp", il, x, N * E);

        // Feed-forward block
        const compute::RmsNorm ffn_norm{L.ffn_norm.data(), eps, xn};
        const compute::MatmulOutput gate_up[] = {{L.w_gate, gate}, {L.w_up, up}};
        products(gate_up, x, &ffn_norm);
        // A row's values must not depend on the row count (each_row).
        each_row(ctx_, N, c.n_ff, [&](size_t first, size_t n) {                          // gate: [N, F]
            compute::swiglu(ctx_, gate + first, up + first, n, gate + first);
        });
        const compute::MatmulOutput down{L.w_down, x, /*accumulate=*/true};
        products(std::span(&down, 1), gate, nullptr);                                // x += W_down gate
        observe(ctx_, observer_, "l_out", il, x, N * E);
    }

    // The rows asked for, gathered at the front of x (ascending, so no row is overwritten before
    // it is read), then normalized and projected as logits_products says.
    for (size_t i = 0; i < batch.logit_rows.size(); ++i)
        if (batch.logit_rows[i] != i) copy_on_device(ctx_, x + i * E, x + batch.logit_rows[i] * E, E * sizeof(float));
    const compute::RmsNorm output_norm{output_norm_.data(), eps, xn};
    const compute::MatmulOutput output{output_, logits};
    if (batch.logits_products == RowProducts::Tiled)
        rows_matmul(ctx_, std::span(&output, 1), x, 0, batch.n_logits_padded, activations, &output_norm);
    else
        rows_matmul(ctx_, std::span(&output, 1), x, batch.logit_rows.size(), 0, activations, &output_norm);
    observe(ctx_, observer_, "result_norm", -1, xn, batch.n_logits_padded * E);
}

}  // namespace twinfer
