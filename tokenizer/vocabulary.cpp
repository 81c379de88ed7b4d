#include "tokenizer/vocabulary.hpp"

#include <algorithm>

namespace twinfer::tokenizer_detail {

namespace {

// Special tokens llama.cpp 0.3.36 finds by their text when the metadata names none
// (llama_vocab::impl::load): the first such token fills the slot and becomes CONTROL.
struct MarkerRule {
    std::optional<Token> Vocabulary::*slot;
    std::vector<std::string_view> texts;
};
const std::vector<MarkerRule>& marker_rules() {
    static const std::vector<MarkerRule> rules = {
        {&Vocabulary::eot,
         {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
          "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"}},
        {&Vocabulary::eom, {"<|eom_id|>"}},
        {&Vocabulary::fim_pre,
         {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
          "<|prefix|>"}},
        {&Vocabulary::fim_suf,
         {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
          "<|suffix|>"}},
        {&Vocabulary::fim_mid,
         {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
          "<|middle|>"}},
        {&Vocabulary::fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
        {&Vocabulary::fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
        {&Vocabulary::fim_sep, {"<|file_sep|>"}},
    };
    return rules;
}
// Texts that end generation whatever the ids in the metadata say (llama.cpp's special_eog_ids).
constexpr std::string_view kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
};
// gpt-oss's channel markers, which llama.cpp always renders as text (USER_DEFINED).
constexpr std::string_view kAlwaysRendered[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};

template <class List>
bool is_one_of(std::string_view text, const List& list) {
    return std::find(std::begin(list), std::end(list), text) != std::end(list);
}

}  // namespace

std::string byte_token_name(uint8_t byte) {
    static constexpr char hex[] = "0123456789ABCDEF";
    return {'<', '0', 'x', hex[byte >> 4], hex[byte & 15], '>'};
}

uint32_t attr_from_type(int64_t type) {
    switch (type) {
        case TYPE_UNKNOWN: return ATTR_UNKNOWN;
        case TYPE_UNUSED: return ATTR_UNUSED;
        case TYPE_NORMAL: return ATTR_NORMAL;
        case TYPE_CONTROL: return ATTR_CONTROL;
        case TYPE_USER_DEFINED: return ATTR_USER_DEFINED;
        case TYPE_BYTE: return ATTR_BYTE;
        default: return ATTR_UNDEFINED;
    }
}

void finish(Vocabulary& v) {
    const auto n = static_cast<Token>(v.tokens.size());
    if (n == 0) throw TokenizerError("vocabulary is empty");
    v.token_to_id.clear();
    v.token_to_id.reserve(v.tokens.size());
    for (Token id = 0; id < n; ++id) {
        auto& token = v.tokens[id];
        if (token.text.empty()) token.text = "[EMPTY_" + std::to_string(id) + "]";  // as llama.cpp
        v.token_to_id.insert_or_assign(token.text, id);
    }
    for (auto* id : {&v.bos, &v.eos, &v.eot, &v.eom, &v.unk, &v.pad, &v.fim_pad, &v.fim_rep, &v.fim_sep})
        if (*id && (**id < 0 || **id >= n)) id->reset();

    // Markers found by their text (llama.cpp scans a hash map; lowest id first is the
    // deterministic reading of that). A duplicate text counts once, for its last id.
    auto canonical = [&](Token id) { return v.token_to_id.at(v.tokens[id].text) == id; };
    for (const auto& rule : marker_rules()) {
        auto& slot = v.*rule.slot;
        for (Token id = 0; id < n && !slot; ++id) {
            if (!canonical(id) || !is_one_of(v.tokens[id].text, rule.texts)) continue;
            slot = id;
            v.tokens[id].attr |= ATTR_CONTROL;
        }
    }
    std::vector<Token> eog;
    for (const auto& id : {v.fim_pad, v.fim_rep, v.fim_sep})
        if (id) eog.push_back(*id);
    for (Token id = 0; id < n; ++id) {
        if (!canonical(id)) continue;
        auto& token = v.tokens[id];
        if (is_one_of(token.text, kEndOfGenerationTexts)) {
            eog.push_back(id);
            token.attr |= ATTR_CONTROL;
        }
        if (is_one_of(token.text, kAlwaysRendered)) token.attr = ATTR_USER_DEFINED;
    }
    for (const auto& id : {v.eos, v.eot, v.eom})
        if (id) eog.push_back(*id);
    auto eog_with_text = [&](std::string_view text) {
        return std::find_if(eog.begin(), eog.end(), [&](Token id) { return v.tokens[id].text == text; });
    };
    // Where <|return|> and <|call|> (gpt-oss) or <|calls|> and <|flush|> (Solar Open) end
    // generation, <|end|> does not and is text; where Gemma 4's <|tool_response> or PLaMo's
    // <|plamo:eos|> do, </s> is a normal token.
    const auto end_of_message = eog_with_text("<|end|>");
    const bool has_call = eog_with_text("<|call|>") != eog.end() || eog_with_text("<|calls|>") != eog.end();
    if (end_of_message != eog.end() && has_call &&
        (eog_with_text("<|return|>") != eog.end() || eog_with_text("<|flush|>") != eog.end())) {
        v.tokens[*end_of_message].attr = ATTR_USER_DEFINED;
        eog.erase(end_of_message);
    }
    const auto end_of_sentence = eog_with_text("</s>");
    if (end_of_sentence != eog.end() &&
        (eog_with_text("<|tool_response>") != eog.end() || eog_with_text("<|plamo:eos|>") != eog.end())) {
        v.tokens[*end_of_sentence].attr = ATTR_NORMAL;
        eog.erase(end_of_sentence);
    }
    std::sort(eog.begin(), eog.end());
    eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
    v.end_of_generation = std::move(eog);

    v.special_tokens.clear();
    for (Token id = 0; id < n; ++id)
        if (v.tokens[id].attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) v.special_tokens.push_back(id);
    std::stable_sort(v.special_tokens.begin(), v.special_tokens.end(),
                     [&](Token a, Token b) { return v.tokens[a].text.size() > v.tokens[b].text.size(); });

    // SentencePiece byte fallback: "<0xNN>", else the byte itself as a token (llama.cpp byte_to_token).
    for (int byte = 0; byte < 256; ++byte) {
        auto id = v.find(byte_token_name(static_cast<uint8_t>(byte)));
        if (!id) {
            const char raw = static_cast<char>(byte);
            id = v.find(std::string_view(&raw, 1));
        }
        v.byte_tokens[byte] = id;
    }
}

}  // namespace twinfer::tokenizer_detail
