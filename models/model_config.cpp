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

    if (file.has("tokenizer.ggml.tokens")) c.n_vocab = positive_int(file.get_array("tokenizer.ggml.tokens").items.size(), "vocabulary size");
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
