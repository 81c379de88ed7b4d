#include "tokenizer/vocabulary.hpp"

#include <algorithm>

namespace twinfer::tokenizer_detail {

namespace {

// Texts llama.cpp takes for an end-of-turn token when tokenizer.ggml.eot_token_id is absent.
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
    "<｜end▁of▁sentence｜>", "<end_of_utterance>",
};
// Texts that end generation whatever the ids in the metadata say (llama.cpp's special_eog_ids).
constexpr std::string_view kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
};

template <size_t N>
bool is_one_of(std::string_view text, const std::string_view (&list)[N]) {
    return std::find(std::begin(list), std::end(list), text) != std::end(list);
}

}  // namespace

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

    // End markers found by their text (llama.cpp scans a hash map; lowest id first is the
    // deterministic reading of that). They become CONTROL, as there.
    for (Token id = 0; id < n; ++id) {
        auto& token = v.tokens[id];
        if (v.token_to_id.at(token.text) != id) continue;  // a duplicate text: only the last counts
        if (!v.eot && is_one_of(token.text, kEndOfTurnTexts)) {
            v.eot = id;
            token.attr = ATTR_CONTROL;
        }
        if (!v.eom && token.text == "<|eom_id|>") {
            v.eom = id;
            token.attr = ATTR_CONTROL;
        }
    }
    std::vector<Token> eog;
    for (Token id = 0; id < n; ++id) {
        auto& token = v.tokens[id];
        if (v.token_to_id.at(token.text) == id && is_one_of(token.text, kEndOfGenerationTexts)) {
            eog.push_back(id);
            token.attr = ATTR_CONTROL;
        }
    }
    for (const auto& id : {v.fim_pad, v.fim_rep, v.fim_sep, v.eos, v.eot, v.eom})
        if (id) eog.push_back(*id);
    std::sort(eog.begin(), eog.end());
    eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
    v.end_of_generation = std::move(eog);

    v.special_tokens.clear();
    for (Token id = 0; id < n; ++id)
        if (v.tokens[id].attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) v.special_tokens.push_back(id);
    std::stable_sort(v.special_tokens.begin(), v.special_tokens.end(),
                     [&](Token a, Token b) { return v.tokens[a].text.size() > v.tokens[b].text.size(); });

    // SentencePiece byte fallback: "<0xNN>", else the byte itself as a token (llama.cpp byte_to_token).
    static constexpr char hex[] = "0123456789ABCDEF";
    for (int byte = 0; byte < 256; ++byte) {
        const char name[] = {'<', '0', 'x', hex[byte >> 4], hex[byte & 15], '>'};
        auto id = v.find(std::string_view(name, sizeof name));
        if (!id) {
            const char raw = static_cast<char>(byte);
            id = v.find(std::string_view(&raw, 1));
        }
        v.byte_tokens[byte] = id;
    }
}

}  // namespace twinfer::tokenizer_detail
