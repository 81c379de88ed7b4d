#pragma once
// The server's counters and gauges, updated by the scheduler and the HTTP threads (atomics, no
// lock on the hot path) and written as Prometheus text for GET /metrics.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace twinfer::server {

class Metrics {
public:
    // Counters (since start).
    std::atomic<uint64_t> prompt_tokens{0};            // prompt tokens of the sequences admitted
    std::atomic<uint64_t> prompt_tokens_cached{0};     // of those, reused from a slot's cache
    std::atomic<uint64_t> prompt_tokens_computed{0};   // prompt rows actually run through the model
    std::atomic<uint64_t> generated_tokens{0};
    std::atomic<uint64_t> sequences_finished{0};       // ended by a stop condition
    std::atomic<uint64_t> sequences_cancelled{0};      // their client went away
    std::atomic<uint64_t> sequences_timed_out{0};
    std::atomic<uint64_t> sequences_failed{0};
    std::atomic<uint64_t> steps{0};                    // batched passes
    std::atomic<uint64_t> step_rows{0};                // rows over all passes
    std::atomic<uint64_t> steps_out_of_memory{0};      // passes that ran out of memory (run again in parts)
    std::atomic<uint64_t> pass_nanoseconds{0};         // in the model's batched passes (results on the host)
    std::atomic<uint64_t> step_nanoseconds{0};         // in whole steps: the passes, sampling, the events
    std::atomic<uint64_t> kv_prefixes_dropped{0};      // idle slots' cached prefixes dropped to make room
    // Gauges.
    std::atomic<uint64_t> queue_depth{0};              // sequences waiting for a slot
    std::atomic<uint64_t> running{0};                  // sequences holding a slot
    std::atomic<uint64_t> kv_positions_used{0};        // positions held by busy slots
    std::atomic<uint64_t> kv_positions_total{0};       // slots x context
    std::atomic<uint64_t> kv_memory_bytes{0};          // memory behind the KV cache (all slots, idle ones' prefixes too)

    // An HTTP response, by route and status.
    void count_request(const std::string& route, int status);
    // n tokens generated now (for the tokens-per-second gauge, over the last 10 seconds).
    void count_generated(uint64_t n);
    double generated_tokens_per_second() const;

    std::string prometheus() const;

private:
    using Clock = std::chrono::steady_clock;
    mutable std::mutex mutex_;   // guards the two below
    std::map<std::pair<std::string, int>, uint64_t> requests_;
    mutable std::deque<std::pair<Clock::time_point, uint64_t>> recent_generated_;
};

}  // namespace twinfer::server
