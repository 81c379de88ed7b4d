// Out of memory in the server's scheduler (server/scheduler.hpp): a step whose pass runs out of
// memory runs again in smaller parts, and every sequence produces exactly the ids it produces
// alone; a sequence whose single token does not fit ends with FinishReason::OutOfMemory (HTTP 503,
// code "out_of_memory"), and the scheduler goes on serving the others and the next request.
//
// The faults are real allocation failures where they can be: the model's activation limit
// (F32Options::max_workspace_bytes, `serve --max-activation-memory`) throws compute::OutOfMemory
// for a pass of more rows than it allows, as a device would. A single row always fits that
// limit once four do, so the sequence whose one token cannot fit is made by the scheduler's
// before_pass seam instead, which throws for passes that hold a chosen token.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "server/openai_api.hpp"
#include "server/scheduler.hpp"
#include "server/scheduler_support.hpp"

namespace twinfer::server {
namespace {

using test_support::load_stories;
using test_support::stories;

// The bytes one row takes in F32LlamaModel's activation buffers (its reserve_workspace widths).
size_t activation_row_bytes(const ModelConfig& c) {
    const size_t E = c.n_embd, F = c.n_ff, V = c.n_vocab, QD = size_t(c.n_head) * c.head_dim, KVD = c.n_embd_kv();
    return (2 * E + 2 * QD + 2 * KVD + 2 * F + V) * sizeof(float);
}

struct Outcome {
    std::vector<Token> ids;
    std::optional<FinishReason> finish;
    std::string error;
};

// Every choice's events until each has finished (at most a minute).
std::vector<Outcome> collect(RequestChannel& channel, size_t n_choices) {
    std::vector<Outcome> outcomes(n_choices);
    test_support::read_events(channel, n_choices, [&](SequenceEvent& e) {
        Outcome& o = outcomes.at(e.choice);
        if (e.token) o.ids.push_back(*e.token);
        if (e.finish) o.finish = e.finish, o.error = e.error;
    });
    return outcomes;
}

SequenceParams greedy(const InferenceEngine& engine, const std::string& text, size_t max_tokens = 24) {
    SequenceParams p;
    p.prompt = engine.tokenize(text, true, false);
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;   // every sequence runs its max_tokens: the steps stay full
    return p;
}

const std::vector<std::string> kTexts = {"Once upon a time", "The little dog ran", "Lily and Tom went to the park",
                                         "One day, a big bird", "The sun was hot and", "There was a girl named Sue"};

// Each text served alone, by a scheduler whose passes never run out of memory.
std::vector<std::vector<Token>> ids_alone(const std::vector<std::string>& texts, const SchedulerOptions& options) {
    InferenceEngine engine = load_stories();
    Metrics metrics;
    Scheduler scheduler(engine, options, metrics);
    std::vector<std::vector<Token>> result;
    for (const std::string& text : texts) {
        const auto outcomes = collect(*scheduler.submit({greedy(engine, text)}), 1);
        EXPECT_EQ(outcomes[0].finish, FinishReason::Length) << text << ": " << outcomes[0].error;
        result.push_back(outcomes[0].ids);
    }
    EXPECT_EQ(metrics.steps_out_of_memory, 0u);
    // The passes take time, and within the steps' time.
    EXPECT_GT(metrics.pass_nanoseconds, 0u);
    EXPECT_LE(metrics.pass_nanoseconds, metrics.step_nanoseconds);
    return result;
}

class ServerOutOfMemory : public ::testing::TestWithParam<RowProducts> {};

// Six sequences at once under an activation limit of five rows: the first step (six prompts, ~40
// rows) and every full decode step (six rows) run out of memory and are split, prompt chunks down
// to four rows (a Tiled pass's least), decode steps into halves. Each sequence's ids equal its ids
// alone, bit for bit.
TEST_P(ServerOutOfMemory, EverySequenceOfAStepTooLargeGetsItsIdsAlone) {
    TWINFER_REQUIRE_FILE(stories());
    const SchedulerOptions options{.n_slots = kTexts.size(), .decode_products = GetParam()};
    const auto alone = ids_alone(kTexts, options);

    const size_t row_bytes = activation_row_bytes(load_stories().config());
    InferenceEngine engine = load_stories(5 * row_bytes);
    Metrics metrics;
    Scheduler scheduler(engine, options, metrics);
    std::vector<SequenceParams> choices;
    for (const std::string& text : kTexts) choices.push_back(greedy(engine, text));
    const auto outcomes = collect(*scheduler.submit(std::move(choices)), kTexts.size());   // admitted together

    for (size_t i = 0; i < kTexts.size(); ++i) {
        EXPECT_EQ(outcomes[i].finish, FinishReason::Length) << kTexts[i] << ": " << outcomes[i].error;
        EXPECT_EQ(outcomes[i].ids, alone[i]) << kTexts[i] << ": the ids differ from the sequence's alone";
    }
    EXPECT_GT(metrics.steps_out_of_memory, 0u) << "no pass ran out of memory: the limit tests nothing";
    EXPECT_EQ(metrics.sequences_failed, 0u);
    // The passes that ran fit the limit: five rows a pass at most, on average.
    EXPECT_LE(metrics.step_rows, 5 * metrics.steps);

    // The limit counts in the next request too.
    const auto next = collect(*scheduler.submit({greedy(engine, kTexts[2])}), 1);
    EXPECT_EQ(next[0].finish, FinishReason::Length) << next[0].error;
    EXPECT_EQ(next[0].ids, alone[2]);
}

INSTANTIATE_TEST_SUITE_P(DecodeProducts, ServerOutOfMemory, ::testing::Values(RowProducts::Single, RowProducts::Tiled),
                         [](const auto& info) { return std::string(info.param == RowProducts::Single ? "Single" : "Tiled"); });

// A token of `text`'s prompt that is in no other prompt of `others` nor in any of their ids alone.
Token token_only_in(const InferenceEngine& engine, const std::string& text, const std::vector<std::string>& others,
                    const std::vector<std::vector<Token>>& others_ids) {
    const std::vector<Token> prompt = engine.tokenize(text, true, false);
    for (size_t i = 1; i < prompt.size(); ++i) {   // past BOS
        bool elsewhere = false;
        for (const std::string& other : others) {
            const std::vector<Token> ids = engine.tokenize(other, true, false);
            elsewhere = elsewhere || std::find(ids.begin(), ids.end(), prompt[i]) != ids.end();
        }
        for (const auto& ids : others_ids) elsewhere = elsewhere || std::find(ids.begin(), ids.end(), prompt[i]) != ids.end();
        if (!elsewhere) return prompt[i];
    }
    ADD_FAILURE() << "every token of \"" << text << "\" is also elsewhere";
    return 0;
}

// A pass holding `poison` throws `Fault`, whatever else it holds.
template <class Fault>
SchedulerOptions failing_on(Token poison, SchedulerOptions options) {
    options.before_pass = [poison](std::span<const SlotToken> rows) {
        for (const SlotToken& row : rows)
            if (row.token == poison) throw Fault("test fault: no memory for a pass with token " + std::to_string(poison));
    };
    return options;
}

const std::string kDoomed = "Zebras sing xylophone songs";

// Three requests submitted at once with kDoomed, whose token `poison` (in no other request's ids)
// makes every pass holding it throw Exception; a scheduler of four slots, kept for the next
// requests. alone: served[i]'s ids when served alone (served: the three, then the next request).
struct BesideTheDoomed {
    std::vector<std::string> others, served;
    std::vector<std::vector<Token>> alone;
    InferenceEngine engine;
    Metrics metrics;
    std::unique_ptr<Scheduler> scheduler;
    std::vector<Outcome> outcomes;   // the three others', then the doomed one's

    template <class Exception>
    static std::unique_ptr<BesideTheDoomed> run() {
        auto b = std::unique_ptr<BesideTheDoomed>(new BesideTheDoomed{
            {kTexts.begin(), kTexts.begin() + 3}, {kTexts.begin(), kTexts.begin() + 4}, {}, load_stories(), {}, {}, {}});
        const SchedulerOptions plain{.n_slots = 4};
        b->alone = ids_alone(b->served, plain);
        const Token poison = token_only_in(b->engine, kDoomed, b->served, b->alone);
        b->scheduler = std::make_unique<Scheduler>(b->engine, failing_on<Exception>(poison, plain), b->metrics);
        std::vector<SequenceParams> choices;
        for (const std::string& text : b->others) choices.push_back(greedy(b->engine, text));
        choices.push_back(greedy(b->engine, kDoomed));
        b->outcomes = collect(*b->scheduler->submit(std::move(choices)), 4);   // all four in the first pass
        return b;
    }
    // The request after them, served as it is alone.
    void expect_next_served() {
        const auto next = collect(*scheduler->submit({greedy(engine, kTexts[3])}), 1);
        EXPECT_EQ(next[0].finish, FinishReason::Length) << next[0].error;
        EXPECT_EQ(next[0].ids, alone[3]);
    }
};

// One sequence's single token never fits: that sequence ends with OutOfMemory (a 503 naming out of
// memory), the three beside it in the same steps get their ids alone, and so does the next request.
TEST(ServerOutOfMemoryOneToken, OnlyTheSequenceThatCannotFitEndsAndTheServerGoesOn) {
    TWINFER_REQUIRE_FILE(stories());
    const auto b = BesideTheDoomed::run<compute::OutOfMemory>();
    for (size_t i = 0; i < b->others.size(); ++i) {
        EXPECT_EQ(b->outcomes[i].finish, FinishReason::Length) << b->others[i] << ": " << b->outcomes[i].error;
        EXPECT_EQ(b->outcomes[i].ids, b->alone[i]) << b->others[i];
    }
    const Outcome& doomed = b->outcomes[3];
    EXPECT_EQ(doomed.finish, FinishReason::OutOfMemory) << doomed.error;
    EXPECT_TRUE(doomed.ids.empty());
    EXPECT_NE(doomed.error.find("out of memory: even a step of this sequence's single next token"), std::string::npos) << doomed.error;
    EXPECT_NE(doomed.error.find("test fault: no memory"), std::string::npos) << doomed.error;
    EXPECT_EQ(b->metrics.sequences_failed, 1u);
    EXPECT_GT(b->metrics.steps_out_of_memory, 0u);

    // What a client gets: 503, code out_of_memory, the message as the scheduler wrote it.
    const ApiError api = finish_error(FinishReason::OutOfMemory, doomed.error);
    EXPECT_EQ(api.status, 503);
    EXPECT_EQ(api.code, "out_of_memory");
    EXPECT_EQ(api.type, "server_error");
    EXPECT_EQ(std::string(api.what()), doomed.error);

    // The next request is served, into whichever slot, the doomed one's included.
    for (int i = 0; i < 2; ++i) b->expect_next_served();
}

// Any other exception keeps its behaviour: every sequence of the failed pass ends with Error ("the
// model failed"), nothing is retried, and the next request is served.
TEST(ServerOutOfMemoryOneToken, OtherErrorsFailTheWholePass) {
    TWINFER_REQUIRE_FILE(stories());
    const auto b = BesideTheDoomed::run<std::runtime_error>();
    for (const Outcome& o : b->outcomes) {
        EXPECT_EQ(o.finish, FinishReason::Error);
        EXPECT_NE(o.error.find("the model failed: test fault"), std::string::npos) << o.error;
    }
    EXPECT_EQ(b->metrics.steps_out_of_memory, 0u);
    EXPECT_EQ(b->metrics.sequences_failed, 4u);
    b->expect_next_served();
}

}  // namespace
}  // namespace twinfer::server
