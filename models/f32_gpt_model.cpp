#include "models/f32_gpt_model.hpp"

#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "compute/elementwise.hpp"
#include "compute/norm.hpp"

namespace twinfer {
namespace {

// The activation buffers of one forward pass, by name; widths in F32GPTModel::reserve_workspace.
// KCUR and VCUR hold a decode step's key and value rows until they are stored at its position.
enum Buffer { X, XN, Q, KCUR, VCUR, ATT, OUT, HIDDEN, LOGITS, N_BUFFERS };

// Rows [first, first + n) of a matrix, as a matrix of their own (same block format, no copy).
compute::WeightMatrix row_block(const compute::WeightMatrix& w, size_t first, size_t n) {
    return {w.type, n, w.cols, w.data + first * w.row_bytes()};
}

}  // namespace

F32GPTModel::F32GPTModel(std::shared_ptr<const gguf::File> file, ModelConfig config, const F32Options& options)
    : F32ModelBase(std::move(file), std::move(config), options, std::nullopt, LOGITS) {}

F32GPTModel F32GPTModel::load(std::shared_ptr<const gguf::File> file, const F32Options& options) {
    if (!file) throw std::invalid_argument("F32GPTModel::load: no file");
    ModelConfig c = ModelConfig::from_gguf(*file);
    if (c.architecture != Architecture::GPT2)
        throw std::runtime_error(file->origin() + ": F32GPTModel runs the GPT-2 family, not '" + c.architecture_name + "'");
    if (options.n_ctx > static_cast<size_t>(c.n_ctx_train))
        throw std::runtime_error(file->origin() + ": n_ctx " + std::to_string(options.n_ctx) + " exceeds the " +
                                 std::to_string(c.n_ctx_train) + " positions GPT-2 has embeddings for");
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab;

    check_device_memory(options.device, *file,
                        KvCache::bytes(c.n_layer, 1, context_length(options, c.n_ctx_train), c.n_embd_kv(), options.cache_type));
    F32GPTModel m(file, c, options);
    const F32WeightLoader load(*file);
    auto matrix = [&](const compute::WeightMatrix& w) { return compute::place_weights(m.ctx_, w, m.device_weights_); };
    auto floats = [&](std::span<const float> values) { return DeviceFloats(m.ctx_, values); };
    m.token_embd_ = matrix(load.matrix("token_embd.weight", V, E));
    m.position_embd_ = matrix(load.matrix("position_embd.weight", c.n_ctx_train, E));
    m.output_ = load.has("output.weight") ? matrix(load.matrix("output.weight", V, E)) : m.token_embd_;
    m.output_norm_ = floats(load.vector("output_norm.weight", E));
    m.output_norm_bias_ = floats(load.vector("output_norm.bias", E));
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        Layer& L = m.layers_.emplace_back();
        L.attn_norm = floats(load.vector(p + "attn_norm.weight", E));
        L.attn_norm_bias = floats(load.vector(p + "attn_norm.bias", E));
        // The fused Q/K/V matrix split on the host, each part placed alone (a GPU's planar layout
        // is per matrix).
        const compute::WeightMatrix qkv = load.matrix(p + "attn_qkv.weight", 3 * E, E);
        const std::vector<float> qkv_bias = load.vector(p + "attn_qkv.bias", 3 * E);
        L.wq = matrix(row_block(qkv, 0, E)), L.wk = matrix(row_block(qkv, E, E)), L.wv = matrix(row_block(qkv, 2 * E, E));
        const std::span<const float> b(qkv_bias);
        L.bq = floats(b.subspan(0, E)), L.bk = floats(b.subspan(E, E)), L.bv = floats(b.subspan(2 * E, E));
        L.wo = matrix(load.matrix(p + "attn_output.weight", E, E));
        L.bo = floats(load.vector(p + "attn_output.bias", E));
        L.ffn_norm = floats(load.vector(p + "ffn_norm.weight", E));
        L.ffn_norm_bias = floats(load.vector(p + "ffn_norm.bias", E));
        L.w_up = matrix(load.matrix(p + "ffn_up.weight", F, E));
        L.b_up = floats(load.vector(p + "ffn_up.bias", F));
        L.w_down = matrix(load.matrix(p + "ffn_down.weight", E, F));
        L.b_down = floats(load.vector(p + "ffn_down.bias", E));
    }
    m.attention_shape_ = {.n_head = static_cast<size_t>(c.n_head),
                          .n_head_kv = static_cast<size_t>(c.n_head_kv),
                          .head_dim = static_cast<size_t>(c.head_dim),
                          .kv_stride = static_cast<size_t>(c.n_embd_kv()),
                          .scale = static_cast<float>(1.0 / std::sqrt(double(c.head_dim)))};
    return m;
}

// y = W x + bias   x: [T, cols], y: [T, rows]
void F32GPTModel::project(const compute::WeightMatrix& w, const DeviceFloats& bias, const float* x,
                          size_t n_tokens, float* y) {
    compute::matmul(ctx_, w, x, n_tokens, y, activations_for(options_));
    compute::add_bias(ctx_, y, bias.data(), n_tokens, w.rows);
}

void F32GPTModel::reserve_workspace(size_t n_tokens) {
    const size_t E = config_.n_embd, F = config_.n_ff, V = config_.n_vocab;
    const size_t widths[N_BUFFERS] = {E, E, E, E, E, E, E, F, V};
    workspace_.reserve(options_.device, n_tokens, widths);
}

void F32GPTModel::enqueue_prompt(std::span<const Token> ids, size_t p0, size_t n_out) {
    const size_t T = ids.size();
    positions_.resize(T);
    std::iota(positions_.begin(), positions_.end(), static_cast<int32_t>(p0));
    enqueue_forward(upload_ids(ctx_, ids, ids_), upload_ids(ctx_, positions_, positions_on_device_), T, p0, nullptr, n_out);
}

void F32GPTModel::enqueue_decode_step() {
    enqueue_forward(decode_step_.token(), decode_step_.position(), 1, 0, decode_step_.position(), 1);
}

// Shapes: T new tokens, E = n_embd = H heads x D dims, F = n_ff, V = n_vocab.
// Reference: llama.cpp llm_build_gpt2; Radford et al. 2019.
void F32GPTModel::enqueue_forward(const int32_t* ids, const int32_t* positions, size_t T, size_t p0,
                                  const int32_t* device_position, size_t n_out) {
    const ModelConfig& c = config_;
    const size_t E = c.n_embd, F = c.n_ff;
    const float eps = static_cast<float>(c.norm_eps);
    float *x = workspace_.buffer(X), *xn = workspace_.buffer(XN), *q = workspace_.buffer(Q), *att = workspace_.buffer(ATT);
    float *out = workspace_.buffer(OUT), *hidden = workspace_.buffer(HIDDEN), *logits = workspace_.buffer(LOGITS);

    compute::get_rows(ctx_, token_embd_, ids, T, x);                               // x: [T, E]
    compute::get_rows(ctx_, position_embd_, positions, T, out);                    // out: [T, E]
    compute::add(ctx_, x, out, T * E);
    observe(ctx_, observer_, "inp_embd", -1, x, T * E);
    for (size_t il = 0; il < layers_.size(); ++il) {
        const Layer& L = layers_[il];
        const compute::CacheRows keys = cache_.keys(il, slot_);                      // [n_ctx, E]
        const compute::CacheRows values = cache_.values(il, slot_);

        // Attention block: x += Wo attention(Wq xn, Wk xn, Wv xn) + bo, xn = layer_norm(x)
        compute::layer_norm(ctx_, x, L.attn_norm.data(), L.attn_norm_bias.data(), T, E, eps, xn);   // xn: [T, E]
        observe(ctx_, observer_, "attn_norm", il, xn, T * E);
        // This call's K and V rows: straight into a float32 cache at p0, or beside it (a decode
        // step, or a float16 cache), then stored.
        const bool direct = !device_position && keys.type == compute::KvType::F32;
        float* k = direct ? keys.f32() + p0 * E : workspace_.buffer(KCUR);          // [T, E]
        float* v = direct ? values.f32() + p0 * E : workspace_.buffer(VCUR);
        const compute::MatmulOutput qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};
        compute::matmul(ctx_, qkv, xn, T, activations_for(options_));               // q, k, v: [T, H, D]
        compute::add_bias(ctx_, q, L.bq.data(), T, E);
        compute::add_bias(ctx_, k, L.bk.data(), T, E);
        compute::add_bias(ctx_, v, L.bv.data(), T, E);
        if (device_position) {
            compute::store_row(ctx_, k, E, keys, device_position);
            compute::store_row(ctx_, v, E, values, device_position);
            compute::attention_at(ctx_, q, keys, values, device_position, cache_.n_ctx(), attention_shape_, att);
        } else {
            if (!direct) compute::store_rows(ctx_, k, T, E, keys, p0), compute::store_rows(ctx_, v, T, E, values, p0);
            compute::attention(ctx_, q, keys, values, T, p0, attention_shape_, att);    // att: [T, H, D]
        }
        observe(ctx_, observer_, "kqv_out", il, att, T * E);
        residual_project(ctx_, L.wo, L.bo, att, T, x, activations_for(options_));   // x += Wo att + bo
        observe(ctx_, observer_, "ffn_inp", il, x, T * E);

        // Feed-forward block: x += W_down gelu(W_up xn + b_up) + b_down, xn = layer_norm(x)
        compute::layer_norm(ctx_, x, L.ffn_norm.data(), L.ffn_norm_bias.data(), T, E, eps, xn);
        observe(ctx_, observer_, "ffn_norm", il, xn, T * E);
        project(L.w_up, L.b_up, xn, T, hidden);                                     // hidden: [T, F]
        compute::gelu(ctx_, hidden, T * F);
        residual_project(ctx_, L.w_down, L.b_down, hidden, T, x, activations_for(options_));  // x += W_down hidden + b_down
        observe(ctx_, observer_, "l_out", il, x, T * E);
    }

    const float* last = x + (T - n_out) * E;                                        // the rows asked for
    compute::layer_norm(ctx_, last, output_norm_.data(), output_norm_bias_.data(), n_out, E, eps, xn);
    observe(ctx_, observer_, "result_norm", -1, xn, n_out * E);
    compute::matmul(ctx_, output_, xn, n_out, logits, activations_for(options_));  // logits: [n_out, V]
}

}  // namespace twinfer
