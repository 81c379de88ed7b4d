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

// Shapes: T new tokens, E = n_embd, the shard's Hr heads and Hkv_r KV heads of D dims, Fr
// feed-forward units, Vr vocabulary rows (one device: all of them).
// Reference: llama.cpp llm_build_llama; Touvron et al. 2023; Megatron-LM for the split.
void enqueue_llama_pass(compute::Context& ctx, const ModelConfig& c, const LlamaWeights& w, KvCache& cache, size_t slot,
                        const LlamaPassBuffers& b, compute::Activations activations, const int32_t* ids, size_t T,
                        size_t p0, const int32_t* device_position, size_t n_out, const RankReduce* reduce,
                        const F32Observer& observer) {
    const size_t E = c.n_embd, D = c.head_dim;
    const size_t Hr = w.attention.n_head, Hkv_r = w.attention.n_head_kv, QDr = Hr * D, KVDr = Hkv_r * D;
    const float eps = static_cast<float>(c.norm_eps);
    float *x = b.x, *xn = b.xn, *q = b.q, *att = b.att;

    // x += W a (+ bias). One device: one product adding into x, which may also prepare the next
    // norm (compute::matmul's next_norm). A rank: its heads' or units' share into out, the
    // all-reduce that sums the shares, then the bias and the residual add.
    const auto residual = [&](const compute::WeightMatrix& wm, const float* bias, const float* a, const compute::RmsNorm* next_norm) {
        if (!reduce) return residual_project(ctx, wm, bias, a, T, x, activations, next_norm);
        compute::matmul(ctx, wm, a, T, b.out, activations);                          // out: [T, E], this rank's share
        reduce->collective->all_reduce_sum(reduce->rank, ctx, b.out, T * E);          // out: [T, E], all shares
        if (bias) compute::add_bias(ctx, b.out, bias, T, E);
        compute::add(ctx, x, b.out, T * E);
    };

    compute::get_rows(ctx, w.token_embd, ids, T, x);                                 // x: [T, E]
    observe(ctx, observer, "inp_embd", -1, x, T * E);
    // The next norm is handed to each residual product, which may prepare it — not while an
    // observer reads the normalized rows, which that leaves unwritten.
    const bool prepare_norms = !observer;
    for (size_t il = 0; il < w.layers.size(); ++il) {
        const LlamaLayer& L = w.layers[il];
        const compute::CacheRows keys = cache.keys(il, slot);                         // [n_ctx, KVDr]
        const compute::CacheRows values = cache.values(il, slot);
        // This call's K and V rows: straight into a float32 cache at p0, or beside it (a decode
        // step, or a float16 cache), stored after RoPE.
        const bool direct = !device_position && keys.type == compute::KvType::F32;
        float* k = direct ? keys.f32() + p0 * KVDr : b.k_rows;                        // [T, KVDr]
        float* v = direct ? values.f32() + p0 * KVDr : b.v_rows;

        // Attention block: x += Wo attention(rope(Wq xn), rope(Wk xn), Wv xn), xn = rms_norm(x) (in the product)
        const compute::RmsNorm attn_norm{L.attn_norm, eps, xn};                      // xn: [T, E]
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};       // q: [T, Hr, D]; k, v: [T, Hkv_r, D]
        project_qkv(ctx, qkv, x, T, activations, attn_norm, {L.bq, L.bk, L.bv}, Hr, Hkv_r, D, p0, device_position, w.rope, keys,
                    values);
        if (!direct && !device_position) {
            compute::store_rows(ctx, k, T, KVDr, keys, p0);
            compute::store_rows(ctx, v, T, KVDr, values, p0);
        }
        observe(ctx, observer, "attn_norm", il, xn, T * E);
        observe(ctx, observer, "Qcur", il, q, T * QDr);
        observe(ctx, observer, "Kcur", il, k, T * KVDr);
        observe(ctx, observer, "Vcur", il, v, T * KVDr);
        if (device_position)
            compute::attention_at(ctx, q, keys, values, device_position, cache.n_ctx(), w.attention, att);
        else
            compute::attention(ctx, q, keys, values, T, p0, w.attention, att);       // att: [T, Hr, D]
        observe(ctx, observer, "kqv_out", il, att, T * QDr);
        const compute::RmsNorm ffn_norm{L.ffn_norm, eps, xn};
        residual(L.wo, L.bo, att, prepare_norms ? &ffn_norm : nullptr);              // x += Wo att
        observe(ctx, observer, "ffn_inp", il, x, T * E);

        // Feed-forward block: x += W_down (silu(W_gate xn) * W_up xn), xn = rms_norm(x) (in the product)
        compute::matmul_swiglu(ctx, L.w_gate, L.w_up, x, T, b.gate, b.up, activations, &ffn_norm);  // gate: [T, Fr]
        observe(ctx, observer, "ffn_norm", il, xn, T * E);
        const compute::RmsNorm next_norm{il + 1 < w.layers.size() ? w.layers[il + 1].attn_norm : w.output_norm, eps, xn};
        residual(L.w_down, nullptr, b.gate, prepare_norms && T == n_out ? &next_norm : nullptr);  // x += W_down gate
        observe(ctx, observer, "l_out", il, x, T * E);
    }

    const float* last = x + (T - n_out) * E;                                         // the rows asked for
    const compute::RmsNorm output_norm{w.output_norm, eps, xn};                      // xn: [n_out, E]
    const compute::MatmulOutput output{w.output, b.logits};
    compute::matmul(ctx, std::span(&output, 1), last, n_out, activations, &output_norm);   // logits: [n_out, Vr]
    observe(ctx, observer, "result_norm", -1, xn, n_out * E);
}

}  // namespace twinfer
