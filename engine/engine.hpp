#pragma once
// InferenceEngine: one loaded model (any of ModelBackend's alternatives, dispatched with
// std::visit: no virtual call on the hot path), its tokenizer and chat template, and the
// generation loop — sampler chain, stop conditions, streaming of decoded text.
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "engine/backend.hpp"
#include "engine/sampler.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"

namespace twinfer {

enum class StopReason { EndOfGeneration, StopString, MaxTokens, ContextFull, Cancelled };
std::string_view stop_reason_name(StopReason r);

struct GenerateOptions {
    int max_tokens = -1;                  // -1: until an end-of-generation token or the context is full
    std::vector<std::string> stop;        // stop strings (not emitted)
    SamplingParams sampling;
    bool ignore_eos = false;
    bool special = false;                 // control tokens (<|im_end|>, </s>, ...) decoded as text; hidden otherwise
};

struct GenerationStats {
    size_t prompt_tokens = 0;             // tokens actually fed (a reused prefix is not counted)
    size_t reused_tokens = 0;             // prompt tokens already in the model's cache
    size_t generated_tokens = 0;
    double prompt_seconds = 0;
    double generation_seconds = 0;
    double prompt_tokens_per_second() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
    double generation_tokens_per_second() const { return generation_seconds > 0 ? generated_tokens / generation_seconds : 0; }
};

struct GenerationResult {
    std::vector<Token> tokens;            // generated ids (a trailing end-of-generation token included)
    std::string text;                     // decoded text, stop string removed
    StopReason reason = StopReason::MaxTokens;
    GenerationStats stats;
};

// Thrown by every model pass of InferenceEngine (generate, evaluate_all, evaluate_as_generated,
// forward) once the model file was truncated or rewritten after it was loaded
// (format/mapped_file_guard.hpp): that pass read zeros or other bytes in place of weights, and so
// would every later one. The message names the file and the change (mapped_files_problem()).
struct ModelFileChanged : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Receives text as soon as it is decoded; return false to stop (StopReason::Cancelled).
using TextCallback = std::function<bool(std::string_view)>;

class InferenceEngine {
public:
    // Opens the GGUF file, reads its tokenizer and chat template and builds the model the
    // options ask for. Throws with the file and the problem.
    static InferenceEngine load(const BackendOptions& options);

    InferenceEngine(InferenceEngine&&) noexcept;
    InferenceEngine& operator=(InferenceEngine&&) noexcept;
    ~InferenceEngine();

    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const ModelConfig& config() const;
    // The model's chat template; throws ChatTemplateError when the file has none, or when its
    // template cannot be parsed (a broken or hostile template fails only what renders it: the
    // model loads, and run, bench, verify and perplexity work).
    const ChatTemplate& chat_template() const;
    const BackendOptions& options() const { return options_; }
    std::string backend_name() const;   // "F32LlamaModel (cpu)", "GPTModel (f64, cpu)", ...
    size_t n_ctx() const;
    size_t n_past() const;
    double load_seconds() const { return load_seconds_; }
    const gguf::File& file() const { return *file_; }

    // The prompt text for a conversation: the model's chat template (BOS not duplicated when the
    // template writes it). Throws when the model has no template.
    std::string render_chat(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
    std::vector<Token> tokenize(std::string_view text, bool add_special, bool parse_special) const;

    // Feeds `prompt` (reusing the cache for the longest prefix it shares with the model's history;
    // GenerationStats::reused_tokens) and samples
    // until a stop condition. Throws ContextOverflow when the prompt alone does not fit.
    GenerationResult generate(std::span<const Token> prompt, const GenerateOptions& options, const TextCallback& on_text = {});

    // Logits of every position of `ids`, from an empty cache, in one call (the prompt path).
    Logits evaluate_all(std::span<const Token> ids);
    // Feeds `ids` from an empty cache as generate() feeds a prompt and its generated tokens: the
    // first n_prompt in one call (the prompt path), then each later token alone through the
    // model's decode step (on a GPU the captured graph), the very calls generate() makes.
    // on_row(position, logits) gets each row the model produced, positions n_prompt-1 ..
    // ids.size()-1 (the row at p predicts ids[p+1]). n_prompt = 1: every row from the decode step.
    using RowCallback = std::function<void(size_t position, std::span<const double> logits)>;
    void evaluate_as_generated(std::span<const Token> ids, size_t n_prompt, const RowCallback& on_row);
    // The raw model step, for bench: feeds ids after what the model has seen.
    Logits forward(std::span<const Token> ids, LogitsMode mode = LogitsMode::Last);
    void clear();

    ModelBackend& backend() { return *backend_; }

private:
    InferenceEngine() = default;
    // One token fed and the argmax of its logits: where the model has forward_greedy, computed on
    // its device, so only the id comes back.
    Token forward_greedy(Token token);
    // One token fed and its k largest logits with their ids: where the model has forward_top_k,
    // computed on its device, so only the k pairs come back.
    TopLogits forward_top_k(Token token, size_t k);
    BackendOptions options_;
    std::shared_ptr<const gguf::File> file_;
    std::unique_ptr<Tokenizer> tokenizer_;
    std::optional<ChatTemplate> chat_template_;
    std::string chat_template_error_;   // why the file's template could not be parsed, if it could not
    std::unique_ptr<ModelBackend> backend_;
    std::vector<Token> history_;   // every token the model has seen, in order
    double load_seconds_ = 0;
};

}  // namespace twinfer
