// YaRN and LongRoPE metadata (ModelConfig::from_gguf, rope_frequency_scaling): what a file's keys
// and factor tensors resolve to, which LongRoPE set a context picks, and hostile values (an error
// naming the key or tensor). The numbers against transformers: transformer_golden_test.cpp
// (qwen2_yarn, phi3_longrope).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "format/gguf.hpp"
#include "models/model_config.hpp"

namespace twinfer {
namespace {

// A phi3 (or `arch`) file's hyper-parameters, 8 rotated dimensions (4 pairs) of heads of 8, a
// trained context of 64, and one norm tensor (so that block_count is backed); `extra` adds keys and
// tensors. Parsed from memory: the writer's bytes must outlive the File.
struct TestFile {
    std::unique_ptr<const std::vector<std::byte>> bytes;
    gguf::File file;
};

TestFile make_file(const std::function<void(gguf::Writer&)>& extra, const std::string& arch = "phi3") {
    gguf::Writer w;
    const std::string p = arch + ".";
    w.set_string("general.architecture", arch);
    w.set_u32(p + "block_count", 1);
    w.set_u32(p + "context_length", 64);
    w.set_u32(p + "embedding_length", 32);
    w.set_u32(p + "feed_forward_length", 48);
    w.set_u32(p + "attention.head_count", 4);
    w.set_u32(p + "attention.head_count_kv", 2);
    w.set_u32(p + "rope.dimension_count", 8);
    w.set_u32(p + "vocab_size", 16);
    w.set_f32(p + "attention.layer_norm_rms_epsilon", 1e-5f);
    const std::vector<float> norm(32, 1.0f);
    w.add_tensor("blk.0.attn_norm.weight", {32}, GGMLType::F32, std::as_bytes(std::span(norm)));
    extra(w);
    auto bytes = std::make_unique<const std::vector<std::byte>>(w.to_bytes());
    gguf::File file = gguf::File::parse(*bytes);
    return {std::move(bytes), std::move(file)};
}

void add_factors(gguf::Writer& w, const std::string& name, const std::vector<float>& values) {
    w.add_tensor(name, {values.size()}, GGMLType::F32, std::as_bytes(std::span(values)));
}

// LongRoPE as Phi-3's converter writes it: no scaling type, the two factor tensors, the original
// context and the attention factor.
void longrope(gguf::Writer& w) {
    w.set_u32("phi3.rope.scaling.original_context_length", 16);
    w.set_f32("phi3.rope.scaling.attn_factor", 1.25f);
    add_factors(w, "rope_factors_short.weight", {1.0f, 1.5f, 2.0f, 3.0f});
    add_factors(w, "rope_factors_long.weight", {1.0f, 4.0f, 8.0f, 16.0f});
}

void yarn(gguf::Writer& w) {
    w.set_string("phi3.rope.scaling.type", "yarn");
    w.set_f32("phi3.rope.scaling.factor", 4.0f);
    w.set_u32("phi3.rope.scaling.original_context_length", 16);
}

// The error from_gguf throws for the file, which must name `expected`.
void expect_refused(const std::function<void(gguf::Writer&)>& extra, const std::string& expected, const std::string& arch = "phi3") {
    const TestFile t = make_file(extra, arch);
    try {
        ModelConfig::from_gguf(t.file);
        ADD_FAILURE() << "accepted; expected an error naming '" << expected << "'";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// llama.cpp's get_rope_factors: the long factors for a context beyond the original one, else the
// short; the magnitude is the file's attn_factor either way.
TEST(RopeScaling, LongRopePicksTheFactorSetByTheContext) {
    const TestFile t = make_file(longrope);
    const ModelConfig c = ModelConfig::from_gguf(t.file);
    ASSERT_EQ(c.rope_scaling.kind, RopeScaling::Kind::LongRope);
    const RopeFrequencyScaling at_original = rope_frequency_scaling(c, 16), beyond = rope_frequency_scaling(c, 17);
    EXPECT_EQ(at_original.divisors, (std::vector<double>{1.0, 1.5, 2.0, 3.0}));
    EXPECT_EQ(beyond.divisors, (std::vector<double>{1.0, 4.0, 8.0, 16.0}));
    EXPECT_EQ(at_original.magnitude, 1.25);
    EXPECT_EQ(beyond.magnitude, 1.25);
}

// Without attn_factor: transformers' default, sqrt(1 + ln(s) / ln(original)), s = 64 / 16.
TEST(RopeScaling, LongRopeMagnitudeDefaultsToTransformers) {
    const TestFile t = make_file([](gguf::Writer& w) {
        w.set_string("phi3.rope.scaling.type", "longrope");
        w.set_u32("phi3.rope.scaling.original_context_length", 16);
        add_factors(w, "rope_factors_short.weight", {1.0f, 1.0f, 1.0f, 1.0f});
        add_factors(w, "rope_factors_long.weight", {2.0f, 2.0f, 2.0f, 2.0f});
    });
    const ModelConfig c = ModelConfig::from_gguf(t.file);
    EXPECT_DOUBLE_EQ(rope_frequency_scaling(c, 64).magnitude, std::sqrt(1 + std::log(4.0) / std::log(16.0)));
}

// Base 100, 8 rotated dimensions, 16 original positions: beta_fast's dimension is below 0 (0),
// beta_slow's 8 ln(16 / 2 pi) / (2 ln 100) = 0.81, rounded up to 1: pair 0 keeps its frequency,
// the others are divided by the factor. Magnitude 0.1 ln 4 + 1.
TEST(RopeScaling, YarnDefaults) {
    const TestFile t = make_file([](gguf::Writer& w) {
        yarn(w);
        w.set_f32("phi3.rope.freq_base", 100.0f);
    });
    const ModelConfig c = ModelConfig::from_gguf(t.file);
    ASSERT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Yarn);
    const RopeFrequencyScaling r = rope_frequency_scaling(c, 64);
    EXPECT_EQ(r.divisors, (std::vector<double>{1.0, 4.0, 4.0, 4.0}));
    EXPECT_DOUBLE_EQ(r.magnitude, 0.1 * std::log(4.0) + 1);
    EXPECT_EQ(rope_frequency_scaling(c, 8).divisors, r.divisors);   // YaRN does not depend on the context
}

// The keys the converter copies from config.json: beta_fast and beta_slow move the ramp (here
// beta_slow 1/2: 8 ln(16 / pi) / (2 ln 100) = 1.41, up to 2; pair 1 half-way),
// yarn_attn_factor replaces the default magnitude and attn_factor multiplies it.
TEST(RopeScaling, YarnReadsTheFilesParameters) {
    const TestFile t = make_file([](gguf::Writer& w) {
        yarn(w);
        w.set_f32("phi3.rope.freq_base", 100.0f);
        w.set_f32("phi3.rope.scaling.yarn_beta_fast", 16.0f);
        w.set_f32("phi3.rope.scaling.yarn_beta_slow", 0.5f);
        w.set_f32("phi3.rope.scaling.yarn_attn_factor", 1.25f);
        w.set_f32("phi3.rope.scaling.attn_factor", 2.0f);
    });
    const RopeFrequencyScaling r = rope_frequency_scaling(ModelConfig::from_gguf(t.file), 64);
    ASSERT_EQ(r.divisors.size(), 4u);
    EXPECT_EQ(r.divisors[0], 1.0);
    EXPECT_DOUBLE_EQ(r.divisors[1], 1 / (0.5 / 4 + 0.5));
    EXPECT_EQ(r.divisors[2], 4.0);
    EXPECT_EQ(r.magnitude, 2.5);
}

// Local (sliding-window) layers of Gemma 3 keep the short-context RoPE, as with linear scaling.
TEST(RopeScaling, LocalLayersAreNotScaled) {
    const TestFile t = make_file(
        [](gguf::Writer& w) {
            w.set_string("gemma3.rope.scaling.type", "yarn");
            w.set_f32("gemma3.rope.scaling.factor", 8.0f);
            w.set_u32("gemma3.attention.sliding_window", 4);
            w.set_u32("gemma3.attention.sliding_window_pattern", 2);
            w.set_u32("gemma3.block_count", 2);
            const std::vector<float> norm(32, 1.0f);
            w.add_tensor("blk.1.attn_norm.weight", {32}, GGMLType::F32, std::as_bytes(std::span(norm)));
        },
        "gemma3");
    const ModelConfig c = ModelConfig::from_gguf(t.file);
    ASSERT_EQ(c.transformer.layers.size(), 2u);
    EXPECT_FALSE(c.transformer.layers[0].rope_scaled);
    EXPECT_TRUE(c.transformer.layers[1].rope_scaled);
}

TEST(RopeScaling, HostileYarnValuesAreErrors) {
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.factor", 0.0f); }, "rope.scaling.factor");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.factor", -2.0f); }, "rope.scaling.factor");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.factor", kNaN); }, "rope.scaling.factor");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_u32("phi3.rope.scaling.original_context_length", 0); },
                   "original_context_length");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.yarn_beta_fast", kNaN); }, "yarn_beta_fast");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.yarn_beta_slow", 0.0f); }, "yarn_beta_slow");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.yarn_attn_factor", kNaN); }, "yarn_attn_factor");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.yarn_log_multiplier", 0.1f); }, "yarn_log_multiplier");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.scaling.yarn_ext_factor", 0.5f); }, "yarn_ext_factor");
    expect_refused([](gguf::Writer& w) { yarn(w), w.set_f32("phi3.rope.freq_base", 1.0f); }, "rope.freq_base");
    expect_refused([](gguf::Writer& w) { w.set_string("phi3.rope.scaling.type", "dynamic"); }, "'dynamic' is not implemented");
}

TEST(RopeScaling, HostileLongRopeFactorsAreErrors) {
    expect_refused([](gguf::Writer& w) {
        w.set_string("phi3.rope.scaling.type", "longrope");
        add_factors(w, "rope_factors_short.weight", {1.0f, 1.0f, 1.0f, 1.0f});
    }, "needs both");
    expect_refused([](gguf::Writer& w) {
        add_factors(w, "rope_factors_short.weight", {1.0f, 1.0f, 1.0f});
        add_factors(w, "rope_factors_long.weight", {1.0f, 1.0f, 1.0f});
    }, "rope_factors_long.weight must hold 4 factors");
    expect_refused([](gguf::Writer& w) {
        add_factors(w, "rope_factors_short.weight", {1.0f, 0.0f, 1.0f, 1.0f});
        add_factors(w, "rope_factors_long.weight", {1.0f, 1.0f, 1.0f, 1.0f});
    }, "rope_factors_short.weight[1]");
    expect_refused([](gguf::Writer& w) {
        add_factors(w, "rope_factors_short.weight", {1.0f, 1.0f, 1.0f, 1.0f});
        add_factors(w, "rope_factors_long.weight", {1.0f, 1.0f, -4.0f, 1.0f});
    }, "rope_factors_long.weight[2]");
    expect_refused([](gguf::Writer& w) {
        add_factors(w, "rope_factors_short.weight", {1.0f, 1.0f, 1.0f, kNaN});
        add_factors(w, "rope_factors_long.weight", {1.0f, 1.0f, 1.0f, 1.0f});
    }, "rope_factors_short.weight[3]");
    expect_refused([](gguf::Writer& w) { longrope(w), w.set_u32("phi3.rope.scaling.original_context_length", 0); },
                   "original_context_length");
    expect_refused([](gguf::Writer& w) { longrope(w), w.set_f32("phi3.rope.scaling.attn_factor", kNaN); }, "attn_factor");
    expect_refused([](gguf::Writer& w) { longrope(w), w.set_string("phi3.rope.scaling.type", "yarn"); },
                   "with rope scaling type 'yarn'");
}

// The llama architecture (F32LlamaModel, the float64 Llama path) runs linear scaling and
// rope_freqs.weight only, and says so.
TEST(RopeScaling, LlamaRefusesYarnByName) {
    expect_refused([](gguf::Writer& w) {
        w.set_string("llama.rope.scaling.type", "yarn");
        w.set_f32("llama.rope.scaling.factor", 4.0f);
    }, "rope scaling type 'yarn' is not implemented for the llama architecture", "llama");
}

}  // namespace
}  // namespace twinfer
