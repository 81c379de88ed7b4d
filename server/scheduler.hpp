#pragma once
// The scheduler: one thread that owns the model and advances every running sequence together.
// It knows nothing of HTTP: a request arrives as SequenceParams (one per choice) and leaves as
// events on a RequestChannel that the HTTP thread reads.
//
// Each step is one batched pass (F32ModelBase::run_rows): the next token of every decoding
// sequence, plus up to `prompt_chunk` prompt tokens of the sequences still reading their prompt
// (oldest first), so that a long prompt is read between decode steps instead of stalling them.
// A sequence queued while a step runs joins at the next one. A finished or cancelled sequence
// frees its KV slot at once; the slot keeps its tokens for prefix reuse (SlotTable).
//
// A step that runs out of memory (a std::bad_alloc: compute::OutOfMemory from the device, the
// host, or the model's activation limit) is run again in smaller parts: its sequences in two
// halves, one sequence's prompt chunk in two halves, down to one token of one sequence. Each
// slot's KV cache is first cut back to its length before the failed pass, so nothing it
// half-wrote counts, and rows never depend on the other rows of their pass: every sequence
// produces exactly the ids it would have. Only a sequence whose single token still does not fit
// ends, with FinishReason::OutOfMemory; the others go on. Any other exception ends every
// sequence of the failed pass (FinishReason::Error) and forgets what their slots held.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.hpp"
#include "server/batched_model.hpp"
#include "server/metrics.hpp"
#include "server/slot_table.hpp"
#include "structured/token_constraint.hpp"

namespace twinfer::server {

using Clock = std::chrono::steady_clock;

// One choice of a request: its prompt and how to continue it (already validated).
struct SequenceParams {
    std::vector<Token> prompt;          // not empty, shorter than the context
    SamplingParams sampling;
    size_t max_tokens = 0;              // 0: the prompt is read (and scored), nothing generated
    std::vector<std::string> stop;      // non-empty strings
    bool ignore_eos = false;
    size_t top_logprobs = 0;            // alternatives reported per token (with logprobs)
    bool logprobs = false;              // report each sampled token's log-probability
    // Report each prompt token's log-probability given the tokens before it (from the second
    // token on, with top_logprobs alternatives): completions' echo with logprobs. Every prompt
    // row is computed for it, no cached prefix is reused.
    bool score_prompt = false;
    // Structured output: tokens that would break the grammar's document are never sampled, and
    // the sequence ends (Stop) when the document is whole. Null: free text.
    std::shared_ptr<const structured::Grammar> grammar = {};
    Clock::time_point deadline = Clock::time_point::max();
};

struct TokenLogprob {
    Token id = 0;
    double logprob = 0;
};

// A token with its log-probability and the most likely alternatives at its position.
struct ScoredToken {
    Token id = 0;
    double logprob = 0;
    std::vector<TokenLogprob> top_logprobs = {};
};

// OutOfMemory: even one token of the sequence did not fit in memory (the server answers 503).
enum class FinishReason { Stop, Length, Cancelled, Timeout, Error, OutOfMemory };

// What the scheduler tells a request, choice by choice.
struct SequenceEvent {
    size_t choice = 0;
    // A token: its id, the text it lets through (may be empty: held back for a stop string or
    // an incomplete UTF-8 sequence), and its log-probabilities when asked.
    std::optional<Token> token = {};
    std::string text = {};
    std::optional<double> logprob = {};
    std::vector<TokenLogprob> top_logprobs = {};
    // With score_prompt: once, before any token, the prompt's tokens from the second on.
    std::vector<ScoredToken> prompt_scores = {};
    // The end of the choice (no token then, maybe text: what was held back).
    std::optional<FinishReason> finish = {};
    std::string error = {};               // FinishReason::Error, OutOfMemory and Timeout: why
    size_t prompt_tokens = 0;           // with finish: the prompt's length,
    size_t cached_tokens = 0;           // the part of it reused from a slot,
    size_t completion_tokens = 0;       // the tokens generated
};

// The events of one request, from the scheduler thread to the HTTP thread that waits for them.
class RequestChannel {
public:
    void push(SequenceEvent event);
    // Waits until there are events or `timeout` passed; moves them into `out` (appended).
    void wait_take(std::vector<SequenceEvent>& out, std::chrono::milliseconds timeout);
    // The client went away: the scheduler drops the request's sequences at its next step.
    void cancel() { cancelled_ = true; }
    bool cancelled() const { return cancelled_; }

private:
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<SequenceEvent> events_;
    std::atomic<bool> cancelled_ = false;
};

// The queue is full: the caller answers 503.
struct QueueFull : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The prompt tokens a step reads by default. Fewer, larger steps bring a burst of requests their
// first tokens sooner (as llama-server's 2,048-token batch does) but delay the decoding streams'
// next tokens by the chunk's cost: 256 on the CPU (BENCHMARKS.md weighs 64, 256 and 512), 512 on a
// GPU, where a prompt row costs little beside a step's launches.
size_t default_prompt_chunk(compute::Device device);

struct SchedulerOptions {
    size_t n_slots = 4;                 // sequences decoding at once (the KV cache's slots)
    size_t max_queue = 64;              // sequences waiting for a slot before submit() refuses
    size_t prompt_chunk = 0;            // prompt tokens read per step, over all sequences (0: default_prompt_chunk)
    // How decode rows compute their products (RowProducts): Single, each as `twinfer run` decodes
    // (fastest for a few streams); Tiled, all rows of a step in one product (faster from about
    // eight streams on). Prompt rows are always Tiled; either way rows never depend on each other.
    RowProducts decode_products = RowProducts::Single;
    // Called with a pass's rows just before the model runs them; what it throws fails the pass as
    // the model's own exception would (compute::OutOfMemory: the step is retried in smaller
    // parts). Empty in `twinfer serve`: tests inject faults through it
    // (tests/server/out_of_memory_test.cpp).
    std::function<void(std::span<const SlotToken> rows)> before_pass = {};
};

class Scheduler {
public:
    // engine: loaded, outliving the scheduler; its model must have KV slots (BatchedModel).
    // Starts the scheduler thread.
    Scheduler(InferenceEngine& engine, const SchedulerOptions& options, Metrics& metrics);
    ~Scheduler();   // stop()
    // Stops the thread: queued and running requests end as Cancelled, submit() refuses new ones.
    void stop();
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    // Queues a request's choices (one sequence each) and returns the channel their events come
    // on. Throws QueueFull when they would take the queue past max_queue.
    std::shared_ptr<RequestChannel> submit(std::vector<SequenceParams> choices);

    size_t n_ctx() const { return n_ctx_; }
    const SchedulerOptions& options() const { return options_; }

private:
    struct Sequence;
    // One sequence's share of a step: its next token (decoding), or its next n_rows prompt tokens.
    struct Part {
        Sequence* sequence;
        size_t n_rows;
    };
    void run();
    void admit_waiting();
    void drop_finished_and_cancelled();
    void step();
    // One pass over the parts (those whose sequence is not done), in smaller passes when it runs
    // out of memory.
    void run_parts(std::span<const Part> parts);
    bool free_kv_memory();
    // Samples the sequence's next token from its logits row, emits it, and finishes the sequence
    // on a stop condition.
    void advance(Sequence& sequence, std::span<const double> logits);
    // advance with the token chosen: `logits` its row, or empty where the pass picked the token
    // (SlotToken::argmax_only: nothing else reads the row).
    void emit(Sequence& sequence, Token token, std::span<const double> logits);
    void finish(Sequence& sequence, FinishReason reason, std::string error = {});

    InferenceEngine& engine_;
    BatchedModel model_;
    SchedulerOptions options_;
    Metrics& metrics_;
    size_t n_ctx_ = 0;
    SlotTable slots_;
    std::shared_ptr<const structured::VocabularyBytes> vocabulary_bytes_;   // for constrained sequences

    std::mutex mutex_;                  // guards waiting_ and stopping_
    std::condition_variable wake_;
    std::deque<std::unique_ptr<Sequence>> waiting_;
    bool stopping_ = false;
    std::vector<std::unique_ptr<Sequence>> running_;   // scheduler thread only
    std::thread thread_;
};

std::string_view finish_reason_name(FinishReason reason);   // OpenAI's: "stop", "length", ...

}  // namespace twinfer::server
