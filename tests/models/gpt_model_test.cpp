// GPTModel, the float64 reference, against transformers in float64 (golden files written by
// tools/make_golden.py), on real models (stories260K, SmolLM2) by greedy decoding, and on bad input.
#include "models/golden_file.hpp"
#include "models/gpt_model.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "common/test_data.hpp"
#include "models/f32_test_support.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer {
namespace {

using test::GoldenSequence;
using test::read_golden;

// float64 against float64: what is left is rounding (summation order in dgemm versus torch's
// matmul), ~1e-15 relative; 1e-10 leaves room for that and catches any real difference (a
// float32 step anywhere would show as ~1e-7). The GGUF files measure ~1e-13: GGUF stores the norm
// epsilon as float32 (1e-5 becomes 9.99999975e-06), as llama.cpp's converter does.
constexpr double kGoldenTolerance = 1e-10;

const char* const kGoldenCases[] = {"gpt2", "llama_gqa_tied", "llama_linear_rope", "llama3_rope"};

std::filesystem::path golden_dir(const std::string& name) { return test::repo_root() / "tests/models/golden" / name; }

// max|a - b| / max|b|
double relative_error(std::span<const double> a, std::span<const double> b) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < b.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
        max_ref = std::max(max_ref, std::abs(b[i]));
    }
    return max_diff / max_ref;
}

enum class Source { Safetensors, GGUF };

GPTModel load(const std::string& name, Source source) {
    if (source == Source::Safetensors) return GPTModel::from_safetensors(golden_dir(name));
    return GPTModel::from_gguf(gguf::File::open(golden_dir(name) / "model.gguf"));
}

class GoldenTest : public ::testing::TestWithParam<std::tuple<const char*, Source>> {};

TEST_P(GoldenTest, MatchesTransformersFloat64) {
    const auto [name, source] = GetParam();
    TWINFER_REQUIRE_FILE(golden_dir(name) / "golden.bin");
    GPTModel model = load(name, source);
    const int n_layer = model.config().n_layer;

    // transformers' hidden states: [0] embeddings, [i] block i-1's output (i < n_layer),
    // [n_layer] the final norm's output.
    std::map<std::pair<std::string, int>, std::vector<double>> seen;
    model.set_observer([&](std::string_view step, int layer, std::span<const double> values) {
        if (step == "inp_embd" || step == "l_out" || step == "result_norm") seen[{std::string(step), layer}].assign(values.begin(), values.end());
    });
    auto hidden_name = [&](size_t i) -> std::pair<std::string, int> {
        if (i == 0) return {"inp_embd", -1};
        if (i == static_cast<size_t>(n_layer)) return {"result_norm", -1};
        return {"l_out", static_cast<int>(i) - 1};
    };

    for (const GoldenSequence& golden : read_golden(golden_dir(name) / "golden.bin")) {
        model.clear_cache();
        const Logits logits = model.forward(golden.tokens, LogitsMode::All);
        ASSERT_EQ(logits.n_positions, golden.tokens.size());
        ASSERT_EQ(logits.n_vocab, golden.n_vocab);
        EXPECT_EQ(model.n_past(), golden.tokens.size());

        ASSERT_EQ(golden.n_hidden, static_cast<size_t>(n_layer) + 1);
        const size_t hidden_size = golden.tokens.size() * golden.n_embd;
        std::string first_astray;
        for (size_t i = 0; i < golden.n_hidden; ++i) {
            const auto key = hidden_name(i);
            const std::span<const double> expected(golden.hidden.data() + i * hidden_size, hidden_size);
            const double error = relative_error(seen.at(key), expected);
            std::printf("    %-18s %-12s layer %2d: max|d|/max|ref| = %.3g\n", name, key.first.c_str(), key.second, error);
            if (error > kGoldenTolerance && first_astray.empty()) first_astray = key.first + " of layer " + std::to_string(key.second);
        }
        const double error = relative_error(logits.values, golden.logits);
        std::printf("  %-20s %-11s %2zu tokens: logits max|d|/max|ref| = %.3g\n", name,
                    source == Source::GGUF ? "GGUF" : "safetensors", golden.tokens.size(), error);
        EXPECT_LE(error, kGoldenTolerance) << "first hidden state astray: " << first_astray;

        // Fed in two calls, the second call's positions must give the same logits.
        if (golden.tokens.size() >= 2) {
            model.clear_cache();
            const size_t split = golden.tokens.size() / 2;
            const std::span<const Token> tokens(golden.tokens);
            model.forward(tokens.first(split));
            const Logits rest = model.forward(tokens.subspan(split), LogitsMode::All);
            ASSERT_EQ(rest.n_positions, tokens.size() - split);
            EXPECT_LE(relative_error(rest.values, std::span(golden.logits).subspan(split * golden.n_vocab)), kGoldenTolerance);
            const Logits last = (model.clear_cache(), model.forward(tokens));
            ASSERT_EQ(last.n_positions, 1u);
            EXPECT_LE(relative_error(last.values, std::span(golden.logits).last(golden.n_vocab)), kGoldenTolerance);
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTest,
                         ::testing::Combine(::testing::ValuesIn(kGoldenCases), ::testing::Values(Source::Safetensors, Source::GGUF)),
                         [](const auto& info) {
                             return std::string(std::get<0>(info.param)) + (std::get<1>(info.param) == Source::GGUF ? "_gguf" : "_safetensors");
                         });

TEST(GPTModelConfig, HuggingFaceConfigs) {
    TWINFER_REQUIRE_FILE(golden_dir("llama3_rope") / "config.json");
    const GPTModel gpt2 = GPTModel::from_safetensors(golden_dir("gpt2"));
    EXPECT_EQ(gpt2.config().architecture, Architecture::GPT2);
    EXPECT_EQ(gpt2.config().n_ff, 128);
    EXPECT_EQ(gpt2.n_ctx(), 32u);
    const GPTModel llama = GPTModel::from_safetensors(golden_dir("llama3_rope"));
    EXPECT_EQ(llama.config().rope_layout, RopeLayout::NeoX);
    EXPECT_EQ(llama.config().n_head_kv, 1);
    EXPECT_EQ(llama.config().rope_scaling.kind, RopeScaling::Kind::Llama3);
    EXPECT_EQ(llama.config().rope_scaling.original_context, 64);
    const GPTModel linear = GPTModel::from_safetensors(golden_dir("llama_linear_rope"));
    EXPECT_EQ(linear.config().head_dim, 16);
    EXPECT_EQ(linear.config().rope_scaling.kind, RopeScaling::Kind::Linear);
    EXPECT_DOUBLE_EQ(linear.config().rope_scaling.factor, 2.0);
    EXPECT_DOUBLE_EQ(linear.config().rope_freq_base, 500.0);
}

TEST(GPTModelContext, OverflowLeavesHistoryUnchanged) {
    TWINFER_REQUIRE_FILE(golden_dir("gpt2") / "model.gguf");
    const gguf::File file = gguf::File::open(golden_dir("gpt2") / "model.gguf");
    GPTModel model = GPTModel::from_gguf(file, 8);
    EXPECT_EQ(model.n_ctx(), 8u);
    const std::vector<Token> six(6, 3);
    model.forward(six);
    EXPECT_THROW(model.forward(six), ContextOverflow);
    EXPECT_EQ(model.n_past(), 6u);
    model.forward(std::vector<Token>{1, 2});
    EXPECT_EQ(model.n_past(), 8u);
    EXPECT_THROW(model.forward(std::vector<Token>{1}), ContextOverflow);
    model.clear_cache();
    EXPECT_EQ(model.n_past(), 0u);
    EXPECT_THROW(model.forward(std::vector<Token>{128}), std::out_of_range);
    EXPECT_THROW(model.forward(std::vector<Token>{}), std::invalid_argument);
    EXPECT_THROW(GPTModel::from_gguf(file, 33), std::invalid_argument);   // GPT-2 learned 32 positions
}

// ---------------------------------------------------------------------------------------------
// Bad input: every error names what is wrong.

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no error)";
}

// A golden GGUF file rewritten with some metadata replaced, some tensors left out, and some
// tensors put in (zero-filled F64 of the given ggml dims, replacing any of that name).
struct GGUFEdit {
    std::map<std::string, gguf::Value> metadata;
    std::set<std::string> drop;
    std::map<std::string, std::vector<uint64_t>> put;
};

std::vector<std::byte> edited(const gguf::File& file, const GGUFEdit& edit) {
    gguf::Writer writer;
    for (const auto& [key, value] : file.metadata())
        if (key != "general.alignment") writer.set(key, edit.metadata.contains(key) ? edit.metadata.at(key) : value);
    for (const auto& t : file.tensors())
        if (!edit.drop.contains(t.name) && !edit.put.contains(t.name)) writer.add_tensor(t.name, t.dims, t.type, t.data);
    for (const auto& [name, dims] : edit.put) {
        uint64_t n = 1;
        for (uint64_t d : dims) n *= d;
        const std::vector<std::byte> zeros(n * sizeof(double));
        writer.add_tensor(name, dims, GGMLType::F64, zeros);
    }
    return writer.to_bytes();
}

std::string load_error(const std::string& golden_case, const GGUFEdit& edit) {
    const gguf::File original = gguf::File::open(golden_dir(golden_case) / "model.gguf");
    const std::vector<std::byte> bytes = edited(original, edit);
    return error_of([&] { GPTModel::from_gguf(gguf::File::parse(bytes, "edited.gguf")); });
}

TEST(GPTModelBadInput, UnknownArchitecture) {
    TWINFER_REQUIRE_FILE(golden_dir("gpt2") / "model.gguf");
    GGUFEdit edit;
    edit.metadata["general.architecture"] = gguf::Value{std::string("mamba")};
    const std::string error = load_error("gpt2", edit);
    EXPECT_NE(error.find("unknown architecture 'mamba'"), std::string::npos) << error;

    const auto dir = test::scratch_dir() / "mamba";
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << R"({"model_type": "mamba", "vocab_size": 10})";
    const std::string hf_error = error_of([&] { GPTModel::from_safetensors(dir); });
    EXPECT_NE(hf_error.find("unknown architecture 'mamba'"), std::string::npos) << hf_error;
}

TEST(GPTModelBadInput, MissingTensor) {
    TWINFER_REQUIRE_FILE(golden_dir("gpt2") / "model.gguf");
    GGUFEdit edit;
    edit.drop.insert("blk.1.ffn_up.weight");
    const std::string error = load_error("gpt2", edit);
    EXPECT_NE(error.find("tensor blk.1.ffn_up.weight is missing"), std::string::npos) << error;
    EXPECT_NE(error.find("ggml dims [32, 128]"), std::string::npos) << error;
}

TEST(GPTModelBadInput, WrongShape) {
    TWINFER_REQUIRE_FILE(golden_dir("llama_gqa_tied") / "model.gguf");
    // 2 KV heads of 8: attn_k is [32 inputs, 16 outputs] in ggml order.
    GGUFEdit edit;
    edit.put["blk.0.attn_k.weight"] = {32, 32};
    const std::string error = load_error("llama_gqa_tied", edit);
    EXPECT_NE(error.find("tensor blk.0.attn_k.weight has ggml dims [32, 32]"), std::string::npos) << error;
    EXPECT_NE(error.find("need ggml dims [32, 16]"), std::string::npos) << error;
}

TEST(GPTModelBadInput, TensorTheForwardPassWouldIgnore) {
    TWINFER_REQUIRE_FILE(golden_dir("llama_gqa_tied") / "model.gguf");
    GGUFEdit edit;
    edit.put["blk.0.attn_q_norm.weight"] = {8};
    const std::string error = load_error("llama_gqa_tied", edit);
    EXPECT_NE(error.find("tensor blk.0.attn_q_norm.weight has no place"), std::string::npos) << error;
}

// ---------------------------------------------------------------------------------------------
// Real models, greedy decoding.

using test::greedy;

TEST(GPTModelStories260K, GreedyFromBos) {
    const auto path = test::third_party_testdata() / "models/stories260K.gguf";
    TWINFER_REQUIRE_FILE(path);
    const gguf::File file = gguf::File::open(path);
    GPTModel model = GPTModel::from_gguf(file);
    const std::vector<Token> expected = {
        403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
        410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352,
        266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415,
        426, 13,  438, 310, 439, 419, 357, 336, 432, 313, 438, 310, 432, 278, 316, 439, 419, 298, 414, 267,
        265, 282, 295, 433, 426, 436, 317, 286, 296, 418, 269, 279, 292, 416, 439, 413, 409, 416, 327, 263,
        415, 294, 267, 400, 426, 338, 336, 432, 313, 442, 391, 267, 337, 335, 364, 420, 268, 388, 432, 398,
        359, 280, 303, 439, 413, 272, 417, 264, 312, 426, 436, 13,  438, 310, 286, 296, 418, 269, 279, 292,
        416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 338, 336, 432, 313, 442, 439, 423, 262,
        304, 420, 422, 432, 317, 426, 359, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400,
        426, 436, 13,  438, 310, 279, 292, 416, 439, 413, 391, 267, 281, 421, 427, 311, 357, 432, 384, 358,
    };
    const std::vector<Token> ids = greedy(model, {1}, expected.size());
    EXPECT_EQ(ids, expected);
    const std::string text = Tokenizer::from_gguf(file).decode(ids);
    std::printf("stories260K: %s\n", text.c_str());
    EXPECT_TRUE(text.starts_with("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.")) << text;
}

// SmolLM2-135M-Instruct, Q4_1 dequantized to float64 (~1 GB; each step recomputes the whole
// sequence, so only 8 tokens). The ids are also those of transformers' tokenizer for this file
// (AutoTokenizer.from_pretrained(dir, gguf_file=...)): prompt "The| capital| of| France| is" (no
// BOS: the file's tokenizer adds none); the continuation is the same 8 tokens transformers'
// own greedy decoding of this GGUF gives.
TEST(GPTModelSmolLM2, GreedyCapitalOfFrance) {
    const auto path = test::smollm2_path();
    TWINFER_REQUIRE_FILE(path);
    const gguf::File file = gguf::File::open(path);
    const Tokenizer tokenizer = Tokenizer::from_gguf(file);
    const std::vector<Token> prompt = tokenizer.encode("The capital of France is", true, false);
    ASSERT_EQ(prompt, (std::vector<Token>{504, 3575, 282, 4649, 314}));
    GPTModel model = GPTModel::from_gguf(file);
    const std::vector<Token> expected = {7042, 30, 198, 198, 504, 2988, 314, 42};
    const std::vector<Token> ids = greedy(model, prompt, expected.size());
    EXPECT_EQ(ids, expected);
    EXPECT_EQ(tokenizer.decode(ids), " Paris.\n\nThe answer is:");
}

}  // namespace
}  // namespace twinfer
