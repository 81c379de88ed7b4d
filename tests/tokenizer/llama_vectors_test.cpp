// twinfer's ids against llama.cpp's: its tokenizer test vectors (tests/test-tokenizer-0 with
// models/ggml-vocab-*.gguf.inp and .out), and our corpus (tests/data/tokenizer_corpus) with the
// ids llama-tokenize gave (tools/make_tokenizer_goldens.py), on every vocabulary kept here and on
// every `tokenizer.ggml.pre` llama.cpp 0.3.36 knows. Every case must give exactly llama.cpp's ids.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/test_data.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer {
namespace {

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// As test-tokenizer-0: inputs are the texts between "\n__ggml_vocab_test__\n" separators, and
// what follows the last one unless empty (most files end with a separator, Gemma 4's does not);
// outputs are one line per input, ids separated by spaces.
std::vector<std::string> read_inputs(const std::filesystem::path& path) {
    const std::string separator = "\n__ggml_vocab_test__\n";
    std::string text = read_file(path);
    std::vector<std::string> inputs;
    for (size_t pos; (pos = text.find(separator)) != std::string::npos; text.erase(0, pos + separator.size()))
        inputs.push_back(text.substr(0, pos));
    if (!text.empty()) inputs.push_back(text);
    return inputs;
}

std::vector<std::vector<Token>> read_outputs(const std::filesystem::path& path) {
    std::istringstream in(read_file(path));
    std::vector<std::vector<Token>> outputs;
    for (std::string line; std::getline(in, line);) {
        std::istringstream ids(line);
        outputs.emplace_back();
        for (Token id; ids >> id;) outputs.back().push_back(id);
    }
    return outputs;
}

std::string ids_text(const std::vector<Token>& ids) {
    std::string s;
    for (Token id : ids) {
        s += ' ';
        s += std::to_string(id);
    }
    return s;
}

class LlamaCppVectors : public ::testing::TestWithParam<const char*> {};

TEST_P(LlamaCppVectors, EveryCaseMatches) {
    const auto base = test::third_party_testdata() / "tokenizers" / GetParam();
    TWINFER_REQUIRE_FILE(base);
    const auto tokenizer = Tokenizer::from_gguf(gguf::File::open(base));
    const auto inputs = read_inputs(base.string() + ".inp");
    const auto outputs = read_outputs(base.string() + ".out");
    ASSERT_EQ(inputs.size(), outputs.size());
    ASSERT_GT(inputs.size(), 0u);
    size_t passed = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        const auto ids = tokenizer.encode(inputs[i], /*add_special=*/false, /*parse_special=*/false);
        if (ids == outputs[i]) ++passed;
        else ADD_FAILURE() << "case " << i << " text '" << inputs[i] << "'\n  expected" << ids_text(outputs[i])
                           << "\n  got     " << ids_text(ids);
    }
    std::cout << GetParam() << ": " << passed << "/" << inputs.size() << " cases match llama.cpp\n";
}

std::string test_name(const ::testing::TestParamInfo<const char*>& info) {
    std::string name = info.param;
    for (char& c : name)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return name;
}

// Every vocabulary with vectors that llama.cpp 0.3.36 ships in models/ except bert-bge
// (WordPiece, a tokenizer twinfer does not have).
const std::vector<const char*> kVectorVocabularies = {
    "ggml-vocab-command-r.gguf", "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-deepseek-llm.gguf",
    "ggml-vocab-falcon.gguf",    "ggml-vocab-gemma-4.gguf",        "ggml-vocab-gpt-2.gguf",
    "ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf",      "ggml-vocab-mpt.gguf",
    "ggml-vocab-phi-3.gguf",     "ggml-vocab-qwen2.gguf",          "ggml-vocab-qwen35.gguf",
    "ggml-vocab-refact.gguf",    "ggml-vocab-starcoder.gguf",
};

INSTANTIATE_TEST_SUITE_P(Vocabularies, LlamaCppVectors, ::testing::ValuesIn(kVectorVocabularies), test_name);

std::filesystem::path corpus_dir() { return test::repo_root() / "tests" / "data" / "tokenizer_corpus"; }

// A golden file: one line per corpus file, "<file name>\t<ids>".
void expect_corpus_goldens(const Tokenizer& tokenizer, const std::filesystem::path& golden, const std::string& label) {
    TWINFER_REQUIRE_FILE(golden);
    size_t corpus_files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(corpus_dir()))
        corpus_files += entry.path().extension() == ".txt";
    std::istringstream lines(read_file(golden));
    size_t cases = 0, passed = 0;
    for (std::string line; std::getline(lines, line); ++cases) {
        const size_t tab = line.find('\t');
        ASSERT_NE(tab, std::string::npos) << golden << ": " << line;
        const auto text_path = corpus_dir() / line.substr(0, tab);
        TWINFER_REQUIRE_FILE(text_path);
        std::vector<Token> expected;
        std::istringstream ids(line.substr(tab + 1));
        for (Token id; ids >> id;) expected.push_back(id);
        const auto got = tokenizer.encode(read_file(text_path), /*add_special=*/false, /*parse_special=*/false);
        if (got == expected) ++passed;
        else ADD_FAILURE() << label << " on " << text_path.filename() << "\n  expected" << ids_text(expected)
                           << "\n  got     " << ids_text(got);
    }
    EXPECT_EQ(cases, corpus_files) << golden << " does not cover the corpus: run tools/make_tokenizer_goldens.py";
    std::cout << label << ": " << passed << "/" << cases << " corpus files match llama.cpp\n";
}

class CorpusVocabularies : public ::testing::TestWithParam<const char*> {};

TEST_P(CorpusVocabularies, MatchLlamaCpp) {
    const auto path = test::third_party_testdata() / "tokenizers" / GetParam();
    TWINFER_REQUIRE_FILE(path);
    const auto golden = corpus_dir() / "goldens" / path.filename().replace_extension(".txt");
    expect_corpus_goldens(Tokenizer::from_gguf(gguf::File::open(path)), golden, GetParam());
}

// The vectors' vocabularies, two without vectors (gpt-neox: no `pre`, so "default"; baichuan:
// SentencePiece) and Gemma 3's 262k SentencePiece vocabulary.
std::vector<const char*> corpus_vocabularies() {
    auto names = kVectorVocabularies;
    names.insert(names.end(), {"ggml-vocab-gpt-neox.gguf", "ggml-vocab-baichuan.gguf", "gemma3-270m-vocab.gguf"});
    return names;
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, CorpusVocabularies, ::testing::ValuesIn(corpus_vocabularies()), test_name);

// Each `pre` in a copy of a real vocabulary, as the golden tool makes it: Qwen2's for byte-level
// BPE, Gemma 4's (as model gpt2) for the pre-tokenizers that keep raw UTF-8.
class CorpusPreTokenizers : public ::testing::TestWithParam<const char*> {};

TEST_P(CorpusPreTokenizers, MatchLlamaCpp) {
    const std::string pre = GetParam();
    const bool raw_utf8 = pre == "gemma4" || pre == "granite-embed-multi-311m" || pre == "sarvam-moe";
    const auto base = test::third_party_testdata() / "tokenizers" /
                      (raw_utf8 ? "ggml-vocab-gemma-4.gguf" : "ggml-vocab-qwen2.gguf");
    TWINFER_REQUIRE_FILE(base);
    const auto original = gguf::File::open(base);
    gguf::Writer writer;
    for (const auto& [key, value] : original.metadata())
        if (key != "tokenizer.ggml.model" && key != "tokenizer.ggml.pre") writer.set(key, value);
    writer.set_string("tokenizer.ggml.model", "gpt2");
    writer.set_string("tokenizer.ggml.pre", pre);
    const auto bytes = writer.to_bytes();
    expect_corpus_goldens(Tokenizer::from_gguf(gguf::File::parse(bytes)), corpus_dir() / "goldens" / "pre" / (pre + ".txt"),
                          "pre " + pre);
}

// llama.cpp 0.3.36's list (src/llama-vocab.cpp, llama_vocab::impl::load), in its order, less
// "whitespace": it belongs to tokenizer.ggml.model = whitespace, and under gpt2 llama.cpp aborts
// on the first space its BPE merge lookup sees, so there are no goldens to check it against.
INSTANTIATE_TEST_SUITE_P(
    LlamaCppNames, CorpusPreTokenizers,
    ::testing::Values("default", "minicpm5", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                      "midm-2.0", "lfm2", "jina-v5-nano", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5",
                      "youtu", "falcon", "mpt", "starcoder", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat",
                      "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "jais-2", "gemma4",
                      "granite-embed-multi-311m", "sarvam-moe", "jina-v1-en", "jina-v2-code", "roberta-bpe", "refact", "command-r", "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35",
                      "stablelm2", "olmo", "dbrx", "smaug-bpe", "poro-chat", "chatglm-bpe", "glm4", "glm5", "viking",
                      "jais", "tekken", "smollm", "codeshell", "bloom", "gpt3-finnish", "exaone", "exaone4",
                      "exaone-moe", "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4", "kanana2", "talkie",
                      "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "trillion", "granite-docling",
                      "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan", "hunyuan-dense", "hy_v4",
                      "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe", "laguna", "minimax-m2", "solar-open",
                      "mellum2"),
    test_name);

}  // namespace
}  // namespace twinfer
