#include "engine/engine.hpp"

#include <algorithm>
#include <chrono>
#include <concepts>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "compute/elementwise.hpp"
#include "engine/stop_filter.hpp"
#include "format/mapped_file_guard.hpp"

namespace twinfer {

std::string_view stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::EndOfGeneration: return "end of generation";
        case StopReason::StopString: return "stop string";
        case StopReason::MaxTokens: return "max tokens";
        case StopReason::ContextFull: return "context full";
        case StopReason::Cancelled: return "cancelled";
    }
    return "?";
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Asked after every pass rather than before: a file truncated between two passes, or during one,
// shows in the pass that read it (an fstat of the file, and whether a read faulted), so no result
// computed from the changed file gets out.
void require_unchanged_model_file() {
    if (std::string problem = mapped_files_problem(); !problem.empty()) throw ModelFileChanged(problem);
}

}  // namespace

InferenceEngine::InferenceEngine(InferenceEngine&&) noexcept = default;
InferenceEngine& InferenceEngine::operator=(InferenceEngine&&) noexcept = default;
InferenceEngine::~InferenceEngine() = default;

InferenceEngine InferenceEngine::load(const BackendOptions& options) {
    const auto t0 = Clock::now();
    InferenceEngine engine;
    engine.options_ = options;
    engine.file_ = std::make_shared<const gguf::File>(gguf::File::open(options.model));
    engine.tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(*engine.file_));
    if (auto source = engine.file_->string_or("tokenizer.chat_template")) {
        try {
            engine.chat_template_.emplace(*source);
        } catch (const ChatTemplateError& e) {
            engine.chat_template_error_ = e.what();
        }
    }
    engine.backend_ = std::make_unique<ModelBackend>(make_backend(engine.file_, options));
    const size_t n_vocab = engine.config().n_vocab;
    if (engine.tokenizer_->n_vocab() != n_vocab)
        throw std::runtime_error(options.model.string() + ": the tokenizer has " + std::to_string(engine.tokenizer_->n_vocab()) +
                                 " tokens but the model's vocabulary is " + std::to_string(n_vocab));
    engine.load_seconds_ = seconds_since(t0);
    return engine;
}

const ModelConfig& InferenceEngine::config() const {
    return std::visit([](const auto& m) -> const ModelConfig& { return m.config(); }, *backend_);
}

std::string InferenceEngine::backend_name() const { return backend_description(*backend_); }

size_t InferenceEngine::n_ctx() const {
    return std::visit([](const auto& m) { return static_cast<size_t>(m.n_ctx()); }, *backend_);
}

size_t InferenceEngine::n_past() const { return history_.size(); }

std::string InferenceEngine::render_chat(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
    const auto piece = [&](std::optional<Token> t) { return t ? tokenizer_->token_to_piece(*t) : std::string(); };
    return chat_template().apply(messages, add_generation_prompt, piece(tokenizer_->bos()), piece(tokenizer_->eos()));
}

const ChatTemplate& InferenceEngine::chat_template() const {
    if (!chat_template_error_.empty())
        throw ChatTemplateError(options_.model.string() + ": its chat template cannot be used (" + chat_template_error_ + ")");
    if (!chat_template_)
        throw ChatTemplateError(options_.model.string() + " has no chat template (tokenizer.chat_template); use `run` for plain completion");
    return *chat_template_;
}

std::vector<Token> InferenceEngine::tokenize(std::string_view text, bool add_special, bool parse_special) const {
    auto ids = tokenizer_->encode(text, add_special, parse_special);
    // A chat template that writes the BOS text itself must not get a second BOS.
    if (add_special && tokenizer_->add_bos() && tokenizer_->bos() && ids.size() >= 2 && ids[0] == *tokenizer_->bos() &&
        ids[1] == *tokenizer_->bos())
        ids.erase(ids.begin());
    return ids;
}

Logits InferenceEngine::forward(std::span<const Token> ids, LogitsMode mode) {
    Logits logits = std::visit([&](auto& m) { return m.forward(ids, mode); }, *backend_);
    require_unchanged_model_file();
    history_.insert(history_.end(), ids.begin(), ids.end());
    return logits;
}

Token InferenceEngine::forward_greedy(Token token) {
    const Token next = std::visit(
        [&](auto& m) -> Token {
            if constexpr (requires { { m.forward_greedy(token) } -> std::same_as<Token>; })
                return m.forward_greedy(token);
            else
                return argmax(m.forward(std::span<const Token>(&token, 1)).last());
        },
        *backend_);
    require_unchanged_model_file();
    history_.push_back(token);
    return next;
}

TopLogits InferenceEngine::forward_top_k(Token token, size_t k) {
    TopLogits top = std::visit(
        [&](auto& m) -> TopLogits {
            if constexpr (requires { { m.forward_top_k(token, k) } -> std::same_as<TopLogits>; })
                return m.forward_top_k(token, k);
            else
                return top_logits_of_last(m.forward(std::span<const Token>(&token, 1)), k);
        },
        *backend_);
    require_unchanged_model_file();
    history_.push_back(token);
    return top;
}

void InferenceEngine::clear() {
    std::visit([](auto& m) { m.clear_cache(); }, *backend_);
    history_.clear();
}

Logits InferenceEngine::evaluate_all(std::span<const Token> ids) {
    clear();
    return forward(ids, LogitsMode::All);
}

void InferenceEngine::evaluate_as_generated(std::span<const Token> ids, size_t n_prompt, const RowCallback& on_row) {
    if (n_prompt == 0 || n_prompt > ids.size())
        throw std::invalid_argument("evaluate_as_generated: the prompt must be 1.." + std::to_string(ids.size()) + " tokens, not " +
                                    std::to_string(n_prompt));
    clear();
    const Logits prompt = forward(ids.first(n_prompt));
    on_row(n_prompt - 1, prompt.last());
    for (size_t p = n_prompt; p < ids.size(); ++p) on_row(p, forward(ids.subspan(p, 1)).last());
}

GenerationResult InferenceEngine::generate(std::span<const Token> prompt, const GenerateOptions& options, const TextCallback& on_text) {
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty (no tokens to start from)");
    const size_t ctx = n_ctx();
    if (prompt.size() > ctx)
        throw ContextOverflow("the prompt is " + std::to_string(prompt.size()) + " tokens but the context holds " +
                              std::to_string(ctx) + " (raise --ctx-size or shorten the prompt)");
    GenerationResult result;

    // Keep the cache up to the longest common prefix of what the model has seen and this prompt
    // (a chat turn extends the previous one; dropping old turns to fit the context shortens the
    // match) and feed the rest. At least one token is fed, so there are fresh logits to sample from.
    const size_t common = std::mismatch(history_.begin(), history_.end(), prompt.begin(), prompt.end()).first - history_.begin();
    size_t keep = std::min(common, prompt.size() - 1);
    std::visit(
        [&keep](auto& m) {
            // A model with sliding-window rings in its KV cache may no longer hold that prefix.
            if constexpr (requires { m.reusable_prefix(keep); }) keep = m.reusable_prefix(keep);
            m.truncate_cache(keep);
        },
        *backend_);
    history_.resize(keep);
    const auto feed = prompt.subspan(history_.size());
    result.stats.reused_tokens = history_.size();
    result.stats.prompt_tokens = feed.size();

    auto t0 = Clock::now();
    Logits logits = forward(feed);
    result.stats.prompt_seconds = seconds_since(t0);

    SamplerChain sampler(options.sampling);
    for (Token t : prompt) sampler.accept(t);  // penalties look at the prompt too, as llama.cpp
    StreamDecoder decoder(*tokenizer_);
    StopStringFilter stop_filter(options.stop);
    auto emit = [&](const std::string& text) {
        if (text.empty()) return true;
        result.text += text;
        return on_text ? on_text(text) : true;
    };

    // Greedy without stages is the argmax of the logits: the model computes it where it runs and
    // hands back the id (on a GPU, 4 bytes instead of the logits row).
    const bool device_greedy = sampler.greedy() && sampler.stages().empty();
    // Likewise a chain that starts with top-k (llama.cpp's default order, without penalties or
    // logit bias): the model keeps the k largest logits and hands back k pairs, the rest of the
    // chain runs on those (the same token as on the whole row).
    const size_t top_k = sampler.leading_top_k();
    const bool device_top_k = top_k > 0 && top_k <= compute::max_top_k && top_k < static_cast<size_t>(config().n_vocab);
    std::optional<Token> next;   // device_greedy or device_top_k: the token the last step chose

    t0 = Clock::now();
    for (;;) {
        if (options.max_tokens >= 0 && result.tokens.size() >= static_cast<size_t>(options.max_tokens)) {
            result.reason = StopReason::MaxTokens;
            break;
        }
        const Token token = next ? *next : sampler.sample(logits.last());
        sampler.accept(token);
        result.tokens.push_back(token);
        if (!options.ignore_eos && tokenizer_->is_end_of_generation(token)) {
            result.reason = StopReason::EndOfGeneration;
            break;
        }
        bool stopped = false;
        const bool hidden = !options.special && tokenizer_->is_control(token);
        const std::string text = stop_filter.push(hidden ? std::string() : decoder.push(token), stopped);
        if (!emit(text)) {
            result.reason = StopReason::Cancelled;
            break;
        }
        if (stopped) {
            result.reason = StopReason::StopString;
            break;
        }
        if (history_.size() >= ctx) {
            result.reason = StopReason::ContextFull;
            break;
        }
        if (device_greedy) {
            next = forward_greedy(token);
        } else if (device_top_k) {
            const TopLogits top = forward_top_k(token, top_k);
            next = sampler.sample_top(top.ids, top.logits);
        } else {
            logits = forward(std::span<const Token>(&token, 1));
        }
    }
    if (result.reason != StopReason::StopString && result.reason != StopReason::Cancelled) {
        bool stopped = false;
        emit(stop_filter.push(decoder.flush(), stopped) + (stopped ? std::string() : stop_filter.flush()));
    }
    result.stats.generated_tokens = result.tokens.size();
    result.stats.generation_seconds = seconds_since(t0);
    return result;
}

}  // namespace twinfer
