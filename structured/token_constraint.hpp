#pragma once
// Structured output on a model's tokens: which tokens keep the output a valid prefix of the
// grammar's document (the JsonMatcher fed the token's bytes), and the matcher moved along as
// tokens are emitted.
//
// A token is tested by feeding its bytes to a copy of the matcher. Three shortcuts keep the whole
// vocabulary's mask cheap: each token's bytes are read from the tokenizer once per model
// (VocabularyBytes); tokens whose first byte, or first two, the matcher refuses are skipped after
// one test per byte value (or pair); inside a string, tokens made of plain string text (no quote, no control character,
// whole UTF-8 characters) are allowed without a test.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "structured/json_matcher.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer::structured {

// Every token's bytes, read once per model and shared by all constrained sequences.
class VocabularyBytes {
public:
    explicit VocabularyBytes(const Tokenizer& tokenizer);

    size_t size() const { return bytes_.size(); }
    // The text a token adds; "" for control tokens and tokens with no text (never allowed).
    std::string_view bytes(Token t) const { return bytes_[size_t(t)]; }
    // An end-of-generation token: allowed once the document is whole.
    bool is_end(Token t) const { return flags_[size_t(t)] & end_flag; }
    // Continues any string, from any point between characters, and stays inside it.
    bool is_plain_string_text(Token t) const { return flags_[size_t(t)] & plain_flag; }

private:
    static constexpr uint8_t end_flag = 1, plain_flag = 2;
    std::vector<std::string> bytes_;
    std::vector<uint8_t> flags_;
};

class TokenConstraint {
public:
    TokenConstraint(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const VocabularyBytes> vocabulary);

    bool allows(Token t) const;
    // Every allowed token, ascending.
    std::vector<Token> allowed() const;
    // The token was emitted: the matcher reads it. Throws MatcherError for a token not allowed.
    void accept(Token t);
    // The document is whole and nothing may follow: generation ends without another token.
    bool finished() const { return matcher_.finished(); }

private:
    JsonMatcher matcher_;
    std::shared_ptr<const VocabularyBytes> vocabulary_;
};

}  // namespace twinfer::structured
