#pragma once
// What the in-process scheduler tests share: stories260K loaded for the CPU, and the events of a
// request read until each of its choices has finished.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <vector>

#include "common/test_data.hpp"
#include "engine/engine.hpp"
#include "server/scheduler.hpp"

namespace twinfer::server::test_support {

inline std::filesystem::path stories() { return test::third_party_testdata() / "models" / "stories260K.gguf"; }

inline InferenceEngine load_stories(size_t max_workspace_bytes = 0, size_t max_kv_bytes = 0) {
    BackendOptions options;
    options.model = stories();
    options.device = DeviceChoice::CPU;
    options.n_threads = 1;   // the machine's cores are shared; one thread changes no logit
    options.max_workspace_bytes = max_workspace_bytes;
    options.max_kv_bytes = max_kv_bytes;
    return InferenceEngine::load(options);
}

// Hands every event of the channel to on_event until n_choices have finished, for at most a
// minute (a test failure if they have not).
inline void read_events(RequestChannel& channel, size_t n_choices, const std::function<void(SequenceEvent&)>& on_event) {
    size_t finished = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    std::vector<SequenceEvent> events;
    while (finished < n_choices && std::chrono::steady_clock::now() < deadline) {
        events.clear();
        channel.wait_take(events, std::chrono::milliseconds(100));
        for (SequenceEvent& e : events) {
            if (e.finish) ++finished;
            on_event(e);
        }
    }
    EXPECT_EQ(finished, n_choices) << "the scheduler did not finish every choice within a minute";
}

}  // namespace twinfer::server::test_support
