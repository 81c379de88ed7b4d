// GPTModel (float64) and TransformerModel (float32) against Hugging Face transformers in float64,
// on small random models of each architecture that llama.cpp's own convert_hf_to_gguf.py turned
// into GGUF (tools/make_arch_golden.py; tests/models/golden_arch/): a converter bug and a loader
// bug cannot agree.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "common/test_data.hpp"
#include "models/f32_test_support.hpp"
#include "models/golden_file.hpp"
#include "models/gpt_model.hpp"
#include "models/transformer_model.hpp"

namespace twinfer {
namespace {

// float64 against float64 (see gpt_model_test.cpp): rounding, and the norm epsilon GGUF stores as
// float32.
constexpr double kReferenceTolerance = 1e-10;
// float32 activations on the CPU, prompt and decode steps: the budget.
constexpr double kFloat32Tolerance = 1e-5;

std::filesystem::path case_dir(const std::string& name) { return test::repo_root() / "tests/models/golden_arch" / name; }

class GoldenArchitecture : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenArchitecture, ReferenceMatchesTransformers) {
    const gguf::File file = gguf::File::open(case_dir(GetParam()) / "model.gguf");
    for (const test::GoldenSequence& golden : test::read_golden(case_dir(GetParam()) / "golden.bin")) {
        GPTModel model = GPTModel::from_gguf(file);
        const Logits logits = model.forward(golden.tokens, LogitsMode::All);
        ASSERT_EQ(logits.n_vocab, golden.n_vocab);
        for (size_t t = 0; t < golden.tokens.size(); ++t)
            EXPECT_LT(test::relative_error(logits.row(t), std::span(golden.logits).subspan(t * golden.n_vocab, golden.n_vocab)),
                      kReferenceTolerance)
                << GetParam() << ", " << golden.tokens.size() << " tokens, position " << t;
    }
}

// The first half of each sequence as a prompt, the rest one token at a time (the decode step).
TEST_P(GoldenArchitecture, Float32MatchesTransformers) {
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(case_dir(GetParam()) / "model.gguf"));
    for (const test::GoldenSequence& golden : test::read_golden(case_dir(GetParam()) / "golden.bin")) {
        TransformerModel model = TransformerModel::load(file, {.n_ctx = 64, .n_threads = 2, .activations = compute::Activations::Float32});
        const size_t T = golden.tokens.size(), n_prompt = (T + 1) / 2;
        auto expected = [&](size_t t) { return std::span(golden.logits).subspan(t * golden.n_vocab, golden.n_vocab); };
        const Logits prompt = model.forward(std::span(golden.tokens).first(n_prompt), LogitsMode::All);
        for (size_t t = 0; t < n_prompt; ++t)
            EXPECT_LT(test::relative_error(prompt.row(t), expected(t)), kFloat32Tolerance) << GetParam() << " prompt position " << t;
        for (size_t t = n_prompt; t < T; ++t)
            EXPECT_LT(test::relative_error(model.forward(std::span(golden.tokens).subspan(t, 1)).row(0), expected(t)), kFloat32Tolerance)
                << GetParam() << " decode position " << t;
    }
}

INSTANTIATE_TEST_SUITE_P(Transformers, GoldenArchitecture,
                         ::testing::Values("qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3", "stablelm", "gptneox",
                                           "starcoder2"));

}  // namespace
}  // namespace twinfer
