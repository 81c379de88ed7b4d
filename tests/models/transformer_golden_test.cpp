// GPTModel (float64) and TransformerModel (float32) against Hugging Face transformers in float64,
// on small random models of each architecture that llama.cpp's own convert_hf_to_gguf.py turned
// into GGUF (tools/make_arch_golden.py; tests/models/golden_arch/): a converter bug and a loader
// bug cannot agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "common/test_data.hpp"
#include "common/tolerances.hpp"
#ifdef TWINFER_WITH_CUDA
#include "compute/cuda/runtime.hpp"
#endif
#include "models/f32_test_support.hpp"
#include "models/golden_file.hpp"
#include "models/gpt_model.hpp"
#include "models/kv_cache.hpp"
#include "models/transformer_model.hpp"

namespace twinfer {
namespace {

// float64 against float64 (see gpt_model_test.cpp): rounding, and the norm epsilon GGUF stores as
// float32.
constexpr double kReferenceTolerance = 1e-10;
// float32 activations on the CPU, prompt and decode steps: the budget.
constexpr double kFloat32Tolerance = 1e-5;

std::filesystem::path case_dir(const std::string& name) { return test::repo_root() / "tests/models/golden_arch" / name; }

// Each sequence runs in a context of its own length: transformers picks LongRoPE's factor set by the
// sequence's length, llama.cpp and twinfer by the context (phi3_longrope: short for 1 and 5 tokens,
// long for 24), the same choice here. No other case depends on the context.
size_t context_of(const test::GoldenSequence& golden) { return golden.tokens.size(); }

class GoldenArchitecture : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenArchitecture, ReferenceMatchesTransformers) {
    const gguf::File file = gguf::File::open(case_dir(GetParam()) / "model.gguf");
    for (const test::GoldenSequence& golden : test::read_golden(case_dir(GetParam()) / "golden.bin")) {
        GPTModel model = GPTModel::from_gguf(file, context_of(golden));
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
        TransformerModel model =
            TransformerModel::load(file, {.n_ctx = context_of(golden), .n_threads = 2, .activations = compute::Activations::Float32});
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

// The LongRoPE rule is llama.cpp's, by the context: phi3_longrope's 5-token sequence, for which
// transformers took the short factors, run in a context beyond the 16 original positions takes the
// long ones and parts from transformers' logits, on both paths alike.
TEST(GoldenLongRope, AContextBeyondTheOriginalTakesTheLongFactors) {
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(case_dir("phi3_longrope") / "model.gguf"));
    const test::GoldenSequence golden = test::read_golden(case_dir("phi3_longrope") / "golden.bin").at(1);
    ASSERT_EQ(golden.tokens.size(), 5u);
    ASSERT_EQ(ModelConfig::from_gguf(*file).rope_scaling.original_context, 16);
    GPTModel reference = GPTModel::from_gguf(*file, 17);
    const Logits logits = reference.forward(golden.tokens, LogitsMode::All);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 17, .n_threads = 2, .activations = compute::Activations::Float32});
    const Logits f32 = model.forward(golden.tokens, LogitsMode::All);
    double departure = 0;
    for (size_t t = 1; t < golden.tokens.size(); ++t) {   // position 0 turns by no angle
        departure = std::max(departure, test::relative_error(logits.row(t), std::span(golden.logits).subspan(t * golden.n_vocab, golden.n_vocab)));
        EXPECT_LT(test::relative_error(f32.row(t), logits.row(t)), kFloat32Tolerance) << "position " << t;
    }
    EXPECT_GT(departure, 1e-3);
}

// qwen2_yarn's pairs: the first keeps its frequency, the next four blend the two on the ramp, the
// last three are interpolated: the golden covers all three.
TEST(GoldenYarn, TheCaseCoversTheRamp) {
    const gguf::File file = gguf::File::open(case_dir("qwen2_yarn") / "model.gguf");
    const ModelConfig c = ModelConfig::from_gguf(file);
    ASSERT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Yarn);
    const std::vector<double> divisors = rope_frequency_scaling(c, 64).divisors;
    ASSERT_EQ(divisors.size(), 8u);
    EXPECT_EQ(divisors[0], 1.0);
    for (size_t i = 1; i < 5; ++i) EXPECT_TRUE(divisors[i] > 1.0 && divisors[i] < 4.0) << i << ": " << divisors[i];
    for (size_t i = 5; i < 8; ++i) EXPECT_EQ(divisors[i], 4.0) << i;
}

// gpt_oss's sliding layers (0 and 2, window 6) as rings of the KV cache (a context of 2048: rings
// of 6 + 511 rows): the same logits as transformers', prompt and decode steps, sinks included.
TEST(GoldenGptOss, RingLayersMatchTransformers) {
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(case_dir("gpt_oss") / "model.gguf"));
    const test::GoldenSequence golden = test::read_golden(case_dir("gpt_oss") / "golden.bin").back();
    ASSERT_EQ(golden.tokens.size(), 24u);
    TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .n_threads = 2, .activations = compute::Activations::Float32});
    ASSERT_LT(model.kv_cache_bytes(), KvCache::bytes(3, 1, 2048, 32, compute::KvType::F32)) << "the sliding layers are rings";
    auto expected = [&](size_t t) { return std::span(golden.logits).subspan(t * golden.n_vocab, golden.n_vocab); };
    const Logits prompt = model.forward(std::span(golden.tokens).first(12), LogitsMode::All);
    for (size_t t = 0; t < 12; ++t) EXPECT_LT(test::relative_error(prompt.row(t), expected(t)), kFloat32Tolerance) << t;
    for (size_t t = 12; t < 24; ++t)
        EXPECT_LT(test::relative_error(model.forward(std::span(golden.tokens).subspan(t, 1)).row(0), expected(t)), kFloat32Tolerance) << t;
}

// The same on a GPU (float activations, both cache types): a float32 cache within float32 rounding
// of transformers (test::kFloat32Tolerance, the GPU's budget against the CPU), a float16 one
// within its budget; sinks, expert biases and the clamped SwiGLU in every step.
TEST(GoldenGptOss, CudaMatchesTransformers) {
#ifdef TWINFER_WITH_CUDA
    if (compute::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA GPU: " << compute::cuda::describe_device();
#else
    GTEST_SKIP() << "built without the CUDA backend (TWINFER_CUDA=OFF)";
#endif
    const auto file = std::make_shared<const gguf::File>(gguf::File::open(case_dir("gpt_oss") / "model.gguf"));
    const test::GoldenSequence golden = test::read_golden(case_dir("gpt_oss") / "golden.bin").back();
    auto expected = [&](size_t t) { return std::span(golden.logits).subspan(t * golden.n_vocab, golden.n_vocab); };
    for (compute::KvType type : {compute::KvType::F32, compute::KvType::F16}) {
        SCOPED_TRACE(compute::kv_type_name(type));
        const double tolerance = type == compute::KvType::F32 ? test::kFloat32Tolerance : test::kFloat16CacheTolerance;
        TransformerModel model = TransformerModel::load(file, {.n_ctx = 2048, .device = compute::Device::CUDA,
                                                               .activations = compute::Activations::Float32,
                                                               .cache_type = type});
        const Logits prompt = model.forward(std::span(golden.tokens).first(12), LogitsMode::All);
        for (size_t t = 0; t < 12; ++t) EXPECT_LT(test::relative_error(prompt.row(t), expected(t)), tolerance) << t;
        for (size_t t = 12; t < golden.tokens.size(); ++t)
            EXPECT_LT(test::relative_error(model.forward(std::span(golden.tokens).subspan(t, 1)).row(0), expected(t)), tolerance) << t;
    }
}

// gpt_oss's YaRN ramp ends at dimension 4.03, not rounded up to 5 (its config's "truncate":
// false): pair 4 is then nearly interpolated (divisor ~26 of 32; rounded, it would be ~4.4).
TEST(GoldenGptOss, TheYarnRampIsNotRounded) {
    const ModelConfig c = ModelConfig::from_gguf(gguf::File::open(case_dir("gpt_oss") / "model.gguf"));
    const std::vector<double> divisors = rope_frequency_scaling(c, 256).divisors;
    ASSERT_EQ(divisors.size(), 8u);
    EXPECT_EQ(divisors[0], 1.0);
    EXPECT_GT(divisors[4], 20.0);
    EXPECT_LT(divisors[4], 32.0);
    EXPECT_EQ(divisors[5], 32.0);
}

INSTANTIATE_TEST_SUITE_P(Transformers, GoldenArchitecture,
                         ::testing::Values("qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3", "stablelm", "gptneox",
                                           "starcoder2", "qwen2_yarn", "phi3_longrope", "gpt_oss"));

}  // namespace
}  // namespace twinfer
