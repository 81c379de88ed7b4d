// The KV cache's pool in the scheduler (`serve --kv-memory`): slots draw pages from one bound, so
// an idle slot's cached prefix gives its memory up when a running sequence needs it (and the
// sequence's ids are those it has alone), and a sequence that cannot grow within the bound ends
// with FinishReason::OutOfMemory while the server goes on.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "compute/reserved_memory.hpp"
#include "engine/engine.hpp"
#include "server/scheduler.hpp"
#include "server/scheduler_support.hpp"

namespace twinfer::server {
namespace {

using test_support::load_stories;
using test_support::stories;

struct Outcome {
    std::vector<Token> ids;
    std::optional<FinishReason> finish;
    std::string error;
};

Outcome serve(Scheduler& scheduler, SequenceParams params) {
    Outcome o;
    test_support::read_events(*scheduler.submit({std::move(params)}), 1, [&](SequenceEvent& e) {
        if (e.token) o.ids.push_back(*e.token);
        if (e.finish) o.finish = e.finish, o.error = e.error;
    });
    return o;
}

// Without a BOS, so that prompts share no leading token and a new one takes a fresh slot, not the
// idle slot that holds another prompt.
SequenceParams greedy(const InferenceEngine& engine, const std::string& text, size_t max_tokens) {
    SequenceParams p;
    p.prompt = engine.tokenize(text, false, false);
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    return p;
}

// stories260K: 5 layers of 32-float rows (128 bytes); a CPU page holds 32 positions of a layer.
size_t pool_pages_bytes(size_t pages_a_layer) {
    return pages_a_layer * 5 * 2 * compute::ReservedMemory::page_bytes(compute::Device::CPU);
}

const std::string kLong1 = "Once upon a time, there was a little girl named Lily who loved to play in the big green park with her dog";
const std::string kLong2 = "Tom had a red ball. He threw it high into the blue sky and ran after it to the tree by the pond";
const std::string kShort = "A cat sat";

TEST(ServerKvPool, AnIdleSlotsPrefixMakesRoomForARunningSequence) {
    TWINFER_REQUIRE_FILE(stories());
    InferenceEngine engine = load_stories(0, pool_pages_bytes(3));   // three pages a layer, every slot together
    for (const std::string& text : {kLong1, kLong2}) {
        const size_t n = engine.tokenize(text, false, false).size();
        ASSERT_GT(n, 32u) << text << ": two pages a layer";
        ASSERT_LE(n + 8, 64u) << text;
    }
    std::vector<std::vector<Token>> alone;
    {
        InferenceEngine unbounded = load_stories();
        Metrics metrics;
        Scheduler scheduler(unbounded, {.n_slots = 3}, metrics);
        for (const std::string& text : {kLong1, kLong2}) alone.push_back(serve(scheduler, greedy(unbounded, text, 8)).ids);
    }
    Metrics metrics;
    Scheduler scheduler(engine, {.n_slots = 3}, metrics);
    const Outcome first = serve(scheduler, greedy(engine, kLong1, 8));
    EXPECT_EQ(first.finish, FinishReason::Length) << first.error;
    EXPECT_EQ(first.ids, alone[0]);
    EXPECT_EQ(metrics.kv_prefixes_dropped, 0u);
    // Its slot keeps two pages a layer for prefix reuse; the next prompt needs two more of three.
    const Outcome second = serve(scheduler, greedy(engine, kLong2, 8));
    EXPECT_EQ(second.finish, FinishReason::Length) << second.error;
    EXPECT_EQ(second.ids, alone[1]);
    EXPECT_EQ(metrics.kv_prefixes_dropped, 1u);
    EXPECT_GT(metrics.steps_out_of_memory, 0u);
    EXPECT_EQ(metrics.sequences_failed, 0u);
    EXPECT_LE(metrics.kv_memory_bytes, pool_pages_bytes(3));
    EXPECT_GT(metrics.kv_memory_bytes, 0u);
}

TEST(ServerKvPool, ASequenceThatCannotGrowEndsAndTheServerGoesOn) {
    TWINFER_REQUIRE_FILE(stories());
    InferenceEngine engine = load_stories(0, pool_pages_bytes(2));   // 64 positions
    std::vector<Token> alone_long, alone_short;
    {
        InferenceEngine unbounded = load_stories();
        Metrics metrics;
        Scheduler scheduler(unbounded, {.n_slots = 2}, metrics);
        alone_long = serve(scheduler, greedy(unbounded, kShort, 100)).ids;
        alone_short = serve(scheduler, greedy(unbounded, kLong2, 8)).ids;
    }
    Metrics metrics;
    Scheduler scheduler(engine, {.n_slots = 2}, metrics);
    const Outcome doomed = serve(scheduler, greedy(engine, kShort, 100));
    EXPECT_EQ(doomed.finish, FinishReason::OutOfMemory) << doomed.error;
    EXPECT_NE(doomed.error.find("KV cache's memory is used up"), std::string::npos) << doomed.error;
    const size_t prompt = engine.tokenize(kShort, false, false).size();
    ASSERT_EQ(doomed.ids.size(), 64 - prompt + 1) << "every position of the pool used, then the end";
    EXPECT_TRUE(std::equal(doomed.ids.begin(), doomed.ids.end(), alone_long.begin())) << "the ids before the end are those alone";
    EXPECT_EQ(metrics.sequences_failed, 1u);
    const Outcome next = serve(scheduler, greedy(engine, kLong2, 8));
    EXPECT_EQ(next.finish, FinishReason::Length) << next.error;
    EXPECT_EQ(next.ids, alone_short);
}

}  // namespace
}  // namespace twinfer::server
