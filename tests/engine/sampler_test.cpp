// Sampler stages on four-element distributions whose results are worked out by hand in the
// comments, as llama.cpp's test-sampling does.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "engine/sampler.hpp"
#include "models/inference.hpp"

namespace twinfer {
namespace {

// Logits whose softmax is exactly {0.1, 0.2, 0.3, 0.4}: log of the probabilities.
std::vector<double> logits_of(std::vector<double> probs) {
    std::vector<double> l;
    for (double p : probs) l.push_back(std::log(p));
    return l;
}

std::vector<Token> ids(const Candidates& c) {
    std::vector<Token> out;
    for (const auto& x : c.items) out.push_back(x.id);
    return out;
}

// A chain of temperature 1 alone (no top-k, top-p or min-p): the draw over the distribution itself.
SamplingParams temperature_only(uint64_t seed) {
    SamplingParams params;
    params.temperature = 1.0f;
    params.top_k = 0;
    params.top_p = 1.0f;
    params.min_p = 0.0f;
    params.seed = seed;
    return params;
}

TEST(Sampler, SoftmaxRecoversProbabilitiesSortedDescending) {
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    c.softmax();
    EXPECT_EQ(ids(c), (std::vector<Token>{3, 2, 1, 0}));
    EXPECT_NEAR(c.items[0].p, 0.4, 1e-6);
    EXPECT_NEAR(c.items[3].p, 0.1, 1e-6);
}

TEST(Sampler, TopKKeepsTheKLargest) {
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::TopK{2}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{3, 2}));
    c.softmax();  // renormalised: 0.4/0.7, 0.3/0.7
    EXPECT_NEAR(c.items[0].p, 4.0 / 7.0, 1e-6);
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingP) {
    // Sorted 0.4, 0.3, 0.2, 0.1: cumulative 0.4, 0.7, 0.9, 1.0.
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::TopP{0.7f}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{3, 2}));
    c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::TopP{0.71f}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{3, 2, 1}));
    c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::TopP{0.0f}.apply(c);  // min_keep 1
    EXPECT_EQ(ids(c), (std::vector<Token>{3}));
}

TEST(Sampler, MinPDropsTokensBelowFractionOfTheBest) {
    // Threshold 0.6 * 0.4 = 0.24: keeps 0.4 and 0.3.
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::MinP{0.6f}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{3, 2}));
    c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::MinP{0.25f}.apply(c);  // threshold 0.1: keeps all
    EXPECT_EQ(c.items.size(), 4u);
}

TEST(Sampler, TypicalKeepsTokensNearTheEntropy) {
    // Entropy H = -sum p ln p = 1.2799. Surprisals: 0.4 -> 0.916, 0.3 -> 1.204, 0.2 -> 1.609,
    // 0.1 -> 2.303; distances to H: 0.364, 0.076, 0.330, 1.023. Order: 2(0.3), 1(0.2), 3(0.4), 0.
    // Cumulative mass 0.3, 0.5, 0.9: p = 0.55 needs three tokens, p = 0.45 two.
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::Typical{0.55f}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{2, 1, 3}));
    c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::Typical{0.45f}.apply(c);
    EXPECT_EQ(ids(c), (std::vector<Token>{2, 1}));
}

TEST(Sampler, TemperatureScalesLogits) {
    auto c = Candidates::from_logits(std::span<const double>(logits_of({0.1, 0.2, 0.3, 0.4})));
    sampling::Temperature{0.5f}.apply(c);  // p^2 normalised: 0.01, 0.04, 0.09, 0.16 over 0.30
    c.softmax();
    EXPECT_NEAR(c.items[0].p, 0.16 / 0.30, 1e-6);
    EXPECT_NEAR(c.items[3].p, 0.01 / 0.30, 1e-6);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
    std::vector<double> logits{2.0, -2.0, 1.0, 0.5};
    auto c = Candidates::from_logits(std::span<const double>(logits));
    sampling::Penalties pen;
    pen.repeat = 2.0f;
    pen.accept(0);
    pen.accept(1);
    pen.apply(c);
    EXPECT_FLOAT_EQ(c.items[0].logit, 1.0f);
    EXPECT_FLOAT_EQ(c.items[1].logit, -4.0f);
    EXPECT_FLOAT_EQ(c.items[2].logit, 1.0f);
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountOccurrences) {
    std::vector<double> logits{1.0, 1.0, 1.0, 1.0};
    auto c = Candidates::from_logits(std::span<const double>(logits));
    sampling::Penalties pen;
    pen.frequency = 0.5f;
    pen.presence = 0.25f;
    pen.accept(2);
    pen.accept(2);
    pen.accept(3);
    pen.apply(c);
    EXPECT_FLOAT_EQ(c.items[2].logit, 1.0f - 2 * 0.5f - 0.25f);
    EXPECT_FLOAT_EQ(c.items[3].logit, 1.0f - 0.5f - 0.25f);
    EXPECT_FLOAT_EQ(c.items[0].logit, 1.0f);
}

TEST(Sampler, PenaltyWindowForgetsOldTokens) {
    sampling::Penalties pen;
    pen.last_n = 2;
    pen.repeat = 2.0f;
    pen.accept(0);
    pen.accept(1);
    pen.accept(2);
    std::vector<double> logits{2.0, 2.0, 2.0, 2.0};
    auto c = Candidates::from_logits(std::span<const double>(logits));
    pen.apply(c);
    EXPECT_FLOAT_EQ(c.items[0].logit, 2.0f);  // pushed out of the window
    EXPECT_FLOAT_EQ(c.items[1].logit, 1.0f);
}

TEST(Sampler, LogitBiasCanBanTheBestToken) {
    SamplingParams params;
    params.temperature = 0.0f;
    params.logit_bias[3] = -INFINITY;
    SamplerChain chain(params);
    auto logits = logits_of({0.1, 0.2, 0.3, 0.4});
    EXPECT_EQ(chain.sample(logits), 2);
}

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
    SamplingParams params;
    params.temperature = 0.0f;
    SamplerChain chain(params);
    std::vector<double> logits{0.5, 3.0, 3.0, 1.0};
    EXPECT_EQ(chain.sample(logits), 1);
    EXPECT_TRUE(chain.greedy());
}

TEST(Sampler, SameSeedSameDrawsAndFrequenciesFollowTheDistribution) {
    const SamplingParams params = temperature_only(1234);
    SamplerChain a(params), b(params);
    auto logits = logits_of({0.1, 0.2, 0.3, 0.4});
    std::map<Token, int> counts;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
        const Token ta = a.sample(logits), tb = b.sample(logits);
        ASSERT_EQ(ta, tb);
        ++counts[ta];
    }
    // Binomial standard deviation at n = 20000 is at most 0.0035; allow 4 sigma.
    EXPECT_NEAR(counts[0] / double(n), 0.1, 0.014);
    EXPECT_NEAR(counts[3] / double(n), 0.4, 0.014);
    a.reset();
    SamplerChain c(params);
    for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(logits), c.sample(logits));
}

// A chain that starts with top-k finished on the k candidates alone (what a model's forward_top_k
// hands back) draws the same tokens as on the whole row: the default chain, ties and -0 included,
// over a vocabulary's worth of logits.
TEST(Sampler, SampleTopDrawsAsSampleOnTheWholeRow) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<double> row(49152);
    for (double& x : row) x = normal(rng);
    row[10] = row[20] = row[30] = 9.5;   // a three-way tie among the largest
    row[40] = -0.0, row[41] = 0.0;
    SamplingParams params;   // top-k 40, top-p 0.95, min-p 0.05, temperature 0.8
    params.seed = 99;
    SamplerChain whole(params), top(params);
    ASSERT_EQ(whole.leading_top_k(), 40u);
    for (int step = 0; step < 200; ++step) {
        row[size_t(step) * 37 % row.size()] += 4.0;   // a different row each step
        const TopLogits candidates = top_logits_of_last(Logits{row.size(), 1, row}, 40);
        ASSERT_EQ(top.sample_top(candidates.ids, candidates.logits), whole.sample(row)) << "step " << step;
    }
    EXPECT_THROW(top.sample_top(std::vector<Token>{1}, std::vector<float>{1.0f}), std::invalid_argument);
    params.repeat_penalty = 1.1f;   // penalties come before top-k: it does not lead
    EXPECT_EQ(SamplerChain(params).leading_top_k(), 0u);
    params = {};
    params.temperature = 0.0f;
    EXPECT_EQ(SamplerChain(params).leading_top_k(), 0u);
}

// A whole vocabulary with no top-k before: top-p finds its cut through buckets of the logits and
// min-p compares logits with the largest; they keep what they keep on the same row sorted first
// (the short-list path). Peaked and flat rows, several p.
TEST(Sampler, TopPAndMinPOnAWholeRowKeepWhatTheSortedPathKeeps) {
    for (double sigma : {2.0, 5.0}) {
        std::mt19937 rng(3);
        std::normal_distribution<double> normal(0.0, sigma);
        std::vector<double> row(20000);
        for (double& x : row) x = normal(rng);
        for (float p : {0.5f, 0.9f, 0.95f}) {
            auto whole = Candidates::from_logits(std::span<const double>(row)), sorted = whole;
            sorted.sort_descending();
            ASSERT_GT(whole.items.size(), sort_whole_up_to);
            sampling::TopP{p}.apply(whole);
            sampling::TopP{p}.apply(sorted);
            whole.sort_descending();
            EXPECT_EQ(ids(whole), ids(sorted)) << "top-p " << p << " sigma " << sigma;
        }
        for (float p : {0.01f, 0.05f, 0.3f}) {
            auto whole = Candidates::from_logits(std::span<const double>(row)), sorted = whole;
            sorted.sort_descending();
            sampling::MinP{p}.apply(whole);
            sampling::MinP{p}.apply(sorted);
            whole.sort_descending();
            EXPECT_EQ(ids(whole), ids(sorted)) << "min-p " << p << " sigma " << sigma;
        }
    }
}

// The draw over a whole row that no stage cut walks it unsorted: still the row's distribution.
TEST(Sampler, DrawOverAWholeRowFollowsTheDistribution) {
    std::vector<double> row(5000, -30.0);
    row[4000] = std::log(0.5), row[10] = std::log(0.3), row[2500] = std::log(0.2);
    SamplerChain chain(temperature_only(42));
    std::map<Token, int> counts;
    const int n = 20000;
    for (int i = 0; i < n; ++i) ++counts[chain.sample(row)];
    EXPECT_NEAR(counts[4000] / double(n), 0.5, 0.015);
    EXPECT_NEAR(counts[10] / double(n), 0.3, 0.015);
    EXPECT_NEAR(counts[2500] / double(n), 0.2, 0.015);
}

TEST(Sampler, ChainOrderFollowsLlamaCpp) {
    SamplingParams params;
    params.repeat_penalty = 1.1f;
    params.typical_p = 0.9f;
    SamplerChain chain(params);
    EXPECT_EQ(chain.describe().substr(0, 56), "penalties -> top-k -> typical -> top-p -> min-p -> tempe");
}

// sample_allowed over {0.1, 0.2, 0.3, 0.4} with tokens 1 and 3 refused: greedy takes token 2;
// a draw is from the renormalized rest, {0.1, 0.3} / 0.4 = {0.25, 0.75}, both by striking refused
// draws (temperature only) and by the full list (with a top-p stage, which keeps all four here).
TEST(Sampler, SampleAllowedDrawsFromTheRenormalizedAllowedTokens) {
    const std::vector<double> logits = logits_of({0.1, 0.2, 0.3, 0.4});
    const auto allows = [](Token t) { return t == 0 || t == 2; };
    size_t listed = 0;
    const auto list = [&] {
        ++listed;
        return std::vector<Token>{0, 2};
    };
    SamplingParams greedy;
    greedy.temperature = 0.0f;
    EXPECT_EQ(SamplerChain(greedy).sample_allowed(logits, allows, list), 2);
    for (const float top_p : {1.0f, 0.999f}) {
        SamplingParams params = temperature_only(42);
        params.top_p = top_p;
        SamplerChain chain(params);
        listed = 0;
        std::map<Token, int> counts;
        constexpr int draws = 20000;
        for (int i = 0; i < draws; ++i) counts[chain.sample_allowed(logits, allows, list)] += 1;
        EXPECT_EQ(counts[1] + counts[3], 0);
        EXPECT_NEAR(counts[2] / double(draws), 0.75, 0.015) << "top_p " << top_p;
        if (top_p == 1.0f) EXPECT_EQ(listed, 0u);                    // refused draws struck, the list never needed
        else EXPECT_EQ(listed, size_t(draws));                        // a truncating stage: always the list
    }
    SamplerChain none(temperature_only(1));
    EXPECT_THROW(none.sample_allowed(logits, [](Token) { return false; }, [] { return std::vector<Token>{}; }), std::runtime_error);
}

TEST(Sampler, InvalidParametersAreRejected) {
    SamplingParams params;
    params.top_p = 2.0f;
    EXPECT_THROW(SamplerChain{params}, std::invalid_argument);
    params = {};
    params.top_k = -1;
    EXPECT_THROW(SamplerChain{params}, std::invalid_argument);
    params = {};
    params.repeat_penalty = 0.0f;
    EXPECT_THROW(SamplerChain{params}, std::invalid_argument);
}

}  // namespace
}  // namespace twinfer
