#include "tokenizer/tokenizer.hpp"

#include <algorithm>
#include <cctype>

#include "tokenizer/utf8.hpp"
#include "tokenizer/vocabulary.hpp"

namespace twinfer {

using namespace tokenizer_detail;

namespace {

// A run of the input: raw text still to tokenize, or a special token already found in it.
struct Fragment {
    std::optional<Token> token;
    size_t begin = 0, size = 0;
};

// llama.cpp's tokenizer_st_partition: each special token, longest text first, is cut out of the
// raw fragments left by the ones before it. Without parse_special, CONTROL and UNKNOWN tokens
// stay text, USER_DEFINED ones are still cut out (as Hugging Face does).
std::vector<Fragment> partition(const Vocabulary& v, std::string_view text, bool parse_special) {
    std::vector<Fragment> fragments;
    if (text.empty()) return fragments;
    fragments.push_back({std::nullopt, 0, text.size()});
    std::vector<Fragment> next;
    for (const Token id : v.special_tokens) {
        const TokenData& special = v.tokens[id];
        if (!parse_special && (special.attr & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
        const std::string_view needle = special.text;
        next.clear();
        for (const Fragment& fragment : fragments) {
            if (fragment.token) {
                next.push_back(fragment);
                continue;
            }
            size_t begin = fragment.begin, size = fragment.size;
            while (size > 0) {
                const size_t match = text.substr(0, begin + size).find(needle, begin);
                if (match == std::string_view::npos) {
                    next.push_back({std::nullopt, begin, size});
                    break;
                }
                size_t left = match - begin;
                if (special.attr & ATTR_LSTRIP)
                    while (left > 0 && std::isspace(static_cast<unsigned char>(text[begin + left - 1]))) --left;
                if (left > 0) next.push_back({std::nullopt, begin, left});
                next.push_back({id, match, needle.size()});
                size_t right_begin = match + needle.size();
                size_t right = begin + size - right_begin;
                if (special.attr & ATTR_RSTRIP)
                    while (right > 0 && std::isspace(static_cast<unsigned char>(text[right_begin]))) {
                        ++right_begin;
                        --right;
                    }
                begin = right_begin;
                size = right;
            }
        }
        fragments.swap(next);
    }
    return fragments;
}

Token required(const std::optional<Token>& id, const char* what) {
    if (!id) throw TokenizerError(std::string("the vocabulary asks to add ") + what + " but defines no " + what + " token");
    return *id;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Vocabulary> vocabulary) : vocabulary_(std::move(vocabulary)) {}

std::vector<Token> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    const Vocabulary& v = *vocabulary_;
    std::vector<Token> output;
    const auto fragments = partition(v, text, parse_special);
    if (add_special && v.add_bos) output.push_back(required(v.bos, "BOS"));
    if (v.model == ModelKind::SentencePiece) {
        // A space goes before the first raw text and before any text that follows a special token.
        bool previous_is_special = true;
        std::string escaped;
        for (const Fragment& fragment : fragments) {
            if (fragment.token) {
                output.push_back(*fragment.token);
                previous_is_special = true;
                continue;
            }
            escaped.clear();
            append_escaped_spaces(escaped, v.add_space_prefix && previous_is_special ? " " : "");
            append_escaped_spaces(escaped, text.substr(fragment.begin, fragment.size));
            encode_spm_fragment(v, escaped, output);
            previous_is_special = false;
        }
    } else {
        std::string escaped;
        for (const Fragment& fragment : fragments) {
            const std::string_view raw = text.substr(fragment.begin, fragment.size);
            if (fragment.token) {
                output.push_back(*fragment.token);
            } else if (v.pre.escape_spaces) {
                escaped.clear();
                append_escaped_spaces(escaped, raw);
                encode_bpe_fragment(v, escaped, output);
            } else {
                encode_bpe_fragment(v, raw, output);
            }
        }
    }
    if (add_special && v.add_eos) output.push_back(required(v.eos, "EOS"));
    return output;
}

std::string Tokenizer::token_to_piece(Token t) const {
    const Vocabulary& v = *vocabulary_;
    token_text(t);  // throws for an id outside the vocabulary
    const TokenData& token = v.tokens[t];
    if (token.attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED)) return token.text;
    // SentencePiece, and BPE over raw UTF-8 (Gemma 4): "▁" is a space, <0xNN> a byte.
    if (v.model == ModelKind::SentencePiece || !v.pre.byte_level) {
        if (token.attr & ATTR_NORMAL) {
            std::string piece;
            std::string_view rest = token.text;
            for (size_t pos; (pos = rest.find("\xE2\x96\x81")) != std::string_view::npos; rest.remove_prefix(pos + 3)) {
                piece.append(rest.substr(0, pos));
                piece.push_back(' ');
            }
            piece.append(rest);
            return piece;
        }
        // Two hex digits, checked here: std::stoi threw std::invalid_argument on "<0xZZ>" and read
        // "<0x1G>" or "<0x+1>" as byte 1. A byte token of any other text decodes to nothing.
        const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
        if ((token.attr & ATTR_BYTE) && token.text.size() == 6 && token.text.starts_with("<0x") && token.text[5] == '>' &&
            hex(token.text[3]) && hex(token.text[4]))
            return std::string(1, static_cast<char>(std::stoi(token.text.substr(3, 2), nullptr, 16)));
        return {};
    }
    if (!(token.attr & ATTR_NORMAL)) return {};
    std::string piece;
    for (uint32_t cp : lenient_code_points(token.text)) {
        if (auto byte = unicode_to_byte(cp)) piece.push_back(static_cast<char>(*byte));
        else append_utf8(piece, cp);  // not a mapped byte: keep the character itself
    }
    return piece;
}

std::string Tokenizer::decode(std::span<const Token> tokens) const {
    std::string bytes;
    for (size_t i = 0; i < tokens.size(); ++i) {
        std::string piece = token_to_piece(tokens[i]);
        // llama.cpp's detokenize removes the space its SentencePiece encoder put first.
        if (i == 0 && vocabulary_->add_space_prefix && vocabulary_->model == ModelKind::SentencePiece &&
            piece.starts_with(' '))
            piece.erase(0, 1);
        bytes += piece;
    }
    std::string text;
    append_valid_utf8(bytes, text, true);
    return text;
}

const std::string& Tokenizer::token_text(Token t) const {
    if (t < 0 || static_cast<size_t>(t) >= vocabulary_->tokens.size())
        throw TokenizerError("token id " + std::to_string(t) + " outside the vocabulary of " +
                             std::to_string(vocabulary_->tokens.size()));
    return vocabulary_->tokens[t].text;
}

std::optional<Token> Tokenizer::find_token(std::string_view text) const { return vocabulary_->find(text); }
size_t Tokenizer::n_vocab() const { return vocabulary_->tokens.size(); }
std::optional<Token> Tokenizer::bos() const { return vocabulary_->bos; }
std::optional<Token> Tokenizer::eos() const { return vocabulary_->eos; }
bool Tokenizer::add_bos() const { return vocabulary_->add_bos; }
bool Tokenizer::add_eos() const { return vocabulary_->add_eos; }

bool Tokenizer::is_end_of_generation(Token t) const {
    const auto& eog = vocabulary_->end_of_generation;
    return std::binary_search(eog.begin(), eog.end(), t);
}
const std::vector<Token>& Tokenizer::end_of_generation_tokens() const { return vocabulary_->end_of_generation; }

bool Tokenizer::is_control(Token t) const {
    if (t < 0 || static_cast<size_t>(t) >= vocabulary_->tokens.size())
        throw TokenizerError("token id " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(vocabulary_->tokens.size()));
    return (vocabulary_->tokens[size_t(t)].attr & tokenizer_detail::ATTR_CONTROL) != 0;
}

std::string Tokenizer::kind() const {
    if (vocabulary_->model == ModelKind::SentencePiece) return vocabulary_->model_name + " (spm)";
    return vocabulary_->model_name + " (" + vocabulary_->pre.name + ")";
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

std::string StreamDecoder::push(Token token) {
    pending_ += tokenizer_->token_to_piece(token);
    std::string out;
    pending_.erase(0, append_valid_utf8(pending_, out, false));
    return out;
}

std::string StreamDecoder::flush() {
    std::string out;
    append_valid_utf8(pending_, out, true);
    pending_.clear();
    return out;
}

}  // namespace twinfer
