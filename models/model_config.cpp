#include "models/model_config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "format/quant.hpp"

namespace twinfer {
namespace {

Architecture architecture_from_name(const std::string& name, const std::string& origin) {
    if (name == "llama") return Architecture::Llama;
    if (name == "gpt2") return Architecture::GPT2;
    if (find_architecture(name)) return Architecture::Transformer;
    throw std::runtime_error(origin + ": unknown architecture '" + name + "' (twinfer runs: llama, gpt2, " +
                             transformer_architecture_names() + ")");
}

int positive_int(uint64_t v, const std::string& what) {
    if (v == 0 || v > (1u << 30)) throw std::runtime_error("hyper-parameter " + what + " = " + std::to_string(v) + " is out of range");
    return static_cast<int>(v);
}

// config.json readers: a missing key or a value of the wrong type names the key.
const nlohmann::json& hf_key(const nlohmann::json& config, const std::string& key) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) throw std::runtime_error("config.json: missing key '" + key + "'");
    return *it;
}

int hf_int(const nlohmann::json& config, const std::string& key) {
    const nlohmann::json& v = hf_key(config, key);
    if (!v.is_number_unsigned()) throw std::runtime_error("config.json: '" + key + "' = " + v.dump() + " is not a positive integer");
    return positive_int(v.get<uint64_t>(), "config.json " + key);
}

int hf_int_or(const nlohmann::json& config, const std::string& key, int fallback) {
    const auto it = config.find(key);
    return it == config.end() || it->is_null() ? fallback : hf_int(config, key);
}

double hf_float(const nlohmann::json& config, const std::string& key) {
    const nlohmann::json& v = hf_key(config, key);
    if (!v.is_number()) throw std::runtime_error("config.json: '" + key + "' = " + v.dump() + " is not a number");
    return v.get<double>();
}

double hf_float_or(const nlohmann::json& config, const std::string& key, double fallback) {
    const auto it = config.find(key);
    return it == config.end() || it->is_null() ? fallback : hf_float(config, key);
}

std::string hf_string_or(const nlohmann::json& config, const std::string& key, const std::string& fallback) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) return fallback;
    if (!it->is_string()) throw std::runtime_error("config.json: '" + key + "' = " + it->dump() + " is not a string");
    return it->get<std::string>();
}

// Llama RoPE settings. transformers < 4.57 writes "rope_theta" and "rope_scaling" ({"type" or
// "rope_type": ...}); later versions write both into "rope_parameters".
void read_hf_rope(const nlohmann::json& config, ModelConfig& c) {
    const nlohmann::json* scaling = nullptr;
    c.rope_freq_base = hf_float_or(config, "rope_theta", 10000.0);
    if (auto it = config.find("rope_parameters"); it != config.end() && it->is_object()) {
        c.rope_freq_base = hf_float_or(*it, "rope_theta", c.rope_freq_base);
        scaling = &*it;
    } else if (auto s = config.find("rope_scaling"); s != config.end() && !s->is_null()) {
        if (!s->is_object()) throw std::runtime_error("config.json: 'rope_scaling' is not an object");
        scaling = &*s;
    }
    const double partial = hf_float_or(scaling ? *scaling : config, "partial_rotary_factor", hf_float_or(config, "partial_rotary_factor", 1.0));
    if (partial != 1.0) throw std::runtime_error("config.json: partial_rotary_factor " + std::to_string(partial) + " is not implemented for Llama");
    if (!scaling) return;
    const std::string type = hf_string_or(*scaling, "rope_type", hf_string_or(*scaling, "type", "default"));
    if (type == "default") return;
    if (type == "linear") {
        c.rope_scaling.kind = RopeScaling::Kind::Linear;
        c.rope_scaling.factor = hf_float(*scaling, "factor");
    } else if (type == "llama3") {
        c.rope_scaling.kind = RopeScaling::Kind::Llama3;
        c.rope_scaling.factor = hf_float(*scaling, "factor");
        c.rope_scaling.low_freq_factor = hf_float(*scaling, "low_freq_factor");
        c.rope_scaling.high_freq_factor = hf_float(*scaling, "high_freq_factor");
        c.rope_scaling.original_context = hf_int(*scaling, "original_max_position_embeddings");
    } else {
        throw std::runtime_error("config.json: unsupported rope scaling type '" + type + "' (twinfer runs: linear, llama3)");
    }
}

// RoPE scaling from GGUF metadata, with llama.cpp's key names (llama-arch.cpp) and its converter's
// meaning (convert_hf_to_gguf.py: ModelBase.set_gguf_parameters, Phi3MiniModel): <arch>.rope.scaling.
//   type "linear" (or no type but a factor): positions divided by factor.
//   type "yarn": factor, original_context_length (default: context_length), yarn_beta_fast (32),
//     yarn_beta_slow (1), yarn_attn_factor (HF's attention_factor; default 0.1 ln(factor) + 1).
//     llama.cpp reads the beta and yarn_attn_factor keys for a few architectures only (grok,
//     mistral3) and its YaRN magnitude is always the default; transformers uses the values the
//     converter copied from config.json, and so does twinfer (they differ only where a file has them).
//   LongRoPE: type "longrope", or no type and the tensors rope_factors_long.weight and
//     rope_factors_short.weight (Phi-3's converter writes no type), each [n_rot/2] divisors;
//     original_context_length picks between them (rope_frequency_scaling).
//   attn_factor multiplies the magnitude (llama.cpp's rope_attn_factor, which for LongRoPE is the
//     whole of it; default there HF's sqrt(1 + ln(s) / ln(original)), s = context_length / original).
// yarn_log_multiplier (DeepSeek's mscale_all_dim) and a yarn_ext_factor other than 1 have meanings
// no architecture twinfer runs uses, and are refused.
void read_gguf_rope_scaling(const gguf::File& file, ModelConfig& c) {
    const std::string p = c.architecture_name + ".rope.scaling.";
    const std::string where = file.origin() + ": " + p;
    RopeScaling& s = c.rope_scaling;
    auto positive = [&](const std::string& key, double fallback) {
        const double v = file.float_or(p + key, fallback);
        if (!(v > 0) || !std::isfinite(v)) throw std::runtime_error(where + key + " = " + std::to_string(v) + " must be a positive number");
        return v;
    };
    auto original_context = [&] {
        if (!file.has(p + "original_context_length")) return c.n_ctx_train;
        return positive_int(file.get_uint(p + "original_context_length"), p + "original_context_length");
    };
    const std::string type = file.string_or(p + "type").value_or("none");
    const bool has_long = file.find_tensor("rope_factors_long.weight"), has_short = file.find_tensor("rope_factors_short.weight");
    if (type == "longrope" || ((type == "none" || type.empty()) && (has_long || has_short))) {
        if (!has_long || !has_short)
            throw std::runtime_error(file.origin() + ": LongRoPE needs both rope_factors_long.weight and rope_factors_short.weight");
        s.kind = RopeScaling::Kind::LongRope;
        s.original_context = original_context();
        auto factors = [&](const std::string& name) {
            const gguf::TensorInfo& t = *file.find_tensor(name);
            const size_t n = static_cast<size_t>(c.n_rot / 2);
            if (t.dims != std::vector<uint64_t>{n})
                throw std::runtime_error(file.origin() + ": " + name + " must hold " + std::to_string(n) + " factors (rope.dimension_count / 2)");
            std::vector<double> values(n);
            try {
                dequantize(t.type, t.data, values);
            } catch (const std::exception& e) {
                throw std::runtime_error(file.origin() + ": loading " + name + ": " + e.what());
            }
            for (size_t i = 0; i < n; ++i)
                if (!(values[i] > 0) || !std::isfinite(values[i]))
                    throw std::runtime_error(file.origin() + ": " + name + "[" + std::to_string(i) + "] = " + std::to_string(values[i]) +
                                             " must be a positive number");
            return values;
        };
        s.long_factors = factors("rope_factors_long.weight");
        s.short_factors = factors("rope_factors_short.weight");
        const double scale = double(c.n_ctx_train) / s.original_context;
        s.attn_factor = positive("attn_factor", scale > 1 ? std::sqrt(1 + std::log(scale) / std::log(double(s.original_context))) : 1.0);
    } else if (has_long || has_short) {
        throw std::runtime_error(file.origin() + ": rope_factors_long/short.weight (LongRoPE) with rope scaling type '" + type +
                                 "' is not implemented");
    } else if (type == "yarn") {
        s.kind = RopeScaling::Kind::Yarn;
        s.factor = positive("factor", 1.0);
        s.original_context = original_context();
        s.beta_fast = positive("yarn_beta_fast", 32.0);
        s.beta_slow = positive("yarn_beta_slow", 1.0);
        s.truncate = c.transformer.description->yarn_truncate;
        if (file.has(p + "yarn_log_multiplier") && file.get_float(p + "yarn_log_multiplier") != 0)
            throw std::runtime_error(where + "yarn_log_multiplier (DeepSeek's mscale_all_dim) is not implemented");
        if (file.has(p + "yarn_ext_factor") && file.get_float(p + "yarn_ext_factor") != 1)
            throw std::runtime_error(where + "yarn_ext_factor other than 1 is not implemented");
        if (!(c.rope_freq_base > 1) || !std::isfinite(c.rope_freq_base))
            throw std::runtime_error(file.origin() + ": YaRN needs a rope.freq_base above 1, not " + std::to_string(c.rope_freq_base));
        const double mscale = s.factor <= 1 ? 1.0 : 0.1 * std::log(s.factor) + 1.0;   // HF yarn_get_mscale, llama.cpp get_mscale
        s.attn_factor = positive("yarn_attn_factor", mscale) * positive("attn_factor", 1.0);
    } else if (type == "linear" || ((type == "none" || type.empty()) && file.has(p + "factor"))) {
        s.kind = RopeScaling::Kind::Linear;
        s.factor = positive("factor", 1.0);
    } else if (type != "none" && !type.empty()) {
        throw std::runtime_error(file.origin() + ": rope scaling type '" + type + "' is not implemented for " + c.architecture_name +
                                 " (twinfer runs: linear, yarn, longrope)");
    }
}

// A TransformerModel architecture: its description with this file's hyper-parameters laid over it.
void read_transformer_spec(const gguf::File& file, ModelConfig& c) {
    const std::string p = c.architecture_name + ".";
    const ArchitectureDescription& d = *find_architecture(c.architecture_name);
    TransformerSpec& s = c.transformer;
    s.description = &d;
    s.norm = d.norm;
    s.feed_forward = d.feed_forward;
    s.rope = d.rope;
    s.post_norms = d.post_norms;
    s.qk_norm = d.qk_norm;
    s.residual = d.residual;
    if (d.residual_from_metadata && file.has(p + "use_parallel_residual"))
        s.residual = file.get_bool(p + "use_parallel_residual") ? ResidualKind::Parallel : ResidualKind::Sequential;
    c.norm_eps = file.get_float(p + (d.norm == NormKind::RMSNorm ? "attention.layer_norm_rms_epsilon" : "attention.layer_norm_epsilon"));
    if (file.has(p + "attention.value_length") &&
        file.get_uint(p + "attention.value_length") != static_cast<uint64_t>(c.head_dim))
        throw std::runtime_error(file.origin() + ": " + p + "attention.value_length differs from key_length (not implemented)");
    c.n_rot = file.has(p + "rope.dimension_count") ? positive_int(file.get_uint(p + "rope.dimension_count"), p + "rope.dimension_count")
                                                   : c.head_dim;
    c.rope_freq_base = file.float_or(p + "rope.freq_base", 10000.0);
    c.rope_layout = d.rope == RopeKind::Normal ? RopeLayout::Normal : RopeLayout::NeoX;
    read_gguf_rope_scaling(file, c);
    const double position_scale = c.rope_scaling.kind == RopeScaling::Kind::Linear ? 1.0 / c.rope_scaling.factor : 1.0;
    s.embedding_scale = d.embedding_scale ? std::sqrt(double(c.n_embd)) : 1.0;
    s.attention_scale = 1.0 / std::sqrt(double(c.head_dim));
    s.final_logit_softcap = file.float_or(p + "final_logit_softcapping", 0.0);
    if (s.final_logit_softcap < 0) throw std::runtime_error(file.origin() + ": negative final_logit_softcapping");

    // Which layers slide: an explicit per-layer pattern, a group size, or the description's group.
    const uint64_t window = file.has(p + "attention.sliding_window") ? file.get_uint(p + "attention.sliding_window") : 0;
    if (window > (1u << 30)) throw std::runtime_error(file.origin() + ": " + p + "attention.sliding_window is out of range");
    std::vector<bool> sliding(c.n_layer, false);
    if (window > 0) {
        const std::string key = p + "attention.sliding_window_pattern";
        const gguf::Value* pattern = file.find(key);
        if (pattern && pattern->type() == gguf::ValueType::ARRAY) {
            const gguf::Array& flags = file.get_array(key);
            if (flags.element_type() != gguf::ValueType::BOOL || flags.size() != static_cast<size_t>(c.n_layer))
                throw std::runtime_error(file.origin() + ": " + key + " must hold one bool per layer (" +
                                         std::to_string(c.n_layer) + ")");
            for (int il = 0; il < c.n_layer; ++il) sliding[il] = std::get<bool>(flags.at(il).v);
        } else {
            const uint64_t group = pattern ? file.get_uint(key) : static_cast<uint64_t>(d.swa_group);
            for (int il = 0; il < c.n_layer; ++il) sliding[il] = group == 0 || uint64_t(il) % group < group - 1;
        }
    }
    const double local_base = file.float_or(p + "rope.freq_base_swa", d.swa_rope_scaled ? c.rope_freq_base : 10000.0);
    for (int il = 0; il < c.n_layer; ++il) {
        LayerSpec& layer = s.layers.emplace_back();
        layer.window = sliding[il] ? window : 0;
        layer.rope = d.no_rope_interval == 0 || (il + 1) % d.no_rope_interval != 0;
        // A group's local layers take rope.freq_base_swa; unless the description says otherwise,
        // they keep the short-context RoPE (no scaling), as llama.cpp.
        const bool local = sliding[il] && d.swa_group;
        layer.rope_freq_base = local ? local_base : c.rope_freq_base;
        layer.rope_position_scale = local && !d.swa_rope_scaled ? 1.0 : position_scale;
        layer.rope_scaled = !local || d.swa_rope_scaled;
    }
    if (d.mixture_of_experts) {
        auto count = [&](const std::string& key) { return positive_int(file.get_uint(p + key), p + key); };
        s.n_expert = count("expert_count");
        s.n_expert_used = count("expert_used_count");
        s.n_ff_expert = count("expert_feed_forward_length");
        if (s.n_expert_used > s.n_expert)
            throw std::runtime_error(file.origin() + ": " + p + "expert_used_count exceeds expert_count");
        if (file.has(p + "expert_weights_norm")) s.normalize_expert_weights = file.get_bool(p + "expert_weights_norm");
    }
}

}  // namespace

RopeFrequencyScaling rope_frequency_scaling(const ModelConfig& c, size_t n_ctx) {
    const RopeScaling& s = c.rope_scaling;
    RopeFrequencyScaling r;
    if (s.kind == RopeScaling::Kind::LongRope) {
        r.divisors = n_ctx > static_cast<size_t>(s.original_context) ? s.long_factors : s.short_factors;
        r.magnitude = s.attn_factor;
    } else if (s.kind == RopeScaling::Kind::Yarn) {
        // YaRN (Peng et al. 2023; ggml_rope_yarn_corr_dims and rope_yarn, HF _compute_yarn_parameters
        // with truncate): the pair that turns `rotations` times over the original context sits at
        // dimension n_rot ln(original / (2 pi rotations)) / (2 ln base). Pairs below beta_fast's
        // (rounded down, unless !truncate) keep their frequency, pairs above beta_slow's (rounded
        // up) are divided by factor, and a linear ramp blends the two in between.
        const double n_rot = c.n_rot;
        auto dimension = [&](double rotations) {
            return n_rot * std::log(s.original_context / (rotations * 2 * std::numbers::pi)) / (2 * std::log(c.rope_freq_base));
        };
        const double fast = dimension(s.beta_fast), slow = dimension(s.beta_slow);
        const double low = std::max(0.0, s.truncate ? std::floor(fast) : fast);
        const double high = std::min(n_rot - 1, s.truncate ? std::ceil(slow) : slow);
        r.divisors.resize(static_cast<size_t>(c.n_rot / 2));
        for (size_t i = 0; i < r.divisors.size(); ++i) {
            const double extrapolate = 1 - std::clamp((double(i) - low) / std::max(0.001, high - low), 0.0, 1.0);
            r.divisors[i] = 1 / ((1 - extrapolate) / s.factor + extrapolate);
        }
        r.magnitude = s.attn_factor;
    }
    return r;
}

ModelConfig ModelConfig::from_gguf(const gguf::File& file) {
    ModelConfig c;
    c.architecture_name = file.architecture();
    c.architecture = architecture_from_name(c.architecture_name, file.origin());
    const std::string p = c.architecture_name + ".";
    auto uint_key = [&](const std::string& key) { return positive_int(file.get_uint(p + key), p + key); };

    c.n_layer = uint_key("block_count");
    // A block_count the tensors do not back is refused before anything is sized by it (a hostile
    // file's 2^30 layers would otherwise be allocated first and fail later). Files without tensors
    // (vocabulary-only) have nothing to check.
    if (!file.tensors().empty()) {
        uint64_t layers_present = 0;   // one past the highest blk.N of the tensors
        for (const gguf::TensorInfo& t : file.tensors()) {
            if (!t.name.starts_with("blk.")) continue;
            uint64_t n = 0;
            size_t i = 4;
            for (; i < t.name.size() && i < 14 && std::isdigit(static_cast<unsigned char>(t.name[i])); ++i) n = n * 10 + (t.name[i] - '0');
            if (i > 4 && i < t.name.size() && t.name[i] == '.') layers_present = std::max(layers_present, n + 1);
        }
        if (static_cast<uint64_t>(c.n_layer) > layers_present)
            throw gguf::FormatError(file.origin() + ": " + p + "block_count is " + std::to_string(c.n_layer) + " but tensor blk." +
                                    std::to_string(layers_present) + ".attn_norm.weight is missing (the file's layers end at " +
                                    std::to_string(layers_present) + ")");
    }
    c.n_embd = uint_key("embedding_length");
    c.n_ff = uint_key("feed_forward_length");
    c.n_head = uint_key("attention.head_count");
    c.n_head_kv = file.has(p + "attention.head_count_kv") ? uint_key("attention.head_count_kv") : c.n_head;
    c.n_ctx_train = uint_key("context_length");
    c.head_dim = file.has(p + "attention.key_length") ? uint_key("attention.key_length") : c.n_embd / c.n_head;

    if (file.has("tokenizer.ggml.tokens")) c.n_vocab = positive_int(file.get_array("tokenizer.ggml.tokens").size(), "vocabulary size");
    else if (file.has(p + "vocab_size")) c.n_vocab = uint_key("vocab_size");
    else if (const auto* emb = file.find_tensor("token_embd.weight"); emb && emb->dims.size() == 2) c.n_vocab = positive_int(emb->dims[1], "token_embd.weight rows");
    else throw gguf::FormatError(file.origin() + ": cannot tell the vocabulary size (no tokenizer.ggml.tokens, " + p + "vocab_size or token_embd.weight)");

    if (c.architecture == Architecture::Llama) {
        c.norm_eps = file.get_float(p + "attention.layer_norm_rms_epsilon");
        c.n_rot = file.has(p + "rope.dimension_count") ? uint_key("rope.dimension_count") : c.head_dim;
        c.rope_freq_base = file.float_or(p + "rope.freq_base", 10000.0);
        c.rope_layout = RopeLayout::Normal;
        const std::string scaling = file.string_or(p + "rope.scaling.type").value_or("none");
        if (scaling == "linear") {
            c.rope_scaling.kind = RopeScaling::Kind::Linear;
            c.rope_scaling.factor = file.get_float(p + "rope.scaling.factor");
        } else if (scaling != "none" && scaling != "") {
            // Llama-3 frequency scaling arrives in GGUF as the rope_freqs.weight tensor, read by
            // the models; YaRN and LongRoPE run on TransformerModel's architectures only.
            throw std::runtime_error(file.origin() + ": rope scaling type '" + scaling +
                                     "' is not implemented for the llama architecture (it runs linear scaling and "
                                     "rope_freqs.weight; yarn and longrope run on " + transformer_architecture_names() + ")");
        } else if (file.has(p + "rope.scaling.factor") && file.get_float(p + "rope.scaling.factor") != 1.0) {
            c.rope_scaling.kind = RopeScaling::Kind::Linear;
            c.rope_scaling.factor = file.get_float(p + "rope.scaling.factor");
        }
    } else if (c.architecture == Architecture::Transformer) {
        read_transformer_spec(file, c);
    } else {
        c.norm_eps = file.get_float(p + "attention.layer_norm_epsilon");
    }
    c.validate();
    return c;
}

ModelConfig ModelConfig::from_hf_config(const nlohmann::json& config) {
    if (!config.is_object()) throw std::runtime_error("config.json: not a JSON object");
    ModelConfig c;
    c.architecture_name = hf_string_or(config, "model_type", "");
    c.architecture = architecture_from_name(c.architecture_name, "config.json model_type");
    c.n_vocab = hf_int(config, "vocab_size");
    if (c.architecture == Architecture::GPT2) {
        // GPT2Config; "n_ctx" is the older spelling of n_positions, n_inner null means 4 x n_embd.
        const std::string activation = hf_string_or(config, "activation_function", "gelu_new");
        if (activation != "gelu_new" && activation != "gelu_pytorch_tanh")
            throw std::runtime_error("config.json: GPT-2 activation_function '" + activation + "' is not the tanh GELU twinfer implements");
        c.n_embd = hf_int(config, "n_embd");
        c.n_layer = hf_int(config, "n_layer");
        c.n_head = hf_int(config, "n_head");
        c.n_head_kv = c.n_head;
        c.n_ctx_train = config.contains("n_positions") ? hf_int(config, "n_positions") : hf_int(config, "n_ctx");
        c.n_ff = hf_int_or(config, "n_inner", positive_int(4 * uint64_t(c.n_embd), "config.json 4 x n_embd (n_inner)"));
        c.head_dim = c.n_embd / c.n_head;
        c.norm_eps = hf_float_or(config, "layer_norm_epsilon", 1e-5);
    } else {
        const std::string activation = hf_string_or(config, "hidden_act", "silu");
        if (activation != "silu") throw std::runtime_error("config.json: Llama hidden_act '" + activation + "' is not the silu twinfer implements");
        c.n_embd = hf_int(config, "hidden_size");
        c.n_layer = hf_int(config, "num_hidden_layers");
        c.n_head = hf_int(config, "num_attention_heads");
        c.n_head_kv = hf_int_or(config, "num_key_value_heads", c.n_head);
        c.n_ff = hf_int(config, "intermediate_size");
        c.n_ctx_train = hf_int(config, "max_position_embeddings");
        c.head_dim = hf_int_or(config, "head_dim", c.n_embd / c.n_head);
        c.n_rot = c.head_dim;
        c.norm_eps = hf_float(config, "rms_norm_eps");
        c.rope_layout = RopeLayout::NeoX;
        read_hf_rope(config, c);
    }
    c.validate();
    return c;
}

void ModelConfig::validate() const {
    auto check = [](bool ok, const std::string& what) {
        if (!ok) throw std::runtime_error("inconsistent model hyper-parameters: " + what);
    };
    check(n_head > 0 && n_head_kv > 0, "head counts must be positive");
    check(n_head % n_head_kv == 0, "head_count " + std::to_string(n_head) + " is not a multiple of head_count_kv " + std::to_string(n_head_kv));
    check(head_dim > 0, "head dimension must be positive");
    check(architecture != Architecture::GPT2 || head_dim * n_head == n_embd,
          "GPT-2 needs embedding_length = head_count x head_dim");
    check(architecture == Architecture::GPT2 || (n_rot > 0 && n_rot <= head_dim && n_rot % 2 == 0),
          "rope dimension count " + std::to_string(n_rot) + " must be even and at most the head dimension " + std::to_string(head_dim));
    check(norm_eps > 0, "norm epsilon must be positive");
    check(rope_scaling.factor > 0, "rope scaling factor must be positive");
}

}  // namespace twinfer
