#pragma once
// The tables behind a Tokenizer (internal to tokenizer/): what the loaders fill in and the
// encoders read. Mirrors llama.cpp's llama_vocab closely enough to follow its code line by line.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenizer.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer::tokenizer_detail {

// llama.cpp's llama_token_attr bits.
enum TokenAttr : uint32_t {
    ATTR_UNDEFINED = 0,
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
    ATTR_LSTRIP = 1 << 7,
    ATTR_RSTRIP = 1 << 8,
};

// GGUF's tokenizer.ggml.token_type values.
enum TokenType : int64_t { TYPE_UNDEFINED = 0, TYPE_NORMAL = 1, TYPE_UNKNOWN = 2, TYPE_CONTROL = 3,
                           TYPE_USER_DEFINED = 4, TYPE_UNUSED = 5, TYPE_BYTE = 6 };
uint32_t attr_from_type(int64_t type);

struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct TokenData {
    std::string text;
    float score = 0.0f;
    uint32_t attr = ATTR_NORMAL;
};

enum class ModelKind { BytePairGpt2, SentencePiece };

struct Vocabulary {
    ModelKind model = ModelKind::BytePairGpt2;
    std::string model_name;  // "gpt2", "llama", "gemma4"
    std::vector<TokenData> tokens;

    // Byte-level BPE.
    StringMap<int32_t> merge_ranks;  // "left right" -> rank (first occurrence wins)
    PreTokenizerSpec pre;            // its name and flags; the regexes compiled in pre_tokenizer
    std::optional<PreTokenizer> pre_tokenizer;

    // SentencePiece.
    bool add_space_prefix = false;

    bool add_bos = false, add_eos = false;
    std::optional<Token> bos, eos, eot, eom, unk, pad, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;

    // Derived by finish().
    StringMap<Token> token_to_id;               // last id wins for duplicate texts, as llama.cpp
    std::vector<Token> special_tokens;          // CONTROL/USER_DEFINED/UNKNOWN, longest text first
    std::vector<Token> end_of_generation;       // sorted
    std::array<std::optional<Token>, 256> byte_tokens{};  // SPM <0xNN>

    std::optional<Token> find(std::string_view text) const {
        auto it = token_to_id.find(text);
        return it == token_to_id.end() ? std::nullopt : std::optional<Token>(it->second);
    }
    int32_t merge_rank(std::string_view left, std::string_view right, std::string& scratch) const;
};

// "<0xNN>": SentencePiece's name for the token of a byte.
std::string byte_token_name(uint8_t byte);

// Builds the derived tables and applies llama.cpp's load-time rules (end markers found by text
// become CONTROL, EOG set, special-token cache). Call once the loader has filled the rest.
void finish(Vocabulary& vocabulary);

// Encoders (encode.cpp). `output` is appended to.
void encode_bpe_fragment(const Vocabulary& v, std::string_view text, std::vector<Token>& output);
void encode_spm_fragment(const Vocabulary& v, std::string_view text, std::vector<Token>& output);

// SentencePiece's whitespace escape: `text` with every ' ' as U+2581, appended to `out`.
void append_escaped_spaces(std::string& out, std::string_view text);

}  // namespace twinfer::tokenizer_detail
