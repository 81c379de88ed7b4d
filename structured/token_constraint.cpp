#include "structured/token_constraint.hpp"

#include <array>

namespace twinfer::structured {

VocabularyBytes::VocabularyBytes(const Tokenizer& tokenizer) : bytes_(tokenizer.n_vocab()), flags_(tokenizer.n_vocab(), 0) {
    // A matcher just inside a string: a token it reads that leaves it inside the string, with no
    // escape or character half read, is plain string text.
    auto string_grammar = std::make_shared<Grammar>();
    string_grammar->schema.nodes.push_back({.kind = NodeKind::String});
    string_grammar->schema.root = 0;
    JsonMatcher in_string(string_grammar);
    in_string.feed("\"");
    for (size_t i = 0; i < bytes_.size(); ++i) {
        const Token t = Token(i);
        if (tokenizer.is_end_of_generation(t)) flags_[i] |= end_flag;
        if (tokenizer.is_control(t)) continue;
        bytes_[i] = tokenizer.token_to_piece(t);
        if (bytes_[i].empty()) continue;
        JsonMatcher after = in_string;
        if (after.feed(bytes_[i]) && after.in_plain_string()) flags_[i] |= plain_flag;
    }
}

TokenConstraint::TokenConstraint(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const VocabularyBytes> vocabulary)
    : matcher_(std::move(grammar)), vocabulary_(std::move(vocabulary)) {}

bool TokenConstraint::allows(Token t) const {
    if (t < 0 || size_t(t) >= vocabulary_->size()) return false;
    if (vocabulary_->is_end(t)) return matcher_.accepting();
    const std::string_view bytes = vocabulary_->bytes(t);
    return !bytes.empty() && matcher_.can_feed(bytes);
}

std::vector<Token> TokenConstraint::allowed() const {
    const VocabularyBytes& vocabulary = *vocabulary_;
    const bool plain = matcher_.in_plain_string();
    const bool accepting = matcher_.accepting();
    enum : int8_t { Untested = -1, Refused = 0, Accepted = 1 };
    // Whether the matcher reads a token's first byte, and its first two: most tokens fall at one.
    std::array<int8_t, 256> first_byte;
    first_byte.fill(Untested);
    std::vector<int8_t> first_two(256 * 256, Untested);
    std::vector<Token> out;
    for (size_t i = 0; i < vocabulary.size(); ++i) {
        const Token t = Token(i);
        if (vocabulary.is_end(t)) {
            if (accepting) out.push_back(t);
            continue;
        }
        const std::string_view bytes = vocabulary.bytes(t);
        if (bytes.empty()) continue;
        if (plain && vocabulary.is_plain_string_text(t)) {
            out.push_back(t);
            continue;
        }
        int8_t& first = first_byte[uint8_t(bytes[0])];
        if (first == Untested) first = matcher_.can_feed(bytes.substr(0, 1)) ? Accepted : Refused;
        if (first == Refused) continue;
        if (bytes.size() == 1) {
            out.push_back(t);
            continue;
        }
        int8_t& two = first_two[size_t(uint8_t(bytes[0])) << 8 | uint8_t(bytes[1])];
        if (two == Untested) two = matcher_.can_feed(bytes.substr(0, 2)) ? Accepted : Refused;
        if (two == Refused) continue;
        if (bytes.size() == 2 || matcher_.can_feed(bytes)) out.push_back(t);
    }
    return out;
}

void TokenConstraint::accept(Token t) {
    if (vocabulary_->is_end(t)) {
        if (!matcher_.accepting()) throw MatcherError("an end of generation before the document is whole");
        return;
    }
    if (!matcher_.feed(vocabulary_->bytes(t)))
        throw MatcherError("token " + std::to_string(t) + " does not continue the document");
}

}  // namespace twinfer::structured
