// Inputs the fuzz targets (tests/fuzz, docs/reliability.md) found crashing the tokenizers, kept as
// regression tests.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "format/gguf.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer {
namespace {

// gguf_fuzz (crash-2f232758c69aa5069b39a547d600634d7526dffc, a 6,208-byte SentencePiece vocabulary
// whose byte token 3 reads "<5x00>" and another "<081E>"): decoding a byte-type token whose text is
// "<0x" and two characters that are not hex digits threw std::invalid_argument out of
// std::stoi, an exception the tokenizer does not document. The vocabulary here has the same
// shape: SentencePiece, token type 6 (byte) on texts that only look like "<0xNN>".
TEST(TokenizerFuzzFindings, ByteTokensWhoseTextIsNotTwoHexDigitsDecodeToNothing) {
    const std::vector<std::string> texts = {"<unk>", "<s>", "</s>", "<0xZZ>", "<0x1G>", "<0x+1>", "<0x 1>", "<0x41]", "<0x41>", "<0x0a>"};
    std::vector<int32_t> types = {2, 3, 3};
    types.resize(texts.size(), 6);
    gguf::Writer writer;
    writer.set_string("tokenizer.ggml.model", "llama");
    writer.set_string_array("tokenizer.ggml.tokens", texts);
    writer.set_i32_array("tokenizer.ggml.token_type", types);
    const auto image = writer.to_bytes();
    const Tokenizer tokenizer = Tokenizer::from_gguf(gguf::File::parse(image, "finding.gguf"));
    for (Token id = 3; id <= 7; ++id) EXPECT_EQ(tokenizer.token_to_piece(id), "") << texts[id];
    EXPECT_EQ(tokenizer.token_to_piece(8), "A");
    EXPECT_EQ(tokenizer.token_to_piece(9), "\n");
    const std::vector<Token> all = {3, 4, 5, 6, 7, 8, 9};
    EXPECT_EQ(tokenizer.decode(all), "A\n");
}

}  // namespace
}  // namespace twinfer
