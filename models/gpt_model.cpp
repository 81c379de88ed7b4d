// The float64 reference forward passes. Exists to be right: plain loops, BLAS for the matrix
// products, no threads or SIMD of its own, each step citing the formula it computes and the
// transformers code it mirrors (modeling_gpt2.py, modeling_llama.py).
//
// Shape letters: T tokens in the sequence, E n_embd, H query heads, Hkv key/value heads,
// D head dimension, F feed-forward width, V vocabulary.
#include "models/gpt_model.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>

#include "format/safetensors.hpp"
#include "models/weights_source.hpp"

namespace twinfer {

static_assert(GPTInference<GPTModel>);

namespace {

using Shape = std::vector<size_t>;

// ---------------------------------------------------------------------------------------------
// Building blocks. Each takes and returns row-major [T, width] tensors.

// y = x W^T + b, x [T, K], W [N, K] (a Linear's [out, in]), b [N] or empty: y [T, N].
Tensor<double> linear(const Tensor<double>& x, const Tensor<double>& w, const Tensor<double>& b) {
    const size_t T = x.dim(0), K = x.dim(1), N = w.dim(0);
    Tensor<double> y(Shape{T, N});
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(N),
                static_cast<int>(K), 1.0, x.data(), static_cast<int>(K), w.data(), static_cast<int>(K), 0.0,
                y.data(), static_cast<int>(N));
    if (b.size() != 0)
        for (size_t t = 0; t < T; ++t)
            for (size_t n = 0; n < N; ++n) y[t * N + n] += b[n];
    return y;
}

// LayerNorm (Ba et al. 2016): y = (x - mean(x)) / sqrt(var(x) + eps) * g + b, var the biased
// variance over the row (torch.nn.LayerNorm).
Tensor<double> layer_norm(const Tensor<double>& x, const Tensor<double>& g, const Tensor<double>& b, double eps) {
    const size_t T = x.dim(0), E = x.dim(1);
    Tensor<double> y(Shape{T, E});
    for (size_t t = 0; t < T; ++t) {
        const auto row = x.row(t);
        double mean = 0;
        for (double v : row) mean += v;
        mean /= static_cast<double>(E);
        double var = 0;
        for (double v : row) var += (v - mean) * (v - mean);
        var /= static_cast<double>(E);
        const double inv_std = 1.0 / std::sqrt(var + eps);
        for (size_t e = 0; e < E; ++e) y[t * E + e] = (row[e] - mean) * inv_std * g[e] + b[e];
    }
    return y;
}

// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * g (LlamaRMSNorm).
Tensor<double> rms_norm(const Tensor<double>& x, const Tensor<double>& g, double eps) {
    const size_t T = x.dim(0), E = x.dim(1);
    Tensor<double> y(Shape{T, E});
    for (size_t t = 0; t < T; ++t) {
        const auto row = x.row(t);
        double mean_square = 0;
        for (double v : row) mean_square += v * v;
        mean_square /= static_cast<double>(E);
        const double inv_rms = 1.0 / std::sqrt(mean_square + eps);
        for (size_t e = 0; e < E; ++e) y[t * E + e] = row[e] * inv_rms * g[e];
    }
    return y;
}

// GELU, tanh form (Hendrycks & Gimpel 2016; transformers' gelu_new, GPT-2's activation):
// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_tanh_in_place(Tensor<double>& x) {
    const double sqrt_2_over_pi = std::sqrt(2.0 / std::numbers::pi);
    for (size_t i = 0; i < x.size(); ++i) {
        const double v = x[i];
        x[i] = 0.5 * v * (1.0 + std::tanh(sqrt_2_over_pi * (v + 0.044715 * v * v * v)));
    }
}

// GELU, exact (Hendrycks & Gimpel 2016; torch.nn.functional.gelu, transformers' "gelu"):
// gelu(x) = 0.5 x (1 + erf(x / sqrt(2))).
void gelu_erf_in_place(Tensor<double>& x) {
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::numbers::sqrt2));
}

// GeGLU (Shazeer 2020): gelu_tanh(gate) * up. Result in `gate`.
void geglu_in_place(Tensor<double>& gate, const Tensor<double>& up) {
    gelu_tanh_in_place(gate);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] *= up[i];
}

// SwiGLU (Shazeer 2020): silu(gate) * up, silu(g) = g / (1 + exp(-g)). Result in `gate`.
void swiglu_in_place(Tensor<double>& gate, const Tensor<double>& up) {
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
}

// gpt-oss's SwiGLU (transformers' GptOssExperts._apply_gate, alpha 1.702 and limit 7 of its
// config; llama.cpp's swiglu_oai): g = min(gate, 7), u = clamp(up, -7, 7), g sigmoid(1.702 g) (u + 1).
// Result in `gate`.
void swiglu_oai_in_place(Tensor<double>& gate, const Tensor<double>& up) {
    constexpr double alpha = 1.702, limit = 7.0;
    for (size_t i = 0; i < gate.size(); ++i) {
        const double g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
        gate[i] = g / (1.0 + std::exp(-alpha * g)) * (u + 1.0);
    }
}

void add_in_place(Tensor<double>& x, const Tensor<double>& y) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

// RoPE (Su et al. 2021, RoFormer eq. 34), in place on x [T, n_heads * D]: token t's pair (a, b)
// of frequency i becomes (a cos - b sin, a sin + b cos), theta = t * inv_freq[i], for the first
// n_rot dimensions of each head. Normal layout pairs (x[2i], x[2i+1]) (llama.cpp rope_norm);
// NeoX pairs (x[i], x[i + n_rot/2]) (transformers' rotate_half). magnitude multiplies cos and sin
// (YaRN's and LongRoPE's attention factor: transformers' attention_scaling, llama.cpp's mscale), so
// it scales the rotated dimensions only.
void rope_in_place(Tensor<double>& x, int n_heads, int D, int n_rot, RopeLayout layout, const std::vector<double>& inv_freq,
                   double magnitude = 1.0) {
    const size_t T = x.dim(0), width = x.dim(1);
    const int half = n_rot / 2;
    for (size_t t = 0; t < T; ++t) {
        for (int h = 0; h < n_heads; ++h) {
            double* head = x.data() + t * width + static_cast<size_t>(h) * D;
            for (int i = 0; i < half; ++i) {
                const double theta = static_cast<double>(t) * inv_freq[i];
                const double c = magnitude * std::cos(theta), s = magnitude * std::sin(theta);
                double& a = layout == RopeLayout::Normal ? head[2 * i] : head[i];
                double& b = layout == RopeLayout::Normal ? head[2 * i + 1] : head[i + half];
                const double a0 = a, b0 = b;
                a = a0 * c - b0 * s;
                b = a0 * s + b0 * c;
            }
        }
    }
}

// Causal scaled dot-product attention (Vaswani et al. 2017, eq. 1), head by head:
//   out_h = softmax(q_h k_g^T / sqrt(D) + M) v_g,  M[i][j] = -inf for j > i,
// q [T, H*D], k and v [T, Hkv*D]; query head h reads key/value head g = h / (H / Hkv)
// (grouped-query attention, Ainslie et al. 2023; transformers' repeat_kv). out [T, H*D].
// With a sliding window W, M[i][j] is also -inf for j <= i - W (W positions seen, i's own
// included: transformers' sliding_window_causal mask, llama.cpp's LLAMA_SWA_TYPE_STANDARD).
// scale: 0 means 1/sqrt(D). sinks ([H], gpt-oss): head h's softmax also holds a term exp(sinks[h])
// in its denominator, of no value (transformers' eager_attention_forward for gpt-oss).
Tensor<double> causal_attention(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v, int H, int Hkv, int D,
                                double scale = 0, size_t window = 0, const Tensor<double>& sinks = {}) {
    const size_t T = q.dim(0), q_width = q.dim(1), kv_width = k.dim(1);
    if (scale == 0) scale = 1.0 / std::sqrt(static_cast<double>(D));
    Tensor<double> out(Shape{T, q_width});
    std::vector<double> p(T);
    for (int h = 0; h < H; ++h) {
        const size_t g = static_cast<size_t>(h / (H / Hkv));
        for (size_t i = 0; i < T; ++i) {
            const double* qi = q.data() + i * q_width + static_cast<size_t>(h) * D;
            const size_t first = window && i + 1 > window ? i + 1 - window : 0;
            const double sink = sinks.size() ? sinks[static_cast<size_t>(h)] : -INFINITY;
            double max_score = sink;
            for (size_t j = first; j <= i; ++j) {
                const double* kj = k.data() + j * kv_width + g * D;
                double dot = 0;
                for (int d = 0; d < D; ++d) dot += qi[d] * kj[d];
                p[j] = dot * scale;
                max_score = std::max(max_score, p[j]);
            }
            double sum = 0;
            for (size_t j = first; j <= i; ++j) sum += p[j] = std::exp(p[j] - max_score);
            if (sinks.size()) sum += std::exp(sink - max_score);
            double* oi = out.data() + i * q_width + static_cast<size_t>(h) * D;
            for (size_t j = first; j <= i; ++j) {
                const double* vj = v.data() + j * kv_width + g * D;
                for (int d = 0; d < D; ++d) oi[d] += p[j] / sum * vj[d];
            }
        }
    }
    return out;
}

// Rows [begin, begin + count) of a [N, K] (or [N]) tensor.
Tensor<double> rows(const Tensor<double>& t, size_t begin, size_t count) {
    Shape shape = t.shape();
    shape[0] = count;
    Tensor<double> out(shape);
    const size_t row_size = t.size() / t.dim(0);
    std::copy_n(t.data() + begin * row_size, count * row_size, out.data());
    return out;
}

// ---------------------------------------------------------------------------------------------
// RoPE frequencies.

// Llama 3.1 frequency scaling (transformers' _compute_llama3_parameters; the rope_freqs.weight
// tensor llama.cpp's converter writes): the divisor of each base frequency. Wavelengths shorter
// than original_context / high_freq_factor keep theirs (1), longer than original_context /
// low_freq_factor are stretched by factor, and those between interpolate smoothly.
std::vector<double> llama3_freq_factors(const ModelConfig& c) {
    const RopeScaling& s = c.rope_scaling;
    const double low_freq_wavelen = s.original_context / s.low_freq_factor;
    const double high_freq_wavelen = s.original_context / s.high_freq_factor;
    std::vector<double> factors(static_cast<size_t>(c.n_rot / 2));
    for (size_t i = 0; i < factors.size(); ++i) {
        const double freq = std::pow(c.rope_freq_base, -2.0 * static_cast<double>(i) / c.n_rot);
        const double wavelen = 2 * std::numbers::pi / freq;
        if (wavelen < high_freq_wavelen) factors[i] = 1.0;
        else if (wavelen > low_freq_wavelen) factors[i] = s.factor;
        else {
            const double smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
            factors[i] = 1.0 / ((1 - smooth) / s.factor + smooth);
        }
    }
    return factors;
}

// inv_freq[i] = base^(-2i / n_rot) (RoFormer's theta_i) / freq_factors[i] / linear factor (linear
// scaling divides positions: Chen et al. 2023, "Extending Context Window ... via Positional
// Interpolation"; transformers divides inv_freq, the same product).
std::vector<double> rope_inv_freq(const ModelConfig& c, const std::vector<double>& freq_factors) {
    const double linear = c.rope_scaling.kind == RopeScaling::Kind::Linear ? c.rope_scaling.factor : 1.0;
    std::vector<double> inv_freq(static_cast<size_t>(c.n_rot / 2));
    for (size_t i = 0; i < inv_freq.size(); ++i)
        inv_freq[i] = std::pow(c.rope_freq_base, -2.0 * static_cast<double>(i) / c.n_rot) / freq_factors[i] / linear;
    return inv_freq;
}

// ---------------------------------------------------------------------------------------------
// Loading.

// Reads tensors by name with the shape the hyper-parameters imply, and keeps track of what it
// read: a checkpoint holding a weight this forward pass would ignore is refused, not half-run.
class WeightLoader {
public:
    WeightLoader(const WeightsSource& source, const ModelConfig& config) : source_(source), config_(config) {}

    Tensor<double> required(const std::string& name, Shape shape) {
        if (!source_.has(name))
            throw std::runtime_error(source_.origin() + ": tensor " + name + " is missing (" + config_.architecture_name +
                                     " needs it, " + source_.shape_string(as_u64(shape)) + ")");
        return read(name, std::move(shape));
    }
    Tensor<double> optional(const std::string& name, Shape shape) {
        return source_.has(name) ? read(name, std::move(shape)) : Tensor<double>();
    }
    bool has(const std::string& name) const { return source_.has(name); }
    void skip(const std::string& name) { used_.insert(name); }

    void check_all_used() const {
        for (const auto& name : source_.names())
            if (!used_.contains(name))
                throw std::runtime_error(source_.origin() + ": tensor " + name + " has no place in the " +
                                         config_.architecture_name + " forward pass twinfer implements");
    }

private:
    static std::vector<uint64_t> as_u64(const Shape& s) { return {s.begin(), s.end()}; }

    Tensor<double> read(const std::string& name, Shape shape) {
        const std::vector<uint64_t> actual = source_.shape(name);
        if (actual != as_u64(shape))
            throw std::runtime_error(source_.origin() + ": tensor " + name + " has " + source_.shape_string(actual) +
                                     " but the model's hyper-parameters need " + source_.shape_string(as_u64(shape)));
        Tensor<double> t(std::move(shape));
        const std::vector<double> values = source_.read(name);
        std::copy(values.begin(), values.end(), t.data());
        used_.insert(name);
        return t;
    }

    const WeightsSource& source_;
    const ModelConfig& config_;
    std::set<std::string, std::less<>> used_;
};

// Hugging Face GPT-2 keeps its projections in Conv1D modules, weights [in, out]; the forward
// pass wants a Linear's [out, in].
Tensor<double> transposed(const Tensor<double>& w) {
    const size_t rows_in = w.dim(0), cols_in = w.dim(1);
    Tensor<double> t(Shape{cols_in, rows_in});
    for (size_t r = 0; r < rows_in; ++r)
        for (size_t c = 0; c < cols_in; ++c) t[c * rows_in + r] = w[r * cols_in + c];
    return t;
}

// GPT-2's fused query/key/value projection, [3E, E] and [3E], split into three [E, E] and [E].
void split_qkv(const Tensor<double>& w, const Tensor<double>& b, GPTModel::Layer& layer) {
    const size_t E = w.dim(1);
    layer.wq = rows(w, 0, E), layer.wk = rows(w, E, E), layer.wv = rows(w, 2 * E, E);
    layer.bq = rows(b, 0, E), layer.bk = rows(b, E, E), layer.bv = rows(b, 2 * E, E);
}

// GGUF names (llama.cpp's gguf-py constants.py, MODEL_TENSORS[MODEL_ARCH.GPT2 / LLAMA]).
GPTModel::Weights load_gguf_gpt2(WeightLoader& load, const ModelConfig& c) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab;
    GPTModel::Weights w;
    w.token_embd = load.required("token_embd.weight", {V, E});
    w.position_embd = load.required("position_embd.weight", {static_cast<size_t>(c.n_ctx_train), E});
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        GPTModel::Layer& L = w.layers.emplace_back();
        L.attn_norm = load.required(p + "attn_norm.weight", {E});
        L.attn_norm_bias = load.required(p + "attn_norm.bias", {E});
        split_qkv(load.required(p + "attn_qkv.weight", {3 * E, E}), load.required(p + "attn_qkv.bias", {3 * E}), L);
        L.wo = load.required(p + "attn_output.weight", {E, E});
        L.bo = load.required(p + "attn_output.bias", {E});
        L.ffn_norm = load.required(p + "ffn_norm.weight", {E});
        L.ffn_norm_bias = load.required(p + "ffn_norm.bias", {E});
        L.w_up = load.required(p + "ffn_up.weight", {F, E});
        L.b_up = load.required(p + "ffn_up.bias", {F});
        L.w_down = load.required(p + "ffn_down.weight", {E, F});
        L.b_down = load.required(p + "ffn_down.bias", {E});
    }
    w.output_norm = load.required("output_norm.weight", {E});
    w.output_norm_bias = load.required("output_norm.bias", {E});
    w.output = load.optional("output.weight", {V, E});
    return w;
}

// Where a Llama checkpoint keeps its tensors: each name a stem, "weight" or "bias" appended; a
// layer's names follow its prefix and number.
struct LlamaNames {
    std::string token_embd, layer_prefix;
    std::string attn_norm, q, k, v, o, ffn_norm, gate, up, down;
    std::string output_norm;
};
const LlamaNames kGgufLlamaNames{"token_embd", "blk.", "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "output_norm"};
const LlamaNames kHfLlamaNames{"model.embed_tokens", "model.layers.", "input_layernorm", "self_attn.q_proj",
                               "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "model.norm"};

// The tensors both formats hold, by `n`: embedding, layers (biases optional: Qwen-style files),
// final norm.
GPTModel::Weights load_llama(WeightLoader& load, const ModelConfig& c, const LlamaNames& n) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, QD = c.n_head * c.head_dim, KVD = c.n_embd_kv();
    GPTModel::Weights w;
    w.token_embd = load.required(n.token_embd + ".weight", {V, E});
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = n.layer_prefix + std::to_string(il) + ".";
        GPTModel::Layer& L = w.layers.emplace_back();
        L.attn_norm = load.required(p + n.attn_norm + ".weight", {E});
        L.wq = load.required(p + n.q + ".weight", {QD, E});
        L.wk = load.required(p + n.k + ".weight", {KVD, E});
        L.wv = load.required(p + n.v + ".weight", {KVD, E});
        L.wo = load.required(p + n.o + ".weight", {E, QD});
        L.bq = load.optional(p + n.q + ".bias", {QD});
        L.bk = load.optional(p + n.k + ".bias", {KVD});
        L.bv = load.optional(p + n.v + ".bias", {KVD});
        L.bo = load.optional(p + n.o + ".bias", {E});
        L.ffn_norm = load.required(p + n.ffn_norm + ".weight", {E});
        L.w_gate = load.required(p + n.gate + ".weight", {F, E});
        L.w_up = load.required(p + n.up + ".weight", {F, E});
        L.w_down = load.required(p + n.down + ".weight", {E, F});
    }
    w.output_norm = load.required(n.output_norm + ".weight", {E});
    return w;
}

GPTModel::Weights load_gguf_llama(WeightLoader& load, const ModelConfig& c) {
    GPTModel::Weights w = load_llama(load, c, kGgufLlamaNames);
    w.output = load.optional("output.weight", {static_cast<size_t>(c.n_vocab), static_cast<size_t>(c.n_embd)});
    const size_t n_freq = static_cast<size_t>(c.n_rot / 2);
    const Tensor<double> freq_factors = load.optional("rope_freqs.weight", {n_freq});
    w.rope_inv_freq = rope_inv_freq(c, freq_factors.size() ? std::vector<double>(freq_factors.data(), freq_factors.data() + n_freq)
                                                           : std::vector<double>(n_freq, 1.0));
    return w;
}

// Every TransformerModel architecture (GGUF names of llama.cpp's gguf-py constants.py). A fused
// QKV (attn_qkv: Phi-3, GPT-NeoX after its converter's reordering) is split into Q, K and V rows;
// a fused gate+up (Phi-3's ffn_up of 2F rows) into gate (first half) and up.
GPTModel::Weights load_gguf_transformer(WeightLoader& load, const ModelConfig& c) {
    const TransformerSpec& spec = c.transformer;
    const ArchitectureDescription& d = *spec.description;
    // Biases: optional, or required where the description says so (gpt-oss's attention output,
    // router and experts).
    auto bias = [&](const std::string& name, Shape shape) {
        return d.required_biases ? load.required(name, std::move(shape)) : load.optional(name, std::move(shape));
    };
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, D = c.head_dim, QD = c.n_head * D, KVD = c.n_embd_kv();
    const bool layer_norm = spec.norm == NormKind::LayerNorm;
    GPTModel::Weights w;
    w.token_embd = load.required("token_embd.weight", {V, E});
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        GPTModel::Layer& L = w.layers.emplace_back();
        L.attn_norm = load.required(p + "attn_norm.weight", {E});
        if (layer_norm) L.attn_norm_bias = load.optional(p + "attn_norm.bias", {E});
        if (load.has(p + "attn_qkv.weight")) {
            const Tensor<double> qkv = load.required(p + "attn_qkv.weight", {QD + 2 * KVD, E});
            L.wq = rows(qkv, 0, QD), L.wk = rows(qkv, QD, KVD), L.wv = rows(qkv, QD + KVD, KVD);
            if (const Tensor<double> b = load.optional(p + "attn_qkv.bias", {QD + 2 * KVD}); b.size())
                L.bq = rows(b, 0, QD), L.bk = rows(b, QD, KVD), L.bv = rows(b, QD + KVD, KVD);
        } else {
            L.wq = load.required(p + "attn_q.weight", {QD, E});
            L.wk = load.required(p + "attn_k.weight", {KVD, E});
            L.wv = load.required(p + "attn_v.weight", {KVD, E});
            L.bq = load.optional(p + "attn_q.bias", {QD});
            L.bk = load.optional(p + "attn_k.bias", {KVD});
            L.bv = load.optional(p + "attn_v.bias", {KVD});
        }
        L.wo = load.required(p + "attn_output.weight", {E, QD});
        L.bo = bias(p + "attn_output.bias", {E});
        if (d.attention_sinks) L.attn_sinks = load.required(p + "attn_sinks.weight", {static_cast<size_t>(c.n_head)});
        if (spec.qk_norm) {
            L.q_norm = load.required(p + "attn_q_norm.weight", {D});
            L.k_norm = load.required(p + "attn_k_norm.weight", {D});
        }
        if (spec.post_norms) {
            L.attn_post_norm = load.required(p + "post_attention_norm.weight", {E});
            L.ffn_post_norm = load.required(p + "post_ffw_norm.weight", {E});
        }
        // A parallel block may share the attention's norm (no ffn_norm).
        const std::string ffn_norm = p + std::string(d.ffn_norm) + ".weight";
        L.ffn_norm = spec.residual == ResidualKind::Parallel ? load.optional(ffn_norm, {E}) : load.required(ffn_norm, {E});
        if (layer_norm) L.ffn_norm_bias = load.optional(p + "ffn_norm.bias", {E});
        if (spec.n_expert > 0) {
            const size_t X = spec.n_expert, FE = spec.n_ff_expert;
            L.router = load.required(p + "ffn_gate_inp.weight", {X, E});
            L.router_bias = bias(p + "ffn_gate_inp.bias", {X});
            L.expert_gate_bias = bias(p + "ffn_gate_exps.bias", {X, FE});
            L.expert_up_bias = bias(p + "ffn_up_exps.bias", {X, FE});
            L.expert_down_bias = bias(p + "ffn_down_exps.bias", {X, E});
            const Tensor<double> gate = load.required(p + "ffn_gate_exps.weight", {X, FE, E});
            const Tensor<double> up = load.required(p + "ffn_up_exps.weight", {X, FE, E});
            const Tensor<double> down = load.required(p + "ffn_down_exps.weight", {X, E, FE});
            for (size_t e = 0; e < X; ++e) {
                L.expert_gate.push_back(Tensor<double>(Shape{FE, E}));
                std::copy_n(gate.data() + e * FE * E, FE * E, L.expert_gate.back().data());
                L.expert_up.push_back(Tensor<double>(Shape{FE, E}));
                std::copy_n(up.data() + e * FE * E, FE * E, L.expert_up.back().data());
                L.expert_down.push_back(Tensor<double>(Shape{E, FE}));
                std::copy_n(down.data() + e * E * FE, E * FE, L.expert_down.back().data());
            }
            continue;
        }
        const bool gated = spec.feed_forward != FeedForwardKind::GeluTanh && spec.feed_forward != FeedForwardKind::GeluErf;
        if (gated && !load.has(p + "ffn_gate.weight")) {
            const Tensor<double> gate_up = load.required(p + "ffn_up.weight", {2 * F, E});
            L.w_gate = rows(gate_up, 0, F), L.w_up = rows(gate_up, F, F);
        } else {
            if (gated) L.w_gate = load.required(p + "ffn_gate.weight", {F, E});
            L.w_up = load.required(p + "ffn_up.weight", {F, E});
            L.b_up = load.optional(p + "ffn_up.bias", {F});
        }
        L.w_down = load.required(p + "ffn_down.weight", {E, F});
        L.b_down = load.optional(p + "ffn_down.bias", {E});
    }
    w.output_norm = load.required("output_norm.weight", {E});
    if (layer_norm) w.output_norm_bias = load.optional("output_norm.bias", {E});
    w.output = load.optional("output.weight", {V, E});
    // LongRoPE's factors are read with the hyper-parameters (ModelConfig::rope_scaling).
    load.skip("rope_factors_long.weight");
    load.skip("rope_factors_short.weight");
    return w;
}

// Hugging Face names (GPT2LMHeadModel). Checkpoints saved by transformers prefix "transformer.";
// the original openai-community/gpt2 files do not. The LM head is always tied to wte.
GPTModel::Weights load_hf_gpt2(WeightLoader& load, const ModelConfig& c) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab;
    const std::string root = load.has("transformer.wte.weight") ? "transformer." : "";
    GPTModel::Weights w;
    w.token_embd = load.required(root + "wte.weight", {V, E});
    w.position_embd = load.required(root + "wpe.weight", {static_cast<size_t>(c.n_ctx_train), E});
    for (int il = 0; il < c.n_layer; ++il) {
        const std::string p = root + "h." + std::to_string(il) + ".";
        GPTModel::Layer& L = w.layers.emplace_back();
        L.attn_norm = load.required(p + "ln_1.weight", {E});
        L.attn_norm_bias = load.required(p + "ln_1.bias", {E});
        split_qkv(transposed(load.required(p + "attn.c_attn.weight", {E, 3 * E})), load.required(p + "attn.c_attn.bias", {3 * E}), L);
        L.wo = transposed(load.required(p + "attn.c_proj.weight", {E, E}));
        L.bo = load.required(p + "attn.c_proj.bias", {E});
        L.ffn_norm = load.required(p + "ln_2.weight", {E});
        L.ffn_norm_bias = load.required(p + "ln_2.bias", {E});
        L.w_up = transposed(load.required(p + "mlp.c_fc.weight", {E, F}));
        L.b_up = load.required(p + "mlp.c_fc.bias", {F});
        L.w_down = transposed(load.required(p + "mlp.c_proj.weight", {F, E}));
        L.b_down = load.required(p + "mlp.c_proj.bias", {E});
        // Older checkpoints store the causal mask as buffers; the mask here is computed.
        load.skip(p + "attn.bias");
        load.skip(p + "attn.masked_bias");
    }
    w.output_norm = load.required(root + "ln_f.weight", {E});
    w.output_norm_bias = load.required(root + "ln_f.bias", {E});
    load.skip("lm_head.weight");
    return w;
}

// Hugging Face names (LlamaForCausalLM). The checkpoint's q/k rows are in the NeoX RoPE layout.
GPTModel::Weights load_hf_llama(WeightLoader& load, const ModelConfig& c, bool tied) {
    GPTModel::Weights w = load_llama(load, c, kHfLlamaNames);
    if (tied) load.skip("lm_head.weight");   // transformers ties it to embed_tokens whatever the file holds
    else w.output = load.required("lm_head.weight", {static_cast<size_t>(c.n_vocab), static_cast<size_t>(c.n_embd)});
    const size_t n_freq = static_cast<size_t>(c.n_rot / 2);
    w.rope_inv_freq = rope_inv_freq(c, c.rope_scaling.kind == RopeScaling::Kind::Llama3 ? llama3_freq_factors(c)
                                                                                         : std::vector<double>(n_freq, 1.0));
    return w;
}

nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path.string());
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {   // parse errors, and numbers beyond a double
        throw std::runtime_error(path.string() + ": not valid JSON: " + e.what());
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

GPTModel::GPTModel(ModelConfig config, Weights weights, size_t n_ctx)
    : config_(std::move(config)), weights_(std::move(weights)), n_ctx_(n_ctx ? n_ctx : static_cast<size_t>(config_.n_ctx_train)) {
    if (config_.architecture == Architecture::GPT2 && n_ctx_ > static_cast<size_t>(config_.n_ctx_train))
        throw std::invalid_argument("GPT-2 learned position embeddings for " + std::to_string(config_.n_ctx_train) +
                                    " positions; a context of " + std::to_string(n_ctx_) + " cannot be run");
}

GPTModel GPTModel::from_gguf(const gguf::File& file, size_t n_ctx) {
    ModelConfig config = ModelConfig::from_gguf(file);
    GGUFWeights source(file);
    WeightLoader load(source, config);
    Weights weights = config.architecture == Architecture::GPT2      ? load_gguf_gpt2(load, config)
                      : config.architecture == Architecture::Transformer ? load_gguf_transformer(load, config)
                                                                         : load_gguf_llama(load, config);
    load.check_all_used();
    return GPTModel(std::move(config), std::move(weights), n_ctx);
}

GPTModel GPTModel::from_safetensors(const std::filesystem::path& dir, size_t n_ctx) {
    const nlohmann::json json = read_json(dir / "config.json");
    ModelConfig config = ModelConfig::from_hf_config(json);
    const std::filesystem::path weights_path = dir / "model.safetensors";
    if (!std::filesystem::exists(weights_path) && std::filesystem::exists(dir / "model.safetensors.index.json"))
        throw std::runtime_error(dir.string() + ": sharded checkpoints (model.safetensors.index.json) are not supported");
    const safetensors::File file = safetensors::File::open(weights_path);
    SafetensorsWeights source(file);
    WeightLoader load(source, config);
    // LlamaConfig defaults tie_word_embeddings to false (PretrainedConfig's default of true is
    // overridden there).
    const bool tied = json.value("tie_word_embeddings", false);
    Weights weights = config.architecture == Architecture::GPT2 ? load_hf_gpt2(load, config) : load_hf_llama(load, config, tied);
    load.check_all_used();
    return GPTModel(std::move(config), std::move(weights), n_ctx);
}

Logits GPTModel::forward(std::span<const Token> ids, LogitsMode mode) {
    if (ids.empty()) throw std::invalid_argument("GPTModel::forward: no tokens given");
    for (const Token id : ids)
        if (id < 0 || id >= config_.n_vocab)
            throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(config_.n_vocab));
    if (history_.size() + ids.size() > n_ctx_)
        throw ContextOverflow(std::to_string(history_.size()) + " tokens seen + " + std::to_string(ids.size()) +
                              " new exceed the context of " + std::to_string(n_ctx_));
    std::vector<Token> sequence = history_;
    sequence.insert(sequence.end(), ids.begin(), ids.end());

    const Tensor<double> x = config_.architecture == Architecture::GPT2          ? gpt2_forward(sequence)
                             : config_.architecture == Architecture::Transformer ? transformer_forward(sequence)
                                                                                 : llama_forward(sequence);   // [T, E]
    const size_t T = sequence.size();
    const size_t first = mode == LogitsMode::All ? T - ids.size() : T - 1;
    // logits = x W_out^T, W_out the output matrix or (tied) the token embeddings: [n_positions, V]
    Tensor<double> logits = linear(rows(x, first, T - first), weights_.output.size() ? weights_.output : weights_.token_embd, {});
    // Final logit soft-capping (Gemma 2): logits = c tanh(logits / c).
    if (const double cap = config_.transformer.final_logit_softcap; cap > 0)
        for (size_t i = 0; i < logits.size(); ++i) logits[i] = cap * std::tanh(logits[i] / cap);
    observe("result_output", -1, logits);

    history_ = std::move(sequence);
    const auto values = logits.span();
    return Logits{static_cast<size_t>(config_.n_vocab), T - first, std::vector<double>(values.begin(), values.end())};
}

// GPT-2 (Radford et al. 2019; transformers' GPT2Model.forward), pre-norm residual blocks:
//   x = wte[ids] + wpe[positions]
//   per layer: x += W_o attn(LN_1(x)) + b_o;  x += W_down gelu(W_up LN_2(x) + b_up) + b_down
//   result: LN_f(x)
Tensor<double> GPTModel::gpt2_forward(std::span<const Token> ids) const {
    const ModelConfig& c = config_;
    const size_t T = ids.size(), E = c.n_embd;
    Tensor<double> x(Shape{T, E});   // [T, E]
    for (size_t t = 0; t < T; ++t)
        for (size_t e = 0; e < E; ++e) x[t * E + e] = weights_.token_embd.row(ids[t])[e] + weights_.position_embd.row(t)[e];
    observe("inp_embd", -1, x);

    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = weights_.layers[il];
        const Tensor<double> h = layer_norm(x, L.attn_norm, L.attn_norm_bias, c.norm_eps);   // [T, E]
        observe("attn_norm", il, h);
        const Tensor<double> q = linear(h, L.wq, L.bq), k = linear(h, L.wk, L.bk), v = linear(h, L.wv, L.bv);   // [T, E]
        const Tensor<double> kqv = causal_attention(q, k, v, c.n_head, c.n_head, c.head_dim);   // [T, E]
        observe("kqv_out", il, kqv);
        const Tensor<double> attn_out = linear(kqv, L.wo, L.bo);   // [T, E]
        observe("attn_out", il, attn_out);
        add_in_place(x, attn_out);
        observe("ffn_inp", il, x);

        const Tensor<double> h2 = layer_norm(x, L.ffn_norm, L.ffn_norm_bias, c.norm_eps);   // [T, E]
        observe("ffn_norm", il, h2);
        Tensor<double> up = linear(h2, L.w_up, L.b_up);   // [T, F]
        gelu_tanh_in_place(up);
        const Tensor<double> ffn_out = linear(up, L.w_down, L.b_down);   // [T, E]
        observe("ffn_out", il, ffn_out);
        add_in_place(x, ffn_out);
        observe("l_out", il, x);
    }
    Tensor<double> result = layer_norm(x, weights_.output_norm, weights_.output_norm_bias, c.norm_eps);   // [T, E]
    observe("result_norm", -1, result);
    return result;
}

// Llama (Touvron et al. 2023; transformers' LlamaModel.forward), pre-norm residual blocks:
//   x = embed[ids]
//   per layer: x += W_o attn(RoPE(W_q h), RoPE(W_k h), W_v h), h = RMSNorm_1(x)
//              x += W_down (silu(W_gate h) * W_up h),             h = RMSNorm_2(x)
//   result: RMSNorm_f(x)
Tensor<double> GPTModel::llama_forward(std::span<const Token> ids) const {
    const ModelConfig& c = config_;
    const size_t T = ids.size(), E = c.n_embd;
    Tensor<double> x(Shape{T, E});   // [T, E]
    for (size_t t = 0; t < T; ++t) std::ranges::copy(weights_.token_embd.row(ids[t]), x.row(t).begin());
    observe("inp_embd", -1, x);

    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = weights_.layers[il];
        const Tensor<double> h = rms_norm(x, L.attn_norm, c.norm_eps);   // [T, E]
        observe("attn_norm", il, h);
        Tensor<double> q = linear(h, L.wq, L.bq);   // [T, H*D]
        Tensor<double> k = linear(h, L.wk, L.bk);   // [T, Hkv*D]
        const Tensor<double> v = linear(h, L.wv, L.bv);   // [T, Hkv*D]
        rope_in_place(q, c.n_head, c.head_dim, c.n_rot, c.rope_layout, weights_.rope_inv_freq);
        rope_in_place(k, c.n_head_kv, c.head_dim, c.n_rot, c.rope_layout, weights_.rope_inv_freq);
        observe("Qcur", il, q);
        observe("Kcur", il, k);
        observe("Vcur", il, v);
        const Tensor<double> kqv = causal_attention(q, k, v, c.n_head, c.n_head_kv, c.head_dim);   // [T, H*D]
        observe("kqv_out", il, kqv);
        const Tensor<double> attn_out = linear(kqv, L.wo, L.bo);   // [T, E]
        observe("attn_out", il, attn_out);
        add_in_place(x, attn_out);
        observe("ffn_inp", il, x);

        const Tensor<double> h2 = rms_norm(x, L.ffn_norm, c.norm_eps);   // [T, E]
        observe("ffn_norm", il, h2);
        Tensor<double> gate = linear(h2, L.w_gate, {});   // [T, F]
        swiglu_in_place(gate, linear(h2, L.w_up, {}));
        const Tensor<double> ffn_out = linear(gate, L.w_down, {});   // [T, E]
        observe("ffn_out", il, ffn_out);
        add_in_place(x, ffn_out);
        observe("l_out", il, x);
    }
    Tensor<double> result = rms_norm(x, weights_.output_norm, c.norm_eps);   // [T, E]
    observe("result_norm", -1, result);
    return result;
}

// Every TransformerModel architecture, as its TransformerSpec describes it (transformers'
// modeling_qwen2/qwen3/qwen3_moe/gemma3/phi3/smollm3/stablelm/gpt_neox/starcoder2/gpt_oss.py):
//   x = embed[ids] * embedding_scale
//   per layer: h = norm_1(x)
//              q, k, v = W_q h + b_q, W_k h + b_k, W_v h + b_v
//              q, k = rms_norm per head (QK-norm), then RoPE with the layer's base (none: NoPE)
//              a = W_o attn(q, k, v) + b_o over the layer's window (with its sinks: gpt-oss);
//              a = post_norm(a) (sandwich)
//     sequential: x += a;  x += post_norm(ffn(norm_2(x)))
//     parallel:   x += a + ffn(norm_2(x_in))   (norm_2 = norm_1 when the file has no ffn_norm)
//   result: norm_f(x)
// norm: RMSNorm or LayerNorm (with its bias where the file has one).
Tensor<double> GPTModel::transformer_forward(std::span<const Token> ids) const {
    const ModelConfig& c = config_;
    const TransformerSpec& spec = c.transformer;
    const size_t T = ids.size(), E = c.n_embd, D = c.head_dim;
    auto norm = [&](const Tensor<double>& x, const Tensor<double>& g, const Tensor<double>& b) {
        if (spec.norm == NormKind::RMSNorm) return rms_norm(x, g, c.norm_eps);
        return layer_norm(x, g, b.size() ? b : Tensor<double>(Shape{g.size()}), c.norm_eps);
    };
    // QK-norm: RMSNorm over each head's D values (Qwen3, Gemma 3).
    auto head_norm = [&](Tensor<double>& x, const Tensor<double>& g) {
        const Shape shape = x.shape();
        Tensor<double> heads(Shape{x.size() / D, D});
        std::copy_n(x.data(), x.size(), heads.data());
        const Tensor<double> normed = rms_norm(heads, g, c.norm_eps);
        std::copy_n(normed.data(), x.size(), x.data());
    };

    // YaRN or LongRoPE at this model's context (LongRoPE's factor set depends on it).
    const RopeFrequencyScaling scaling = rope_frequency_scaling(c, n_ctx_);

    Tensor<double> x(Shape{T, E});   // [T, E]
    for (size_t t = 0; t < T; ++t)
        for (size_t e = 0; e < E; ++e) x[t * E + e] = weights_.token_embd.row(ids[t])[e] * spec.embedding_scale;
    observe("inp_embd", -1, x);

    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = weights_.layers[il];
        const LayerSpec& layer = spec.layers[il];
        const Tensor<double> h = norm(x, L.attn_norm, L.attn_norm_bias);   // [T, E]
        observe("attn_norm", il, h);
        Tensor<double> q = linear(h, L.wq, L.bq);         // [T, H*D]
        Tensor<double> k = linear(h, L.wk, L.bk);         // [T, Hkv*D]
        const Tensor<double> v = linear(h, L.wv, L.bv);   // [T, Hkv*D]
        if (spec.qk_norm) head_norm(q, L.q_norm), head_norm(k, L.k_norm);
        if (layer.rope) {
            // theta_i = position * base^(-2i / n_rot) * position_scale (linear scaling) / divisor_i
            // (YaRN, LongRoPE; not on local layers).
            const bool scaled = layer.rope_scaled && !scaling.divisors.empty();
            std::vector<double> inv_freq(static_cast<size_t>(c.n_rot / 2));
            for (size_t i = 0; i < inv_freq.size(); ++i)
                inv_freq[i] = std::pow(layer.rope_freq_base, -2.0 * static_cast<double>(i) / c.n_rot) * layer.rope_position_scale /
                              (scaled ? scaling.divisors[i] : 1.0);
            const double magnitude = layer.rope_scaled ? scaling.magnitude : 1.0;
            rope_in_place(q, c.n_head, c.head_dim, c.n_rot, c.rope_layout, inv_freq, magnitude);
            rope_in_place(k, c.n_head_kv, c.head_dim, c.n_rot, c.rope_layout, inv_freq, magnitude);
        }
        observe("Qcur", il, q);
        observe("Kcur", il, k);
        observe("Vcur", il, v);
        const Tensor<double> kqv =
            causal_attention(q, k, v, c.n_head, c.n_head_kv, c.head_dim, spec.attention_scale, layer.window, L.attn_sinks);
        observe("kqv_out", il, kqv);
        Tensor<double> attn_out = linear(kqv, L.wo, L.bo);   // [T, E]
        if (spec.post_norms) attn_out = norm(attn_out, L.attn_post_norm, {});
        observe("attn_out", il, attn_out);

        if (spec.residual == ResidualKind::Parallel) {
            const Tensor<double> h2 = L.ffn_norm.size() ? norm(x, L.ffn_norm, L.ffn_norm_bias) : h;
            const Tensor<double> ffn_out = transformer_feed_forward(L, h2);
            add_in_place(x, attn_out);
            add_in_place(x, ffn_out);
        } else {
            add_in_place(x, attn_out);
            observe("ffn_inp", il, x);
            const Tensor<double> h2 = norm(x, L.ffn_norm, L.ffn_norm_bias);
            observe("ffn_norm", il, h2);
            Tensor<double> ffn_out = transformer_feed_forward(L, h2);
            if (spec.post_norms) ffn_out = norm(ffn_out, L.ffn_post_norm, {});
            observe("ffn_out", il, ffn_out);
            add_in_place(x, ffn_out);
        }
        observe("l_out", il, x);
    }
    Tensor<double> result = norm(x, weights_.output_norm, weights_.output_norm_bias);   // [T, E]
    observe("result_norm", -1, result);
    return result;
}

// The feed-forward block of a TransformerModel layer on h [T, E]: gated (SwiGLU, GeGLU, gpt-oss's
// SwiGLU), plain (GELU), or a mixture of experts, whose router (with its bias: gpt-oss) takes the
// softmax over all experts, keeps the top k (the lower index first on ties), renormalizes them
// when the spec says so, and sums the chosen experts' gated outputs (with their biases: gpt-oss)
// with those weights (transformers' Qwen3MoeSparseMoeBlock; GptOssMLP's softmax over the top k
// logits is the renormalized one).
Tensor<double> GPTModel::transformer_feed_forward(const Layer& L, const Tensor<double>& h) const {
    const TransformerSpec& spec = config_.transformer;
    if (spec.n_expert > 0) {
        const size_t T = h.dim(0), E = h.dim(1), X = spec.n_expert, K = spec.n_expert_used;
        const Tensor<double> router = linear(h, L.router, L.router_bias);   // [T, n_expert]
        Tensor<double> out(Shape{T, E});
        for (size_t t = 0; t < T; ++t) {
            std::vector<double> p(router.row(t).begin(), router.row(t).end());
            const double max_logit = *std::max_element(p.begin(), p.end());
            double sum = 0;
            for (double& v : p) sum += v = std::exp(v - max_logit);
            for (double& v : p) v /= sum;
            std::vector<size_t> order(X);
            std::iota(order.begin(), order.end(), size_t{0});
            std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
            double chosen = 0;
            for (size_t j = 0; j < K; ++j) chosen += p[order[j]];
            const Tensor<double> ht = rows(h, t, 1);
            for (size_t j = 0; j < K; ++j) {
                const size_t e = order[j];
                const double weight = spec.normalize_expert_weights ? p[e] / chosen : p[e];
                // Expert e's biases, where the file has them: rows e of the [n_expert, n] tensors.
                auto expert_bias = [&](const Tensor<double>& b) { return b.size() ? rows(b, e, 1) : Tensor<double>(); };
                Tensor<double> gate = linear(ht, L.expert_gate[e], expert_bias(L.expert_gate_bias));
                const Tensor<double> up = linear(ht, L.expert_up[e], expert_bias(L.expert_up_bias));
                if (spec.feed_forward == FeedForwardKind::SwiGLUOai) swiglu_oai_in_place(gate, up);
                else swiglu_in_place(gate, up);
                const Tensor<double> y = linear(gate, L.expert_down[e], expert_bias(L.expert_down_bias));
                for (size_t i = 0; i < E; ++i) out[t * E + i] += weight * y[i];
            }
        }
        return out;
    }
    if (spec.feed_forward != FeedForwardKind::GeluTanh && spec.feed_forward != FeedForwardKind::GeluErf) {
        Tensor<double> gate = linear(h, L.w_gate, {});   // [T, F]
        const Tensor<double> up = linear(h, L.w_up, L.b_up);
        if (spec.feed_forward == FeedForwardKind::SwiGLU) swiglu_in_place(gate, up);
        else if (spec.feed_forward == FeedForwardKind::SwiGLUOai) swiglu_oai_in_place(gate, up);
        else geglu_in_place(gate, up);
        return linear(gate, L.w_down, L.b_down);
    }
    Tensor<double> up = linear(h, L.w_up, L.b_up);   // [T, F]
    if (spec.feed_forward == FeedForwardKind::GeluTanh) gelu_tanh_in_place(up);
    else gelu_erf_in_place(up);
    return linear(up, L.w_down, L.b_down);
}

void GPTModel::truncate_cache(size_t n) {
    if (n > history_.size())
        throw std::out_of_range("GPTModel::truncate_cache: " + std::to_string(n) + " tokens asked, the history holds " +
                                std::to_string(history_.size()));
    history_.resize(n);
}

void GPTModel::observe(std::string_view name, int layer, const Tensor<double>& t) const {
    if (observer_) observer_(name, layer, t.span());
}

}  // namespace twinfer
