// F32LlamaModel against GPTModel, the float64 reference, on the same file: golden test models
// (GQA + tied embeddings, linear RoPE scaling, Llama 3 rope_freqs) in F32 and quantized, the real
// stories260K and SmolLM2; plus the KV cache's contract.
#include "models/f32_llama_model.hpp"

#include <gtest/gtest.h>

#include "f32_test_support.hpp"
#include "models/gpt_model.hpp"

namespace twinfer {
namespace {

using compute::Activations;
using test::compare_logits;
using test::greedy;
using test::kFloat32Tolerance;
using test::kInt8Tolerance;
using test::kInt8x2Tolerance;

std::shared_ptr<const gguf::File> open(const std::filesystem::path& path) {
    return std::make_shared<const gguf::File>(gguf::File::open(path));
}

const std::vector<Token> kGoldenTokens = {1, 17, 99, 4, 63, 120, 8, 8, 42, 77, 5, 31, 90, 2, 64, 111};

struct GoldenCase {
    const char* name;
    GGMLType type;
    Activations activations;
    double tolerance;
};

class F32LlamaGoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(F32LlamaGoldenTest, MatchesFloat64Reference) {
    const GoldenCase& c = GetParam();
    const auto file = test::convert_gguf(test::golden_model(c.name), c.type, std::string(type_name(c.type)));
    GPTModel reference = GPTModel::from_gguf(*file);
    F32LlamaModel model = F32LlamaModel::load(file, {.activations = c.activations});
    const double worst = compare_logits(model, reference, kGoldenTokens, 10, c.tolerance);
    std::printf("%s %s %s: max relative error %.2e\n", c.name, std::string(type_name(c.type)).c_str(),
                std::string(activations_name(c.activations)).c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(
    Golden, F32LlamaGoldenTest,
    ::testing::Values(GoldenCase{"llama_gqa_tied", GGMLType::F32, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama_linear_rope", GGMLType::F32, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama3_rope", GGMLType::F32, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama_gqa_tied", GGMLType::F16, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama_gqa_tied", GGMLType::Q8_0, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama_gqa_tied", GGMLType::Q4_1, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama3_rope", GGMLType::Q5_0, Activations::Float32, kFloat32Tolerance},
                      GoldenCase{"llama_gqa_tied", GGMLType::Q8_0, Activations::Int8, kInt8Tolerance},
                      GoldenCase{"llama_linear_rope", GGMLType::Q4_0, Activations::Int8, kInt8Tolerance},
                      GoldenCase{"llama_gqa_tied", GGMLType::Q8_0, Activations::Int8x2, kInt8x2Tolerance},
                      GoldenCase{"llama_linear_rope", GGMLType::Q4_0, Activations::Int8x2, kInt8x2Tolerance},
                      GoldenCase{"llama3_rope", GGMLType::Q5_0, Activations::Int8x2, kInt8x2Tolerance}),
    [](const auto& info) {
        return std::string(info.param.name) + "_" + std::string(type_name(info.param.type)) + "_" +
               std::string(activations_name(info.param.activations));
    });

TEST(F32LlamaModelTest, ChunkedFeedingMatchesOneShotAndClearResets) {
    const auto file = test::convert_gguf(test::golden_model("llama_gqa_tied"), GGMLType::F32, "chunks");
    F32LlamaModel model = F32LlamaModel::load(file);
    const Logits whole = model.forward(kGoldenTokens, LogitsMode::All);
    EXPECT_EQ(model.n_past(), kGoldenTokens.size());
    model.clear_cache();
    EXPECT_EQ(model.n_past(), 0u);
    const std::span<const Token> ids(kGoldenTokens);
    model.forward(ids.first(3));
    model.forward(ids.subspan(3, 6));
    const Logits rest = model.forward(ids.subspan(9), LogitsMode::All);
    ASSERT_EQ(rest.n_positions, kGoldenTokens.size() - 9);
    for (size_t p = 0; p < rest.n_positions; ++p)
        EXPECT_LE(test::relative_error(rest.row(p), whole.row(9 + p)), 1e-5) << p;
}

TEST(F32LlamaModelTest, ContextOverflowLeavesTheCacheUnchanged) {
    const auto file = test::convert_gguf(test::golden_model("llama_gqa_tied"), GGMLType::F32, "overflow");
    F32LlamaModel model = F32LlamaModel::load(file, {.n_ctx = 8});
    EXPECT_EQ(model.n_ctx(), 8u);
    model.forward(std::span(kGoldenTokens).first(6));
    try {
        model.forward(std::span(kGoldenTokens).subspan(6, 3));
        FAIL() << "expected ContextOverflow";
    } catch (const ContextOverflow& e) {
        EXPECT_NE(std::string(e.what()).find("exceeds the context of 8 tokens"), std::string::npos) << e.what();
    }
    EXPECT_EQ(model.n_past(), 6u);
    model.forward(std::span(kGoldenTokens).subspan(6, 2));
    EXPECT_EQ(model.n_past(), 8u);
    EXPECT_EQ(F32LlamaModel::load(file).n_ctx(), 64u);   // the trained context by default
}

TEST(F32LlamaModelTest, RejectsBadInput) {
    const auto file = test::convert_gguf(test::golden_model("llama_gqa_tied"), GGMLType::F32, "bad");
    F32LlamaModel model = F32LlamaModel::load(file);
    EXPECT_THROW(model.forward(std::vector<Token>{}), std::invalid_argument);
    EXPECT_THROW(model.forward(std::vector<Token>{1, 128}), std::out_of_range);
    EXPECT_EQ(model.n_past(), 0u);
    EXPECT_THROW(F32LlamaModel::load(test::convert_gguf(test::golden_model("gpt2"), GGMLType::F32, "arch")), std::runtime_error);
}

TEST(F32LlamaStories260K, LogitsAndGreedyDecodingMatchReference) {
    const auto path = test::third_party_testdata() / "models/stories260K.gguf";
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    GPTModel reference = GPTModel::from_gguf(*file);
    F32LlamaModel model = F32LlamaModel::load(file);
    const std::vector<Token> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                                       338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265};
    const double worst = compare_logits(model, reference, prompt, 20, kFloat32Tolerance);
    std::printf("stories260K: max relative error %.2e over %zu positions\n", worst, prompt.size());

    reference.clear_cache();
    model.clear_cache();
    const std::vector<Token> expected = greedy(reference, {1}, 128);
    EXPECT_EQ(greedy(model, {1}, 128), expected);
}

// A float16 KV cache (--cache-type f16): the prompt's rows stored into it after RoPE, the decode
// step's by its fused store, both read back widened; within the cache's budget of the reference,
// and off by more than float32 rounding alone (the cache really holds halves).
TEST(F32LlamaStories260K, Float16CacheStaysWithinItsBudget) {
    const auto path = test::third_party_testdata() / "models/stories260K.gguf";
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    GPTModel reference = GPTModel::from_gguf(*file);
    F32LlamaModel model = F32LlamaModel::load(file, {.cache_type = compute::KvType::F16});
    const std::vector<Token> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                                       338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265};
    const double worst = compare_logits(model, reference, prompt, 20, test::kFloat16CacheTolerance);
    EXPECT_GT(worst, kFloat32Tolerance / 10);
}

TEST(F32LlamaStories260K, IntermediatesMatchReference) {
    const auto path = test::third_party_testdata() / "models/stories260K.gguf";
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    GPTModel reference = GPTModel::from_gguf(*file);
    F32LlamaModel model = F32LlamaModel::load(file);
    test::compare_intermediates(model, reference, {1, 403, 407, 261, 378, 432, 383, 286, 261}, kFloat32Tolerance);
}

// SmolLM2-135M-Instruct Q4_1 (Q8_0 embeddings, tied output). The reference dequantizes ~1 GB and
// recomputes everything per call, so: 8 positions of logits, and greedy decoding over 24 tokens.
TEST(F32LlamaSmolLM2, LogitsMatchReference) {
    const auto path = test::smollm2_path();
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> tokens = {504, 3575, 282, 4649, 314, 7042, 30, 198};
    for (const auto& [activations, tolerance] : {std::pair{Activations::Float32, kFloat32Tolerance},
                                                std::pair{Activations::Int8x2, kInt8x2Tolerance},
                                                std::pair{Activations::Int8, kInt8Tolerance}}) {
        F32LlamaModel model = F32LlamaModel::load(file, {.activations = activations});
        reference.clear_cache();
        const double worst = compare_logits(model, reference, tokens, 5, tolerance);
        std::printf("SmolLM2 Q4_1 %s activations: max relative error %.2e\n", std::string(activations_name(activations)).c_str(), worst);
    }
}

// A Q8_0 KV cache (--cache-type q8_0): prompt rows and decode steps stored as Q8_0 blocks, read
// back widened; within its budget of the reference, and further from it than a float16 cache (the
// cache really holds 8-bit values). A model whose heads are not whole blocks is refused at load.
TEST(F32LlamaSmolLM2, Q8_0CacheStaysWithinItsBudget) {
    const auto path = test::smollm2_path();
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> tokens = {504, 3575, 282, 4649, 314, 7042, 30, 198, 198, 504, 2988, 314};
    F32LlamaModel q8 = F32LlamaModel::load(file, {.cache_type = compute::KvType::Q8_0});
    const double worst_q8 = compare_logits(q8, reference, tokens, 6, test::kQ8_0CacheTolerance);
    F32LlamaModel f16 = F32LlamaModel::load(file, {.cache_type = compute::KvType::F16});
    reference.clear_cache();
    const double worst_f16 = compare_logits(f16, reference, tokens, 6, test::kFloat16CacheTolerance);
    EXPECT_GT(worst_q8, worst_f16);

    const auto stories = open(test::third_party_testdata() / "models/stories260K.gguf");   // heads of 8
    try {
        F32LlamaModel::load(stories, {.cache_type = compute::KvType::Q8_0});
        FAIL() << "expected std::invalid_argument";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("heads of whole blocks of 32 values; this model's have 8"), std::string::npos) << e.what();
    }
}

TEST(F32LlamaSmolLM2, GreedyDecoding) {
    const auto path = test::smollm2_path();
    TWINFER_REQUIRE_FILE(path);
    const auto file = open(path);
    const std::vector<Token> prompt = {504, 3575, 282, 4649, 314};   // "The capital of France is"
    GPTModel reference = GPTModel::from_gguf(*file);
    const std::vector<Token> expected = greedy(reference, prompt, 24);
    ASSERT_EQ(std::vector<Token>(expected.begin(), expected.begin() + 8),
              (std::vector<Token>{7042, 30, 198, 198, 504, 2988, 314, 42}));   // " Paris.\n\nThe answer is:"
    // Float activations and the CPU's default (int8x2) give the reference's 24 tokens.
    F32LlamaModel exact = F32LlamaModel::load(file, {.activations = Activations::Float32});
    EXPECT_EQ(greedy(exact, prompt, 24), expected);
    F32LlamaModel fast = F32LlamaModel::load(file);
    ASSERT_EQ(activations_for(fast.options()), Activations::Int8x2);
    EXPECT_EQ(greedy(fast, prompt, 24), expected);
    // Plain int8 activations follow the reference until two candidates are within its error (the
    // continuation turns into digits, where they soon are): where it parts, the reference's top two
    // logits must be that close.
    F32LlamaModel int8 = F32LlamaModel::load(file, {.activations = Activations::Int8});
    test::expect_same_or_near_tie(greedy(int8, prompt, 24), expected, reference, prompt, kInt8Tolerance);
}

}  // namespace
}  // namespace twinfer
