// Completions' echo with logprobs (SequenceParams::score_prompt): the scheduler scores each prompt
// token from the rows of the prompt it reads anyway, in chunks between other sequences' decode
// steps. The scores must not depend on what else runs or where the prompt is cut, and must follow
// the model's own prompt pass (InferenceEngine::evaluate_all, `twinfer perplexity`'s path).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "server/scheduler.hpp"
#include "server/scheduler_support.hpp"

namespace twinfer::server {
namespace {

using test_support::load_stories;

struct Choice {
    std::vector<ScoredToken> prompt_scores;
    size_t score_events = 0;
    std::vector<Token> ids;
    std::vector<double> logprobs;
    std::optional<FinishReason> finish;
    size_t completion_tokens = 0;
};

std::vector<Choice> collect(RequestChannel& channel, size_t n_choices) {
    std::vector<Choice> choices(n_choices);
    test_support::read_events(channel, n_choices, [&](SequenceEvent& e) {
        Choice& c = choices.at(e.choice);
        if (!e.prompt_scores.empty()) {
            c.score_events += 1;
            c.prompt_scores = std::move(e.prompt_scores);
        }
        if (e.token) c.ids.push_back(*e.token), c.logprobs.push_back(e.logprob.value_or(NAN));
        if (e.finish) c.finish = e.finish, c.completion_tokens = e.completion_tokens;
    });
    return choices;
}

// log p(token) in a row of logits, computed here independently of the scheduler.
double log_prob(std::span<const double> row, Token token) {
    const double max = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (double l : row) sum += std::exp(l - max);
    return row[size_t(token)] - max - std::log(sum);
}

std::vector<Token> long_prompt(const InferenceEngine& engine) {
    std::string text;
    for (int i = 0; i < 12; ++i) text += "Once upon a time there was a little girl named Lily. She liked to play in the park. ";
    return engine.tokenize(text, true, false);
}

TEST(ServerPromptScores, EqualAloneAndBesideOthersAndFollowTheModelsPromptPass) {
    InferenceEngine engine = load_stories();
    const std::vector<Token> prompt = long_prompt(engine);
    ASSERT_GT(prompt.size(), 150u) << "the prompt must take several chunks of 64";
    const Logits reference = engine.evaluate_all(prompt);

    Metrics metrics;
    Scheduler scheduler(engine, {.n_slots = 4, .prompt_chunk = 64}, metrics);
    SequenceParams scored;
    scored.prompt = prompt;
    scored.sampling.temperature = 0;
    scored.max_tokens = 3;
    scored.logprobs = true;
    scored.top_logprobs = 3;
    scored.score_prompt = true;
    const Choice alone = collect(*scheduler.submit({scored}), 1)[0];
    // Beside two plain greedy sequences: their prompts share the first chunk with it, so its
    // prompt is cut at other places, and they decode while it is read.
    SequenceParams plain;
    plain.prompt = engine.tokenize("Lily went to the park", true, false);
    plain.sampling.temperature = 0;
    plain.max_tokens = 40;
    const std::vector<Choice> beside = collect(*scheduler.submit({plain, scored, plain}), 3);

    ASSERT_EQ(alone.score_events, 1u);
    ASSERT_EQ(alone.prompt_scores.size(), prompt.size() - 1);
    // Rows never depend on the other rows of their pass: the same scores to the last bit.
    const Choice& c = beside[1];
    ASSERT_EQ(c.prompt_scores.size(), alone.prompt_scores.size());
    for (size_t i = 0; i < c.prompt_scores.size(); ++i) {
        ASSERT_EQ(c.prompt_scores[i].logprob, alone.prompt_scores[i].logprob) << i;
        ASSERT_EQ(c.prompt_scores[i].top_logprobs.size(), 3u);
        for (size_t k = 0; k < 3; ++k) {
            EXPECT_EQ(c.prompt_scores[i].top_logprobs[k].id, alone.prompt_scores[i].top_logprobs[k].id);
            EXPECT_EQ(c.prompt_scores[i].top_logprobs[k].logprob, alone.prompt_scores[i].top_logprobs[k].logprob);
        }
    }
    EXPECT_EQ(c.ids, alone.ids);
    EXPECT_EQ(c.logprobs, alone.logprobs);

    // Against the model's prompt pass (`twinfer perplexity`'s): the server computes its rows'
    // logits with the decode step's output product (SchedulerOptions::decode_products), the
    // prompt pass with the tiled one; float32 sums in another order, within 1e-4 of a logprob.
    double worst = 0;
    for (size_t i = 0; i + 1 < prompt.size(); ++i) {
        const ScoredToken& s = alone.prompt_scores[i];
        ASSERT_EQ(s.id, prompt[i + 1]) << i;
        const std::span<const double> row = reference.row(i);
        worst = std::max(worst, std::abs(s.logprob - log_prob(row, prompt[i + 1])));
        // The alternatives: most likely first, the first the row's most likely.
        for (size_t k = 1; k < 3; ++k) EXPECT_GE(s.top_logprobs[k - 1].logprob, s.top_logprobs[k].logprob) << i;
        const Token best = Token(std::max_element(row.begin(), row.end()) - row.begin());
        EXPECT_NEAR(s.top_logprobs[0].logprob, log_prob(row, best), 1e-4) << i;
        EXPECT_GE(s.top_logprobs[0].logprob, s.logprob) << i;
    }
    EXPECT_LE(worst, 1e-4);
    EXPECT_GT(worst, 0.0) << "the two products agree to the last bit: tighten the budget to equality";
    // Then it generates as any sequence: the first token from the prompt's last row.
    ASSERT_EQ(alone.ids.size(), 3u);
    EXPECT_NEAR(alone.logprobs[0], log_prob(reference.row(prompt.size() - 1), alone.ids[0]), 1e-4);
    EXPECT_EQ(alone.finish, FinishReason::Length);
    EXPECT_EQ(beside[0].ids, beside[2].ids);
    EXPECT_EQ(beside[0].ids.size(), 40u);
}

TEST(ServerPromptScores, NoTokensAskedScoresThePromptAndStops) {
    InferenceEngine engine = load_stories();
    Metrics metrics;
    Scheduler scheduler(engine, {.n_slots = 2}, metrics);
    SequenceParams scored;
    scored.prompt = engine.tokenize("Once upon a time", true, false);
    scored.max_tokens = 0;
    scored.logprobs = true;
    scored.score_prompt = true;
    // The same prompt first, unscored: its slot holds the prompt, and the scored one must not
    // reuse it (a reused position would have no row to score from).
    SequenceParams first = scored;
    first.score_prompt = false;
    first.logprobs = false;
    collect(*scheduler.submit({first}), 1);
    const std::vector<Choice> choices = collect(*scheduler.submit({scored}), 1);
    EXPECT_EQ(choices[0].prompt_scores.size(), scored.prompt.size() - 1);
    EXPECT_TRUE(choices[0].ids.empty());
    EXPECT_EQ(choices[0].completion_tokens, 0u);
    EXPECT_EQ(choices[0].finish, FinishReason::Length);
}

}  // namespace
}  // namespace twinfer::server
