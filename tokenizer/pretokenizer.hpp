#pragma once
// The regexes that cut text into words before byte-level BPE, chosen by `tokenizer.ggml.pre` the
// way llama.cpp's llm_tokenizer_bpe chooses them, and evaluated with PCRE2 (UTF + UCP, JIT).
// Several regexes apply in turn: each splits every piece the previous ones left into its matches
// and the text between them (llama.cpp's unicode_regex_split).
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace twinfer::tokenizer_detail {

struct PreTokenizerSpec {
    std::string name;                  // the `pre` value, as given
    std::vector<std::string> regexes;  // PCRE2 syntax, ready to compile
    bool ignore_merges = false;        // a word already in the vocabulary is one token (Llama 3)
    bool default_add_bos = false;      // llama.cpp's default before tokenizer.ggml.add_bos_token
    bool always_add_bos = false;       // whatever tokenizer.ggml.add_bos_token says (Gemma 4)
    // false: words stay raw UTF-8 and bytes outside the vocabulary fall back to <0xNN> tokens
    // (SentencePiece-style BPE: Gemma 4, Sarvam); true: GPT-2's byte-to-code-point mapping.
    bool byte_level = true;
    bool escape_spaces = false;        // ' ' becomes U+2581 before splitting (Gemma 4, Sarvam)
    bool newline_runs_whole = false;   // a run of '\n' that is a token stays one (Gemma 4)
    bool merges_optional = false;      // Kimi-K2 vocabularies have no merges
};

// Throws TokenizerError naming `pre` and listing the known names when llama.cpp lacks it.
PreTokenizerSpec pre_tokenizer_spec(std::string_view pre);

class PreTokenizer {
public:
    explicit PreTokenizer(const PreTokenizerSpec& spec);  // compiles once (throws on a bad regex)
    ~PreTokenizer();
    PreTokenizer(PreTokenizer&&) noexcept;
    PreTokenizer& operator=(PreTokenizer&&) noexcept;

    // The words of `text`, as UTF-8. Invalid UTF-8 becomes U+FFFD first, as in llama.cpp.
    std::vector<std::string> split(std::string_view text) const;

private:
    struct Compiled;
    std::vector<std::unique_ptr<Compiled>> compiled_;
};

}  // namespace twinfer::tokenizer_detail
