// llama.cpp's tokenizer test vectors (tests/test-tokenizer-0 with models/ggml-vocab-*.gguf.inp
// and .out): every case must give exactly llama.cpp's ids.
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

// As test-tokenizer-0: inputs are the texts between "\n__ggml_vocab_test__\n" separators (the
// file ends with one); outputs are one line per input, ids separated by spaces.
std::vector<std::string> read_inputs(const std::filesystem::path& path) {
    const std::string separator = "\n__ggml_vocab_test__\n";
    std::string text = read_file(path);
    std::vector<std::string> inputs;
    for (size_t pos; (pos = text.find(separator)) != std::string::npos; text.erase(0, pos + separator.size()))
        inputs.push_back(text.substr(0, pos));
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

INSTANTIATE_TEST_SUITE_P(Vocabularies, LlamaCppVectors,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf",
                                           "ggml-vocab-llama-bpe.gguf"),
                         [](const auto& info) {
                             std::string name = info.param;
                             for (char& c : name)
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             return name;
                         });

}  // namespace
}  // namespace twinfer
