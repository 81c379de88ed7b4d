// InferenceEngine::generate on stories260K: the cache kept for a prompt prefix shared with what the
// model has seen, control tokens left out of the text, and a hostile chat template contained.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "format/gguf.hpp"

namespace twinfer {
namespace {

std::filesystem::path stories() { return test::third_party_testdata() / "models" / "stories260K.gguf"; }

InferenceEngine load_stories(Precision precision) {
    BackendOptions options;
    options.model = stories();
    options.precision = precision;
    options.device = DeviceChoice::CPU;
    options.n_threads = 2;
    return InferenceEngine::load(options);
}

GenerateOptions greedy(int max_tokens) {
    GenerateOptions options;
    options.max_tokens = max_tokens;
    options.sampling.temperature = 0;
    options.ignore_eos = true;
    return options;
}

TEST(EngineGenerate, ReusesExactlyTheCommonPrefixAndGeneratesAsFromScratch) {
    TWINFER_REQUIRE_FILE(stories());
    for (const Precision precision : {Precision::F32, Precision::F64}) {
        SCOPED_TRACE(precision_name(precision));
        auto engine = load_stories(precision);
        const auto first = engine.tokenize("Once upon a time, there was a little girl", true, false);
        const auto first_result = engine.generate(first, greedy(8));
        EXPECT_EQ(first_result.stats.reused_tokens, 0u);
        EXPECT_EQ(engine.n_past(), first.size() + 8);

        // The first 6 prompt tokens, then another ending: the cache is kept for those 6 only.
        const size_t shared = 6;
        auto second = std::vector<Token>(first.begin(), first.begin() + shared);
        const auto ending = engine.tokenize(" big dog who liked to run", false, false);
        second.insert(second.end(), ending.begin(), ending.end());
        ASSERT_NE(second[shared], first[shared]);
        const auto reused = engine.generate(second, greedy(16));
        EXPECT_EQ(reused.stats.reused_tokens, shared);
        EXPECT_EQ(reused.stats.prompt_tokens, second.size() - shared);

        engine.clear();
        const auto from_scratch = engine.generate(second, greedy(16));
        EXPECT_EQ(from_scratch.stats.reused_tokens, 0u);
        EXPECT_EQ(reused.tokens, from_scratch.tokens);
        EXPECT_EQ(reused.text, from_scratch.text);

        // A prompt the model has wholly seen: all but its last token are kept, so there are fresh logits.
        const auto again = engine.generate(second, greedy(16));
        EXPECT_EQ(again.stats.reused_tokens, second.size() - 1);
        EXPECT_EQ(again.stats.prompt_tokens, 1u);
        EXPECT_EQ(again.tokens, from_scratch.tokens);
    }
}

// --tensor-parallel 2 (CPU ranks) through the engine: the same greedy ids as one device, with the
// cache kept for a shared prefix on every rank (truncate_cache on each).
TEST(EngineGenerate, TensorParallelGeneratesAsOneDeviceAndReusesThePrefix) {
    TWINFER_REQUIRE_FILE(stories());
    auto one = load_stories(Precision::F32);
    BackendOptions options;
    options.model = stories();
    options.device = DeviceChoice::CPU;
    options.n_threads = 2;
    options.tensor_parallel = 2;
    auto split = InferenceEngine::load(options);
    EXPECT_NE(split.backend_name().find("TensorParallelLlamaModel (f32, cpu, 2 ranks"), std::string::npos) << split.backend_name();
    const auto prompt = one.tokenize("Once upon a time, there was a little girl", true, false);
    EXPECT_EQ(split.generate(prompt, greedy(24)).tokens, one.generate(prompt, greedy(24)).tokens);
    auto second = std::vector<Token>(prompt.begin(), prompt.begin() + 6);
    const auto ending = one.tokenize(" big dog who liked to run", false, false);
    second.insert(second.end(), ending.begin(), ending.end());
    const auto reused = split.generate(second, greedy(16));
    EXPECT_EQ(reused.stats.reused_tokens, 6u);
    one.clear();
    EXPECT_EQ(reused.tokens, one.generate(second, greedy(16)).tokens);
}

TEST(EngineGenerate, ControlTokensAreLeftOutOfTheTextUnlessSpecial) {
    TWINFER_REQUIRE_FILE(stories());
    auto engine = load_stories(Precision::F32);
    const auto bos = engine.tokenizer().bos();
    ASSERT_TRUE(bos.has_value());
    const std::string bos_text = engine.tokenizer().token_text(*bos);
    ASSERT_EQ(bos_text, "<s>");
    const auto prompt = engine.tokenize("Once upon a time", true, false);

    // Greedy ends the first story with <s> (a control token, not an end of generation) and
    // starts another.
    const auto plain = engine.generate(prompt, greedy(400));
    ASSERT_NE(std::find(plain.tokens.begin(), plain.tokens.end(), *bos), plain.tokens.end()) << "no <s> in 400 greedy tokens";
    EXPECT_EQ(plain.text.find(bos_text), std::string::npos) << plain.text;

    auto with_special = greedy(400);
    with_special.special = true;
    const auto special = engine.generate(prompt, with_special);
    EXPECT_EQ(special.tokens, plain.tokens);
    EXPECT_NE(special.text.find(bos_text), std::string::npos) << special.text;
}

// A model file whose chat template is hostile (here: nested past the parser's limit) still loads
// and generates; only rendering a chat fails, with the limit named.
TEST(EngineChatTemplate, AHostileTemplateFailsOnlyWhatRendersIt) {
    TWINFER_REQUIRE_FILE(stories());
    const gguf::File source = gguf::File::open(stories());
    gguf::Writer copy;
    for (const auto& [key, value] : source.metadata())
        if (key != "general.alignment") copy.set(key, value);
    copy.set_string("tokenizer.chat_template", "{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}");
    for (const gguf::TensorInfo& t : source.tensors()) copy.add_tensor(t.name, t.dims, t.type, t.data);
    const auto path = test::scratch_dir() / "hostile-template.gguf";
    copy.write(path);

    BackendOptions options;
    options.model = path;
    options.device = DeviceChoice::CPU;
    auto engine = InferenceEngine::load(options);
    EXPECT_EQ(engine.generate(engine.tokenize("Once upon a time", true, false), greedy(4)).tokens.size(), 4u);
    const std::vector<ChatMessage> messages = {{"user", "hi"}};
    try {
        engine.render_chat(messages, true);
        FAIL() << "rendered a chat with a template past the nesting limit";
    } catch (const ChatTemplateError& e) {
        EXPECT_NE(std::string(e.what()).find("(the nesting limit)"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace twinfer
