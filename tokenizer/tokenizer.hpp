#pragma once
// Tokenizers, exact against llama.cpp (src/llama-vocab.cpp, src/unicode.cpp):
//  - byte-level BPE (GPT-2 style; tokenizer.ggml.model = "gpt2"): text is split into words by the
//    pre-tokenizer regexes `tokenizer.ggml.pre` names (evaluated with PCRE2), each word's bytes are
//    mapped to printable code points, and merges are applied by rank;
//  - SentencePiece BPE (tokenizer.ggml.model = "llama"): spaces become "▁", a space is prefixed to
//    the text, adjacent pieces merge by score, pieces outside the vocabulary fall back to <0xNN>.
// Special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text before either runs.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "format/gguf.hpp"

namespace twinfer {

using Token = int32_t;  // same alias as models/inference.hpp

struct TokenizerError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace tokenizer_detail {
struct Vocabulary;
}

// Immutable vocabulary tables, built once and shared by copies; per-call scratch lives inside
// encode(), so one Tokenizer may be used from several threads.
class Tokenizer {
public:
    static Tokenizer from_gguf(const gguf::File& file);  // tokenizer.ggml.* keys
    static Tokenizer from_hf_tokenizer_json(const std::filesystem::path& tokenizer_json);
    static Tokenizer from_gpt2_files(const std::filesystem::path& encoder_json,
                                     const std::filesystem::path& vocab_bpe);

    // add_special: BOS/EOS as the vocabulary's add_bos/add_eos flags say. parse_special: control
    // tokens written in the text (e.g. "<|im_start|>") become their ids instead of being split.
    std::vector<Token> encode(std::string_view text, bool add_special, bool parse_special) const;

    // The bytes this token stands for (SPM: "▁" -> " ", <0xNN> -> the byte; byte-level BPE: the
    // bytes behind the mapped code points). Control and user-defined tokens give their text;
    // unused/undefined tokens give "". Throws TokenizerError for an id outside the vocabulary.
    std::string token_to_piece(Token t) const;

    // The pieces joined, as llama.cpp's detokenize with special tokens rendered: SPM drops the
    // leading space its encoder added to the first piece. Invalid UTF-8 becomes U+FFFD.
    std::string decode(std::span<const Token> tokens) const;

    size_t n_vocab() const;
    std::optional<Token> bos() const;
    std::optional<Token> eos() const;
    bool add_bos() const;
    bool add_eos() const;
    // EOS, EOT, EOM and tokens whose text is a known end marker (<|im_end|>, <|eot_id|>,
    // <end_of_turn>, <|endoftext|>, ...), as llama.cpp collects them.
    bool is_end_of_generation(Token t) const;
    // A control token (<s>, <|im_start|>, ...): a marker, not text, which generated output leaves
    // out unless asked (llama.cpp's --special). Throws TokenizerError for an id outside the vocabulary.
    bool is_control(Token t) const;
    const std::vector<Token>& end_of_generation_tokens() const;
    std::string kind() const;  // "gpt2 (smollm)", "llama (spm)", ...

    // The text of a token as the vocabulary stores it ("Ġhello", "▁hello", "<|im_end|>").
    const std::string& token_text(Token t) const;
    std::optional<Token> find_token(std::string_view text) const;

private:
    explicit Tokenizer(std::shared_ptr<const tokenizer_detail::Vocabulary> vocabulary);
    std::shared_ptr<const tokenizer_detail::Vocabulary> vocabulary_;
};

// Streaming decode: a token ending inside a UTF-8 sequence holds its bytes until the character
// completes; invalid sequences become U+FFFD. Pieces are joined as they are (no leading-space
// removal: the stream continues a prompt).
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tokenizer);
    std::string push(Token token);  // what can be shown now
    std::string flush();            // whatever is held, incomplete sequences as U+FFFD

private:
    const Tokenizer* tokenizer_;
    std::string pending_;
};

}  // namespace twinfer
