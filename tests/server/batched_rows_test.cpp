// F32ModelBase::forward_rows, the batched pass the server's scheduler runs: a row's logits must not
// depend on the other rows of its pass (so a request's greedy ids do not depend on what else the
// server runs), Single rows must equal the decode step, and Tiled rows a prompt's rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/test_data.hpp"
#include "format/gguf.hpp"
#include "models/f32_gpt_model.hpp"
#include "models/f32_llama_model.hpp"
#include "server/slot_table.hpp"

namespace twinfer {
namespace {

std::shared_ptr<const gguf::File> smollm2() {
    return std::make_shared<const gguf::File>(gguf::File::open(test::smollm2_path()));
}

// A few distinct token sequences (ids well inside SmolLM2's vocabulary).
std::vector<Token> prompt(int seed, size_t n) {
    std::vector<Token> ids;
    for (size_t i = 0; i < n; ++i) ids.push_back(Token((seed * 7919 + int(i) * 104729) % 40000 + 100));
    return ids;
}

std::vector<double> row(const Logits& logits, size_t i) {
    const auto r = logits.row(i);
    return {r.begin(), r.end()};
}

// Feeds each sequence's prompt into its own slot (one Tiled pass over all of them), then `steps`
// decode passes over all sequences at once; returns sequence 0's logits rows (prompt's last, then
// each step's), feeding back each sequence's argmax.
std::vector<std::vector<double>> run_batch(F32LlamaModel& model, const std::vector<std::vector<Token>>& prompts, size_t steps,
                                           RowProducts decode) {
    model.set_slot_count(prompts.size());
    std::vector<SlotToken> rows;
    for (size_t s = 0; s < prompts.size(); ++s)
        for (size_t i = 0; i < prompts[s].size(); ++i)
            rows.push_back({.slot = s, .token = prompts[s][i], .logits = i + 1 == prompts[s].size(), .products = RowProducts::Tiled});
    Logits logits = model.forward_rows(rows, decode);
    std::vector<std::vector<double>> first_rows{row(logits, 0)};
    for (size_t step = 0; step < steps; ++step) {
        rows.clear();
        for (size_t s = 0; s < prompts.size(); ++s) {
            const auto r = logits.row(s);
            const Token next = Token(std::max_element(r.begin(), r.end()) - r.begin());
            rows.push_back({.slot = s, .token = next, .logits = true, .products = decode});
        }
        logits = model.forward_rows(rows, decode);
        first_rows.push_back(row(logits, 0));
    }
    return first_rows;
}

class ServerBatchedRows : public ::testing::TestWithParam<std::tuple<RowProducts, compute::KvType>> {};

// With either KV cache type (`serve --cache-type f16`: a float16 cache's rows are stored and read
// the same way whatever else the pass holds).
TEST_P(ServerBatchedRows, SequenceAloneEqualsSequenceAmongSevenOthers) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    const auto [products, cache_type] = GetParam();
    F32LlamaModel model = F32LlamaModel::load(smollm2(), {.n_ctx = 128, .cache_type = cache_type});
    ASSERT_TRUE(F32LlamaModel::has_batched_pass());
    std::vector<std::vector<Token>> prompts;
    for (int s = 0; s < 8; ++s) prompts.push_back(prompt(s, 5 + 3 * size_t(s)));
    const auto alone = run_batch(model, {prompts[0]}, 6, products);
    const auto together = run_batch(model, prompts, 6, products);
    ASSERT_EQ(alone.size(), together.size());
    for (size_t i = 0; i < alone.size(); ++i) EXPECT_EQ(alone[i], together[i]) << "row " << i << " differs bitwise";
}

INSTANTIATE_TEST_SUITE_P(Products, ServerBatchedRows,
                         ::testing::Combine(::testing::Values(RowProducts::Single, RowProducts::Tiled),
                                            ::testing::Values(compute::KvType::F32, compute::KvType::F16)),
                         [](const auto& info) {
                             return std::string(std::get<0>(info.param) == RowProducts::Single ? "Single" : "Tiled") + "_" +
                                    std::string(compute::kv_type_name(std::get<1>(info.param)));
                         });

// Single rows compute as the decode step does (the CLI's `run`), Tiled rows as a prompt does.
TEST(ServerBatchedRowsPaths, SingleRowsEqualDecodeStepAndTiledRowsEqualPrompt) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    const auto file = smollm2();
    F32LlamaModel batched = F32LlamaModel::load(file, {.n_ctx = 64});
    F32LlamaModel reference = F32LlamaModel::load(file, {.n_ctx = 64});
    const std::vector<Token> ids = prompt(3, 9);
    batched.set_slot_count(2);

    // The prompt: all its rows' logits, Tiled, against forward(All) (a tiled product, 9 tokens).
    std::vector<SlotToken> rows;
    for (Token t : ids) rows.push_back({.slot = 1, .token = t, .logits = true, .products = RowProducts::Tiled});
    const Logits prompt_rows = batched.forward_rows(rows, RowProducts::Tiled);
    const Logits expected = reference.forward(ids, LogitsMode::All);
    ASSERT_EQ(prompt_rows.values.size(), expected.values.size());
    EXPECT_EQ(prompt_rows.values, expected.values);

    // A decode row, Single, against forward() of one token (the decode step).
    const SlotToken step{.slot = 1, .token = 42, .logits = true, .products = RowProducts::Single};
    EXPECT_EQ(row(batched.forward_rows(std::span(&step, 1), RowProducts::Single), 0),
              row(reference.forward(std::vector<Token>{42}), 0));
    EXPECT_EQ(batched.slot_length(1), ids.size() + 1);
    EXPECT_EQ(batched.slot_length(0), 0u);
}

TEST(ServerBatchedRowsPaths, RefusesRowsOutOfOrderAndOverflowWithoutChangingTheCache) {
    TWINFER_REQUIRE_FILE(test::smollm2_path());
    F32LlamaModel model = F32LlamaModel::load(smollm2(), {.n_ctx = 8});
    model.set_slot_count(2);
    const std::vector<SlotToken> tiled_then_single{{.slot = 0, .token = 1, .products = RowProducts::Tiled},
                                                   {.slot = 1, .token = 1, .products = RowProducts::Single}};
    EXPECT_THROW(model.forward_rows(tiled_then_single), std::invalid_argument);
    const std::vector<SlotToken> split_slot{{.slot = 0, .token = 1}, {.slot = 1, .token = 1}, {.slot = 0, .token = 2}};
    EXPECT_THROW(model.forward_rows(split_slot), std::invalid_argument);
    const std::vector<SlotToken> bad_slot{{.slot = 2, .token = 1}};
    EXPECT_THROW(model.forward_rows(bad_slot), std::out_of_range);
    const std::vector<SlotToken> bad_token{{.slot = 0, .token = -1}};
    EXPECT_THROW(model.forward_rows(bad_token), std::out_of_range);
    std::vector<SlotToken> too_long;
    for (int i = 0; i < 9; ++i) too_long.push_back({.slot = 1, .token = 1});
    EXPECT_THROW(model.forward_rows(too_long), ContextOverflow);
    EXPECT_EQ(model.slot_length(0), 0u);
    EXPECT_EQ(model.slot_length(1), 0u);
}

// F32GPTModel has no enqueue_rows: its forward_rows feeds one slot after another.
static_assert(F32LlamaModel::has_batched_pass() && !F32GPTModel::has_batched_pass());

// The slot a new sequence gets: the longest reusable match among the free slots, token for token.
TEST(ServerSlotTable, ClaimsLongestMatchAndNeverReusesOtherContent) {
    server::SlotTable slots(3);
    const std::vector<Token> system{1, 2, 3, 4};
    const auto a = slots.claim(std::vector<Token>{1, 2, 3, 4, 10});
    ASSERT_TRUE(a);
    EXPECT_EQ(a->reused, 0u);
    slots.append_reusable(a->slot, std::vector<Token>{1, 2, 3, 4, 10});
    slots.end_reusable(a->slot);
    slots.append_reusable(a->slot, std::vector<Token>{99});   // a decode row: not reusable
    slots.release(a->slot);
    EXPECT_EQ(slots.reusable(a->slot), (std::vector<Token>{1, 2, 3, 4, 10}));

    const auto b = slots.claim(std::vector<Token>{1, 2, 3, 4, 20, 21});
    ASSERT_TRUE(b);
    EXPECT_EQ(b->slot, a->slot);
    EXPECT_EQ(b->reused, 4u);   // the shared system prefix, not the other user's 10
    EXPECT_EQ(slots.reusable(b->slot), system);

    const auto c = slots.claim(std::vector<Token>{1, 2, 3, 4, 20, 21});
    ASSERT_TRUE(c);
    EXPECT_NE(c->slot, b->slot);   // b's slot is busy: never shared
    EXPECT_EQ(c->reused, 0u);
    // A prompt that is entirely cached still feeds its last token (its logits are needed).
    slots.append_reusable(c->slot, std::vector<Token>{1, 2, 3, 4, 20, 21});
    slots.release(c->slot);
    const auto d = slots.claim(std::vector<Token>{1, 2, 3, 4, 20, 21});
    ASSERT_TRUE(d);
    EXPECT_EQ(d->slot, c->slot);
    EXPECT_EQ(d->reused, 5u);
    ASSERT_TRUE(slots.claim(std::vector<Token>{7}));
    EXPECT_FALSE(slots.claim(std::vector<Token>{7}));   // all three busy
    EXPECT_EQ(slots.n_busy(), 3u);
}

}  // namespace
}  // namespace twinfer
