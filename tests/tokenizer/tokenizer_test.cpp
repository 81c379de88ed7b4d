// Tokenizer behaviour beyond llama.cpp's vectors: the three loaders agree, text round-trips,
// special tokens, streaming decode, refusal of unknown pre-tokenizers.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "common/test_data.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace std::string_literals;

namespace twinfer {
namespace {

std::filesystem::path vocab_path(const char* name) { return test::third_party_testdata() / "tokenizers" / name; }

Tokenizer load(const char* name) { return Tokenizer::from_gguf(gguf::File::open(vocab_path(name))); }

// Code, emoji (with ZWJ and variation selectors), CJK, mixed scripts, whitespace runs, digits,
// contractions in both cases, control-token look-alikes.
const std::vector<std::string> kCorpus = {
    "int main(int argc, char** argv) {\n    return argc > 1 ? 0 : -1;\n}\n",
    "def f(x):\n\tif x:\n\t\treturn [i**2 for i in range(10)]  # squares\n",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, ❤️ heart, 🤖🤖🤖",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "   leading spaces, trailing spaces   ",
    "\n\n\n  \t \r\n multiple\t\twhitespace      runs\u00a0nbsp\u3000ideographic",
    "1234567890 3.14159 1,000,000 $100 50% 2^10",
    "I'm sure he'll say they've done it, YOU'RE WRONG, We'D SEE",
    "<|endoftext|> is only text here <s> </s>",
    "Ünïcödé àccénts ß ǅ Ωμέγα Кириллица العربية עברית हिन्दी",
    "",
    " ",
    "a",
};

// Invalid UTF-8: stray continuation bytes, truncated sequences, surrogates.
const std::vector<std::string> kInvalidUtf8 = {
    "\xff\xfe abc", "truncated \xe2\x82", "\xe2\x82 then text", "surrogate \xed\xa0\x80 here",
    "\x80\x80\x80", "mixed \xf0\x9f\x98 \xf0\x9f\x98\x80",
};

TEST(Tokenizer, Gpt2FilesGiveTheGgufIds) {
    const auto dir = test::third_party_testdata() / "tokenizers" / "gpt2";
    TWINFER_REQUIRE_FILE(dir / "encoder.json");
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-gpt-2.gguf"));
    const auto from_files = Tokenizer::from_gpt2_files(dir / "encoder.json", dir / "vocab.bpe");
    const auto from_gguf = load("ggml-vocab-gpt-2.gguf");
    EXPECT_EQ(from_files.n_vocab(), from_gguf.n_vocab());
    EXPECT_EQ(from_files.eos(), from_gguf.eos());
    EXPECT_EQ(from_files.end_of_generation_tokens(), from_gguf.end_of_generation_tokens());
    auto corpus = kCorpus;
    corpus.insert(corpus.end(), kInvalidUtf8.begin(), kInvalidUtf8.end());
    corpus.push_back("overlong \xc0\x80 and \xe0\x80\x80");
    for (const auto& text : corpus)
        for (bool parse_special : {false, true})
            EXPECT_EQ(from_files.encode(text, true, parse_special), from_gguf.encode(text, true, parse_special))
                << "text '" << text << "'";
}

TEST(Tokenizer, HfTokenizerJsonGivesTheGgufIds) {
    const auto dir = test::third_party_testdata() / "tokenizers" / "gpt2";
    TWINFER_REQUIRE_FILE(dir / "encoder.json");
    // A tokenizer.json as Hugging Face writes GPT-2's: BPE model, ByteLevel pre-tokenizer.
    nlohmann::json vocab;
    std::ifstream(dir / "encoder.json") >> vocab;
    nlohmann::json merges = nlohmann::json::array();
    std::ifstream merges_file(dir / "vocab.bpe");
    for (std::string line; std::getline(merges_file, line);)
        if (!line.empty() && !line.starts_with("#version")) merges.push_back(line);
    nlohmann::json j = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
        {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}},
    };
    const auto path = test::scratch_dir() / "hf" / "tokenizer.json";
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << j.dump();
    std::ofstream(path.parent_path() / "tokenizer_config.json")
        << R"({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": false})";
    const auto from_json = Tokenizer::from_hf_tokenizer_json(path);
    const auto from_gguf = load("ggml-vocab-gpt-2.gguf");
    EXPECT_EQ(from_json.eos(), Token{50256});
    for (const auto& text : kCorpus)
        EXPECT_EQ(from_json.encode(text, true, true), from_gguf.encode(text, true, true)) << "text '" << text << "'";
}

class RoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(RoundTrip, DecodeOfEncodeIsTheText) {
    TWINFER_REQUIRE_FILE(vocab_path(GetParam()));
    const auto tokenizer = load(GetParam());
    // Also every input of the llama.cpp vector file (all valid UTF-8).
    std::ifstream inp(vocab_path(GetParam()).string() + ".inp", std::ios::binary);
    const std::string vector_text((std::istreambuf_iterator<char>(inp)), std::istreambuf_iterator<char>());
    auto corpus = kCorpus;
    corpus.push_back(vector_text);
    for (const auto& text : corpus) {
        // SentencePiece adds a space before the text and decode removes it, as llama.cpp does.
        EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, false, false)), text) << "text '" << text << "'";
    }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, RoundTrip,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf",
                                           "ggml-vocab-llama-bpe.gguf"),
                         [](const auto& info) {
                             std::string name = info.param;
                             for (char& c : name)
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             return name;
                         });

TEST(Tokenizer, InvalidUtf8TokenizesAsReplacementCharacters) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-gpt-2.gguf"));
    const auto tokenizer = load("ggml-vocab-gpt-2.gguf");
    // llama.cpp turns each byte that starts no valid sequence into U+FFFD before pre-tokenizing.
    EXPECT_EQ(tokenizer.encode("\xff", false, false), tokenizer.encode("\xEF\xBF\xBD", false, false));
    EXPECT_EQ(tokenizer.decode(tokenizer.encode("a\xe2\x82 b", false, false)), "a\xEF\xBF\xBD\xEF\xBF\xBD b");
    // Overlong forms decode leniently, as in llama.cpp: C0 80 is U+0000.
    EXPECT_EQ(tokenizer.encode("x\xc0\x80", false, false), tokenizer.encode("x\0"s, false, false));
    for (const auto& text : kInvalidUtf8) {
        const std::string decoded = tokenizer.decode(tokenizer.encode(text, false, false));
        EXPECT_NE(decoded.find("\xEF\xBF\xBD"), std::string::npos) << text;
    }
}

TEST(Tokenizer, SpmSpecialsAndLeadingSpace) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-llama-spm.gguf"));
    const auto tokenizer = load("ggml-vocab-llama-spm.gguf");
    EXPECT_EQ(tokenizer.kind(), "llama (spm)");
    EXPECT_TRUE(tokenizer.add_bos());
    EXPECT_FALSE(tokenizer.add_eos());
    EXPECT_EQ(tokenizer.encode("Hello world", true, false), (std::vector<Token>{1, 15043, 3186}));
    EXPECT_EQ(tokenizer.encode("", true, false), (std::vector<Token>{1}));
    EXPECT_EQ(tokenizer.encode("", false, false), (std::vector<Token>{}));
    // A special token in the text, then text: the text after it gets the space prefix again.
    EXPECT_EQ(tokenizer.encode("Hello</s>world", false, true), (std::vector<Token>{15043, 2, 3186}));
    EXPECT_NE(tokenizer.encode("Hello</s>world", false, false), tokenizer.encode("Hello</s>world", false, true));
    EXPECT_EQ(tokenizer.token_to_piece(15043), " Hello");
    EXPECT_EQ(tokenizer.token_to_piece(3), "\x00"s);  // <0x00>
    EXPECT_EQ(tokenizer.decode(std::vector<Token>{15043, 3186}), "Hello world");
    EXPECT_TRUE(tokenizer.is_end_of_generation(2));
    EXPECT_FALSE(tokenizer.is_end_of_generation(1));
    EXPECT_THROW(tokenizer.token_to_piece(32000), TokenizerError);
}

TEST(Tokenizer, Llama3SpecialsAndEndOfGeneration) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-llama-bpe.gguf"));
    const auto tokenizer = load("ggml-vocab-llama-bpe.gguf");
    EXPECT_EQ(tokenizer.kind(), "gpt2 (llama-bpe)");
    EXPECT_TRUE(tokenizer.add_bos());  // llama-bpe: BOS by default, as llama.cpp
    const auto ids = tokenizer.encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", true, true);
    ASSERT_GE(ids.size(), 4u);
    EXPECT_EQ(ids.front(), 128000);
    EXPECT_EQ(ids[1], 128006);
    EXPECT_EQ(ids.back(), 128009);
    EXPECT_TRUE(tokenizer.is_end_of_generation(128001));  // <|end_of_text|>
    EXPECT_TRUE(tokenizer.is_end_of_generation(128009));  // <|eot_id|>
    EXPECT_FALSE(tokenizer.is_end_of_generation(128000));
    // Without parse_special the markers are ordinary text.
    const auto plain = tokenizer.encode("<|eot_id|>", false, false);
    EXPECT_GT(plain.size(), 1u);
    EXPECT_EQ(tokenizer.decode(plain), "<|eot_id|>");
}

TEST(Tokenizer, SmolLM2ChatMarkersAreControlTokens) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    const auto tokenizer = Tokenizer::from_gguf(gguf::File::open(test::smollm2_path()));
    EXPECT_EQ(tokenizer.kind(), "gpt2 (smollm)");
    EXPECT_FALSE(tokenizer.add_bos());
    const Token im_start = *tokenizer.find_token("<|im_start|>");
    const Token im_end = *tokenizer.find_token("<|im_end|>");
    const auto ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", true, true);
    ASSERT_GE(ids.size(), 4u);
    EXPECT_EQ(ids.front(), im_start);
    EXPECT_EQ(ids.back(), im_end);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), im_start), 1);
    EXPECT_EQ(tokenizer.decode(ids), "<|im_start|>user\nHi<|im_end|>");
    const auto plain = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", true, false);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), im_start), 0);
    EXPECT_TRUE(tokenizer.is_end_of_generation(im_end));
    EXPECT_TRUE(tokenizer.is_end_of_generation(*tokenizer.find_token("<|endoftext|>")));
    EXPECT_FALSE(tokenizer.is_end_of_generation(im_start));
    // smollm splits digits one by one.
    EXPECT_EQ(tokenizer.encode("2024", false, false).size(), 4u);
}

TEST(StreamDecoder, HoldsSplitCharactersAndReplacesInvalidBytes) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-llama-spm.gguf"));
    const auto tokenizer = load("ggml-vocab-llama-spm.gguf");
    auto byte = [&](uint8_t b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        return *tokenizer.find_token(name);
    };
    StreamDecoder euro(tokenizer);
    EXPECT_EQ(euro.push(byte(0xE2)), "");
    EXPECT_EQ(euro.push(byte(0x82)), "");
    EXPECT_EQ(euro.push(byte(0xAC)), "€");
    EXPECT_EQ(euro.push(15043), " Hello");
    EXPECT_EQ(euro.flush(), "");

    StreamDecoder invalid(tokenizer);
    EXPECT_EQ(invalid.push(byte(0xFF)), "\xEF\xBF\xBD");
    EXPECT_EQ(invalid.push(byte(0xE2)), "");
    EXPECT_EQ(invalid.push(15043), "\xEF\xBF\xBD Hello");  // the character never completed
    EXPECT_EQ(invalid.push(byte(0xF0)), "");
    EXPECT_EQ(invalid.push(byte(0x9F)), "");
    EXPECT_EQ(invalid.flush(), "\xEF\xBF\xBD");  // cut off at the end

    // Byte-level BPE: the emoji's 4 bytes arrive in several tokens.
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-gpt-2.gguf"));
    const auto gpt2 = load("ggml-vocab-gpt-2.gguf");
    const std::string text = "a😀b€";
    std::string streamed;
    StreamDecoder stream(gpt2);
    size_t partial_pushes = 0;
    for (Token t : gpt2.encode(text, false, false)) {
        const std::string out = stream.push(t);
        partial_pushes += out.empty();
        streamed += out;
    }
    streamed += stream.flush();
    EXPECT_EQ(streamed, text);
    EXPECT_GT(partial_pushes, 0u);
}

TEST(Tokenizer, UnknownPreTokenizerIsRefused) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-gpt-2.gguf"));
    const auto original = gguf::File::open(vocab_path("ggml-vocab-gpt-2.gguf"));
    gguf::Writer writer;
    for (const auto& [key, value] : original.metadata())
        writer.set(key, key == "tokenizer.ggml.pre" ? gguf::Value{std::string("no-such-pre")} : value);
    const auto path = test::scratch_dir() / "unknown-pre.gguf";
    writer.write(path);
    try {
        Tokenizer::from_gguf(gguf::File::open(path));
        FAIL() << "an unknown pre-tokenizer was accepted";
    } catch (const TokenizerError& e) {
        EXPECT_NE(std::string(e.what()).find("no-such-pre"), std::string::npos) << e.what();
    }
}

TEST(Tokenizer, EveryKnownPreTokenizerCompiles) {
    TWINFER_REQUIRE_FILE(vocab_path("ggml-vocab-gpt-2.gguf"));
    const auto original = gguf::File::open(vocab_path("ggml-vocab-gpt-2.gguf"));
    for (const char* pre : {"default", "gpt-2", "llama-bpe", "smollm", "qwen2", "starcoder", "falcon",
                            "deepseek-llm", "deepseek-coder", "mpt", "refact", "command-r", "qwen35", "tekken",
                            "gpt-4o", "kimi-k2", "superbpe", "afmoe", "bloom", "chameleon"}) {
        gguf::Writer writer;
        for (const auto& [key, value] : original.metadata())
            writer.set(key, key == "tokenizer.ggml.pre" ? gguf::Value{std::string(pre)} : value);
        const auto bytes = writer.to_bytes();
        const auto tokenizer = Tokenizer::from_gguf(gguf::File::parse(bytes));
        for (const auto& text : kCorpus)
            EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, false, false)), text) << pre << ": '" << text << "'";
    }
}

}  // namespace
}  // namespace twinfer
