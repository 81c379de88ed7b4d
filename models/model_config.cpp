#include "models/model_config.hpp"

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace twinfer {
namespace {

Architecture architecture_from_name(const std::string& name, const std::string& origin) {
    if (name == "llama") return Architecture::Llama;
    if (name == "gpt2") return Architecture::GPT2;
    throw std::runtime_error(origin + ": unknown architecture '" + name +
                             "' (twinfer runs: llama, gpt2)");
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

}  // namespace

ModelConfig ModelConfig::from_gguf(const gguf::File& file) {
    ModelConfig c;
    c.architecture_name = file.architecture();
    c.architecture = architecture_from_name(c.architecture_name, file.origin());
    const std::string p = c.architecture_name + ".";
    auto uint_key = [&](const std::string& key) { return positive_int(file.get_uint(p + key), p + key); };

    c.n_layer = uint_key("block_count");
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
            // the models; a metadata scaling type other than linear is not implemented.
            throw std::runtime_error(file.origin() + ": unsupported rope scaling type '" + scaling + "'");
        } else if (file.has(p + "rope.scaling.factor") && file.get_float(p + "rope.scaling.factor") != 1.0) {
            c.rope_scaling.kind = RopeScaling::Kind::Linear;
            c.rope_scaling.factor = file.get_float(p + "rope.scaling.factor");
        }
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
    check(architecture != Architecture::Llama || (n_rot > 0 && n_rot <= head_dim && n_rot % 2 == 0),
          "rope dimension count " + std::to_string(n_rot) + " must be even and at most the head dimension " + std::to_string(head_dim));
    check(norm_eps > 0, "norm epsilon must be positive");
    check(rope_scaling.factor > 0, "rope scaling factor must be positive");
}

}  // namespace twinfer
