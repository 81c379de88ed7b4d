// The token mask on SmolLM2's real vocabulary (49,152 byte-level BPE tokens): allowed() equals
// testing every token one by one, in states that take each shortcut (first-byte pruning, the
// plain-string shortcut, end tokens once the document is whole), and what one mask costs.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/test_data.hpp"
#include "format/gguf.hpp"
#include "structured/token_constraint.hpp"

namespace twinfer::structured {
namespace {

using nlohmann::json;

class TokenConstraintTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!std::filesystem::exists(test::smollm2_path())) return;
        tokenizer_ = new Tokenizer(Tokenizer::from_gguf(gguf::File::open(test::smollm2_path())));
        vocabulary_ = std::make_shared<const VocabularyBytes>(*tokenizer_);
    }
    static void TearDownTestSuite() {
        delete tokenizer_;
        tokenizer_ = nullptr;
        vocabulary_.reset();
    }
    static Tokenizer* tokenizer_;
    static std::shared_ptr<const VocabularyBytes> vocabulary_;
};
Tokenizer* TokenConstraintTest::tokenizer_ = nullptr;
std::shared_ptr<const VocabularyBytes> TokenConstraintTest::vocabulary_;

// The mask after `text`, checked token by token against allows() and a fresh matcher; returns
// the number of allowed tokens and prints the mask's cost.
size_t check_mask(const std::shared_ptr<const Grammar>& grammar, const std::shared_ptr<const VocabularyBytes>& vocabulary,
                  const Tokenizer& tokenizer, const std::string& text) {
    TokenConstraint constraint(grammar, vocabulary);
    JsonMatcher reference(grammar);
    EXPECT_TRUE(reference.feed(text)) << text;
    for (const Token t : tokenizer.encode(text, false, false)) constraint.accept(t);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Token> allowed = constraint.allowed();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("mask after %-28s %6zu of %zu tokens allowed, %.2f ms\n", ("'" + text + "'").c_str(), allowed.size(), vocabulary->size(), ms);
    size_t next = 0;
    for (size_t i = 0; i < vocabulary->size(); ++i) {
        const Token t = Token(i);
        const bool in_mask = next < allowed.size() && allowed[next] == t;
        if (in_mask) ++next;
        const bool expected = vocabulary->is_end(t) ? reference.accepting()
                                                    : !vocabulary->bytes(t).empty() && reference.can_feed(vocabulary->bytes(t));
        EXPECT_EQ(in_mask, expected) << "token " << t << " '" << vocabulary->bytes(t) << "' after '" << text << "'";
        EXPECT_EQ(constraint.allows(t), expected) << "token " << t;
    }
    EXPECT_EQ(next, allowed.size()) << "allowed() is not ascending";
    return allowed.size();
}

TEST_F(TokenConstraintTest, MaskEqualsTestingEveryToken) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    const auto grammar = std::make_shared<Grammar>(Grammar{
        compile_json_schema({{"type", "object"},
                             {"properties", {{"name", {{"type", "string"}}}, {"age", {{"type", "integer"}}}, {"tags", {{"type", "array"}, {"items", {{"enum", {"a", "b"}}}}}}}},
                             {"required", {"name", "age"}},
                             {"additionalProperties", false}}),
        "", ""});
    EXPECT_GT(check_mask(grammar, vocabulary_, *tokenizer_, ""), 1u);                        // '{', '{"', ...
    EXPECT_GT(check_mask(grammar, vocabulary_, *tokenizer_, "{\"name\": \"Jo"), 40000u);    // inside a string: the shortcut
    check_mask(grammar, vocabulary_, *tokenizer_, "{\"name\": \"Jo\\");                      // an escape
    check_mask(grammar, vocabulary_, *tokenizer_, "{\"name\": \"Jo\", \"a");                 // a key
    check_mask(grammar, vocabulary_, *tokenizer_, "{\"name\": \"Jo\", \"age\": 4");         // a number
    check_mask(grammar, vocabulary_, *tokenizer_, "{\"name\": \"Jo\", \"age\": 4, \"tags\": [");
    const auto object = std::make_shared<Grammar>(Grammar{any_json_object(), "", ""});
    check_mask(object, vocabulary_, *tokenizer_, "{\"k\": [1, {\"x\": ");
    check_mask(object, vocabulary_, *tokenizer_, "{\"k\": \"v");
    const auto number = std::make_shared<Grammar>(Grammar{compile_json_schema({{"type", "number"}}), "", ""});
    check_mask(number, vocabulary_, *tokenizer_, "12");                                       // whole: end tokens allowed
}

TEST_F(TokenConstraintTest, EndTokensOnlyWhenWholeAndControlTokensNever) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    const auto number = std::make_shared<Grammar>(Grammar{compile_json_schema({{"type", "integer"}}), "", ""});
    TokenConstraint constraint(number, vocabulary_);
    const Token im_end = *tokenizer_->find_token("<|im_end|>");
    const Token im_start = *tokenizer_->find_token("<|im_start|>");
    EXPECT_FALSE(constraint.allows(im_end));
    for (const Token t : tokenizer_->encode("7", false, false)) constraint.accept(t);
    EXPECT_TRUE(constraint.allows(im_end));
    EXPECT_FALSE(constraint.allows(im_start));
    EXPECT_THROW(constraint.accept(*tokenizer_->find_token("a")), MatcherError);
}

}  // namespace
}  // namespace twinfer::structured
