// F32GPTModel against GPTModel, the float64 reference, on the golden GPT-2-shaped model (written
// by transformers, tools/make_golden.py) converted to F32, F16 and quantized types.
#include "models/f32_gpt_model.hpp"

#include <gtest/gtest.h>

#include "f32_test_support.hpp"
#include "models/gpt_model.hpp"

namespace twinfer {
namespace {

// As in f32_llama_model_test.cpp: float32 against float64 on the same weights 1e-4; int8
// activations (measured 1e-2 on the random golden models) 5e-2.
using test::kFloat32Tolerance;
using test::kInt8Tolerance;
using test::kInt8x2Tolerance;
using compute::Activations;

const std::vector<Token> kTokens = {0, 17, 99, 4, 63, 120, 8, 8, 42, 77, 5, 31, 90, 2, 64, 111, 3, 3, 50, 51};

struct Case {
    GGMLType type;
    Activations activations;
    double tolerance;
};

class F32GPTGoldenTest : public ::testing::TestWithParam<Case> {};

TEST_P(F32GPTGoldenTest, MatchesFloat64Reference) {
    const Case& c = GetParam();
    const auto file = test::convert_gguf(test::golden_model("gpt2"), c.type, std::string(type_name(c.type)));
    GPTModel reference = GPTModel::from_gguf(*file);
    F32GPTModel model = F32GPTModel::load(file, {.activations = c.activations});
    const double worst = test::compare_logits(model, reference, kTokens, 12, c.tolerance);
    std::printf("gpt2 %s %s: max relative error %.2e\n", std::string(type_name(c.type)).c_str(),
                std::string(activations_name(c.activations)).c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Golden, F32GPTGoldenTest,
                         ::testing::Values(Case{GGMLType::F32, Activations::Float32, kFloat32Tolerance},
                                           Case{GGMLType::F16, Activations::Float32, kFloat32Tolerance},
                                           Case{GGMLType::BF16, Activations::Float32, kFloat32Tolerance},
                                           Case{GGMLType::Q8_0, Activations::Float32, kFloat32Tolerance},
                                           Case{GGMLType::Q5_1, Activations::Float32, kFloat32Tolerance},
                                           Case{GGMLType::Q8_0, Activations::Int8, kInt8Tolerance},
                                           Case{GGMLType::Q4_1, Activations::Int8, kInt8Tolerance},
                                           Case{GGMLType::Q8_0, Activations::Int8x2, kInt8x2Tolerance},
                                           Case{GGMLType::Q4_1, Activations::Int8x2, kInt8x2Tolerance}),
                         [](const auto& info) {
                             return std::string(type_name(info.param.type)) + "_" + std::string(activations_name(info.param.activations));
                         });

TEST(F32GPTModelTest, IntermediatesMatchReference) {
    const auto file = test::convert_gguf(test::golden_model("gpt2"), GGMLType::F32, "intermediates");
    GPTModel reference = GPTModel::from_gguf(*file);
    F32GPTModel model = F32GPTModel::load(file);
    test::compare_intermediates(model, reference, kTokens, kFloat32Tolerance);
}

// A float16 KV cache: the prompt's K and V rows stored into it, the decode step's by store_row.
TEST(F32GPTModelTest, Float16CacheStaysWithinItsBudget) {
    const auto file = test::convert_gguf(test::golden_model("gpt2"), GGMLType::F32, "f32");
    GPTModel reference = GPTModel::from_gguf(*file);
    F32GPTModel model = F32GPTModel::load(file, {.cache_type = compute::KvType::F16});
    const double worst = test::compare_logits(model, reference, kTokens, 12, test::kFloat16CacheTolerance);
    EXPECT_GT(worst, kFloat32Tolerance / 10);
}

TEST(F32GPTModelTest, ContextIsBoundedByThePositionEmbeddings) {
    const auto file = test::convert_gguf(test::golden_model("gpt2"), GGMLType::F32, "context");
    EXPECT_EQ(F32GPTModel::load(file).n_ctx(), 32u);
    EXPECT_THROW(F32GPTModel::load(file, {.n_ctx = 33}), std::runtime_error);
    F32GPTModel model = F32GPTModel::load(file, {.n_ctx = 16});
    model.forward(std::span(kTokens).first(16));
    EXPECT_THROW(model.forward(std::span(kTokens).subspan(16, 1)), ContextOverflow);
    EXPECT_EQ(model.n_past(), 16u);
    model.clear_cache();
    const Logits all = model.forward(std::span(kTokens).first(16), LogitsMode::All);
    EXPECT_EQ(all.n_positions, 16u);
    EXPECT_EQ(all.n_vocab, 128u);
}

TEST(F32GPTModelTest, RefusesOtherArchitectures) {
    const auto file = test::convert_gguf(test::golden_model("llama_gqa_tied"), GGMLType::F32, "arch");
    EXPECT_THROW(F32GPTModel::load(file), std::runtime_error);
}

}  // namespace
}  // namespace twinfer
