#include "models/llama_layers.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/norm.hpp"

namespace twinfer {

LlamaWeights LlamaWeights::load(compute::Context& ctx, const gguf::File& file, const ModelConfig& c, const RankShard& s) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, D = c.head_dim, QD = c.n_head * D, KVD = c.n_embd_kv();
    const IndexRange q_rows = s.heads.scaled(D), kv_rows = s.kv_heads.scaled(D);
    LlamaWeights w;
    ShardPlacer place(ctx, w.storage);
    const F32WeightLoader load(file);
    w.token_embd = place.rows(load.matrix("token_embd.weight", V, E), {0, V});
    const bool tied = !load.has("output.weight");
    // Tied and split: this rank's rows of the embedding table, placed on their own (views of the
    // mapping on the CPU; on a GPU a copy, since a planar matrix cannot be cut into row ranges in place).
    w.output = tied && s.vocab == IndexRange{0, V} ? w.token_embd
                                                   : place.rows(load.matrix(tied ? "token_embd.weight" : "output.weight", V, E), s.vocab);
    w.output_norm = place.floats(load.vector("output_norm.weight", E));
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        LlamaLayer& L = w.layers.emplace_back();
        L.attn_norm = place.floats(load.vector(p + "attn_norm.weight", E));
        L.wq = place.rows(load.matrix(p + "attn_q.weight", QD, E), q_rows);
        L.wk = place.rows(load.matrix(p + "attn_k.weight", KVD, E), kv_rows);
        L.wv = place.rows(load.matrix(p + "attn_v.weight", KVD, E), kv_rows);
        L.wo = place.columns(load.matrix(p + "attn_output.weight", E, QD), q_rows, p + "attn_output.weight");
        L.bq = place.floats(load.optional_vector(p + "attn_q.bias", QD), q_rows);
        L.bk = place.floats(load.optional_vector(p + "attn_k.bias", KVD), kv_rows);
        L.bv = place.floats(load.optional_vector(p + "attn_v.bias", KVD), kv_rows);
        L.bo = place.floats(load.optional_vector(p + "attn_output.bias", E));
        L.ffn_norm = place.floats(load.vector(p + "ffn_norm.weight", E));
        L.w_gate = place.rows(load.matrix(p + "ffn_gate.weight", F, E), s.ff);
        L.w_up = place.rows(load.matrix(p + "ffn_up.weight", F, E), s.ff);
        L.w_down = place.columns(load.matrix(p + "ffn_down.weight", E, F), s.ff, p + "ffn_down.weight");
    }
    // Llama 3.1 frequency scaling reaches GGUF as per-pair divisors of the frequencies.
    const float* freq_factors = place.floats(load.optional_vector("rope_freqs.weight", c.n_rot / 2));
    w.rope = {.pairing = c.rope_layout == RopeLayout::Normal ? compute::RopeParams::Pairing::Adjacent
                                                             : compute::RopeParams::Pairing::Halves,
              .n_rot = static_cast<size_t>(c.n_rot),
              .freq_base = c.rope_freq_base,
              .position_scale = c.rope_scaling.kind == RopeScaling::Kind::Linear ? 1.0 / c.rope_scaling.factor : 1.0,
              .freq_factors = freq_factors};
    w.attention = {.n_head = s.heads.size(),
                   .n_head_kv = s.kv_heads.size(),
                   .head_dim = D,
                   .kv_stride = kv_rows.size(),
                   .scale = static_cast<float>(1.0 / std::sqrt(double(D)))};
    return w;
}

// Shapes: N = batch.n_padded rows (each run's tokens at its slot and positions, then the Tiled
// padding), E = n_embd, the shard's Hr heads and Hkv_r KV heads of D dims, Fr feed-forward units,
// Vr vocabulary rows (one device: all of them).
// Reference: llama.cpp llm_build_llama; Touvron et al. 2023; Megatron-LM for the split.
void enqueue_llama_pass(compute::Context& ctx, const ModelConfig& c, const LlamaWeights& w, KvCache& cache,
                        const LlamaPassBuffers& b, compute::Activations activations, const RowBatch& batch,
                        const int32_t* device_position, const RankReduce* reduce, const F32Observer& observer) {
    const size_t E = c.n_embd, D = c.head_dim;
    const size_t Hr = w.attention.n_head, Hkv_r = w.attention.n_head_kv, QDr = Hr * D, KVDr = Hkv_r * D;
    const size_t N = batch.n_padded, n_single = batch.n_single, n_tiled = N - n_single, n_out = batch.logit_rows.size();
    const float eps = static_cast<float>(c.norm_eps);
    const bool sequence = !batch.batched;
    const SlotRun& run0 = batch.runs.front();                                        // a sequence's one run
    float *x = b.x, *xn = b.xn, *q = b.q, *att = b.att;

    // The products of the rows: Single rows each as the decode step computes it, Tiled rows together
    // (rows_matmul; a sequence's are all Tiled: compute::matmul over its tokens).
    const auto products = [&](std::span<const compute::MatmulOutput> outputs, const float* in, const compute::RmsNorm* norm) {
        rows_matmul(ctx, outputs, in, n_single, n_tiled, activations, norm, batch.batched);
    };
    // x += W a (+ bias). One device: one product adding into x, which in a sequence's pass may also
    // prepare the next norm (compute::matmul's next_norm). A rank: its heads' or units' share into
    // out, the all-reduce that sums the shares, then the bias and the residual add.
    const auto residual = [&](const compute::WeightMatrix& wm, const float* bias, const float* a, const compute::RmsNorm* next_norm) {
        if (!reduce && sequence) return residual_project(ctx, wm, bias, a, N, x, activations, next_norm);
        float* out = reduce ? b.out : x;
        const compute::MatmulOutput product{wm, out, /*accumulate=*/!reduce};
        products(std::span(&product, 1), a, nullptr);                                // out: [N, E], this rank's share
        if (reduce) reduce->collective->all_reduce_sum(reduce->rank, ctx, out, N * E);  // out: [N, E], all shares
        if (bias) compute::add_bias(ctx, out, bias, N, E);
        if (reduce) compute::add(ctx, x, out, N * E);
    };

    compute::get_rows(ctx, w.token_embd, batch.ids, N, x);                          // x: [N, E]
    observe(ctx, observer, "inp_embd", -1, x, N * E);
    // A sequence's residual products are handed the next norm, which they may prepare — not while an
    // observer reads the normalized rows, which that leaves unwritten.
    const bool prepare_norms = sequence && !observer;
    for (size_t il = 0; il < w.layers.size(); ++il) {
        const LlamaLayer& L = w.layers[il];
        // Attention block: x += Wo attention(rope(Wq xn), rope(Wk xn), Wv xn), xn = rms_norm(x) (in the product)
        const compute::RmsNorm attn_norm{L.attn_norm, eps, xn};                      // xn: [N, E]
        // A sequence's K and V rows: straight into a float32 cache at its position, or beside it (a
        // decode step, or a float16 cache), stored after RoPE; a batch's beside it.
        const compute::CacheRows keys0 = cache.keys(il, run0.slot), values0 = cache.values(il, run0.slot);
        const bool direct = sequence && !device_position && keys0.type == compute::KvType::F32;
        float* k = direct ? keys0.f32() + run0.first_position * KVDr : b.k_rows;     // [N, KVDr]
        float* v = direct ? values0.f32() + run0.first_position * KVDr : b.v_rows;
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};       // q: [N, Hr, D]; k, v: [N, Hkv_r, D]
        if (sequence) {                                                              // the products, biases, RoPE (and a decode step's store) fused where the device can
            project_qkv(ctx, qkv, x, N, activations, attn_norm, {L.bq, L.bk, L.bv}, Hr, Hkv_r, D, run0.first_position,
                        device_position, w.rope, keys0, values0);
        } else {
            products(qkv, x, &attn_norm);
            if (L.bq) compute::add_bias(ctx, q, L.bq, N, QDr);
            if (L.bk) compute::add_bias(ctx, k, L.bk, N, KVDr);
            if (L.bv) compute::add_bias(ctx, v, L.bv, N, KVDr);
        }
        observe(ctx, observer, "attn_norm", il, xn, N * E);
        if (device_position) compute::attention_at(ctx, q, keys0, values0, device_position, cache.n_ctx(), w.attention, att);
        else attend_runs(ctx, cache, il, batch, q, k, v, sequence ? nullptr : &w.rope, w.attention, direct, att);  // att: [N, Hr, D]
        observe(ctx, observer, "Qcur", il, q, N * QDr);
        observe(ctx, observer, "Kcur", il, k, N * KVDr);
        observe(ctx, observer, "Vcur", il, v, N * KVDr);
        observe(ctx, observer, "kqv_out", il, att, N * QDr);
        const compute::RmsNorm ffn_norm{L.ffn_norm, eps, xn};
        residual(L.wo, L.bo, att, prepare_norms ? &ffn_norm : nullptr);              // x += Wo att
        observe(ctx, observer, "ffn_inp", il, x, N * E);

        // Feed-forward block: x += W_down (silu(W_gate xn) * W_up xn), xn = rms_norm(x) (in the product)
        if (sequence) {                                                              // one launch where the device can
            compute::matmul_glu(ctx, L.w_gate, L.w_up, x, N, b.gate, b.up, activations, &ffn_norm);  // gate: [N, Fr]
        } else {
            const compute::MatmulOutput gate_up[] = {{L.w_gate, b.gate}, {L.w_up, b.up}};
            products(gate_up, x, &ffn_norm);
            // A row's values must not depend on the row count (each_row).
            each_row(ctx, N, L.w_gate.rows, [&](size_t first, size_t n) {           // gate: [N, Fr]
                compute::swiglu(ctx, b.gate + first, b.up + first, n, b.gate + first);
            });
        }
        observe(ctx, observer, "ffn_norm", il, xn, N * E);
        const compute::RmsNorm next_norm{il + 1 < w.layers.size() ? w.layers[il + 1].attn_norm : w.output_norm, eps, xn};
        residual(L.w_down, nullptr, b.gate, prepare_norms && N == n_out ? &next_norm : nullptr);  // x += W_down gate
        observe(ctx, observer, "l_out", il, x, N * E);
    }

    // The rows asked for: a sequence's last n_out where they are; a batch's gathered at the front of
    // x (ascending, so no row is overwritten before it is read). Then normalized and projected as
    // logits_products says.
    const float* out_rows = x + (sequence && n_out ? batch.logit_rows.front() * E : 0);
    if (!sequence)
        for (size_t i = 0; i < n_out; ++i)
            if (batch.logit_rows[i] != i) copy_on_device(ctx, x + i * E, x + batch.logit_rows[i] * E, E * sizeof(float));
    const compute::RmsNorm output_norm{w.output_norm, eps, xn};                      // xn: [rows, E]
    const compute::MatmulOutput output{w.output, b.logits};                          // logits: [rows, Vr]
    if (batch.logits_products == RowProducts::Tiled)
        rows_matmul(ctx, std::span(&output, 1), out_rows, 0, batch.n_logits_padded, activations, &output_norm, batch.batched);
    else
        rows_matmul(ctx, std::span(&output, 1), out_rows, n_out, 0, activations, &output_norm, batch.batched);
    observe(ctx, observer, "result_norm", -1, xn, n_out * E);
}

}  // namespace twinfer
