#include "server/metrics.hpp"

#include <sstream>

namespace twinfer::server {
namespace {

constexpr std::chrono::seconds rate_window{10};

void metric(std::ostringstream& out, const char* name, const char* type, const char* help, double value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << value << "\n";
}

}  // namespace

void Metrics::count_request(const std::string& route, int status) {
    const std::lock_guard lock(mutex_);
    ++requests_[{route, status}];
}

void Metrics::count_generated(uint64_t n) {
    generated_tokens += n;
    const std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    recent_generated_.emplace_back(now, n);
    while (!recent_generated_.empty() && now - recent_generated_.front().first > rate_window) recent_generated_.pop_front();
}

double Metrics::generated_tokens_per_second() const {
    const std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    while (!recent_generated_.empty() && now - recent_generated_.front().first > rate_window) recent_generated_.pop_front();
    uint64_t sum = 0;
    for (const auto& [when, n] : recent_generated_) sum += n;
    return static_cast<double>(sum) / std::chrono::duration<double>(rate_window).count();
}

std::string Metrics::prometheus() const {
    std::ostringstream out;
    {
        const std::lock_guard lock(mutex_);
        out << "# HELP twinfer_requests_total HTTP responses by route and status.\n# TYPE twinfer_requests_total counter\n";
        for (const auto& [key, n] : requests_)
            out << "twinfer_requests_total{route=\"" << key.first << "\",status=\"" << key.second << "\"} " << n << "\n";
    }
    metric(out, "twinfer_prompt_tokens_total", "counter", "Prompt tokens of the sequences admitted.", double(prompt_tokens));
    metric(out, "twinfer_prompt_tokens_cached_total", "counter", "Prompt tokens reused from a KV slot (prefix caching).",
           double(prompt_tokens_cached));
    metric(out, "twinfer_prompt_tokens_computed_total", "counter", "Prompt tokens run through the model.",
           double(prompt_tokens_computed));
    metric(out, "twinfer_generated_tokens_total", "counter", "Tokens generated.", double(generated_tokens));
    metric(out, "twinfer_generated_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
           generated_tokens_per_second());
    metric(out, "twinfer_sequences_finished_total", "counter", "Sequences ended by a stop condition.", double(sequences_finished));
    metric(out, "twinfer_sequences_cancelled_total", "counter", "Sequences whose client went away.", double(sequences_cancelled));
    metric(out, "twinfer_sequences_timed_out_total", "counter", "Sequences past their deadline.", double(sequences_timed_out));
    metric(out, "twinfer_sequences_failed_total", "counter", "Sequences ended by an error.", double(sequences_failed));
    metric(out, "twinfer_steps_total", "counter", "Batched forward passes.", double(steps));
    metric(out, "twinfer_step_rows_total", "counter", "Rows (tokens) over all batched passes.", double(step_rows));
    metric(out, "twinfer_pass_seconds_total", "counter", "Time in the model's batched passes, their logits on the host.",
           1e-9 * double(pass_nanoseconds));
    metric(out, "twinfer_step_seconds_total", "counter", "Time in steps: the passes, then sampling and each sequence's events.",
           1e-9 * double(step_nanoseconds));
    metric(out, "twinfer_steps_out_of_memory_total", "counter", "Batched passes that ran out of memory and were run again in smaller parts.",
           double(steps_out_of_memory));
    metric(out, "twinfer_queue_depth", "gauge", "Sequences waiting for a KV slot.", double(queue_depth));
    metric(out, "twinfer_sequences_running", "gauge", "Sequences holding a KV slot.", double(running));
    metric(out, "twinfer_kv_positions_used", "gauge", "KV-cache positions held by running sequences.", double(kv_positions_used));
    metric(out, "twinfer_kv_positions_total", "gauge", "KV-cache positions (slots x context).", double(kv_positions_total));
    metric(out, "twinfer_kv_memory_bytes", "gauge", "Memory behind the KV cache (pages backed, every slot).", double(kv_memory_bytes));
    metric(out, "twinfer_kv_prefixes_dropped_total", "counter", "Idle slots' cached prefixes dropped to make room in the KV cache.",
           double(kv_prefixes_dropped));
    return out.str();
}

}  // namespace twinfer::server
