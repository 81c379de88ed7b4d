// Filling a Vocabulary from the three places vocabularies come from: GGUF metadata (as llama.cpp's
// llama_vocab::impl::load reads it), Hugging Face tokenizer.json, and GPT-2's encoder.json +
// vocab.bpe.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/vocabulary.hpp"

namespace twinfer {

using namespace tokenizer_detail;

namespace {

void add_merge(Vocabulary& v, const std::string& line, int32_t rank) {
    // llama.cpp splits at the first space after the first byte; it keeps the first rank of a pair.
    const size_t space = line.find(' ', 1);
    if (space == std::string::npos) return;
    v.merge_ranks.try_emplace(line, rank);
}

void use_pre_tokenizer(Vocabulary& v, const std::string& pre) {
    v.pre = pre_tokenizer_spec(pre);
    v.pre_tokenizer.emplace(v.pre);
    v.add_bos = v.pre.default_add_bos;
}

std::string read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw TokenizerError("cannot open " + path.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
    try {
        return nlohmann::json::parse(read_text_file(path));
    } catch (const nlohmann::json::exception& e) {
        throw TokenizerError(path.string() + ": " + e.what());
    }
}

void set_tokens_from_map(Vocabulary& v, const nlohmann::json& token_to_id, const std::string& origin) {
    if (!token_to_id.is_object()) throw TokenizerError(origin + ": vocabulary is not a JSON object");
    for (const auto& [text, id_json] : token_to_id.items()) {
        const auto id = id_json.get<int64_t>();
        if (id < 0 || id > 10'000'000) throw TokenizerError(origin + ": token id " + std::to_string(id) + " out of range");
        if (static_cast<size_t>(id) >= v.tokens.size()) v.tokens.resize(id + 1, TokenData{"", 0.0f, ATTR_UNDEFINED});
        v.tokens[id] = TokenData{text, 0.0f, ATTR_NORMAL};
    }
}

// The pre-tokenizers tokenizer.json files carry, mapped to the llama.cpp `pre` names whose
// regexes reproduce them.
std::string pre_name_from_hf(const nlohmann::json& pre, const std::string& origin) {
    static const std::string llama3 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    static const std::string qwen2 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    auto is_byte_level = [](const nlohmann::json& p, bool use_regex) {
        return p.value("type", "") == "ByteLevel" && p.value("use_regex", true) == use_regex;
    };
    if (is_byte_level(pre, true)) return "gpt-2";
    if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
        const auto& first = pre["pretokenizers"][0];
        const auto& second = pre["pretokenizers"][1];
        if (first.value("type", "") == "Split" && first.contains("pattern") && first["pattern"].contains("Regex") &&
            is_byte_level(second, false)) {
            const auto regex = first["pattern"]["Regex"].get<std::string>();
            if (regex == llama3) return "llama-bpe";
            if (regex == qwen2) return "qwen2";
        }
        if (first.value("type", "") == "Digits" && first.value("individual_digits", false) && is_byte_level(second, true))
            return "smollm";
    }
    throw TokenizerError(origin + ": pre-tokenizer not supported: " + pre.dump());
}

std::optional<std::string> special_token_text(const nlohmann::json& config, const char* key) {
    if (!config.contains(key)) return std::nullopt;
    const auto& value = config[key];
    if (value.is_string()) return value.get<std::string>();
    if (value.is_object() && value.contains("content")) return value["content"].get<std::string>();
    return std::nullopt;
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const gguf::File& file) {
    auto v = std::make_shared<Vocabulary>();
    const auto model = file.string_or("tokenizer.ggml.model");
    if (!model) throw TokenizerError(file.origin() + ": no tokenizer (tokenizer.ggml.model missing)");
    v->model_name = *model;
    const auto texts = file.get_string_array("tokenizer.ggml.tokens");
    const size_t n = texts.size();
    std::vector<float> scores;
    if (file.has("tokenizer.ggml.scores")) scores = file.get_float_array("tokenizer.ggml.scores");
    std::vector<int64_t> types;
    if (file.has("tokenizer.ggml.token_type")) types = file.get_int_array("tokenizer.ggml.token_type");
    if ((!scores.empty() && scores.size() != n) || (!types.empty() && types.size() != n))
        throw TokenizerError(file.origin() + ": tokenizer.ggml.scores/token_type do not match the " +
                             std::to_string(n) + " tokens");
    v->tokens.resize(n);
    for (size_t i = 0; i < n; ++i)
        v->tokens[i] = TokenData{texts[i], scores.empty() ? 0.0f : scores[i],
                                 types.empty() ? ATTR_NORMAL : attr_from_type(types[i])};

    if (*model == "llama") {
        v->model = ModelKind::SentencePiece;
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_bos = true;
        v->add_space_prefix = file.bool_or("tokenizer.ggml.add_space_prefix", true);
    } else if (*model == "gpt2" || *model == "gemma4") {
        v->model = ModelKind::BytePairGpt2;
        // llama.cpp takes a missing `pre` as "default" (with a warning); an unknown one is an
        // error. Gemma 4's model name implies its pre-tokenizer, whatever the file says.
        std::string pre = *model == "gemma4" ? "gemma4" : file.string_or("tokenizer.ggml.pre").value_or("default");
        use_pre_tokenizer(*v, pre.empty() ? "default" : pre);
        if (file.has("tokenizer.ggml.merges")) {
            const auto merges = file.get_string_array("tokenizer.ggml.merges");
            v->merge_ranks.reserve(merges.size());
            for (size_t i = 0; i < merges.size(); ++i) add_merge(*v, merges[i], static_cast<int32_t>(i));
        } else if (!v->pre.merges_optional) {
            throw TokenizerError(file.origin() + ": BPE vocabulary without tokenizer.ggml.merges");
        }
    } else {
        throw TokenizerError(file.origin() + ": tokenizer model '" + *model +
                             "' not supported (tokenizer.ggml.model: llama, gpt2 or gemma4)");
    }

    const std::pair<const char*, std::optional<Token>*> ids[] = {
        {"tokenizer.ggml.bos_token_id", &v->bos},         {"tokenizer.ggml.eos_token_id", &v->eos},
        {"tokenizer.ggml.eot_token_id", &v->eot},         {"tokenizer.ggml.eom_token_id", &v->eom},
        {"tokenizer.ggml.unknown_token_id", &v->unk},     {"tokenizer.ggml.padding_token_id", &v->pad},
        {"tokenizer.ggml.fim_pre_token_id", &v->fim_pre}, {"tokenizer.ggml.fim_suf_token_id", &v->fim_suf},
        {"tokenizer.ggml.fim_mid_token_id", &v->fim_mid}, {"tokenizer.ggml.fim_pad_token_id", &v->fim_pad},
        {"tokenizer.ggml.fim_rep_token_id", &v->fim_rep}, {"tokenizer.ggml.fim_sep_token_id", &v->fim_sep},
        // llama.cpp still reads the older names of the first three, after the new ones.
        {"tokenizer.ggml.prefix_token_id", &v->fim_pre}, {"tokenizer.ggml.suffix_token_id", &v->fim_suf},
        {"tokenizer.ggml.middle_token_id", &v->fim_mid},
    };
    for (const auto& [key, id] : ids) {
        if (!file.has(key)) continue;
        const uint64_t value = file.get_uint(key);
        if (value < n) *id = static_cast<Token>(value);  // llama.cpp keeps its default for a bad id
    }
    v->add_bos = file.bool_or("tokenizer.ggml.add_bos_token", v->add_bos) || v->pre.always_add_bos;
    v->add_eos = file.bool_or("tokenizer.ggml.add_eos_token", v->add_eos);
    finish(*v);
    return Tokenizer(std::move(v));
}

Tokenizer Tokenizer::from_gpt2_files(const std::filesystem::path& encoder_json, const std::filesystem::path& vocab_bpe) {
    auto v = std::make_shared<Vocabulary>();
    v->model = ModelKind::BytePairGpt2;
    v->model_name = "gpt2";
    set_tokens_from_map(*v, read_json(encoder_json), encoder_json.string());
    std::istringstream merges(read_text_file(vocab_bpe));
    std::string line;
    int32_t rank = 0;
    while (std::getline(merges, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || line.starts_with("#version")) continue;
        add_merge(*v, line, rank++);
    }
    use_pre_tokenizer(*v, "gpt-2");
    v->add_bos = false;
    finish(*v);
    if (auto end = v->find("<|endoftext|>")) {
        v->tokens[*end].attr = ATTR_CONTROL;
        v->bos = v->eos = *end;
        finish(*v);
    }
    return Tokenizer(std::move(v));
}

Tokenizer Tokenizer::from_hf_tokenizer_json(const std::filesystem::path& tokenizer_json) {
    const std::string origin = tokenizer_json.string();
    const auto j = read_json(tokenizer_json);
    if (!j.contains("model") || j["model"].value("type", "") != "BPE")
        throw TokenizerError(origin + ": only BPE models are supported");
    const auto& model = j["model"];
    if (model.value("byte_fallback", false))
        throw TokenizerError(origin + ": SentencePiece-style BPE (byte_fallback) is not supported; convert to GGUF");
    auto v = std::make_shared<Vocabulary>();
    v->model = ModelKind::BytePairGpt2;
    v->model_name = "gpt2";
    set_tokens_from_map(*v, model["vocab"], origin);
    int32_t rank = 0;
    for (const auto& merge : model["merges"]) {
        if (merge.is_string()) add_merge(*v, merge.get<std::string>(), rank++);
        else if (merge.is_array() && merge.size() == 2)
            add_merge(*v, merge[0].get<std::string>() + " " + merge[1].get<std::string>(), rank++);
        else throw TokenizerError(origin + ": malformed merge " + merge.dump());
    }
    if (j.contains("added_tokens")) {
        for (const auto& added : j["added_tokens"]) {
            const auto id = added.at("id").get<int64_t>();
            if (id < 0 || id > 10'000'000) throw TokenizerError(origin + ": added token id out of range");
            if (static_cast<size_t>(id) >= v->tokens.size()) v->tokens.resize(id + 1, TokenData{"", 0.0f, ATTR_UNDEFINED});
            uint32_t attr = added.value("special", false) ? ATTR_CONTROL : ATTR_USER_DEFINED;
            if (added.value("lstrip", false)) attr |= ATTR_LSTRIP;
            if (added.value("rstrip", false)) attr |= ATTR_RSTRIP;
            v->tokens[id] = TokenData{added.at("content").get<std::string>(), 0.0f, attr};
        }
    }
    if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
        throw TokenizerError(origin + ": no pre_tokenizer");
    use_pre_tokenizer(*v, pre_name_from_hf(j["pre_tokenizer"], origin));
    finish(*v);

    // Which tokens are BOS/EOS, and whether to add them, is in tokenizer_config.json beside it.
    const auto config_path = tokenizer_json.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
        const auto config = read_json(config_path);
        if (auto text = special_token_text(config, "bos_token")) v->bos = v->find(*text);
        if (auto text = special_token_text(config, "eos_token")) v->eos = v->find(*text);
        if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) v->add_bos = config["add_bos_token"];
        if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) v->add_eos = config["add_eos_token"];
        finish(*v);
    }
    return Tokenizer(std::move(v));
}

}  // namespace twinfer
