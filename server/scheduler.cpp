#include "server/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <numeric>
#include <utility>

#include "engine/stop_filter.hpp"

namespace twinfer::server {

std::string_view finish_reason_name(FinishReason reason) {
    switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Timeout: return "timeout";
    case FinishReason::Error: return "error";
    case FinishReason::OutOfMemory: return "error";
    }
    return "?";
}

void RequestChannel::push(SequenceEvent event) {
    {
        const std::lock_guard lock(mutex_);
        events_.push_back(std::move(event));
    }
    ready_.notify_all();
}

void RequestChannel::wait_take(std::vector<SequenceEvent>& out, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [&] { return !events_.empty(); });
    for (SequenceEvent& e : events_) out.push_back(std::move(e));
    events_.clear();
}

// One choice of one request, from the queue to its last event.
struct Scheduler::Sequence {
    Sequence(SequenceParams p, std::shared_ptr<RequestChannel> c, size_t index, const Tokenizer& tokenizer,
             const std::shared_ptr<const structured::VocabularyBytes>& vocabulary_bytes)
        : params(std::move(p)), channel(std::move(c)), choice(index), sampler(params.sampling), decoder(tokenizer),
          stop_filter(params.stop) {
        for (Token t : params.prompt) sampler.accept(t);   // penalties look at the prompt too, as generate() does
        if (params.grammar) constraint.emplace(params.grammar, vocabulary_bytes);
    }

    SequenceParams params;
    std::shared_ptr<RequestChannel> channel;
    size_t choice;
    SamplerChain sampler;
    StreamDecoder decoder;
    StopStringFilter stop_filter;   // refers to params.stop: a Sequence is never moved (unique_ptr)
    std::optional<structured::TokenConstraint> constraint;   // with params.grammar

    size_t slot = 0;
    size_t reused = 0;              // prompt tokens the slot already held
    size_t fed = 0;                 // prompt tokens in the slot (reused, then computed)
    bool decoding = false;          // the prompt is in; next_token is the next row
    Token next_token = 0;
    size_t generated = 0;
    std::vector<ScoredToken> prompt_scores;   // with params.score_prompt, until the prompt is in
    bool text_complete = false;     // a stop string ended the text: nothing held back is emitted
    bool done = false;

    bool prompt_done() const { return fed == params.prompt.size(); }
};

size_t default_prompt_chunk(compute::Device device) { return device == compute::Device::CPU ? 256 : 512; }

Scheduler::Scheduler(InferenceEngine& engine, const SchedulerOptions& options, Metrics& metrics)
    : engine_(engine), model_(engine.backend()), options_(options), metrics_(metrics) {
    if (options_.n_slots == 0) throw std::invalid_argument("the server needs at least one slot (--parallel)");
    if (options_.prompt_chunk == 0) options_.prompt_chunk = default_prompt_chunk(model_.device());
    model_.set_slot_count(options_.n_slots);
    n_ctx_ = model_.n_ctx();
    slots_ = SlotTable(options_.n_slots);
    vocabulary_bytes_ = std::make_shared<const structured::VocabularyBytes>(engine_.tokenizer());
    metrics_.kv_positions_total = options_.n_slots * n_ctx_;
    thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
    if (!thread_.joinable()) return;
    {
        const std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
}

std::shared_ptr<RequestChannel> Scheduler::submit(std::vector<SequenceParams> choices) {
    auto channel = std::make_shared<RequestChannel>();
    std::vector<std::unique_ptr<Sequence>> sequences;
    for (size_t i = 0; i < choices.size(); ++i)
        sequences.push_back(std::make_unique<Sequence>(std::move(choices[i]), channel, i, engine_.tokenizer(), vocabulary_bytes_));
    {
        const std::lock_guard lock(mutex_);
        if (stopping_) throw QueueFull("the server is shutting down");
        if (waiting_.size() + sequences.size() > options_.max_queue)
            throw QueueFull("the queue is full: " + std::to_string(waiting_.size()) + " sequences wait for one of " +
                            std::to_string(options_.n_slots) + " slots (at most " + std::to_string(options_.max_queue) +
                            " may wait); retry later");
        for (auto& s : sequences) waiting_.push_back(std::move(s));
        metrics_.queue_depth = waiting_.size();
    }
    wake_.notify_all();
    return channel;
}

void Scheduler::run() {
    for (;;) {
        {
            std::unique_lock lock(mutex_);
            // Idle: sleep until a request comes; the timeout lets queued requests time out.
            if (running_.empty())
                wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping_ || !waiting_.empty(); });
            if (stopping_) {
                for (auto& s : waiting_) s->channel->push({.choice = s->choice, .finish = FinishReason::Cancelled, .error = "the server is shutting down"});
                waiting_.clear();
                break;
            }
        }
        admit_waiting();
        drop_finished_and_cancelled();
        if (!running_.empty()) step();
        drop_finished_and_cancelled();
    }
    for (auto& s : running_)
        if (!s->done) finish(*s, FinishReason::Cancelled, "the server is shutting down");
}

void Scheduler::admit_waiting() {
    const std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    while (!waiting_.empty()) {
        Sequence& s = *waiting_.front();
        if (s.channel->cancelled() || now >= s.params.deadline) {
            const bool cancelled = s.channel->cancelled();
            (cancelled ? metrics_.sequences_cancelled : metrics_.sequences_timed_out) += 1;
            s.channel->push({.choice = s.choice,
                             .finish = cancelled ? FinishReason::Cancelled : FinishReason::Timeout,
                             .error = cancelled ? "" : "the request timed out waiting for a slot",
                             .prompt_tokens = s.params.prompt.size()});
            waiting_.pop_front();
            continue;
        }
        const std::optional<SlotTable::Claim> claim = slots_.claim(s.params.prompt);
        if (!claim) break;
        s.slot = claim->slot;
        // Keep exactly the matching positions, as far as the model's sliding-window layers still can.
        s.reused = s.fed = s.params.score_prompt ? 0 : model_.reusable_prefix(s.slot, claim->reused);
        model_.truncate_slot(s.slot, s.reused);
        metrics_.prompt_tokens += s.params.prompt.size();
        metrics_.prompt_tokens_cached += s.reused;
        running_.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
    }
    metrics_.queue_depth = waiting_.size();
    metrics_.running = running_.size();
}

void Scheduler::drop_finished_and_cancelled() {
    const auto now = Clock::now();
    for (auto& s : running_) {
        if (s->done) continue;
        if (s->channel->cancelled()) {
            metrics_.sequences_cancelled += 1;
            finish(*s, FinishReason::Cancelled);
        } else if (now >= s->params.deadline) {
            metrics_.sequences_timed_out += 1;
            finish(*s, FinishReason::Timeout, "the request timed out after " + std::to_string(s->generated) + " tokens");
        }
    }
    std::erase_if(running_, [](const auto& s) { return s->done; });
    size_t used = 0;
    for (const auto& s : running_) used += model_.slot_length(s->slot);
    metrics_.kv_positions_used = used;
    metrics_.kv_memory_bytes = model_.kv_backed_bytes();
    metrics_.running = running_.size();
}

void Scheduler::step() {
    // Decode rows first (RowProducts::Single rows must come before Tiled ones), then prompt rows
    // up to the chunk, oldest sequence first.
    std::vector<Part> parts;
    for (auto& s : running_)
        if (s->decoding) parts.push_back({s.get(), 1});
    size_t budget = options_.prompt_chunk;
    for (auto& s : running_) {
        if (s->decoding || budget == 0) continue;
        size_t n = std::min(budget, s->params.prompt.size() - s->fed);
        if (model_.max_run_rows()) n = std::min(n, model_.max_run_rows());
        parts.push_back({s.get(), n});
        budget -= n;
    }
    if (parts.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    run_parts(parts);
    metrics_.step_nanoseconds += uint64_t(std::chrono::nanoseconds(std::chrono::steady_clock::now() - start).count());
}

namespace {

// log p(token) for every token of a row: the model's log-softmax, before any sampling stage.
std::vector<double> log_softmax(std::span<const double> logits) {
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double l : logits) sum += std::exp(l - max);
    const double log_z = max + std::log(sum);
    std::vector<double> out(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_z;
    return out;
}

// The token's log-probability in a row of logits, and the `top` most likely tokens (ties: the
// lower id first).
ScoredToken score(std::span<const double> logits, Token token, size_t top) {
    const std::vector<double> log_p = log_softmax(logits);
    ScoredToken out{.id = token, .logprob = log_p[size_t(token)]};
    std::vector<Token> order(log_p.size());
    std::iota(order.begin(), order.end(), Token{0});
    const size_t n = std::min(top, order.size());
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(n), order.end(), [&](Token a, Token b) {
        return log_p[size_t(a)] > log_p[size_t(b)] || (log_p[size_t(a)] == log_p[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < n; ++i) out.top_logprobs.push_back({order[i], log_p[size_t(order[i])]});
    return out;
}

}  // namespace

void Scheduler::run_parts(std::span<const Part> all_parts) {
    // A sequence ended by an earlier part of the same step (its prompt's first half found no
    // memory) has nothing left to run.
    std::vector<Part> parts;
    for (const Part& part : all_parts)
        if (!part.sequence->done) parts.push_back(part);
    if (parts.empty()) return;

    std::vector<SlotToken> rows;
    std::vector<size_t> lengths;   // each part's slot length before the pass
    // Each part's next token picked by the pass (SlotToken::argmax_only): its logits' argmax,
    // and nothing else reads the row.
    std::vector<bool> picked;
    for (const Part& part : parts) {
        const Sequence& s = *part.sequence;
        lengths.push_back(model_.slot_length(s.slot));
        picked.push_back(s.sampler.only_argmax() && !s.constraint && !s.params.logprobs &&
                         (s.decoding || !s.params.score_prompt));
        if (s.decoding) {
            rows.push_back({.slot = s.slot, .token = s.next_token, .logits = true, .products = options_.decode_products,
                            .argmax_only = picked.back()});
            continue;
        }
        for (size_t i = 0; i < part.n_rows; ++i) {
            const size_t position = s.fed + i;
            const bool last = position + 1 == s.params.prompt.size();
            rows.push_back({.slot = s.slot,
                            .token = s.params.prompt[position],
                            .logits = s.params.score_prompt || last,
                            .products = RowProducts::Tiled,
                            .argmax_only = last && picked.back()});
        }
    }

    // The cache of these slots may hold partial rows, and a failed pass may have written rows
    // past a slot's length into a sliding-window ring (overwriting positions a shorter prefix
    // would need): forget what they held.
    const auto fail = [&](const Part& part, FinishReason reason, const std::string& error) {
        slots_.forget(part.sequence->slot);
        model_.truncate_slot(part.sequence->slot, 0);
        metrics_.sequences_failed += 1;
        finish(*part.sequence, reason, error);
    };
    RowOutputs outputs;
    try {
        if (options_.before_pass) options_.before_pass(rows);
        const auto start = std::chrono::steady_clock::now();
        outputs = model_.run_rows(rows, options_.decode_products);
        metrics_.pass_nanoseconds += uint64_t(std::chrono::nanoseconds(std::chrono::steady_clock::now() - start).count());
    } catch (const std::bad_alloc& e) {
        metrics_.steps_out_of_memory += 1;
        // Back to the lengths before the pass: positions it wrote past them are overwritten by
        // the retry (a model without its own batched pass commits slot by slot, hence the cut).
        std::vector<Part> restored;
        for (size_t i = 0; i < parts.size(); ++i) {
            const size_t slot = parts[i].sequence->slot;
            if (model_.slot_length(slot) != lengths[i] && model_.reusable_prefix(slot, lengths[i]) != lengths[i]) {
                fail(parts[i], FinishReason::Error, std::string("the model ran out of memory and its cache could not be restored: ") + e.what());
                continue;
            }
            model_.truncate_slot(slot, lengths[i]);
            restored.push_back(parts[i]);
        }
        // The KV cache may hold memory no running sequence needs: that goes first.
        if (free_kv_memory()) return run_parts(restored);
        if (rows.size() == 1) {
            const Sequence& s = *parts.front().sequence;
            for (const Part& part : restored)
                fail(part, FinishReason::OutOfMemory,
                     "out of memory: even a step of this sequence's single next token (position " +
                         std::to_string(model_.slot_length(s.slot)) + ") does not fit: " + e.what());
            return;
        }
        if (restored.size() > 1) {
            // Half the sequences, then the other half.
            const size_t half = restored.size() / 2;
            run_parts(std::span(restored).first(half));
            run_parts(std::span(restored).subspan(half));
        } else if (restored.size() == 1) {
            // One sequence's prompt chunk: its first half, then the rest from where that left off.
            const Part part = restored.front();
            const Part first{part.sequence, part.n_rows / 2};
            const Part rest{part.sequence, part.n_rows - first.n_rows};
            run_parts(std::span(&first, 1));
            run_parts(std::span(&rest, 1));
        }
        return;
    } catch (const std::exception& e) {
        for (const Part& part : parts) fail(part, FinishReason::Error, std::string("the model failed: ") + e.what());
        return;
    }
    metrics_.steps += 1;
    metrics_.step_rows += rows.size();

    const Logits& logits = outputs.logits;
    size_t logits_row = 0, argmax_row = 0;
    for (size_t p = 0; p < parts.size(); ++p) {
        const Part& part = parts[p];
        Sequence& s = *part.sequence;
        const bool has_logits = s.decoding || s.fed + part.n_rows == s.params.prompt.size();
        if (s.decoding) {
            // Tiled decode rows compute as prompt rows do: a later prompt may reuse them.
            if (options_.decode_products == RowProducts::Tiled) slots_.append_reusable(s.slot, std::span(&s.next_token, 1));
        } else {
            if (s.params.score_prompt) {
                // Each row but the prompt's last scores the prompt token after it.
                const size_t scored = has_logits ? part.n_rows - 1 : part.n_rows;
                for (size_t i = 0; i < scored; ++i)
                    s.prompt_scores.push_back(score(logits.row(logits_row++), s.params.prompt[s.fed + i + 1], s.params.top_logprobs));
            }
            slots_.append_reusable(s.slot, std::span(s.params.prompt).subspan(s.fed, part.n_rows));
            s.fed += part.n_rows;
            metrics_.prompt_tokens_computed += part.n_rows;
            if (has_logits && options_.decode_products == RowProducts::Single) slots_.end_reusable(s.slot);
        }
        if (!has_logits) continue;
        if (s.params.score_prompt) s.channel->push({.choice = s.choice, .prompt_scores = std::move(s.prompt_scores)});
        if (s.params.max_tokens == 0) {
            (picked[p] ? argmax_row : logits_row) += 1;
            finish(s, FinishReason::Length);
            continue;
        }
        if (picked[p]) emit(s, outputs.argmax[argmax_row++], {});
        else advance(s, logits.row(logits_row++));
    }
}


// Drops what idle slots keep for prefix reuse and hands back the KV cache's pages no slot uses
// (KvCache::trim). Returns whether that freed any memory.
bool Scheduler::free_kv_memory() {
    const size_t before = model_.kv_backed_bytes();
    for (size_t slot = 0; slot < slots_.n_slots(); ++slot) {
        if (slots_.busy(slot) || model_.slot_length(slot) == 0) continue;
        slots_.forget(slot);
        model_.truncate_slot(slot, 0);
        metrics_.kv_prefixes_dropped += 1;
    }
    model_.trim_kv();
    return model_.kv_backed_bytes() < before;
}

void Scheduler::advance(Sequence& s, std::span<const double> logits) {
    Token token = 0;
    try {
        if (s.constraint) {
            token = s.sampler.sample_allowed(
                logits, [&](Token t) { return s.constraint->allows(t); }, [&] { return s.constraint->allowed(); });
            s.constraint->accept(token);
        } else {
            token = s.sampler.sample(logits);
        }
    } catch (const std::exception& e) {
        metrics_.sequences_failed += 1;
        finish(s, FinishReason::Error, std::string("structured output: ") + e.what());
        return;
    }
    emit(s, token, logits);
}

void Scheduler::emit(Sequence& s, Token token, std::span<const double> logits) {
    s.sampler.accept(token);
    ++s.generated;
    metrics_.count_generated(1);
    SequenceEvent event{.choice = s.choice, .token = token};
    if (s.params.logprobs) {
        ScoredToken scored = score(logits, token, s.params.top_logprobs);
        event.logprob = scored.logprob;
        event.top_logprobs = std::move(scored.top_logprobs);
    }
    const Tokenizer& tokenizer = engine_.tokenizer();
    // A constrained sequence samples an end only where its document is whole.
    if ((!s.params.ignore_eos || s.constraint) && tokenizer.is_end_of_generation(token)) {
        finish(s, FinishReason::Stop);   // the end-of-generation token is not part of the text
        return;
    }
    bool stopped = false;
    event.text = s.stop_filter.push(tokenizer.is_control(token) ? std::string() : s.decoder.push(token), stopped);
    s.channel->push(std::move(event));
    if (stopped) {
        s.text_complete = true;   // what followed the stop string is dropped
        finish(s, FinishReason::Stop);
        return;
    }
    if (s.constraint && s.constraint->finished()) {
        finish(s, FinishReason::Stop);   // the document is whole and nothing may follow it
        return;
    }
    if (s.generated >= s.params.max_tokens || model_.slot_length(s.slot) + 1 > n_ctx_) {
        finish(s, FinishReason::Length);
        return;
    }
    s.next_token = token;
    s.decoding = true;
}

void Scheduler::finish(Sequence& s, FinishReason reason, std::string error) {
    SequenceEvent event{.choice = s.choice, .finish = reason, .error = std::move(error)};
    if (reason == FinishReason::Stop || reason == FinishReason::Length) metrics_.sequences_finished += 1;
    if ((reason == FinishReason::Stop || reason == FinishReason::Length) && !s.text_complete) {
        // What the decoder and the stop-string filter still hold.
        bool stopped = false;
        event.text = s.stop_filter.push(s.decoder.flush(), stopped);
        if (!stopped) event.text += s.stop_filter.flush();
    }
    event.prompt_tokens = s.params.prompt.size();
    event.cached_tokens = s.reused;
    event.completion_tokens = s.generated;
    s.channel->push(std::move(event));
    slots_.release(s.slot);
    s.done = true;
}

}  // namespace twinfer::server
